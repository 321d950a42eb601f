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
