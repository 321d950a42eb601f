"""Jobs start cleanly on a fresh stack: `liveml tables create` makes every declared Kafka topic with its
partitions and retention, and `liveml submit` refuses a job whose source topic is missing, with the fix.

Each test runs under a topic prefix and a catalog of its own (a tenant's config, written but not created),
so the topics start out missing on the session's Kafka whatever other tests produced."""

from __future__ import annotations

import uuid

import pytest

from liveml import flink
from liveml.config import load_config
from liveml.tenant import write_tenant_config
from liveml.topics import TOPIC_SPECS
from tests.conftest import cli_json, run_cli

pytestmark = pytest.mark.integration


@pytest.fixture
def fresh(stack_config):
    """A config whose topics and tables do not exist yet."""
    name = f"fresh{uuid.uuid4().hex[:8]}"
    path = write_tenant_config(load_config(stack_config, env={}), name, redis_db=9)
    cfg = load_config(path, env={})
    cfg.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    return path, cfg


def _admin(cfg):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": cfg.kafka.bootstrap_servers})


def _describe(cfg, names: list[str]) -> dict[str, dict]:
    """Partitions and retention of each topic, as the broker has them."""
    from confluent_kafka.admin import ConfigResource, ResourceType

    admin = _admin(cfg)
    meta = admin.list_topics(timeout=10).topics
    out = {n: {"partitions": len(meta[n].partitions)} for n in names if n in meta}
    if not out:
        return out
    futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, n) for n in out])
    for resource, fut in futures.items():
        entries = fut.result(30)
        out[resource.name].update({k: entries[k].value for k in ("retention.ms", "retention.bytes")})
    return out


def test_tables_create_makes_every_declared_topic(fresh):
    path, cfg = fresh
    names = [cfg.kafka.topic(s.name) for s in TOPIC_SPECS]
    assert not _describe(cfg, names), "the prefix is fresh: no topic may exist yet"

    rows = cli_json(path, "tables", "create")
    topics = {r["topic"]: r for r in rows if r["kind"] == "topic"}
    assert list(topics) == names and {r["action"] for r in topics.values()} == {"created"}
    assert any(r["kind"] == "table" and r["action"] == "created" for r in rows)

    have = _describe(cfg, names)
    for spec in TOPIC_SPECS:
        name = cfg.kafka.topic(spec.name)
        assert have[name] == {"partitions": spec.partitions, "retention.ms": str(spec.retention_ms),
                              "retention.bytes": str(spec.retention_bytes)}, name
        assert topics[name]["partitions"] == topics[name]["declared_partitions"] == spec.partitions

    again = cli_json(path, "tables", "create")
    assert {r["action"] for r in again} == {"unchanged"}  # idempotent: tables and topics alike
    human = run_cli(path, "tables", "create")
    assert f"topic {cfg.kafka.topic('labels')}" in human.stderr and "unchanged" in human.stderr


def test_submit_refuses_a_job_whose_topic_is_missing(fresh, cfg):
    path, tenant = fresh
    before = {j["id"] for j in flink.list_jobs(cfg)}

    proc = run_cli(path, "submit", "features", check=False)
    err = " ".join(proc.stderr.split())
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert f"job features reads Kafka topics {tenant.kafka.topic('labels')}, {tenant.kafka.topic('trips')}" in err
    assert tenant.kafka.bootstrap_servers in err and f"`liveml --config {path} tables create`" in err

    proc = run_cli(path, "submit", "proof", "--topic", f"{tenant.kafka.topic_prefix}nobody", check=False)
    assert proc.returncode != 0 and "not a topic the platform declares" in " ".join(proc.stderr.split())
    assert {j["id"] for j in flink.list_jobs(cfg)} == before  # nothing reached `flink run`

    run_cli(path, "tables", "create")
    flink.check_source_topics(tenant, "features")  # now the job would start
    flink.check_source_topics(tenant, "enrich")
