"""What every job file needs before it declares anything: the connector jars on ``pipeline.jars``."""

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
