"""Benchmark: the model server (serving/) over gRPC: latency at concurrency 1, throughput at concurrency 32
with and without server-side batching, against the physical limit of calling the SavedModel in-process.

Model: the TFX taxi tip model does not exist yet, so this runs on the stand-in from
``serving.testing.export_standin_model`` (same eight named rank-1 inputs, one ``probabilities`` output; a
few dozen TF ops, so the cost measured is almost all the server's own, not the model's), exported with
fresh batching and monitoring config files into a temp dir that is removed at the end. The servers are
``python -m serving.server`` child processes on 127.0.0.1, free ports the OS hands out; this
process starts and stops them and touches nothing of a running stack.

Figures, all measured in this run on this machine:

* ``p50_ms`` / ``p99_ms``: Predict latency at concurrency 1, batching off (TF Serving's default):
  ``--requests`` sequential calls through tensorflow-serving-api's sync ``PredictionServiceStub`` with one
  prebuilt one-row ``PredictRequest``, after 200 warm-up calls; median of ``--repeats`` runs' percentiles.
  Targets: p50 <= 3 ms, p99 <= 10 ms. ``p50_ms_batching`` / ``p99_ms_batching``: the same against the
  batching server (one run; a lone request waits up to ``batch_timeout_micros`` for company).
* ``qps_no_batching`` / ``qps_batching``: successful one-row Predicts per second at concurrency 32: one
  grpc.aio channel, 32 coroutines each keeping one request in flight, the request serialized once and sent
  as bytes (responses not parsed), ``--warmup`` seconds of load, then ``--repeats`` windows of ``--duration``
  seconds under continuous load; median of the windows. ``failures`` counts every failed call (warm-up
  included) of both runs (``failures_batching``, ``failures_no_batching``, status names in
  ``failure_codes``); only successes count towards qps.
* ``avg_batch_size``: mean rows per batch the batching server ran during the windows, from its Prometheus
  histogram ``tensorflow_serving_batching_session_input_batch_size`` (scraped on its REST port).
* Baselines, the physical limit: the same SavedModel called in this process (``tf.saved_model.load`` and
  its ``serving_default`` signature on prebuilt ``tf.constant`` inputs, output fetched with ``.numpy()``),
  with no server and no load generator running, each size for ``--inprocess-seconds`` x ``--repeats``:
  ``inprocess_qps`` = rows/s (= calls/s) at batch size 1; ``inprocess_batched_rows_per_s`` = rows/s at
  the batching server's average batch size rounded (``inprocess_batch_size``); ``inprocess_32_rows_per_s``
  at a fixed 32 (``max_batch_size``).
* Ratios: ``batching_ratio`` = ``qps_batching / inprocess_batched_rows_per_s``: the server with batching
  against the model alone at the batch sizes it actually ran. This is the figure the target
  "throughput with batching >= 50% of in-process" is judged on. Also ``batching_vs_inprocess_bs1`` =
  ``qps_batching / inprocess_qps`` (batching against unbatched in-process calls: > 1 means batching beats
  even a perfect one-row-at-a-time server), ``no_batching_vs_inprocess_bs1`` = ``qps_no_batching /
  inprocess_qps`` and ``batching_speedup`` = ``qps_batching / qps_no_batching``.

Caveat, read before comparing: the machine has 2 cores and the load generator runs on them too. The
client is kept lean (pre-serialized request, raw bytes, one asyncio loop), but its CPU use during the
windows is reported (``client_cores_*``, beside the server's ``server_cores_*``): whatever the client
uses, the server did not get, whereas the in-process baselines had both cores to themselves. The
in-process figures are therefore an upper bound the served figures cannot reach on this machine.
When this was written the client used about 0.12 cores and the server about 1.1 at either setting: the
server process is held by its GIL (per-request Python: gRPC, ``decode_inputs``, thread hops, response),
not by the cores or the load generator, so ``batching_ratio`` came out near 0.04, far from the target.

Batching parameters (for 32 concurrent one-row callers on 2 cores): ``max_batch_size`` 32 (every caller
fits in one batch), ``batch_timeout_micros`` ``--batch-timeout-micros`` (1000), ``num_batch_threads``
``--batch-threads`` (1: the event loop needs the other core; while the one batch thread runs, the next batch
fills up), ``max_enqueued_batches`` 1000 (never reject at this load).

Writes flat JSON to LIVEML_HOME/bench/serving.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# `python bench/serving.py` puts bench/ first on sys.path, where this file would shadow the serving package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]
sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from liveml.config import load_config  # noqa: E402
from liveml.figures import figures_file, write_figures  # noqa: E402

MODEL = "tips"
PREDICT = "/tensorflow.serving.PredictionService/Predict"
METRICS_PATH = "/monitoring/prometheus/metrics"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- the model and the server processes --------------------------------------------------------------------
def export_model(base: Path) -> Path:
    from serving.testing import export_standin_model

    return export_standin_model(base, 1, bias=0.0)


def predict_request():
    """One row of the stand-in's inputs, as a PredictRequest (dtypes from the stand-in's signature)."""
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import predict_pb2

    from serving.client import to_tensor
    from serving.testing import FLOAT_FEATURES, INT_FEATURES, standin_row

    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "serving_default"
    for name, value in standin_row().items():
        dtype = types_pb2.DT_FLOAT if name in FLOAT_FEATURES else \
            types_pb2.DT_INT64 if name in INT_FEATURES else types_pb2.DT_STRING
        request.inputs[name].CopyFrom(to_tensor(value, dtype))
    return request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m serving.server`` on free ports; ready once it logs the ports it bound.

    gRPC takes ``--port=0`` (the OS picks); ``--rest_api_port=0`` would turn REST off, so the REST port (for
    the metrics) is one the OS just handed out and released."""

    def __init__(self, tmp: Path, name: str, batching_file: Path | None, monitoring_file: Path):
        self.log_path = tmp / f"server-{name}.log"
        args = [sys.executable, "-m", "serving.server", "--port=0", f"--rest_api_port={free_port()}",
                "--host=127.0.0.1",
                f"--model_name={MODEL}", f"--model_base_path={tmp / 'models' / MODEL}",
                f"--monitoring_config_file={monitoring_file}"]
        if batching_file is not None:
            args += ["--enable_batching", f"--batching_parameters_file={batching_file}"]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(args, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.grpc_port = self.rest_port = 0

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        pattern = re.compile(r"gRPC on (\d+), REST on (\d+)")
        while time.monotonic() < deadline:
            m = pattern.search(self.log_path.read_text())
            if m:
                self.grpc_port, self.rest_port = int(m.group(1)), int(m.group(2))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        tail = self.log_path.read_text()[-3000:]
        self.stop()
        raise SystemExit(f"model server did not start (exit {self.proc.returncode}):\n{tail}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.rest_port}{METRICS_PATH}", timeout=10) as resp:
            return resp.read().decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def histogram_sum_count(text: str, name: str) -> tuple[float, float]:
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith(f"{name}_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{name}_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


# --- 1. latency at concurrency 1 ----------------------------------------------------------------------------
def measure_latency(address: str, request, n: int, repeats: int) -> tuple[float, float, list]:
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=30)
        assert list(response.outputs["probabilities"].float_val), f"unexpected response: {response}"
        for _ in range(200):
            stub.Predict(request, timeout=10)
        runs = []
        for _ in range(repeats):
            times = np.empty(n)
            for i in range(n):
                t0 = time.perf_counter()
                stub.Predict(request, timeout=10)
                times[i] = time.perf_counter() - t0
            runs.append((float(np.percentile(times, 50)) * 1e3, float(np.percentile(times, 99)) * 1e3))
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs), runs


# --- 2. throughput at concurrency 32 -----------------------------------------------------------------------
async def _load(server: Server, payload: bytes, concurrency: int, warmup_s: float, duration_s: float,
                repeats: int, batching: bool) -> dict:
    ok = [0]
    failures: collections.Counter[str] = collections.Counter()
    stop = asyncio.Event()
    async with grpc.aio.insecure_channel(server.address) as channel:
        predict = channel.unary_unary(PREDICT)  # no (de)serializers: bytes out, bytes in

        async def caller() -> None:
            while not stop.is_set():
                try:
                    await predict(payload, timeout=10)
                    ok[0] += 1
                except grpc.aio.AioRpcError as exc:
                    failures[exc.code().name] += 1
                    await asyncio.sleep(0.001)  # a dead server must not turn this into a busy loop

        workers = [asyncio.create_task(caller()) for _ in range(concurrency)]
        await asyncio.sleep(warmup_s)
        sizes_before = histogram_sum_count(await asyncio.to_thread(server.metrics),
                                           "tensorflow_serving_batching_session_input_batch_size")
        windows = []
        for _ in range(repeats):
            n0, t0, c0, s0 = ok[0], time.perf_counter(), time.process_time(), server.cpu_seconds()
            await asyncio.sleep(duration_s)
            n1, t1, c1, s1 = ok[0], time.perf_counter(), time.process_time(), server.cpu_seconds()
            windows.append({"qps": (n1 - n0) / (t1 - t0), "client_cores": (c1 - c0) / (t1 - t0),
                            "server_cores": (s1 - s0) / (t1 - t0)})
        stop.set()
        await asyncio.gather(*workers)
        sizes_after = histogram_sum_count(await asyncio.to_thread(server.metrics),
                                          "tensorflow_serving_batching_session_input_batch_size")
    rows, batches = sizes_after[0] - sizes_before[0], sizes_after[1] - sizes_before[1]
    return {"qps": statistics.median(w["qps"] for w in windows), "windows": windows,
            "client_cores": statistics.median(w["client_cores"] for w in windows),
            "server_cores": statistics.median(w["server_cores"] for w in windows),
            "failures": dict(failures), "avg_batch_size": rows / batches if batching and batches else None}


def measure_throughput(server: Server, request, args, batching: bool) -> dict:
    return asyncio.run(_load(server, request.SerializeToString(), args.concurrency, args.warmup, args.duration,
                             args.repeats, batching))


# --- 3. the physical limit: the SavedModel in-process -------------------------------------------------------
def inprocess_rows_per_s(model_dir: Path, batch_sizes: list[int], seconds: float, repeats: int) -> dict[int, float]:
    import tensorflow as tf

    from serving.testing import standin_row

    function = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    specs = function.structured_input_signature[1]
    out = {}
    for size in batch_sizes:
        inputs = {name: tf.constant([value] * size, specs[name].dtype) for name, value in standin_row().items()}
        for _ in range(50):
            function(**inputs)["probabilities"].numpy()
        runs = []
        for _ in range(repeats):
            calls, t0 = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < seconds:
                for _ in range(20):
                    function(**inputs)["probabilities"].numpy()
                calls += 20
            runs.append(calls * size / elapsed)
        out[size] = statistics.median(runs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests per latency run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before the windows")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per throughput window")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--inprocess-seconds", type=float, default=3.0)
    parser.add_argument("--batch-timeout-micros", type=int, default=1000)
    parser.add_argument("--batch-threads", type=int, default=1)
    parser.add_argument("--max-batch-size", type=int, default=32)
    args = parser.parse_args()

    base = load_config()
    figures_file(base, "serving")  # a home that cannot take the figures fails now, not after the runs
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below on a plain kill too
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="liveml-bench-serving-"))
    servers: list[Server] = []
    try:
        model_dir = export_model(tmp / "models" / MODEL)
        batching_file = tmp / "batching.config"
        batching_file.write_text(f"max_batch_size {{ value: {args.max_batch_size} }}\n"
                                 f"batch_timeout_micros {{ value: {args.batch_timeout_micros} }}\n"
                                 f"num_batch_threads {{ value: {args.batch_threads} }}\n"
                                 "max_enqueued_batches { value: 1000 }\n")
        monitoring_file = tmp / "monitoring.config"
        monitoring_file.write_text(f'prometheus_config {{ enable: true path: "{METRICS_PATH}" }}\n')
        request = predict_request()
        print(f"stand-in model exported to {model_dir}; batching parameters: "
              f"{batching_file.read_text().strip().replace(chr(10), ', ')}", flush=True)

        plain = Server(tmp, "no-batching", None, monitoring_file)
        servers.append(plain)
        plain.wait_ready()
        p50, p99, runs = measure_latency(plain.address, request, args.requests, args.repeats)
        print(f"latency, concurrency 1, batching off: p50 {p50:.3f} ms, p99 {p99:.3f} ms "
              f"(runs: {', '.join(f'{a:.2f}/{b:.2f}' for a, b in runs)})", flush=True)
        nob = measure_throughput(plain, request, args, batching=False)
        print(f"throughput, concurrency {args.concurrency}, batching off: {nob['qps']:.0f}/s "
              f"(windows {[round(w['qps']) for w in nob['windows']]}; client {nob['client_cores']:.2f} cores, "
              f"server {nob['server_cores']:.2f} cores; failures {nob['failures']})", flush=True)
        plain.stop()

        batched = Server(tmp, "batching", batching_file, monitoring_file)
        servers.append(batched)
        batched.wait_ready()
        bp50, bp99, _ = measure_latency(batched.address, request, args.requests, 1)
        print(f"latency, concurrency 1, batching on: p50 {bp50:.3f} ms, p99 {bp99:.3f} ms", flush=True)
        bat = measure_throughput(batched, request, args, batching=True)
        print(f"throughput, concurrency {args.concurrency}, batching on: {bat['qps']:.0f}/s "
              f"(windows {[round(w['qps']) for w in bat['windows']]}; avg batch {bat['avg_batch_size']:.1f} rows; "
              f"client {bat['client_cores']:.2f} cores, server {bat['server_cores']:.2f} cores; "
              f"failures {bat['failures']})", flush=True)
        batched.stop()

        avg = bat["avg_batch_size"] or 1.0
        size = max(1, min(args.max_batch_size, round(avg)))
        inproc = inprocess_rows_per_s(model_dir, sorted({1, size, args.max_batch_size}), args.inprocess_seconds,
                                      args.repeats)
        print("in-process SavedModel: " + ", ".join(f"batch {k}: {v:,.0f} rows/s" for k, v in inproc.items()),
              flush=True)
    finally:
        for server in servers:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    result = {
        "p50_ms": round(p50, 3), "p99_ms": round(p99, 3),
        "qps_batching": round(bat["qps"], 1), "qps_no_batching": round(nob["qps"], 1),
        "inprocess_qps": round(inproc[1], 1),
        "inprocess_batched_rows_per_s": round(inproc[size], 1), "inprocess_batch_size": size,
        "inprocess_32_rows_per_s": round(inproc[args.max_batch_size], 1),
        "avg_batch_size": round(avg, 2),
        "batching_ratio": round(bat["qps"] / inproc[size], 3),
        "batching_vs_inprocess_bs1": round(bat["qps"] / inproc[1], 3),
        "no_batching_vs_inprocess_bs1": round(nob["qps"] / inproc[1], 3),
        "batching_speedup": round(bat["qps"] / nob["qps"], 2) if nob["qps"] else None,
        "p50_ms_batching": round(bp50, 3), "p99_ms_batching": round(bp99, 3),
        "failures": sum(nob["failures"].values()) + sum(bat["failures"].values()),
        "failures_no_batching": sum(nob["failures"].values()), "failures_batching": sum(bat["failures"].values()),
        "failure_codes": ",".join(sorted({*nob["failures"], *bat["failures"]})),
        "client_cores_batching": round(bat["client_cores"], 2), "server_cores_batching": round(bat["server_cores"], 2),
        "client_cores_no_batching": round(nob["client_cores"], 2),
        "server_cores_no_batching": round(nob["server_cores"], 2),
        "concurrency": args.concurrency, "duration_s": args.duration, "repeats": args.repeats,
        "requests": args.requests, "max_batch_size": args.max_batch_size,
        "batch_timeout_micros": args.batch_timeout_micros, "num_batch_threads": args.batch_threads,
        "cpus": os.cpu_count(), "model": "serving.testing stand-in (not the TFX model)",
        "p50_target_met": p50 <= 3, "p99_target_met": p99 <= 10,
        "batching_target_met": bat["qps"] >= 0.5 * inproc[size],
        "seconds": round(time.monotonic() - started, 1),
    }
    write_figures(base, "serving", result)


if __name__ == "__main__":
    main()
