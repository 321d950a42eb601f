"""Flink from the pyflink wheel: its home, our config.yaml, the `flink run` command line, and the REST API.

The launcher always passes every connector jar and the venv's Python (pyflink playgrounds #7: jars that go
missing at submit time), so `liveml submit NAME` and the documented plain `flink run -py` work the same.
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlparse

import requests

from liveml.config import REPO_ROOT, LivemlConfig, config_flag, load_config
from liveml.errors import LivemlError, PrerequisiteError, ServiceError

# Job name -> job file. Each job file has a main() and also runs under plain `flink run -py FILE`.
JOBS: dict[str, str] = {
    "proof": "flink_jobs/proof_job.py",
    "features": "flink_jobs/features_job.py",
    "backfill": "flink_jobs/backfill_job.py",
    "enrich": "flink_jobs/enrich_job.py",
    "feedback": "flink_jobs/feedback_job.py",
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
        cfg.home_dir("flink", sub)
    return conf


def flink_env(cfg: LivemlConfig) -> dict[str, str]:
    env = dict(os.environ)
    env["FLINK_CONF_DIR"] = str(cfg.home_dir("flink", "conf"))
    env["FLINK_LOG_DIR"] = str(cfg.home_dir("logs"))
    env["PATH"] = f"{Path(python_executable()).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("LIVEML_HOME", str(cfg.home_path))
    if cfg.source:  # the job's client process reads the same config as the command that submitted it
        env["LIVEML_CONFIG"] = cfg.source
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


def run_command(cfg: LivemlConfig, job: str, job_args: Sequence[str] = (), detached: bool = True,
                restore: Path | str | None = None, allow_non_restored_state: bool = False) -> list[str]:
    """The exact `flink run` command line for ``job`` (a name from JOBS or a path to a job file), resuming
    from the savepoint or retained checkpoint ``restore`` (``-s``) if one is given."""
    path = Path(JOBS.get(job, job))
    path = path if path.is_absolute() else REPO_ROOT / path
    if not path.is_file():
        raise LivemlError(f"unknown job {job!r}: expected one of {sorted(JOBS)} or a path to a job file")
    py = python_executable()
    cmd = [str(flink_home() / "bin" / "flink"), "run", "-m", f"{cfg.flink.host}:{cfg.flink.port}"]
    if detached:
        cmd.append("-d")
    if restore is not None:
        cmd += ["-s", Path(restore).as_uri() if Path(str(restore)).is_absolute() else str(restore)]
        if allow_non_restored_state:
            cmd.append("-n")
    cmd += ["-py", str(path), "-pyexec", py, "-pyclientexec", py]
    jars = pipeline_jars_value(cfg)
    if jars:
        cmd.append(f"-Dpipeline.jars={jars}")
    return cmd + list(job_args)


# --- the Kafka topics a job reads: checked before `flink run`, so a missing one is refused, not restarted ---
def _job_options(job_args: Sequence[str]) -> argparse.Namespace:
    """The options of a job's arguments that decide what it reads (each job's own parser has them)."""
    parser = argparse.ArgumentParser(add_help=False)
    for flag in ("--config", "--views", "--topic"):
        parser.add_argument(flag, default=None)
    return parser.parse_known_args(list(job_args))[0]


def _features_topics(cfg: LivemlConfig, opts: argparse.Namespace) -> list[str]:
    from iceberg_schemas.features import FEATURE_VIEWS, view
    from iceberg_schemas.sources import SOURCES

    try:
        views = [view(v) for v in opts.views.split(",")] if opts.views else list(FEATURE_VIEWS)
    except KeyError as exc:
        raise LivemlError(f"--views: {exc.args[0]} (see `liveml features list`)") from None
    return [cfg.kafka.topic(SOURCES[s].topic) for s in sorted({v.source for v in views})]


def _enrich_topics(cfg: LivemlConfig, opts: argparse.Namespace) -> list[str]:
    from iceberg_schemas.sources import TRIPS

    return [cfg.kafka.topic(TRIPS.topic)]


def _feedback_topics(cfg: LivemlConfig, opts: argparse.Namespace) -> list[str]:
    from iceberg_schemas.sources import LABELS, PREDICTIONS_TOPIC

    return [cfg.kafka.topic(PREDICTIONS_TOPIC), cfg.kafka.topic(LABELS.topic)]


def _proof_topics(cfg: LivemlConfig, opts: argparse.Namespace) -> list[str]:
    from liveml.topics import PROOF_TOPIC

    return [opts.topic or PROOF_TOPIC]  # the proof job names its topic as given, without the prefix


# Job name -> the Kafka topics it reads (the backfill job reads Iceberg only). A job given as a file path
# is not checked: what it reads is its own business.
SOURCE_TOPICS = {"features": _features_topics, "enrich": _enrich_topics, "feedback": _feedback_topics,
                 "proof": _proof_topics}


def job_config(cfg: LivemlConfig, job_args: Sequence[str]) -> LivemlConfig:
    """The config the job will run with: its own ``--config`` if it is given one, else ``cfg`` (which
    :func:`flink_env` hands it through ``LIVEML_CONFIG``)."""
    path = _job_options(job_args).config
    return load_config(path) if path else cfg


def source_topics(cfg: LivemlConfig, job: str, job_args: Sequence[str] = ()) -> list[str]:
    """The Kafka topics ``job`` will read, named as the job names them (its config's topic prefix)."""
    if job not in SOURCE_TOPICS:
        return []
    return SOURCE_TOPICS[job](job_config(cfg, job_args), _job_options(job_args))


def tables_create_command(cfg: LivemlConfig) -> str:
    """`liveml tables create`, with ``--config`` when ``cfg`` is not the file `liveml` finds by itself."""
    return " ".join(["liveml", *config_flag(cfg), "tables", "create"])


def missing_topics_error(cfg: LivemlConfig, job: str, missing: Sequence[str]) -> LivemlError:
    """What to tell the user: which topics are missing, and whether `liveml tables create` makes them."""
    from liveml.topics import declared_names

    names = ", ".join(missing)
    where = f"Kafka at {cfg.kafka.bootstrap_servers}"
    if set(missing) <= set(declared_names(cfg)):
        fix = f"run `{tables_create_command(cfg)}` (it creates every topic the platform declares), then submit again"
    else:
        fix = "it is not a topic the platform declares: create it, or start its producer, then submit again"
    plural = "topics" if len(missing) > 1 else "topic"
    return LivemlError(f"job {job} reads Kafka {plural} {names}, which {where} does not have, so it would "
                       f"restart over and over: {fix}.")


def check_source_topics(cfg: LivemlConfig, job: str, job_args: Sequence[str] = ()) -> None:
    """Refuse a job whose source topics do not exist (:class:`LivemlError` with the fix)."""
    from liveml.topics import missing_topics

    topics = source_topics(cfg, job, job_args)
    if not topics:
        return
    jcfg = job_config(cfg, job_args)
    missing = missing_topics(jcfg.kafka.bootstrap_servers, topics)
    if missing:
        raise missing_topics_error(jcfg, job, missing)


def submit(cfg: LivemlConfig, job: str, job_args: Sequence[str] = (), detached: bool = True,
           timeout: float = 300, fresh: bool = False, allow_non_restored_state: bool = False) -> dict[str, Any]:
    """`flink run` ``job``; first Flink must answer and the job's source topics must exist.

    An unbounded run of a job that keeps state (:data:`liveml.job_state.STATEFUL_JOBS`) resumes from the
    newest savepoint or retained checkpoint of that job and tenant, unless ``fresh`` or ``--since-ms`` says
    where to start instead; ``result["state"]`` says which. Without state its Kafka sources start from the
    offsets its consumer group committed (the earliest when none). A restore Flink refuses (the job's
    operators no longer match the state) is an error that names the ways on."""
    from liveml import job_state

    rest_check(cfg)
    jcfg = job_config(cfg, job_args)
    plan = state_plan(jcfg, job, job_args, fresh)
    restore = plan.pop("point", None)
    cmd = run_command(cfg, job, job_args, detached, restore.path if restore else None, allow_non_restored_state)
    check_source_topics(cfg, job, job_args)
    refuse_second_run(cfg, jcfg, job)
    started = time.time()
    proc = subprocess.run(cmd, env=flink_env(cfg), capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    job_id = None
    for line in out.splitlines():
        if "JobID" in line:
            job_id = line.strip().split()[-1]
    if proc.returncode != 0:
        if restore is not None:
            _raise_restore_refused(job, restore, out)
        raise ServiceError(f"`flink run` for {job} failed (exit {proc.returncode}):\n{_failure_summary(out)}")
    if plan["keeps_state"]:
        if restore is None:
            job_state.mark_fresh(jcfg, job, since=started)
        elif job_id and detached:
            plan["restored"] = check_restored(cfg, job, job_id, restore)
        try:
            active = [j["id"] for j in list_jobs(cfg) if j["state"] in job_state.ACTIVE_STATES]
            job_state.prune(jcfg, job, active)
        except LivemlError:
            pass  # pruning is housekeeping; the submission stands
    return {"job": job, "job_id": job_id, "command": cmd, "output": out, "state": plan}


def refuse_second_run(cfg: LivemlConfig, jcfg: LivemlConfig, job: str) -> None:
    """A job that keeps state runs once per tenant: a second run over the same topics would write every
    event again (and resume from the first one's checkpoints)."""
    from liveml import job_state

    if job not in job_state.STATEFUL_JOBS:
        return
    active = [j["id"] for j in list_jobs(cfg) if j["state"] in job_state.ACTIVE_STATES]
    already = job_state.running(jcfg, job, active)
    if already:
        raise LivemlError(
            f"{job} already runs for {job_state.state_key(jcfg, job)} as Flink job {already[0]}: a second run "
            f"over the same topics would write every event again. `{' '.join(['liveml', *config_flag(jcfg)])} "
            f"cancel {already[0]}` stops it with a savepoint that the next `submit {job}` resumes from.")


def state_plan(cfg: LivemlConfig, job: str, job_args: Sequence[str], fresh: bool) -> dict[str, Any]:
    """Where a submission of ``job`` starts: ``{"keeps_state", "resumed_from", "start", "point"}``."""
    from liveml import job_state

    opts = job_state.run_options(job, job_args)
    keeps = job_state.keeps_state(job, opts.bounded)
    plan: dict[str, Any] = {"keeps_state": keeps, "state_dir": str(job_state.job_dir(cfg, job)) if keeps else None,
                            "resumed_from": None}
    offsets = "Kafka from the offsets its consumer group committed (the earliest when none)"
    if opts.since_ms is not None:
        plan["start"] = f"without state, Kafka from --since-ms {opts.since_ms}"
    elif not keeps:
        kind = "a bounded run" if job in job_state.STATEFUL_JOBS else "a job that keeps no state"
        plan["start"] = f"without state ({kind}), {offsets}"
    elif fresh:
        plan["start"] = f"without state (--fresh), {offsets}"
    else:
        point = job_state.latest(cfg, job)
        if point is None:
            plan["start"] = f"without state (none saved for {job_state.state_key(cfg, job)}), {offsets}"
        else:
            plan.update(point=point, resumed_from=point.as_dict(), start=f"from {point.describe()}")
    return plan


def _raise_restore_refused(job: str, point, out: str) -> None:
    """A submission that failed because the saved state does not fit the job: one message with the ways on
    (the job's plan check, :func:`liveml.job_state.check_plan`, or Flink's own refusal)."""
    for line in out.splitlines():
        if "PlanChanged: " in line:
            raise LivemlError(line.split("PlanChanged: ", 1)[1].strip())
    refused = next((l.strip() for l in out.splitlines() if "Cannot map checkpoint/savepoint state" in l), None)
    if refused:
        raise LivemlError(
            f"job {job} could not resume from {point.describe()}: {refused.split(': ', 1)[-1]} "
            f"If the job changed (another query, fewer views), `liveml submit {job} --fresh` starts without "
            f"state from the committed Kafka offsets (its windows then start empty), and "
            f"`liveml submit {job} --allow-non-restored-state` drops the state of operators it no longer has.")


def check_restored(cfg: LivemlConfig, job: str, job_id: str, point, timeout: float = 120) -> bool:
    """Wait until Flink has mapped the restored state onto the new job (it leaves INITIALIZING). A job that
    fails there is cancelled and reported, with what to do: the state names operators the job no longer
    has (a changed query, fewer views), so `--allow-non-restored-state` drops theirs, or `--fresh` starts
    without state. Returns whether Flink reports the job restored from ``point``."""
    deadline = time.monotonic() + timeout
    state = "INITIALIZING"
    while time.monotonic() < deadline:
        state = job_detail(cfg, job_id)["state"]
        if state not in ("INITIALIZING", "CREATED"):
            break
        time.sleep(0.25)
    if state == "FAILED" or state == "RESTARTING":
        cause = _root_cause(cfg, job_id)
        if state == "RESTARTING":
            cancel_job(cfg, job_id)
        raise LivemlError(
            f"job {job} ({job_id}) could not resume from {point.describe()}: {cause}\n"
            f"If the job changed (another query, fewer views), `liveml submit {job} --allow-non-restored-state` "
            f"drops the state of operators it no longer has, and `liveml submit {job} --fresh` starts without "
            "state from the committed Kafka offsets (its windows then start empty).")
    restored = (_rest(cfg, "GET", f"/jobs/{job_id}/checkpoints", job_id).json().get("latest") or {}).get("restored")
    where = urlparse(str((restored or {}).get("external_path", ""))).path
    return bool(where) and Path(where).resolve() == Path(point.path).resolve()


def _root_cause(cfg: LivemlConfig, job_id: str) -> str:
    try:
        entries = _rest(cfg, "GET", f"/jobs/{job_id}/exceptions", job_id).json()["exceptionHistory"]["entries"]
    except (LivemlError, KeyError, ValueError):
        return "Flink gave no reason"
    if not entries:
        return "Flink gave no reason"
    trace = entries[0].get("stacktrace", "")
    causes = [l for l in trace.splitlines() if l.startswith("Caused by:")]
    return (causes[-1] if causes else trace.splitlines()[0] if trace else entries[0].get("exceptionName", "")).strip()


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


def _rest(cfg: LivemlConfig, method: str, path: str, job_id: str | None = None, **kwargs) -> requests.Response:
    """One call to Flink's REST API, its failures as our errors: an unknown or malformed job id (Flink
    answers 404 or 400) names `liveml jobs`, an unreachable Flink `liveml up flink`, any other refusal
    Flink's own message; never a stack trace."""
    url = f"{cfg.flink.rest_url}{path}"
    try:
        resp = requests.request(method, url, timeout=kwargs.pop("timeout", 5), **kwargs)
    except requests.RequestException:
        raise ServiceError(f"Flink is not reachable at {cfg.flink.rest_url}: run `liveml up flink`.") from None
    if job_id is not None and resp.status_code in (400, 404):
        raise LivemlError(f"no Flink job {job_id} (job ids are 32 hex digits; `liveml jobs` lists them)")
    if not resp.ok:
        raise ServiceError(f"Flink refused {method} {path} ({resp.status_code}): {_rest_errors(resp)}")
    return resp


def _rest_errors(resp: requests.Response) -> str:
    try:
        return "; ".join(str(e).splitlines()[0] for e in resp.json().get("errors", [])) or resp.text[:300]
    except ValueError:
        return resp.text[:300]


def list_jobs(cfg: LivemlConfig) -> list[dict[str, Any]]:
    rest_check(cfg)
    resp = _rest(cfg, "GET", "/jobs/overview")
    return [{"id": j["jid"], "name": j["name"], "state": j["state"], "start_time": j.get("start-time"),
             "duration_ms": j.get("duration")} for j in resp.json().get("jobs", [])]


def job_detail(cfg: LivemlConfig, job_id: str) -> dict[str, Any]:
    return _rest(cfg, "GET", f"/jobs/{job_id}", job_id).json()


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
    _rest(cfg, "PATCH", f"/jobs/{job_id}", job_id, params={"mode": "cancel"}, timeout=10)


def wait_for_job(cfg: LivemlConfig, job_id: str, timeout: float = 300, log=None) -> str:
    """Poll a job until it is FINISHED, FAILED or CANCELED, or ``timeout`` seconds pass; returns its state.
    ``log`` gets each state change."""
    deadline = time.monotonic() + timeout
    state = last = "UNKNOWN"
    while time.monotonic() < deadline:
        state = job_detail(cfg, job_id)["state"]
        if state != last and log:
            log(f"  job {job_id[:8]}… {state}")
        last = state
        if state in ("FINISHED", "FAILED", "CANCELED"):
            return state
        time.sleep(1)
    return state
