"""The online store: the latest feature values per entity, written by the stream, read by serving.

One small interface (:class:`OnlineStore`) with two implementations: Redis (``redis.py``), and an
in-memory twin (``memory.py``) for unit tests. Both obey the same rules, checked by one contract suite:

* a write older (by event time) than what the store holds never overwrites it, so replays converge;
* each entity records its event time and write time;
* TTL is enforced at read time: an expired value comes back as missing, never as stale data.
"""

from liveml.online.base import EntityRow, OnlineStore, coalesce_latest
from liveml.online.layout import entity_key

__all__ = ["EntityRow", "OnlineStore", "coalesce_latest", "entity_key", "open_online_store"]


def open_online_store(url: str) -> OnlineStore:
    """The online store at ``url`` (``redis://``); unit tests use ``memory.InMemoryOnlineStore`` directly."""
    from liveml.online.redis import RedisOnlineStore

    return RedisOnlineStore(url)
