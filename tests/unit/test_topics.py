"""Kafka topics without Kafka: what is declared, which topics each job reads, and what a refusal says."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import yaml

from iceberg_schemas.sources import LABELS, TOPICS, TRIPS
from liveml import flink, topics
from liveml.config import load_config
from liveml.errors import LivemlError
from tests.conftest import OFFLINE_PORTS, run_cli, write_test_config

pytestmark = pytest.mark.unit


@pytest.fixture
def cfg(tmp_path):
    return load_config(overrides={"home": str(tmp_path)}, env={})


def _tenant(tmp_path, prefix: str = "t1-"):
    """A config file of its own, with a topic prefix (as a tenant has)."""
    path = write_test_config(tmp_path / prefix, OFFLINE_PORTS)
    data = yaml.safe_load(path.read_text())
    data["kafka"]["topic_prefix"] = prefix
    path.write_text(yaml.safe_dump(data))
    return path


# --- declarations ---------------------------------------------------------------------------------------
def test_every_topic_of_the_platform_is_declared_once_with_partitions_and_retention():
    names = [s.name for s in topics.TOPIC_SPECS]
    assert len(names) == len(set(names))
    assert set(names) == {*TOPICS, topics.PROOF_TOPIC}
    assert {TRIPS.topic, TRIPS.dlq_topic, LABELS.topic, LABELS.dlq_topic, "predictions"} <= set(names)
    for spec in topics.TOPIC_SPECS:
        assert spec.partitions >= 1 and spec.doc
        # historical event times as record timestamps: retention by size, never by age
        assert spec.config() == {"retention.ms": "-1", "retention.bytes": str(8 * 1024**3)}
    by_name = {s.name: s for s in topics.TOPIC_SPECS}
    assert by_name[TRIPS.topic].partitions == by_name[LABELS.topic].partitions == topics.DEFAULT_PARTITIONS == 2


def test_the_proof_topic_is_the_proof_jobs():
    from flink_jobs.proof_job import SOURCE_TOPIC

    assert topics.PROOF_TOPIC == SOURCE_TOPIC


def test_declared_names_carry_the_prefix(tmp_path):
    tenant = load_config(_tenant(tmp_path), env={})
    assert topics.declared_names(tenant) == [f"t1-{s.name}" for s in topics.TOPIC_SPECS]


# --- which topics a job reads -----------------------------------------------------------------------------
def test_each_job_reads_its_sources(cfg):
    assert flink.source_topics(cfg, "features") == ["labels", "trips"]
    assert flink.source_topics(cfg, "features", ["--views", "pickup_area_1h", "--bounded"]) == ["trips"]
    assert flink.source_topics(cfg, "features", ["--views=company_tips_24h"]) == ["labels"]
    assert flink.source_topics(cfg, "enrich", ["--bounded", "--since-ms", "5"]) == ["trips"]
    assert flink.source_topics(cfg, "proof", ["--since-ms", "5"]) == ["proof"]
    assert flink.source_topics(cfg, "proof", ["--topic", "other"]) == ["other"]
    assert flink.source_topics(cfg, "backfill") == []  # reads Iceberg
    assert flink.source_topics(cfg, "flink_jobs/features_job.py") == []  # a path: its own business
    assert set(flink.SOURCE_TOPICS) <= set(flink.JOBS)


def test_the_jobs_config_decides_the_prefix(cfg, tmp_path):
    tenant = _tenant(tmp_path)
    assert flink.source_topics(load_config(tenant, env={}), "features") == ["t1-labels", "t1-trips"]
    # `--config` in the job's own arguments: the job reads that config, so that prefix counts
    assert flink.source_topics(cfg, "enrich", ["--config", str(tenant)]) == ["t1-trips"]
    assert flink.source_topics(cfg, "proof", ["--config", str(tenant)]) == ["proof"]  # the job does not prefix


def test_an_unknown_view_is_named(cfg):
    with pytest.raises(LivemlError, match="no feature view 'nope'.*liveml features list"):
        flink.source_topics(cfg, "features", ["--views", "nope"])


# --- the refusal ------------------------------------------------------------------------------------------
def test_the_refusal_names_topic_address_and_fix(cfg):
    text = str(flink.missing_topics_error(cfg, "features", ["labels"]))
    assert "job features reads Kafka topic labels" in text and cfg.kafka.bootstrap_servers in text
    assert "run `liveml tables create`" in text and "restart over and over" in text


def test_the_fix_names_a_config_that_is_not_the_default(tmp_path):
    tenant = _tenant(tmp_path)
    text = str(flink.missing_topics_error(load_config(tenant, env={}), "enrich", ["t1-trips"]))
    assert f"`liveml --config {tenant} tables create`" in text


def test_a_topic_nobody_declares_is_not_promised_to_tables_create(cfg):
    text = str(flink.missing_topics_error(cfg, "proof", ["other"]))
    assert "tables create" not in text and "not a topic the platform declares" in text


def test_submit_refuses_before_flink_run(cfg, monkeypatch):
    asked = []
    monkeypatch.setattr(flink, "rest_check", lambda c: None)
    monkeypatch.setattr(topics, "missing_topics", lambda servers, names: asked.append((servers, names)) or ["labels"])
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("flink run was called"))
    with pytest.raises(LivemlError, match="topic labels"):
        flink.submit(cfg, "features", ["--bounded"])
    assert asked == [(cfg.kafka.bootstrap_servers, ["labels", "trips"])]


def test_submit_of_a_job_without_topics_does_not_ask_kafka(cfg, monkeypatch):
    monkeypatch.setattr(flink, "rest_check", lambda c: None)
    monkeypatch.setattr(topics, "missing_topics", lambda *a: pytest.fail("Kafka was asked"))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, "Job has been "
                                                                                      "submitted with JobID abc", ""))
    assert flink.submit(cfg, "backfill", ["--from-ms", "0"])["job_id"] == "abc"


# --- creating them, against a stand-in admin client -------------------------------------------------------
class _Future:
    def __init__(self, error: str | None = None):
        self.error = error

    def result(self, timeout=None):
        if self.error:
            raise RuntimeError(self.error)


class _Admin:
    def __init__(self, have: dict[str, int], race: str | None = None):
        self.have, self.race, self.created = have, race, []

    def list_topics(self, timeout=None):
        meta = type("M", (), {})()
        meta.topics = {n: type("T", (), {"partitions": dict.fromkeys(range(p))})() for n, p in self.have.items()}
        return meta

    def create_topics(self, new):
        self.created += new
        return {t.topic: _Future("KafkaError{code=TOPIC_ALREADY_EXISTS}" if t.topic == self.race else None)
                for t in new}


def test_ensure_topics_creates_the_missing_with_their_declaration(tmp_path, monkeypatch):
    tenant = load_config(_tenant(tmp_path), env={})
    admin = _Admin({"t1-trips": 1, "unrelated": 3}, race="t1-labels.dlq")
    monkeypatch.setattr(topics, "_reachable", lambda servers: True)
    monkeypatch.setattr(topics, "_admin", lambda servers: admin)
    results = {r.topic: r for r in topics.ensure_topics(tenant)}
    assert list(results) == topics.declared_names(tenant)
    made = {t.topic: t for t in admin.created}
    assert "t1-trips" not in made and set(made) == set(results) - {"t1-trips"}
    assert made["t1-labels"].num_partitions == 2 and made["t1-proof"].num_partitions == 1
    assert made["t1-labels"].config == {"retention.ms": "-1", "retention.bytes": str(8 * 1024**3)}
    # an existing topic is left as it is, and its row shows the difference
    assert results["t1-trips"].as_dict() == {"kind": "topic", "topic": "t1-trips", "action": "unchanged",
                                             "partitions": 1, "declared_partitions": 2}
    assert results["t1-labels"].action == "created"
    assert results["t1-labels.dlq"].action == "unchanged"  # someone else created it meanwhile: fine


# --- the commands, with Kafka down ------------------------------------------------------------------------
def test_tables_create_with_kafka_down_names_the_address_and_the_fix(tmp_path):
    config = write_test_config(tmp_path, OFFLINE_PORTS)
    t0 = time.monotonic()
    proc = run_cli(config, "tables", "create", "--json", check=False)
    assert proc.returncode == 5 and "Traceback" not in proc.stderr and proc.stdout == ""
    assert f"Kafka is not reachable at localhost:{OFFLINE_PORTS['kafka']}" in proc.stderr
    assert "liveml up kafka" in proc.stderr
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "catalog").exists()  # refused before it touched the catalog


def test_print_command_needs_no_kafka(tmp_path):
    config = write_test_config(tmp_path, OFFLINE_PORTS)
    proc = run_cli(config, "submit", "features", "--print-command", "--bounded", check=False)
    assert proc.returncode == 0, proc.stderr
    assert "flink_jobs/features_job.py" in proc.stdout and proc.stdout.rstrip().endswith("--bounded")


def test_submit_with_flink_down_says_so_first(tmp_path):
    config = write_test_config(tmp_path, OFFLINE_PORTS)
    proc = run_cli(config, "submit", "features", check=False)
    assert proc.returncode == 5 and "liveml up flink" in proc.stderr and "Traceback" not in proc.stderr


def test_tables_create_json_keeps_a_row_per_table(tmp_path, monkeypatch):
    """The JSON is one list: a row per table (as before), then a row per topic, told apart by ``kind``."""
    from click.testing import CliRunner

    from liveml.cli import main

    config = write_test_config(tmp_path, OFFLINE_PORTS)
    (tmp_path / "catalog").mkdir()  # what `liveml up catalog` makes
    admin = _Admin({})
    monkeypatch.setattr(topics, "_reachable", lambda servers: True)
    monkeypatch.setattr(topics, "_admin", lambda servers: admin)
    result = CliRunner().invoke(main, ["--config", str(config), "tables", "create", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    tables = [r for r in rows if r["kind"] == "table"]
    assert tables and all({"table", "action"} <= set(r) for r in tables)
    assert [r["topic"] for r in rows if r["kind"] == "topic"] == topics.declared_names(load_config(config, env={}))
    assert {r["action"] for r in rows} == {"created"}
