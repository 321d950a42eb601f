"""In-memory twin of the online store, for unit tests: the same rules, no Redis."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from iceberg_schemas.features import FeatureView
from liveml.online.base import EntityRow, coalesce_latest, to_row, wall_ms
from liveml.online.layout import COMPUTED_AT, EVENT_TIME, SOURCE_ID, WRITE_TIME, entity_key


class InMemoryOnlineStore:
    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {}

    def write(self, view: FeatureView, rows: Sequence[tuple[Any, int, Mapping[str, Any]]],
              write_time_ms: int | None = None) -> int:
        written = 0
        wt = write_time_ms or wall_ms()
        for entity, row in coalesce_latest(rows, wt).items():
            key = entity_key(view.name, entity)
            cur = self.data.get(key)
            if cur is not None and (int(cur[EVENT_TIME]), int(cur[COMPUTED_AT]), cur[SOURCE_ID]) > row.order:
                continue
            self.data[key] = {**{k: str(v) for k, v in row.values.items()}, EVENT_TIME: row.event_ms,
                              WRITE_TIME: wt, COMPUTED_AT: row.computed_ms, SOURCE_ID: row.source_id}
            written += 1
        return written

    def get(self, view: FeatureView, entities: Sequence[Any], now_ms: int | None = None) -> list[EntityRow]:
        now = now_ms or wall_ms()
        return [to_row(view, str(e), self.data.get(entity_key(view.name, e)), now) for e in entities]
