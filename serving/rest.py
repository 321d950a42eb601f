"""TF Serving's REST API (https://www.tensorflow.org/tfx/serving/api_rest) on a :class:`~serving.models.ModelManager`.

Clients written for ``tensorflow_model_server --rest_api_port`` (curl scripts, the TFX/KServe-style JSON
clients, load balancer health checks on ``GET /v1/models/<name>``) must work unchanged, so the paths, JSON
bodies, conversion rules and error answers are TF Serving's (its ``http_rest_api_handler.cc`` and
``json_tensor.cc``):

* ``GET /v1/models/<name>[/versions/<v>|/labels/<l>]`` -> GetModelStatusResponse as JSON;
* ``GET ...[/metadata]`` -> ``{"model_spec": .., "metadata": {"signature_def": <SignatureDefMap>}}``;
* ``POST ...:predict`` with ``instances`` (row format) or ``inputs`` (columnar); JSON values are converted to
  the signature's dtype (integers only for int types, numbers for floats without loss of precision, strings
  or ``{"b64": ..}`` for DT_STRING, booleans for DT_BOOL); outputs whose name ends in ``_bytes`` come back
  as ``{"b64": ..}``, floats in their shortest round-trip form;
* ``POST ...:classify`` / ``...:regress`` with ``examples`` (and an optional ``context``) -> ``results``;
* errors are ``{"error": "<message>"}`` with TF Serving's gRPC-code -> HTTP status mapping; a path outside
  ``/v1/`` is 404, a malformed ``/v1/`` path 400 ("Malformed request"), as TF Serving answers.

The server is aiohttp on the manager's own event loop (all manager state lives there); JSON parsing,
conversion and inference run in threads. Input names, dtypes and shapes are checked by
:mod:`serving.tensors` (through :meth:`Servable.run`), so REST and gRPC refuse the same inputs with the
same messages. Requests are counted in the gRPC server's TF Serving-named metrics, entrypoint ``REST``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping

import grpc
import numpy as np
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     input_pb2, model_pb2, regression_pb2)

from serving import inference
from serving.errors import ServingError, invalid_argument
from serving.grpc_server import REQUEST_COUNT, REQUEST_LATENCY
from serving.models import ModelManager
from serving.servable import DEFAULT_SIGNATURE, Servable
from serving.rest_json import (INT64_MAX, columnar_inputs, columnar_outputs, row_inputs, row_outputs, short_json,
                               to_example)
from serving.tensors import check_arrays

log = logging.getLogger(__name__)

DEFAULT_CLIENT_MAX_SIZE = 64 * 1024 * 1024
DEFAULT_METRICS_PATH = "/monitoring/prometheus/metrics"
INLINE_PARSE_BYTES = 64 * 1024  # smaller bodies are parsed on the loop; bigger ones in a thread

# TF Serving's http_server.cc ToHTTPStatusCode; anything else is 500.
HTTP_STATUS = {
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}

# TF Serving's path regexes (RE2, case-insensitive).
_MODEL = r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
_GET_PATH = re.compile(_MODEL + r"(?P<metadata>/metadata)?", re.IGNORECASE)
_POST_PATH = re.compile(_MODEL + r":(?P<verb>classify|regress|predict)", re.IGNORECASE)


def http_status(code: grpc.StatusCode) -> int:
    return HTTP_STATUS.get(code, 500)


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def json_response(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


def dumps(payload: Any) -> bytes:
    """JSON as TF Serving writes it: NaN and +-Infinity as bare literals (rapidjson's kWriteNanAndInfFlag)."""
    return json.dumps(payload, allow_nan=True).encode()


def proto_dict(message: Message) -> dict:
    """A proto as TF Serving's ToJsonString prints it: proto field names, default values included."""
    return json_format.MessageToDict(message, including_default_value_fields=True,
                                     preserving_proto_field_name=True)


# -- the request: path and body ------------------------------------------------------------------------

def model_spec(match: re.Match) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=match["name"])
    if match["version"] is not None:
        number = int(match["version"])
        if number > INT64_MAX:
            raise invalid_argument(f"Failed to convert version: {match['version']} to numeric.")
        spec.version.value = number
    elif match["label"] is not None:
        spec.version_label = match["label"]
    return spec


def parse_json_object(raw: bytes) -> dict:
    """The body as a JSON object; INVALID_ARGUMENT ("JSON Parse error: ..") for anything else."""
    if not raw.strip():
        raise invalid_argument("JSON Parse error: The document is empty")
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, too deep
        raise invalid_argument(f"JSON Parse error: {exc}") from None
    if not isinstance(document, dict):
        raise invalid_argument(f"JSON Value: {short_json(document)} Is not object")
    return document


def signature_name(body: Mapping[str, Any]) -> str:
    name = body.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid_argument(f"JSON Value: {short_json(name)} not formatted correctly. 'signature_name' key "
                               f"must be a string value.")
    return name


@dataclass(frozen=True)
class PredictBody:
    """A predict request body: ``instances`` (row format) or ``inputs`` (columnar), never both."""
    signature_name: str
    row_format: bool
    data: Any

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> "PredictBody":
        signature = signature_name(body)
        if "instances" in body and "inputs" in body:
            raise invalid_argument("Not formatted correctly expecting only one of 'inputs' or 'instances' "
                                   "keys to exist")
        if "instances" in body:
            instances = body["instances"]
            if not isinstance(instances, list):
                raise invalid_argument(f"Expecting 'instances' to be a list/array, not {short_json(instances)}")
            if not instances:
                raise invalid_argument("No values in 'instances' array")
            return cls(signature, True, instances)
        if "inputs" in body:
            return cls(signature, False, body["inputs"])
        raise invalid_argument("Missing 'inputs' or 'instances' key")


def run_json_predict(servable: Servable, request: PredictBody) -> bytes:
    """The whole predict on one version, in an inference thread: JSON in, signature run, JSON out."""
    signature = request.signature_name or DEFAULT_SIGNATURE
    specs = servable.input_specs(signature)
    if not specs:
        raise invalid_argument(f"Failed to get input map for signature: {signature}")
    to_inputs = row_inputs if request.row_format else columnar_inputs
    outputs = servable.run(signature, to_inputs(request.data, specs))
    if request.row_format:
        return dumps({"predictions": row_outputs(outputs)})
    return dumps({"outputs": columnar_outputs(outputs)})


# -- classify / regress: JSON -> tf.Example --------------------------------------------------------------

def example_input(body: Mapping[str, Any], verb: str) -> input_pb2.Input:
    """The ``examples`` (with the optional ``context``) as the Input proto Classify/Regress take."""
    examples = body.get("examples")
    if examples is None:
        raise invalid_argument(f"When method is {verb}, key 'examples' is expected and was not found")
    if not isinstance(examples, list):
        raise invalid_argument(f"Expecting 'examples' value to be an list/array, not {short_json(examples, 40)}")
    if not examples:
        raise invalid_argument("'examples' value is an empty array")
    model_input = input_pb2.Input()
    if "context" in body:
        target = model_input.example_list_with_context
        target.context.CopyFrom(to_example("context", body["context"]))
    else:
        target = model_input.example_list
    for number, example in enumerate(examples):
        target.examples.append(to_example(f"example {number}", example))
    return model_input


def _score(value: float) -> float:
    """A float32 result as its shortest round-trip decimal (TF Serving's WriteDecimal)."""
    return float(str(np.float32(value)))


def classify_json(response: classification_pb2.ClassificationResponse) -> bytes:
    return dumps({"results": [[[c.label, _score(c.score)] for c in result.classes]
                              for result in response.result.classifications]})


def regress_json(response: regression_pb2.RegressionResponse) -> bytes:
    return dumps({"results": [_score(r.value) for r in response.result.regressions]})


# -- the server -------------------------------------------------------------------------------------------

class RestApi:
    """The handlers; every request runs through :meth:`answer`, so none can take the server down."""

    def __init__(self, manager: ModelManager, *, metrics_path: str | None, delay_s: float = 0.0,
                 batcher: Any = None):
        self.manager = manager
        self.metrics_path = metrics_path
        self.delay_s = delay_s
        self.batcher = batcher

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if self.metrics_path is not None and path == self.metrics_path and request.method == "GET":
            return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})
        if not re.match(r"/v1/", path, re.IGNORECASE):
            return error_response(404, f"Not found: {request.method} {path}")
        if request.method == "GET" and (match := _GET_PATH.fullmatch(path)):
            api = "get_model_metadata" if match["metadata"] else "get_model_status"
            body = self.metadata if match["metadata"] else self.status
            return await self.answer(api, match, lambda spec: body(spec))
        if request.method == "POST" and (match := _POST_PATH.fullmatch(path)):
            verb = match["verb"].lower()
            handler = {"predict": self.predict, "classify": self.classify, "regress": self.regress}[verb]
            return await self.answer(verb, match, lambda spec: handler(spec, request))
        return error_response(400, f"Malformed request: {request.method} {path}")

    async def answer(self, api: str, match: re.Match,
                     body: Callable[[model_pb2.ModelSpec], Awaitable[bytes]]) -> web.Response:
        start = time.perf_counter()
        name = match["name"]
        model = name if self.manager.serves(name) else ""  # clients cannot grow the metric's label set
        try:
            response = json_response(await body(model_spec(match)))
        except ServingError as exc:
            code, status, message = exc.code.name, http_status(exc.code), exc.message
        except web.HTTPRequestEntityTooLarge as exc:
            code, status, message = "RESOURCE_EXHAUSTED", exc.status, exc.text or exc.reason
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug, not the client's fault: report it, keep serving
            log.exception("REST %s on model %r failed", api, name)
            code, status, message = "INTERNAL", 500, f"{type(exc).__name__}: {exc}"
        else:
            REQUEST_COUNT.labels(model, api, "OK").inc()
            REQUEST_LATENCY.labels(model, api, "REST").observe(time.perf_counter() - start)
            return response
        REQUEST_COUNT.labels(model, api, code).inc()
        return error_response(status, message)

    async def read_json(self, request: web.Request) -> dict:
        raw = await request.read()  # HTTPRequestEntityTooLarge past client_max_size
        if len(raw) <= INLINE_PARSE_BYTES:
            return parse_json_object(raw)
        return await asyncio.get_running_loop().run_in_executor(None, parse_json_object, raw)

    async def status(self, spec: model_pb2.ModelSpec) -> bytes:
        response = get_model_status_pb2.GetModelStatusResponse(
            model_version_status=self.manager.model_status(spec))
        for version in response.model_version_status:
            version.status.SetInParent()  # TF Serving always sets it, so OK prints as {"error_code": "OK", ..}
        return dumps(proto_dict(response))

    async def metadata(self, spec: model_pb2.ModelSpec) -> bytes:
        request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=spec,
                                                                 metadata_field=[inference.SIGNATURE_DEF_FIELD])
        response = await inference.get_model_metadata(self.manager, request)
        metadata = {}
        for field, packed in response.metadata.items():  # unpacked, as TF Serving prints it (no "@type")
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            packed.Unpack(signature_map)
            metadata[field] = proto_dict(signature_map)
        return dumps({"model_spec": proto_dict(response.model_spec), "metadata": metadata})

    async def predict(self, spec: model_pb2.ModelSpec, request: web.Request) -> bytes:
        body = PredictBody.parse(await self.read_json(request))
        spec.signature_name = body.signature_name
        if self.batcher is not None:
            return await self.batched_predict(spec, body)
        return await self.manager.call(spec, lambda servable: run_json_predict(servable, body),
                                       delay_s=self.delay_s)

    async def batched_predict(self, spec: model_pb2.ModelSpec, body: PredictBody) -> bytes:
        """The same predict through the server's batcher, so REST and gRPC requests share batches."""
        signature = body.signature_name or DEFAULT_SIGNATURE
        version = self.manager.checkout(spec)
        try:
            specs = version.servable.input_specs(signature)
            if not specs:
                raise invalid_argument(f"Failed to get input map for signature: {signature}")
            to_inputs = row_inputs if body.row_format else columnar_inputs
            inputs = to_inputs(body.data, specs)
            check_arrays(inputs, specs)
        except BaseException:
            self.manager.release(version)
            raise
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        outputs = await self.batcher.submit(self.manager, version, signature, inputs, ())
        if body.row_format:
            return dumps({"predictions": row_outputs(outputs)})
        return dumps({"outputs": columnar_outputs(outputs)})

    async def classify(self, spec: model_pb2.ModelSpec, request: web.Request) -> bytes:
        body = await self.read_json(request)
        spec.signature_name = signature_name(body)
        proto = classification_pb2.ClassificationRequest(model_spec=spec, input=example_input(body, "classify"))
        return classify_json(await inference.classify(self.manager, proto, self.delay_s))

    async def regress(self, spec: model_pb2.ModelSpec, request: web.Request) -> bytes:
        body = await self.read_json(request)
        spec.signature_name = signature_name(body)
        proto = regression_pb2.RegressionRequest(model_spec=spec, input=example_input(body, "regress"))
        return regress_json(await inference.regress(self.manager, proto, self.delay_s))


def build_app(manager: ModelManager, *, client_max_size: int = DEFAULT_CLIENT_MAX_SIZE,
              metrics_path: str | None = DEFAULT_METRICS_PATH, delay_s: float = 0.0,
              batcher: object | None = None) -> web.Application:
    """The REST API as an aiohttp app; ``metrics_path=None`` serves no metrics (TF Serving without a
    monitoring config). A body over ``client_max_size`` bytes is refused with 413.

    ``batcher`` (the gRPC server's, when batching is on) batches REST predicts with gRPC ones.
    """
    if client_max_size < 1:
        raise ValueError(f"client_max_size must be positive, not {client_max_size}")
    if metrics_path is not None and not metrics_path.startswith("/"):
        raise ValueError(f"metrics_path must start with '/': {metrics_path!r}")
    api = RestApi(manager, metrics_path=metrics_path, delay_s=delay_s, batcher=batcher)
    app = web.Application(client_max_size=client_max_size)
    app.router.add_route("*", "/{tail:.*}", api.dispatch)
    return app


async def start_rest(manager: ModelManager, host: str, port: int, **options: Any) -> tuple[web.AppRunner, int]:
    """Serve the REST API on ``host:port`` (0 picks a free port) on the running loop, which must be the
    manager's. Returns the runner (``await runner.cleanup()`` stops it) and the bound port. ``options`` go
    to :func:`build_app`."""
    runner = web.AppRunner(build_app(manager, **options), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError:
        await runner.cleanup()
        raise
    bound = runner.addresses[0][1]
    log.info("REST API on %s:%d", host, bound)
    return runner, bound
