"""Kafka -> Flink (with a Python UDF) -> Iceberg, read back with plain pyiceberg and compared with what was sent."""

import time

import pandas as pd
import pytest
from pyiceberg.catalog import load_catalog

from liveml.flink import wait_for_job
from liveml.proof import make_events, produce
from tests.conftest import cli_json, plain_flink_run, run_cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tables(stack_config):
    first = cli_json(stack_config, "tables", "create")
    second = cli_json(stack_config, "tables", "create")
    assert {r["action"] for r in second} == {"unchanged"}
    return first


def _plain_catalog(stack_config):
    conf = cli_json(stack_config, "config")["catalog"]
    return load_catalog(conf["name"], **conf["properties"])


def _read(stack_config, lo, hi) -> pd.DataFrame:
    table = _plain_catalog(stack_config).load_table("ops.proof_events")
    df = table.scan(row_filter=f"id >= {lo} and id < {hi}").to_pandas()
    return df.sort_values("id").reset_index(drop=True)


def _expected(events) -> pd.DataFrame:
    df = pd.DataFrame(events)
    df["name"] = df["name"].str.split().str.join(" ").str.lower()
    df["event_time"] = pd.to_datetime(df["event_time_ms"], unit="ms", utc=True)
    return df[["id", "name", "value", "event_time"]].sort_values("id").reset_index(drop=True)


def test_tables_are_listed(stack_config, tables):
    listed = {t["name"]: t for t in cli_json(stack_config, "tables", "list")}
    assert {"raw.trips", "labels.trips", "predictions.trips", "ops.proof_events"} <= set(listed)
    assert any(n.startswith("features.") for n in listed)


def test_submit_writes_exactly_what_was_sent(cfg, stack_config, tables):
    run_id = 101
    events = make_events(300, run_id)
    since = int(time.time() * 1000) - 1000
    produce(cfg, "proof", events, malformed=5)
    sub = cli_json(stack_config, "submit", "proof", "--since-ms", str(since))
    assert wait_for_job(cfg, sub["job_id"]) == "FINISHED"

    got = _read(stack_config, run_id * 1_000_000, (run_id + 1) * 1_000_000)
    want = _expected(events)
    assert len(got) == len(events)
    pd.testing.assert_frame_equal(got[["id", "name", "value"]], want[["id", "name", "value"]],
                                  check_dtype=False)
    assert (got["event_time"].dt.tz_convert("UTC") == want["event_time"]).all()

    listed = {t["name"]: t for t in cli_json(stack_config, "tables", "list")}
    assert listed["ops.proof_events"]["rows"] >= len(events)
    assert listed["ops.proof_events"]["snapshot_id"] is not None


def test_plain_flink_run_runs_the_same_job_file(cfg, stack_config, tables):
    """The command a Flink user types, documented in the README: no liveml in between."""
    run_id = 102
    events = make_events(40, run_id)
    since = int(time.time() * 1000) - 1000
    produce(cfg, "proof", events)
    job_id = plain_flink_run(cfg.flink.port, "flink_jobs/proof_job.py", stack_config, "--since-ms", str(since))
    assert wait_for_job(cfg, job_id) == "FINISHED"
    got = _read(stack_config, run_id * 1_000_000, (run_id + 1) * 1_000_000)
    assert got["id"].tolist() == _expected(events)["id"].tolist()


def test_jobs_and_cancel_through_rest(cfg, stack_config, tables):
    sub = cli_json(stack_config, "submit", "proof", "--unbounded", "--since-ms", str(int(time.time() * 1000)))
    deadline = time.time() + 120
    while time.time() < deadline:
        jobs = {j["id"]: j for j in cli_json(stack_config, "jobs")}
        if jobs.get(sub["job_id"], {}).get("state") == "RUNNING":
            break
        time.sleep(1)
    assert jobs[sub["job_id"]]["state"] == "RUNNING"
    assert set(jobs[sub["job_id"]]) >= {"id", "name", "state"}
    run_cli(stack_config, "cancel", sub["job_id"])
    assert wait_for_job(cfg, sub["job_id"], timeout=60) == "CANCELED"
