"""The Flink config we render and the `flink run` command line we build, without a cluster."""

import sys

import pytest
import yaml

from liveml.config import load_config
from liveml.errors import LivemlError
from liveml.flink import flink_home, render_flink_conf, run_command

pytestmark = pytest.mark.unit


@pytest.fixture
def cfg(tmp_path):
    return load_config(overrides={"home": str(tmp_path)}, env={})


def _get(conf, dotted):
    node = conf
    for part in dotted.split("."):
        node = node[part]
    return node


def test_rendered_conf_keeps_the_wheels_add_opens_and_sets_ours(cfg):
    base = yaml.safe_load((flink_home() / "conf" / "config.yaml").read_text())
    conf = render_flink_conf(cfg, base)
    assert _get(conf, "env.java.opts.all") == _get(base, "env.java.opts.all")
    assert "--add-opens=java.base/java.util=ALL-UNNAMED" in _get(conf, "env.java.opts.all")
    assert _get(conf, "taskmanager.numberOfTaskSlots") >= 4
    assert _get(conf, "python.executable") == sys.executable
    assert _get(conf, "execution.checkpointing.dir").startswith(f"file://{cfg.home_path}")
    assert _get(conf, "metrics.reporter.prom.factory.class").endswith("PrometheusReporterFactory")
    assert _get(conf, "rest.port") == 8081


def test_run_command_passes_python_and_every_jar(cfg):
    cmd = run_command(cfg, "proof", ["--since-ms", "5"])
    assert cmd[1:4] == ["run", "-m", "localhost:8081"]
    assert cmd[cmd.index("-pyexec") + 1] == sys.executable
    assert cmd[cmd.index("-pyclientexec") + 1] == sys.executable
    assert cmd[cmd.index("-py") + 1].endswith("flink_jobs/proof_job.py")
    shipped = next((a for a in cmd if a.startswith("-Dpipeline.jars=")), "")
    in_lib = " ".join(p.name for p in (flink_home() / "lib").glob("*.jar"))
    for connector in ("flink-sql-connector-kafka", "iceberg-flink-runtime"):
        assert connector in shipped or connector in in_lib, connector
    assert cmd[-2:] == ["--since-ms", "5"]


def test_a_connector_missing_from_lib_is_shipped(cfg, tmp_path, monkeypatch):
    import liveml.flink as lf

    fake_home = tmp_path / "pyflink"
    (fake_home / "lib").mkdir(parents=True)
    monkeypatch.setattr(lf, "flink_home", lambda: fake_home)
    jars = lf.pipeline_jars_value(cfg)
    assert "flink-sql-connector-kafka" in jars and "iceberg-flink-runtime" in jars


def test_unknown_job_is_named(cfg):
    with pytest.raises(LivemlError, match="unknown job 'nope'"):
        run_command(cfg, "nope")


def test_jdbc_drivers_and_hadoop_sit_in_flinks_lib():
    names = {p.name.split("-")[0] for p in (flink_home() / "lib").glob("*.jar")}
    assert {"sqlite", "postgresql", "hadoop", "commons", "iceberg", "flink"} <= names
    assert any(p.name.startswith("flink-sql-connector-kafka") for p in (flink_home() / "lib").glob("*.jar"))


def test_proof_job_sql_uses_the_shared_catalog(cfg):
    from flink_jobs.proof_job import catalog_ddl, source_ddl

    ddl = catalog_ddl(cfg)
    assert "'catalog-impl' = 'org.apache.iceberg.jdbc.JdbcCatalog'" in ddl
    assert f"jdbc:sqlite:{cfg.sqlite_path}" in ddl
    src = source_ddl(cfg, "proof", bounded=True, since_ms=123)
    assert "'scan.bounded.mode' = 'latest-offset'" in src and "'scan.startup.timestamp-millis' = '123'" in src
    assert "scan.bounded.mode" not in source_ddl(cfg, "proof", bounded=False, since_ms=None)


def test_proof_udf_tidies_names():
    from flink_jobs.proof_job import tidy_name

    assert tidy_name._func("  Alpha   TAXI ") == "alpha taxi"
    assert tidy_name._func(None) is None
