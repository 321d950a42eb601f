"""The data contract: every Iceberg table of the platform, with its schema, partition spec and properties.

Field ids are fixed here, so a column keeps its id across evolutions. Adding a column means adding an
optional field with a new id; :func:`iceberg_schemas.registry.ensure_table` applies it as a schema
evolution, never as a drop and re-create.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import DayTransform, IdentityTransform, MonthTransform
from pyiceberg.types import (BooleanType, DoubleType, IntegerType, LongType, NestedField, StringType,
                             TimestamptzType)

from iceberg_schemas.features import FEATURE_VIEWS, FeatureView

DEFAULT_PROPERTIES = {
    "format-version": "2",
    "write.format.default": "parquet",
    "write.parquet.compression-codec": "zstd",
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "50",
    "write.parquet.page-size-bytes": "262144",
    "write.parquet.dict-size-bytes": "262144",
    # "hash" puts the Iceberg writer in a task of its own, beside the parse-and-validate chain: on 2 cores the
    # feature job ran 6.4k events/s with it, 2.8k/s with "none" (writer chained into the source task)
    "write.distribution-mode": "hash",
}


@dataclass(frozen=True)
class TableSpec:
    namespace: str
    name: str
    schema: Schema
    partition_spec: PartitionSpec
    description: str
    properties: dict[str, str] = field(default_factory=dict)

    @property
    def identifier(self) -> str:
        return f"{self.namespace}.{self.name}"

    def all_properties(self) -> dict[str, str]:
        return {**DEFAULT_PROPERTIES, "comment": self.description, **self.properties}


def _month(source_id: int, name: str, field_id: int = 1000) -> PartitionSpec:
    """Monthly partitions: a replay compresses years of event time into minutes, and every partition a
    checkpoint touches holds an open Parquet writer in the TaskManager's heap (day partitions over the
    2013-2016 data set meant ~1,400 of them at once and an OutOfMemoryError)."""
    return PartitionSpec(PartitionField(source_id=source_id, field_id=field_id, transform=MonthTransform(),
                                        name=f"{name}_month"))


def _f(fid: int, name: str, typ, required: bool = False, doc: str | None = None) -> NestedField:
    return NestedField(field_id=fid, name=name, field_type=typ, required=required, doc=doc)


RAW_TRIPS = TableSpec(
    "raw", "trips",
    Schema(
        _f(1, "trip_id", StringType(), True, "stable id of the trip, shared by its start and end events"),
        _f(2, "event_type", StringType(), True, "start or end"),
        _f(3, "event_time", TimestamptzType(), True, "when it happened (event time)"),
        _f(4, "pickup_community_area", IntegerType()),
        _f(5, "dropoff_community_area", IntegerType()),
        _f(6, "company", StringType()),
        _f(7, "payment_type", StringType()),
        _f(8, "fare", DoubleType(), doc="end events only"),
        _f(9, "trip_miles", DoubleType(), doc="end events only"),
        _f(10, "trip_seconds", LongType(), doc="end events only"),
        _f(11, "pickup_latitude", DoubleType()),
        _f(12, "pickup_longitude", DoubleType()),
        _f(13, "dropoff_latitude", DoubleType()),
        _f(14, "dropoff_longitude", DoubleType()),
        _f(15, "ingest_time", TimestamptzType(), doc="when Flink read it"),
        _f(16, "is_late", BooleanType(), doc="arrived after the watermark passed its window"),
    ),
    _month(3, "event_time"),
    "Every trip event as it arrived on Kafka topic `trips`, late ones included.",
)

LABELS = TableSpec(
    "labels", "trips",
    Schema(
        _f(1, "trip_id", StringType(), True),
        _f(2, "label_time", TimestamptzType(), True, "when the tip became known"),
        _f(3, "decision_time", TimestamptzType(), doc="when the prediction was made (the trip's end)"),
        _f(4, "company", StringType()),
        _f(5, "fare", DoubleType()),
        _f(6, "tips", DoubleType()),
        _f(7, "big_tipper", BooleanType(), doc="TFX's label: tips > 0.2 * fare"),
        _f(8, "ingest_time", TimestamptzType(), doc="when Flink read it"),
        _f(9, "is_late", BooleanType(), doc="arrived after the watermark passed it"),
    ),
    _month(2, "label_time"),
    "Delayed labels: the tip of each trip, known some time after the trip ended.",
)

PREDICTIONS = TableSpec(
    "predictions", "trips",
    Schema(
        _f(1, "trip_id", StringType(), True),
        _f(2, "event_time", TimestamptzType(), True),
        _f(3, "model_name", StringType()),
        _f(4, "model_version", LongType()),
        _f(5, "score", DoubleType(), doc="P(big tipper); null when the call fell back"),
        _f(6, "fallback_reason", StringType(), doc="why there is no score (status other than ok)"),
        _f(7, "latency_ms", DoubleType(), doc="event into the operator -> prediction out"),
        _f(8, "model_label", StringType(), doc="the version label called: stable or canary"),
        _f(9, "status", StringType(), doc="ok | timeout | unavailable | no_model | invalid (see flink_jobs/enrich.py)"),
        _f(10, "features", StringType(), doc="JSON: the raw features sent to the model (null: missing)"),
        _f(11, "feature_ages", StringType(), doc="JSON: view -> age in seconds of its values at prediction"),
        _f(12, "shadow_model_version", LongType(), doc="the shadow model's version, if one was called"),
        _f(13, "shadow_score", DoubleType(), doc="the shadow model's score: recorded, never used"),
        _f(14, "retries", IntegerType(), doc="transient failures retried before the answer"),
        _f(15, "predicted_at", TimestamptzType(), doc="wall time the prediction was made"),
    ),
    PartitionSpec(
        PartitionField(source_id=2, field_id=1000, transform=DayTransform(), name="event_time_day"),
        PartitionField(source_id=4, field_id=1001, transform=IdentityTransform(), name="model_version"),
    ),
    "Live predictions made inside the stream, with the model version that made each one.",
)

PROOF_EVENTS = TableSpec(
    "ops", "proof_events",
    Schema(
        _f(1, "id", LongType(), True),
        _f(2, "name", StringType()),
        _f(3, "value", DoubleType()),
        _f(4, "event_time", TimestamptzType()),
    ),
    _month(4, "event_time"),
    "Written by the proof job (Kafka topic `proof` -> Flink -> Iceberg) to check the stack end to end.",
)

# --- monitoring: what the loop sees (issue 14) ------------------------------------------------------------

OUTCOMES = TableSpec(
    "monitoring", "outcomes",
    Schema(
        _f(1, "trip_id", StringType(), True),
        _f(2, "decision_time", TimestamptzType(), True, "the prediction's event time (the trip's end)"),
        _f(3, "model_name", StringType()),
        _f(4, "model_version", LongType()),
        _f(5, "model_label", StringType(), doc="the version label called: stable or canary"),
        _f(6, "status", StringType(), doc="the prediction's status: ok | timeout | unavailable | no_model | invalid"),
        _f(7, "score", DoubleType(), doc="the served score; null when the prediction fell back"),
        _f(8, "outcome", StringType(), True, doc="labelled | unlabelled (no label within the maximum delay)"),
        _f(9, "label", DoubleType(), doc="the label as a number (1.0 / 0.0 for a binary label); null: unlabelled"),
        _f(10, "label_time", TimestamptzType(), doc="when the winning label became known"),
        _f(11, "label_delay_s", DoubleType(), doc="label_time - decision_time, seconds"),
        _f(12, "labels_seen", IntegerType(), doc="labels of the trip within the delay (the latest wins)"),
        _f(13, "max_label_delay_s", LongType(), doc="the join's maximum label delay"),
        _f(14, "shadow_model_version", LongType()),
        _f(15, "shadow_score", DoubleType()),
        _f(16, "predicted_at", TimestamptzType(), doc="wall time the prediction was made"),
    ),
    _month(2, "decision_time"),
    "Each prediction joined with its delayed label (event-time interval join, latest label wins), once; "
    "written by the feedback job.",
)

QUALITY = TableSpec(
    "monitoring", "quality",
    Schema(
        _f(1, "window_start", TimestamptzType(), True),
        _f(2, "window_end", TimestamptzType(), True, "exclusive"),
        _f(3, "window", StringType(), True, "the window spec: SIZE (tumbling) or SIZE/SLIDE (sliding)"),
        _f(4, "model_name", StringType()),
        _f(5, "model_version", LongType()),
        _f(6, "model_label", StringType()),
        _f(7, "metric", StringType(), True, "count | positive_rate | mean_score | log_loss | brier | auc | "
                                              "calibration | precision | recall | unscored (predictions "
                                              "without a score, left out of the others)"),
        _f(8, "estimated", DoubleType(), doc="from the scores alone (CBPE), before labels"),
        _f(9, "realised", DoubleType(), doc="from the labels; null until the window has labelled rows"),
        _f(10, "n_scored", LongType(), doc="predictions with a score in the window"),
        _f(11, "n_labelled", LongType(), doc="of which joined with a label"),
        _f(12, "decision_threshold", DoubleType(), doc="score >= threshold counts as positive"),
        _f(13, "labels_complete", BooleanType(), doc="the window's maximum label delay has passed"),
        _f(14, "computed_at", TimestamptzType()),
    ),
    PartitionSpec(),
    "Model quality per event-time window, model version and label: estimated (CBPE) beside realised.",
)

DRIFT = TableSpec(
    "monitoring", "drift",
    Schema(
        _f(1, "window_start", TimestamptzType(), True),
        _f(2, "window_end", TimestamptzType(), True, "exclusive"),
        _f(3, "window", StringType(), True),
        _f(4, "model_name", StringType()),
        _f(5, "model_version", LongType(), doc="the served version whose training statistics are the reference"),
        _f(6, "kind", StringType(), True, "drift (live vs training) | skew (served vs point-in-time offline)"),
        _f(7, "feature", StringType(), True, "a model input, or score"),
        _f(8, "statistic", StringType(), True, "linf | jensen_shannon (TFDV) | share_differ | mean_abs_diff (skew)"),
        _f(9, "distance", DoubleType()),
        _f(10, "threshold", DoubleType()),
        _f(11, "drifted", BooleanType()),
        _f(12, "n", LongType(), doc="live rows compared"),
        _f(13, "reference", StringType(), doc="the reference statistics (artifact URI)"),
        _f(14, "computed_at", TimestamptzType()),
    ),
    PartitionSpec(),
    "Drift of live model inputs and scores from the serving version's training statistics, and skew "
    "between served and offline feature values.",
)

MONITORING_TABLES = (OUTCOMES, QUALITY, DRIFT)

_ENTITY_TYPES = {"int": IntegerType, "string": StringType}


def feature_table(view: FeatureView) -> TableSpec:
    """The offline table of a feature view: entity, the event that produced the row, one column per
    derived feature name, times and the spec version (so a recompute with a new spec keeps old rows)."""
    fields = [_f(1, view.entity, _ENTITY_TYPES[view.entity_type](), True),
              _f(2, "event_time", TimestamptzType(), True, "event time of the event that produced the row"),
              _f(3, "window_end", TimestamptzType(), doc="end of the window the values cover (inclusive)"),
              _f(4, "spec_version", IntegerType(), True),
              _f(5, "computed_at", TimestamptzType()),
              _f(6, "source_id", StringType(), doc="id of the source event (trip_id)")]
    for i, (agg, name) in enumerate(zip(view.aggregations, view.feature_names())):
        fields.append(_f(100 + i, name, LongType() if agg.is_integer else DoubleType()))
    return TableSpec("features", view.name, Schema(*fields), _month(2, "event_time"), view.description,
                     {"liveml.owner": view.owner, "liveml.ttl-s": str(view.ttl_s), "liveml.window": view.window})


BACKFILL_NAMESPACE = "backfill"


def backfill_table(view: FeatureView) -> TableSpec:
    """Where ``liveml backfill`` writes a view's recomputed rows: the feature table's schema, partitioned by
    spec version as well as month, so a backfill overwrites only its own version's months and a recompute
    with a new spec version leaves the old version's rows in place."""
    stream = feature_table(view)
    spec = PartitionSpec(
        PartitionField(source_id=2, field_id=1000, transform=MonthTransform(), name="event_time_month"),
        PartitionField(source_id=4, field_id=1001, transform=IdentityTransform(), name="spec_version"))
    return TableSpec(BACKFILL_NAMESPACE, view.name, stream.schema, spec,
                     f"{view.description} Recomputed from the raw tables by `liveml backfill`.",
                     dict(stream.properties))


TABLES: tuple[TableSpec, ...] = (RAW_TRIPS, LABELS, PREDICTIONS, PROOF_EVENTS, *MONITORING_TABLES,
                                 *(feature_table(v) for v in FEATURE_VIEWS),
                                 *(backfill_table(v) for v in FEATURE_VIEWS))


def table_spec(identifier: str) -> TableSpec:
    for spec in TABLES:
        if spec.identifier == identifier:
            return spec
    raise KeyError(f"no table {identifier!r}; declared: {[t.identifier for t in TABLES]}")


def unpartitioned(spec: TableSpec, namespace: str | None = None) -> TableSpec:
    """``spec`` without partitions (optionally in another namespace): for tables pyiceberg itself writes.

    pyiceberg 0.6.1 (pinned: see README) appends only to unpartitioned tables, so the training sets it
    writes, and benchmark inputs it loads, use this; Flink writes the partitioned originals."""
    return TableSpec(namespace or spec.namespace, spec.name, spec.schema, PartitionSpec(), spec.description,
                     dict(spec.properties))
