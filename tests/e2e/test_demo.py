"""`liveml demo` (what `make demo` runs): the main job on real trips, and the proof job with --proof.

The quick demo runs in a tenant of its own on the session's stack (its own topics, catalog and Redis
database), then the commands its summary prints are run as printed.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from liveml.config import load_config
from liveml.demo import HISTORY_QUICK_TRIPS
from liveml.tenant import write_tenant_config
from tests.conftest import REPO, cli_json, env_without_config, run_cli

pytestmark = pytest.mark.e2e


def cancel_jobs(config: Path, ids) -> None:
    for job_id in ids:
        run_cli(config, "cancel", job_id, check=False)


@pytest.fixture(scope="module")
def quick(stack_config):
    tenant = write_tenant_config(load_config(stack_config, env={}), "demo", 8)
    proc = run_cli(tenant, "demo", "--quick", "--json", check=False, timeout=1500)
    try:
        result = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except ValueError:
        result = {}
    yield tenant, proc, result
    cancel_jobs(tenant, (result.get("jobs") or {}).values())


def test_quick_demo_serves_a_promoted_version_with_live_predictions(quick):
    tenant, proc, result = quick
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert result["ok"] is True
    model = result["model"]
    assert isinstance(model["version"], int) and 0.5 < model["auc"] <= 1.0 and model["log_loss"] > 0
    # the promoted version is the one the server's stable label names
    listed = {m["version"]: m for m in cli_json(tenant, "models", "list")}
    assert "stable" in listed[model["version"]]["labels"]
    ts = result["training_set"]
    assert set(ts["snapshot_ids"]) >= {"labels.trips", "raw.trips"}
    # every history trip is in, with its decision event: the build waited for both sources
    assert ts["rows"] == HISTORY_QUICK_TRIPS and ts["excluded"]["no_decision_event"] == 0, ts
    preds = result["predictions"]
    assert preds["trips_ended"] > 100
    assert preds["ok_from_model"] >= 0.9 * preds["trips_ended"], preds
    ok = [r for r in preds["by_version_status"] if r["status"] == "ok" and r["model_version"] == model["version"]]
    assert ok and ok[0]["latency_p50_ms"] <= ok[0]["latency_p99_ms"]
    assert len(result["examples"]) == 3 and all(0 <= e["score"] <= 1 and e["features"] for e in result["examples"])
    fresh = result["feature_freshness"]
    assert fresh["samples"] > 10 and 0 < fresh["p50_ms"] <= fresh["p99_ms"]
    assert result["events"]["history_sent"] > 0 and result["events"]["live_sent"] > 0


def test_the_commands_the_demo_prints_work_as_printed(quick):
    tenant, proc, result = quick
    env = env_without_config()
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    for what in ("query", "predict", "features"):
        cmd = result["where"][what]
        assert f"--config {tenant}" in cmd or f"--config {shlex.quote(str(tenant))}" in cmd
        done = subprocess.run(cmd, shell=True, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (cmd, done.stdout[-2000:], done.stderr[-2000:])
    example = result["examples"][0]
    assert example["trip_id"] in run_cli(tenant, *shlex.split(result["where"]["query"])[3:]).stdout


def test_a_second_demo_reuses_the_jobs_and_history(quick):
    """`make demo` twice, no cleanup between: the running jobs and the history are reused."""
    tenant, proc, result = quick
    again = run_cli(tenant, "demo", "--quick", "--json", check=False, timeout=1500)
    second = json.loads(again.stdout) if again.stdout.strip() else {}
    cancel_jobs(tenant, set((second.get("jobs") or {}).values()) - set((result.get("jobs") or {}).values()))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert second["ok"] is True and second["jobs"] == result["jobs"]
    assert second["events"]["history_sent"] == 0 and second["events"]["live_sent"] > 0
    assert second["model"]["version"] >= result["model"]["version"]


def test_proof_demo_reports_ok(stack_config):
    result = cli_json(stack_config, "demo", "--proof", "--rows", "120")
    assert result["ok"] is True
    assert result["job_state"] == "FINISHED"
    assert result["sent"] == result["read_back"] == 120 and result["mismatched"] == 0
