"""The enrichment job's per-event rules: routing, feature assembly, the output row."""

from __future__ import annotations

import json
import math

import pytest

from flink_jobs.enrich import (Outcome, assemble, context_requests, model_inputs, prediction_row, routes_to_canary,
                               status_of)
from iceberg_schemas.tables import PREDICTIONS
from iceberg_schemas.training import TIPS
from liveml.online.base import EntityRow

pytestmark = pytest.mark.unit

EVENT = {"trip_id": "t-1", "event_type": "end", "event_time": 1_420_000_000_000, "pickup_community_area": 8,
         "dropoff_community_area": 32, "company": "Flash Cab", "payment_type": "Cash", "fare": 12.5,
         "trip_miles": 2.0, "trip_seconds": 600}


def test_canary_share_is_binomial_and_stable():
    ids = [f"trip-{i}" for i in range(20_000)]
    for fraction in (0.1, 0.5):
        n = sum(routes_to_canary(t, fraction) for t in ids)
        sd = math.sqrt(len(ids) * fraction * (1 - fraction))
        assert abs(n - len(ids) * fraction) < 4 * sd, (fraction, n)
    assert [routes_to_canary(t, 0.1) for t in ids[:500]] == [routes_to_canary(t, 0.1) for t in ids[:500]]
    assert not any(routes_to_canary(t, 0.0) for t in ids[:500]) and all(routes_to_canary(t, 1.0) for t in ids[:50])
    # a larger fraction keeps every trip the smaller one routed (ramping a canary up moves no one back)
    assert all(routes_to_canary(t, 0.2) for t in ids if routes_to_canary(t, 0.1))


def test_features_come_in_the_training_sets_order_and_missing_views_read_as_none():
    reqs = context_requests(EVENT)
    assert [(v.name, e) for v, e in reqs] == [(v.name, EVENT[v.entity]) for v in TIPS.feature_views]
    rows = []
    for i, (view, entity) in enumerate(reqs):
        if i == 0:
            values = {n: float(k + 1) for k, n in enumerate(view.feature_names())}
            rows.append(EntityRow(view.name, str(entity), "ok", values, 1_000, 1_100, 4.5))
        elif i == 1:
            rows.append(EntityRow(view.name, str(entity), "expired", {}, 5, 6, 99_999.0))
        else:
            rows.append(EntityRow(view.name, str(entity), "missing"))
    a = assemble(EVENT, rows)
    assert list(a.features) == TIPS.feature_columns()
    first, second = TIPS.feature_views[0], TIPS.feature_views[1]
    assert [a.features[n] for n in first.feature_names()] == [float(k + 1) for k in range(len(first.feature_names()))]
    assert all(a.features[n] is None for n in second.feature_names())  # expired: missing, never stale
    assert a.features["fare"] == 12.5 and a.features["company"] == "Flash Cab"
    assert a.views[first.name] == {"status": "ok", "event_time_ms": 1_000, "age_s": 4.5}
    assert a.views[second.name]["status"] == "expired"
    missing = {k for k, v in a.features.items() if v is None}
    assert missing == {n for v in TIPS.feature_views[1:] for n in v.feature_names()}
    inputs = model_inputs(a.features, lambda k: {"fare": math.nan}.get(k, -1))
    assert all(inputs[n] == -1 for n in second.feature_names())


def test_status_follows_the_grpc_code():
    assert status_of("OK") == "ok" and status_of("DEADLINE_EXCEEDED") == "timeout"
    assert status_of("UNAVAILABLE") == "unavailable"
    assert status_of("INVALID_ARGUMENT") == "invalid" and status_of("NOT_FOUND") == "no_model"


def test_the_row_has_every_predictions_column():
    a = assemble(EVENT, [None] * len(TIPS.feature_views))
    row = prediction_row(EVENT, a, Outcome("ok", 0.25, 3, shadow_version=4, shadow_score=0.5), "tips", "stable",
                         12.3456, 1_420_000_000_500)
    assert set(row) == {f.name for f in PREDICTIONS.schema.fields}
    assert row["score"] == 0.25 and row["model_version"] == 3 and row["latency_ms"] == 12.346
    assert json.loads(row["features"])["fare"] == 12.5
    fallback = prediction_row(EVENT, a, Outcome("timeout", reason="no answer within 2000 ms"), "tips", "canary",
                              2000.0, 1)
    assert fallback["score"] is None and fallback["status"] == "timeout" and fallback["model_label"] == "canary"
    with pytest.raises(ValueError):
        prediction_row(EVENT, a, Outcome("weird"), "tips", "stable", 0.0, 0)
