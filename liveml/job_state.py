"""A long-running job's Flink state across restarts: where its checkpoints and savepoints live, which one a
new submission resumes from, and how a job is stopped so that it can resume.

Without this every submission started empty and read its topics from the earliest offset: a cancel, an
upgrade or `liveml down` then `up` wrote every event to Iceberg a second time. Now, as a Flink user would:

- the job keeps its checkpoints in a directory of its own and Flink retains the latest one when the job is
  cancelled or fails (``RETAIN_ON_CANCELLATION``);
- `liveml cancel` and `liveml down` stop a job with a savepoint (``POST /jobs/:id/stop``, no drain) into
  the same directory;
- `liveml submit` resumes from the newest of them (``flink run -s``); without any, the Kafka sources start
  from the offsets the job's consumer group committed at its last checkpoint (the earliest when none).

Layout, per job and tenant (``<key>`` is the config's topic prefix and the `liveml submit` name, e.g.
``features`` or ``staging-features``)::

    LIVEML_HOME/flink/jobs/<key>/checkpoints/<job id>/chk-<n>/_metadata   retained on cancel and failure
    LIVEML_HOME/flink/jobs/<key>/savepoints/savepoint-<...>/_metadata      from `liveml cancel` and `down`
    LIVEML_HOME/flink/jobs/<key>/started-fresh                             a start without state: what is
                                                                          older is not resumed

Only unbounded runs of the streaming jobs keep state there (:data:`STATEFUL_JOBS`). A bounded run
(``--bounded``, the proof job without ``--unbounded``) neither resumes nor leaves state for the
long-running job: its Kafka splits carry the end offsets it was started with, which a restored unbounded
job would stop at.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import urlparse

from liveml.config import LivemlConfig, made_dir
from liveml.errors import LivemlError, ServiceError

# `liveml submit` names of the jobs that run unbounded and keep state between runs. A job still to come
# (the feedback job) joins here and calls flink_jobs.common.state_configuration in its job file.
STATEFUL_JOBS = ("features", "enrich", "feedback", "proof")
SAVEPOINTS_KEPT = 3  # per job and tenant; older ones are removed once a newer state exists
FRESH_MARK = "started-fresh"
ACTIVE_STATES = ("CREATED", "INITIALIZING", "RUNNING", "RESTARTING", "FAILING", "CANCELLING", "RECONCILING")


# --- where ------------------------------------------------------------------------------------------------
def state_key(cfg: LivemlConfig, job: str) -> str:
    """``<topic prefix><job>``: tenants on one stack share LIVEML_HOME but never each other's state."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{cfg.kafka.topic_prefix}{job}")


def jobs_root(cfg: LivemlConfig) -> Path:
    return cfg.path("flink", "jobs")


def job_dir(cfg: LivemlConfig, job: str) -> Path:
    return jobs_root(cfg) / state_key(cfg, job)


def checkpoint_dir(cfg: LivemlConfig, job: str) -> Path:
    return job_dir(cfg, job) / "checkpoints"


def savepoint_dir(cfg: LivemlConfig, job: str) -> Path:
    return job_dir(cfg, job) / "savepoints"


def bounded_dir(cfg: LivemlConfig, job: str) -> Path:
    """Where bounded runs checkpoint: never resumed from, only there so a running one can be found."""
    return job_dir(cfg, job) / "bounded"


def run_options(job: str, job_args: Sequence[str]) -> argparse.Namespace:
    """The options of a job's arguments that decide whether the run keeps state: ``bounded`` and
    ``since_ms`` (each job's own parser has them; the proof job is bounded unless ``--unbounded``)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--bounded", action="store_true")
    parser.add_argument("--unbounded", action="store_true")
    parser.add_argument("--since-ms", type=int, default=None)
    opts = parser.parse_known_args(list(job_args))[0]
    opts.bounded = opts.bounded or (job == "proof" and not opts.unbounded)
    return opts


def keeps_state(job: str, bounded: bool) -> bool:
    """Whether a run of ``job`` checkpoints into its job directory (and can be resumed from it)."""
    return job in STATEFUL_JOBS and not bounded


# --- what there is to resume from ----------------------------------------------------------------------
@dataclass(frozen=True)
class RestorePoint:
    kind: str  # "savepoint" or "checkpoint"
    path: Path  # the directory that holds _metadata
    time: float  # when it completed (its _metadata's mtime)
    job_id: str | None  # the Flink job that wrote it, when known

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path), "time": self.time, "job_id": self.job_id,
                "age_s": round(time.time() - self.time, 1)}

    def describe(self) -> str:
        age = time.time() - self.time
        ago = f"{age:.0f} s" if age < 120 else f"{age / 60:.0f} min" if age < 7200 else f"{age / 3600:.1f} h"
        of = f" of job {self.job_id}" if self.job_id else ""
        return f"{self.kind} {self.path.name}{of} ({ago} ago, {self.path})"


def _savepoint_job(path: Path) -> str | None:
    """Flink names savepoints ``savepoint-<first 6 hex of the job id>-<random>``."""
    parts = path.name.split("-")
    return parts[1] if len(parts) == 3 else None


def restore_points(cfg: LivemlConfig, job: str) -> list[RestorePoint]:
    """Every complete savepoint and retained checkpoint of ``job`` since it last started without state,
    newest first."""
    return points_in(job_dir(cfg, job))


def points_in(directory: Path) -> list[RestorePoint]:
    """The restore points of one job directory, newest first. A checkpoint directory without
    ``_metadata`` was never completed and is skipped; so is what is older than the fresh mark."""
    found: list[RestorePoint] = []
    for meta in (directory / "savepoints").glob("*/_metadata"):
        found.append(RestorePoint("savepoint", meta.parent, meta.stat().st_mtime, _savepoint_job(meta.parent)))
    for meta in (directory / "checkpoints").glob("*/chk-*/_metadata"):
        found.append(RestorePoint("checkpoint", meta.parent, meta.stat().st_mtime, meta.parent.parent.name))
    mark = directory / FRESH_MARK
    since = mark.stat().st_mtime if mark.exists() else 0.0
    return sorted((p for p in found if p.time > since), key=lambda p: p.time, reverse=True)


def latest(cfg: LivemlConfig, job: str) -> RestorePoint | None:
    points = restore_points(cfg, job)
    return points[0] if points else None


def mark_fresh(cfg: LivemlConfig, job: str, since: float | None = None) -> None:
    """Record that ``job`` started without state at ``since`` (default now; a submission passes the time it
    began, so the mark is older than anything the new run writes, and is written only once the run was
    submitted): nothing older is resumed later, so a hard-cancelled fresh run does not resume the state it
    was told to leave behind."""
    since = time.time() if since is None else since
    mark = cfg.home_file("flink", "jobs", state_key(cfg, job), FRESH_MARK)
    mark.write_text(f"{since}\n")
    os.utime(mark, (since, since))


def prune(cfg: LivemlConfig, job: str, active_ids: Iterable[str], keep_savepoints: int = SAVEPOINTS_KEPT) -> list[Path]:
    """Remove what can no longer be resumed: the checkpoint directories of finished runs that hold no
    checkpoint newer than the newest restore point, and savepoints beyond the newest ``keep_savepoints``.
    The directory of a job that is still active is never touched."""
    active = set(active_ids)
    newest = latest(cfg, job)
    removed: list[Path] = []
    root = checkpoint_dir(cfg, job)
    for run in (root.glob("*") if root.is_dir() else []):
        if run.name in active or not run.is_dir():
            continue
        if newest is not None and newest.path.parent == run:
            continue
        metas = [m.stat().st_mtime for m in run.glob("chk-*/_metadata")]
        if newest is None or not metas or max(metas) < newest.time:
            shutil.rmtree(run, ignore_errors=True)
            removed.append(run)
    saves = sorted(savepoint_dir(cfg, job).glob("*/_metadata"), key=lambda m: m.stat().st_mtime, reverse=True)
    for meta in saves[keep_savepoints:]:
        if newest is None or meta.parent != newest.path:
            shutil.rmtree(meta.parent, ignore_errors=True)
            removed.append(meta.parent)
    for run in bounded_dir(cfg, job).glob("*"):
        if run.name not in active and run.is_dir():
            shutil.rmtree(run, ignore_errors=True)
            removed.append(run)
    runs = {r.name for r in (root.glob("*") if root.is_dir() else [])} | active
    prefixes = {_savepoint_job(m.parent) for m in savepoint_dir(cfg, job).glob("*/_metadata")} - {None}
    for plan in plans_dir(cfg, job).glob("*.json"):
        if plan.stem not in runs and not any(plan.stem.startswith(p) for p in prefixes):
            plan.unlink(missing_ok=True)
            removed.append(plan)
    return removed


def key_of_job(cfg: LivemlConfig, job_id: str, bounded: bool = False) -> str | None:
    """The job directory a Flink job checkpoints into (Flink makes ``checkpoints/<job id>`` as the job
    starts), or None for a job that keeps no state there; ``bounded`` also finds bounded runs."""
    for sub in ("checkpoints", "bounded") if bounded else ("checkpoints",):
        for run in jobs_root(cfg).glob(f"*/{sub}/{job_id}"):
            return run.parent.parent.name
    return None


def running(cfg: LivemlConfig, job: str, active_ids: Iterable[str]) -> list[str]:
    """The active Flink jobs, bounded runs included, that are ``job`` for this tenant."""
    key = state_key(cfg, job)
    return [j for j in active_ids if key_of_job(cfg, j, bounded=True) == key]


# --- the plan a state belongs to ------------------------------------------------------------------------
class PlanChanged(LivemlError):
    """The job's plan differs from the one that wrote the state it would resume from."""


def fingerprint(statements: Sequence[str]) -> str:
    return hashlib.sha256("\n;\n".join(statements).encode()).hexdigest()


def plans_dir(cfg: LivemlConfig, job: str) -> Path:
    return job_dir(cfg, job) / "plans"


def record_plan(cfg: LivemlConfig, job: str, job_id: str, statements: Sequence[str]) -> Path:
    """``plans/<job id>.json``: the statements of the run ``job_id``, so that a later run resuming from
    its state can tell whether its own plan is the same."""
    path = cfg.home_file("flink", "jobs", state_key(cfg, job), "plans", f"{job_id}.json")
    path.write_text(json.dumps({"job_id": job_id, "fingerprint": fingerprint(statements),
                                "statements": list(statements), "time": time.time()}, indent=1))
    return path


def point_job_id(location: str) -> str | None:
    """The job id (or, for a savepoint, its first six hex digits) of a restore path Flink was given."""
    path = Path(urlparse(location).path if "://" in location or location.startswith("file:") else location)
    if path.name == "_metadata":
        path = path.parent
    if path.name.startswith("chk-"):
        return path.parent.name
    return _savepoint_job(path)


def recorded_plan(cfg: LivemlConfig, job: str, job_id: str) -> dict | None:
    """The plan recorded for the run ``job_id`` (a full id, or a savepoint's six-digit prefix)."""
    for path in sorted(plans_dir(cfg, job).glob(f"{job_id}*.json")):
        return json.loads(path.read_text())
    return None


def check_plan(cfg: LivemlConfig, job: str, location: str, statements: Sequence[str]) -> None:
    """Refuse to resume ``job`` from ``location`` when its plan is not the one that wrote that state.

    Flink maps the state of a SQL job's operators by uids made from their position in the plan
    (``table.exec.uid.generation``, ``<id>_<transformation>``). The same statements give the same uids,
    so the state maps back. Other statements shift them: Flink then fails to map an operator's state
    ("Cannot map checkpoint/savepoint state"), fails in a restart loop (``StateMigrationException``: the
    views given in another order), or, when two operators hold state of the same type, silently gives
    one the other's. A state whose plan was not recorded (written before plans were) is not judged."""
    run = point_job_id(location)
    recorded = recorded_plan(cfg, job, run) if run else None
    if recorded is None or recorded["fingerprint"] == fingerprint(statements):
        return
    old, new = recorded["statements"], list(statements)
    first = next((i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new)))
    differs = (f"statement {first + 1} was `{_clip(old[first]) if first < len(old) else '(none)'}` and is now "
               f"`{_clip(new[first]) if first < len(new) else '(none)'}`")
    raise PlanChanged(
        f"the {job} job's plan changed since the state it would resume from was saved ({location}; "
        f"{len(old)} statements then, {len(new)} now; {differs}). Flink maps a SQL job's state by each "
        "operator's position in the plan, so this state would fail to load or land on the wrong operators. "
        f"Start without it: `liveml submit {job} --fresh` reads Kafka from the offsets the job committed, "
        "with empty windows (`liveml backfill` recomputes the offline features from the raw tables). Only "
        f"if the change merely added operators after all the old ones, `--allow-non-restored-state` resumes "
        "anyway.")


def _clip(text: str, n: int = 300) -> str:
    one = " ".join(text.split())
    return one if len(one) <= n else one[:n] + " ..."


# --- stopping ----------------------------------------------------------------------------------------------
def stop_with_savepoint(cfg: LivemlConfig, job_id: str, target: Path, timeout: float = 120) -> str:
    """``POST /jobs/:id/stop`` without drain: a synchronous savepoint into ``target``, then the job
    finishes. The sinks commit what the savepoint holds (Iceberg, Kafka transactions); windows keep their
    state. Returns the savepoint's location; raises :class:`ServiceError` with Flink's reason."""
    from liveml import flink

    made_dir(target)
    resp = flink._rest(cfg, "POST", f"/jobs/{job_id}/stop", job_id,
                       json={"targetDirectory": target.as_uri(), "drain": False}, timeout=10)
    trigger = resp.json()["request-id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = flink._rest(cfg, "GET", f"/jobs/{job_id}/savepoints/{trigger}", job_id).json()
        if status.get("status", {}).get("id") == "COMPLETED":
            op = status.get("operation") or {}
            if "location" in op:
                return op["location"]
            cause = op.get("failure-cause") or {}
            reason = (cause.get("stack-trace") or cause.get("class") or str(cause)).splitlines()[0]
            raise ServiceError(f"the savepoint of job {job_id} failed: {reason}")
        time.sleep(0.25)
    raise ServiceError(f"the savepoint of job {job_id} did not complete in {timeout:.0f} s")


def _state_of(cfg: LivemlConfig, job_id: str) -> str:
    from liveml import flink

    return flink.job_detail(cfg, job_id)["state"]


def _wait_ended(cfg: LivemlConfig, job_id: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    state = _state_of(cfg, job_id)
    while state in ACTIVE_STATES and time.monotonic() < deadline:
        time.sleep(0.25)
        state = _state_of(cfg, job_id)
    return state


def stop(cfg: LivemlConfig, job_id: str, hard: bool = False, timeout: float = 120) -> dict[str, Any]:
    """What `liveml cancel JOB_ID` does. A job that keeps state is stopped with a savepoint into its job
    directory; ``hard``, or a job that keeps none (a bounded run, a batch job), is cancelled. A savepoint
    that fails (the job is restarting, say) falls back to a cancel, and the next submission resumes from
    the job's latest retained checkpoint; the result says which."""
    from liveml import flink

    flink.rest_check(cfg)
    t0 = time.monotonic()
    detail = flink.job_detail(cfg, job_id)
    key = key_of_job(cfg, job_id)
    out: dict[str, Any] = {"job_id": job_id, "name": detail.get("name"), "state_key": key, "savepoint": None}
    if detail["state"] not in ACTIVE_STATES:
        return {**out, "outcome": f"already {detail['state']}", "seconds": 0.0}
    if key is not None and not hard:
        try:
            out["savepoint"] = stop_with_savepoint(cfg, job_id, jobs_root(cfg) / key / "savepoints", timeout)
            out["outcome"] = "stopped with a savepoint"
        except (ServiceError, LivemlError) as exc:
            out["savepoint_error"] = str(exc)
    if out["savepoint"] is None:
        if _state_of(cfg, job_id) in ACTIVE_STATES:
            flink.cancel_job(cfg, job_id)
        out["outcome"] = "cancelled"
    out["final_state"] = _wait_ended(cfg, job_id)
    out["seconds"] = round(time.monotonic() - t0, 2)
    if key is not None and out["savepoint"] is None:
        retained = [p for p in points_in(jobs_root(cfg) / key) if p.kind == "checkpoint"]
        out["retained_checkpoint"] = str(retained[0].path) if retained else None
    return out


def stop_all(cfg: LivemlConfig, timeout: float = 120,
             log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Stop every active job on the cluster, each with a savepoint when it keeps state (see :func:`stop`):
    what `liveml down` does before it stops Flink, so that `down`, `up`, `submit` resumes. Savepoints are
    triggered together and then awaited."""
    from concurrent.futures import ThreadPoolExecutor

    from liveml import flink

    try:
        flink.rest_check(cfg)
    except ServiceError:
        return []
    active = [j for j in flink.list_jobs(cfg) if j["state"] in ACTIVE_STATES]
    if not active:
        return []
    with ThreadPoolExecutor(max_workers=len(active)) as pool:
        results = list(pool.map(lambda j: _stop_quietly(cfg, j["id"], timeout), active))
    for r in results:
        if log:
            log(f"  job {r['job_id']} ({r.get('name')}): {r.get('outcome')}"
                + (f", {r['savepoint']}" if r.get("savepoint") else ""))
    return results


def _stop_quietly(cfg: LivemlConfig, job_id: str, timeout: float) -> dict[str, Any]:
    try:
        return stop(cfg, job_id, timeout=timeout)
    except (LivemlError, OSError) as exc:  # one job's trouble must not keep the stack up
        return {"job_id": job_id, "outcome": f"not stopped: {exc}", "savepoint": None}
