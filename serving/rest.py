"""TF Serving's REST API (https://www.tensorflow.org/tfx/serving/api_rest) on a :class:`~serving.models.ModelManager`.

Clients written for ``tensorflow_model_server --rest_api_port`` (curl scripts, the TFX/KServe-style JSON
clients, load balancer health checks on ``GET /v1/models/<name>``, browsers through CORS) must work
unchanged, so the paths, JSON bodies, conversion rules, headers and error answers are TF Serving's
(model_servers/http_server.cc, http_rest_api_handler.cc, http_rest_api_util.cc and util/json_tensor.cc):

* ``GET /v1/models/<name>[/versions/<v>|/labels/<l>]`` -> GetModelStatusResponse as JSON. As TF Serving,
  a label is ignored here (every version is listed); a version lists that version;
* ``GET ...[/metadata]`` -> ``{"model_spec": .., "metadata": {"signature_def": <SignatureDefMap>}}``;
* ``POST ...:predict`` with ``instances`` (row format) or ``inputs`` (columnar); values are converted to the
  signature's dtypes by :mod:`serving.rest_json`, then checked and run as a gRPC Predict;
* ``POST ...:classify`` / ``...:regress`` with ``examples`` (and an optional ``context``) -> ``results``;
* ``OPTIONS`` on any ``/v1/`` path is a CORS preflight: 200 with an ``http(s)://`` Origin header, else 400;
  with ``cors`` (``--rest_api_enable_cors_support``) every answer carries ``Access-Control-Allow-Origin: *``,
  ``Access-Control-Allow-Methods: POST, GET`` and ``Access-Control-Allow-Headers: Content-Type``;
* ``timeout_s`` (``--rest_api_timeout_in_ms``, 30 s by default as in TF Serving; None: none): a predict,
  classify or regress whose inference takes longer is DEADLINE_EXCEEDED, HTTP 504;
* errors are ``{"error": "<message>"}``, the HTTP status derived from the gRPC code of the error's row in
  :data:`serving.errors.ERRORS` by TF Serving's mapping; a path outside ``/v1/`` is 404, a ``/v1/`` path or
  method the API does not have is 400 ("Malformed request: POST /v1/x"). The verbs and ``metadata`` are
  matched case-insensitively but dispatched only in lower case, as TF Serving does.

The server is aiohttp on the manager's own event loop (all manager state lives there); JSON parsing,
conversion and inference run in threads. Requests are counted in the gRPC server's TF Serving-named
metrics, entrypoint ``REST``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from typing import Any, Awaitable, Callable, Mapping
from urllib.parse import unquote

import numpy as np
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     input_pb2, model_pb2, regression_pb2)

from serving import inference
from serving.errors import ERRORS, HTTP_STATUS, INTERNAL_MESSAGE, ServingError, fail, http_status
from serving.grpc_server import REQUEST_COUNT, REQUEST_LATENCY
from serving.models import ModelManager
from serving.rest_json import (INT64_MAX, columnar_inputs, columnar_outputs, debug_json, decimal,
                               parse_json_object, row_inputs, row_outputs, to_example)
from serving.servable import DEFAULT_SIGNATURE, Servable

log = logging.getLogger(__name__)

DEFAULT_CLIENT_MAX_SIZE = 64 * 1024 * 1024
DEFAULT_METRICS_PATH = "/monitoring/prometheus/metrics"
DEFAULT_TIMEOUT_S = 30.0  # --rest_api_timeout_in_ms=30000
INLINE_PARSE_BYTES = 64 * 1024  # smaller bodies are parsed on the loop; bigger ones in a thread

# http_rest_api_util.h / .cc: the dispatcher's regex and the API's two (RE2, case-insensitive).
_API_PATH = re.compile(r"/v1/.*", re.IGNORECASE)
_MODEL = r"/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
_POST_PATH = re.compile(_MODEL + r":(?P<verb>classify|regress|predict)", re.IGNORECASE)
_GET_PATH = re.compile(r"/v1/models(?:/(?P<name>[^/:]+))?(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
                       r"(?:/(?P<sub>metadata))?", re.IGNORECASE)
_ORIGIN = re.compile(r"https?://")
CORS_HEADERS = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "POST, GET",
                "Access-Control-Allow-Headers": "Content-Type"}
TIMEOUT_MESSAGE = "Timed out waiting for notification"  # the session's DEADLINE_EXCEEDED
__all__ = ["HTTP_STATUS", "RestApi", "build_app", "http_status", "start_rest"]


def dumps(payload: Any) -> bytes:
    """JSON as TF Serving writes it: NaN and +-Infinity as bare literals (rapidjson's kWriteNanAndInfFlag)."""
    return json.dumps(payload, allow_nan=True).encode()


def proto_dict(message: Message) -> dict:
    """A proto as TF Serving's ToJsonString prints it: proto field names, default values included."""
    return json_format.MessageToDict(message, including_default_value_fields=True,
                                     preserving_proto_field_name=True)


# -- the request: path and body ------------------------------------------------------------------------

def model_spec(match: re.Match) -> model_pb2.ModelSpec:
    """http_rest_api_util.cc ``ParseModelInfo`` and ``FillModelSpecWithNameVersionAndLabel``: the name and
    label percent-decoded, the version an int64."""
    spec = model_pb2.ModelSpec(name=unquote(match["name"] or ""))
    if match["version"] is not None:
        number = int(match["version"])
        if number > INT64_MAX:
            raise fail("rest_bad_version", f"Failed to convert version: {match['version']} to numeric.")
        spec.version.value = number
    elif match["label"] is not None:
        spec.version_label = unquote(match["label"])
    return spec


def signature_name(body: Mapping[str, Any]) -> str:
    """json_tensor.cc ``FillSignature``."""
    name = body.get("signature_name", "")
    if not isinstance(name, str):
        raise fail("json_invalid_request", f"JSON Value: {debug_json(body)} not formatted correctly. "
                                           f"'signature_name' key must be a string value.")
    return name


def predict_data(body: Mapping[str, Any]) -> tuple[bool, Any]:
    """json_tensor.cc ``FillPredictRequestFromJson``'s checks of ``instances``/``inputs``: (row format, data)."""
    if "instances" in body:
        if "inputs" in body:
            raise fail("json_invalid_request", f"JSON Value: {debug_json(body)} Not formatted correctly expecting "
                                               f"only one of 'inputs' or 'instances' keys to exist ")
        instances = body["instances"]
        if not isinstance(instances, list):
            raise fail("json_invalid_request",
                       f"JSON Value: {debug_json(body)} Expecting 'instances' to be an list/array")
        if not instances:
            raise fail("json_invalid_request", f"JSON Value: {debug_json(body)} No values in 'instances' array")
        return True, instances
    if "inputs" in body:
        return False, body["inputs"]
    raise fail("json_invalid_request", "Missing 'inputs' or 'instances' key")


def json_arrays(servable: Servable, body: Mapping[str, Any], name: str) -> tuple[bool, dict[str, np.ndarray]]:
    """The body's tensors by the signature's dtypes (http_rest_api_handler.cc ``GetInfoMap``, then
    json_tensor.cc): (row format, input arrays)."""
    signature = servable.signature_def(name or DEFAULT_SIGNATURE, "rest_signature_not_found",
                                       f'Serving signature name: "{name or DEFAULT_SIGNATURE}" not found in '
                                       f'signature def')
    if not signature.inputs:
        raise fail("json_invalid_request", f"Failed to get input map for signature: {name or 'DEFAULT'}")
    row_format, data = predict_data(body)
    dtypes = {alias: info.dtype for alias, info in signature.inputs.items()}
    return row_format, (row_inputs if row_format else columnar_inputs)(data, dtypes)


def predictions_json(row_format: bool, outputs: Mapping[str, np.ndarray]) -> bytes:
    """json_tensor.cc ``MakeJsonFromTensors``."""
    if not outputs:
        raise fail("json_invalid_request", "Cannot convert empty tensor map to JSON")
    if row_format:
        return dumps({"predictions": row_outputs(outputs)})
    return dumps({"outputs": columnar_outputs(outputs)})


def run_json_predict(servable: Servable, body: Mapping[str, Any], name: str) -> bytes:
    """The whole predict on one version, in an inference thread: JSON in, checked, run, JSON out."""
    row_format, arrays = json_arrays(servable, body, name)
    name, arrays = inference.prepare_arrays(servable, name, arrays)
    return predictions_json(row_format, servable.run(name, arrays))


# -- classify / regress: JSON -> tf.Example --------------------------------------------------------------

def example_input(body: Mapping[str, Any]) -> input_pb2.Input:
    """The ``context`` and ``examples`` as the Input proto Classify/Regress take (json_tensor.cc
    ``FillClassifyRegressRequestFromJson``; its messages say "classify" for :regress too)."""
    model_input = input_pb2.Input()
    has_context = "context" in body
    if has_context:
        model_input.example_list_with_context.context.CopyFrom(to_example(body["context"]))
    examples = body.get("examples")
    if "examples" not in body:
        raise fail("json_invalid_request", f"JSON Value: {debug_json(body)} When method is classify, key "
                                           f"'examples' is expected and was not found")
    if not isinstance(examples, list):
        raise fail("json_invalid_request",
                   f"JSON Value: {debug_json(body)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise fail("json_invalid_request", f"JSON Value: {debug_json(body)} 'examples' value is an empty array")
    target = model_input.example_list_with_context if has_context else model_input.example_list
    for example in examples:
        target.examples.append(to_example(example))
    return model_input


def classify_json(response: classification_pb2.ClassificationResponse) -> bytes:
    if not response.result.classifications:
        raise fail("json_invalid_request", "Cannot convert empty ClassificationResults to JSON")
    return dumps({"results": [[[c.label, decimal(c.score)] for c in result.classes]
                              for result in response.result.classifications]})


def regress_json(response: regression_pb2.RegressionResponse) -> bytes:
    if not response.result.regressions:
        raise fail("json_invalid_request", "Cannot convert empty RegressionResults to JSON")
    return dumps({"results": [decimal(r.value) for r in response.result.regressions]})


# -- the server -------------------------------------------------------------------------------------------

class RestApi:
    """The handlers; every request runs through :meth:`answer`, so none can take the server down."""

    def __init__(self, manager: ModelManager, *, metrics_path: str | None, delay_s: float = 0.0,
                 batcher: Any = None, timeout_s: float | None = DEFAULT_TIMEOUT_S, cors: bool = False):
        self.manager = manager
        self.metrics_path = metrics_path
        self.delay_s = delay_s
        self.batcher = batcher
        self.timeout_s = timeout_s if timeout_s and timeout_s > 0 else None
        self.cors = cors

    def headers(self, json_body: bool = True) -> dict[str, str]:
        headers = {"Content-Type": "application/json"} if json_body else {}
        if self.cors:
            headers.update(CORS_HEADERS)
        return headers

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.raw_path.split("?", 1)[0]
        if self.metrics_path is not None and request.path == self.metrics_path:
            return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})
        if not _API_PATH.fullmatch(path):
            return web.json_response({"error": f"Not found: {request.method} {path}"}, status=404)
        if request.method == "OPTIONS":  # http_server.cc: a CORS preflight, whether CORS is on or not
            ok = bool(_ORIGIN.search(request.headers.get("Origin", "")))
            return web.Response(status=200 if ok else http_status(ERRORS["cors_preflight_no_origin"].code),
                                headers=self.headers(json_body=False))
        if request.method == "POST" and (match := _POST_PATH.fullmatch(path)) and match["verb"] in \
                ("classify", "regress", "predict"):
            handler = {"predict": self.predict, "classify": self.classify, "regress": self.regress}[match["verb"]]
            return await self.answer(match["verb"], match, lambda spec: handler(spec, request))
        if request.method == "GET" and (match := _GET_PATH.fullmatch(path)):
            metadata = match["sub"] == "metadata"
            body = self.metadata if metadata else self.status
            return await self.answer("get_model_metadata" if metadata else "get_model_status", match, body)
        return self.error(fail("rest_malformed_request", f"Malformed request: {request.method} {path}"))

    def error(self, exc: ServingError) -> web.Response:
        return web.Response(body=dumps({"error": exc.message}), status=exc.http_status, headers=self.headers())

    async def answer(self, api: str, match: re.Match,
                     body: Callable[[model_pb2.ModelSpec], Awaitable[bytes]]) -> web.Response:
        start = time.perf_counter()
        name = unquote(match["name"] or "")
        model = name if self.manager.serves(name) else ""  # clients cannot grow the metric's label set
        try:
            response = web.Response(body=await body(model_spec(match)), headers=self.headers())
        except ServingError as exc:
            code, response = exc.code.name, self.error(exc)
        except web.HTTPRequestEntityTooLarge as exc:
            code = "RESOURCE_EXHAUSTED"
            response = web.Response(body=dumps({"error": exc.text or exc.reason}), status=exc.status,
                                    headers=self.headers())
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug, not the client's fault: log it, keep serving, tell nothing of the server
            log.exception("REST %s on model %r failed", api, name)
            code, response = "INTERNAL", self.error(fail("internal", INTERNAL_MESSAGE))
        else:
            REQUEST_COUNT.labels(model, api, "OK").inc()
            REQUEST_LATENCY.labels(model, api, "REST").observe(time.perf_counter() - start)
            return response
        REQUEST_COUNT.labels(model, api, code).inc()
        return response

    async def read_json(self, request: web.Request) -> dict:
        raw = await request.read()  # HTTPRequestEntityTooLarge past client_max_size
        if len(raw) <= INLINE_PARSE_BYTES:
            return parse_json_object(raw)
        return await asyncio.get_running_loop().run_in_executor(None, parse_json_object, raw)

    async def timed(self, work: Awaitable[Any]) -> Any:
        """``work`` (an inference), DEADLINE_EXCEEDED past ``timeout_s``. The model keeps running to the end
        in its thread, and its version stays checked out until then, as a session that cannot be stopped."""
        if self.timeout_s is None:
            return await work
        try:
            return await asyncio.wait_for(work, self.timeout_s)
        except asyncio.TimeoutError:
            raise fail("rest_timeout", TIMEOUT_MESSAGE) from None

    async def status(self, spec: model_pb2.ModelSpec) -> bytes:
        if not spec.name:
            raise fail("rest_missing_model_name", "Missing model name in request.")
        response = get_model_status_pb2.GetModelStatusResponse(
            model_version_status=self.manager.model_status(spec))
        for version in response.model_version_status:
            version.status.SetInParent()  # TF Serving always sets it, so OK prints as {"error_code": "OK", ..}
        return dumps(proto_dict(response))

    async def metadata(self, spec: model_pb2.ModelSpec) -> bytes:
        if not spec.name:
            raise fail("rest_missing_model_name", "Missing model name in request.")
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
        body = await self.read_json(request)
        name = signature_name(body)
        spec.signature_name = name
        if self.batcher is not None:
            return await self.timed(self.batched_predict(spec, body, name))
        return await self.timed(self.manager.call(spec, lambda servable: run_json_predict(servable, body, name),
                                                  delay_s=self.delay_s))

    async def batched_predict(self, spec: model_pb2.ModelSpec, body: Mapping[str, Any], name: str) -> bytes:
        """The same predict through the server's batcher, so REST and gRPC requests share batches."""
        version = self.manager.checkout(spec)
        try:
            def prepare():
                row_format, arrays = json_arrays(version.servable, body, name)
                return (row_format,) + inference.prepare_arrays(version.servable, name, arrays)
            row_format, signature, inputs = await asyncio.to_thread(prepare)
        except BaseException:
            self.manager.release(version)
            raise
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        outputs = await self.batcher.submit(self.manager, version, signature, inputs, ())
        return await asyncio.to_thread(predictions_json, row_format, outputs)

    async def classify(self, spec: model_pb2.ModelSpec, request: web.Request) -> bytes:
        body = await self.read_json(request)
        spec.signature_name = signature_name(body)
        proto = classification_pb2.ClassificationRequest(model_spec=spec, input=example_input(body))
        return classify_json(await self.timed(inference.classify(self.manager, proto, self.delay_s)))

    async def regress(self, spec: model_pb2.ModelSpec, request: web.Request) -> bytes:
        body = await self.read_json(request)
        spec.signature_name = signature_name(body)
        proto = regression_pb2.RegressionRequest(model_spec=spec, input=example_input(body))
        return regress_json(await self.timed(inference.regress(self.manager, proto, self.delay_s)))


def build_app(manager: ModelManager, *, client_max_size: int = DEFAULT_CLIENT_MAX_SIZE,
              metrics_path: str | None = DEFAULT_METRICS_PATH, delay_s: float = 0.0,
              batcher: object | None = None, timeout_s: float | None = DEFAULT_TIMEOUT_S,
              cors: bool = False) -> web.Application:
    """The REST API as an aiohttp app; ``metrics_path=None`` serves no metrics (TF Serving without a
    monitoring config). A body over ``client_max_size`` bytes is refused with 413.

    ``batcher`` (the gRPC server's, when batching is on) batches REST predicts with gRPC ones;
    ``timeout_s`` is ``--rest_api_timeout_in_ms`` in seconds (None or <= 0: no timeout); ``cors`` is
    ``--rest_api_enable_cors_support``.
    """
    if client_max_size < 1:
        raise ValueError(f"client_max_size must be positive, not {client_max_size}")
    if metrics_path is not None and not metrics_path.startswith("/"):
        raise ValueError(f"metrics_path must start with '/': {metrics_path!r}")
    api = RestApi(manager, metrics_path=metrics_path, delay_s=delay_s, batcher=batcher, timeout_s=timeout_s,
                  cors=cors)
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
