"""TF Serving's REST JSON, both ways, as its util/json_tensor.cc converts it (and Abseil's base64).

Split from :mod:`serving.rest`, which routes requests; these are pure functions of their arguments.

* :func:`parse_json_object` parses a body as TF Serving's rapidjson does (``ParseJson``): NaN and
  +-Infinity are numbers, anything after the top-level value is ignored, a number too big for a double
  is a parse error, and integers beyond 64 bits are doubles.
* :func:`to_array` converts one JSON tensor to the signature's dtype, value by value as
  ``AddValueToTensor`` does. The shape comes from the first element at each level (``GetDenseTensorShape``)
  and every list must match it (``FillTensorProto``). Per dtype:

  ==========================================  ========================================================
  float, double                               any JSON number (integers included), rounded to the
                                              dtype; beyond float32's range: +-inf. NaN, Infinity.
  int32, int16, int8, uint8                   an integer in int32's range; int16/int8/uint8 then
                                              wrap around as TensorFlow narrows an int32 (300 -> 44)
  int64 / uint32 / uint64                     an integer in that type's range
  bool                                        true or false only
  string                                      a string (its UTF-8 bytes) or ``{"b64": "..."}``
  half, bfloat16, uint16, complex, ...        UNIMPLEMENTED (HTTP 501): JSON has no conversion
  ==========================================  ========================================================

  Anything else is INVALID_ARGUMENT "JSON Value: 1.5 Type: Number is not of expected type: int64".
* :func:`decode_base64` is Abseil's ``Base64Unescape``: the standard alphabet only (``-`` and ``_`` of the
  URL-safe one are refused), padding optional but never partial (``"aGk"`` and ``"aGk="`` decode, ``"aG="``
  does not), ``.`` as a pad character, ASCII whitespace ignored anywhere, a lone 6-bit tail refused.
* :func:`row_inputs` / :func:`columnar_inputs` are the ``instances`` and ``inputs`` formats
  (``FillTensorMapFromInstancesList`` / ``FillTensorMapFromInputsMap``), with TF Serving's messages.
* :func:`json_value` writes an output as ``AddSingleValueAndAdvance``: floats as ``WriteDecimal`` prints
  them (6 significant digits when that reads back to the same float, else 9, 17 for doubles), ``_bytes``
  outputs as ``{"b64": ..}``, half and uint16 outputs refused.
* :func:`to_example` builds a ``tf.Example`` from JSON as ``MakeExampleFromJsonObject``.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any, Mapping

import numpy as np
import tensorflow as tf
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import types_pb2

from serving.errors import ServingError, fail
from serving.tensors import data_type_string, shape_string

BYTES_SUFFIX = "_bytes"
INT64_MAX = (1 << 63) - 1
_INT32 = (-(1 << 31), (1 << 31) - 1)
_INT64 = (-(1 << 63), INT64_MAX)
_UINT32 = (0, (1 << 32) - 1)
_UINT64 = (0, (1 << 64) - 1)
_DEBUG_LIMIT = 256  # json_tensor.cc kMaxJsonDebugStringBytes


# -- parsing ----------------------------------------------------------------------------------------------

class _NumberTooBig(ValueError):
    def __init__(self, token: str):
        super().__init__(token)
        self.token = token


def _parse_float(token: str) -> float:
    value = float(token)
    if math.isinf(value):  # rapidjson: kParseErrorNumberTooBig
        raise _NumberTooBig(token)
    return value


def _parse_int(token: str) -> int | float:
    try:
        value = int(token)
    except ValueError:  # more digits than Python converts: far beyond a double anyway
        raise _NumberTooBig(token) from None
    if _INT64[0] <= value <= _UINT64[1]:
        return value
    try:
        return _parse_float(token)  # rapidjson holds integers beyond 64 bits as doubles
    except OverflowError:
        raise _NumberTooBig(token) from None


# Python's json messages -> rapidjson's GetParseError_En.
_PARSE_ERRORS = (
    ("Expecting value", "Invalid value."),
    ("Expecting property name enclosed in double quotes", "Missing a name for object member."),
    ("Expecting ':' delimiter", "Missing a colon after a name of object member."),
    ("Unterminated string starting at", "Missing a closing quotation mark in string."),
    ("Invalid \\escape", "Invalid escape character in string."),
    ("Invalid \\uXXXX escape", "Incorrect hex digit after \\u escape in string."),
    ("Invalid control character at", "Invalid encoding in string."),
)


def _open_container(text: str, pos: int) -> str:
    """The innermost ``{`` or ``[`` still open at ``pos`` (for rapidjson's comma messages)."""
    stack, in_string, escaped = [], False, False
    for char in text[:pos]:
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "[{":
            stack.append(char)
        elif char in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def _parse_error(exc: json.JSONDecodeError) -> ServingError:
    message = next((ours for python, ours in _PARSE_ERRORS if exc.msg.startswith(python)), None)
    if message is None:
        message = ("Missing a comma or '}' after an object member." if _open_container(exc.doc, exc.pos) == "{"
                   else "Missing a comma or ']' after an array element.") if exc.msg.startswith("Expecting ','") \
            else "Unspecific syntax error."
    return fail("json_parse_error", f"JSON Parse error: {message} at offset: {exc.pos}")


def parse_json_object(raw: bytes) -> dict:
    """The body as a JSON object (json_tensor.cc ``ParseJson``); INVALID_ARGUMENT "JSON Parse error: .."
    for anything else, "JSON Value: [1] Is not object" for a document that is not an object."""
    if not raw:
        raise fail("json_parse_error", "JSON Parse error: The document is empty")
    try:
        text = raw.decode(json.detect_encoding(raw))
    except UnicodeDecodeError as exc:
        raise fail("json_parse_error", f"JSON Parse error: Invalid encoding in string. at offset: {exc.start}") \
            from None
    start = len(text) - len(text.lstrip(" \t\n\r"))
    if start == len(text):
        raise fail("json_parse_error", f"JSON Parse error: The document is empty. at offset: {start}")
    decoder = json.JSONDecoder(parse_float=_parse_float, parse_int=_parse_int)
    try:
        document, _ = decoder.raw_decode(text, start)  # what follows the top-level value is ignored
    except _NumberTooBig as exc:
        offset = max(text.find(exc.token), 0)
        raise fail("json_parse_error",
                   f"JSON Parse error: Number too big to be stored in double. at offset: {offset}") from None
    except json.JSONDecodeError as exc:
        raise _parse_error(exc) from None
    except RecursionError:
        raise fail("json_parse_error", "JSON Parse error: the document is nested too deeply") from None
    if not isinstance(document, dict):
        raise fail("json_parse_error", f"JSON Value: {debug_json(document)} Is not object")
    return document


# -- values --------------------------------------------------------------------------------------------------

def _number_text(value: float | int) -> str:
    if isinstance(value, float):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity") if math.isinf(value) \
            else repr(value)
    return str(value)


def _debug(value: Any, indent: int, out: list[str]) -> None:
    if isinstance(value, dict):
        if not value:
            out.append("{}")
            return
        pad = "    " * (indent + 1)
        out.append("{\n")
        for i, (key, item) in enumerate(value.items()):
            out.append(f"{pad}{json.dumps(key)}: ")
            _debug(item, indent + 1, out)
            out.append(",\n" if i < len(value) - 1 else "\n")
        out.append("    " * indent + "}")
    elif isinstance(value, list):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(", ")
            _debug(item, indent, out)
            if sum(map(len, out)) >= _DEBUG_LIMIT:
                return
        out.append("]")
    elif isinstance(value, bool) or value is None:
        out.append(json.dumps(value))
    elif isinstance(value, (int, float)):
        out.append(_number_text(value))
    else:
        out.append(json.dumps(value, ensure_ascii=False))


def debug_json(value: Any) -> str:
    """A JSON value as TF Serving prints it in messages (rapidjson's PrettyWriter, arrays on one line),
    cut once it reaches 256 characters."""
    out: list[str] = []
    _debug(value, 0, out)
    return "".join(out)[:_DEBUG_LIMIT + 64]


def json_type(value: Any) -> str:
    """json_tensor.cc ``JsonTypeString``."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def is_b64(value: Any) -> bool:
    """``{"b64": "<base64>"}``: binary data in a DT_STRING tensor or a bytes feature."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def is_named(value: Any) -> bool:
    """A JSON object of named inputs (as opposed to a value, which a b64 object is)."""
    return isinstance(value, dict) and not is_b64(value)


# -- base64 (Abseil's Base64Unescape) ---------------------------------------------------------------------------

_B64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
_B64_PAD = frozenset(b"=.")
_ASCII_SPACE = frozenset(b" \t\n\v\f\r")
_B64_EXPECTED_PADS = {0: 0, 2: 2, 3: 1}  # data characters mod 4 -> the pad characters that may follow


def decode_base64(text: str) -> bytes | None:
    """Abseil's ``Base64Unescape`` of ``text``; None where it fails (see the module docstring)."""
    raw = text.encode("utf-8", "surrogatepass")
    data = bytearray()
    pads = 0
    for position, byte in enumerate(raw):
        if byte in _ASCII_SPACE:
            continue
        if byte in _B64_PAD:  # the rest may hold only pad characters and whitespace
            tail = raw[position:]
            if any(b not in _B64_PAD and b not in _ASCII_SPACE for b in tail):
                return None
            pads = sum(b in _B64_PAD for b in tail)
            break
        if byte not in _B64_ALPHABET:
            return None
        data.append(byte)
    leftover = len(data) % 4
    if leftover == 1 or (pads and pads != _B64_EXPECTED_PADS[leftover]):
        return None
    padded = bytes(data) + b"=" * ((4 - leftover) % 4)
    return base64.b64decode(padded)  # the bits below the last whole byte are dropped, as Abseil does


def decode_b64_object(value: Any) -> bytes:
    """json_tensor.cc ``JsonDecodeBase64Object``."""
    if not is_b64(value):
        raise fail("json_invalid_request",
                   f"JSON Value: {debug_json(value)} not formatted correctly for base64 data")
    decoded = decode_base64(value["b64"])
    if decoded is None:
        raise fail("json_invalid_request", "Unable to base64 decode")
    return decoded


# -- JSON tensors -> numpy, by the signature's dtypes ----------------------------------------------------------

def _type_error(value: Any, dtype: int) -> ServingError:
    return fail("json_invalid_request", f"JSON Value: {debug_json(value)} Type: {json_type(value)} is not of "
                                        f"expected type: {data_type_string(dtype)}")


def _is_integer_in(value: Any, bounds: tuple[int, int]) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and bounds[0] <= value <= bounds[1]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# dtype -> (does a JSON value convert, numpy type of the values as read, numpy type of the tensor)
_CONVERSIONS = {
    types_pb2.DT_FLOAT: (_is_number, np.float64, np.float32),
    types_pb2.DT_DOUBLE: (_is_number, np.float64, np.float64),
    types_pb2.DT_INT32: (lambda v: _is_integer_in(v, _INT32), np.int32, np.int32),
    types_pb2.DT_INT16: (lambda v: _is_integer_in(v, _INT32), np.int32, np.int16),
    types_pb2.DT_INT8: (lambda v: _is_integer_in(v, _INT32), np.int32, np.int8),
    types_pb2.DT_UINT8: (lambda v: _is_integer_in(v, _INT32), np.int32, np.uint8),
    types_pb2.DT_INT64: (lambda v: _is_integer_in(v, _INT64), np.int64, np.int64),
    types_pb2.DT_UINT32: (lambda v: _is_integer_in(v, _UINT32), np.uint32, np.uint32),
    types_pb2.DT_UINT64: (lambda v: _is_integer_in(v, _UINT64), np.uint64, np.uint64),
    types_pb2.DT_BOOL: (lambda v: isinstance(v, bool), np.bool_, np.bool_),
    types_pb2.DT_STRING: (lambda v: isinstance(v, str), object, object),
}


def dense_shape(value: Any) -> list[int]:
    """json_tensor.cc ``GetDenseTensorShape``: each level's length, following the first element."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _check_leaf(value: Any, dtype: int, out: list) -> None:
    if isinstance(value, dict):
        if dtype != types_pb2.DT_STRING:
            raise _type_error(value, dtype)
        out.append(decode_b64_object(value))
        return
    conversion = _CONVERSIONS.get(dtype)
    if conversion is None:
        raise fail("json_conversion_unimplemented",
                   f"Conversion of JSON Value: {debug_json(value)} to type: {data_type_string(dtype)}")
    if not conversion[0](value):
        raise _type_error(value, dtype)
    out.append(value.encode("utf-8", "surrogatepass") if dtype == types_pb2.DT_STRING else value)


def _fill(value: Any, level: int, shape: list[int], dtype: int, out: list) -> None:
    """json_tensor.cc ``FillTensorProto``: the values of ``value`` into ``out``, checking the shape."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise fail("json_invalid_request", f"JSON Value: {debug_json(value)} found at incorrect level: "
                                               f"{level + 1} in the JSON DOM. Expected at level: {rank}")
        _check_leaf(value, dtype, out)
        return
    if level >= rank:
        raise fail("json_invalid_request", f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise fail("json_invalid_request", f"Encountered list at unexpected size: {len(value)} at level: {level} "
                                           f"expected size: {shape[level]}")
    if level == rank - 1:  # the innermost lists: the common case, checked a list at a time
        conversion = _CONVERSIONS.get(dtype)
        if conversion is not None and dtype != types_pb2.DT_STRING and all(map(conversion[0], value)):
            out.extend(value)
            return
    for item in value:
        _fill(item, level + 1, shape, dtype, out)


def _as_numpy(values: list, dtype: int, shape: list[int]) -> np.ndarray:
    if dtype == types_pb2.DT_STRING:
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(shape)
    if dtype not in _CONVERSIONS:  # no values to convert (a JSON conversion would have failed)
        return np.zeros(shape, tf.dtypes.as_dtype(dtype).as_numpy_dtype)
    _, read_as, tensor_type = _CONVERSIONS[dtype]
    with np.errstate(over="ignore"):  # a double beyond float32's range is +-inf, as static_cast<float>
        return np.array(values, dtype=read_as).astype(tensor_type).reshape(shape)


def to_array(value: Any, dtype: int) -> np.ndarray:
    """One JSON tensor as a numpy array of ``dtype`` (a ``DataType`` enum), or TF Serving's error."""
    shape = dense_shape(value)
    values: list = []
    _fill(value, 0, shape, dtype, values)
    return _as_numpy(values, dtype, shape)


def _status_text(exc: ServingError) -> str:
    """absl::Status::ToString: "INVALID_ARGUMENT: <message>"."""
    return f"{exc.code.name}: {exc.message}"


def row_inputs(instances: list, dtypes: Mapping[str, int]) -> dict[str, np.ndarray]:
    """The ``instances`` (row) format (``FillTensorMapFromInstancesList``): one element per batch row,
    objects of named inputs, or plain values when the signature has one input. ``dtypes``: the signature's
    inputs, name -> ``DataType``. An error inside an element is INVALID_ARGUMENT naming the element."""
    names = sorted(dtypes)
    if not isinstance(instances[0], dict) and len(names) > 1:
        raise fail("json_invalid_request", "instances is a plain list, but expecting list of objects as multiple "
                                           "input tensors required as per tensorinfo_map")
    objects = is_named(instances[0])
    values: dict[str, list] = {}
    sizes: dict[str, int] = {}
    shapes: dict[str, list[int]] = {}

    def add(item: Any, name: str) -> None:  # json_tensor.cc AddInstanceItem
        if name not in dtypes:
            raise fail("json_invalid_request", f"JSON object: does not have named input: {name}")
        shape = dense_shape(item)
        out = values.setdefault(name, [])
        before = len(out)
        _fill(item, 0, shape, dtypes[name], out)
        size = len(out) - before
        if name not in sizes:
            sizes[name], shapes[name] = size, shape
        elif sizes[name] != size:
            raise fail("json_invalid_request", f"Expecting tensor size: {sizes[name]} but got: {size}")
        elif shapes[name] != shape:
            raise fail("json_invalid_request",
                       f"Expecting shape {shape_string(shapes[name])} but got: {shape_string(shape)}")

    for number, element in enumerate(instances):
        if objects:
            if not is_named(element):
                raise fail("json_invalid_request", f"Expecting object but got list at item {number} of input list")
            for name, item in element.items():
                try:
                    add(item, name)
                except ServingError as exc:
                    raise fail("json_invalid_request", f"Failed to process element: {number} key: {name} of "
                                                       f"'instances' list. Error: {_status_text(exc)}") from None
            if set(element) != set(names):
                raise fail("json_invalid_request",
                           f"Failed to process element: {number} of 'instances' list. JSON object: "
                           f"{debug_json(element)} keys must be equal to: {','.join(names)}")
        else:
            if is_named(element):
                raise fail("json_invalid_request",
                           f"Expecting value/list but got object at item {number} of input list")
            try:
                add(element, names[0])
            except ServingError as exc:
                raise fail("json_invalid_request", f"Failed to process element: {number} of 'instances' list. "
                                                   f"Error: {_status_text(exc)}") from None
    return {name: _as_numpy(values[name], dtypes[name], [len(instances)] + shapes[name]) for name in values}


def columnar_inputs(inputs: Any, dtypes: Mapping[str, int]) -> dict[str, np.ndarray]:
    """The ``inputs`` (columnar) format (``FillTensorMapFromInputsMap``): an object of named tensors (keys
    that are not inputs are ignored), or one tensor when the signature has one input."""
    names = sorted(dtypes)
    if not isinstance(inputs, dict) or is_b64(inputs):
        if len(names) > 1:
            raise fail("json_invalid_request", "inputs is a plain value/list, but expecting an object as multiple "
                                               "input tensors required as per tensorinfo_map")
        return {names[0]: to_array(inputs, dtypes[names[0]])}
    arrays = {}
    for name in names:
        if name not in inputs:
            raise fail("json_invalid_request", f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = to_array(inputs[name], dtypes[name])
    return arrays


# -- numpy outputs -> JSON -------------------------------------------------------------------------------

def decimal(value: float, dtype: type = np.float32) -> float:
    """json_tensor.cc ``WriteDecimal``: the float whose text TF Serving writes for ``value``: its 6
    significant digits if they read back as ``value`` (in ``dtype``), else max_digits10 (9 for float32, 17
    for double). JSON readers get exactly the number TF Serving's text gives them."""
    if not math.isfinite(value):
        return float(value)
    text = f"{value:.6g}"
    if dtype(float(text)) != dtype(value):
        text = f"{value:.{9 if dtype is np.float32 else 17}g}"
    return float(text)


def _string_value(name: str, value: bytes) -> str | dict:
    if name.endswith(BYTES_SUFFIX):
        return {"b64": base64.b64encode(value).decode("ascii")}
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:  # JSON cannot carry it as a string; TF Serving would write invalid JSON
        return {"b64": base64.b64encode(value).decode("ascii")}


_WRITABLE_INTS = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint32, np.uint64)


def json_value(name: str, array: np.ndarray) -> Any:
    """An output as nested lists of JSON values, as TF Serving writes each dtype."""
    if array.dtype == object or array.dtype.kind in "SU":
        convert = np.frompyfunc(lambda v: _string_value(name, v if isinstance(v, bytes) else str(v).encode()),
                                1, 1)
        return np.asarray(convert(array), dtype=object).tolist()
    if array.dtype == np.bool_ or any(array.dtype == t for t in _WRITABLE_INTS):
        return array.tolist()
    if array.dtype in (np.float32, np.float64):
        kind = np.float32 if array.dtype == np.float32 else np.float64
        convert = np.frompyfunc(lambda v: decimal(float(v), kind), 1, 1)
        return np.asarray(convert(array), dtype=object).tolist()
    dtype = tf.dtypes.as_dtype(array.dtype).as_datatype_enum if array.dtype != object else types_pb2.DT_STRING
    raise fail("json_output_unwritable", f"Failed to write JSON value for tensor type: {data_type_string(dtype)}")


def row_outputs(outputs: Mapping[str, np.ndarray]) -> list:
    """``predictions`` (``MakeRowFormatJsonFromTensors``): one entry per batch row; objects when there are
    several outputs. A batch of 0 rows is ``[]``."""
    batch = None
    for name, array in outputs.items():
        if array.ndim == 0:
            raise fail("json_invalid_request", f"Tensor name: {name} has no shape information ")
        if batch is not None and array.shape[0] != batch:
            raise fail("json_invalid_request", f"Tensor name: {name} has inconsistent batch size: "
                                               f"{array.shape[0]} expecting: {batch}")
        batch = array.shape[0]
    values = {name: json_value(name, array) for name, array in sorted(outputs.items())}
    if len(values) == 1:
        return next(iter(values.values()))
    return [{name: rows[i] for name, rows in values.items()} for i in range(batch or 0)]


def columnar_outputs(outputs: Mapping[str, np.ndarray]) -> Any:
    """``outputs`` (``MakeColumnarFormatJsonFromTensors``): each output whole; the value itself when there is
    only one, else an object of them."""
    values = {name: json_value(name, array) for name, array in sorted(outputs.items())}
    return next(iter(values.values())) if len(values) == 1 else values


# -- JSON -> tf.Example (:classify, :regress) ------------------------------------------------------------------

_KIND_NAMES = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64", None: "UNKNOWN"}


def _add_to_feature(value: Any, name: str, feature: feature_pb2.Feature) -> None:
    """json_tensor.cc ``AddValueToFeature``: one value; the feature keeps the kind of its first value."""
    def want(kind: str) -> None:
        current = feature.WhichOneof("kind")
        if current is not None and current != kind:
            raise fail("json_invalid_request", f"Unexpected element type in feature: {name} expecting type: "
                                               f"{_KIND_NAMES[current]}")

    if value is None or isinstance(value, list) or (isinstance(value, dict) and not is_b64(value)):
        raise fail("json_invalid_request",
                   f"Feature: {name} has element with unexpected JSON type: {json_type(value)}")
    if isinstance(value, bool):
        want("int64_list")
        feature.int64_list.value.append(1 if value else 0)
    elif isinstance(value, dict):
        want("bytes_list")
        feature.bytes_list.value.append(decode_b64_object(value))
    elif isinstance(value, str):
        want("bytes_list")
        feature.bytes_list.value.append(value.encode("utf-8", "surrogatepass"))
    elif isinstance(value, float) or not _INT64[0] <= value <= _UINT64[1]:
        # rapidjson IsDouble: written with a '.' or an exponent, or an integer past 64 bits
        want("float_list")
        with np.errstate(over="ignore"):
            feature.float_list.value.append(float(np.float32(value)))
    else:
        want("int64_list")
        if value > INT64_MAX:
            raise fail("json_invalid_request", f"Feature: {name} has uint64_t element. Only int64_t is supported.")
        feature.int64_list.value.append(value)


def to_example(value: Any) -> example_pb2.Example:
    """json_tensor.cc ``MakeExampleFromJsonObject``: a JSON object as a ``tf.Example``; each member a
    value or a list of values of one kind (strings or b64, integers or booleans, or decimals)."""
    if not isinstance(value, dict):
        raise fail("json_invalid_request", f"Example must be JSON object but got JSON {json_type(value)}")
    example = example_pb2.Example()
    for name, content in value.items():
        feature = feature_pb2.Feature()
        for item in content if isinstance(content, list) else [content]:
            _add_to_feature(item, name, feature)
        example.features.feature[name].CopyFrom(feature)
    return example
