"""TF Serving's JSON rules as pure functions (serving/rest_json.py): numbers by dtype, Abseil's base64, the
parser, the written decimals, tf.Example features; and serving/errors.py's table and message scrubbing.
The same behaviour through a running server, ours or TF Serving, is in tests/integration/serving."""

from __future__ import annotations

import math
import re
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import types_pb2

from serving.errors import ERRORS, ServingError, fail, grpc_details, scrub
from serving.rest_json import (columnar_inputs, decimal, decode_base64, json_value, parse_json_object, row_inputs,
                               to_array, to_example)

pytestmark = pytest.mark.unit

T = types_pb2


def error(call) -> ServingError:
    with pytest.raises(ServingError) as err:
        call()
    return err.value


# -- item 10: JSON numbers, by dtype, as json_tensor.cc AddValueToTensor ------------------------------------

@pytest.mark.parametrize("value, expected", [
    (16777216, 16777216.0),  # 2**24: exact in float32
    (16777217, 16777216.0),  # rounds to the nearest float32
    (1435774380, 1435774336.0),  # TF Serving's own test case (json_tensor_test.cc FloatTensorWithPrecisionLoss)
    (1435774380.0, 1435774336.0),
    (2 ** 64 - 1, 1.8446744073709552e19),  # an integer too big for int64 is still a number
    (1e39, math.inf), (-1e39, -math.inf),  # beyond float32's range: infinity, as static_cast<float>
    (3.4028235e38, 3.4028234663852886e38),
    (1e-50, 0.0), (0.1, 0.10000000149011612),
])
def test_any_json_number_is_a_float_rounded(value, expected):
    array = to_array([value], T.DT_FLOAT)
    assert array.dtype == np.float32 and array.tolist() == [expected]


def test_nan_and_infinity_are_floats_and_doubles():
    document = parse_json_object(b'{"instances": [NaN, Infinity, -Infinity]}')
    for dtype, np_type in ((T.DT_FLOAT, np.float32), (T.DT_DOUBLE, np.float64)):
        array = to_array(document["instances"], dtype)
        assert array.dtype == np_type and math.isnan(array[0]) and array[1:].tolist() == [math.inf, -math.inf]


def test_doubles_take_integers_too():
    assert to_array([2 ** 53 + 1, 1.5], T.DT_DOUBLE).tolist() == [9007199254740992.0, 1.5]


@pytest.mark.parametrize("dtype, values, expected, np_type", [
    (T.DT_INT32, [2 ** 31 - 1, -2 ** 31], [2 ** 31 - 1, -2 ** 31], np.int32),
    (T.DT_INT16, [40000, -1], [-25536, -1], np.int16),  # int_val narrowed as TensorFlow narrows it: wraps
    (T.DT_INT8, [300, -129, 5], [44, 127, 5], np.int8),
    (T.DT_UINT8, [-1, 256, 255], [255, 0, 255], np.uint8),
    (T.DT_INT64, [2 ** 63 - 1, -2 ** 63], [2 ** 63 - 1, -2 ** 63], np.int64),
    (T.DT_UINT32, [2 ** 32 - 1, 0], [2 ** 32 - 1, 0], np.uint32),
    (T.DT_UINT64, [2 ** 64 - 1], [2 ** 64 - 1], np.uint64),
    (T.DT_BOOL, [True, False], [True, False], np.bool_),
])
def test_integers_and_bools_within_their_json_range(dtype, values, expected, np_type):
    array = to_array(values, dtype)
    assert array.dtype == np_type and array.tolist() == expected


@pytest.mark.parametrize("dtype, value, name", [
    (T.DT_INT32, 2 ** 31, "int32"),  # not IsInt(): beyond int32
    (T.DT_INT8, 2 ** 31, "int8"),  # the int32 range is checked, not the int8 one
    (T.DT_INT32, 1.0, "int32"),  # a decimal is not an integer, even a whole one
    (T.DT_INT64, 2 ** 63, "int64"),
    (T.DT_INT64, 2 ** 64, "int64"),  # past 64 bits: a double
    (T.DT_UINT32, -1, "uint32"), (T.DT_UINT32, 2 ** 32, "uint32"),
    (T.DT_UINT64, -1, "uint64"),
    (T.DT_BOOL, 1, "bool"), (T.DT_BOOL, "true", "bool"),
    (T.DT_FLOAT, True, "float"), (T.DT_FLOAT, "1.5", "float"), (T.DT_FLOAT, None, "float"),
    (T.DT_INT64, True, "int64"),
    (T.DT_STRING, 1, "string"),
])
def test_values_a_dtype_does_not_take_are_invalid_argument(dtype, value, name):
    err = error(lambda: to_array([value], dtype))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert re.fullmatch(rf"JSON Value: .* Type: (Number|True|False|String|Null) is not of expected type: {name}",
                        err.message), err.message


@pytest.mark.parametrize("dtype, name", [(T.DT_HALF, "half"), (T.DT_BFLOAT16, "bfloat16"), (T.DT_UINT16, "uint16"),
                                         (T.DT_COMPLEX64, "complex64")])
def test_dtypes_json_cannot_express_are_unimplemented(dtype, name):
    err = error(lambda: to_array([1.5], dtype))
    assert (err.code, err.message) == (grpc.StatusCode.UNIMPLEMENTED, f"Conversion of JSON Value: 1.5 to type: {name}")
    assert to_array([], dtype).shape == (0,)  # no value, nothing to convert


def test_in_the_row_format_every_element_error_is_invalid_argument_naming_the_element():
    err = error(lambda: row_inputs([1.0, 2.0], {"x": T.DT_HALF}))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.message == "Failed to process element: 0 of 'instances' list. Error: UNIMPLEMENTED: Conversion of " \
                          "JSON Value: 1.0 to type: half"


def test_shapes_follow_the_first_element_and_every_list_must_match():
    assert to_array([[1, 2], [3, 4]], T.DT_INT64).shape == (2, 2)
    assert to_array(7, T.DT_INT64).shape == ()
    assert to_array([[], []], T.DT_INT64).shape == (2, 0)
    assert error(lambda: to_array([[1, 2], [3]], T.DT_INT64)).message == \
        "Encountered list at unexpected size: 1 at level: 1 expected size: 2"
    assert error(lambda: to_array([[1], 2], T.DT_INT64)).message == \
        "JSON Value: 2 found at incorrect level: 2 in the JSON DOM. Expected at level: 2"
    assert error(lambda: to_array([1, [2]], T.DT_INT64)).message == \
        "Encountered list at unexpected level: 1 expected < 1"


def test_row_format_batches_instances_and_checks_each_against_the_first():
    arrays = row_inputs([{"a": [1, 2], "b": "x"}, {"a": [3, 4], "b": "y"}], {"a": T.DT_INT64, "b": T.DT_STRING})
    assert arrays["a"].shape == (2, 2) and arrays["b"].tolist() == [b"x", b"y"]
    assert "Expecting shape [2] but got: [1,2]" in error(
        lambda: row_inputs([[1, 2], [[3, 4]]], {"a": T.DT_INT64})).message
    assert error(lambda: row_inputs([{"a": 1}, 2], {"a": T.DT_INT64})).message == \
        "Expecting object but got list at item 1 of input list"
    assert error(lambda: row_inputs([1, {"a": 2}], {"a": T.DT_INT64})).message == \
        "Expecting value/list but got object at item 1 of input list"


def test_columnar_format_ignores_keys_that_are_not_inputs():
    arrays = columnar_inputs({"a": [1.0], "not_an_input": "x"}, {"a": T.DT_FLOAT})
    assert list(arrays) == ["a"] and arrays["a"].tolist() == [1.0]


# -- the parser: rapidjson's rules ----------------------------------------------------------------------------

def test_the_parser_reads_numbers_as_rapidjson_does():
    document = parse_json_object(b'{"a": 18446744073709551616, "b": -9223372036854775809, "c": 18446744073709551615}')
    assert document["a"] == 1.8446744073709552e19 and isinstance(document["a"], float)  # beyond 64 bits: double
    assert isinstance(document["b"], float) and document["c"] == 2 ** 64 - 1
    for body in (b'{"a": 1e400}', b'{"a": -1e309}', b'{"a": ' + b"9" * 400 + b"}"):
        err = error(lambda: parse_json_object(body))
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT
        assert err.message == "JSON Parse error: Number too big to be stored in double. at offset: 6"


def test_the_parser_stops_after_the_top_level_value():
    assert parse_json_object(b'  {"a": 1} trailing [garbage') == {"a": 1}


@pytest.mark.parametrize("body, message", [
    (b"", "JSON Parse error: The document is empty"),
    (b"   ", "JSON Parse error: The document is empty. at offset: 3"),
    (b"{", "JSON Parse error: Missing a name for object member. at offset: 1"),
    (b'{"a" 1}', "JSON Parse error: Missing a colon after a name of object member. at offset: 5"),
    (b'{"a": [1 2]}', "JSON Parse error: Missing a comma or ']' after an array element. at offset: 9"),
    (b'{"a": 1 "b": 2}', "JSON Parse error: Missing a comma or '}' after an object member. at offset: 8"),
    (b'{"a": tru}', "JSON Parse error: Invalid value. at offset: 6"),
    (b"[1, 2]", "JSON Value: [1, 2] Is not object"),
])
def test_parse_errors_are_rapidjsons(body, message):
    err = error(lambda: parse_json_object(body))
    assert (err.code, err.message) == (grpc.StatusCode.INVALID_ARGUMENT, message)


# -- item 11: base64 as Abseil's Base64Unescape ------------------------------------------------------------------

@pytest.mark.parametrize("text, decoded", [
    ("aGVsbG8", b"hello"),  # no padding: accepted
    ("aGVsbG8=", b"hello"),
    ("aGk", b"hi"), ("aGk=", b"hi"), ("aG", b"h"), ("aG==", b"h"),
    ("aGk.", b"hi"), ("aG..", b"h"),  # '.' pads too
    ("aGVs bG8=\n", b"hello"), (" a G k = ", b"hi"), ("aGVsbG8=\t\r\n", b"hello"),  # ASCII whitespace anywhere
    ("", b""),
    ("aGVsbG9=", b"hello"),  # the bits below the last byte are not checked
    ("+/+/", b"\xfb\xff\xbf"),
])
def test_base64_that_abseil_decodes(text, decoded):
    assert decode_base64(text) == decoded


@pytest.mark.parametrize("text", [
    "-_-_", "aGk_",  # the URL-safe alphabet is another function in Abseil
    "aGVsbG8==", "aG=", "aGVs=",  # padding present but not the right amount
    "a", "a===", "aGVsb",  # a lone 6-bit tail
    "aGk=aGk=", "aG=k",  # data after padding
    "====", "aGk\x00", "aGé", "aGk!",
])
def test_base64_that_abseil_refuses(text):
    assert decode_base64(text) is None


def test_a_b64_object_that_does_not_decode_is_invalid_argument():
    err = error(lambda: to_array([{"b64": "aGVsbG8=="}], T.DT_STRING))
    assert (err.code, err.message) == (grpc.StatusCode.INVALID_ARGUMENT, "Unable to base64 decode")
    assert to_array([{"b64": "aGVsbG8"}], T.DT_STRING).tolist() == [b"hello"]
    assert error(lambda: to_array([{"b64": "aGk", "x": 1}], T.DT_STRING)).message.endswith(
        "not formatted correctly for base64 data")


# -- outputs: json_tensor.cc WriteDecimal ----------------------------------------------------------------------------

@pytest.mark.parametrize("value, text", [
    (0.1, 0.1), (3.0, 3.0), (1e-5, 1e-05), (16777216.0, 16777216.0),
    (123456792.0, 123456792.0),  # 6 digits do not read back: 9 ("%.9g"), not the shortest 123456790.0
    (0.3333333432674408, 0.333333343),
])
def test_floats_are_written_as_tf_serving_writes_them(value, text):
    assert json_value("y", np.array([value], np.float32)) == [text]


def test_outputs_json_cannot_express_are_refused():
    for dtype, name in ((np.float16, "half"), (np.uint16, "uint16")):
        err = error(lambda: json_value("y", np.array([1], dtype)))
        assert (err.code, err.message) == (grpc.StatusCode.INVALID_ARGUMENT,
                                           f"Failed to write JSON value for tensor type: {name}")
    assert json_value("y", np.array([1, 2], np.uint8)) == [1, 2]
    assert decimal(0.1) == 0.1 and decimal(math.inf) == math.inf


# -- tf.Example features: json_tensor.cc AddValueToFeature ---------------------------------------------------------

def test_example_features_take_the_kind_of_their_first_value():
    example = to_example({"f": 2.5, "big": 2 ** 40, "flag": True, "s": ["a", {"b64": "aGk"}], "none": [],
                          "huge": 1e39, "past64": 2 ** 64})
    feature = example.features.feature
    assert list(feature["f"].float_list.value) == [2.5]
    assert list(feature["big"].int64_list.value) == [2 ** 40] and list(feature["flag"].int64_list.value) == [1]
    assert list(feature["s"].bytes_list.value) == [b"a", b"hi"]
    assert feature["none"].WhichOneof("kind") is None
    assert list(feature["huge"].float_list.value) == [math.inf]  # no precision check: rounded, as TF Serving
    assert feature["past64"].WhichOneof("kind") == "float_list"  # rapidjson reads it as a double
    assert error(lambda: to_example({"f": [1.0, "x"]})).message == \
        "Unexpected element type in feature: f expecting type: float"
    assert error(lambda: to_example({"u": 2 ** 63})).message == \
        "Feature: u has uint64_t element. Only int64_t is supported."
    assert error(lambda: to_example({"n": None})).message == "Feature: n has element with unexpected JSON type: Null"
    assert error(lambda: to_example([1])).message == "Example must be JSON object but got JSON Array"


# -- errors: one table, scrubbed messages -------------------------------------------------------------------------------

SERVING = Path(__file__).resolve().parents[2] / "serving"


def test_every_error_raised_is_a_row_of_the_table_and_every_row_is_raised():
    raised, named = set(), set()
    for path in SERVING.glob("*.py"):
        if path.name != "errors.py":
            text = path.read_text()
            raised |= set(re.findall(r'fail\(\s*"([a-z_0-9]+)"', text))
            named |= set(re.findall(r'"([a-z_0-9]+)"', text)) & set(ERRORS)  # rows passed on, e.g. to signature_def
    assert raised <= set(ERRORS), raised - set(ERRORS)
    raised |= named
    by_grpc_or_aiohttp = {"message_too_large", "request_body_too_large"}  # raised by the transport, not by us
    assert set(ERRORS) - raised == by_grpc_or_aiohttp
    with pytest.raises(KeyError):
        fail("not_a_row", "x")
    assert fail("model_op_failed", "m", grpc.StatusCode.OUT_OF_RANGE).code == grpc.StatusCode.OUT_OF_RANGE
    assert fail("unknown_label", "m", grpc.StatusCode.OK).code == grpc.StatusCode.INVALID_ARGUMENT


def test_tensorflows_python_stack_is_scrubbed_from_op_errors():
    message = ('Graph execution error:\n\nDetected at node ParseExample/ParseExampleV2 defined at (most recent call '
               'last):\n  File "/srv/app/serving/servable.py", line 88, in run\n    result = function(**inputs)\n'
               '  File "/srv/app/.venv/lib/python3.11/site-packages/tensorflow/x.py", line 3, in f\n\n'
               "Name: <unknown>, Key: x, Index: 0.  Data types don't match. Data type: int64 but expected type: "
               "float\n\t [[{{node ParseExample/ParseExampleV2}}]] [Op:__inference_pruned_54]")
    assert scrub(message) == ("Name: <unknown>, Key: x, Index: 0.  Data types don't match. Data type: int64 but "
                              "expected type: float\n\t [[{{node ParseExample/ParseExampleV2}}]]")
    assert scrub("Graph execution error:\n\nDetected at node x defined at (most recent call last):\n"
                 "<stack traces unavailable>\nIncompatible shapes: [2] vs. [3]") == "Incompatible shapes: [2] vs. [3]"
    assert "/srv" not in scrub('oops File "/srv/app/x.py", line 3, in f and /srv/app/serving/rest.py')


def test_grpc_messages_are_cut_as_tf_serving_cuts_them():
    assert grpc_details("x" * 1024) == "x" * 1024
    assert grpc_details("x" * 1025) == "x" * 1024 + "...TRUNCATED"


@pytest.mark.parametrize("array", [np.array([1.5, -2.0], np.float32), np.array([[1, 2]], np.int64),
                                   np.array([0.1], np.float64), np.array([True, False]), np.array([-3, 4], np.int8),
                                   np.array([7], np.uint16), np.array([2 ** 40], np.uint64),
                                   np.array([1.5], np.float16), np.array([b"a", b"\xff"], dtype=object)])
def test_outputs_are_value_fields_by_default_and_tensor_content_on_request(array):
    """Tensor::AsProtoField (TF Serving's default) or AsProtoTensorContent
    (--enable_serialization_as_tensor_content); TensorFlow reads both back to the same array."""
    import tensorflow as tf

    from serving.tensors import encode_output

    fields, content = encode_output(array), encode_output(array, tensor_content=True)
    assert not fields.tensor_content
    assert bool(content.tensor_content) == (array.dtype != object)
    for proto in (fields, content):
        assert tf.make_ndarray(proto).tolist() == array.tolist() and tf.make_ndarray(proto).dtype == array.dtype
