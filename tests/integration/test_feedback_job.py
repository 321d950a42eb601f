"""The feedback job on the real stack: every real trip's prediction joined with its delayed label, exactly as an
independent pandas join says, bad inputs counted, and a TaskManager killed mid-stream costs nothing.

Predictions are produced on Kafka ``predictions`` as the enrichment job writes them (the job's input contract),
one per real trip with a deterministic score, so the test needs no model server; labels are the replay's.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
import requests

from flink_jobs import replay as rp
from flink_jobs.feedback import COUNTERS
from iceberg_schemas.sources import PREDICTIONS_TOPIC
from iceberg_schemas.tables import OUTCOMES
from iceberg_schemas.training import TIPS
from liveml.catalog import open_catalog
from liveml.config import load_config
from tests.conftest import cli_json, run_cli
from tests.integration.test_features_faults import kill_taskmanagers, operator_metric
from tests.integration.test_features_job import make_tenant, read_table
from tests.reference import valid

pytestmark = pytest.mark.integration

MAX_DELAY_MS = TIPS.max_label_delay_s * 1000
HOUR = 3_600_000


def epoch_ms(col: pd.Series) -> pd.Series:
    return (col - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)


def feedback_inputs(seed: int = 7):
    """Predictions and labels of every real trip, with each kind of bad input the issue names mixed in.

    Returns ``(predictions, labels, expected_counts)``: two lists of dicts in event-time order, and what the
    job's counters must read once the stream has passed them."""
    rng = np.random.default_rng(seed)
    events = rp.trip_events(rp.load_trips())
    ends = [e for e in events if e.topic == rp.TRIPS_TOPIC and e.value["event_type"] == "end"]
    labels = [dict(e.value) for e in events if e.topic == rp.LABELS_TOPIC]
    ids = [e.key for e in ends]
    pick = rng.permutation(len(ids))
    # trips chosen for each fault: from the first 40% of event time, so the first half's stream passes their
    # deadlines and clean-ups
    early = [i for i in pick if i < int(0.4 * len(ids))]
    never_predicted, dup, tied, too_late, unscored, gone, unlabelled = (
        {ids[i] for i in early[a:b]} for a, b in ((0, 100), (100, 150), (150, 170), (170, 200), (200, 240),
                                                  (240, 265), (265, 325)))
    preds = []
    for e in ends:
        if e.key in never_predicted:
            continue
        fare = e.value.get("fare") or 0.0
        score = float(1 / (1 + np.exp(-(0.08 * fare - 1.0 + (0.9 if e.value.get("payment_type") == "Credit Card" else -1.2)))))
        p = {"trip_id": e.key, "event_time": e.time_ms, "model_name": "tips", "model_version": 1,
             "model_label": "stable", "status": "ok", "score": score, "shadow_model_version": None,
             "shadow_score": None, "predicted_at": e.time_ms + 40}
        if e.key in unscored:
            p.update(status="unavailable", score=None)
        if e.key in gone:
            p.update(model_version=999)  # a version that was never (or is no longer) on the server
        preds.append(p)
    out_labels = []
    for lab in labels:
        if lab["trip_id"] in unlabelled:
            continue
        if lab["trip_id"] in too_late:
            lab = dict(lab, label_time=lab["decision_time"] + 2 * HOUR)
        out_labels.append(lab)
        if lab["trip_id"] in dup:  # a correction 10 minutes later, with the other value: it wins
            out_labels.append(dict(lab, label_time=lab["label_time"] + 600_000, big_tipper=not lab["big_tipper"]))
        if lab["trip_id"] in tied:  # a second label at the same time with the other value: the smaller wins
            out_labels.append(dict(lab, big_tipper=not lab["big_tipper"]))
    out_labels.sort(key=lambda x: x["label_time"])
    counts = {"labels_without_prediction": len(never_predicted), "duplicate_labels": len(dup) + len(tied),
              "labels_after_max_delay": len(too_late), "unscored_predictions": len(unscored)}
    return preds, out_labels, counts


def expected_outcomes(preds: list[dict], labels: list[dict]) -> pd.DataFrame:
    """The join by pandas alone: labels within [decision, decision + max delay], the latest (then the smaller
    value) winning, one row per prediction."""
    p = pd.DataFrame(preds)
    lab = pd.DataFrame(labels)
    lab = lab[valid(lab, "labels")][["trip_id", "label_time", "big_tipper"]]  # the job reads good labels only
    lab["label"] = lab["big_tipper"].astype(float)
    m = p[["trip_id", "event_time"]].merge(lab, on="trip_id")
    m = m[(m.label_time >= m.event_time) & (m.label_time - m.event_time <= MAX_DELAY_MS)]
    seen = m.groupby("trip_id").size().rename("labels_seen")
    win = m.sort_values(["trip_id", "label_time", "label"], ascending=[True, False, True]).drop_duplicates("trip_id")
    out = p.merge(win[["trip_id", "label_time", "label"]], on="trip_id", how="left").merge(
        seen, on="trip_id", how="left")
    out["labels_seen"] = out["labels_seen"].fillna(0).astype(int)
    out["outcome"] = np.where(out["label"].isna(), "unlabelled", "labelled")
    return out


def produce(cfg, rows: list[dict], topic: str, time_key: str) -> None:
    producer = rp.kafka_producer(cfg.kafka.bootstrap_servers)
    for r in rows:
        producer.produce(cfg.kafka.topic(topic), key=r["trip_id"].encode(), value=json.dumps(r).encode(),
                         timestamp=int(r[time_key]))
    assert producer.flush(30) == 0


def flush_watermark(cfg, after_ms: int) -> None:
    """One prediction and one label far past ``after_ms`` on every partition of both topics: the watermark
    (the smallest over all partitions) then passes every deadline and clean-up before it."""
    from confluent_kafka.admin import AdminClient

    producer = rp.kafka_producer(cfg.kafka.bootstrap_servers)
    meta = AdminClient({"bootstrap.servers": cfg.kafka.bootstrap_servers}).list_topics(timeout=10)
    t = after_ms + 10 * MAX_DELAY_MS
    for topic, value in ((PREDICTIONS_TOPIC, {"event_time": t, "model_name": "tips", "model_version": 1,
                                              "status": "ok", "score": 0.5}),
                         (rp.LABELS_TOPIC, {"label_time": t, "decision_time": t, "big_tipper": False})):
        for part in meta.topics[cfg.kafka.topic(topic)].partitions:
            key = f"flush-{topic}-{part}"
            producer.produce(cfg.kafka.topic(topic), key=key.encode(), partition=part, timestamp=t,
                             value=json.dumps({"trip_id": key, **value}).encode())
    assert producer.flush(30) == 0


def outcome_rows(cfg) -> int:
    """Rows in monitoring.outcomes, from the current snapshot's summary (no data read)."""
    snap = open_catalog(cfg).load_table(OUTCOMES.identifier).current_snapshot()
    return int(snap.summary.additional_properties.get("total-records", 0)) if snap else 0


def wait_rows(cfg, n: int, timeout: float = 300) -> int:
    deadline = time.time() + timeout
    got = outcome_rows(cfg)
    while got < n and time.time() < deadline:
        time.sleep(1)
        got = outcome_rows(cfg)
    return got


def counters(cfg, job_id: str) -> dict[str, float]:
    return {name: operator_metric(cfg, job_id, "liveml.feedback", name) for name in COUNTERS}


def test_outcomes_equal_a_pandas_join_of_the_real_trips_through_a_taskmanager_kill(stack_config):
    tenant = make_tenant(stack_config, "feedback", 11)
    cfg = load_config(tenant, env={})
    preds, labels, want_counts = feedback_inputs()
    expected = expected_outcomes(preds, labels)
    split = preds[len(preds) // 2]["event_time"]
    first = ([p for p in preds if p["event_time"] < split], [x for x in labels if x["label_time"] < split])
    second = ([p for p in preds if p["event_time"] >= split], [x for x in labels if x["label_time"] >= split])

    t0 = time.time()

    def step(what: str) -> None:  # where the time goes, printed with -s
        print(f"[{time.time() - t0:6.1f}s] {what}", flush=True)

    job_id = cli_json(tenant, "submit", "feedback")["job_id"]
    step("submitted")
    try:
        produce(cfg, first[0], PREDICTIONS_TOPIC, "event_time")
        produce(cfg, first[1], rp.LABELS_TOPIC, "label_time")
        # every outcome whose deadline (and clean-up) the first half's watermark passed is written
        # (the watermark is the smallest over every partition of both topics, and the real trips are sparse: ~14 a
        # day, so a partition may lack the last hours before the split)
        done_first = expected[expected.event_time + 2 * MAX_DELAY_MS < split - 2 * 24 * HOUR]
        assert wait_rows(cfg, len(done_first)) >= len(done_first), len(done_first)
        step("first half's outcomes written")
        # the counters, read before any failure (Flink's metrics start again at 0 after a restore)
        deadline = time.time() + 90
        seen = counters(cfg, job_id)
        while any(seen[k] < v for k, v in want_counts.items()) and time.time() < deadline:
            time.sleep(2)
            seen = counters(cfg, job_id)
        assert {k: seen[k] for k in want_counts} == want_counts, seen
        assert seen["late_labels"] == 0 and seen["duplicate_predictions"] == 0, seen
        step("counters read")

        produce(cfg, second[0], PREDICTIONS_TOPIC, "event_time")
        produce(cfg, second[1], rp.LABELS_TOPIC, "label_time")
        before = outcome_rows(cfg)
        wait_rows(cfg, before + 1, timeout=120)
        kill_taskmanagers(stack_config)  # mid-stream: outcomes of the second half are still being written
        step("TaskManager killed")
        flush_watermark(cfg, preds[-1]["event_time"])
        wait_rows(cfg, len(expected), timeout=420)
        step("every outcome written")
    finally:
        run_cli(tenant, "cancel", job_id, "--hard", check=False)
    got = read_table(tenant, "monitoring.outcomes")

    assert not got.trip_id.duplicated().any(), got[got.trip_id.duplicated(keep=False)].sort_values("trip_id")
    assert len(got) == len(expected)
    g = got.set_index("trip_id").sort_index()
    e = expected.set_index("trip_id").loc[g.index]
    assert (g.outcome == e.outcome).all()
    assert (g.labels_seen == e.labels_seen).all()
    lab = e.outcome == "labelled"
    assert np.array_equal(g.label[lab].to_numpy(), e.label[lab].to_numpy())
    assert (epoch_ms(g.label_time[lab]) == e.label_time[lab].astype("int64")).all()
    assert np.allclose(g.label_delay_s[lab], (e.label_time[lab] - e.event_time[lab]) / 1000)
    assert g.label[~lab].isna().all() and g.label_delay_s[~lab].isna().all()
    assert (epoch_ms(g.decision_time) == e.event_time).all()
    assert (g.status == e.status).all() and (g.model_version == e.model_version).all()
    assert np.allclose(g.score.fillna(-1), e.score.fillna(-1))
    assert (g.max_label_delay_s == MAX_DELAY_MS // 1000).all()
    # the job survived the kill: running, and not failed over more than the one restart
    state = requests.get(f"{cfg.flink.rest_url}/jobs/{job_id}", timeout=5).json()["state"]
    assert state in ("RUNNING", "CANCELED", "CANCELLING")
