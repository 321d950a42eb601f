"""Event contracts of the Kafka topics we read: fields, types, what is required, what is absurd.

The feature job's validation (and so what goes to the dead-letter topic, with which reason) is generated
from these declarations, as are the columns of the raw Iceberg tables the events land in.
"""

from __future__ import annotations

from dataclasses import dataclass

FLINK_TYPES = {"string": "STRING", "int": "INT", "bigint": "BIGINT", "double": "DOUBLE", "boolean": "BOOLEAN"}


@dataclass(frozen=True)
class EventField:
    name: str
    type: str  # one of FLINK_TYPES
    required: bool = False
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None
    epoch_ms: bool = False  # a time as epoch milliseconds; stored as timestamptz in Iceberg
    # Decimal places the value carries (fare in cents: 2). A double with a declared scale is summed and
    # averaged as integers of 10^-scale units, so windowed sums are exact (see flink_jobs.feature_sql.agg_expr);
    # a finer value is rounded half up to it there.
    scale: int | None = None
    doc: str = ""

    def __post_init__(self) -> None:
        if self.type not in FLINK_TYPES:
            raise ValueError(f"field {self.name}: type {self.type!r} is not one of {sorted(FLINK_TYPES)}")
        if self.scale is not None and (self.type != "double" or not 0 <= self.scale <= 9):
            raise ValueError(f"field {self.name}: scale {self.scale!r} needs type double and 0 <= scale <= 9")

    @property
    def exact_sum(self) -> bool:
        """Whether sums over this field can be exact: integers are, doubles only at a declared scale."""
        return self.type in ("int", "bigint") or self.scale is not None


@dataclass(frozen=True)
class EventSource:
    name: str
    topic: str
    id_field: str  # what makes an event unique together with the time field
    time_field: str  # epoch milliseconds in the payload
    fields: tuple[EventField, ...]
    raw_table: str
    max_future_s: int = 3600  # event time this far past the Kafka record time is absurd

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic}.dlq"

    def field(self, name: str) -> EventField:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} has no field {name!r}")


TRIPS = EventSource(
    name="trips",
    topic="trips",
    id_field="trip_id",
    time_field="event_time",
    raw_table="raw.trips",
    fields=(
        EventField("trip_id", "string", required=True),
        EventField("event_type", "string", required=True, choices=("start", "end")),
        EventField("event_time", "bigint", required=True, min=0, epoch_ms=True),
        EventField("pickup_community_area", "int", min=1, max=77),
        EventField("dropoff_community_area", "int", min=1, max=77),
        EventField("company", "string"),
        EventField("payment_type", "string"),
        EventField("fare", "double", min=0, max=1000, scale=2, doc="dollars, in cents"),
        EventField("trip_miles", "double", min=0, max=500, scale=2, doc="miles, to 1/100"),
        EventField("trip_seconds", "bigint", min=0, max=86400),
        EventField("pickup_latitude", "double", min=-90, max=90),
        EventField("pickup_longitude", "double", min=-180, max=180),
        EventField("dropoff_latitude", "double", min=-90, max=90),
        EventField("dropoff_longitude", "double", min=-180, max=180),
    ),
)

LABELS = EventSource(
    name="labels",
    topic="labels",
    id_field="trip_id",
    time_field="label_time",
    raw_table="labels.trips",
    fields=(
        EventField("trip_id", "string", required=True),
        EventField("label_time", "bigint", required=True, min=0, epoch_ms=True, doc="when the tip became known"),
        EventField("decision_time", "bigint", min=0, epoch_ms=True, doc="the trip's end"),
        EventField("company", "string"),
        EventField("fare", "double", min=0, max=1000, scale=2, doc="dollars, in cents"),
        EventField("tips", "double", min=0, max=1000, scale=2, doc="dollars, in cents"),
        EventField("big_tipper", "boolean", required=True),
    ),
)

SOURCES = {s.name: s for s in (TRIPS, LABELS)}

PREDICTIONS_TOPIC = "predictions"  # the enrichment job's output, one JSON record per completed trip

# every topic the platform reads, writes or dead-letters to (before a tenant's prefix)
TOPICS = (*(t for s in SOURCES.values() for t in (s.topic, s.dlq_topic)), PREDICTIONS_TOPIC)
