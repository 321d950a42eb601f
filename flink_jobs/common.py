"""What every job file shares: the connector jars on ``pipeline.jars``, the catalog, Kafka source options,
where a long-running job keeps its state."""

from __future__ import annotations

import re
from typing import Any, Callable

from pyflink.common import Configuration
from pyflink.table import TableEnvironment

from liveml.config import LivemlConfig
from liveml.flink import pipeline_jars_value


def ensure_pipeline_jars(t_env: TableEnvironment, cfg: LivemlConfig) -> None:
    """Put the connector jars on ``pipeline.jars`` *through the table config*.

    Jars given to `flink run` as ``-Dpipeline.jars`` reach the job graph but not the client's class loader,
    so ``CREATE CATALOG ... 'type'='iceberg'`` would not find its factory. Setting the key here loads them
    into the client too (pyflink's TableConfig.set does that) and is why a plain
    ``flink run -py flink_jobs/<job>.py`` works without extra flags.
    """
    ours_all = pipeline_jars_value(cfg)
    if not ours_all:
        return  # every connector is on Flink's own classpath (lib/)
    conf = t_env.get_config()
    given = [j for j in Configuration.parse_list_value(conf.get("pipeline.jars", "") or "") if j.strip()]
    ours = [j for j in ours_all.split(";") if j not in given]
    conf.set("pipeline.jars", ";".join(given + ours))


def catalog_ddl(cfg: LivemlConfig) -> str:
    """The Iceberg catalog pyiceberg also opens, under the same name."""
    opts = ", ".join(f"'{k}' = '{v}'" for k, v in cfg.flink_catalog_options().items())
    return f"CREATE CATALOG IF NOT EXISTS {cfg.catalog.name} WITH ({opts})"


def consumer_group(cfg: LivemlConfig, name: str) -> str:
    """A job source's Kafka consumer group, ``<topic prefix>liveml-<name>``: stable across runs, so the
    offsets it commits at each checkpoint are where the next run without state starts; one per tenant."""
    return f"{cfg.kafka.topic_prefix}liveml-{name}"


def kafka_source_options(cfg: LivemlConfig, topic: str, group_id: str, bounded: bool = False,
                         since_ms: int | None = None, startup: str = "group-offsets") -> dict[str, str]:
    """Kafka connector options: where to start and, if bounded, where to stop (the offsets that are latest
    when the job starts).

    A run restored from a savepoint or checkpoint reads on from the offsets in its state, whatever these
    say. Without state it starts at ``since_ms`` if given, else (``group-offsets``) at the offsets the
    consumer group ``group_id`` committed, which the source commits when a checkpoint completes, so a
    job started again without state does not read again what its sinks already committed; a group that
    never committed starts at the earliest offset."""
    opts = {"connector": "kafka", "topic": topic, "properties.bootstrap.servers": cfg.kafka.bootstrap_servers,
            "properties.group.id": group_id}
    if since_ms is not None:
        opts.update({"scan.startup.mode": "timestamp", "scan.startup.timestamp-millis": str(since_ms)})
    else:
        opts["scan.startup.mode"] = startup
        if startup == "group-offsets":
            opts["properties.auto.offset.reset"] = "earliest"
    if bounded:
        opts["scan.bounded.mode"] = "latest-offset"
    return opts


def state_configuration(cfg: LivemlConfig, job: str, bounded: bool = False) -> Configuration:
    """The settings that let an unbounded run of ``job`` (its `liveml submit` name) resume after a cancel,
    a failure or a restart of the cluster: checkpoints in the job's own directory under LIVEML_HOME
    (:mod:`liveml.job_state`), retained when the job is cancelled or fails. Give it to
    ``StreamExecutionEnvironment.get_execution_environment``, so a plain `flink run -py` of the job file
    keeps its state where `liveml submit` looks for it.

    A bounded run of a job that keeps state checkpoints beside it (``bounded/``, so `liveml submit` sees
    it running) and retains nothing: its Kafka splits end at the offsets it started with, which an
    unbounded job restored from them would stop at. Any other job keeps Flink's defaults."""
    from liveml.job_state import STATEFUL_JOBS, bounded_dir, checkpoint_dir

    conf = Configuration()
    if job not in STATEFUL_JOBS:
        return conf
    if bounded:
        conf.set_string("execution.checkpointing.dir", bounded_dir(cfg, job).as_uri())
        conf.set_string("execution.checkpointing.externalized-checkpoint-retention", "NO_EXTERNALIZED_CHECKPOINTS")
    else:
        conf.set_string("execution.checkpointing.dir", checkpoint_dir(cfg, job).as_uri())
        conf.set_string("execution.checkpointing.externalized-checkpoint-retention", "RETAIN_ON_CANCELLATION")
    return conf


class PlanRecorder:
    """A table environment as a job's builder uses it, noting every statement the job declares: the job's
    plan, which decides how Flink maps saved state onto operators (:func:`liveml.job_state.check_plan`).

    Connector options (addresses, topic names) and the catalog are left out: they move with the config, not
    with the plan. Flink's version is in: its planner numbers the operators, and Flink keeps SQL state
    compatible across versions only through compiled plans. Anything else is delegated to the real
    environment."""

    def __init__(self, t_env: TableEnvironment):
        from pyflink.version import __version__

        self._t_env = t_env
        self.statements: list[str] = [f"-- Flink {__version__}"]

    def __getattr__(self, name: str):
        return getattr(self._t_env, name)

    def note(self, text: str) -> None:
        """Something besides SQL that shapes the job's state (e.g. a DataStream operator)."""
        self.statements.append(text)

    def execute_sql(self, sql: str):
        if not sql.lstrip().upper().startswith("CREATE CATALOG"):
            self.note(re.sub(r"\)\s*WITH\s*\(.*\)\s*$", ")", sql.strip(), flags=re.S))
        return self._t_env.execute_sql(sql)

    def sql_query(self, sql: str):
        self.note(sql.strip())
        return self._t_env.sql_query(sql)

    def create_temporary_function(self, name: str, function) -> None:
        self.note(f"FUNCTION {name}")
        self._t_env.create_temporary_function(name, function)

    def create_statement_set(self):
        return _RecordingStatementSet(self._t_env.create_statement_set(), self)


class _RecordingStatementSet:
    def __init__(self, stmts, recorder: PlanRecorder):
        self._stmts, self._recorder = stmts, recorder

    def __getattr__(self, name: str):
        return getattr(self._stmts, name)

    def add_insert_sql(self, sql: str):
        self._recorder.note(sql.strip())
        self._stmts.add_insert_sql(sql)
        return self


def check_resumable(t_env: TableEnvironment, cfg: LivemlConfig, job: str, bounded: bool,
                    recorder: PlanRecorder) -> None:
    """Before the job is submitted: if Flink is to restore it (``flink run -s``, which `liveml submit`
    passes), refuse a state written by another plan (:func:`liveml.job_state.check_plan`), unless the
    submission allows non-restored state (``-n``)."""
    from liveml.job_state import check_plan, keeps_state

    conf = t_env.get_config()
    location = conf.get("execution.state-recovery.path", None)
    allow = str(conf.get("execution.state-recovery.ignore-unclaimed-state", "false")).lower() == "true"
    if location and keeps_state(job, bounded) and not allow:
        check_plan(cfg, job, location, recorder.statements)


def record_plan(cfg: LivemlConfig, job: str, bounded: bool, job_id, recorder: PlanRecorder) -> None:
    """After the job is submitted: note its plan under its id, for the runs that resume from its state."""
    from liveml.job_state import keeps_state, record_plan as record

    if job_id is not None and keeps_state(job, bounded):
        record(cfg, job, str(job_id), recorder.statements)


def execute_resumable(t_env: TableEnvironment, cfg: LivemlConfig, job: str, bounded: bool,
                      recorder: PlanRecorder, execute: Callable[[], Any]) -> Any:
    """``execute()`` the job between :func:`check_resumable` and :func:`record_plan`; returns its result
    (a TableResult or a JobExecutionResult)."""
    check_resumable(t_env, cfg, job, bounded, recorder)
    result = execute()
    if hasattr(result, "get_job_client"):
        client = result.get_job_client()
        job_id = client.get_job_id() if client is not None else None
    else:
        job_id = result.get_job_id()
    record_plan(cfg, job, bounded, job_id, recorder)
    return result
