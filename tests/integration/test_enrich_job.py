"""The enrichment job on the real stack: Kafka, Flink, Redis, Iceberg, and a model server process.

Each test runs in a tenant of its own (topics, Redis database, catalog) on the session's stack, with the
feature job and the enrichment job fed by resampled real trips whose event times start now (a live stream),
and a model server holding two stand-in versions: ``stable`` -> 1, ``canary`` and ``shadow`` -> 2.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import requests
import yaml

from flink_jobs import replay as rp
from flink_jobs.enrich import model_inputs
from iceberg_schemas.features import FEATURE_VIEWS
from liveml.config import load_config
from tests.conftest import REPO, cli_json, run_cli
from tests.integration.serving.conftest import free_port
from tests.integration.test_features_job import make_tenant, read_table
from tests.reference import valid

pytestmark = pytest.mark.integration

MODEL = "tips"
LABELS = {"stable": 1, "canary": 2, "shadow": 2}


class ModelServer:
    """Our server as a process on fixed ports (so it can be stopped and started again), two versions."""

    def __init__(self, home: Path):
        from serving.testing import export_standin_model

        self.home = home
        self.base = home / "models" / MODEL
        export_standin_model(self.base, 1, bias=0.0)
        export_standin_model(self.base, 2, bias=0.7)
        labels = "".join(f'    version_labels {{ key: "{k}" value: {v} }}\n' for k, v in LABELS.items())
        self.config = home / "models.config"
        self.config.write_text(
            "model_config_list {\n  config {\n    name: \"%s\"\n    base_path: \"%s\"\n    model_platform: "
            "\"tensorflow\"\n    model_version_policy { specific { versions: 1 versions: 2 } }\n%s  }\n}\n"
            % (MODEL, self.base, labels))
        self.grpc_port, self.rest_port = free_port(), free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, delay_ms: float = 0.0) -> None:
        log = open(self.home / "server.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving.server", f"--port={self.grpc_port}", f"--rest_api_port={self.rest_port}",
             "--host=127.0.0.1", f"--model_config_file={self.config}", f"--delay_ms={delay_ms}"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the model server exited: see {self.home / 'server.log'}"
            try:
                status = requests.get(f"http://127.0.0.1:{self.rest_port}/v1/models/{MODEL}", timeout=1).json()
            except (requests.RequestException, ValueError):
                status = {}  # not listening yet
            if sum(v["state"] == "AVAILABLE" for v in status.get("model_version_status", [])) == 2:
                return
            time.sleep(0.3)
        raise AssertionError("the model server did not load both versions in 120 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def server(tmp_path):
    s = ModelServer(tmp_path)
    s.start()
    yield s
    s.stop()


def enrich_tenant(stack_config: Path, name: str, db: int, server: ModelServer, **enrich) -> Path:
    tenant = make_tenant(stack_config, name, db)
    data = yaml.safe_load(tenant.read_text())
    data.setdefault("serving", {}).update(grpc=server.address, model_name=MODEL)
    data["enrich"] = {"canary_fraction": 0.0, "shadow_label": None, **enrich}
    tenant.write_text(yaml.safe_dump(data))
    return tenant


def live_events(n_trips: int, seed: int, trips_per_s: float) -> list[rp.Event]:
    """Resampled real trips with event times from now on: start, end and label events."""
    events = rp.build_events(amplify_k=1, seed=seed, trips_per_s=trips_per_s)
    # sent faster than event time, an end event over an hour ahead of the wall clock is absurd by the
    # source contract (max_future_s) and dead-lettered: keep trips that end within half an hour
    soon = time.time() * 1000 + 1_800_000
    trips = {e.value["trip_id"] for e in events if e.topic == rp.TRIPS_TOPIC and e.value["event_type"] == "end"
             and e.value["event_time"] < soon}
    keep = set(sorted(trips)[:n_trips])
    return [e for e in events if e.value["trip_id"] in keep]


def end_ids(events: list[rp.Event]) -> set[str]:
    """The trips the job must score: valid end events (the feature job dead-letters the rest, e.g. a
    fare over 1,000 in the real data, and the enrichment job skips them by the same contract)."""
    ends = pd.DataFrame([e.value for e in events if e.topic == rp.TRIPS_TOPIC and e.value["event_type"] == "end"])
    return set(ends.loc[valid(ends, "trips"), "trip_id"])


def wait_for_predictions(tenant: Path, want: int, job_id: str, timeout: float = 240) -> pd.DataFrame:
    """Poll ``predictions.trips`` (committed at each checkpoint) until it holds ``want`` rows."""
    cfg = load_config(tenant, env={})
    deadline = time.monotonic() + timeout
    df = pd.DataFrame()
    while time.monotonic() < deadline:
        df = read_table(tenant, "predictions.trips")
        if len(df) >= want:
            time.sleep(12)  # one more checkpoint: anything extra would show up as a duplicate
            return read_table(tenant, "predictions.trips")
        state = requests.get(f"{cfg.flink.rest_url}/jobs/{job_id}", timeout=5).json()["state"]
        if state in ("FAILED", "CANCELED", "FINISHED"):
            break
        time.sleep(2)
    history = requests.get(f"{cfg.flink.rest_url}/jobs/{job_id}/exceptions", timeout=5).json()
    entries = history.get("exceptionHistory", {}).get("entries", [])
    raise AssertionError(f"{len(df)} of {want} predictions; the job is {state}; last exception: "
                         f"{entries[0]['stacktrace'][:3000] if entries else None}")


def enrich_live(tenant: Path, events: list[rp.Event], rate: float, check=None):
    """The feature and enrichment jobs, live, over ``events`` sent at ``rate`` events/s, until every trip has
    its prediction; ``check(cfg, enrich_job_id)`` runs before the jobs are cancelled. Returns the
    predictions and what ``check`` returned."""
    cfg = load_config(tenant, env={})
    jobs = submit_live(tenant)
    rp.replay(events, rp.kafka_producer(cfg.kafka.bootstrap_servers), topic_prefix=cfg.kafka.topic_prefix,
              rate=rate)
    try:
        df = wait_for_predictions(tenant, len(end_ids(events)), jobs[1])
        return df, (check(cfg, jobs[1]) if check else None)
    finally:
        cancel(tenant, *jobs)


def submit_live(tenant: Path, *args: str) -> tuple[str, str]:
    features = cli_json(tenant, "submit", "features")["job_id"]
    enrich = cli_json(tenant, "submit", "enrich", *args)["job_id"]
    return features, enrich


def cancel(tenant: Path, *job_ids: str) -> None:
    for job_id in job_ids:
        run_cli(tenant, "cancel", job_id, check=False)


def restarts(cfg, job_id: str) -> int:
    history = requests.get(f"{cfg.flink.rest_url}/jobs/{job_id}/exceptions", timeout=5).json()
    return len(history.get("exceptionHistory", {}).get("entries", []))


def direct_scores(address: str, rows: list[dict]) -> list[float]:
    """``Predict`` on the version each row names, with the features the row recorded, one call per row."""
    from serving.client import PredictionClient
    from tfx_pipeline.features import missing_serving_value

    async def run() -> list[float]:
        async with PredictionClient(address, timeout_s=10) as client:
            out = []
            for r in rows:
                inputs = model_inputs(json.loads(r["features"]), missing_serving_value)
                res = await client.predict(inputs, model=MODEL, version=int(r["model_version"]))
                out.append(float(res.outputs["probabilities"].reshape(-1)[0]))
            return out

    return asyncio.run(run())


def test_every_trip_once_scores_and_features_match_canary_and_shadow(stack_config, server):
    tenant = enrich_tenant(stack_config, "enrich", 3, server, canary_fraction=0.1, shadow_label="shadow")
    events = live_events(1500, seed=5, trips_per_s=50.0)
    ids = end_ids(events)
    df, _ = enrich_live(tenant, events, rate=600)

    # every trip sent, exactly once
    assert len(df) == len(ids) and df["trip_id"].is_unique and set(df["trip_id"]) == ids
    assert (df["status"] == "ok").all(), df["status"].value_counts().to_dict()
    assert df["score"].between(0, 1).all()

    # the labels: stable -> 1, canary -> 2, about 10% canary (binomial, 4 sigma)
    assert set(zip(df["model_label"], df["model_version"])) <= {("stable", 1), ("canary", 2)}
    n, canary = len(df), int((df["model_label"] == "canary").sum())
    assert abs(canary - 0.1 * n) < 4 * math.sqrt(n * 0.1 * 0.9), (canary, n)
    # the shadow (version 2) was called on every trip, its score recorded and not used
    assert (df["shadow_model_version"] == 2).all() and df["shadow_score"].notna().all()
    stable = df[df["model_label"] == "stable"]
    assert (stable["shadow_score"] != stable["score"]).mean() > 0.99

    # each score equals a direct Predict with the recorded features (a sample of both versions)
    sample = pd.concat([stable.head(150), df[df["model_label"] == "canary"].head(50)]).to_dict("records")
    for row, want in zip(sample, direct_scores(server.address, sample)):
        assert abs(row["score"] - want) < 1e-6, (row["trip_id"], row["score"], want)

    # the recorded features are what the online store held: the feature job's row of that event time
    checked = 0
    for view in FEATURE_VIEWS:
        table = read_table(tenant, view.table)
        table["ms"] = epoch_ms(table["event_time"])
        by_key = table.groupby([view.entity, "ms"])
        for r in df.to_dict("records"):
            info = json.loads(r["feature_ages"])[view.name]
            if info["status"] != "ok":
                continue
            features = json.loads(r["features"])
            entity = features[view.entity]  # every view's entity is a request-time field of the trip
            key = (int(entity) if view.entity_type == "int" else entity, info["event_time_ms"])
            rows = by_key.get_group(key) if key in by_key.groups else None
            assert rows is not None, (view.name, key)
            assert any(all(_same(features[n], fr[n]) for n in view.feature_names())
                       for fr in rows.to_dict("records")), (view.name, key, features)
            checked += 1
    # (company_tips_24h waits for labels, which come later; the area views hold most trips' context)
    assert checked > len(df) / 2, f"only {checked} view values were found in the online store to compare"


def epoch_ms(col: pd.Series) -> pd.Series:
    return (pd.to_datetime(col, utc=True) - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)


def _same(a, b) -> bool:
    if a is None or (isinstance(b, float) and math.isnan(b)):
        return a is None and (b is None or (isinstance(b, float) and math.isnan(b)))
    return abs(float(a) - float(b)) < 1e-9 * max(1.0, abs(float(b)))


def test_model_server_down_for_10_s_loses_nothing_and_never_restarts_the_job(stack_config, server):
    tenant = enrich_tenant(stack_config, "enrich_down", 4, server, timeout_ms=3000, deadline_ms=500)
    cfg = load_config(tenant, env={})
    events = live_events(1200, seed=6, trips_per_s=50.0)
    ids = end_ids(events)
    jobs = submit_live(tenant)
    producer = rp.kafka_producer(cfg.kafka.bootstrap_servers)
    # three phases with a third of the end events each: before, during and after the outage
    ends = [i for i, e in enumerate(events) if e.topic == rp.TRIPS_TOPIC and e.value["event_type"] == "end"]
    cut1, cut2 = ends[len(ends) // 3] + 1, ends[2 * len(ends) // 3] + 1
    phases = [events[:cut1], events[cut1:cut2], events[cut2:]]
    rp.replay(phases[0], producer, topic_prefix=cfg.kafka.topic_prefix, rate=100)
    server.stop()
    stopped = time.time()
    rp.replay(phases[1], producer, topic_prefix=cfg.kafka.topic_prefix, rate=len(phases[1]) / 10.0)
    server.start()
    started = time.time()
    rp.replay(phases[2], producer, topic_prefix=cfg.kafka.topic_prefix, rate=100)
    try:
        df = wait_for_predictions(tenant, len(ids), jobs[1])
        assert restarts(cfg, jobs[1]) == 0, "the enrichment job restarted"
    finally:
        cancel(tenant, *jobs)

    assert len(df) == len(ids) and df["trip_id"].is_unique and set(df["trip_id"]) == ids
    counts = df["status"].value_counts().to_dict()
    assert set(counts) <= {"ok", "unavailable", "timeout"}, counts
    status = df.set_index("trip_id")["status"]
    ok_share = [float((status[sorted(end_ids(p) & ids)] == "ok").mean()) for p in phases]
    # sent before the outage: scored (a few sent in its last second may meet it); during: none; after: all
    assert ok_share[0] > 0.9 and ok_share[1] < 0.2 and ok_share[2] == 1.0, ok_share
    failed = df[df["status"] != "ok"]
    assert failed["score"].isna().all() and failed["fallback_reason"].notna().all()
    when = epoch_ms(failed["predicted_at"]) / 1000
    assert (when >= stopped - 1).all() and (when <= started + 10).all(), "a failure outside the outage"
    assert (df.loc[df["status"] == "unavailable", "retries"] > 0).all()  # retried before giving up


def test_a_slow_model_server_times_out_and_output_continues(stack_config, tmp_path):
    server = ModelServer(tmp_path)
    server.start(delay_ms=1500)
    try:
        tenant = enrich_tenant(stack_config, "enrich_slow", 5, server, timeout_ms=800, deadline_ms=700, retries=1)
        events = live_events(300, seed=7, trips_per_s=50.0)
        ids = end_ids(events)
        df, (timeouts, restarted) = enrich_live(tenant, events, rate=300, check=lambda cfg, job: (
            polled_metric(cfg, job, "timeouts"), restarts(cfg, job)))
        assert restarted == 0
    finally:
        server.stop()
    assert len(df) == len(ids) and df["trip_id"].is_unique
    assert (df["status"] == "timeout").all(), df["status"].value_counts().to_dict()
    assert df["score"].isna().all()
    # counted: the operator's totals reach Flink's counters when a bundle ends, so an idle job may not yet
    # show the last rows (the rows themselves are all in the table, above)
    assert 0 < timeouts <= len(ids), (timeouts, len(ids))


def polled_metric(cfg, job_id: str, metric: str, timeout: float = 90) -> float:
    """A ``liveml.enrich`` metric summed over the job's subtasks, polled until it is non-zero: Flink's REST API
    fetches metrics from the TaskManagers every few seconds."""
    from tests.integration.test_features_faults import operator_metric

    deadline = time.monotonic() + timeout
    while not (total := operator_metric(cfg, job_id, "liveml.enrich", metric)) and time.monotonic() < deadline:
        time.sleep(2)
    return total


def test_taskmanager_killed_mid_stream_loses_and_duplicates_no_prediction(stack_config, server):
    from tests.integration.test_features_faults import kill_taskmanagers, wait_for_first_checkpoint

    tenant = enrich_tenant(stack_config, "enrich_eo", 6, server)
    cfg = load_config(tenant, env={})
    # a backlog of 20,000 trips the bounded job needs a while for, so the kill lands after a checkpoint
    events = live_events(20_000, seed=8, trips_per_s=200.0)
    ids = end_ids(events)
    rp.replay(events, rp.kafka_producer(cfg.kafka.bootstrap_servers), topic_prefix=cfg.kafka.topic_prefix)
    job_id = cli_json(tenant, "submit", "enrich", "--bounded")["job_id"]
    wait_for_first_checkpoint(cfg, job_id)
    committed = len(read_table(tenant, "predictions.trips"))
    kill_taskmanagers(stack_config)

    from liveml.flink import wait_for_job

    assert wait_for_job(cfg, job_id, timeout=600) == "FINISHED"
    assert restarts(cfg, job_id) > 0, "the kill did not interrupt the job"
    df = read_table(tenant, "predictions.trips")
    assert 0 < committed < len(ids), "the kill must land between the first and the last commit"
    assert len(df) == len(ids) and df["trip_id"].is_unique and set(df["trip_id"]) == ids
    assert (df["status"] == "ok").all(), df["status"].value_counts().to_dict()
