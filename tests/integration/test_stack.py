"""The real stack through `liveml up/status/down`: health, idempotence, clean shutdown, taken ports."""

import json
import socket

import psutil
import pytest

from liveml.config import load_config
from tests.conftest import TEST_PORTS, cli_json, run_cli

pytestmark = pytest.mark.integration


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _marked_by(home: str) -> list[int]:
    from liveml.stack.process import MARK

    pids = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARK, "").startswith(home) and proc.status() != "zombie":
                pids.append(proc.pid)
        except psutil.Error:
            continue
    return pids


def test_status_shows_every_service_up(stack_config):
    services = cli_json(stack_config, "status")["services"]
    for name in ("kafka", "flink", "redis", "catalog", "prometheus"):
        assert services[name]["up"], f"{name} is down: {services[name]}"
    assert services["flink"]["taskmanagers"] >= 1
    assert services["flink"]["slots_total"] >= 4
    assert services["kafka"]["address"] == f"localhost:{TEST_PORTS['kafka']}"
    for name in ("kafka", "flink", "redis", "prometheus"):
        assert psutil.pid_exists(services[name]["pid"])


def test_up_again_is_idempotent(stack_config):
    before = cli_json(stack_config, "status")["services"]
    result = cli_json(stack_config, "up")["services"]
    assert {r["outcome"] for r in result.values()} == {"already up"}
    after = cli_json(stack_config, "status")["services"]
    assert [after[n]["pid"] for n in after] == [before[n]["pid"] for n in before]


def test_flink_python_executable_is_the_venv(cfg, stack_config):
    import os
    import sys

    import requests

    conf = {e["key"]: e["value"] for e in requests.get(f"{cfg.flink.rest_url}/jobmanager/config").json()}
    assert os.path.samefile(conf["python.executable"], sys.executable)
    assert conf["metrics.reporter.prom.factory.class"].endswith("PrometheusReporterFactory")


def test_the_config_loads_under_the_environment_of_a_stack_process(stack_config):
    """Every process the stack starts carries LIVEML_PROC_MARK, and Flink's also LIVEML_HOME, LIVEML_CONFIG
    and FLINK_*; a job's client and its Python workers load the config in exactly that environment."""
    import subprocess

    from liveml.stack.process import MARK
    from tests.conftest import LIVEML

    from liveml.stack.flink_cluster import FlinkService

    cfg = load_config(stack_config, env={})
    home = str(cfg.home_path)
    env = psutil.Process(FlinkService(cfg).taskmanager_java_pids()[0]).environ()
    assert env[MARK].startswith(home) and env["LIVEML_HOME"] == home
    proc = subprocess.run([LIVEML, "config", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["home"] == home
    proc = subprocess.run([LIVEML, "config", "--json"], env={**env, "LIVEML_NO_APT": "1",
                          "LIVEML_TF_SERVING_ADDRESS": "localhost:8500"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_port_taken_by_a_stranger_is_named(stack_config):
    cli_json(stack_config, "down", "redis")
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", TEST_PORTS["redis"]))
        s.listen()
        proc = run_cli(stack_config, "up", "redis", check=False)
    assert proc.returncode == 4
    assert f"port {TEST_PORTS['redis']}" in proc.stderr and "redis" in proc.stderr
    run_cli(stack_config, "up", "redis")
    assert cli_json(stack_config, "status", "redis")["services"]["redis"]["up"]


def test_down_leaves_nothing_then_up_again(stack_config):
    services = cli_json(stack_config, "status")["services"]
    pids = [p for s in services.values() for p in s["pids"]]
    children = [c.pid for p in pids for c in psutil.Process(p).children(recursive=True)]
    assert pids

    home = str(load_config(stack_config, env={}).home_path)
    marked_before = _marked_by(home)
    assert marked_before, "our processes carry the stack's mark"

    cli_json(stack_config, "down")
    alive = [p for p in pids + children + marked_before
             if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert alive == []
    assert _marked_by(home) == []  # detached ones too, e.g. Flink's Python workers
    busy = [p for k, p in TEST_PORTS.items() if isinstance(p, int) and _listening(p)]
    assert busy == []
    again = cli_json(stack_config, "down")["services"]  # harmless twice
    assert {s["outcome"] for s in again.values()} <= {"not running", "nothing to stop"}

    result = cli_json(stack_config, "up")["services"]
    assert result["kafka"]["outcome"] == "started" and result["flink"]["outcome"] == "started"
    assert json.dumps(cli_json(stack_config, "status")["services"]["flink"]["up"]) == "true"
