"""TF Serving's gRPC API (PredictionService, ModelService) on a :class:`~serving.models.ModelManager`.

The servicers subclass the stubs generated in ``tensorflow-serving-api``, so the wire format is TF
Serving's by construction and any TF Serving client works unchanged. Every RPC runs through
:meth:`_Handler.handle`: a :class:`~serving.errors.ServingError` becomes its status code (the row's in
:data:`serving.errors.ERRORS`) and TF Serving's message, cut at 1,024 characters as grpc_status_util.cc
cuts it; anything else is a bug, logged here and answered INTERNAL with a fixed message, so no request can
take the server down or learn anything of its code. A request without a ``model_spec`` is INVALID_ARGUMENT
"Missing ModelSpec" in every RPC. MultiInference and SessionRun are left UNIMPLEMENTED (the stub default),
as for a TF2 SavedModel they are not needed.

The server's max receive message size is an option (64 MiB by default here; TF Serving's own default is
2 GiB): a bigger request is refused by gRPC itself with RESOURCE_EXHAUSTED before it is read.
``channel_arguments`` (``--grpc_channel_arguments``) override it and any other gRPC server option.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Sequence, TypeVar

import grpc
from prometheus_client import Counter, Histogram
from tensorflow_serving.apis import (get_model_status_pb2, model_management_pb2, model_pb2,
                                     model_service_pb2_grpc, prediction_service_pb2_grpc)
from tensorflow_serving.config import model_server_config_pb2

from serving import inference
from serving.batching import Batcher
from serving.batching_params import BatchingParameters
from serving.errors import INTERNAL_MESSAGE, ServingError, fail, grpc_details
from serving.models import ModelManager

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_MAX_RECEIVE_BYTES = 64 * 1024 * 1024

# TF Serving's metric names, made Prometheus-style (its ":tensorflow:serving:request_count" etc.).
REQUEST_COUNT = Counter("tensorflow_serving_request_count", "Requests, by model and outcome",
                        ["model_name", "API", "status"])
REQUEST_LATENCY = Histogram("tensorflow_serving_request_latency", "Request latency in seconds",
                            ["model_name", "API", "entrypoint"])


class _Handler:
    """Runs one RPC body, turning its errors into gRPC statuses and recording TF Serving's metrics."""

    def __init__(self, manager: ModelManager, delay_s: float = 0.0, batcher: Batcher | None = None):
        self.manager = manager
        self.delay_s = delay_s
        self.batcher = batcher  # server-side batching of Predict; None: off, as TF Serving's default

    async def handle(self, api: str, spec: model_pb2.ModelSpec, context: grpc.aio.ServicerContext,
                     body: Callable[[], Awaitable[T]]) -> T:
        start = time.perf_counter()
        model = spec.name if self.manager.serves(spec.name) else ""  # clients cannot grow label sets
        try:
            result = await body()
        except ServingError as exc:
            code, message = exc.code, exc.message
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug, not the client's fault: log it, keep serving, tell nothing of the server
            log.exception("%s on model %r failed", api, spec.name)
            code, message = grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
        else:
            REQUEST_COUNT.labels(model, api, "OK").inc()
            REQUEST_LATENCY.labels(model, api, "GRPC").observe(time.perf_counter() - start)
            return result
        REQUEST_COUNT.labels(model, api, code.name).inc()
        await context.abort(code, grpc_details(message))


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer, _Handler):
    async def Predict(self, request, context):
        return await self.handle("predict", request.model_spec, context,
                                 lambda: inference.predict(self.manager, request, self.delay_s,
                                                           batcher=self.batcher))

    async def Classify(self, request, context):
        return await self.handle("classify", request.model_spec, context,
                                 lambda: inference.classify(self.manager, request, self.delay_s))

    async def Regress(self, request, context):
        return await self.handle("regress", request.model_spec, context,
                                 lambda: inference.regress(self.manager, request, self.delay_s))

    async def GetModelMetadata(self, request, context):
        return await self.handle("get_model_metadata", request.model_spec, context,
                                 lambda: inference.get_model_metadata(self.manager, request))


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer, _Handler):
    async def GetModelStatus(self, request, context):
        async def body():
            if not request.HasField("model_spec"):  # get_model_status_impl.cc
                raise fail("missing_model_spec", "Missing ModelSpec")
            return get_model_status_pb2.GetModelStatusResponse(
                model_version_status=self.manager.model_status(request.model_spec))
        return await self.handle("get_model_status", request.model_spec, context, body)

    async def HandleReloadConfigRequest(self, request, context):
        async def body():
            await self.manager.reload_config(request.config)
            return model_management_pb2.ReloadConfigResponse()  # status OK (code 0) by default
        return await self.handle("reload_config", model_pb2.ModelSpec(), context, body)


def build_server(manager: ModelManager, port: int | None, *, host: str = "0.0.0.0",
                 max_receive_message_bytes: int = DEFAULT_MAX_RECEIVE_BYTES,
                 delay_s: float = 0.0, batching: BatchingParameters | Batcher | None = None,
                 channel_arguments: Sequence[tuple[str, int | str]] = (), socket_path: str = "",
                 credentials: grpc.ServerCredentials | None = None) -> tuple[grpc.aio.Server, int]:
    """A grpc.aio server (not started) serving ``manager``, and the TCP port it bound (``port=0``: any free;
    ``port=None``: no TCP port, e.g. only ``socket_path``; then 0 is returned).

    ``batching`` turns on server-side batching of Predict (TF Serving's ``--enable_batching``): a
    ``BatchingParameters`` proto (a new :class:`~serving.batching.Batcher` is made; it lives as long as
    the process), or a :class:`~serving.batching.Batcher` to share with a REST layer and close yourself.
    The batcher in use (or None) is the returned server's ``batcher`` attribute. ``channel_arguments``
    (``--grpc_channel_arguments``) are gRPC server options, applied last; ``socket_path``
    (``--grpc_socket_path``) adds a UNIX socket; ``credentials`` (``--ssl_config_file`` or
    ``--use_alts_credentials``) secure both.
    """
    batcher = Batcher(batching) if batching is not None and not isinstance(batching, Batcher) else batching
    options = {"grpc.max_receive_message_length": max_receive_message_bytes, "grpc.max_send_message_length": -1}
    options.update(dict(channel_arguments))
    server = grpc.aio.server(options=list(options.items()))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(manager, delay_s, batcher), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(manager, delay_s), server)
    server.batcher = batcher  # None without batching; serving.server hands it to the REST layer

    def listen(address: str) -> int:
        bound = server.add_secure_port(address, credentials) if credentials is not None \
            else server.add_insecure_port(address)
        if not bound:
            raise OSError(f"cannot listen on {address}")
        return bound

    bound = listen(f"{host}:{port}") if port is not None else 0
    if socket_path:
        listen(f"unix:{socket_path}")
    return server, bound


async def serve(config: model_server_config_pb2.ModelServerConfig, port: int = 8500, *,
                host: str = "0.0.0.0", poll_interval_s: float = 1.0,
                max_receive_message_bytes: int = DEFAULT_MAX_RECEIVE_BYTES, delay_s: float = 0.0,
                started: Callable[[int], None] | None = None,
                batching: BatchingParameters | None = None) -> None:
    """Load ``config``'s models, then serve gRPC on ``port`` and poll the base paths until cancelled.

    Like ``tensorflow_model_server``, the port opens only once the initial models are loaded (their
    labels checked); ``started(port)`` is called then. ``batching`` (TF Serving's ``BatchingParameters``,
    e.g. from :func:`serving.batching_params.read_batching_parameters`) turns on batching of Predict.
    """
    batcher = Batcher(batching) if batching is not None else None  # a bad one fails before any load
    manager = ModelManager()
    await manager.reload_config(config)
    server, bound = build_server(manager, port, host=host, max_receive_message_bytes=max_receive_message_bytes,
                                 delay_s=delay_s, batching=batcher)
    await server.start()
    log.info("serving %s on %s:%d", sorted(manager.configs), host, bound)
    if started:
        started(bound)
    polling = asyncio.create_task(manager.poll_forever(poll_interval_s))
    try:
        await server.wait_for_termination()
    finally:
        polling.cancel()
        await server.stop(grace=5)
        if batcher is not None:
            await batcher.close()
        await manager.close()
