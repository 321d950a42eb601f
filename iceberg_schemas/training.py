"""Training sets, declared once: the label, the decision time, the request-time fields and the feature views.

A training set is a *spine* of labels (one row per labelled trip, at its decision time) joined point in time
with the context the model sees at that moment:

- request-time fields, from the event the decision was made on (the trip's ``end`` event in ``raw.trips``);
- each feature view's latest row with ``event_time <= decision_time``, or NULL once older than the view's TTL.

The TFX pipeline takes its feature list and label from here (:meth:`TrainingSetSpec.feature_columns`),
and the enrichment job assembles the same columns online.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyiceberg.schema import Schema
from pyiceberg.types import BooleanType, DoubleType, IntegerType, LongType, NestedField, StringType, TimestamptzType

from iceberg_schemas.features import FEATURE_VIEWS, SPEC_VERSION, FeatureView, window_seconds
from iceberg_schemas.sources import TRIPS, EventSource
from iceberg_schemas.tables import TableSpec, feature_table, table_spec

TRAINING_NAMESPACE = "training"
_ICEBERG = {"string": StringType, "int": IntegerType, "bigint": LongType, "double": DoubleType,
            "boolean": BooleanType}


@dataclass(frozen=True)
class TrainingSetSpec:
    name: str
    label: str  # column of the label table
    label_table: str = "labels.trips"
    keys: tuple[str, ...] = ("trip_id",)
    decision_time: str = "decision_time"
    label_time: str = "label_time"  # when the label arrived: the latest one wins if a trip has several
    context_source: EventSource = TRIPS
    context_only: dict[str, str] = field(default_factory=lambda: {"event_type": "end"})
    context_fields: tuple[str, ...] = ()
    feature_views: tuple[FeatureView, ...] = FEATURE_VIEWS
    description: str = ""
    # the feedback job's event-time interval join: a label later than this after its decision is not joined
    max_label_delay: str = "1h"
    # score >= threshold is a positive decision: precision and recall are measured at it (monitoring.quality)
    decision_threshold: float = 0.5

    def __post_init__(self) -> None:
        window_seconds(self.max_label_delay)
        if not 0.0 <= self.decision_threshold <= 1.0:
            raise ValueError(f"training set {self.name!r}: decision_threshold must be in [0, 1], "
                             f"got {self.decision_threshold}")

    @property
    def max_label_delay_s(self) -> int:
        return window_seconds(self.max_label_delay)

    @property
    def table(self) -> str:
        return f"{TRAINING_NAMESPACE}.{self.name}"

    @property
    def context_table(self) -> str:
        return self.context_source.raw_table

    def view_features(self) -> list[str]:
        return [n for v in self.feature_views for n in v.feature_names()]

    def feature_columns(self) -> list[str]:
        """What a model takes as input: request-time fields, then view features, in declaration order."""
        return [*self.context_fields, *self.view_features()]

    def columns(self) -> list[str]:
        return [*self.keys, self.decision_time, self.label, *self.feature_columns()]

    def table_spec(self) -> TableSpec:
        """The Iceberg table a build writes: keys, decision time, label, request fields, view features.

        Unpartitioned, because pyiceberg 0.6.1 writes it (README: Pinned versions); each build is one
        overwrite, so earlier builds stay readable by snapshot id."""
        labels = table_spec(self.label_table).schema
        fields: list[NestedField] = []
        fid = 1

        def add(name: str, typ, doc: str | None = None) -> None:
            nonlocal fid
            fields.append(NestedField(fid, name, typ, required=False, doc=doc))
            fid += 1

        for key in self.keys:
            add(key, labels.find_field(key).field_type)
        add(self.decision_time, TimestamptzType(), "the time the prediction is made; features are as of then")
        add(self.label, labels.find_field(self.label).field_type, "the label")
        for name in self.context_fields:
            add(name, _ICEBERG[self.context_source.field(name).type](), "request-time field")
        for view in self.feature_views:
            table = feature_table(view).schema
            for name in view.feature_names():
                add(name, table.find_field(name).field_type, f"{view.name}, TTL {view.ttl_s} s")
        return TableSpec(TRAINING_NAMESPACE, self.name, Schema(*fields), _unpartitioned(), self.description,
                         {"liveml.spec-version": str(SPEC_VERSION), "liveml.label": self.label})


def latest_label_key(label_time_ms: int, value) -> tuple:
    """Sort key of a trip's labels, smallest first: the latest ``label_time`` wins, and among labels of one
    time the smallest value. The same rule as the training set's spine (:func:`liveml.training_set.spine_sql`,
    ``ORDER BY label_time DESC, label``), so the feedback job joins the label a training set would use."""
    return (-label_time_ms, value)


def _unpartitioned():
    from pyiceberg.partitioning import PartitionSpec

    return PartitionSpec()


TIPS = TrainingSetSpec(
    name="tips",
    label="big_tipper",
    context_fields=("pickup_community_area", "dropoff_community_area", "company", "payment_type", "fare",
                    "trip_miles", "trip_seconds"),
    description="Will this trip end with a big tip (tips > 20% of fare)? One row per labelled trip, with the "
                "trip's own fields and the context features as they stood when it ended.",
)

TRAINING_SETS = {s.name: s for s in (TIPS,)}


def training_set(name: str) -> TrainingSetSpec:
    try:
        return TRAINING_SETS[name]
    except KeyError:
        raise KeyError(f"no training set {name!r}; declared: {sorted(TRAINING_SETS)}") from None
