"""TF Serving's REST JSON, both ways: values to numpy by a signature's dtypes, numpy to JSON, and
``tf.Example`` features from JSON (for ``:classify`` and ``:regress``).

Split from :mod:`serving.rest`, which routes requests; these are pure functions of their arguments.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Mapping

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.example import example_pb2, feature_pb2

from serving.errors import ServingError, invalid_argument
from serving.tensors import check_names, dtype_name

MAX_RANK = 64  # deeper JSON nesting is refused before it can exhaust the stack
BYTES_SUFFIX = "_bytes"
INT64_MAX = (1 << 63) - 1


def short_json(value: Any, limit: int = 200) -> str:
    """A value as JSON for an error message, cut at ``limit`` characters."""
    text = json.dumps(value) if not isinstance(value, bytes) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."

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
        raise invalid_argument(f"{where}: Unable to base64 decode {short_json(value)}") from None


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
    return invalid_argument(f"input tensor {name!r}: JSON Value: {short_json(value)} Type: {kind} is not of "
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
            raise invalid_argument(f"Expecting object but got {short_json(item, 40)} at item {number} of "
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


def _feature_kind(name: str, value: Any) -> str:
    if value is None or isinstance(value, list) or (isinstance(value, dict) and not is_b64(value)):
        raise invalid_argument(f"Feature: {name} has element with unexpected JSON type: {short_json(value, 40)}")
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
        raise invalid_argument(f"{where}: Example must be JSON object but got {short_json(value, 40)}")
    example = example_pb2.Example()
    for name, content in value.items():
        example.features.feature[name].CopyFrom(to_feature(name, content))
    return example
