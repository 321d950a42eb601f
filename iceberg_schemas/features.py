"""Feature views, declared once: the entity, the source, the aggregations, the window, TTL and owner.

In the style of Chronon's GroupBy and Feast's FeatureView, each declaration here drives everything else:
the Flink SQL (``flink_jobs.feature_sql``), the Iceberg feature-table schema (``iceberg_schemas.tables``),
the Redis key layout (``liveml.online``) and the feature columns training and serving use
(:func:`feature_columns`). Output names come from one rule, :func:`feature_name`.

One window per view: Flink evaluates every OVER aggregate of a query on the same window, so a second
window is a second view (``pickup_area_15m`` beside ``pickup_area_1h``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta

SPEC_VERSION = 3  # 3: sums, averages and rates are exact (integer accumulators, one division)

# The tie rule. An entity's feature value at time t is its latest row with event_time <= t, and "latest" is
# the greatest (event_time, computed_at, source_id), compared in that order: among rows of one event time the
# one computed last wins (a restart's or a backfill's recomputation supersedes the earlier one), and the
# source event id settles the rest, so the choice is a function of the rows alone, never of read order.
# The stream's Redis writer (liveml.online), the training set's point-in-time join (liveml.training_set),
# parity (liveml.parity) and the backfill's Redis load all apply it through LATEST_ORDER.
LATEST_ORDER = ("event_time", "computed_at", "source_id")


def latest_first(alias: str = "") -> str:
    """SQL ``ORDER BY`` terms that put an entity's latest feature row (the tie rule) first."""
    return ", ".join(f'{alias}"{c}" DESC' for c in LATEST_ORDER)


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
    column: str  # the name part: the source field, or for "count" a noun for what is counted ("trips")
    op: str
    source: str | None = None  # the source field when it differs from ``column`` (None for count)

    @property
    def source_field(self) -> str | None:
        if self.op == "count":
            return None
        return self.source or self.column

    @property
    def is_integer(self) -> bool:
        return self.op in ("count", "distinct")


@dataclass(frozen=True)
class FeatureView:
    name: str
    entity: str  # the key column, as named in the source events
    entity_type: str  # "int" or "string"
    source: str  # a name from iceberg_schemas.sources.SOURCES
    window: str
    aggregations: tuple[Aggregation, ...]
    ttl: timedelta
    description: str
    owner: str
    # only source events whose fields equal these values, e.g. {"event_type": "end"}: declared as data, so
    # the SQL and any other reader (a backfill, a test's reference) derive the same predicate
    only: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        window_seconds(self.window)
        names = self.feature_names()
        if len(names) != len(set(names)):
            raise ValueError(f"view {self.name}: duplicate feature names {names}")

    @property
    def table(self) -> str:
        return f"features.{self.name}"

    def feature_names(self) -> list[str]:
        return [feature_name(a.column, a.op, self.window) for a in self.aggregations]

    @property
    def ttl_s(self) -> int:
        return int(self.ttl.total_seconds())

    @property
    def window_s(self) -> int:
        return window_seconds(self.window)


FEATURE_VIEWS: tuple[FeatureView, ...] = (
    FeatureView(
        name="pickup_area_1h",
        entity="pickup_community_area",
        entity_type="int",
        source="trips",
        window="1h",
        only={"event_type": "end"},
        aggregations=(
            Aggregation("trips", "count"),
            Aggregation("fare", "avg"),
            Aggregation("fare", "max"),
            Aggregation("trip_miles", "avg"),
        ),
        ttl=timedelta(hours=2),
        description="How busy a pickup community area is and what its trips cost, over the last hour.",
        owner="features@liveml",
    ),
    FeatureView(
        name="pickup_area_15m",
        entity="pickup_community_area",
        entity_type="int",
        source="trips",
        window="15m",
        only={"event_type": "start"},
        aggregations=(Aggregation("pickups", "count"), Aggregation("company", "distinct")),
        ttl=timedelta(minutes=30),
        description="Trips starting in a pickup area, and how many companies serve it, over 15 minutes.",
        owner="features@liveml",
    ),
    FeatureView(
        name="company_tips_24h",
        entity="company",
        entity_type="string",
        source="labels",
        window="24h",
        aggregations=(Aggregation("tip", "rate", source="big_tipper"), Aggregation("labels", "count")),
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


def feature_columns(views: tuple[FeatureView, ...] = FEATURE_VIEWS) -> list[str]:
    """Every feature column, in declaration order: what training sets and serving requests carry."""
    return [n for v in views for n in v.feature_names()]
