"""`liveml demo --proof`: the stack up, the tables created, the proof job run, and its rows checked with pyiceberg.

The foundation's smoke test of the stack (Kafka -> PyFlink -> Iceberg), kept beside the main demo
(:mod:`liveml.demo`). The check is independent of Flink: what was sent to Kafka is kept here and compared,
row by row, with what pyiceberg reads back from the table the job wrote.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any, Callable

from liveml.config import LivemlConfig
from liveml.errors import ServiceError

Log = Callable[[str], None] | None


def make_events(n: int, run_id: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed + run_id)
    base = run_id * 1_000_000
    now_ms = int(time.time() * 1000)
    names = ["  Alpha Taxi", "BETA  cab ", "gamma"]
    return [{"id": base + i, "name": rng.choice(names), "value": round(rng.uniform(0, 100), 3),
             "event_time_ms": now_ms - (n - i) * 1000} for i in range(n)]


def produce(cfg: LivemlConfig, topic: str, events: list[dict[str, Any]], malformed: int = 0) -> None:
    from flink_jobs.replay import kafka_producer

    producer = kafka_producer(cfg.kafka.bootstrap_servers)
    for ev in events:
        producer.produce(topic, key=str(ev["id"]).encode(), value=json.dumps(ev).encode())
    for i in range(malformed):
        producer.produce(topic, value=b"{not json " + str(i).encode())
    remaining = producer.flush(30)
    if remaining:
        raise ServiceError(f"{remaining} events were not acknowledged by Kafka at {cfg.kafka.bootstrap_servers}")


def read_back(cfg: LivemlConfig, table: str, lo: int, hi: int) -> list[dict[str, Any]]:
    from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan

    from liveml.catalog import open_catalog

    tbl = open_catalog(cfg).load_table(table)
    arrow = tbl.scan(row_filter=And(GreaterThanOrEqual("id", lo), LessThan("id", hi))).to_arrow()
    return arrow.to_pylist()


def run_proof(cfg: LivemlConfig, rows: int = 200, malformed: int = 3, log: Log = None) -> dict[str, Any]:
    from liveml import flink
    from liveml.flink import wait_for_job

    run_id = int(time.time()) % 1_000_000
    events = make_events(rows, run_id)
    since_ms = int(time.time() * 1000) - 1000
    t0 = time.monotonic()
    produce(cfg, "proof", events, malformed)
    if log:
        log(f"sent {rows} events (+{malformed} malformed) to Kafka topic 'proof'")
    sub = flink.submit(cfg, "proof", ["--since-ms", str(since_ms)])
    if log:
        log(f"submitted proof job {sub['job_id']}")
    state = wait_for_job(cfg, sub["job_id"], log=log)
    got = read_back(cfg, "ops.proof_events", run_id * 1_000_000, (run_id + 1) * 1_000_000)
    expected = {e["id"]: (" ".join(e["name"].split()).lower(), e["value"], e["event_time_ms"]) for e in events}
    actual = {r["id"]: (r["name"], r["value"], int(r["event_time"].timestamp() * 1000)) for r in got}
    mismatched = [i for i in expected if actual.get(i) != expected[i]]
    return {"ok": state == "FINISHED" and not mismatched and len(got) == rows, "job_id": sub["job_id"],
            "job_state": state, "sent": rows, "read_back": len(got), "mismatched": len(mismatched),
            "seconds": round(time.monotonic() - t0, 1)}


def run(cfg: LivemlConfig, rows: int, log: Log = None) -> dict[str, Any]:
    from iceberg_schemas.registry import ensure_tables
    from liveml.catalog import open_catalog
    from liveml.stack import launcher

    if log:
        log("starting the local stack…")
    launcher.up(cfg, None, (lambda n, o, t: log(f"  {n:<11} {o:<11} {t:6.1f}s")) if log else None)
    created = ensure_tables(open_catalog(cfg))
    if log:
        log(f"tables: {sum(r.action == 'created' for r in created)} created, "
            f"{sum(r.action == 'evolved' for r in created)} evolved, {len(created)} declared")
    result = run_proof(cfg, rows, log=log)
    result["where"] = {
        "flink_ui": cfg.flink.rest_url,
        "prometheus": f"http://localhost:{cfg.prometheus.port}",
        "table": "ops.proof_events (try `liveml tables list`)",
        "logs": str(cfg.path("logs")),
        "stop": "liveml down",
    }
    return result


def render(result: dict[str, Any], console) -> None:
    verdict = "[green]OK[/]" if result["ok"] else "[red]FAILED[/]"
    console.print(f"proof job {result['job_id']} {result['job_state']}: sent {result['sent']}, "
                  f"read back {result['read_back']} with pyiceberg, {result['mismatched']} mismatched "
                  f"({result['seconds']}s) {verdict}")
    for what, where in result["where"].items():
        console.print(f"  {what:<11} {where}")
