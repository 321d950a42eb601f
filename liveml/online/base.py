"""The online-store interface and the rules every implementation shares."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol, Sequence

from iceberg_schemas.features import FeatureView


@dataclass
class EntityRow:
    view: str
    entity: str
    status: str  # ok | missing | expired
    values: dict[str, Any] = field(default_factory=dict)
    event_time_ms: int | None = None
    write_time_ms: int | None = None
    age_s: float | None = None  # now - event time

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def coalesce_latest(rows: Iterable[tuple[Any, int, Mapping[str, Any]]]) -> dict[str, tuple[int, Mapping[str, Any]]]:
    """Keep, per entity, the row with the greatest event time (the last one on ties).

    Writes are idempotent by event time, so writing only these is the same as writing them all.
    """
    latest: dict[str, tuple[int, Mapping[str, Any]]] = {}
    for entity, event_time_ms, values in rows:
        key = str(entity)
        cur = latest.get(key)
        if cur is None or event_time_ms >= cur[0]:
            latest[key] = (int(event_time_ms), values)
    return latest


FUTURE_TOLERANCE_S = 5.0  # clock skew between the writer and a live reader


def to_row(view: FeatureView, entity: str, stored: Mapping[str, Any] | None, now_ms: int) -> EntityRow:
    if not stored:
        return EntityRow(view.name, entity, "missing")
    event_ms = int(stored["__event_time"])
    age_s = (now_ms - event_ms) / 1000.0
    if age_s < -FUTURE_TOLERANCE_S:  # not yet known at ``now_ms`` (a read as of the past)
        return EntityRow(view.name, entity, "missing")
    if age_s > view.ttl_s:
        return EntityRow(view.name, entity, "expired", {}, event_ms, int(stored["__write_time"]), age_s)
    values = {}
    for agg, name in zip(view.aggregations, view.feature_names()):
        raw = stored.get(name)
        values[name] = None if raw in (None, "", "None") else (int(float(raw)) if agg.is_integer else float(raw))
    return EntityRow(view.name, entity, "ok", values, event_ms, int(stored["__write_time"]), age_s)


class OnlineStore(Protocol):
    def write(self, view: FeatureView, rows: Sequence[tuple[Any, int, Mapping[str, Any]]],
              write_time_ms: int | None = None) -> int:
        """Upsert ``(entity, event_time_ms, values)`` rows; returns how many entities were updated."""

    def get(self, view: FeatureView, entities: Sequence[Any], now_ms: int | None = None) -> list[EntityRow]:
        """The latest values of ``entities``; expired (by event time and the view's TTL) read as expired."""


def wall_ms() -> int:
    return int(time.time() * 1000)
