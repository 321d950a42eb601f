"""A request's input tensors, checked against a signature as TF Serving checks them, then as numpy arrays.

The checks and their order are TF Serving's Predict (servables/tensorflow/predict_util.cc, and TensorFlow's
tensorflow/cc/saved_model/util.cc ``GetInputValues`` and session feed), so a bad request gets the same
code and message from this server as from ``tensorflow_model_server``:

1. :func:`check_input_names`: as many inputs as the signature has ("input size does not match
   signature", naming what was sent extra and what is missing), each an alias of the signature;
2. :func:`parse_tensor`: each TensorProto is a tensor ("tensor parsing error: <alias>"): a concrete dtype,
   dims >= 0, ``tensor_content`` of exactly the shape's size. As TensorFlow's ``Tensor::FromProto``, a
   value list longer than the shape is cut and a shorter one is filled with its last value (up to
   :data:`MAX_FILL_ELEMENTS`, beyond which this server refuses rather than allocate: the shape's dims are
   untrusted int64s, ``[1e6, 1e6]`` is a terabyte);
3. :func:`check_dtypes`: the session's feed check, "Expects arg[i] to be float but string is provided",
   ``i`` being the input's place among the feed (tensor) names in sorted order, as the session numbers them;
4. :func:`check_shapes`: a shape the signature cannot take. TF Serving has no such check (the graph's ops
   fail, or not); a TF2 concrete function refuses the call, so this server refuses it first, as
   INVALID_ARGUMENT naming the tensor.

Every failure is INVALID_ARGUMENT (rows of :data:`serving.errors.ERRORS`).
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2

from serving.errors import fail

# The largest tensor a short value list may be expanded to; a real request sends its values.
MAX_FILL_ELEMENTS = 1 << 24

# dtype -> (the repeated field that holds its values, how many field entries make one element).
_VALUE_FIELDS: dict[int, tuple[str, int]] = {
    types_pb2.DT_FLOAT: ("float_val", 1),
    types_pb2.DT_DOUBLE: ("double_val", 1),
    types_pb2.DT_INT8: ("int_val", 1),
    types_pb2.DT_INT16: ("int_val", 1),
    types_pb2.DT_INT32: ("int_val", 1),
    types_pb2.DT_UINT8: ("int_val", 1),
    types_pb2.DT_UINT16: ("int_val", 1),
    types_pb2.DT_INT64: ("int64_val", 1),
    types_pb2.DT_UINT32: ("uint32_val", 1),
    types_pb2.DT_UINT64: ("uint64_val", 1),
    types_pb2.DT_HALF: ("half_val", 1),
    types_pb2.DT_BFLOAT16: ("half_val", 1),
    types_pb2.DT_BOOL: ("bool_val", 1),
    types_pb2.DT_STRING: ("string_val", 1),
    types_pb2.DT_COMPLEX64: ("scomplex_val", 2),
    types_pb2.DT_COMPLEX128: ("dcomplex_val", 2),
}


def dtype_name(dtype: int) -> str:
    """The enum name, ``DT_FLOAT`` (TensorFlow's ``DataType_Name``)."""
    return types_pb2.DataType.Name(dtype) if dtype in types_pb2.DataType.values() else f"dtype {dtype}"


def data_type_string(dtype: int) -> str:
    """TensorFlow's ``DataTypeString``: ``float``, ``int64``, ``string``, ``half``..."""
    name = dtype_name(dtype)
    return name[3:].lower() if name.startswith("DT_") else name


def shape_string(shape) -> str:
    """TensorFlow's ``TensorShape::DebugString``: ``[3,2]``."""
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


def _keys(names) -> str:
    return ",".join(sorted(names))


def check_input_names(given: set[str], signature: meta_graph_pb2.SignatureDef) -> None:
    """predict_util.cc ``VerifyRequestInputsSize`` then util.cc ``GetInputValues``' alias check. Inputs the
    signature has a default for may be left out."""
    expected = set(signature.inputs)
    if len(given) > len(expected) or (len(given) < len(expected) and not signature.defaults):
        raise fail("input_size_mismatch",
                   f"input size does not match signature: {len(given)}!={len(expected)} len({{{_keys(given)}}}) != "
                   f"len({{{_keys(expected)}}}). Sent extra: {{{_keys(given - expected)}}}. Missing but required: "
                   f"{{{_keys(expected - given)}}}.")
    for alias in sorted(expected):
        if alias not in given and alias not in signature.defaults:
            raise fail("input_alias_not_found",
                       f"Signature input alias: {alias}(feed name: {signature.inputs[alias].name}) not found in "
                       f"request and no default value provided. Inputs expected to be in the request "
                       f"{{{_keys(given)}}}, or default input alias set: {_keys(signature.defaults)}")
    if given - expected:
        raise fail("input_alias_not_found",
                   f"Inputs contains invalid name. Used request inputs: {_keys(given & expected)}, request input: "
                   f"{_keys(given)}")


def _parse_error(alias: str):
    return fail("tensor_parsing_error", f"tensor parsing error: {alias}")


def parse_tensor(alias: str, proto: tensor_pb2.TensorProto) -> np.ndarray:
    """``Tensor::FromProto``: the proto as an array of its own dtype, or "tensor parsing error: <alias>"."""
    if proto.dtype not in _VALUE_FIELDS or proto.tensor_shape.unknown_rank:
        raise _parse_error(alias)
    shape = tuple(dim.size for dim in proto.tensor_shape.dim)
    if any(size < 0 for size in shape):
        raise _parse_error(alias)
    count = math.prod(shape)
    field, per_element = _VALUE_FIELDS[proto.dtype]
    if proto.tensor_content:
        if proto.dtype == types_pb2.DT_STRING or \
                len(proto.tensor_content) != count * tf.dtypes.as_dtype(proto.dtype).size:
            raise _parse_error(alias)
    else:
        elements = len(getattr(proto, field)) // per_element
        if elements < count and count > MAX_FILL_ELEMENTS:
            raise fail("tensor_parsing_error",
                       f"tensor parsing error: {alias}: {elements} values for shape {shape_string(shape)} "
                       f"({count} elements); filling more than {MAX_FILL_ELEMENTS} elements from a short value "
                       f"list is refused")
        if elements > count:  # TensorFlow reads the first `count` and ignores the rest
            trimmed = tensor_pb2.TensorProto()
            trimmed.CopyFrom(proto)
            values = getattr(trimmed, field)
            del values[count * per_element:]
            proto = trimmed
    try:
        return to_array(proto, shape)
    except (TypeError, ValueError):
        raise _parse_error(alias) from None


def check_dtypes(arrays: Mapping[str, np.ndarray], signature: meta_graph_pb2.SignatureDef) -> None:
    """The session's feed check: each input's dtype is the signature's; the first mismatch, in the order
    of the sorted feed (tensor) names, is "Expects arg[i] to be <dtype> but <dtype> is provided"."""
    feeds = sorted((signature.inputs[alias].name, alias) for alias in arrays)
    for index, (_, alias) in enumerate(feeds):
        want = signature.inputs[alias].dtype
        have = array_dtype(arrays[alias]).as_datatype_enum
        if want != have:
            raise fail("input_dtype_mismatch", f"Expects arg[{index}] to be {data_type_string(want)} but "
                                               f"{data_type_string(have)} is provided")


def check_shapes(arrays: Mapping[str, np.ndarray], specs: Mapping[str, tf.TensorSpec]) -> None:
    """Each input's shape is one the signature's TensorSpec takes (step 4 of the module docstring)."""
    for alias in sorted(arrays):
        shape = arrays[alias].shape
        spec = specs[alias]
        if not spec.shape.is_compatible_with(shape):
            raise fail("input_shape_mismatch",
                       f"input tensor {alias!r} has shape {shape_string(shape)}, which the signature's "
                       f"{spec.shape.as_list() if spec.shape.rank is not None else 'shape'} cannot take")


_NUMPY = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64, types_pb2.DT_INT32: np.int32,
          types_pb2.DT_INT64: np.int64, types_pb2.DT_BOOL: np.bool_}
# Types held in int_val (an int32 field): TensorFlow narrows each value to the type, wrapping around.
_NARROW = {types_pb2.DT_INT8: np.int8, types_pb2.DT_INT16: np.int16, types_pb2.DT_UINT8: np.uint8,
           types_pb2.DT_UINT16: np.uint16}


def to_array(proto: tensor_pb2.TensorProto, shape: tuple[int, ...]) -> np.ndarray:
    """A checked proto as numpy, read straight from its fields for the common dtypes.

    ``make_ndarray`` costs about 17 µs a tensor in TensorFlow's Python; the requests this server sees are
    mostly a handful of one-row tensors, where that was a fifth of a request's CPU. Short value lists (which
    TensorFlow fills with the last value) and other dtypes still go through ``make_ndarray``.
    """
    count = math.prod(shape)
    if proto.dtype == types_pb2.DT_STRING:
        if len(proto.string_val) == count:
            return np.array(list(proto.string_val), dtype=object).reshape(shape)
        return tf.make_ndarray(proto)
    if proto.dtype in _NARROW and not proto.tensor_content and len(proto.int_val) == count:
        return np.array(proto.int_val, dtype=np.int64).astype(_NARROW[proto.dtype]).reshape(shape)
    np_type = _NUMPY.get(proto.dtype)
    if np_type is None:
        return tf.make_ndarray(proto)
    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype=np_type).reshape(shape)
    values = getattr(proto, _VALUE_FIELDS[proto.dtype][0])
    if len(values) != count:
        return tf.make_ndarray(proto)
    return np.fromiter(values, dtype=np_type, count=count).reshape(shape)


def array_dtype(array: np.ndarray) -> tf.DType:
    """The TF dtype of a numpy array; object and bytes/str arrays are strings, as TF treats them."""
    if array.dtype == object or array.dtype.kind in "SU":
        return tf.string
    return tf.dtypes.as_dtype(array.dtype)


def encode_output(array: np.ndarray, tensor_content: bool = False) -> tensor_pb2.TensorProto:
    """``array`` as TF Serving writes a Predict output: ``Tensor::AsProtoField`` (the typed value fields,
    TF Serving's default) or, with ``tensor_content`` (``--enable_serialization_as_tensor_content``),
    ``AsProtoTensorContent``."""
    if array.dtype == object or array.dtype.kind in "SU":  # strings: string_val either way
        return tf.make_tensor_proto(array)
    dtype = tf.dtypes.as_dtype(array.dtype)
    proto = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum)
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    if tensor_content:
        proto.tensor_content = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        return proto
    flat = array.reshape(-1)
    enum = dtype.as_datatype_enum
    if enum in (types_pb2.DT_HALF, types_pb2.DT_BFLOAT16):
        proto.half_val.extend(flat.view(np.uint16).astype(np.int32).tolist())
    elif enum in (types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128):
        field = proto.scomplex_val if enum == types_pb2.DT_COMPLEX64 else proto.dcomplex_val
        field.extend(np.stack([flat.real, flat.imag], axis=-1).reshape(-1).tolist())
    elif enum in _VALUE_FIELDS:
        getattr(proto, _VALUE_FIELDS[enum][0]).extend(flat.tolist())
    else:
        return tf.make_tensor_proto(array)
    return proto
