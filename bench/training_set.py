"""Benchmark: point-in-time training-set builds and backfills on amplified real taxi data.

Setup, in a tenant of its own on the running local stack (`liveml up`): the 15,002 real trips resampled
``--amplify`` times with fresh ids over ``--days`` days of event time (67 x 15,002 = 1,005,134 trips over
30 days: 33k trips a day, a third of Chicago's real daily volume; 2.0 M trip events and 1.0 M labels),
loaded column-wise into ``raw.trips`` and ``labels.trips``.

Density matters to the backfill: Flink's batch OVER operator recomputes a sliding RANGE frame from its
buffer whenever a row leaves the window (no retraction in batch), so its cost grows with rows per window.
The same million trips packed into one day (10x Chicago) took minutes per view, and over 10 days the
24 h company view alone (a few companies, 100k labels a day) ran past four minutes.

Figures, medians over ``--repeats`` runs on this machine:

* ``backfill_events_per_s``: `liveml backfill` of those days (Flink batch over Iceberg, parallelism 2; the
  three feature views, 3.0 M events in), end to end including job start-up. Compared with the streaming
  job's sustained events/s from ``bench/feature_pipeline.json`` when that file exists.
* ``labels_per_s``: ``build_training_set`` (DuckDB ASOF JOIN over the Parquet files pyiceberg plans),
  reading the inputs from Iceberg and writing ``training.tips`` back, per label row.
* ``baseline_labels_per_s``: the naive way, measured in the same run on the same tables: pyiceberg
  ``to_pandas()`` of every input, one pandas ``merge_asof`` per view, the TTL mask, and the same write.
* ``peak_rss_mb`` / ``baseline_peak_rss_mb``: the peak resident memory of each, run in a fresh process.
* ``limited_peak_rss_mb`` / ``limited_labels_per_s``: the DuckDB build again under a 256 MB DuckDB memory
  limit. The build cuts the labels into decision-time slices of 250k and joins each with only the rows it
  can reach, so its memory follows the slice, not the table: how it scales past memory. (One unsliced
  query needed about 1 GB for a million labels and failed under 512 MB: DuckDB 0.10.3's ASOF join does
  not spill.)

Writes flat JSON to LIVEML_HOME/bench/training_set.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flink_jobs import replay as rp  # noqa: E402
from iceberg_schemas.features import FEATURE_VIEWS  # noqa: E402
from iceberg_schemas.registry import ensure_table  # noqa: E402
from iceberg_schemas.tables import table_spec, unpartitioned  # noqa: E402
from liveml.config import load_config  # noqa: E402
from liveml.figures import figures_file, write_figures  # noqa: E402
from liveml.offline import OfflineStore  # noqa: E402
from liveml.tenant import create_tenant  # noqa: E402

DAY_S = 86400

# Run in a child process, so its peak RSS is its own. argv: tenant config, mode, memory limit.
CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[4])
from liveml.config import load_config
from liveml.offline import OfflineStore
cfg = load_config(sys.argv[1], env={})
store = OfflineStore.from_config(cfg, memory_limit=sys.argv[3] or None)
t0 = time.monotonic()
if sys.argv[2] == "duckdb":
    from liveml.training_set import build_training_set
    rows = build_training_set(store, source="backfill", name="tips_bench")["rows"]
else:
    from bench.training_set import pandas_build
    rows = pandas_build(store)
print(json.dumps({"rows": rows, "seconds": time.monotonic() - t0,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def pandas_build(store: OfflineStore) -> int:
    """The naive baseline: everything into pandas, merge_asof per view, TTL mask, write."""
    import pandas as pd
    from pyiceberg.io.pyarrow import schema_to_pyarrow

    from iceberg_schemas.training import TIPS

    labels = store.scan_pandas("labels.trips")
    labels = labels.dropna(subset=["decision_time"]).drop_duplicates("trip_id", keep="last")
    raw = store.scan_pandas("raw.trips", where="event_type = 'end'")
    out = labels[["trip_id", "decision_time", "big_tipper"]].merge(
        raw[["trip_id", *TIPS.context_fields]].drop_duplicates("trip_id"), on="trip_id", how="left")
    out = out.sort_values("decision_time")
    for v in FEATURE_VIEWS:
        f = store.scan_pandas(f"backfill.{v.name}", columns=[v.entity, "event_time", *v.feature_names()])
        f = f.rename(columns={"event_time": "_t"}).sort_values("_t")
        left = out[out[v.entity].notna()].copy()
        left[v.entity] = left[v.entity].astype(f[v.entity].dtype)
        merged = pd.merge_asof(left, f, left_on="decision_time", right_on="_t", by=v.entity)
        expired = (merged["decision_time"] - merged["_t"]) > v.ttl
        merged.loc[expired, v.feature_names()] = np.nan
        merged = merged.drop(columns="_t")
        out = pd.concat([merged, out[out[v.entity].isna()]], ignore_index=True).sort_values("decision_time")
    out = out.sort_values(["decision_time", "trip_id"])[TIPS.columns()]
    spec = TIPS.table_spec()
    from iceberg_schemas.tables import TableSpec

    ensure_table(store.catalog, TableSpec(spec.namespace, "tips_pandas", spec.schema, spec.partition_spec,
                                          spec.description))
    table = store.catalog.load_table("training.tips_pandas")
    table.overwrite(pa.Table.from_pandas(out, preserve_index=False).cast(schema_to_pyarrow(table.schema())))
    return len(out)


def load_days(cfg, amplify: int, days: float, seed: int) -> dict:
    """Amplified real trips over ``days``, into unpartitioned raw and label tables pyiceberg can append to."""
    store = OfflineStore.from_config(cfg)
    for name in ("raw.trips", "labels.trips"):
        store.catalog.drop_table(name)
        ensure_table(store.catalog, unpartitioned(table_spec(name)))
    real = rp.load_trips()
    n = amplify * len(real)
    start_ms = 1_420_070_400_000  # 2015-01-01T00:00Z
    df = rp.amplify(real, amplify, np.random.default_rng(seed), start_ms, trips_per_s=n / (days * DAY_S))
    t0 = time.monotonic()
    chunk = 250_000
    counts = {"raw.trips": 0, "labels.trips": 0}
    for i in range(0, n, chunk):
        raw, labels = rp.trip_tables(df.iloc[i:i + chunk])
        for name, frame in (("raw.trips", raw), ("labels.trips", labels)):
            from pyiceberg.io.pyarrow import schema_to_pyarrow

            table = store.catalog.load_table(name)
            schema = schema_to_pyarrow(table.schema())
            table.append(pa.Table.from_pandas(frame[schema.names], preserve_index=False).cast(schema))
            counts[name] += len(frame)
        print(f"  loaded {min(i + chunk, n):,}/{n:,} trips", flush=True)
    return {"trips": n, "days": days, **counts, "load_seconds": round(time.monotonic() - t0, 1)}


def child(tenant: Path, mode: str, memory_limit: str = "") -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tenant), mode, memory_limit, str(REPO)],
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} build failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--amplify", type=int, default=67, help="copies of the 15,002 real trips (67: 1.0 M)")
    parser.add_argument("--days", type=float, default=30.0, help="event-time span of the amplified trips")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backfill-repeats", type=int, default=2, help="each is a minute or more")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from liveml import backfill

    base = load_config()
    figures_file(base, "training_set")  # a home that cannot take the figures fails now, not after the runs
    tenant = create_tenant(base, "bench_training", 5)
    cfg = load_config(tenant, env={})
    print(f"loading {args.amplify} x real trips over {args.days} days into {cfg.catalog.name} ({tenant})", flush=True)
    loaded = load_days(cfg, args.amplify, args.days, args.seed)

    bf_runs = []
    for i in range(args.backfill_repeats):
        r = backfill.run(cfg, list(FEATURE_VIEWS), status=lambda s: print("  " + s, flush=True))
        bf_runs.append(r)
        print(f"backfill {i + 1}: {r['events']:,} events in {r['seconds']} s = {r['events_per_s']:,}/s", flush=True)

    duck, pand = [], []
    for i in range(args.repeats):
        duck.append(child(tenant, "duckdb"))
        pand.append(child(tenant, "pandas"))
        print(f"build {i + 1}: duckdb {duck[-1]['rows']:,} rows in {duck[-1]['seconds']:.1f} s "
              f"(peak {duck[-1]['peak_rss_mb']:.0f} MB); pandas {pand[-1]['rows']:,} rows in "
              f"{pand[-1]['seconds']:.1f} s (peak {pand[-1]['peak_rss_mb']:.0f} MB)", flush=True)
    limited = child(tenant, "duckdb", "256MB")
    print(f"build under a 256 MB limit: {limited['seconds']:.1f} s, peak {limited['peak_rss_mb']:.0f} MB", flush=True)

    labels = duck[0]["rows"]
    med = statistics.median
    result = {
        "labels": labels, "trips": loaded["trips"], "days": loaded["days"], "events": bf_runs[0]["events"],
        "labels_per_s": round(labels / med(r["seconds"] for r in duck), 1),
        "baseline_labels_per_s": round(labels / med(r["seconds"] for r in pand), 1),
        "peak_rss_mb": round(med(r["peak_rss_mb"] for r in duck), 1),
        "baseline_peak_rss_mb": round(med(r["peak_rss_mb"] for r in pand), 1),
        "limited_labels_per_s": round(labels / limited["seconds"], 1),
        "limited_peak_rss_mb": round(limited["peak_rss_mb"], 1),
        "backfill_events_per_s": round(med(r["events_per_s"] for r in bf_runs), 1),
        "backfill_seconds": round(med(r["seconds"] for r in bf_runs), 1),
        "repeats": args.repeats,
    }
    result["speedup_vs_pandas"] = round(result["labels_per_s"] / result["baseline_labels_per_s"], 2)
    stream = figures_file(base, "feature_pipeline")  # the streaming job's figures, when that bench ran
    if stream.is_file():
        streaming = json.loads(stream.read_text()).get("events_per_s")
        if streaming:
            result["streaming_events_per_s"] = streaming
            result["backfill_vs_streaming"] = round(result["backfill_events_per_s"] / streaming, 2)
    assert all(r["rows"] == labels for r in duck + pand + [limited]), "builds disagree on the row count"
    write_figures(base, "training_set", result)


if __name__ == "__main__":
    main()
