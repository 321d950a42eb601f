"""The proof job: Kafka topic `proof` -> a Python UDF -> Iceberg table `ops.proof_events`.

Trivial on purpose, but real: it exercises the Kafka SQL connector, the Iceberg JDBC catalog shared with
pyiceberg, the Iceberg sink committing on checkpoints, and Flink's Python workers (the UDF runs there).

Run it with `liveml submit proof`, or as a Flink user would (see README):

    flink run -m localhost:8081 -py flink_jobs/proof_job.py -pyexec .venv/bin/python \
        -pyclientexec .venv/bin/python
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from pyflink.table import DataTypes, StreamTableEnvironment, TableEnvironment
from pyflink.table.udf import udf

from flink_jobs.common import catalog_ddl, consumer_group, kafka_source_options
from liveml.config import LivemlConfig, load_config

SOURCE_TOPIC = "proof"
SINK_TABLE = "ops.proof_events"


@udf(result_type=DataTypes.STRING())
def tidy_name(name: str | None) -> str | None:
    """Runs in a Python worker: proves python.executable points at an environment with our packages."""
    return None if name is None else " ".join(name.split()).lower()


def source_ddl(cfg: LivemlConfig, topic: str, bounded: bool, since_ms: int | None) -> str:
    opts = {**kafka_source_options(cfg, topic, consumer_group(cfg, "proof"), bounded, since_ms),
            "format": "json", "json.ignore-parse-errors": "true"}
    rendered = ", ".join(f"'{k}' = '{v}'" for k, v in opts.items())
    return ("CREATE TEMPORARY TABLE proof_source (id BIGINT, name STRING, `value` DOUBLE, event_time_ms BIGINT)"
            f" WITH ({rendered})")


def build_proof_job(t_env: TableEnvironment, cfg: LivemlConfig, topic: str = SOURCE_TOPIC,
                    sink: str = SINK_TABLE, bounded: bool = True, since_ms: int | None = None):
    """Declare catalog, source and UDF on ``t_env`` and return the (not yet executed) statement set."""
    t_env.execute_sql(catalog_ddl(cfg))
    t_env.execute_sql(source_ddl(cfg, topic, bounded, since_ms))
    t_env.create_temporary_function("tidy_name", tidy_name)
    stmts = t_env.create_statement_set()
    stmts.add_insert_sql(
        f"INSERT INTO {cfg.catalog.name}.{sink} "
        "SELECT id, tidy_name(name), `value`, CAST(TO_TIMESTAMP_LTZ(event_time_ms, 3) AS TIMESTAMP_LTZ(6)) "
        "FROM proof_source WHERE id IS NOT NULL")
    return stmts


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topic", default=SOURCE_TOPIC)
    parser.add_argument("--sink", default=SINK_TABLE)
    parser.add_argument("--unbounded", action="store_true", help="keep running instead of stopping at the "
                                                                   "offsets that were latest at start")
    parser.add_argument("--since-ms", type=int, default=None, help="read events from this Kafka timestamp")
    parser.add_argument("--config", default=None, help="liveml.yaml to read addresses from")
    args = parser.parse_args(argv)

    from pyflink.datastream import StreamExecutionEnvironment

    from flink_jobs.common import PlanRecorder, ensure_pipeline_jars, execute_resumable, state_configuration

    cfg = load_config(args.config)
    bounded = not args.unbounded
    env = StreamExecutionEnvironment.get_execution_environment(state_configuration(cfg, "proof", bounded))
    t_env = StreamTableEnvironment.create(env)
    ensure_pipeline_jars(t_env, cfg)
    t_env.get_config().set("pipeline.name", f"liveml-proof: {args.topic} -> {args.sink}")
    recorder = PlanRecorder(t_env)
    stmts = build_proof_job(recorder, cfg, args.topic, args.sink, bounded, args.since_ms)
    execute_resumable(t_env, cfg, "proof", bounded, recorder, stmts.execute)


if __name__ == "__main__":
    main(sys.argv[1:])
