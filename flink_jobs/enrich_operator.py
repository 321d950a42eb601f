"""The enrichment job's async operator: :class:`EnrichFunction`, a PyFlink ``AsyncFunction``.

Per batch of completed trips (the job groups the end events of a few milliseconds), for each trip: read
the context features from the online store (``redis.asyncio``), assemble the model's inputs
(:mod:`flink_jobs.enrich`), call ``Predict`` on the model server through
:class:`serving.client.PredictionClient` (``grpc.aio``), and emit one prediction row, whatever happened.
Timeouts and retries apply to the batch: a batch with an ``unavailable`` row, or a call past its own
deadline, is retried whole, and a batch past the operator's budget gets a ``timeout`` row per trip.

How PyFlink 2.2 runs it, and what that dictates (each point was measured on this version):

* ``open()`` runs before the worker's event loop starts, so the gRPC channel and the Redis client are made
  on the first ``async_invoke``, on the loop: one channel and one connection pool per worker. ``close()``
  runs after the loop has stopped, so it only drops them.
* Concurrent events share round trips: the online-store reads and the ``Predict`` calls in flight go through
  :class:`flink_jobs.microbatch.MicroBatcher` (one pipeline, one multi-row request per label).
* A failed call never fails the job. ``async_invoke`` turns gRPC errors into a row with a status
  (``unavailable``, ``invalid``, ``timeout`` for a missed deadline, ``no_model`` when the server has no such
  model, version or label, with a reason naming it and the command that serves one); the retry strategy
  re-invokes it while the status is ``unavailable`` or ``timeout`` (:data:`RETRYABLE`: a call's deadline is
  per attempt, e.g. the first call of a cold channel), with exponential backoff, within the operator's
  timeout; and :meth:`timeout` emits the row with ``score = None`` and the reason once that budget is spent.
  ``no_model`` is final at once: a model appears by a push or a promote, not within a batch's budget.
* Counters updated on the event loop's thread are lost (Beam counts metric updates only on the bundle's
  thread); gauges are read on the bundle's thread. So the operator keeps plain totals and a gauge callback
  moves them into Flink counters and distributions (:class:`_Metrics`).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import OrderedDict, defaultdict, deque
from typing import Any

from pyflink.common import Row
from pyflink.datastream.functions import AsyncFunction, RuntimeContext

from flink_jobs import enrich as E
from flink_jobs.microbatch import MicroBatcher

# statuses worth another attempt within the operator's budget: transport trouble, and a call that missed its
# own (per-attempt) deadline. Never "no_model" or "invalid": another attempt gets the same answer.
RETRYABLE = ("unavailable", "timeout")


class _Metrics:
    """Totals kept on any thread; flushed into Flink's metric group from a gauge (the bundle's thread).

    Under ``liveml.enrich``: ``predictions`` (and per ``version.<v>.status.<s>``, ``<s>`` one of
    :data:`flink_jobs.enrich.STATUSES`: a missing model counts under ``version.none.status.no_model``), ``retries``,
    ``timeouts``, gauges ``in_flight``, ``latency_p50_ms`` / ``latency_p99_ms`` (last 2,000 rows), and the
    distribution ``latency_ms``. Prometheus sees them as ``flink_taskmanager_job_task_operator_liveml_...``.
    """

    def __init__(self, ctx: RuntimeContext, field_names: list[str]):
        self.index = {n: i for i, n in enumerate(field_names)}
        self.lock = threading.Lock()
        self.group = ctx.get_metrics_group().add_group("liveml").add_group("enrich")
        self.by_key: dict[tuple[str, str], int] = defaultdict(int)  # (version, status) -> rows
        self.flushed: dict[tuple[str, str], int] = defaultdict(int)
        self.counters: dict[tuple[str, str], Any] = {}
        self.retries = self._retries_done = 0
        self.in_flight = 0
        self.latencies: deque[float] = deque(maxlen=2000)
        self._new_latencies: list[float] = []
        self.c_predictions = self.group.counter("predictions")
        self.c_retries = self.group.counter("retries")
        self.c_timeouts = self.group.counter("timeouts")
        self.d_latency = self.group.distribution("latency_ms")
        self.group.gauge("in_flight", lambda: self.in_flight)
        self.group.gauge("latency_p50_ms", lambda: self._quantile(0.5))
        self.group.gauge("latency_p99_ms", lambda: self._quantile(0.99))
        self.group.gauge("flushed_rows", self.flush)

    def record(self, row: Row) -> None:
        version = str(row[self.index["model_version"]]) if row[self.index["model_version"]] is not None \
            else "none"
        status, latency = row[self.index["status"]], row[self.index["latency_ms"]]
        with self.lock:
            self.by_key[(version, status)] += 1
            self.latencies.append(latency)
            self._new_latencies.append(latency)

    def retry(self) -> None:
        with self.lock:
            self.retries += 1

    def _quantile(self, q: float) -> int:
        with self.lock:
            values = sorted(self.latencies)
        return int(values[min(len(values) - 1, int(q * len(values)))]) if values else 0

    def flush(self) -> int:
        with self.lock:
            pending = {k: n - self.flushed[k] for k, n in self.by_key.items() if n != self.flushed[k]}
            for k, n in pending.items():
                self.flushed[k] += n
            latencies, self._new_latencies = self._new_latencies, []
            retries, self._retries_done = self.retries - self._retries_done, self.retries
        timeouts = sum(n for (_, status), n in pending.items() if status == "timeout")
        for (version, status), n in pending.items():
            if (version, status) not in self.counters:
                self.counters[(version, status)] = (self.group.add_group("version", version)
                                                    .add_group("status", status).counter("predictions"))
            self.counters[(version, status)].inc(n)
            self.c_predictions.inc(n)
        for ms in latencies:
            self.d_latency.update(int(ms))
        self.c_retries.inc(retries)
        self.c_timeouts.inc(timeouts)
        return len(latencies)


class EnrichFunction(AsyncFunction):
    """``settings``: plain values only (the function is pickled to the workers): ``grpc``, ``redis_url``,
    ``model_name`` and the :class:`liveml.config.EnrichConfig` fields."""

    def __init__(self, settings: dict[str, Any], input_names: list[str], field_names: list[str]):
        self.settings = dict(settings)
        self.input_names = list(input_names)
        self.field_names = list(field_names)
        self.status_index = self.field_names.index("status")
        self._client = self._store = None

    # ---- lifecycle ----------------------------------------------------------------------------------
    def open(self, runtime_context: RuntimeContext) -> None:
        # imported here, not on the first event: that one's budget is for the call (and the channel)
        from liveml.online.aio import AsyncRedisOnlineStore
        from serving.client import PredictionClient
        from tfx_pipeline.features import missing_serving_value

        self._classes = (PredictionClient, AsyncRedisOnlineStore)

        s = self.settings
        self.model = s["model_name"]
        self.deadline_s = s["deadline_ms"] / 1000.0
        self.missing_value = missing_serving_value
        self.metrics = _Metrics(runtime_context, self.field_names)
        self.attempts: OrderedDict[str, int] = OrderedDict()  # trip id -> calls so far (retries re-invoke)
        self.timed_out: set[str] = set()
        self._client = self._store = None

    async def _start(self) -> None:
        PredictionClient, AsyncRedisOnlineStore = self._classes  # noqa: N806 (classes)
        s = self.settings
        # no gRPC-level retries: the operator's retry strategy owns them, so they are counted and bounded
        self._client = PredictionClient(s["grpc"], timeout_s=self.deadline_s, retries=0)
        self._store = AsyncRedisOnlineStore(s["redis_url"], timeout_s=self.deadline_s)
        self._reads = MicroBatcher(self._read_batch, max_size=256, max_wait_s=0.001)
        self._predicts: dict[str, MicroBatcher] = {}

    def close(self) -> None:
        self._client = self._store = None  # the loop is gone: nothing left to await on

    # ---- batched calls ------------------------------------------------------------------------------
    async def _read_batch(self, events: list[dict]) -> list[list]:
        requests = [E.context_requests(e) for e in events]
        # TTL and ages as of the event's own time, as the training set measured them at its decision time
        # (a replay of last year's trips reads last year's features as fresh, not all as expired)
        nows = [int(e["event_time"]) for e, rs in zip(events, requests) for _ in rs]
        rows = await self._store.get_many([r for rs in requests for r in rs], nows)
        out, i = [], 0
        for rs in requests:
            out.append(rows[i:i + len(rs)])
            i += len(rs)
        return out

    def _predictor(self, label: str) -> MicroBatcher:
        if label not in self._predicts:
            async def call(inputs: list[dict]) -> list[tuple[float, int]]:
                columns = {k: [row[k] for row in inputs] for k in inputs[0]}
                result = await self._client.predict(columns, model=self.model, label=label,
                                                    signature=self.settings["signature"])
                scores = next(iter(result.outputs.values())) if len(result.outputs) == 1 \
                    else result.outputs["probabilities"]
                return [(float(x), result.version) for x in scores.reshape(-1)]

            self._predicts[label] = MicroBatcher(call, max_size=128, max_wait_s=0.002)
        return self._predicts[label]

    # ---- per event ----------------------------------------------------------------------------------
    def _attempt(self, trip_id: str) -> int:
        n = self.attempts.pop(trip_id, 0) + 1
        self.attempts[trip_id] = n
        while len(self.attempts) > 100_000:  # rows that ended in timeout() never come back: forget the oldest
            self.attempts.popitem(last=False)
        if n > 1:
            self.metrics.retry()
        return n

    def _label(self, trip_id: str) -> str:
        s = self.settings
        return s["canary_label"] if E.routes_to_canary(trip_id, s["canary_fraction"]) else s["label"]

    async def _score(self, label: str, inputs: dict) -> E.Outcome:
        import grpc

        from serving.client import ModelNotFound

        try:
            score, version = await self._predictor(label).submit(inputs)
            if not math.isfinite(score):
                return E.Outcome("invalid", None, version, reason=f"the model returned {score} for these inputs")
            return E.Outcome("ok", score, version)
        except ModelNotFound as exc:  # names the model or label, and the command that serves one
            return E.Outcome("no_model", reason=str(exc))
        except grpc.aio.AioRpcError as exc:
            return E.Outcome(E.status_of(exc.code().name), reason=f"{exc.code().name}: {exc.details()}")
        except (ValueError, KeyError) as exc:  # the model's signature does not take these inputs
            return E.Outcome("invalid", reason=str(exc))

    async def async_invoke(self, value: Row) -> list[Row]:
        """``value``: one batch of trip end events (the job groups those that arrive within a few ms, so
        Flink's per-record cost is paid per batch); one output row per event."""
        if self._client is None:
            await self._start()
        events = [dict(zip(self.input_names, r)) for r in value[0]]
        key = str(events[0]["trip_id"]) if events else ""
        attempt = self._attempt(key)
        rows = await asyncio.gather(*(self._enrich(e, attempt) for e in events))
        if any(r[self.status_index] in RETRYABLE for r in rows) and attempt <= self.settings["retries"]:
            return rows  # the retry strategy re-invokes the whole batch: nothing is final yet
        self.attempts.pop(key, None)
        if key in self.timed_out:  # timeout() already emitted this batch: its late answer is dropped
            self.timed_out.discard(key)
        else:
            for r in rows:
                self.metrics.record(r)
        return rows

    async def _enrich(self, event: dict, attempt: int) -> Row:
        from liveml.errors import ServiceError

        started = time.time()
        label = self._label(str(event["trip_id"]))
        self.metrics.in_flight += 1
        try:
            try:
                rows = await self._reads.submit(event)
            except ServiceError as exc:
                return self._row(event, None, E.Outcome("unavailable", reason=str(exc)), label, started, attempt)
            assembled = E.assemble(event, rows)
            inputs = E.model_inputs(assembled.features, self.missing_value)
            shadow_label = self.settings.get("shadow_label")
            if shadow_label:
                outcome, shadow = await asyncio.gather(self._score(label, inputs), self._score(shadow_label, inputs))
                outcome.shadow_score, outcome.shadow_version = shadow.score, shadow.model_version
            else:
                outcome = await self._score(label, inputs)
            return self._row(event, assembled, outcome, label, started, attempt)
        finally:
            self.metrics.in_flight -= 1

    def timeout(self, value: Row) -> list[Row]:
        """Called on a timer thread once the operator's budget for the batch is spent: a fallback row per
        event. Flink drops the late answer, if any (and it is not counted twice here)."""
        events = [dict(zip(self.input_names, r)) for r in value[0]]
        key = str(events[0]["trip_id"]) if events else ""
        attempt = self.attempts.pop(key, 1)
        self.timed_out.add(key)
        reason = f"no answer within the operator's {self.settings['timeout_ms']} ms"
        rows = [self._row(e, None, E.Outcome("timeout", reason=reason), self._label(str(e["trip_id"])), None,
                          attempt) for e in events]
        for r in rows:
            self.metrics.record(r)
        return rows

    def _row(self, event: dict, assembled, outcome: E.Outcome, label: str, started: float | None,
             attempt: int) -> Row:
        now = time.time()
        outcome.retries = attempt - 1
        latency = (now - started) * 1000 if started is not None else float(self.settings["timeout_ms"])
        row = E.prediction_row(event, assembled, outcome, self.model, label, latency, int(now * 1000))
        return Row(*(row[name] for name in self.field_names))


class StatusIs:
    """A picklable retry predicate: re-invoke a batch while any row's status (field ``index``) is one of
    ``statuses``."""

    def __init__(self, index: int, statuses: tuple[str, ...] = RETRYABLE):
        self.index, self.statuses = index, tuple(statuses)

    def __call__(self, rows: list) -> bool:
        return any(r[self.index] in self.statuses for r in rows)
