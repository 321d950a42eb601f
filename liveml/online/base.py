"""The online-store interface and the rules every implementation shares."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, NamedTuple, Protocol, Sequence

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


class Latest(NamedTuple):
    """One entity's row to write, with the tie rule's order key (``LATEST_ORDER``)."""

    event_ms: int
    computed_ms: int
    source_id: str
    values: Mapping[str, Any]

    @property
    def order(self) -> tuple[int, int, str]:
        return (self.event_ms, self.computed_ms, self.source_id)


def coalesce_latest(rows: Iterable[Sequence[Any]], write_time_ms: int) -> dict[str, Latest]:
    """Keep, per entity, its latest row by the tie rule (``iceberg_schemas.features.LATEST_ORDER``): the
    greatest ``(event_time, computed_at, source_id)``.

    A row is ``(entity, event_time_ms, values)`` or ``(entity, event_time_ms, values, computed_at_ms,
    source_id)``; without the last two it was computed at ``write_time_ms`` and has source id ``""``.
    Stores apply the same order against what they hold, so writing only these is the same as writing all.
    """
    latest: dict[str, Latest] = {}
    for row in rows:
        entity, event_ms, values = row[0], row[1], row[2]
        computed = int(row[3]) if len(row) > 3 and row[3] is not None else int(write_time_ms)
        source = str(row[4]) if len(row) > 4 and row[4] is not None else ""
        cand = Latest(int(event_ms), computed, source, values)
        cur = latest.get(str(entity))
        if cur is None or cand.order >= cur.order:
            latest[str(entity)] = cand
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
        """Upsert ``(entity, event_time_ms, values[, computed_at_ms, source_id])`` rows, each entity keeping
        its latest row by the tie rule (:func:`coalesce_latest`); returns how many entities were updated."""

    def get(self, view: FeatureView, entities: Sequence[Any], now_ms: int | None = None) -> list[EntityRow]:
        """The latest values of ``entities``; expired (by event time and the view's TTL) read as expired."""


def wall_ms() -> int:
    return int(time.time() * 1000)
