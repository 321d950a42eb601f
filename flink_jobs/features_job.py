"""The feature job: Kafka `trips` and `labels` -> validation (DLQ) -> raw Iceberg tables, and every feature
view's OVER-window aggregates -> Iceberg feature tables and Redis.

Run it with `liveml submit features`, or as a Flink user would:

    flink run -m localhost:8081 -py flink_jobs/features_job.py -pyexec .venv/bin/python \
        -pyclientexec .venv/bin/python
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from pyflink.table import StreamTableEnvironment, TableEnvironment

from iceberg_schemas.features import FEATURE_VIEWS, FeatureView
from iceberg_schemas.sources import SOURCES, EventSource
from flink_jobs import feature_sql as fsql
from flink_jobs.common import catalog_ddl, consumer_group
from flink_jobs.udfs import redis_upsert_udf
from liveml.config import LivemlConfig, load_config


def build_feature_job(t_env: TableEnvironment, cfg: LivemlConfig,
                      views: Sequence[FeatureView] = FEATURE_VIEWS, bounded: bool = False,
                      since_ms: int | None = None, out_of_orderness_ms: int = 500,
                      redis: bool = True, exactly_once_dlq: bool = True):
    """Declare everything on ``t_env`` and return the statement set (not yet executed)."""
    t_env.execute_sql(catalog_ddl(cfg))
    stmts = t_env.create_statement_set()
    used = {v.source for v in views}
    sources: list[EventSource] = [SOURCES[name] for name in sorted(used)]
    for src in sources:
        for ddl in fsql.good_events_ddl(src, cfg, consumer_group(cfg, f"features-{src.name}"), bounded, since_ms,
                                        out_of_orderness_ms):
            t_env.execute_sql(ddl)
        t_env.execute_sql(fsql.dlq_sink_ddl(src, cfg, exactly_once_dlq))
        stmts.add_insert_sql(fsql.dlq_insert(src))
        stmts.add_insert_sql(fsql.raw_insert(src, cfg.catalog.name))
        t_env.execute_sql(fsql.blackhole_ddl(f"{src.name}_late"))
        stmts.add_insert_sql(fsql.late_counter_insert(src))
    for view in views:
        t_env.execute_sql(fsql.feature_view_ddl(view, SOURCES[view.source]))
        stmts.add_insert_sql(fsql.feature_iceberg_insert(view, cfg.catalog.name))
        if redis:
            t_env.create_temporary_function(f"redis_{view.name}", redis_upsert_udf(cfg.redis.url, view.name))
            t_env.execute_sql(fsql.blackhole_ddl(f"redis_{view.name}_sink"))
            stmts.add_insert_sql(fsql.feature_redis_insert(view, f"redis_{view.name}"))
    return stmts


def configure(t_env: TableEnvironment, parallelism: int | None, name: str, idle_timeout: str | None = None) -> None:
    conf = t_env.get_config()
    conf.set("pipeline.name", name)
    # Stable operator uids derived from the plan, so a restarted job maps its state back.
    conf.set("table.exec.uid.generation", "ALWAYS")
    # Every INSERT reads the same views (each source's parsed events, each feature view's windows). Found by
    # digest, a shared view becomes a block the optimizer plans once: without this, the planner merged the
    # JSON parsing into each of the ~9 consumers of a source (each JSON_VALUE parses the payload again) and
    # ran each view's OVER window twice, once for Iceberg and once for Redis.
    conf.set("table.optimizer.reuse-optimize-block-with-digest-enabled", "true")
    # Small Python bundles: a feature reaches Redis within ~100 ms of leaving its window.
    conf.set("python.fn-execution.bundle.time", "100")
    # watermarks every 50 ms (default 200 ms): an OVER window emits only once the watermark passes the event
    conf.set("pipeline.auto-watermark-interval", "50 ms")
    conf.set("python.fn-execution.bundle.size", "1000")
    conf.set("python.fn-execution.arrow.batch.size", "1000")
    if idle_timeout:
        # Off by default: a partition marked idle while the job is backpressured (e.g. at start-up, while
        # the Python workers boot) lets the watermark run ahead, and its events then arrive late.
        conf.set("table.exec.source.idle-timeout", idle_timeout)
    if parallelism:
        conf.set("parallelism.default", str(parallelism))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", default=None, help="comma-separated view names (default: all)")
    parser.add_argument("--bounded", action="store_true", help="stop at the offsets that were latest at start")
    parser.add_argument("--since-ms", type=int, default=None, help="read events from this Kafka timestamp")
    parser.add_argument("--out-of-orderness-ms", type=int, default=500)
    parser.add_argument("--parallelism", type=int, default=None)
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--idle-timeout", default=None, help="e.g. '30 s': let the watermark advance past "
                                                             "partitions that receive nothing")
    parser.add_argument("--config", default=None, help="liveml.yaml to read addresses from")
    parser.add_argument("--explain", action="store_true", help="print Flink's plan of the job and exit")
    args = parser.parse_args(argv)

    from pyflink.datastream import StreamExecutionEnvironment

    from flink_jobs.common import PlanRecorder, ensure_pipeline_jars, execute_resumable, state_configuration
    from iceberg_schemas.features import view

    cfg = load_config(args.config)
    views = [view(v) for v in args.views.split(",")] if args.views else list(FEATURE_VIEWS)
    env = StreamExecutionEnvironment.get_execution_environment(state_configuration(cfg, "features", args.bounded))
    t_env = StreamTableEnvironment.create(env)
    ensure_pipeline_jars(t_env, cfg)
    configure(t_env, args.parallelism, "liveml-features", args.idle_timeout)
    recorder = PlanRecorder(t_env)
    stmts = build_feature_job(recorder, cfg, views, bounded=args.bounded, since_ms=args.since_ms,
                              out_of_orderness_ms=args.out_of_orderness_ms, redis=not args.no_redis)
    if args.explain:
        print(stmts.explain())
        return
    execute_resumable(t_env, cfg, "features", args.bounded, recorder, stmts.execute)


if __name__ == "__main__":
    main(sys.argv[1:])
