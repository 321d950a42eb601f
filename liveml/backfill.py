"""`liveml backfill`: pick the range, run the backfill job on the Flink cluster, report, optionally load Redis.

The range defaults to every event in the raw tables and is widened to whole months, because the job's
``INSERT OVERWRITE`` replaces whole (month, spec version) partitions: a half-month range would replace a
month with half of it.
"""

from __future__ import annotations

import subprocess
import time
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

import requests

from iceberg_schemas.features import SPEC_VERSION, FeatureView, latest_first
from iceberg_schemas.sources import SOURCES
from iceberg_schemas.tables import backfill_table
from liveml import flink
from liveml.config import LivemlConfig
from liveml.errors import LivemlError, ServiceError
from liveml.offline import OfflineStore, parse_time, to_ms


def month_floor(ms: int) -> int:
    d = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return to_ms(datetime(d.year, d.month, 1, tzinfo=timezone.utc))


def month_ceil(ms: int) -> int:
    """The last millisecond of ``ms``'s month."""
    d = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    nxt = datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=timezone.utc)
    return to_ms(nxt) - 1


def event_range(store: OfflineStore, views: Sequence[FeatureView]) -> tuple[int, int] | None:
    """The first and last event time in the raw tables the views read (None if they are empty)."""
    con = store.connect()
    lo = hi = None
    for source in sorted({v.source for v in views}):
        src = SOURCES[source]
        store.register(con, src.raw_table, view=f"raw_{source}")
        a, b = con.execute(f'SELECT epoch_ms(min("{src.time_field}")), epoch_ms(max("{src.time_field}")) '
                           f"FROM raw_{source}").fetchone()
        if a is not None:
            lo = a if lo is None else min(lo, a)
            hi = b if hi is None else max(hi, b)
    return None if lo is None else (int(lo), int(hi))


def plan(store: OfflineStore, views: Sequence[FeatureView], start: str | None = None,
         end: str | None = None) -> dict[str, Any]:
    found = event_range(store, views)
    if found is None and (start is None or end is None):
        raise LivemlError("the raw tables are empty: nothing to backfill (replay events and run the feature "
                          "job first, or give --from and --to)")
    lo = to_ms(parse_time(start)) if start else found[0]
    hi = to_ms(parse_time(end)) if end else found[1]
    if lo > hi:
        raise LivemlError(f"--from {start} is after --to {end}")
    return {"requested": [lo, hi], "from_ms": month_floor(lo), "to_ms": month_ceil(hi)}


def _job_state(cfg: LivemlConfig, started_ms: int) -> tuple[str | None, int]:
    """State and records read so far of the newest backfill job started after ``started_ms``."""
    try:
        jobs = [j for j in flink.list_jobs(cfg) if j["name"] == "liveml-backfill"
                and (j["start_time"] or 0) >= started_ms]
        if not jobs:
            return None, 0
        job = max(jobs, key=lambda j: j["start_time"])
        detail = flink.job_detail(cfg, job["id"])
        read = sum(v.get("metrics", {}).get("read-records", 0) for v in detail.get("vertices", [])
                   if "Source" in v.get("name", ""))
        return job["state"], read
    except (requests.RequestException, LivemlError):
        return None, 0


def run(cfg: LivemlConfig, views: Sequence[FeatureView], start: str | None = None, end: str | None = None,
        parallelism: int = 2, redis: bool = False, status: Callable[[str], None] | None = None,
        timeout: float = 3600) -> dict[str, Any]:
    store = OfflineStore.from_config(cfg)
    rng = plan(store, views, start, end)
    before = {v.name: store.resolve_snapshot(store.table(backfill_table(v).identifier)) for v in views}
    args = ["--from-ms", str(rng["from_ms"]), "--to-ms", str(rng["to_ms"]), "--parallelism", str(parallelism),
            "--views", ",".join(v.name for v in views)]
    flink.rest_check(cfg)
    cmd = flink.run_command(cfg, "backfill", args, detached=False)
    started_ms = int(time.time() * 1000) - 1000
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=flink.flink_env(cfg), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    last = 0.0
    while proc.poll() is None:
        time.sleep(1)
        if time.monotonic() - t0 > timeout:
            proc.kill()
            raise ServiceError(f"the backfill did not finish in {timeout:.0f} s (see `liveml jobs`)")
        if status and time.monotonic() - last >= 5:
            state, read = _job_state(cfg, started_ms)
            status(f"backfill {state or 'starting'}: {read:,} events read, {time.monotonic() - t0:.0f} s")
            last = time.monotonic()
    output = proc.stdout.read() if proc.stdout else ""
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        raise ServiceError(f"the backfill job failed (exit {proc.returncode}):\n{flink._failure_summary(output)}")

    written, snapshots = {}, {}
    for v in views:
        table = store.table(backfill_table(v).identifier)
        snap = store.resolve_snapshot(table)
        snapshots[v.name] = snap
        written[v.name] = 0 if snap in (None, before[v.name]) else int(
            table.snapshot_by_id(snap).summary.additional_properties.get("added-records", 0))
    events = _events_in(store, views, rng["from_ms"], rng["to_ms"])
    result = {
        "from": _iso(rng["from_ms"]), "to": _iso(rng["to_ms"]), "requested": [_iso(x) for x in rng["requested"]],
        "views": [v.name for v in views], "spec_version": SPEC_VERSION, "rows": written, "snapshots": snapshots,
        "events": events, "seconds": round(seconds, 2), "events_per_s": round(events / seconds, 1) if seconds else None,
    }
    if redis:
        result["redis_entities"] = load_redis(cfg, store, views)
    return result


def _events_in(store: OfflineStore, views: Sequence[FeatureView], lo: int, hi: int) -> int:
    con = store.connect()
    total = 0
    for source in sorted({v.source for v in views}):
        src = SOURCES[source]
        store.register(con, src.raw_table, view=f"raw_{source}")
        total += con.execute(f'SELECT count(*) FROM raw_{source} WHERE epoch_ms("{src.time_field}") '
                             f"BETWEEN {lo} AND {hi}").fetchone()[0]
    return int(total)


def load_redis(cfg: LivemlConfig, store: OfflineStore, views: Sequence[FeatureView]) -> dict[str, int]:
    """The latest backfilled row per entity into the online store (idempotent: older never overwrites newer)."""
    from liveml.online import open_online_store

    online = open_online_store(cfg.redis.url)
    con = store.connect()
    counts = {}
    for v in views:
        name = backfill_table(v).identifier
        store.register(con, name, view=f"b_{v.name}")
        cols = ", ".join(f'"{n}"' for n in v.feature_names())
        rows = con.execute(
            f'SELECT "{v.entity}", epoch_ms(event_time), epoch_ms(computed_at), source_id, {cols} FROM b_{v.name} '
            f'WHERE spec_version = {SPEC_VERSION} '
            f'QUALIFY row_number() OVER (PARTITION BY "{v.entity}" ORDER BY {latest_first()}) = 1'
        ).fetchall()
        # with their computed_at: a backfilled row never overwrites the stream's later computation of its time
        batch = [(r[0], int(r[1]), dict(zip(v.feature_names(), r[4:])), r[2], r[3]) for r in rows]
        counts[v.name] = online.write(v, batch) if batch else 0
    return counts


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")
