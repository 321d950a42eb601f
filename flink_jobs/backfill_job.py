"""The backfill job: recompute feature views from the raw Iceberg tables in Flink batch mode, with the
same feature specs and the same SQL compiler as the stream (``flink_jobs.feature_sql``), into the
``backfill.<view>`` tables.

Run it with `liveml backfill` (which picks the range, widens it to whole months and waits), or as a
Flink user would:

    flink run -m localhost:8081 -py flink_jobs/backfill_job.py -pyexec .venv/bin/python \
        -pyclientexec .venv/bin/python --from-ms 1356998400000 --to-ms 1483228799999

Each view reads the raw events from one window before ``--from-ms`` (so its first windows are complete),
and writes rows with event times in ``[from, to]``. The write is an ``INSERT OVERWRITE``: the month and
spec-version partitions it touches are replaced, so running it again gives the same table, and rows of
other spec versions stay.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from pyflink.table import EnvironmentSettings, TableEnvironment

from iceberg_schemas.features import FEATURE_VIEWS, FeatureView, view
from iceberg_schemas.sources import SOURCES
from iceberg_schemas.tables import backfill_table
from flink_jobs import feature_sql as fsql
from flink_jobs.common import catalog_ddl, ensure_pipeline_jars
from liveml.config import LivemlConfig, load_config


def build_backfill_job(t_env: TableEnvironment, cfg: LivemlConfig, views: Sequence[FeatureView],
                       from_ms: int, to_ms: int):
    t_env.execute_sql(catalog_ddl(cfg))
    stmts = t_env.create_statement_set()
    for source in sorted({v.source for v in views}):
        src = SOURCES[source]
        warmup_ms = max(v.window_s for v in views if v.source == source) * 1000
        t_env.execute_sql(fsql.batch_source_view_ddl(src, cfg.catalog.name, from_ms - warmup_ms, to_ms))
    for v in views:
        t_env.execute_sql(fsql.feature_view_ddl(v, SOURCES[v.source], batch=True))
        stmts.add_insert_sql(fsql.feature_iceberg_insert(v, cfg.catalog.name, backfill_table(v), overwrite=True,
                                                         since_ms=from_ms))
    return stmts


def configure(t_env: TableEnvironment, parallelism: int | None) -> None:
    conf = t_env.get_config()
    conf.set("pipeline.name", "liveml-backfill")
    conf.set("table.local-time-zone", "UTC")
    # one source task per slot we ask for, not one per file split (which can exceed the slots we have)
    conf.set("table.exec.iceberg.infer-source-parallelism", "false")
    if parallelism:
        conf.set("parallelism.default", str(parallelism))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-ms", type=int, required=True, help="first event time to write (epoch ms)")
    parser.add_argument("--to-ms", type=int, required=True, help="last event time to write (epoch ms)")
    parser.add_argument("--views", default=None, help="comma-separated view names (default: all)")
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--config", default=None, help="liveml.yaml to read addresses from")
    args = parser.parse_args(argv)

    cfg = load_config(args.config)
    views = [view(v) for v in args.views.split(",")] if args.views else list(FEATURE_VIEWS)
    t_env = TableEnvironment.create(EnvironmentSettings.in_batch_mode())
    ensure_pipeline_jars(t_env, cfg)
    configure(t_env, args.parallelism)
    build_backfill_job(t_env, cfg, views, args.from_ms, args.to_ms).execute().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
