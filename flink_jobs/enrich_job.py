"""The enrichment job: completed trips from Kafka -> context features -> a live prediction -> Kafka
``predictions`` and the Iceberg table ``predictions.trips``.

    Kafka trips (end events, validated by the same SQL as the feature job)
      -> batches: ARRAY_AGG over 20 ms processing-time windows, 8 groups by trip id (in the JVM)
      -> to_data_stream -> AsyncDataStream.unordered_wait_with_retry(EnrichFunction)   [flink_jobs/enrich_operator.py]
      -> from_data_stream -> INSERT INTO predictions.trips (Iceberg, exactly once on checkpoints)
                          -> INSERT INTO the Kafka topic predictions (JSON)

Batches, because PyFlink's async operator costs per record (a Beam element, a coroutine, a timeout
timer thread): one event per record ran 1,228 enriched events/s on 2 cores, batches of the events that
arrive within 20 ms 3,979/s (bench/enrichment.py, median of 3). A batch adds at most the window to the latency.
With ``--bounded`` the batches are of one event: processing-time windows do not fire at the end of a
bounded input, and the last window would be lost.

Run it with `liveml submit enrich`, or as a Flink user would:

    flink run -m localhost:8081 -py flink_jobs/enrich_job.py -pyexec .venv/bin/python \\
        -pyclientexec .venv/bin/python

Malformed trip events are not this job's to report: the feature job dead-letters them (``trips.dlq``) and
this one skips them with the same validation.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from pyflink.common import Time, Types
from pyflink.datastream import AsyncDataStream, StreamExecutionEnvironment
from pyflink.datastream.async_retry_strategies import ExponentialBackoffDelayRetryStrategy
from pyflink.table import StreamTableEnvironment
from pyiceberg.types import DoubleType, IntegerType, LongType, StringType, TimestamptzType

from flink_jobs import feature_sql as fsql
from flink_jobs.common import (PlanRecorder, catalog_ddl, consumer_group, ensure_pipeline_jars, execute_resumable,
                               state_configuration)
from flink_jobs.enrich_operator import EnrichFunction, StatusIs
from flink_jobs.features_job import configure
from iceberg_schemas.sources import PREDICTIONS_TOPIC, TRIPS
from iceberg_schemas.tables import PREDICTIONS
from iceberg_schemas.training import TIPS
from liveml.config import EnrichConfig, LivemlConfig, load_config

_ICEBERG_TO_FLINK = {StringType: Types.STRING(), LongType: Types.LONG(), DoubleType: Types.DOUBLE(),
                     IntegerType: Types.INT(), TimestamptzType: Types.LONG()}  # times travel as epoch ms
_SQL = {StringType: "STRING", LongType: "BIGINT", DoubleType: "DOUBLE", IntegerType: "INT",
        TimestamptzType: "BIGINT"}


def input_fields() -> list[tuple[str, str]]:
    """``(name, source type)`` of what the operator needs from a trip event: its id and time, and every
    request-time field and view entity of the training set (never a hand-typed list)."""
    names = ["trip_id", "event_time", *TIPS.context_fields, *(v.entity for v in TIPS.feature_views)]
    seen = list(dict.fromkeys(names))
    return [(n, TRIPS.field(n).type) for n in seen]


def output_fields() -> list[tuple[str, object]]:
    """The predictions table's columns, in order, with their Iceberg types."""
    return [(f.name, type(f.field_type)) for f in PREDICTIONS.schema.fields]


def _columns(fields: list[tuple[str, str]], named: bool = False) -> str:
    """The ``fields`` of a good trip event, in order, as the feature job's views parsed them (the event time
    as its epoch milliseconds); ``named`` gives each its field name (not inside a ``ROW``)."""
    return ", ".join(fsql.q(fsql.column(TRIPS.field(n))) + (f" AS {fsql.q(n)}" if named else "")
                     for n, _ in fields)


def trips_query(fields: list[tuple[str, str]]) -> str:
    """End events one per row, the columns in ``fields`` order (what a per-event operator would read)."""
    return f"SELECT {_columns(fields, named=True)} FROM {TRIPS.name}_good WHERE event_type = 'end'"


def single_batches_query(fields: list[tuple[str, str]]) -> str:
    """End events as batches of one: what a bounded run uses (see :func:`build_enrich_job`)."""
    return f"SELECT ARRAY[ROW({_columns(fields)})] AS events FROM {TRIPS.name}_good WHERE event_type = 'end'"


def batches_query(fields: list[tuple[str, str]], window_ms: int, groups: int) -> str:
    """End events grouped into small batches: those of each ``window_ms`` processing-time window, in
    ``groups`` groups by trip id (so the batches spread over the operator's parallel instances). The async
    operator then pays Flink's per-record cost per batch. Each batch is an array of rows in ``fields`` order."""
    return (f"SELECT ARRAY_AGG(ROW({_columns(fields)})) AS events FROM TABLE(TUMBLE(TABLE {TRIPS.name}_good, "
            f"DESCRIPTOR(proc_time), INTERVAL '{window_ms / 1000:.3f}' SECOND)) WHERE event_type = 'end' "
            f"GROUP BY window_start, window_end, MOD(HASH_CODE(trip_id), {groups})")


def output_type() -> tuple[list[str], object]:
    """The enriched stream's column names and Flink row type (the predictions table's columns)."""
    out = output_fields()
    names = [n for n, _ in out]
    return names, Types.ROW_NAMED(names, [_ICEBERG_TO_FLINK[t] for _, t in out])


def kafka_insert(names: list[str]) -> str:
    return f"INSERT INTO predictions_kafka SELECT {', '.join(fsql.q(n) for n in names)} FROM enriched"


def kafka_sink_ddl(cfg: LivemlConfig, exactly_once: bool) -> str:
    cols = ",\n  ".join(f"`{n}` {_SQL[t]}" for n, t in output_fields())
    opts = fsql.kafka_sink_options(cfg, PREDICTIONS_TOPIC, "predictions", exactly_once,
                                   **{"key.format": "raw", "key.fields": "trip_id"})
    return fsql.kafka_sink_ddl("predictions_kafka", cols, opts)


def iceberg_insert(catalog: str) -> str:
    cols = [n for n, _ in output_fields()]
    select = ", ".join(f"CAST(TO_TIMESTAMP_LTZ(`{n}`, 3) AS TIMESTAMP_LTZ(6))" if t is TimestamptzType else f"`{n}`"
                       for n, t in output_fields())
    target = f"`{catalog}`.`{PREDICTIONS.namespace}`.`{PREDICTIONS.name}`"
    return f"INSERT INTO {target} ({', '.join(f'`{c}`' for c in cols)}) SELECT {select} FROM enriched"


def operator_settings(cfg: LivemlConfig, enrich: EnrichConfig) -> dict:
    return {"grpc": cfg.serving.grpc, "redis_url": cfg.redis.url, "model_name": cfg.serving.model_name,
            **enrich.model_dump()}


def build_enrich_job(env: StreamExecutionEnvironment, t_env: StreamTableEnvironment, cfg: LivemlConfig,
                     enrich: EnrichConfig, bounded: bool = False, since_ms: int | None = None,
                     kafka_sink: bool = True, exactly_once_kafka: bool = True):
    """Declare the job on ``t_env``; returns the statement set (attached to ``env`` by the caller)."""
    t_env.execute_sql(catalog_ddl(cfg))
    for ddl in fsql.good_events_ddl(TRIPS, cfg, consumer_group(cfg, "enrich"), bounded, since_ms):
        t_env.execute_sql(ddl)
    fields_in = input_fields()
    # Processing-time windows do not fire at the end of a bounded input (measured: a 2 s window over a
    # finished source emitted nothing), so a bounded run would lose its last window: it sends batches of one.
    query = single_batches_query(fields_in) if bounded else \
        batches_query(fields_in, enrich.batch_window_ms, enrich.batch_groups)
    batches = t_env.to_data_stream(t_env.sql_query(query))
    names, out_type = output_type()
    function = EnrichFunction(operator_settings(cfg, enrich), [n for n, _ in fields_in], names)
    # max_attempts counts retries (PyFlink calls it attempts); the backoff grows per retry up to 10x. The
    # timeout, capacity and retries apply per batch
    strategy = ExponentialBackoffDelayRetryStrategy(
        enrich.retries, enrich.backoff_ms, enrich.backoff_ms * 10, 2.0,
        result_predicate=StatusIs(names.index("status")), exception_predicate=None)
    wait = AsyncDataStream.ordered_wait_with_retry if enrich.ordered else AsyncDataStream.unordered_wait_with_retry
    enriched = wait(batches, function, Time.milliseconds(enrich.timeout_ms), strategy, enrich.capacity, out_type) \
        .name("predict (async gRPC)").uid("liveml-enrich-predict")
    if hasattr(t_env, "note"):  # a PlanRecorder: the async operator's state is part of the job's plan
        t_env.note(f"ASYNC liveml-enrich-predict ordered={enrich.ordered} in={[n for n, _ in fields_in]} out={names}")
    t_env.create_temporary_view("enriched", t_env.from_data_stream(enriched))
    stmts = t_env.create_statement_set()
    stmts.add_insert_sql(iceberg_insert(cfg.catalog.name))
    if kafka_sink:
        t_env.execute_sql(kafka_sink_ddl(cfg, exactly_once_kafka))
        stmts.add_insert_sql(kafka_insert(names))
    return stmts


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bounded", action="store_true", help="stop at the offsets that were latest at start")
    parser.add_argument("--since-ms", type=int, default=None, help="read events from this Kafka timestamp")
    parser.add_argument("--parallelism", type=int, default=None)
    parser.add_argument("--canary-fraction", type=float, default=None)
    parser.add_argument("--shadow-label", default=None)
    parser.add_argument("--capacity", type=int, default=None)
    parser.add_argument("--timeout-ms", type=int, default=None)
    parser.add_argument("--deadline-ms", type=int, default=None)
    parser.add_argument("--ordered", action="store_true", default=None)
    parser.add_argument("--kafka-at-least-once", action="store_true",
                        help="predictions reach Kafka at once instead of at each checkpoint (Iceberg stays "
                             "exactly once)")
    parser.add_argument("--no-kafka", action="store_true", help="write predictions to Iceberg only")
    parser.add_argument("--config", default=None, help="liveml.yaml to read addresses from")
    args = parser.parse_args(argv)

    cfg = load_config(args.config)
    overrides = {k: v for k, v in {"canary_fraction": args.canary_fraction, "shadow_label": args.shadow_label,
                                   "capacity": args.capacity, "timeout_ms": args.timeout_ms,
                                   "deadline_ms": args.deadline_ms, "ordered": args.ordered}.items()
                 if v is not None}
    enrich = EnrichConfig(**{**cfg.enrich.model_dump(), **overrides})
    env = StreamExecutionEnvironment.get_execution_environment(state_configuration(cfg, "enrich", args.bounded))
    t_env = StreamTableEnvironment.create(env)
    ensure_pipeline_jars(t_env, cfg)
    configure(t_env, args.parallelism, "liveml-enrich")
    recorder = PlanRecorder(t_env)
    stmts = build_enrich_job(env, recorder, cfg, enrich, bounded=args.bounded, since_ms=args.since_ms,
                             kafka_sink=not args.no_kafka, exactly_once_kafka=not args.kafka_at_least_once)
    stmts.attach_as_datastream()
    execute_resumable(t_env, cfg, "enrich", args.bounded, recorder, lambda: env.execute("liveml-enrich"))


if __name__ == "__main__":
    main(sys.argv[1:])
