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
import base64
import binascii
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Mapping

import grpc
import numpy as np
import tensorflow as tf
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     input_pb2, model_pb2, regression_pb2)

from serving import inference
from serving.errors import ServingError, invalid_argument
from serving.grpc_server import REQUEST_COUNT, REQUEST_LATENCY
from serving.models import ModelManager
from serving.servable import DEFAULT_SIGNATURE, Servable
from serving.tensors import check_arrays, check_names, dtype_name

log = logging.getLogger(__name__)

DEFAULT_CLIENT_MAX_SIZE = 64 * 1024 * 1024
DEFAULT_METRICS_PATH = "/monitoring/prometheus/metrics"
INLINE_PARSE_BYTES = 64 * 1024  # smaller bodies are parsed on the loop; bigger ones in a thread
MAX_RANK = 64  # deeper JSON nesting is refused before it can exhaust the stack
BYTES_SUFFIX = "_bytes"
INT64_MAX = (1 << 63) - 1

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
        raise invalid_argument(f"JSON Value: {_short(document)} Is not object")
    return document


def signature_name(body: Mapping[str, Any]) -> str:
    name = body.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid_argument(f"JSON Value: {_short(name)} not formatted correctly. 'signature_name' key "
                               f"must be a string value.")
    return name


def _short(value: Any, limit: int = 200) -> str:
    text = json.dumps(value) if not isinstance(value, bytes) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


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
                raise invalid_argument(f"Expecting 'instances' to be a list/array, not {_short(instances)}")
            if not instances:
                raise invalid_argument("No values in 'instances' array")
            return cls(signature, True, instances)
        if "inputs" in body:
            return cls(signature, False, body["inputs"])
        raise invalid_argument("Missing 'inputs' or 'instances' key")


# -- JSON values -> numpy, by the signature's dtypes -----------------------------------------------------

def is_b64(value: Any) -> bool:
    """``{"b64": "<base64>"}``: binary data in a DT_STRING tensor or a bytes feature."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def is_named(value: Any) -> bool:
    """A JSON object of named inputs (as opposed to a value, which a b64 object is)."""
    return isinstance(value, dict) and not is_b64(value)


def decode_b64(where: str, value: dict) -> bytes:
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise invalid_argument(f"{where}: Unable to base64 decode {_short(value)}") from None


def tensor_layout(name: str, value: Any) -> tuple[tuple[int, ...], list]:
    """The shape of a (nested-list) JSON tensor and its values, flattened; ragged lists are refused."""
    leaves: list = []
    return _walk(name, value, leaves, 0), leaves


def _walk(name: str, value: Any, leaves: list, depth: int) -> tuple[int, ...]:
    if not isinstance(value, list):
        leaves.append(value)
        return ()
    if depth >= MAX_RANK:
        raise invalid_argument(f"input tensor {name!r} is nested deeper than {MAX_RANK} levels")
    if not any(isinstance(item, list) for item in value):
        leaves.extend(value)
        return (len(value),)
    shapes = [_walk(name, item, leaves, depth + 1) for item in value]
    if any(shape != shapes[0] for shape in shapes):
        raise invalid_argument(f"input tensor {name!r} has lists of different lengths at level {depth + 1}: "
                               f"shapes {sorted(set(shapes))}; a tensor must be rectangular")
    return (len(value),) + shapes[0]


def _type_error(name: str, value: Any, dtype: tf.DType) -> ServingError:
    kind = "Object" if isinstance(value, dict) else "Array" if isinstance(value, list) else \
        "Null" if value is None else "Bool" if isinstance(value, bool) else \
        "String" if isinstance(value, str) else "Number"
    return invalid_argument(f"input tensor {name!r}: JSON Value: {_short(value)} Type: {kind} is not of "
                            f"expected type: {dtype_name(dtype.as_datatype_enum)}")


def _strings(name: str, leaves: list, dtype: tf.DType) -> list[bytes]:
    values = []
    for leaf in leaves:
        if isinstance(leaf, str):
            values.append(leaf.encode("utf-8", "surrogatepass"))
        elif is_b64(leaf):
            values.append(decode_b64(f"input tensor {name!r}", leaf))
        else:
            raise _type_error(name, leaf, dtype)
    return values


def _integers(name: str, leaves: list, dtype: tf.DType) -> list[int]:
    for leaf in leaves:
        if isinstance(leaf, bool) or not isinstance(leaf, int):
            raise _type_error(name, leaf, dtype)
    if leaves and (min(leaves) < dtype.min or max(leaves) > dtype.max):
        bad = next(v for v in leaves if v < dtype.min or v > dtype.max)
        raise invalid_argument(f"input tensor {name!r}: JSON value {bad} is out of range for "
                               f"{dtype_name(dtype.as_datatype_enum)}")
    return leaves


def _floats(name: str, leaves: list, dtype: tf.DType) -> list[float]:
    exact = 1 << np.finfo(dtype.as_numpy_dtype).nmant + 1  # integers above this lose precision
    largest = float(np.finfo(dtype.as_numpy_dtype).max)
    for leaf in leaves:
        if isinstance(leaf, bool) or not isinstance(leaf, (int, float)):
            raise _type_error(name, leaf, dtype)
        lossy = abs(leaf) >= exact if isinstance(leaf, int) else np.isfinite(leaf) and abs(leaf) > largest
        if lossy:
            raise invalid_argument(f"input tensor {name!r}: Cannot convert JSON value: {leaf} to "
                                   f"{dtype.name} without loss of precision.")
    return leaves


def _bools(name: str, leaves: list, dtype: tf.DType) -> list[bool]:
    for leaf in leaves:
        if not isinstance(leaf, bool):
            raise _type_error(name, leaf, dtype)
    return leaves


def to_array(name: str, value: Any, spec: tf.TensorSpec) -> np.ndarray:
    """A JSON tensor as a numpy array of the signature's dtype, or INVALID_ARGUMENT naming the tensor."""
    shape, leaves = tensor_layout(name, value)
    dtype = spec.dtype
    if dtype == tf.string:
        array = np.empty(len(leaves), dtype=object)
        array[:] = _strings(name, leaves, dtype)
        return array.reshape(shape)
    if dtype == tf.bool:
        return np.array(_bools(name, leaves, dtype), dtype=bool).reshape(shape)
    if dtype.is_integer:
        return np.array(_integers(name, leaves, dtype), dtype=dtype.as_numpy_dtype).reshape(shape)
    if dtype in (tf.float32, tf.float64):
        return np.array(_floats(name, leaves, dtype), dtype=dtype.as_numpy_dtype).reshape(shape)
    raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"input tensor {name!r}: conversion of JSON values to "
                                                      f"{dtype_name(dtype.as_datatype_enum)} is not supported")


def row_inputs(instances: list, specs: Mapping[str, tf.TensorSpec]) -> dict[str, np.ndarray]:
    """The row format: one element per batch row, objects of named inputs or plain values (one input)."""
    if not is_named(instances[0]):
        if len(specs) > 1:
            raise invalid_argument(f"instances is a plain list, but expecting list of objects as multiple "
                                   f"input tensors are required: {sorted(specs)}")
        if any(is_named(item) for item in instances):
            raise invalid_argument("'instances' mixes plain values and objects of named inputs")
        name = next(iter(specs))
        return {name: to_array(name, instances, specs[name])}
    for number, item in enumerate(instances):
        if not is_named(item):
            raise invalid_argument(f"Expecting object but got {_short(item, 40)} at item {number} of "
                                   f"'instances' list")
        try:
            check_names(set(item), set(specs))
        except ServingError as exc:
            raise invalid_argument(f"Failed to process element: {number} of 'instances' list: "
                                   f"{exc.message}") from None
    return {name: to_array(name, [item[name] for item in instances], spec) for name, spec in specs.items()}


def columnar_inputs(inputs: Any, specs: Mapping[str, tf.TensorSpec]) -> dict[str, np.ndarray]:
    """The columnar format: an object of named tensors, or one tensor when the signature has one input."""
    if not is_named(inputs):
        if len(specs) > 1:
            raise invalid_argument(f"inputs is a plain value/list, but expecting an object as multiple input "
                                   f"tensors are required: {sorted(specs)}")
        name = next(iter(specs))
        return {name: to_array(name, inputs, specs[name])}
    check_names(set(inputs), set(specs))
    return {name: to_array(name, inputs[name], spec) for name, spec in specs.items()}


# -- numpy outputs -> JSON -------------------------------------------------------------------------------

def _string_value(name: str, value: bytes) -> str | dict:
    if name.endswith(BYTES_SUFFIX):
        return {"b64": base64.b64encode(value).decode("ascii")}
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:  # JSON cannot carry it as a string; TF Serving would write invalid JSON
        return {"b64": base64.b64encode(value).decode("ascii")}


def json_value(name: str, array: np.ndarray) -> Any:
    """An output as nested lists of JSON values, as TF Serving writes each dtype."""
    if array.dtype == object or array.dtype.kind in "SU":
        convert = np.frompyfunc(lambda v: _string_value(name, v if isinstance(v, bytes) else str(v).encode()),
                                1, 1)
        return np.asarray(convert(array), dtype=object).tolist()
    if array.dtype.kind in "biu":
        return array.tolist()
    if array.dtype in (np.float32, np.float64):
        # Each value's shortest round-trip decimal, as TF Serving's WriteDecimal: 0.1f is 0.1, not 0.100000001.
        return array.astype(str).astype(np.float64).tolist()
    raise invalid_argument(f"Failed to write JSON value for output {name!r} of type {array.dtype}")


def row_outputs(outputs: Mapping[str, np.ndarray]) -> list:
    """``predictions``: one entry per batch row; objects when there are several outputs."""
    batch = None
    for name, array in outputs.items():
        if array.ndim == 0:
            raise invalid_argument(f"Tensor name: {name} has no shape information")
        if array.shape[0] < 1:
            raise invalid_argument(f"Tensor name: {name} has invalid batch size: {array.shape[0]}")
        if batch is not None and array.shape[0] != batch:
            raise invalid_argument(f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} "
                                   f"expecting: {batch}")
        batch = array.shape[0]
    values = {name: json_value(name, array) for name, array in sorted(outputs.items())}
    if len(values) == 1:
        return next(iter(values.values()))
    return [{name: rows[i] for name, rows in values.items()} for i in range(batch or 0)]


def columnar_outputs(outputs: Mapping[str, np.ndarray]) -> Any:
    values = {name: json_value(name, array) for name, array in sorted(outputs.items())}
    return next(iter(values.values())) if len(values) == 1 else values


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

def _feature_kind(name: str, value: Any) -> str:
    if value is None or isinstance(value, list) or (isinstance(value, dict) and not is_b64(value)):
        raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: {_short(value, 40)}")
    if isinstance(value, (str, dict)):
        return "bytes_list"
    if isinstance(value, float):
        return "float_list"
    return "int64_list"  # an int, or a bool (as 1/0, as TF Serving)


def to_feature(name: str, content: Any) -> feature_pb2.Feature:
    """One feature: a value or a list of values of one kind (strings/b64, integers, or decimals)."""
    feature = feature_pb2.Feature()
    values = content if isinstance(content, list) else [content]
    kinds = {_feature_kind(name, value) for value in values}
    if len(kinds) > 1:
        raise invalid_argument(f"Unexpected element type in feature: {name}: it mixes {sorted(kinds)}")
    if not kinds:
        return feature
    kind = kinds.pop()
    if kind == "bytes_list":
        feature.bytes_list.value.extend(
            decode_b64(f"feature {name!r}", v) if is_b64(v) else v.encode("utf-8", "surrogatepass") for v in values)
    elif kind == "float_list":
        _floats(f"feature {name}", values, tf.float32)
        feature.float_list.value.extend(values)
    else:
        ints = [int(v) for v in values]
        if min(ints) < -INT64_MAX - 1 or max(ints) > INT64_MAX:
            raise invalid_argument(f"Feature: {name} has an element outside int64. Only int64 is supported.")
        feature.int64_list.value.extend(ints)
    return feature


def to_example(where: str, value: Any) -> example_pb2.Example:
    if not is_named(value):
        raise invalid_argument(f"{where}: Example must be JSON object but got {_short(value, 40)}")
    example = example_pb2.Example()
    for name, content in value.items():
        example.features.feature[name].CopyFrom(to_feature(name, content))
    return example


def example_input(body: Mapping[str, Any], verb: str) -> input_pb2.Input:
    """The ``examples`` (with the optional ``context``) as the Input proto Classify/Regress take."""
    examples = body.get("examples")
    if examples is None:
        raise invalid_argument(f"When method is {verb}, key 'examples' is expected and was not found")
    if not isinstance(examples, list):
        raise invalid_argument(f"Expecting 'examples' value to be an list/array, not {_short(examples, 40)}")
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
