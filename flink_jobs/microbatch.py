"""Coalesce concurrent asyncio calls into batches: many in-flight events, one round trip.

The async operator has up to ``capacity`` events in flight on one event loop. Sent one by one, each costs
the model server a request (about 0.65 ms of Python per request in ours, the same order in any gRPC
server) and the online store a round trip. :class:`MicroBatcher` collects the items submitted while a batch
is open, up to ``max_size`` or ``max_wait_s`` after the first, and makes one call for all of them; each
caller gets its own result or the batch's exception. The model is row-wise, so a row's score does not
depend on its batch.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    def __init__(self, call: Callable[[list[T]], Awaitable[Sequence[R]]], max_size: int = 64,
                 max_wait_s: float = 0.002):
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.call = call
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self._pending: list[tuple[T, asyncio.Future]] = []
        self._timer: asyncio.TimerHandle | None = None
        self.batches = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._pending.append((item, fut))
        if len(self._pending) >= self.max_size:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.max_wait_s, self._flush)
        return await fut

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list[tuple[T, asyncio.Future]]) -> None:
        self.batches += 1
        self.items += len(batch)
        try:
            results = await self.call([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} got {len(results)} results")
        except BaseException as exc:  # noqa: BLE001 (every caller gets the batch's failure)
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for (_, fut), result in zip(batch, results):
            if not fut.done():  # a caller that gave up (cancelled) is skipped
                fut.set_result(result)
