"""The Redis online store: pipelined, idempotent by event time, TTL on write and enforced on read."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import redis

from iceberg_schemas.features import FeatureView
from liveml.errors import ServiceError
from liveml.online.base import EntityRow, coalesce_latest, to_row, wall_ms
from liveml.online.layout import COMPUTED_AT, EVENT_TIME, SOURCE_ID, WRITE_TIME, entity_key

# KEYS[1] entity hash; ARGV: event_time_ms, write_time_ms, ttl_ms, computed_at_ms, source_id, then field/value
# pairs. The tie rule (LATEST_ORDER): a row whose (event time, computed at, source id) is smaller than the
# stored one's never overwrites it, so replays and restarts converge, and on the same row as the offline store.
UPSERT_IF_NEWER = f"""
local cur = redis.call('HMGET', KEYS[1], '{EVENT_TIME}', '{COMPUTED_AT}', '{SOURCE_ID}')
if cur[1] then
  local ce, ne = tonumber(cur[1]), tonumber(ARGV[1])
  if ce > ne then return 0 end
  if ce == ne then
    local cc, nc = tonumber(cur[2] or '0'), tonumber(ARGV[4])
    if cc > nc then return 0 end
    if cc == nc and (cur[3] or '') > ARGV[5] then return 0 end
  end
end
redis.call('HSET', KEYS[1], '{EVENT_TIME}', ARGV[1], '{WRITE_TIME}', ARGV[2], '{COMPUTED_AT}', ARGV[4],
           '{SOURCE_ID}', ARGV[5], unpack(ARGV, 6))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


def unreachable(url: str) -> ServiceError:
    return ServiceError(f"Redis is not reachable at {url}: run `liveml up redis`.")


class RedisOnlineStore:
    def __init__(self, url: str, client: redis.Redis | None = None):
        self.url = url
        self.client = client or redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        self._upsert = self.client.register_script(UPSERT_IF_NEWER)

    def ping(self) -> None:
        try:
            self.client.ping()
        except redis.RedisError:
            raise unreachable(self.url) from None

    def write(self, view: FeatureView, rows: Sequence[tuple[Any, int, Mapping[str, Any]]],
              write_time_ms: int | None = None) -> int:
        wt = write_time_ms or wall_ms()
        latest = coalesce_latest(rows, wt)
        if not latest:
            return 0
        # keep the key a while past the TTL, so a read can still say "expired" rather than "missing"
        ttl_ms = view.ttl_s * 1000 * 2
        pipe = self.client.pipeline(transaction=False)
        for entity, row in latest.items():
            args: list[Any] = [row.event_ms, wt, ttl_ms, row.computed_ms, row.source_id]
            for name, value in row.values.items():
                args += [name, "" if value is None else repr(float(value))]
            self._upsert(keys=[entity_key(view.name, entity)], args=args, client=pipe)
        return int(sum(pipe.execute()))

    def get(self, view: FeatureView, entities: Sequence[Any], now_ms: int | None = None) -> list[EntityRow]:
        now = now_ms or wall_ms()
        pipe = self.client.pipeline(transaction=False)
        for e in entities:
            pipe.hgetall(entity_key(view.name, e))
        try:
            results = pipe.execute()
        except redis.ConnectionError:
            raise unreachable(self.url) from None
        return [to_row(view, str(e), {k.decode(): v.decode() for k, v in raw.items()} if raw else None, now)
                for e, raw in zip(entities, results)]
