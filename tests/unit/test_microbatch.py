"""MicroBatcher: concurrent submits share one call; each caller gets its own result or the batch's error."""

from __future__ import annotations

import asyncio

import pytest

from flink_jobs.enrich_operator import StatusIs
from flink_jobs.microbatch import MicroBatcher

pytestmark = pytest.mark.unit


def test_concurrent_items_share_calls_and_get_their_own_results():
    calls: list[list[int]] = []

    async def square(items: list[int]) -> list[int]:
        calls.append(list(items))
        await asyncio.sleep(0)
        return [i * i for i in items]

    async def run():
        b = MicroBatcher(square, max_size=8, max_wait_s=0.01)
        return await asyncio.gather(*(b.submit(i) for i in range(20))), b

    results, b = asyncio.run(run())
    assert results == [i * i for i in range(20)]
    assert [len(c) for c in calls] == [8, 8, 4]  # full batches at once, the rest after the wait
    assert sorted(i for c in calls for i in c) == list(range(20)) and b.batches == 3 and b.items == 20


def test_a_failed_call_fails_each_caller_of_that_batch_only():
    async def call(items: list[int]) -> list[int]:
        if 13 in items:
            raise ConnectionError("server gone")
        return items

    async def run():
        b = MicroBatcher(call, max_size=4, max_wait_s=0.001)
        first = await asyncio.gather(*(b.submit(i) for i in range(12, 16)), return_exceptions=True)
        second = await asyncio.gather(*(b.submit(i) for i in range(4)), return_exceptions=True)
        return first, second

    first, second = asyncio.run(run())
    assert all(isinstance(r, ConnectionError) for r in first)
    assert second == [0, 1, 2, 3]


def test_a_call_returning_the_wrong_count_is_an_error():
    async def short(items):
        return items[:-1]

    async def run():
        b = MicroBatcher(short, max_size=2, max_wait_s=0.001)
        return await asyncio.gather(b.submit(1), b.submit(2), return_exceptions=True)

    assert all(isinstance(r, RuntimeError) for r in asyncio.run(run()))
    with pytest.raises(ValueError):
        MicroBatcher(short, max_size=0)


def test_the_retry_predicate_retries_a_batch_with_any_transient_row():
    pred = StatusIs(1)
    assert pred([("a", "ok"), ("b", "unavailable")]) and pred([("a", "ok"), ("b", "timeout")])
    assert not pred([("a", "ok"), ("b", "invalid")])  # the model cannot take these inputs: no retry helps
    assert not pred([])
    assert not StatusIs(1, ("unavailable",))([("a", "timeout")])
