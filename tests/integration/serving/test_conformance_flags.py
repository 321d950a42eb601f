"""tensorflow_model_server's flags, as a server started with them answers (issue 13, item 15): CORS and its
preflight, the REST timeout, labels on versions not loaded yet, gRPC channel arguments. The server is
conftest.py's ``flagged`` one (FLAGGED_FLAGS); the default server shows the defaults."""

from __future__ import annotations

import time

import grpc
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from tests.integration.serving.conftest import MODEL, SIGS, config, reload, stubs

pytestmark = pytest.mark.integration

CORS = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "POST, GET",
        "Access-Control-Allow-Headers": "Content-Type"}


def cors_headers(response: requests.Response) -> dict:
    return {k: response.headers[k] for k in CORS if k in response.headers}


def echo(server, body: dict, headers=None) -> requests.Response:
    return requests.post(f"{server.rest}/v1/models/{SIGS}:predict", json={"signature_name": "echo_float", **body},
                         headers=headers, timeout=60)


def test_cors_headers_on_every_answer_with_the_flag(flagged):
    ok = echo(flagged, {"instances": [1.5]}, {"Origin": "https://app.example"})
    assert ok.status_code == 200 and ok.json() == {"predictions": [1.5]} and cors_headers(ok) == CORS
    error = echo(flagged, {"instances": ["x"]})
    assert error.status_code == 400 and cors_headers(error) == CORS
    status = requests.get(f"{flagged.rest}/v1/models/{SIGS}", timeout=60)
    assert status.status_code == 200 and cors_headers(status) == CORS


def test_no_cors_headers_without_the_flag(deployed):
    response = requests.get(f"{deployed.rest}/v1/models/{MODEL}", headers={"Origin": "https://app.example"}, timeout=60)
    assert response.status_code == 200 and cors_headers(response) == {}


@pytest.mark.parametrize("origin, status", [("https://app.example", 200), ("http://localhost:3000", 200),
                                            (None, 400), ("app.example", 400)])
def test_a_preflight_needs_an_http_origin(flagged, origin, status):
    headers = {"Origin": origin, "Access-Control-Request-Method": "POST"} if origin else {}
    response = requests.options(f"{flagged.rest}/v1/models/{SIGS}:predict", headers=headers, timeout=60)
    assert response.status_code == status and cors_headers(response) == CORS


def test_a_preflight_is_answered_without_the_flag_too_but_without_cors_headers(deployed):
    response = requests.options(f"{deployed.rest}/v1/models/{MODEL}:predict",
                                headers={"Origin": "https://app.example"}, timeout=60)
    assert response.status_code == 200 and cors_headers(response) == {}


def test_rest_inference_past_the_timeout_is_504_and_grpc_is_not_limited(flagged):
    steps = 400_000 if flagged.ours else 5_000_000  # well past 0.5 s in either server's TensorFlow
    started = time.monotonic()
    slow = requests.post(f"{flagged.rest}/v1/models/{SIGS}:predict", timeout=60,
                         json={"signature_name": "slow", "instances": [steps]})
    assert slow.status_code == 504 and "error" in slow.json()
    assert time.monotonic() - started < 5  # answered at the timeout, not when the model is done
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = SIGS, "slow"
    request.inputs["n"].CopyFrom(tf.make_tensor_proto([steps], dtype=tf.int64))
    response = stubs(flagged)[0].Predict(request, timeout=60)  # --rest_api_timeout_in_ms is REST's only
    assert tf.make_ndarray(response.outputs["count"]).tolist() == [steps]
    assert echo(flagged, {"instances": [1.0]}).status_code == 200


def test_a_label_may_name_a_version_that_is_not_loaded_with_the_flag(flagged, deployed):
    assert reload(flagged, config(flagged, models=(SIGS,), sigs_labels={"next": 7})).status.error_code == 0
    try:
        response = requests.post(f"{flagged.rest}/v1/models/{SIGS}/labels/next:predict", timeout=60,
                                 json={"signature_name": "echo_float", "instances": [1.0]})
        assert (response.status_code, response.json()) == (404, {
            "error": f"Servable not found for request: Specific({SIGS}, 7)"})
    finally:
        assert reload(flagged, config(flagged, models=(SIGS,))).status.error_code == 0
    with pytest.raises(grpc.RpcError) as err:  # without the flag: refused
        reload(deployed, config(deployed, versions="all", labels={"stable": 1, "canary": 2}, sigs_labels={"next": 7}))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_grpc_channel_arguments_set_the_receive_limit(flagged):
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = SIGS, "echo_string"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(["x" * (900 << 10)]))  # under 1 MiB: taken
    assert tf.make_ndarray(stubs(flagged)[0].Predict(request, timeout=60).outputs["y"])[0] == b"x" * (900 << 10)
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(["x" * (1100 << 10)]))
    with pytest.raises(grpc.RpcError) as err:
        stubs(flagged)[0].Predict(request, timeout=60)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
