"""Server-side batching of Predict requests, as TF Serving's ``--enable_batching`` (off by default).

Configuration is TF Serving's ``BatchingParameters`` text proto (``--batching_parameters_file``), e.g.::

    max_batch_size { value: 32 }
    batch_timeout_micros { value: 2000 }
    max_enqueued_batches { value: 100 }
    num_batch_threads { value: 2 }
    allowed_batch_sizes: 8
    allowed_batch_sizes: 32

:mod:`serving.batching_params` parses and checks it (TF Serving's defaults for omitted fields; a bad
file fails start-up naming the file and the field).

How a :class:`Batcher` works (TF Serving's shared batch scheduler and batching session):

* Requests queue per (model version, signature, output filter, input dtypes and non-batch dims); a
  request's size is the 0th dim of its inputs. Requests whose non-batch dims differ go to separate queues
  (with ``pad_variable_length_inputs`` they share one and are padded to the largest, with each tensor's
  first element, as TF Serving pads).
* Each queue is a list of batches; new requests join the last (open) batch while it has room, otherwise
  it is closed and a new one opened. When the queue already holds ``max_enqueued_batches`` batches the
  request fails at once with UNAVAILABLE ("batch queue is full"), as TF Serving does. A batch being
  processed no longer counts.
* A batch is processed when it is full (``max_batch_size`` rows), closed, or ``batch_timeout_micros``
  has passed since its first request, and one of the ``num_batch_threads`` batch threads is free (oldest
  batch first, across all queues).
* Processing concatenates the inputs along dim 0, pads up to the next ``allowed_batch_sizes`` entry
  (repeating the first row), runs the signature ONCE, and gives each request its own rows of every
  output. An error fails every request in the batch with the same status; so does an output whose 0th
  dim is not the batch size (FAILED_PRECONDITION, as batching_session.cc).
* A request larger than ``max_batch_size`` is rejected with INVALID_ARGUMENT naming its size (TF
  Serving's behaviour without ``enable_large_batch_splitting``; splitting is not supported and turning it
  on fails at start-up).
* A request that cannot be batched (a rank-0 input, inputs with different 0th dims, or 0 rows) runs on
  its own, unbatched: the model then gives the same answer (or error) as without batching.
* Every request holds its version checked out from the manager from arrival until its batch has run,
  so a draining version is never unloaded while requests for it are queued or running; a caller that
  gives up leaves the batch unaffected.

Only Predict is batched; Classify and Regress stay unbatched. Batches run in the batcher's own pool of
``num_batch_threads`` threads (TF Serving's batch threads), not in the manager's inference threads.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, TypeVar

import grpc
import numpy as np
from prometheus_client import Histogram
from tensorflow_serving.apis import predict_pb2

from serving.batching_params import BatchingConfig
from serving.errors import INTERNAL_MESSAGE, ServingError, fail
from serving.inference import (check_output_filter, predict_response, prepare_arrays, prepare_predict,
                               require_model_spec)
from serving.model_config import model_spec
from serving.servable import DEFAULT_SIGNATURE, Servable

if TYPE_CHECKING:
    from serving.models import ModelManager, ModelVersion

log = logging.getLogger(__name__)


# -- metrics (defined once: prometheus_client refuses a second registration of a name) -------------------

_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, float("inf"))
PROCESSED_BATCH_SIZE = Histogram(
    "tensorflow_serving_batching_session_processed_batch_size",
    "Batch sizes run by the model, padding included", ["model_name"], buckets=_SIZE_BUCKETS)
INPUT_BATCH_SIZE = Histogram(
    "tensorflow_serving_batching_session_input_batch_size",
    "Batch sizes before padding (the rows the requests sent)", ["model_name"], buckets=_SIZE_BUCKETS)
PADDING_SIZE = Histogram(
    "tensorflow_serving_batching_session_padding_size",
    "Rows of padding added to reach an allowed batch size", ["model_name"], buckets=(0,) + _SIZE_BUCKETS)
QUEUING_LATENCY = Histogram(
    "tensorflow_serving_batching_session_queuing_latency",
    "Seconds a request waited in the batch queue before its batch started", ["model_name"],
    buckets=(0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, float("inf")))


# -- merging and splitting (pure numpy, run in the batch threads) -------------------------------------------

def _pad_to(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``array`` padded at the end of each non-batch dim to ``shape``, with its first element (TF Serving)."""
    if array.shape[1:] == shape:
        return array
    widths = [(0, 0)] + [(0, want - have) for have, want in zip(array.shape[1:], shape)]
    anchor = array.flat[0] if array.size else np.zeros((), array.dtype)[()]
    return np.pad(array, widths, mode="constant", constant_values=anchor) if array.dtype != object else \
        _pad_object(array, widths, anchor)


def _pad_object(array: np.ndarray, widths, anchor) -> np.ndarray:
    out = np.empty([size + after for size, (_, after) in zip(array.shape, widths)], dtype=object)
    out[...] = anchor
    out[tuple(slice(0, size) for size in array.shape)] = array
    return out


def padded_batch_size(rows: int, allowed_batch_sizes: Sequence[int]) -> int:
    """The smallest allowed batch size holding ``rows`` (``rows`` itself if none are configured)."""
    for size in allowed_batch_sizes:
        if size >= rows:
            return size
    return rows


def merge_inputs(parts: Sequence[Mapping[str, np.ndarray]], allowed_batch_sizes: Sequence[int] = (),
                 pad_variable_length: bool = False) -> tuple[dict[str, np.ndarray], int]:
    """The requests' inputs concatenated along dim 0 and padded (first row repeated); the padded size."""
    rows = sum(next(iter(p.values())).shape[0] for p in parts)
    size = padded_batch_size(rows, allowed_batch_sizes)
    merged = {}
    for name in parts[0]:
        arrays = [p[name] for p in parts]
        if pad_variable_length:
            shape = tuple(np.max([a.shape[1:] for a in arrays], axis=0)) if arrays[0].ndim > 1 else ()
            arrays = [_pad_to(a, shape) for a in arrays]
        if size > rows:
            arrays.append(np.repeat(arrays[0][:1], size - rows, axis=0))
        merged[name] = np.concatenate(arrays, axis=0)
    return merged, size


def split_outputs(outputs: Mapping[str, np.ndarray], sizes: Sequence[int],
                  batch_size: int) -> list[dict[str, np.ndarray]]:
    """Each request's rows of every output (padding rows dropped)."""
    for array in outputs.values():
        if array.ndim == 0:
            raise fail("batch_output_unsplittable", "Batched output tensor has 0 dimensions")
        if array.shape[0] != batch_size:
            raise fail("batch_output_unsplittable", "Batched output tensor's 0th dimension does not equal the sum of "
                                                    "the 0th dimension sizes of the input tensors")
    results, start = [], 0
    for size in sizes:
        results.append({name: array[start:start + size] for name, array in outputs.items()})
        start += size
    return results


# -- the scheduler ------------------------------------------------------------------------------------------

@dataclass(eq=False)
class _Task:
    servable: Servable
    signature: str
    inputs: dict[str, np.ndarray]
    output_filter: tuple[str, ...]
    size: int
    future: asyncio.Future
    release: Callable[[], None]
    enqueued: float = field(default_factory=time.monotonic)


@dataclass(eq=False)
class _Batch:
    model: str
    created: float  # loop time of the first task
    tasks: list[_Task] = field(default_factory=list)
    size: int = 0
    closed: bool = False


def _string_to_object(array: np.ndarray) -> np.ndarray:
    return array.astype(object) if array.dtype.kind in "SU" else array


T = TypeVar("T")
INLINE_BYTES = 64 * 1024


async def _off_loop_if_big(size: int, work: Callable[[], T]) -> T:
    """Small work inline on the event loop, big work in a thread.

    Under the GIL a thread hop buys no parallelism for Python work, and for a one-row request it cost more
    than the work itself; only a big request would stall the loop long enough to matter."""
    if size <= INLINE_BYTES:
        return work()
    return await asyncio.to_thread(work)


class Batcher:
    """Batches Predict requests (see the module docstring); one per server, shared by gRPC and REST.

    ``Batcher(params)`` takes a ``BatchingParameters`` proto, a :class:`BatchingConfig`, or None (TF
    Serving's defaults). Use it on the manager's event loop; ``close()`` ends its threads.
    ``run_model(servable, signature, inputs, output_filter)`` runs one merged batch in a batch thread
    (tests may replace it).
    """

    def __init__(self, params: Any = None):
        config = params if isinstance(params, BatchingConfig) else \
            BatchingConfig() if params is None else BatchingConfig.from_proto(params)
        self.config = config
        self._threads = ThreadPoolExecutor(config.num_batch_threads, thread_name_prefix=config.thread_pool_name)
        self._queues: dict[tuple, collections.deque[_Batch]] = {}
        self._running = 0
        self._timer: asyncio.TimerHandle | None = None
        self._batch_tasks: set[asyncio.Task] = set()
        self.processed_batch_sizes: collections.Counter[int] = collections.Counter()  # rows before padding

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._threads.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def run_model(servable: Servable, signature: str, inputs: Mapping[str, np.ndarray],
                  output_filter: Sequence[str]) -> dict[str, np.ndarray]:
        return servable.run(signature, inputs, output_filter)

    # -- entry points ---------------------------------------------------------------------------------------

    async def predict(self, manager: "ModelManager", request: predict_pb2.PredictRequest,
                      delay_s: float = 0.0) -> predict_pb2.PredictResponse:
        """:func:`serving.inference.predict`, batched: same answers, same errors, checked in the same order."""
        require_model_spec(request)
        version = manager.checkout(request.model_spec)
        try:
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            servable = version.servable
            signature, inputs, outputs = await _off_loop_if_big(request.ByteSize(),
                                                                lambda: prepare_predict(servable, request))
        except BaseException:
            manager.release(version)
            raise
        results = await self.submit(manager, version, signature, inputs, tuple(outputs))
        return await _off_loop_if_big(sum(a.nbytes for a in results.values()),
                                      lambda: predict_response(servable, signature, results))

    async def run(self, manager: "ModelManager", model_name: str, inputs: Mapping[str, np.ndarray], *,
                  version: int | None = None, label: str | None = None, signature_name: str = DEFAULT_SIGNATURE,
                  output_filter: Sequence[str] = ()) -> tuple[dict[str, np.ndarray], int]:
        """:meth:`ModelManager.run`, batched (numpy in and out, for REST): the outputs and the version."""
        spec = model_spec(model_name, version, label, signature_name)
        checked_out = manager.checkout(spec)
        try:
            arrays = {name: _string_to_object(np.asarray(array)) for name, array in inputs.items()}
            name, arrays = prepare_arrays(checked_out.servable, signature_name, arrays)
            outputs = check_output_filter(output_filter, checked_out.servable.signature_defs[name])
        except BaseException:
            manager.release(checked_out)
            raise
        number = checked_out.servable.version
        return await self.submit(manager, checked_out, name, arrays, tuple(outputs)), number

    async def submit(self, manager: "ModelManager", version: "ModelVersion", signature: str,
                     inputs: dict[str, np.ndarray], output_filter: tuple[str, ...]) -> dict[str, np.ndarray]:
        """Run checked ``inputs`` on ``version`` (checked out by the caller; released here, once run)."""
        loop = asyncio.get_running_loop()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                manager.release(version)

        try:
            servable = version.servable
            size = self._batch_size(inputs)
            if size is None:  # not batchable: run it alone, as without batching
                future = self._threads.submit(self.run_model, servable, signature, inputs, output_filter)
            elif size > self.config.max_batch_size:
                raise fail("batch_too_large", f"Task size {size} is larger than maximum input batch size "
                                              f"{self.config.max_batch_size}")
            else:
                task = _Task(servable, signature, inputs, output_filter, size, loop.create_future(), release)
                self._enqueue(self._key(version, task), task)
        except BaseException:
            release()
            raise
        if size is None:  # released once the thread is done, even if the caller gives up first
            future.add_done_callback(lambda _: loop.call_soon_threadsafe(release))
            return await asyncio.wrap_future(future)
        return await task.future  # a cancelled caller cancels only this future; the batch runs regardless

    # -- queueing -------------------------------------------------------------------------------------------

    @staticmethod
    def _batch_size(inputs: Mapping[str, np.ndarray]) -> int | None:
        sizes = {array.shape[0] if array.ndim else None for array in inputs.values()}
        if len(sizes) != 1 or None in sizes or 0 in sizes:
            return None
        return sizes.pop()

    def _key(self, version: "ModelVersion", task: _Task) -> tuple:
        shapes = tuple(sorted(
            (name, "string" if a.dtype.kind in "SUO" else a.dtype.str,
             a.ndim if self.config.pad_variable_length_inputs else a.shape[1:])
            for name, a in task.inputs.items()))
        return version, task.signature, task.output_filter, shapes

    def _enqueue(self, key: tuple, task: _Task) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queues.setdefault(key, collections.deque())
        last = queue[-1] if queue else None
        if last is not None and not last.closed and last.size + task.size <= self.config.max_batch_size:
            batch = last
        else:
            if len(queue) >= self.config.max_enqueued_batches:
                if not queue:
                    del self._queues[key]
                raise fail("batch_queue_full", "The batch scheduling queue to which this task was submitted is full")
            if last is not None:
                last.closed = True
            batch = _Batch(model=task.servable.name, created=loop.time())
            queue.append(batch)
        batch.tasks.append(task)
        batch.size += task.size
        if batch.size >= self.config.max_batch_size:
            batch.closed = True
        self._schedule()

    def _schedule(self) -> None:
        """Start every ready batch a thread is free for, oldest first; set a timer for the next one."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        timeout = self.config.batch_timeout_s
        while self._running < self.config.num_batch_threads:
            ready = [(queue[0].created, key) for key, queue in self._queues.items()
                     if queue[0].closed or now >= queue[0].created + timeout]
            if not ready:
                break
            _, key = min(ready, key=lambda entry: entry[0])
            queue = self._queues[key]
            batch = queue.popleft()
            if not queue:
                del self._queues[key]
            self._running += 1
            task = loop.create_task(self._run_batch(batch))
            self._batch_tasks.add(task)
            task.add_done_callback(self._batch_tasks.discard)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._running < self.config.num_batch_threads and self._queues:
            deadline = min(queue[0].created for queue in self._queues.values()) + timeout
            self._timer = loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._schedule()

    async def _run_batch(self, batch: _Batch) -> None:
        tasks = []
        try:
            for task in batch.tasks:
                if task.future.cancelled():  # its caller gave up while it was queued
                    task.release()
                else:
                    tasks.append(task)
            if not tasks:
                return
            now = time.monotonic()
            for task in tasks:
                QUEUING_LATENCY.labels(batch.model).observe(now - task.enqueued)
            rows = sum(task.size for task in tasks)
            padded = padded_batch_size(rows, self.config.allowed_batch_sizes)
            INPUT_BATCH_SIZE.labels(batch.model).observe(rows)
            PROCESSED_BATCH_SIZE.labels(batch.model).observe(padded)
            PADDING_SIZE.labels(batch.model).observe(padded - rows)
            self.processed_batch_sizes[rows] += 1
            try:
                results = await asyncio.get_running_loop().run_in_executor(self._threads, self._process, tasks)
            except ServingError as exc:
                code, message, row = exc.code, exc.message, exc.row
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug, not the client's fault: every request gets it, as INTERNAL
                log.exception("batch of %d requests on model %r failed", len(tasks), batch.model)
                code, message, row = grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE, "internal"
            else:
                for task, result in zip(tasks, results):
                    if not task.future.done():
                        task.future.set_result(result)
                return
            for task in tasks:
                if not task.future.done():
                    task.future.set_exception(ServingError(code, message, row))
        finally:
            for task in tasks:
                task.release()
            self._running -= 1
            self._schedule()

    def _process(self, tasks: list[_Task]) -> list[dict[str, np.ndarray]]:
        """In a batch thread: merge, pad, run once, split."""
        first = tasks[0]
        sizes = [task.size for task in tasks]
        merged, batch_size = merge_inputs([task.inputs for task in tasks], self.config.allowed_batch_sizes,
                                          self.config.pad_variable_length_inputs)
        outputs = self.run_model(first.servable, first.signature, merged, first.output_filter)
        return split_outputs(outputs, sizes, batch_size)
