"""The same online-store contract on the real Redis of the test stack."""

import pytest
import redis

from liveml.online.redis import RedisOnlineStore
from tests.online_contract import CHECKS

pytestmark = pytest.mark.integration


@pytest.fixture
def store(cfg):
    url = cfg.redis.url.rsplit("/", 1)[0] + "/9"
    redis.Redis.from_url(url).flushdb()
    return RedisOnlineStore(url)


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_contract(store, check):
    check(store)


def test_ttl_is_also_set_on_the_key(store):
    from iceberg_schemas.features import view
    from liveml.online.layout import entity_key

    v = view("pickup_area_15m")
    store.write(v, [(4, 1_000, {"pickups_count_15m": 1, "company_distinct_15m": 1})])
    ttl = store.client.pttl(entity_key(v.name, 4))
    assert 0 < ttl <= 2 * v.ttl_s * 1000


def test_the_async_reader_answers_as_the_store_does(store):
    """liveml/online/aio.py (the enrichment job's reader): one pipeline for several views and entities,
    each read as of its own time, equal to the synchronous store's answers."""
    import asyncio

    from iceberg_schemas.features import view
    from liveml.online.aio import AsyncRedisOnlineStore

    area, company = view("pickup_area_1h"), view("company_tips_24h")
    area_values = {n: float(i + 1) for i, n in enumerate(area.feature_names())}
    company_values = {n: float(i + 2) for i, n in enumerate(company.feature_names())}
    store.write(area, [(8, 1_000_000, area_values), (32, 5_000_000, area_values)])
    store.write(company, [("Flash Cab", 2_000_000, company_values)])
    # as of: just after, long after (expired), before it existed (missing), an unknown entity, no entity
    asks = [(area, 8, 1_500_000), (area, 8, 1_000_000 + area.ttl_s * 1000 + 1), (area, 32, 1_000_000),
            (company, "Flash Cab", 2_000_500), (company, "Nobody", 2_000_500), (area, None, 1_000_000)]

    async def read():
        reader = AsyncRedisOnlineStore(store.url)
        try:
            return await reader.get_many([(v, e) for v, e, _ in asks], [t for _, _, t in asks])
        finally:
            await reader.close()

    got = asyncio.run(read())
    assert [r.status for r in got] == ["ok", "expired", "missing", "ok", "missing", "missing"]
    for (v, e, t), row in zip(asks[:5], got):
        want = store.get(v, [e], now_ms=t)[0]
        assert row.as_dict() == want.as_dict(), (v.name, e, t)
    assert got[0].values == area_values and got[0].age_s == 500.0 and got[3].values == company_values
