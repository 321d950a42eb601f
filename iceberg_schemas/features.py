"""Feature views, declared once: the entity, the source, the aggregations, the windows, TTL and owner.

In the style of Chronon's GroupBy and Feast's FeatureView, each declaration here drives everything else:
the Iceberg feature-table schema (``iceberg_schemas.tables``), and in later stages the Flink SQL, the Redis
layout and the training-set columns. Output names come from one rule, :func:`feature_name`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta

SPEC_VERSION = 1

AGG_OPS = ("count", "sum", "avg", "min", "max", "last", "distinct", "rate")
_WINDOW = re.compile(r"^(\d+)(s|m|h|d)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def window_seconds(window: str) -> int:
    m = _WINDOW.match(window)
    if not m or int(m.group(1)) <= 0:
        raise ValueError(f"window {window!r} must look like 15m, 1h or 24h")
    return int(m.group(1)) * _UNIT_SECONDS[m.group(2)]


def feature_name(column: str, op: str, window: str) -> str:
    """The one naming rule: ``<column>_<op>_<window>``, e.g. ``fare_avg_1h`` or ``trips_count_15m``."""
    if op not in AGG_OPS:
        raise ValueError(f"aggregation {op!r} is not one of {AGG_OPS}")
    window_seconds(window)
    if not re.fullmatch(r"[a-z][a-z0-9_]*", column):
        raise ValueError(f"column {column!r} must be snake_case")
    return f"{column}_{op}_{window}"


@dataclass(frozen=True)
class Aggregation:
    column: str  # the source field; for "count" a noun for what is counted ("trips")
    op: str
    windows: tuple[str, ...]

    def names(self) -> list[str]:
        return [feature_name(self.column, self.op, w) for w in self.windows]


@dataclass(frozen=True)
class FeatureView:
    name: str
    entity: str  # the key column, as named in the source events
    entity_type: str  # "int" or "string"
    source: str  # Kafka topic the view reads
    aggregations: tuple[Aggregation, ...]
    ttl: timedelta
    description: str
    owner: str
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def table(self) -> str:
        return f"features.{self.name}"

    def feature_names(self) -> list[str]:
        return [n for agg in self.aggregations for n in agg.names()]

    @property
    def ttl_s(self) -> int:
        return int(self.ttl.total_seconds())


FEATURE_VIEWS: tuple[FeatureView, ...] = (
    FeatureView(
        name="pickup_area_activity",
        entity="pickup_community_area",
        entity_type="int",
        source="trips",
        aggregations=(
            Aggregation("trips", "count", ("15m", "1h")),
            Aggregation("fare", "avg", ("1h",)),
            Aggregation("trip_miles", "avg", ("1h",)),
        ),
        ttl=timedelta(hours=2),
        description="How busy a pickup community area is and what its trips cost, over recent windows.",
        owner="features@liveml",
    ),
    FeatureView(
        name="company_tips",
        entity="company",
        entity_type="string",
        source="labels",
        aggregations=(Aggregation("tip", "rate", ("24h",)), Aggregation("labels", "count", ("24h",))),
        ttl=timedelta(hours=48),
        description="Share of a company's trips with a big tip, from labels that have already arrived.",
        owner="features@liveml",
    ),
)


def view(name: str) -> FeatureView:
    for v in FEATURE_VIEWS:
        if v.name == name:
            return v
    raise KeyError(f"no feature view {name!r}; known: {[v.name for v in FEATURE_VIEWS]}")
