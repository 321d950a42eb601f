"""`liveml demo` (what `make demo` runs): the main job on the real trips, end to end, on the local stack.

The steps are the README's quickstart, in its order, each through the same functions the commands use:

========  ==========================================================================================
stack     the stack and the model server up; the declared tables and topics created
jobs      the feature job and the enrichment job running on the Flink cluster (running ones are reused)
history   the 2013-2016 real trips and their labels replayed into Kafka; raw events, labels and
          features land in Iceberg and Redis (skipped when the history is already in)
training  a point-in-time training set; ``liveml train`` (TFX) trains, evaluates and pushes a version,
          which is promoted to ``stable`` through the model server's API
live      real trips resampled to start before now, streamed at their own event times; the enrichment
          job reads their features from Redis and calls the model
========  ==========================================================================================

Then a summary (:mod:`liveml.demo_summary`). A step that fails stops the demo, and :class:`DemoFailed` names the step, the log to
read and the command that retries it. Later capabilities add their own :class:`Step` to :data:`STEPS`.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from liveml.config import LivemlConfig
from liveml.errors import LivemlError

Log = Callable[[str], None]

HISTORY_QUICK_TRIPS = 3000  # --quick: the first trips of 2013, enough to train on
LIVE_SINCE_S = 30 * 60  # the live trips start this long before now, so trips under way end at once


@dataclass
class Settings:
    """How big a run is. ``quick`` is the variant `make test` runs."""

    history_trips: int | None = None  # None: all 15,002
    train_steps: int = 500
    live_trips_per_s: float = 20.0
    live_seconds: float = 90.0
    predictions_timeout_s: float = 120.0

    @classmethod
    def quick(cls) -> "Settings":
        return cls(history_trips=HISTORY_QUICK_TRIPS, train_steps=150, live_trips_per_s=10.0, live_seconds=40.0)


@dataclass
class Demo:
    """One run: its config, its settings, what each step found, and where it prints."""

    cfg: LivemlConfig
    settings: Settings
    log: Log
    results: dict[str, Any] = field(default_factory=dict)
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def command(self, *args: str) -> str:
        """A `liveml` command as a user would type it against this run's config."""
        from liveml.config import config_flag

        return " ".join(_shell_word(a) for a in ["liveml", *config_flag(self.cfg), *args])


def _shell_word(arg: str) -> str:
    """``shlex.quote``, but an argument holding single quotes (a SQL filter) goes in double quotes when
    that is safe, as a person would write it."""
    if "'" in arg and not any(c in arg for c in '"$`\\!'):
        return f'"{arg}"'
    return shlex.quote(arg)


@dataclass(frozen=True)
class Step:
    name: str
    title: str
    run: Callable[[Demo], dict[str, Any]]
    retry: tuple[str, ...]  # the liveml commands that redo this step by hand ({field} of Settings filled in)
    log: str  # where to read why it failed, relative to LIVEML_HOME


class DemoFailed(LivemlError):
    """A step failed: which, why, the log to read and the command that retries it."""

    def __init__(self, step: Step, reason: str, log: Path, retry: str):
        self.step, self.reason, self.log_path, self.retry = step.name, reason, log, retry
        super().__init__(f"demo step '{step.name}' ({step.title}) failed: {reason}\n"
                         f"  read:  {log}\n  retry: {retry}")


# --- steps -------------------------------------------------------------------------------------------
def step_stack(d: Demo) -> dict[str, Any]:
    from iceberg_schemas.registry import ensure_tables
    from liveml.catalog import open_catalog
    from liveml.stack import launcher
    from liveml.topics import ensure_topics

    def progress(name: str, outcome: str, took: float) -> None:
        d.log(f"  {name:<11} {outcome:<11} {took:6.1f}s")

    services = launcher.up(d.cfg, None, progress)
    services.update(launcher.up(d.cfg, ["serving"], progress))
    tables = ensure_tables(open_catalog(d.cfg))
    topics = ensure_topics(d.cfg)
    d.log(f"  tables: {len(tables)} declared, {sum(t.action == 'created' for t in tables)} created; "
          f"topics: {len(topics)} declared, {sum(t.action == 'created' for t in topics)} created")
    return {"services": {k: v["outcome"] for k, v in services.items()}, "tables": len(tables),
            "topics": len(topics)}


# pipeline.name each job file sets, and the `liveml submit` name that starts it
JOB_NAMES = {"features": "liveml-features", "enrich": "liveml-enrich"}
ACTIVE = ("CREATED", "INITIALIZING", "RUNNING", "RESTARTING")


def _running_job(cfg: LivemlConfig, pipeline_name: str) -> str | None:
    from liveml import flink

    found = [j for j in flink.list_jobs(cfg) if j["name"] == pipeline_name and j["state"] in ACTIVE]
    return sorted(found, key=lambda j: j.get("start_time") or 0)[-1]["id"] if found else None


def step_jobs(d: Demo) -> dict[str, Any]:
    from liveml import flink

    out = {}
    for job, pipeline_name in JOB_NAMES.items():
        job_id = _running_job(d.cfg, pipeline_name)
        reused = job_id is not None
        if not reused:
            job_id = flink.submit(d.cfg, job)["job_id"]
        flink.wait_running(d.cfg, job_id, timeout=300)
        d.log(f"  {job:<9} {job_id} {'(already running)' if reused else 'submitted'}")
        out[job] = {"job_id": job_id, "reused": reused}
    return out


def _history_trips(d: Demo):
    from flink_jobs import replay as rp

    trips = rp.load_trips().sort_values("start_ms", kind="stable")
    if d.settings.history_trips:
        trips = trips.head(d.settings.history_trips)
    return trips.reset_index(drop=True)


def step_history(d: Demo) -> dict[str, Any]:
    from flink_jobs import replay as rp
    from liveml.ingest import ids_in, wait_committed
    from liveml.offline import OfflineStore

    trips = _history_trips(d)
    ids = trips["trip_id"].tolist()
    labelled = ids_in(OfflineStore.from_config(d.cfg), "labels.trips", ids)
    t0 = time.monotonic()
    if labelled >= len(ids):
        d.log(f"  the {len(ids):,} real trips are already in labels.trips: not replayed again")
        return {"trips": len(ids), "replayed": False, "labels_in_iceberg": labelled}
    if labelled:  # e.g. a --quick run's 3,000 trips, then a full one
        raise LivemlError(
            f"labels.trips already holds {labelled:,} of these {len(ids):,} real trips (an earlier, shorter "
            "run?). Replaying them again would duplicate those, and the running feature job is past 2016 in "
            "event time, so the rest would arrive late and get no features. Start from empty state: "
            "`liveml down && make clean`, then `make demo`")

    events = rp.trip_events(trips)
    d.log(f"  replaying {len(ids):,} real trips ({len(events):,} events: starts, ends and labels) into Kafka")
    tenth = max(1, len(events) // 10)
    stats = rp.replay(events, rp.kafka_producer(d.cfg.kafka.bootstrap_servers), topic_prefix=d.cfg.kafka.topic_prefix,
                      on_progress=lambda n: n % tenth < 500 and d.log(f"  sent {n:,} of {len(events):,}"))
    d.log(f"  sent {stats.sent:,} events in {stats.seconds:.1f}s; waiting for the feature job to commit them "
          f"to Iceberg (checkpoints every {d.cfg.flink.checkpoint_interval})")
    trip_events = sum(e.topic == rp.TRIPS_TOPIC for e in events)
    done = wait_committed(d.cfg, ids, trip_events=trip_events, trip_ids=ids, log=d.log)
    dlq = done["dead_letters"]
    d.log(f"  in Iceberg: {done['labels_in_iceberg']:,} labels; dead-lettered: "
          + ", ".join(f"{t} {v['count']} ({', '.join(v['reasons']) or '-'})" for t, v in dlq.items()))
    return {"trips": len(ids), "replayed": True, "events_sent": stats.sent, **done,
            "seconds": round(time.monotonic() - t0, 1)}


def _train(d: Demo) -> dict[str, Any]:
    """`liveml train --json` in a process of its own (TFX's Beam must not share one with PyFlink)."""
    cmd = [str(Path(sys.executable).parent / "liveml")]
    if d.cfg.source:
        cmd += ["--config", str(d.cfg.source)]
    cmd += ["train", "--json", "--train-steps", str(d.settings.train_steps)]
    log_path = d.cfg.home_file("logs", "demo-train.log")
    t0 = time.monotonic()
    with open(log_path, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        while proc.poll() is None:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                d.log(f"  training: {time.monotonic() - t0:.0f}s (TFX's log: {log_path})")
        stdout = proc.stdout.read()
    try:
        return json.loads(stdout)
    except ValueError:
        raise LivemlError(f"`liveml train` exited {proc.returncode} without a summary") from None


def _stable_version(cfg: LivemlConfig) -> int | None:
    """The version the enrichment job's label names in the server's model config, if any."""
    from liveml.model_labels import find_model, model_config

    return dict(find_model(model_config(cfg), cfg.serving.model_name).version_labels).get(cfg.enrich.label)


def step_training(d: Demo) -> dict[str, Any]:
    from liveml.model_labels import set_label
    from liveml.offline import OfflineStore
    from liveml.training_set import build_training_set

    store = OfflineStore.from_config(d.cfg)
    lineage = build_training_set(store, progress=None)
    excluded = lineage.get("excluded") or {}
    d.log(f"  training set {lineage['table']} @ {lineage['snapshot_id']}: {lineage['rows']:,} rows, "
          f"{lineage['positives']:,} positive" + (f"; left out: {excluded}" if any(excluded.values()) else ""))
    summary = _train(d)
    metrics = summary.get("metrics") or {}
    version = summary.get("pushed_version")
    model = {"name": d.cfg.serving.model_name, "version": version, "pushed": version is not None,
             "blessed": summary.get("blessed"), "why": summary.get("why"), "auc": metrics.get("auc"),
             "log_loss": metrics.get("log_loss"), "status": summary.get("status")}
    if version is None:
        stable = _stable_version(d.cfg)
        if summary.get("status") != "succeeded" or stable is None:
            failed = {n: c.get("error") for n, c in (summary.get("components") or {}).items() if c.get("error")}
            raise LivemlError(f"no version was pushed ({summary.get('why') or summary.get('status')}"
                              f"{'; ' + json.dumps(failed) if failed else ''}) and none is stable yet")
        d.log(f"  not pushed ({summary.get('why')}): the stable version {stable} keeps serving")
        model.update(version=stable, kept_stable=True)
    else:
        d.log(f"  pushed version {version}: eval AUC {metrics.get('auc', float('nan')):.4f}, "
              f"log loss {metrics.get('log_loss', float('nan')):.4f}; promoting it to {d.cfg.enrich.label}")
        set_label(d.cfg, d.cfg.serving.model_name, d.cfg.enrich.label, version)
    training_set = {k: lineage.get(k) for k in ("table", "snapshot_id", "snapshot_ids", "rows", "positives",
                                                  "excluded", "decision_range")}
    return {"training_set": training_set, "model": model}


def live_amplify(s: Settings) -> int:
    """Copies of the 15,002 real trips that cover the live stream: starts from 30 min ago to its end."""
    return max(1, int((LIVE_SINCE_S + s.live_seconds) * s.live_trips_per_s / 15002) + 1)


class FreshnessSampler(threading.Thread):
    """Reads every online entity's event and write time once a second: how long after its event a
    feature value was in Redis (ms), one sample per new (key, event time)."""

    def __init__(self, cfg: LivemlConfig, since_ms: int):
        super().__init__(daemon=True)
        self.cfg, self.since_ms = cfg, since_ms
        self.samples: dict[tuple[bytes, int], int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        import redis

        from liveml.online.layout import EVENT_TIME, PREFIX, WRITE_TIME

        r = redis.Redis.from_url(self.cfg.redis.url)
        while not self.stop.wait(1.0):
            keys = list(r.scan_iter(match=f"{PREFIX}:*", count=1000))
            pipe = r.pipeline(transaction=False)
            for k in keys:
                pipe.hmget(k, EVENT_TIME, WRITE_TIME)
            for k, (ev, wr) in zip(keys, pipe.execute()):
                if ev and wr and int(ev) >= self.since_ms:
                    self.samples.setdefault((k, int(ev)), int(wr) - int(ev))


def step_live(d: Demo) -> dict[str, Any]:
    from flink_jobs import replay as rp
    from liveml.ingest import ids_in
    from liveml.offline import OfflineStore

    s = d.settings
    now_ms = int(time.time() * 1000)
    k = live_amplify(s)
    events = rp.build_events(amplify_k=k, seed=now_ms % 100_000, trips_per_s=s.live_trips_per_s,
                             start_ms=now_ms - LIVE_SINCE_S * 1000)
    now_ms = int(time.time() * 1000)  # building took a moment: events are due from now, each at its own time
    events = rp.from_now(events, now_ms)
    d.log(f"  streaming real trips resampled at {s.live_trips_per_s:g} trips/s, each event at its own time, "
          f"for {s.live_seconds:.0f}s")
    sampler = FreshnessSampler(d.cfg, now_ms)
    sampler.start()
    last = [time.monotonic()]

    def progress(n: int) -> None:
        if time.monotonic() - last[0] > 15:
            last[0] = time.monotonic()
            d.log(f"  sent {n:,} live events")

    stats = rp.replay(events, rp.kafka_producer(d.cfg.kafka.bootstrap_servers), topic_prefix=d.cfg.kafka.topic_prefix,
                      speedup=1.0, duration_s=s.live_seconds, on_progress=progress, origin_ms=now_ms)
    sent = events[:stats.sent]
    ends = [e.key for e in sent if e.topic == rp.TRIPS_TOPIC and e.value["event_type"] == "end"]
    d.log(f"  sent {stats.sent:,} events ({len(ends):,} trips ended); waiting for their predictions in Iceberg")
    store = OfflineStore.from_config(d.cfg)
    deadline = time.monotonic() + s.predictions_timeout_s
    got = 0
    while time.monotonic() < deadline:
        got = ids_in(store, "predictions.trips", ends)
        if got >= len(ends):
            break
        time.sleep(5)
    sampler.stop.set()
    sampler.join(5)
    fresh = sorted(sampler.samples.values())
    pct = (lambda q: fresh[min(len(fresh) - 1, int(q * len(fresh)))] if fresh else None)
    return {"events_sent": stats.sent, "trips_ended": len(ends), "trips_predicted": got, "trip_ids": ends,
            "freshness_p50_ms": pct(0.5), "freshness_p99_ms": pct(0.99), "freshness_samples": len(fresh),
            "since_ms": now_ms}


STEPS: list[Step] = [
    Step("stack", "the stack up, tables and topics created", step_stack,
         ("up", "up serving", "tables create"), "logs"),
    Step("jobs", "the feature and enrichment jobs on Flink", step_jobs, ("submit features", "submit enrich"),
         "logs"),
    Step("history", "2013-2016 real trips replayed into Kafka, Iceberg and Redis", step_history,
         ("replay --wait",), "logs"),
    Step("training", "training set, TFX train, promote to stable", step_training,
         ("training-set build", "train", "models promote latest --label stable"), "logs/demo-train.log"),
    Step("live", "live trips enriched with predictions", step_live,
         ("replay --amplify {amplify} --trips-per-s {live_trips_per_s:g} --since 30m --speedup 1 "
          "--for {live_seconds:.0f}s",), "logs"),
]


def run(cfg: LivemlConfig, settings: Settings, log: Log, steps: list[Step] | None = None,
        down: bool = False) -> dict[str, Any]:
    """Every step in order, then the summary; stops at the first failing step with :class:`DemoFailed`."""
    d = Demo(cfg, settings, log)
    try:
        for i, step in enumerate(steps or STEPS, 1):
            log(f"[{i}/{len(steps or STEPS)}] {step.title}")
            t0 = time.monotonic()
            try:
                d.results[step.name] = step.run(d)
            except DemoFailed:
                raise
            except Exception as exc:  # every failure of a step is reported as that step's
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                fields = {**settings.__dict__, "amplify": live_amplify(settings)}
                raise DemoFailed(step, reason, cfg.path(step.log),
                                 " && ".join(d.command(*shlex.split(c.format(**fields))) for c in step.retry)) from exc
            d.results[step.name]["seconds"] = round(time.monotonic() - t0, 1)
        from liveml.demo_summary import summarize

        result = summarize(d)
    finally:
        if down:
            from liveml.stack import launcher

            launcher.down(cfg)
    return result
