"""The same catalog on PostgreSQL (`catalog.backend: postgres`): Flink writes, plain pyiceberg reads.

PostgreSQL is started by `liveml up postgres` from the Debian package `make setup` installs."""

import time

import pytest
import yaml
from pyiceberg.catalog import load_catalog

from liveml.flink import wait_for_job
from liveml.proof import make_events, produce
from tests.conftest import cli_json, run_cli

pytestmark = pytest.mark.integration

PG_PORT = 15432


@pytest.fixture(scope="module")
def pg_config(stack_config, tmp_path_factory):
    """The test stack's Kafka and Flink, with a catalog on a PostgreSQL of its own."""
    data = yaml.safe_load(stack_config.read_text())
    data["catalog"] = {"backend": "postgres", "warehouse": "warehouse-pg",
                       "postgres_url": f"postgresql://iceberg:${{PG_TEST_PASSWORD:-s3cret}}@localhost:{PG_PORT}/iceberg"}
    path = tmp_path_factory.mktemp("pg") / "liveml.yaml"
    path.write_text(yaml.safe_dump(data))
    try:
        run_cli(path, "up", "postgres", "catalog")
        yield path
    finally:
        run_cli(path, "down", "postgres", check=False)


def test_status_shows_postgres_and_catalog(pg_config):
    services = cli_json(pg_config, "status")["services"]
    assert services["postgres"]["up"] and services["postgres"]["address"] == f"localhost:{PG_PORT}"
    assert services["catalog"]["up"] and services["catalog"]["address"].startswith("postgresql+psycopg2://")


def test_flink_writes_and_plain_pyiceberg_reads_through_postgres(cfg, pg_config):
    assert {r["action"] for r in cli_json(pg_config, "tables", "create")} <= {"created", "unchanged"}
    run_id = 201
    events = make_events(80, run_id)
    since = int(time.time() * 1000) - 1000
    produce(cfg, "proof", events)
    sub = cli_json(pg_config, "submit", "proof", "--since-ms", str(since))
    assert wait_for_job(cfg, sub["job_id"]) == "FINISHED"

    conf = cli_json(pg_config, "config")["catalog"]
    assert conf["properties"]["uri"].startswith("postgresql+psycopg2://iceberg:s3cret@")
    catalog = load_catalog(conf["name"], **conf["properties"])
    got = catalog.load_table("ops.proof_events").scan(
        row_filter=f"id >= {run_id * 1_000_000} and id < {(run_id + 1) * 1_000_000}").to_arrow()
    assert sorted(got.column("id").to_pylist()) == [e["id"] for e in events]
    assert "warehouse-pg" in catalog.load_table("ops.proof_events").location()


def test_down_postgres_twice_is_harmless(pg_config):
    assert cli_json(pg_config, "down", "postgres")["services"]["postgres"]["outcome"] == "stopped"
    assert cli_json(pg_config, "down", "postgres")["services"]["postgres"]["outcome"] == "not running"
    run_cli(pg_config, "up", "postgres")
