"""In-memory twin of the online store, for unit tests: the same rules, no Redis."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from iceberg_schemas.features import FeatureView
from liveml.online.base import EntityRow, coalesce_latest, to_row, wall_ms
from liveml.online.layout import entity_key


class InMemoryOnlineStore:
    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {}

    def write(self, view: FeatureView, rows: Sequence[tuple[Any, int, Mapping[str, Any]]],
              write_time_ms: int | None = None) -> int:
        written = 0
        wt = write_time_ms or wall_ms()
        for entity, (event_ms, values) in coalesce_latest(rows).items():
            key = entity_key(view.name, entity)
            cur = self.data.get(key)
            if cur is not None and int(cur["__event_time"]) > event_ms:
                continue
            self.data[key] = {**{k: str(v) for k, v in values.items()}, "__event_time": event_ms,
                              "__write_time": wt}
            written += 1
        return written

    def get(self, view: FeatureView, entities: Sequence[Any], now_ms: int | None = None) -> list[EntityRow]:
        now = now_ms or wall_ms()
        return [to_row(view, str(e), self.data.get(entity_key(view.name, e)), now) for e in entities]
