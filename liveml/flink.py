"""Flink from the pyflink wheel: its home, our config.yaml, the `flink run` command line, and the REST API.

The launcher always passes every connector jar and the venv's Python (pyflink playgrounds #7: jars that go
missing at submit time), so `liveml submit NAME` and the documented plain `flink run -py` work the same.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import requests

from liveml.config import REPO_ROOT, LivemlConfig
from liveml.errors import LivemlError, PrerequisiteError, ServiceError

# Job name -> job file. Each job file has a main() and also runs under plain `flink run -py FILE`.
JOBS: dict[str, str] = {
    "proof": "flink_jobs/proof_job.py",
    "features": "flink_jobs/features_job.py",
    "backfill": "flink_jobs/backfill_job.py",
    "enrich": "flink_jobs/enrich_job.py",
}


def flink_home() -> Path:
    try:
        import pyflink
    except ImportError:  # pragma: no cover - only without `make setup`
        raise PrerequisiteError("pyflink is not installed in this Python. Run `make setup`.") from None
    return Path(pyflink.__file__).resolve().parent


def python_executable() -> str:
    """The venv's Python: Flink's Python workers must import pyflink and our packages."""
    return sys.executable


def _set(conf: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in Flink's nested config.yaml, replacing any flat or nested spelling of it."""
    conf.pop(dotted, None)
    node = conf
    parts = dotted.split(".")
    for part in parts[:-1]:
        nxt = node.get(part)
        if not isinstance(nxt, dict):
            nxt = {}
            node[part] = nxt
        node = nxt
    node[parts[-1]] = value


def render_flink_conf(cfg: LivemlConfig, base: dict[str, Any]) -> dict[str, Any]:
    """Our cluster config on top of the wheel's, keeping its ``env.java.opts.all`` --add-opens list."""
    conf = copy.deepcopy(base)
    f = cfg.flink
    home = cfg.path("flink")
    py = python_executable()
    settings = {
        "jobmanager.rpc.address": "localhost",
        "jobmanager.rpc.port": f.rpc_port,
        "jobmanager.bind-host": "localhost",
        "jobmanager.memory.process.size": f.jobmanager_memory,
        "taskmanager.bind-host": "localhost",
        "taskmanager.host": "localhost",
        "taskmanager.numberOfTaskSlots": f.task_slots,
        "taskmanager.memory.process.size": f.taskmanager_memory,
        # Python workers off managed memory: sharing it between Python operators crashed the TaskManager when a
        # job was cancelled ("Reference count must not be negative"); the heap goes to the Iceberg writers
        "python.fn-execution.memory.managed": False,
        "taskmanager.memory.managed.fraction": 0.1,
        # every job loads the Iceberg, Hadoop and Kafka classes into its own class loader; the default 256 MB
        # of metaspace ran out after a handful of submissions and took the TaskManager down
        "taskmanager.memory.jvm-metaspace.size": "1024m",
        "jobmanager.memory.jvm-metaspace.size": "512m",
        # PyFlink's runtime (flink-python, with Beam and its vendored gRPC) is in lib/ too (`make setup` copies
        # it from opt/), and loaded from there: `flink run -py` also ships it with every job, and a per-job
        # copy of Beam's classes was unloaded while a cancelled job's gRPC server still shut down, which took
        # the TaskManager down (NoClassDefFoundError: ...grpc.netty.ForcefulCloseCommand)
        "classloader.parent-first-patterns.additional": "org.apache.beam.",
        "parallelism.default": f.parallelism,
        "rest.address": f.host,
        "rest.bind-address": f.host,
        "rest.port": f.port,
        "python.executable": py,
        "python.client.executable": py,
        "execution.checkpointing.interval": f.checkpoint_interval,
        "execution.checkpointing.dir": (home / "checkpoints").as_uri(),
        "execution.checkpointing.savepoint-dir": (home / "savepoints").as_uri(),
        "state.backend.type": "hashmap",
        "io.tmp.dirs": str(home / "tmp"),
        "env.pid.dir": str(home / "pid"),
        # a killed TaskManager is noticed in seconds, not the default 50 s, and jobs restart from the checkpoint
        "heartbeat.interval": 2000,
        "heartbeat.timeout": 10000,
        "restart-strategy.type": "fixed-delay",
        "restart-strategy.fixed-delay.attempts": 20,
        "restart-strategy.fixed-delay.delay": "2 s",
        "metrics.reporter.prom.factory.class": "org.apache.flink.metrics.prometheus.PrometheusReporterFactory",
        "metrics.reporter.prom.port": f.metrics_port_range,
    }
    for key, value in settings.items():
        _set(conf, key, value)
    for sub in ("checkpoints", "savepoints", "tmp", "pid"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    return conf


def flink_env(cfg: LivemlConfig) -> dict[str, str]:
    env = dict(os.environ)
    env["FLINK_CONF_DIR"] = str(cfg.path("flink", "conf"))
    env["FLINK_LOG_DIR"] = str(cfg.path("logs"))
    env["PATH"] = f"{Path(python_executable()).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("LIVEML_HOME", str(cfg.home_path))
    if cfg.source:  # the job's client process reads the same config as the command that submitted it
        env["LIVEML_CONFIG"] = cfg.source
    cfg.path("logs").mkdir(parents=True, exist_ok=True)
    return env


def job_jars(cfg: LivemlConfig) -> list[Path]:
    """Connector jars a job must ship in ``pipeline.jars``: those not already on Flink's own classpath.

    `make setup` puts the Kafka connector and the Iceberg runtime into Flink's lib/ as well: loaded once by
    the cluster, instead of into a fresh class loader per job, which leaked ~250 MB of metaspace per
    submission and took the TaskManager down after a few jobs. Anything missing from lib/ is shipped.
    """
    jar_dir = cfg.jars_path / "flink"
    jars = sorted(jar_dir.glob("*.jar"))
    needed = ("flink-sql-connector-kafka", "iceberg-flink-runtime")
    missing = [n for n in needed if not any(j.name.startswith(n) for j in jars)]
    if missing:
        raise PrerequisiteError(f"connector jars {missing} are missing from {jar_dir}. Run `make setup` "
                                "(Maven fetches them from deploy/maven/pom.xml).")
    in_lib = {p.name for p in (flink_home() / "lib").glob("*.jar")}
    return [j for j in jars if j.name not in in_lib]


def pipeline_jars_value(cfg: LivemlConfig) -> str:
    return ";".join(j.as_uri() for j in job_jars(cfg))


def run_command(cfg: LivemlConfig, job: str, job_args: Sequence[str] = (), detached: bool = True) -> list[str]:
    """The exact `flink run` command line for ``job`` (a name from JOBS or a path to a job file)."""
    path = Path(JOBS.get(job, job))
    path = path if path.is_absolute() else REPO_ROOT / path
    if not path.is_file():
        raise LivemlError(f"unknown job {job!r}: expected one of {sorted(JOBS)} or a path to a job file")
    py = python_executable()
    cmd = [str(flink_home() / "bin" / "flink"), "run", "-m", f"{cfg.flink.host}:{cfg.flink.port}"]
    if detached:
        cmd.append("-d")
    cmd += ["-py", str(path), "-pyexec", py, "-pyclientexec", py]
    jars = pipeline_jars_value(cfg)
    if jars:
        cmd.append(f"-Dpipeline.jars={jars}")
    return cmd + list(job_args)


def submit(cfg: LivemlConfig, job: str, job_args: Sequence[str] = (), detached: bool = True,
           timeout: float = 300) -> dict[str, Any]:
    rest_check(cfg)
    cmd = run_command(cfg, job, job_args, detached)
    proc = subprocess.run(cmd, env=flink_env(cfg), capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    job_id = None
    for line in out.splitlines():
        if "JobID" in line:
            job_id = line.strip().split()[-1]
    if proc.returncode != 0:
        raise ServiceError(f"`flink run` for {job} failed (exit {proc.returncode}):\n{_failure_summary(out)}")
    return {"job": job, "job_id": job_id, "command": cmd, "output": out}


def _failure_summary(out: str) -> str:
    """The Python traceback and the root Java cause, not 600 lines of stack."""
    lines = out.splitlines()
    keep: list[str] = []
    if "Traceback (most recent call last):" in lines:
        start = len(lines) - 1 - lines[::-1].index("Traceback (most recent call last):")
        keep = [l for l in lines[start:start + 40] if not l.startswith("\tat ")][:25]
    causes = [l for l in lines if l.startswith(("Caused by:", ": org.apache", "py4j.protocol"))]
    keep += causes[-3:]
    return "\n".join(keep) if keep else "\n".join(lines[-40:])


def rest_check(cfg: LivemlConfig) -> None:
    try:
        requests.get(f"{cfg.flink.rest_url}/overview", timeout=3).raise_for_status()
    except requests.RequestException:
        raise ServiceError(f"Flink is not reachable at {cfg.flink.rest_url}: run `liveml up flink`.") from None


def list_jobs(cfg: LivemlConfig) -> list[dict[str, Any]]:
    rest_check(cfg)
    resp = requests.get(f"{cfg.flink.rest_url}/jobs/overview", timeout=5)
    resp.raise_for_status()
    return [{"id": j["jid"], "name": j["name"], "state": j["state"], "start_time": j.get("start-time"),
             "duration_ms": j.get("duration")} for j in resp.json().get("jobs", [])]


def job_detail(cfg: LivemlConfig, job_id: str) -> dict[str, Any]:
    resp = requests.get(f"{cfg.flink.rest_url}/jobs/{job_id}", timeout=5)
    if resp.status_code == 404:
        raise LivemlError(f"no Flink job {job_id} (see `liveml jobs`)")
    resp.raise_for_status()
    return resp.json()


def wait_running(cfg: LivemlConfig, job_id: str, timeout: float = 180) -> None:
    """Until the job and every one of its tasks run (or have finished); a job that ends first is an error."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = job_detail(cfg, job_id)
        if job["state"] in ("FAILED", "CANCELED", "FINISHED"):
            raise LivemlError(f"Flink job {job_id} is {job['state']} (see `liveml jobs`)")
        if job["state"] == "RUNNING" and all(v["status"] in ("RUNNING", "FINISHED") for v in job["vertices"]):
            return
        time.sleep(0.5)
    raise LivemlError(f"Flink job {job_id} is not running after {timeout:.0f} s (see `liveml jobs`)")


def cancel_job(cfg: LivemlConfig, job_id: str) -> None:
    rest_check(cfg)
    resp = requests.patch(f"{cfg.flink.rest_url}/jobs/{job_id}", params={"mode": "cancel"}, timeout=10)
    if resp.status_code == 404:
        raise LivemlError(f"no Flink job {job_id} (see `liveml jobs`)")
    resp.raise_for_status()
