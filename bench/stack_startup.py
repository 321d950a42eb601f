"""Benchmark: time from `liveml up` to every service healthy, per service, median of several cold starts.

Baseline, measured in the same run: Flink's own launcher (`bin/start-cluster.sh`, same config.yaml) until
its REST API reports a TaskManager. The ratio `flink_vs_start_cluster` says what our launcher (pid
tracking, port checks, health checks) costs over the ecosystem's own script; 1.0 means nothing.

Runs on its own ports (defaults + 20000) and LIVEML_HOME, so a running stack is not disturbed.
Writes flat JSON to LIVEML_HOME/bench/stack_startup.json (the default home's, not the bench's scratch home).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path


from liveml.config import load_config
from liveml.figures import figures_file, write_figures
from liveml.flink import flink_env, flink_home
from liveml.stack import launcher
from liveml.stack.flink_cluster import FlinkService


def bench_config(home: Path):
    return load_config(env={}, overrides={
        "home": str(home),
        "kafka": {"bootstrap_servers": "localhost:29092", "controller_port": 29093},
        "redis": {"url": "redis://localhost:26379/0"},
        "flink": {"rest_url": "http://localhost:28081", "rpc_port": 26123, "metrics_port_range": "29249-29259"},
        "prometheus": {"port": 29090, "metrics_base_port": 29300},
        "alertmanager": {"port": 29095},
    })


def time_liveml_up(cfg) -> dict[str, float]:
    per_service: dict[str, float] = {}
    t0 = time.monotonic()
    launcher.up(cfg, None, lambda name, outcome, took: per_service.__setitem__(name, took))
    per_service["total"] = time.monotonic() - t0
    launcher.down(cfg)
    return per_service


def time_start_cluster(cfg) -> float:
    FlinkService(cfg).write_conf()
    env = flink_env(cfg)
    bin_dir = flink_home() / "bin"
    t0 = time.monotonic()
    subprocess.run(["bash", str(bin_dir / "start-cluster.sh")], env=env, check=True, capture_output=True)
    while not FlinkService(cfg).is_up():
        if time.monotonic() - t0 > 120:
            raise RuntimeError("start-cluster.sh: no TaskManager after 120 s")
        time.sleep(0.25)
    took = time.monotonic() - t0
    subprocess.run(["bash", str(bin_dir / "stop-cluster.sh")], env=env, check=True, capture_output=True)
    time.sleep(2)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    base = load_config()  # the default home takes the figures, not the scratch home below
    figures_file(base, "stack_startup")  # a home that cannot take the figures fails now, not after the runs
    runs: list[dict[str, float]] = []
    baseline: list[float] = []
    with tempfile.TemporaryDirectory(prefix="liveml-bench-") as tmp:
        cfg = bench_config(Path(tmp))
        for i in range(args.runs):
            runs.append(time_liveml_up(cfg))
            baseline.append(time_start_cluster(cfg))
            print(f"run {i + 1}/{args.runs}: liveml up {runs[-1]['total']:.1f}s "
                  f"(flink {runs[-1]['flink']:.1f}s), start-cluster.sh {baseline[-1]:.1f}s", flush=True)
    figures = {f"up_{name}_median_s": round(statistics.median(r[name] for r in runs), 2) for name in runs[0]}
    figures["baseline_start_cluster_median_s"] = round(statistics.median(baseline), 2)
    figures["flink_vs_start_cluster"] = round(figures["up_flink_median_s"] / figures["baseline_start_cluster_median_s"], 3)
    figures["runs"] = args.runs
    write_figures(base, "stack_startup", figures)


if __name__ == "__main__":
    main()
