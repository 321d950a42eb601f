"""The one naming rule and the feature-view declarations it feeds."""

import pytest

from iceberg_schemas.features import FEATURE_VIEWS, Aggregation, feature_name, window_seconds
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
    for view in FEATURE_VIEWS:
        spec = feature_table(view)
        cols = [f.name for f in spec.schema.fields]
        assert cols[0] == view.entity
        assert cols[-len(view.feature_names()):] == view.feature_names()
        assert spec.properties["liveml.ttl-s"] == str(view.ttl_s)
        assert spec in TABLES


def test_aggregation_names_every_window():
    assert Aggregation("fare", "avg", ("15m", "1h")).names() == ["fare_avg_15m", "fare_avg_1h"]
