"""Jobs stopped and submitted again write each event once (issue 13, item 6).

Before, every `liveml submit` started without Flink state and read its topics from the earliest offset: a
cancel, an upgrade or `liveml down` then `up` wrote every event to Iceberg again. Here the real trips are
replayed in parts, with the job stopped and submitted again between them, through the CLI, the way an
operator does it:

- the feature job: `liveml cancel` (a savepoint), then `liveml submit` resumes from it; `liveml down flink`
  (every job stops with a savepoint), `liveml up flink`, `liveml submit` resumes from that one;
- the enrichment job: `liveml cancel --hard` (no savepoint), then `liveml submit` resumes from the
  checkpoint Flink retained;
- a backfill run twice.

The tables are compared with the events (each good event once) and the feature rows with pandas over the
events (tests/reference.py), exactly: a window that lost or doubled its state across a restart would not
match.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flink_jobs import replay as rp
from iceberg_schemas.features import FEATURE_VIEWS, view
from liveml.config import load_config
from tests.conftest import cli_json, run_cli
from tests.integration.test_enrich_job import enrich_tenant, end_ids, server  # noqa: F401 (a fixture)
from tests.integration.test_features_job import event_frames, make_tenant, read_table, real_trips
from tests.reference import expected_view, qualifying, valid

pytestmark = pytest.mark.integration

N_TRIPS = 600  # 1,800 events: starts, ends and labels of the first real trips
FLUSH = "flush-"  # trip ids of the events that move the watermark past the real ones


def parts(events: list[rp.Event], n: int) -> list[list[rp.Event]]:
    """``events`` (in event-time order) cut into ``n`` consecutive parts."""
    cuts = np.linspace(0, len(events), n + 1).astype(int)
    return [events[a:b] for a, b in zip(cuts[:-1], cuts[1:])]


def send(cfg, events: list[rp.Event]) -> None:
    rp.replay(events, rp.kafka_producer(cfg.kafka.bootstrap_servers), topic_prefix=cfg.kafka.topic_prefix)


def send_flush(cfg, events: list[rp.Event]) -> None:
    """A valid trip and label event two days after the last real one, on every partition of each topic:
    the watermark passes every real event, so each OVER window emits its last rows (a live stream's later
    events do the same). Their own feature rows are told apart by the trip id."""
    from confluent_kafka import Producer

    last = max(e.time_ms for e in events)
    trip = next(e.value for e in events if e.topic == rp.TRIPS_TOPIC and e.value["event_type"] == "end")
    label = next(e.value for e in events if e.topic == rp.LABELS_TOPIC)
    producer = Producer({"bootstrap.servers": cfg.kafka.bootstrap_servers})
    for partition in (0, 1):
        t = last + 2 * 86_400_000 + partition
        tid = f"{FLUSH}{partition}"
        values = {rp.TRIPS_TOPIC: dict(trip, trip_id=tid, event_time=t),
                  rp.LABELS_TOPIC: dict(label, trip_id=tid, label_time=t, decision_time=t - 900_000)}
        for topic, value in values.items():
            producer.produce(cfg.kafka.topic(topic), key=tid.encode(), value=json.dumps(value).encode(),
                             partition=partition, timestamp=t)
    producer.flush(10)


def wait_rows(tenant: Path, table: str, want: int, timeout: float = 240) -> pd.DataFrame:
    """Poll ``table`` (committed at checkpoints) until it holds ``want`` rows of real events."""
    deadline = time.monotonic() + timeout
    df = pd.DataFrame()
    id_col = "source_id" if table.startswith("features.") else "trip_id"
    while time.monotonic() < deadline:
        df = read_table(tenant, table)
        df = df[~df[id_col].str.startswith(FLUSH)] if len(df) else df
        if len(df) >= want:
            return df
        time.sleep(2)
    raise AssertionError(f"{table}: {len(df)} of {want} rows after {timeout:.0f} s")


CHECKPOINTS = 11  # seconds: two checkpoints of the test stack (5 s), after which a row written twice shows


def submit(tenant: Path, job: str, *args: str) -> dict:
    return cli_json(tenant, "submit", job, *args)


def cancel(tenant: Path, job_id: str, *args: str) -> dict:
    return cli_json(tenant, "cancel", job_id, *args)


@pytest.fixture(scope="module")
def restarted(stack_config):
    """The feature job over the real trips, stopped and submitted again between the parts.

    Returns the tenant, the events, and what each submission and stop reported."""
    tenant = make_tenant(stack_config, "restarts", 10)
    cfg = load_config(tenant, env={})
    events = rp.trip_events(real_trips(N_TRIPS))
    trips, labels = event_frames(events)
    one, two, three = parts(events, 3)
    good = [len(t[valid(t, "trips")]) for t in (event_frames(p)[0] for p in (one, two, three))]
    steps: dict[str, dict] = {}
    job = None
    try:
        send(cfg, one)
        steps["first"] = first = submit(tenant, "features")
        job = first["job_id"]
        wait_rows(tenant, "raw.trips", good[0])

        # `liveml cancel` stops with a savepoint; `liveml submit` resumes from it (the scenario)
        steps["cancel"] = cancel(tenant, job)
        steps["after_cancel"] = resumed = submit(tenant, "features")
        job = resumed["job_id"]
        send(cfg, two)
        wait_rows(tenant, "raw.trips", good[0] + good[1])

        # `liveml down flink` stops every job with a savepoint; after `up`, `submit` resumes from it
        steps["down"] = json.loads(run_cli(stack_config, "down", "flink", "--json").stdout)
        job = None
        run_cli(stack_config, "up", "flink")
        steps["after_up"] = resumed = submit(tenant, "features")
        job = resumed["job_id"]
        send(cfg, three)
        send_flush(cfg, events)
        for v in FEATURE_VIEWS:
            wait_rows(tenant, v.table, len(qualifying(labels if v.source == "labels" else trips, v)))
        time.sleep(CHECKPOINTS)
        steps["final_cancel"] = cancel(tenant, job)
        job = None
        yield tenant, cfg, events, steps
    finally:
        if job is not None:
            run_cli(tenant, "cancel", job, "--hard", check=False)


def test_each_submission_says_where_it_starts(restarted):
    tenant, cfg, _, steps = restarted
    assert steps["first"]["state"]["resumed_from"] is None
    assert steps["cancel"]["savepoint"] and steps["cancel"]["final_state"] == "FINISHED"
    saved = Path(steps["cancel"]["savepoint"].replace("file:", "", 1))
    assert saved.parent.parent.name == "restarts-features", "the savepoint is filed under the job and tenant"
    assert steps["after_cancel"]["state"]["resumed_from"]["kind"] == "savepoint"
    assert Path(steps["after_cancel"]["state"]["resumed_from"]["path"]).name == saved.name
    assert steps["after_cancel"]["state"]["restored"] is True  # Flink itself reports the restore

    stopped = steps["down"]["services"]["flink"]["jobs"]
    assert [j["outcome"] for j in stopped] == ["stopped with a savepoint"]
    assert steps["after_up"]["state"]["resumed_from"]["path"] == stopped[0]["savepoint"].replace("file:", "", 1)
    assert steps["after_up"]["state"]["restored"] is True


def test_raw_tables_hold_each_event_once(restarted):
    tenant, cfg, events, _ = restarted
    trips, labels = event_frames(events)
    good = trips[valid(trips, "trips")]
    raw = read_table(tenant, "raw.trips")
    raw = raw[~raw.trip_id.str.startswith(FLUSH)]
    assert len(raw) == len(good)
    assert not raw.duplicated(["trip_id", "event_type"]).any()
    assert set(zip(raw.trip_id, raw.event_type)) == set(zip(good.trip_id, good.event_type))
    got_labels = read_table(tenant, "labels.trips")
    got_labels = got_labels[~got_labels.trip_id.str.startswith(FLUSH)]
    assert sorted(got_labels.trip_id) == sorted(labels.trip_id)


@pytest.mark.parametrize("view_name", [v.name for v in FEATURE_VIEWS])
def test_feature_rows_equal_pandas_over_all_the_events(restarted, view_name):
    """One row per qualifying event, each window's value exact: state carried over every restart."""
    tenant, _, events, _ = restarted
    v = view(view_name)
    trips, labels = event_frames(events)
    frame, time_col = (labels, "label_time") if v.source == "labels" else (trips, "event_time")
    want = expected_view(frame, v, time_col).set_index("source_id").sort_index()
    got = read_table(tenant, v.table)
    got = got[~got.source_id.str.startswith(FLUSH)].set_index("source_id").sort_index()
    assert got.index.is_unique, "a feature row was written twice"
    assert list(got.index) == list(want.index)
    for name in v.feature_names():
        np.testing.assert_array_equal(got[name].to_numpy(float), want[name].to_numpy(float), err_msg=name)


def test_backfill_run_twice_gives_the_same_rows(restarted):
    tenant, _, _, _ = restarted
    tables = [f"backfill.{v.name}" for v in FEATURE_VIEWS]
    runs = []
    for _ in range(2):
        report = cli_json(tenant, "backfill")
        runs.append((report, {t: read_table(tenant, t) for t in tables}))
    (first, once), (second, twice) = runs
    assert first["snapshots"] != second["snapshots"], "the second run committed nothing"
    for t in tables:
        cols = [c for c in once[t].columns if c != "computed_at"]
        a = once[t][cols].sort_values("source_id").reset_index(drop=True)
        b = twice[t][cols].sort_values("source_id").reset_index(drop=True)
        assert len(a) > 0 and a["source_id"].is_unique, t
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=t)


def test_enrich_cancelled_hard_and_submitted_again_predicts_each_trip_once(stack_config, server):
    """Cancelled without a savepoint, the job resumes from its retained checkpoint: the events after it are
    read again, and the predictions of the first run that no checkpoint committed are not kept."""
    tenant = enrich_tenant(stack_config, "restarts_enrich", 11, server)
    cfg = load_config(tenant, env={})
    events = rp.trip_events(real_trips(N_TRIPS))
    one, two = parts(events, 2)
    job = None
    try:
        send(cfg, one)
        job = submit(tenant, "enrich")["job_id"]
        wait_rows(tenant, "predictions.trips", len(end_ids(one)))
        stopped = cancel(tenant, job, "--hard")
        assert stopped["savepoint"] is None and stopped["final_state"] == "CANCELED", stopped
        resumed = submit(tenant, "enrich")
        job = resumed["job_id"]
        point = resumed["state"]["resumed_from"]
        assert point["kind"] == "checkpoint" and point["path"] == stopped["retained_checkpoint"], point
        assert point["job_id"] == stopped["job_id"] and resumed["state"]["restored"] is True
        send(cfg, two)
        wait_rows(tenant, "predictions.trips", len(end_ids(events)))
        time.sleep(CHECKPOINTS)
        got = read_table(tenant, "predictions.trips")
    finally:
        if job is not None:
            run_cli(tenant, "cancel", job, "--hard", check=False)
    assert got["trip_id"].is_unique, "a trip was predicted twice"
    assert set(got["trip_id"]) == end_ids(events)
