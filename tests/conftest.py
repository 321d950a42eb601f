"""Shared fixtures. Integration tests run the real stack on ports of their own (offset from the defaults),
under a LIVEML_HOME of their own, so they never touch a developer's running stack."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
LIVEML = str(Path(sys.executable).parent / "liveml")

# Ports for the test stack: the defaults + 10000, so a developer's `liveml up` can keep running.
TEST_PORTS = {"kafka": 19092, "kafka_controller": 19093, "redis": 16379, "flink_rest": 18081,
              "flink_rpc": 16123, "prometheus": 19090, "flink_metrics": "19249-19259", "metrics": 19300,
              "serving_grpc": 18500, "serving_rest": 18501, "alertmanager": 19095}


# Ports nothing listens on, for unit tests of the CLI that must see services as down.
OFFLINE_PORTS = {k: (v + 20000 if isinstance(v, int) else "39249-39259") for k, v in TEST_PORTS.items()}


def _shifted(ports: dict, shift: int) -> dict:
    return {k: (v + shift if isinstance(v, int) else "-".join(str(int(x) + shift) for x in v.split("-")))
            for k, v in ports.items()}


def write_test_config(home: Path, ports: dict | None = None) -> Path:
    """A config on the test ports; ``LIVEML_TEST_PORT_SHIFT=N`` moves them by N, so a second test session
    can run beside one that holds them."""
    TEST = ports or _shifted(TEST_PORTS, int(os.environ.get("LIVEML_TEST_PORT_SHIFT", "0")))
    cfg = {
        "home": str(home),
        "kafka": {"bootstrap_servers": f"localhost:{TEST['kafka']}", "controller_port": TEST["kafka_controller"]},
        "redis": {"url": f"redis://localhost:{TEST['redis']}/0"},
        "flink": {"rest_url": f"http://localhost:{TEST['flink_rest']}", "rpc_port": TEST["flink_rpc"],
                  "metrics_port_range": TEST["flink_metrics"], "checkpoint_interval": "5s"},
        "prometheus": {"port": TEST["prometheus"], "metrics_base_port": TEST["metrics"]},
        "alertmanager": {"port": TEST["alertmanager"]},
        "serving": {"grpc": f"localhost:{TEST['serving_grpc']}", "rest": f"localhost:{TEST['serving_rest']}"},
    }
    path = home / "liveml.yaml"
    home.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def env_without_config(*prefixes: str) -> dict[str, str]:
    """This process's environment minus what selects or overrides a config (LIVEML_CONFIG, LIVEML_HOME,
    LIVEML_<SECTION>__<FIELD>) and any ``prefixes``, so a developer's settings cannot reach a test's stack.
    The project's other LIVEML_* variables stay (LIVEML_PROC_MARK, LIVEML_NO_APT, LIVEML_TF_SERVING_*):
    the commands under test must run with them set, as they do in the stack's own processes."""
    from liveml.config import CONFIG_FILE_ENV, is_override

    return {k: v for k, v in os.environ.items()
            if not (is_override(k) or k == CONFIG_FILE_ENV or (prefixes and k.startswith(prefixes)))}


def run_cli(config: Path | None, *args: str, check: bool = True, timeout: float = 600,
            env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [LIVEML] + (["--config", str(config)] if config else []) + list(args)
    full_env = env_without_config()
    full_env.update(env or {})
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def plain_flink_run(flink_port: int, job_file: str, config: Path, *job_args: str) -> str:
    """A job file through the command a Flink user types (README), not through liveml; returns the job id."""
    from liveml.flink import flink_home

    py = sys.executable
    cmd = [str(flink_home() / "bin" / "flink"), "run", "-m", f"localhost:{flink_port}", "-d",
           "-py", job_file, "-pyexec", py, "-pyclientexec", py, "--config", str(config), *job_args]
    env = env_without_config("FLINK_")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return next(line.split()[-1] for line in (proc.stdout + proc.stderr).splitlines() if "JobID" in line)


def cli_json(config: Path, *args: str):
    return json.loads(run_cli(config, *args, "--json").stdout)


@pytest.fixture(scope="session")
def stack_config() -> Path:
    """The real stack (catalog, Kafka, Redis, Flink, Prometheus), up for the whole session, then down.

    Its home is world-traversable (pytest's own tmp dirs are 0700) because a managed PostgreSQL runs as
    the `postgres` user and must reach its data directory."""
    home = Path(tempfile.mkdtemp(prefix="liveml-test-"))
    home.chmod(0o755)
    config = write_test_config(home)
    try:
        run_cli(config, "up")
        yield config
    finally:
        run_cli(config, "down", check=False)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def cfg(stack_config):
    from liveml.config import load_config

    return load_config(stack_config, env={})
