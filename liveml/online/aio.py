"""The Redis online store for asyncio callers (the enrichment job's async operator): reads only.

Same key layout and the same read rules as :class:`liveml.online.redis.RedisOnlineStore` (through
:func:`liveml.online.base.to_row`: TTL enforced at read time), but on ``redis.asyncio``, so a read never
blocks the event loop it shares with the other in-flight requests. :meth:`get_many` reads several
``(view, entity)`` pairs in one pipelined round trip: one per event, whatever the number of views.
"""

from __future__ import annotations

from typing import Any, Sequence

import redis
import redis.asyncio as aioredis

from iceberg_schemas.features import FeatureView
from liveml.online.base import EntityRow, to_row, wall_ms
from liveml.online.layout import entity_key
from liveml.online.redis import unreachable


class AsyncRedisOnlineStore:
    def __init__(self, url: str, timeout_s: float = 1.0):
        self.url = url
        self.client = aioredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)

    async def get_many(self, requests: Sequence[tuple[FeatureView, Any]],
                       now_ms: int | Sequence[int] | None = None) -> list[EntityRow]:
        """One row per ``(view, entity)``, in order; an entity of ``None`` reads as missing. ``now_ms``, the
        time TTL and ages are measured at, is one time for all, or one per request (default: wall time)."""
        nows = list(now_ms) if isinstance(now_ms, (list, tuple)) else [now_ms or wall_ms()] * len(requests)
        asked = [(v, e) for v, e in requests if e is not None]
        results: list = []
        if asked:
            pipe = self.client.pipeline(transaction=False)
            for view, entity in asked:
                pipe.hgetall(entity_key(view.name, entity))
            try:
                results = await pipe.execute()
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                raise unreachable(self.url) from None
        found = iter(results)
        rows = []
        for (view, entity), now in zip(requests, nows):
            raw = next(found) if entity is not None else None
            stored = {k.decode(): v.decode() for k, v in raw.items()} if raw else None
            rows.append(to_row(view, "" if entity is None else str(entity), stored, now))
        return rows

    async def close(self) -> None:
        await self.client.aclose()
