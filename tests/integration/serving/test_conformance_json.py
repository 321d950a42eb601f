"""TF Serving's REST JSON conversions through the server (issue 13, items 10 and 11): a JSON value for each
input dtype (the ``echo_<dtype>`` signatures of serving.testing.export_signatures_model give it back), base64
as Abseil decodes it, and the same rules in tf.Example features."""

from __future__ import annotations

import base64
import math

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2

from serving.testing import CLASSIFY_SIGNATURE, standin_row
from tests.integration.serving.conftest import MODEL, SIGS, stubs

pytestmark = pytest.mark.integration


def echo(server, dtype: str, body: dict) -> requests.Response:
    return requests.post(f"{server.rest}/v1/models/{SIGS}:predict", json={"signature_name": f"echo_{dtype}", **body},
                         timeout=60)


def echoed(server, dtype: str, values: list, key: str = "instances") -> list:
    response = echo(server, dtype, {key: values})
    assert response.status_code == 200, response.text
    return response.json()["predictions" if key == "instances" else "outputs"]


def refused(server, dtype: str, values: list, key: str = "instances") -> tuple[int, str]:
    response = echo(server, dtype, {key: values})
    assert response.status_code != 200, response.text
    return response.status_code, response.json()["error"]


# -- item 10: JSON numbers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("value, float32, written", [
    (16777216, 16777216.0, 16777216.0),  # the inputs: rounded to float32, not refused
    (1435774380, 1435774336.0, 1435774340.0),  # written "1.43577434e+09": 9 digits, as WriteDecimal writes it
    (16777217, 16777216.0, 16777216.0),
    (1435774380.0, 1435774336.0, 1435774340.0),
    (18446744073709551615, 1.8446744073709552e19, 1.84467441e19),
    (1e39, math.inf, math.inf),  # beyond float32: infinity
    (-1e39, -math.inf, -math.inf),
    (0.1, 0.10000000149011612, 0.1),
])
def test_any_json_number_is_taken_by_a_float_input(deployed, value, float32, written):
    for key in ("instances", "inputs"):
        got = echoed(deployed, "float", [value], key)
        assert got == [written] and np.float32(got[0]) == np.float32(float32)


def test_a_double_input_takes_integers_and_nan(deployed):
    response = requests.post(f"{deployed.rest}/v1/models/{SIGS}:predict", timeout=60,
                             data=b'{"signature_name": "echo_double", "instances": [1435774380, 9007199254740993, '
                                  b'NaN, -Infinity, 2.5e-300]}')
    assert response.status_code == 200, response.text
    values = response.json()["predictions"]
    assert values[:2] == [1435774380.0, 9007199254740992.0] and math.isnan(values[2])
    assert values[3:] == [-math.inf, 2.5e-300]


@pytest.mark.parametrize("dtype, values, expected", [
    ("int8", [300, -129, 127], [44, 127, 127]),  # int32-range JSON integers, narrowed as TensorFlow narrows int_val
    ("uint8", [-1, 256], [255, 0]),
    ("int16", [40000], [-25536]),
    ("int32", [2147483647, -2147483648], [2147483647, -2147483648]),
    ("int64", [9223372036854775807, -9223372036854775808], [9223372036854775807, -9223372036854775808]),
    ("uint32", [4294967295], [4294967295]),
    ("uint64", [18446744073709551615], [18446744073709551615]),
    ("bool", [True, False], [True, False]),
    ("string", ["taxi", ""], ["taxi", ""]),
])
def test_integers_bools_and_strings_in_their_range(deployed, dtype, values, expected):
    assert echoed(deployed, dtype, values) == expected


@pytest.mark.parametrize("dtype, value, type_name", [
    ("int8", 2147483648, "int8"), ("int32", 2147483648, "int32"), ("int32", 1.0, "int32"),
    ("int64", 9223372036854775808, "int64"), ("uint32", -1, "uint32"), ("uint32", 4294967296, "uint32"),
    ("uint64", -1, "uint64"), ("uint64", 18446744073709551616, "uint64"),
    ("bool", 1, "bool"), ("float", True, "float"), ("float", "1.5", "float"), ("double", None, "double"),
    ("string", 1, "string"),
])
def test_values_out_of_a_dtypes_json_range_are_400(deployed, dtype, value, type_name):
    status, message = refused(deployed, dtype, [value])
    assert status == 400 and f"is not of expected type: {type_name}" in message


@pytest.mark.parametrize("dtype", ["half", "bfloat16", "uint16"])
def test_dtypes_json_cannot_express_are_501_in_inputs_and_400_in_instances(deployed, dtype):
    """AddValueToTensor has no conversion for them: UNIMPLEMENTED, which the row format wraps in INVALID_ARGUMENT."""
    assert refused(deployed, dtype, [1], "inputs") == (501, f"Conversion of JSON Value: 1 to type: {dtype}")
    status, message = refused(deployed, dtype, [1])
    assert status == 400 and message == f"Failed to process element: 0 of 'instances' list. Error: UNIMPLEMENTED: " \
                                        f"Conversion of JSON Value: 1 to type: {dtype}"


def test_outputs_json_cannot_express_are_400(deployed):
    for signature, value, name in (("to_half", 1.5, "half"), ("to_uint16", 7, "uint16")):
        response = requests.post(f"{deployed.rest}/v1/models/{SIGS}:predict", timeout=60,
                                 json={"signature_name": signature, "instances": [value]})
        assert (response.status_code, response.json()) == (400, {
            "error": f"Failed to write JSON value for tensor type: {name}"})


def test_grpc_int_val_beyond_a_small_dtype_wraps_around(deployed):
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = SIGS, "echo_uint8"
    request.inputs["x"].CopyFrom(tensor_pb2.TensorProto(dtype=types_pb2.DT_UINT8, int_val=[-1, 256, 7]))
    request.inputs["x"].tensor_shape.dim.add(size=3)
    response = stubs(deployed)[0].Predict(request, timeout=60)
    assert tf.make_ndarray(response.outputs["y"]).tolist() == [255, 0, 7]


def test_the_body_ends_with_its_top_level_value_and_numbers_must_fit_a_double(deployed):
    url = f"{deployed.rest}/v1/models/{SIGS}:predict"
    response = requests.post(url, data=b'{"signature_name": "echo_float", "instances": [2.5]} and more', timeout=60)
    assert response.status_code == 200 and response.json() == {"predictions": [2.5]}
    response = requests.post(url, data=b'{"signature_name": "echo_double", "instances": [1e400]}', timeout=60)
    assert response.status_code == 400 and response.json()["error"].startswith(
        "JSON Parse error: Number too big to be stored in double.")


def test_example_features_take_any_number_too(deployed):
    """TF Serving dropped the precision check from tf.Example features as well: 1e39 is a float feature of inf,
    -16777217.0 one of -16777216."""
    url = f"{deployed.rest}/v1/models/{SIGS}:classify"
    response = requests.post(url, json={"examples": [{"x": 1e39}, {"x": -16777217.0}]}, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json() == {"results": [[["no", 0.0], ["yes", 1.0]], [["no", 1.0], ["yes", 0.0]]]}


# -- item 11: base64 -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoded", [
    "aGVsbG8",  # the input: no padding
    "aGVsbG8=", "aGVs bG8=", "aGVsbG8=\n", "aGVsbG8.", " a G V s b G 8 ",
])
def test_base64_abseil_decodes(deployed, encoded):
    assert echoed(deployed, "string", [{"b64": encoded}]) == ["hello"]
    assert echoed(deployed, "bytes", [{"b64": encoded}]) == [{"b64": "aGVsbG8="}]  # written padded


@pytest.mark.parametrize("encoded", ["aGVsbG8==", "aG=", "-_-_", "aGk_", "aGVsb", "aGk=aGk=", "aGVsbG8!"])
def test_base64_abseil_refuses(deployed, encoded):
    status, message = refused(deployed, "string", [{"b64": encoded}])
    assert status == 400 and message == "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: " \
                                        "Unable to base64 decode"
    assert refused(deployed, "string", [{"b64": encoded}], "inputs") == (400, "Unable to base64 decode")


def test_base64_in_example_features_and_named_inputs(deployed):
    plain = requests.post(f"{deployed.rest}/v1/models/{MODEL}/versions/1:classify", timeout=60, json={
        "signature_name": CLASSIFY_SIGNATURE, "examples": [{**standin_row(), "company": "Sun Taxi"}]})
    unpadded = base64.b64encode(b"Sun Taxi").decode().rstrip("=")
    assert unpadded == "U3VuIFRheGk"
    encoded = requests.post(f"{deployed.rest}/v1/models/{MODEL}/versions/1:classify", timeout=60, json={
        "signature_name": CLASSIFY_SIGNATURE, "examples": [{**standin_row(), "company": {"b64": unpadded}}]})
    assert plain.status_code == encoded.status_code == 200 and plain.json() == encoded.json()
    rows = requests.post(f"{deployed.rest}/v1/models/{MODEL}/versions/1:predict", timeout=60, json={
        "instances": [{**standin_row(), "company": {"b64": unpadded}}, {**standin_row(), "company": "Sun Taxi"}]})
    assert rows.status_code == 200 and rows.json()["predictions"][0] == rows.json()["predictions"][1]


def test_grpc_strings_need_no_base64(deployed):
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = SIGS, "echo_bytes"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([b"\xff\x00"]))
    assert tf.make_ndarray(stubs(deployed)[0].Predict(request, timeout=60).outputs["y_bytes"]).tolist() == [b"\xff\x00"]
    with pytest.raises(grpc.RpcError) as err:  # and a wrong dtype is the session's feed error
        request.inputs["x"].CopyFrom(tf.make_tensor_proto([1.0]))
        stubs(deployed)[0].Predict(request, timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == "Expects arg[0] to be string but float is provided"
