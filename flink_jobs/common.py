"""What every job file shares: the connector jars on ``pipeline.jars``, the catalog, Kafka source options."""

from __future__ import annotations

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
