"""The one naming rule and the feature-view declarations it feeds."""

import pytest

from iceberg_schemas.features import FEATURE_VIEWS, Aggregation, FeatureView, feature_columns, feature_name, view, window_seconds
from iceberg_schemas.tables import TABLES, feature_table

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("col, op, window, expected", [
    ("trips", "count", "1h", "trips_count_1h"), ("fare", "avg", "15m", "fare_avg_15m"),
    ("tip", "rate", "24h", "tip_rate_24h"), ("trip_miles", "max", "30s", "trip_miles_max_30s")])
def test_feature_name_rule(col, op, window, expected):
    assert feature_name(col, op, window) == expected


@pytest.mark.parametrize("col, op, window", [("fare", "median", "1h"), ("fare", "avg", "1 hour"),
                                             ("Fare", "avg", "1h"), ("fare", "avg", "0m")])
def test_feature_name_rejects_what_the_rule_cannot_spell(col, op, window):
    with pytest.raises(ValueError):
        feature_name(col, op, window)


def test_window_seconds():
    assert [window_seconds(w) for w in ("30s", "15m", "1h", "2d")] == [30, 900, 3600, 172800]


def test_feature_names_are_unique_across_views():
    names = [n for v in FEATURE_VIEWS for n in v.feature_names()]
    assert len(names) == len(set(names))
    assert len({v.name for v in FEATURE_VIEWS}) == len(FEATURE_VIEWS)


def test_feature_table_columns_come_from_the_spec():
    for v in FEATURE_VIEWS:
        spec = feature_table(v)
        cols = [f.name for f in spec.schema.fields]
        assert cols[0] == v.entity
        assert cols[-len(v.feature_names()):] == v.feature_names()
        assert spec.properties["liveml.ttl-s"] == str(v.ttl_s)
        assert spec in TABLES


def test_views_name_their_features_by_the_rule():
    assert view("pickup_area_1h").feature_names() == ["trips_count_1h", "fare_avg_1h", "fare_max_1h",
                                                      "trip_miles_avg_1h"]
    assert view("company_tips_24h").feature_names() == ["tip_rate_24h", "labels_count_24h"]
    assert feature_columns()[:4] == view("pickup_area_1h").feature_names()


def test_the_issue_context_features_exist():
    cols = feature_columns()
    assert {"trips_count_1h", "fare_avg_1h", "tip_rate_24h"} <= set(cols)


def test_duplicate_feature_names_in_a_view_are_refused():
    from datetime import timedelta

    with pytest.raises(ValueError, match="duplicate"):
        FeatureView("x", "company", "string", "trips", "1h", (Aggregation("fare", "avg"), Aggregation("fare", "avg")),
                    timedelta(hours=1), "d", "o")


def test_aggregation_source_fields():
    assert Aggregation("trips", "count").source_field is None
    assert Aggregation("tip", "rate", source="big_tipper").source_field == "big_tipper"
    assert Aggregation("fare", "avg").source_field == "fare"
