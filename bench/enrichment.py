"""Benchmark: the enrichment job (Kafka trips -> features -> async Predict -> Kafka predictions + Iceberg).

Setup, on the running local stack (`liveml up`), each run in a tenant of its own (fresh topics, catalog and
Redis database): our model server as a process (stand-in model, labels stable/canary/shadow) started with
``--delay_ms 5`` to mimic a remote model, so every ``Predict`` request takes at least 5 ms. The feature job
is not running: every context feature reads as missing from Redis (the reads still happen), so the figures
are the enrichment path alone. Input: resampled real trips' end events (only end events are scored), each
re-timed to its produce time (``event_time`` = Kafka record timestamp = the moment it was sent).

Figures, medians over ``--repeats`` runs, parallelism 2:

* ``async_events_per_s``: enriched events/s end to end. A backlog of ``--events`` end events is produced
  first, then `liveml submit enrich -- --kafka-at-least-once --parallelism 2` (unbounded: its 20 ms
  batches fire on processing time, which a bounded run does not do at its end) scores it; the rate is
  (scored trips - 1) / (Kafka timestamp of the last prediction - that of the first), read back from the
  ``predictions`` topic (read_uncommitted; the at-least-once sink writes at once, duplicates counted once).
  Job start-up (Python workers booting) is outside that window; ``async_job_events_per_s`` is the same
  count from the job's RUNNING time to the last prediction, start-up included.
* ``sync_events_per_s``: the baseline, measured in the same run against the same server, same delay, same
  parallelism, same Kafka source and Kafka sink: a PyFlink ``map`` making one blocking ``Predict`` per event
  (``grpc.insecure_channel``; no Redis reads, all context missing; no Iceberg sink, which favours the
  baseline): ``bench/enrichment_sync_job.py``, bounded, over ``--baseline-events`` end events (it is slow),
  timed the same way. ``ratio`` = async / sync (target >= 5).
* ``latency_p50_ms`` / ``latency_p99_ms``: added latency, event in -> prediction out, with the job running
  unbounded (at-least-once Kafka sink) and end events produced live at ``--rate`` events/s for
  ``--latency-seconds``: Kafka timestamp of the trip's prediction record (the sink's produce time) minus the
  Kafka timestamp of its end event (its produce time). Measured after a warm-up batch has been scored.
  The rate must stay below the sustained throughput, or this measures a growing queue (before batching,
  at 1,000/s with other jobs running, latency grew from 1.5 s to 3.5 s over 10 s). The sink's record
  timestamp is its produce time (checked: it trails the row's ``predicted_at``, never equals the event
  time).
* ``worker_rss_mb``: the largest resident set of the Python worker processes (``pyflink.fn_execution``
  processes that appeared after the async job was submitted), sampled every 0.5 s while it ran.
  ``worker_tensorflow_loaded`` says whether any of them mapped TensorFlow's shared library: the client
  loads TF Serving's protos without TensorFlow (serving/protos.py), so it should be false.

Writes flat JSON to LIVEML_HOME/bench/enrichment.json.

    .venv/bin/python bench/enrichment.py [--events 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from liveml import flink  # noqa: E402 (after the path)

MODEL = "tips"


# --- the driver ---------------------------------------------------------------------------------------------
def end_events(n: int, seed: int) -> list:
    """``n`` resampled real trips' end events (values only; re-timed when sent)."""
    from flink_jobs import replay as rp

    k = n // 15002 + 1
    events = rp.build_events(amplify_k=k, seed=seed, trips_per_s=1000.0)
    return [e for e in events if e.topic == rp.TRIPS_TOPIC and e.value["event_type"] == "end"][:n]


def produce(cfg, events: list, rate: float | None = None) -> dict[str, int]:
    """Send the end events, each with event_time = Kafka timestamp = now; returns trip id -> that time
    for the events that pass the source contract (the ones the job scores)."""
    import pandas as pd

    from flink_jobs import replay as rp
    from tests.reference import valid

    producer = rp.kafka_producer(cfg.kafka.bootstrap_servers)
    topic = cfg.kafka.topic(rp.TRIPS_TOPIC)
    sent: dict[str, int] = {}
    values = []
    t0 = time.monotonic()
    for i, ev in enumerate(events):
        if rate:
            wait = i / rate - (time.monotonic() - t0)
            if wait > 0:
                producer.poll(0)
                time.sleep(wait)
        now = int(time.time() * 1000)
        value = {**ev.value, "event_time": now}
        while True:
            try:
                producer.produce(topic, key=ev.key.encode(), value=json.dumps(value).encode(), timestamp=now)
                break
            except BufferError:
                producer.poll(0.05)
        sent[value["trip_id"]] = now
        values.append(value)
    if producer.flush(60):
        raise RuntimeError("events not acknowledged by Kafka")
    frame = pd.DataFrame(values)
    ok = set(frame.loc[valid(frame, "trips"), "trip_id"])
    return {t: ms for t, ms in sent.items() if t in ok}


def read_predictions(cfg, want: set[str], until, idle_s: float = 5.0, timeout_s: float = 600) -> dict[str, int]:
    """trip id -> Kafka timestamp of its first prediction record, until every wanted trip is seen, or
    ``until()`` is true and nothing new came for ``idle_s``."""
    from confluent_kafka import Consumer

    from iceberg_schemas.sources import PREDICTIONS_TOPIC

    consumer = Consumer({"bootstrap.servers": cfg.kafka.bootstrap_servers, "group.id": f"bench-{time.time()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "isolation.level": "read_uncommitted"})
    consumer.subscribe([cfg.kafka.topic(PREDICTIONS_TOPIC)])
    seen: dict[str, int] = {}
    statuses: dict[str, int] = {}
    last_new = time.monotonic()
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and not want <= seen.keys():
            msgs = consumer.consume(2000, timeout=0.5)
            for m in msgs:
                if m.error():
                    continue
                rec = json.loads(m.value())
                if rec["trip_id"] not in seen:
                    seen[rec["trip_id"]] = m.timestamp()[1]
                    statuses[rec["status"]] = statuses.get(rec["status"], 0) + 1
                    last_new = time.monotonic()
            if time.monotonic() - last_new > idle_s and until():
                break
    finally:
        consumer.close()
    if statuses.keys() - {"ok"}:
        print(f"      statuses: {statuses}", flush=True)
    return seen


def rate_of(times: dict[str, int]) -> float:
    ts = sorted(times.values())
    return (len(ts) - 1) / max((ts[-1] - ts[0]) / 1000.0, 1e-3)


def python_workers() -> dict[int, object]:
    import psutil

    out = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        if any("pyflink.fn_execution" in c for c in (p.info["cmdline"] or [])):
            out[p.info["pid"]] = p
    return out


class RssSampler:
    """Max RSS of the Python workers that were not there at construction time."""

    def __init__(self):
        self.before = set(python_workers())
        self.max_mb = 0.0
        self.tensorflow = False
        self.workers: set[int] = set()

    def sample(self) -> None:
        import psutil

        for pid, p in python_workers().items():
            if pid in self.before:
                continue
            try:
                self.max_mb = max(self.max_mb, p.memory_info().rss / 2**20)
                self.tensorflow |= any("tensorflow_framework" in m.path or "_pywrap_tensorflow" in m.path
                                       for m in p.memory_maps())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # the worker exited between the listing and the read
            self.workers.add(pid)


def submit(cfg, tenant: Path, job: str, *args: str) -> str:
    return flink.submit(cfg, job, ["--config", str(tenant), *args])["job_id"]


def cancel(cfg, job_id: str) -> None:
    try:
        if flink.job_detail(cfg, job_id)["state"] not in ("FINISHED", "FAILED", "CANCELED"):
            flink.cancel_job(cfg, job_id)
    except Exception as exc:  # noqa: BLE001 - best effort on the way out
        print(f"      (could not cancel {job_id}: {exc})", flush=True)


def bounded_run(cfg, tenant: Path, job: str, job_args: list[str], ids: dict[str, int],
                sampler: RssSampler | None = None) -> dict:
    """Submit a bounded job over the backlog already in Kafka, wait for FINISHED, read its predictions."""
    job_id = submit(cfg, tenant, job, "--bounded", "--parallelism", "2", *job_args)
    try:
        deadline = time.time() + 900
        while time.time() < deadline:
            state = flink.job_detail(cfg, job_id)["state"]
            if sampler:
                sampler.sample()
            if state in ("FINISHED", "FAILED", "CANCELED"):
                break
            time.sleep(0.5)
        job = flink.job_detail(cfg, job_id)
        if job["state"] != "FINISHED":
            raise RuntimeError(f"job {job_id} ended {job['state']}")
    finally:
        cancel(cfg, job_id)
    seen = read_predictions(cfg, set(ids), until=lambda: True)
    got = len(seen.keys() & ids.keys())
    if got < len(ids):
        print(f"      warning: {got} of {len(ids)} trips have a prediction", flush=True)
    ts = job["timestamps"]
    wall = (ts["FINISHED"] - ts["RUNNING"]) / 1000.0
    return {"events_per_s": rate_of(seen), "job_events_per_s": len(seen) / wall, "scored": len(seen),
            "job_seconds": wall}


def backlog_run(cfg, tenant: Path, ids: dict[str, int], sampler: RssSampler) -> dict:
    """The enrichment job, unbounded (its 20 ms batches fire on processing time, which a bounded run would
    not do at its end), over the backlog already in Kafka: until every trip has its prediction."""
    import threading

    job_id = submit(cfg, tenant, "enrich", "--kafka-at-least-once", "--parallelism", "2")
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            sampler.sample()

    threading.Thread(target=sample, daemon=True).start()
    try:
        seen = read_predictions(cfg, set(ids), until=lambda: True, idle_s=60, timeout_s=900)
        job = flink.job_detail(cfg, job_id)
    finally:
        done.set()
        cancel(cfg, job_id)
    got = len(seen.keys() & ids.keys())
    if got < len(ids):
        print(f"      warning: {got} of {len(ids)} trips have a prediction", flush=True)
    wall = (max(seen.values()) - job["timestamps"]["RUNNING"]) / 1000.0 if seen else float("nan")
    return {"events_per_s": rate_of(seen), "job_events_per_s": len(seen) / wall, "scored": len(seen),
            "job_seconds": wall}


def latency_run(cfg, tenant: Path, events: list, rate: float, seconds: float) -> list[float]:
    job_id = submit(cfg, tenant, "enrich", "--kafka-at-least-once", "--parallelism", "2")
    try:
        flink.wait_running(cfg, job_id)
        warm = produce(cfg, events[:200])  # boots the workers' channels and connection pools
        if len(read_predictions(cfg, set(warm), until=lambda: False, timeout_s=180).keys() & warm.keys()) < len(warm):
            raise RuntimeError("warm-up predictions did not all arrive")
        n = int(rate * seconds)
        live = produce(cfg, events[200:200 + n], rate=rate)
        seen = read_predictions(cfg, set(warm) | set(live), until=lambda: True, timeout_s=120)
    finally:
        cancel(cfg, job_id)
    return [float(seen[t] - sent) for t, sent in live.items() if t in seen]


def main() -> None:
    import numpy as np
    import yaml

    from liveml.config import load_config
    from liveml.figures import figures_file, write_figures
    from liveml.stack import launcher
    from liveml.tenant import create_tenant
    from tests.integration.test_enrich_job import ModelServer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000, help="backlog of end events for the async run")
    parser.add_argument("--baseline-events", type=int, default=5_000, help="backlog for the synchronous run")
    parser.add_argument("--rate", type=float, default=500.0, help="end events/s for the latency run")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--delay-ms", type=float, default=5.0, help="the model server's added delay per request")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()

    base = load_config()
    figures_file(base, "enrichment")  # a home that cannot take the figures fails now, not after the runs
    launcher.up(base)
    run = f"bench{int(time.time()) % 100000}"
    home = Path(tempfile.mkdtemp(prefix="bench-enrich-"))
    server = ModelServer(home)
    print(f"model server with --delay_ms {args.delay_ms} (log: {home / 'server.log'})", flush=True)
    server.start(delay_ms=args.delay_ms)

    def tenant(name: str, db: int) -> tuple[Path, object]:
        path = create_tenant(base, f"{run}-{name}", db)
        data = yaml.safe_load(path.read_text())
        data.setdefault("serving", {}).update(grpc=server.address, model_name=MODEL)
        data["enrich"] = {"canary_fraction": 0.0, "shadow_label": None}
        path.write_text(yaml.safe_dump(data))
        return path, load_config(path, env={})

    events = end_events(max(args.events, args.baseline_events, 200 + int(args.rate * args.latency_seconds)),
                        args.seed)
    runs, syncs, lats, rss = [], [], [], []
    tf_loaded = False
    try:
        for i in range(args.repeats):
            print(f"[{i + 1}/{args.repeats}] async: {args.events:,} end events, a backlog, parallelism 2",
                  flush=True)
            path, cfg = tenant(f"async{i}", 12)
            ids = produce(cfg, events[:args.events])
            sampler = RssSampler()
            r = backlog_run(cfg, path, ids, sampler)
            runs.append(r)
            rss.append(sampler.max_mb)
            tf_loaded |= sampler.tensorflow
            print(f"      {r['scored']:,} scored: {r['events_per_s']:,.0f} events/s (job wall "
                  f"{r['job_seconds']:.1f} s = {r['job_events_per_s']:,.0f}/s); worker RSS max "
                  f"{sampler.max_mb:.0f} MB over {len(sampler.workers)} processes", flush=True)

            print(f"      sync baseline: {args.baseline_events:,} end events", flush=True)
            path, cfg = tenant(f"sync{i}", 13)
            ids = produce(cfg, events[:args.baseline_events])
            s = bounded_run(cfg, path, str(Path(__file__).resolve().parent / "enrichment_sync_job.py"), [], ids)
            syncs.append(s)
            print(f"      {s['scored']:,} scored: {s['events_per_s']:,.0f} events/s (job wall "
                  f"{s['job_seconds']:.1f} s)", flush=True)

            print(f"      latency: {args.rate:,.0f} end events/s for {args.latency_seconds:.0f} s, unbounded",
                  flush=True)
            path, cfg = tenant(f"lat{i}", 14)
            lat = latency_run(cfg, path, events, args.rate, args.latency_seconds)
            lats.append(lat)
            print(f"      {len(lat):,} samples: p50 {np.percentile(lat, 50):.0f} ms, p99 "
                  f"{np.percentile(lat, 99):.0f} ms", flush=True)
    finally:
        server.stop()

    med = statistics.median
    async_eps = med(r["events_per_s"] for r in runs)
    sync_eps = med(s["events_per_s"] for s in syncs)
    result = {
        "async_events_per_s": round(async_eps, 1),
        "async_job_events_per_s": round(med(r["job_events_per_s"] for r in runs), 1),
        "sync_events_per_s": round(sync_eps, 1),
        "ratio": round(async_eps / sync_eps, 2),
        "latency_p50_ms": round(med(float(np.percentile(lat, 50)) for lat in lats), 1),
        "latency_p99_ms": round(med(float(np.percentile(lat, 99)) for lat in lats), 1),
        "latency_samples": sum(len(lat) for lat in lats),
        "worker_rss_mb": round(med(rss), 1),
        "worker_tensorflow_loaded": tf_loaded,
        "n_events": args.events,
        "baseline_events": args.baseline_events,
        "latency_rate": args.rate,
        "parallelism": 2,
        "server_delay_ms": args.delay_ms,
        "repeats": args.repeats,
    }
    write_figures(base, "enrichment", result)
    print(f"async / sync: {result['ratio']}x (target >= 5); async {async_eps:,.0f} events/s (target >= 2,000)")


if __name__ == "__main__":
    main()
