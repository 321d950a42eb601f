"""The feedback join's rules (flink_jobs/feedback.py): interval placement, the winning label, the outcome row."""

from __future__ import annotations

import itertools

import duckdb
import pandas as pd
import pytest

from flink_jobs import feedback as F
from iceberg_schemas.training import TIPS
from liveml.training_set import spine_sql

pytestmark = pytest.mark.unit

H = 3_600_000


def label(t, value, decision=0, trip="t1"):
    return F.Label(trip, t, decision, float(value))


@pytest.mark.parametrize("delay_ms, where", [(0, "within"), (H, "within"), (H + 1, "after_max_delay"),
                                             (-1, "before_decision")])
def test_a_label_is_placed_by_its_delay_with_both_ends_inclusive(delay_ms, where):
    assert F.placement(label(1000 + delay_ms, 1), 1000, H) == where


def test_the_winner_is_the_training_sets_label_whatever_the_order_of_arrival():
    """Every arrival order of a trip's labels gives the label the training set's spine (DuckDB) picks."""
    labels = [label(5, 1), label(9, 1), label(9, 0), label(7, 0)]
    frame = pd.DataFrame({"trip_id": ["t1"] * 4, "label_time": [x.label_time for x in labels],
                          "decision_time": [0] * 4, "big_tipper": [bool(x.value) for x in labels]})
    con = duckdb.connect()
    con.register("labels", frame)
    spine = con.execute(spine_sql(TIPS)).fetchall()
    assert len(spine) == 1
    want = float(spine[0][2])
    for order in itertools.permutations(labels):
        best = None
        for x in order:
            best = F.winner(best, x)
        assert (best.label_time, best.value) == (9, want) == (9, 0.0)


def _prediction(**kw):
    base = {"trip_id": "t1", "event_time": 1_000, "model_name": "tips", "model_version": 3, "model_label": "canary",
            "status": "ok", "score": 0.7, "shadow_model_version": None, "shadow_score": None, "predicted_at": 1_050}
    base.update(kw)
    return tuple(base[n] for n in F.PREDICTION_FIELDS)


def test_an_outcome_row_carries_the_prediction_and_its_label():
    row = dict(zip(F.OUTCOME_FIELDS, F.outcome_row(_prediction(), label(1_000 + 900_000, 1, 1_000), 2, H)))
    assert row == {"trip_id": "t1", "decision_time": 1_000, "model_name": "tips", "model_version": 3,
                   "model_label": "canary", "status": "ok", "score": 0.7, "outcome": "labelled", "label": 1.0,
                   "label_time": 901_000, "label_delay_s": 900.0, "labels_seen": 2, "max_label_delay_s": 3600,
                   "shadow_model_version": None, "shadow_score": None, "predicted_at": 1_050}


def test_an_unlabelled_outcome_has_no_label_and_an_unscored_prediction_keeps_its_status():
    row = dict(zip(F.OUTCOME_FIELDS, F.outcome_row(_prediction(status="unavailable", score=None), None, 0, H)))
    assert row["outcome"] == "unlabelled" and row["label"] is None and row["label_time"] is None
    assert row["label_delay_s"] is None and row["status"] == "unavailable" and row["score"] is None


def test_the_job_writes_every_column_of_monitoring_outcomes():
    from iceberg_schemas.tables import OUTCOMES

    assert F.OUTCOME_FIELDS == tuple(f.name for f in OUTCOMES.schema.fields)
