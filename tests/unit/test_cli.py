"""The CLI's contract without services: JSON shapes, and errors that say what to do next."""

import json
import os
import subprocess

import pytest

from tests.conftest import OFFLINE_PORTS, REPO, run_cli
from tests.conftest import write_test_config as _write


def write_test_config(home):
    return _write(home, OFFLINE_PORTS)

pytestmark = pytest.mark.unit


def test_config_json_shape(tmp_path):
    config = write_test_config(tmp_path)
    data = json.loads(run_cli(config, "config", "--json").stdout)
    assert data["home"] == str(tmp_path)
    assert data["kafka"]["bootstrap_servers"] == f"localhost:{OFFLINE_PORTS['kafka']}"
    assert set(data["serving"]) >= {"grpc", "rest", "model_base_path"}
    assert data["catalog"]["name"] == "liveml"
    assert data["catalog"]["properties"]["uri"].startswith("sqlite:////")
    assert data["flink"]["rest_url"] and data["redis"]["url"]


def test_liveml_config_env_var_and_overrides(tmp_path):
    config = write_test_config(tmp_path)
    proc = run_cli(None, "config", "--json", env={"LIVEML_CONFIG": str(config), "LIVEML_REDIS__URL":
                                                  "redis://elsewhere:7000/1"})
    assert json.loads(proc.stdout)["redis"]["url"] == "redis://elsewhere:7000/1"


def test_malformed_config_names_file_and_field(tmp_path):
    bad = tmp_path / "liveml.yaml"
    bad.write_text("flink:\n  task_slots: lots\n")
    proc = run_cli(bad, "status", check=False)
    assert proc.returncode == 2
    err = " ".join(proc.stderr.split())
    assert str(bad) in err and "'flink.task_slots'" in err
    assert "Traceback" not in proc.stderr


def test_missing_java_says_what_to_install(tmp_path):
    config = write_test_config(tmp_path)
    proc = run_cli(config, "up", "kafka", check=False, env={"JAVA_HOME": str(tmp_path / "no-jdk")})
    assert proc.returncode == 3
    assert "openjdk-17-jdk-headless" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("var, package", [("JAVA", "openjdk-17-jdk-headless"), ("MVN", "maven")])
def test_setup_without_java_or_maven_says_what_to_install(var, package):
    env = dict(os.environ, LIVEML_NO_APT="1", **{var: "/nonexistent/bin/tool"})
    proc = subprocess.run(["bash", "deploy/setup.sh"], cwd=REPO, capture_output=True, text=True, env=env)
    assert proc.returncode != 0
    assert f"apt-get install {package}" in proc.stderr


def test_down_with_nothing_running_is_harmless_twice(tmp_path):
    config = write_test_config(tmp_path)
    for _ in range(2):
        data = json.loads(run_cli(config, "down", "--json").stdout)
        assert {s["outcome"] for s in data["services"].values()} <= {"not running", "nothing to stop"}


def test_unreachable_flink_names_the_fix(tmp_path):
    config = write_test_config(tmp_path)
    proc = run_cli(config, "jobs", check=False)
    assert proc.returncode == 5
    assert "liveml up flink" in proc.stderr and str(OFFLINE_PORTS["flink_rest"]) in proc.stderr


def test_status_reports_down_services_with_addresses(tmp_path):
    config = write_test_config(tmp_path)
    data = json.loads(run_cli(config, "status", "--json").stdout)["services"]
    assert set(data) >= {"kafka", "flink", "redis", "catalog"}
    assert data["kafka"] == {**data["kafka"], "up": False, "address": f"localhost:{OFFLINE_PORTS['kafka']}", "pid": None}
    assert data["redis"]["up"] is False and data["flink"]["up"] is False


def test_features_list_json_shape():
    rows = json.loads(run_cli(None, "features", "list", "--json").stdout)
    by_view = {r["view"]: r for r in rows}
    assert by_view["pickup_area_1h"]["entity"] == "pickup_community_area"
    assert by_view["pickup_area_1h"]["table"] == "features.pickup_area_1h"
    assert "fare_avg_1h" in by_view["pickup_area_1h"]["features"]
    assert by_view["company_tips_24h"]["ttl_s"] == 48 * 3600
    assert all(set(r) >= {"view", "entity", "features", "table", "ttl_s"} for r in rows)


def test_features_get_with_redis_down_names_the_fix(tmp_path):
    config = write_test_config(tmp_path)
    proc = run_cli(config, "features", "get", "8", check=False)
    assert proc.returncode == 5 and "liveml up redis" in proc.stderr
