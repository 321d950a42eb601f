"""TF Serving's error codes, one row at a time (issue 13, items 13 and 14).

Every row of serving/errors.py's ERRORS is triggered here through the public API, and the code (or, over
REST, the HTTP status TF Serving derives from it) checked against the code written in this file and the
table's. Against a real TF Serving (conftest.py) the same requests check that the table is TF Serving's.
No error message may carry a path of a Python file or a traceback.
"""

from __future__ import annotations

import concurrent.futures
import re
from dataclasses import dataclass
from typing import Callable

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from google.protobuf import any_pb2
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     input_pb2, model_management_pb2, predict_pb2, regression_pb2)
from tensorflow_serving.config import model_server_config_pb2

from serving.errors import ERRORS, HTTP_STATUS
from serving.testing import CLASSIFY_SIGNATURE, EXAMPLES_SIGNATURE, REGRESS_SIGNATURE, standin_example, standin_row
from tests.integration.serving.conftest import MODEL, SIGS, config, stubs

pytestmark = pytest.mark.integration

C = grpc.StatusCode
LEAK = re.compile(r'Traceback|File "|(?:/[\w.@+-]+)+\.py\b|site-packages')


@dataclass
class Outcome:
    code: grpc.StatusCode | int  # the gRPC code, or the HTTP status
    message: str


# -- requests -----------------------------------------------------------------------------------------------

INT_INPUTS = {"trip_seconds", "pickup_community_area"}


def tensor(name: str, values) -> tensor_pb2.TensorProto:
    dtype = tf.string if isinstance(values[0], str) else tf.int64 if name in INT_INPUTS else tf.float32
    return tf.make_tensor_proto(values, dtype=dtype)


def predict(name=MODEL, version: int | None = 1, label=None, signature="", drop=(), **inputs) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if label is not None:
        request.model_spec.version_label = label
    elif version is not None:
        request.model_spec.version.value = version
    if name == MODEL and not signature:
        for key, value in standin_row().items():
            if key not in drop:
                request.inputs[key].CopyFrom(tensor(key, [value]))
    for key, proto in inputs.items():
        request.inputs[key].CopyFrom(proto)
    return request


def sigs(signature: str, **inputs) -> predict_pb2.PredictRequest:
    return predict(SIGS, None, signature=signature, **inputs)


def examples_input(*examples) -> input_pb2.Input:
    model_input = input_pb2.Input()
    model_input.example_list.examples.extend(examples)
    return model_input


def classify(name=MODEL, signature=CLASSIFY_SIGNATURE, model_input=None):
    request = classification_pb2.ClassificationRequest(input=model_input or examples_input(standin_example()))
    request.model_spec.name, request.model_spec.signature_name = name, signature
    return request


def regress(name=MODEL, signature=REGRESS_SIGNATURE, model_input=None):
    request = regression_pb2.RegressionRequest(input=model_input or examples_input(standin_example()))
    request.model_spec.name, request.model_spec.signature_name = name, signature
    return request


def int_example() -> input_pb2.Input:
    """An example whose float feature x is an int64 list: ParseExample fails on it."""
    model_input = input_pb2.Input()
    model_input.example_list.examples.add().features.feature["x"].int64_list.value.append(3)
    return model_input


def metadata(name=MODEL, fields=("signature_def",), version=None) -> get_model_metadata_pb2.GetModelMetadataRequest:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=list(fields))
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    return request


def status(name=MODEL, version=None) -> get_model_status_pb2.GetModelStatusRequest:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    return request


def with_empty_spec(request):
    request.model_spec.SetInParent()  # a ModelSpec, but no name
    return request


# -- calls ----------------------------------------------------------------------------------------------------

def rpc(method: str, request) -> Callable:
    def call(server) -> Outcome:
        predictions, models = stubs(server)
        stub = models if method in ("GetModelStatus", "HandleReloadConfigRequest") else predictions
        try:
            getattr(stub, method)(request() if callable(request) else request, timeout=60)
        except grpc.RpcError as exc:
            return Outcome(exc.code(), exc.details())
        raise AssertionError(f"{method} succeeded")
    return call


def rest(method: str, path: str, body=None, data: bytes | None = None, headers=None) -> Callable:
    def call(server) -> Outcome:
        response = requests.request(method, f"{server.rest}{path}", json=body if data is None else None,
                                    data=data, headers=headers, timeout=60)
        if method == "OPTIONS":
            return Outcome(response.status_code, response.text)
        assert response.headers["Content-Type"].startswith("application/json"), response.headers
        document = response.json()
        assert set(document) == {"error"}, document
        return Outcome(response.status_code, document["error"])
    return call


def concurrently(count: int, call: Callable) -> Callable:
    """``count`` calls at once; the failure they share (all of them have ended when it returns)."""
    def run(server) -> Outcome:
        with concurrent.futures.ThreadPoolExecutor(count) as pool:
            outcomes = list(pool.map(lambda _: _try(call, server), range(count)))
        failed = [o for o in outcomes if o is not None]
        assert failed, "every request succeeded"
        assert len({o.code for o in failed}) == 1, failed
        return failed[0]
    return run


def _try(call, server) -> Outcome | None:
    try:
        return call(server)
    except AssertionError:  # the call succeeded
        return None


def then_idle(call: Callable) -> Callable:
    """``call``, then wait until the flagged server's one batch thread is free again (a timed-out REST
    request leaves its batch running), so the next test's requests are not held behind it."""
    def run(server) -> Outcome:
        outcome = call(server)
        stubs(server)[0].Predict(sigs("echo_float", x=floats(1.0)), timeout=60)
        return outcome
    return run


def custom_reload(server) -> Outcome:
    cfg = model_server_config_pb2.ModelServerConfig(custom_model_config=any_pb2.Any())
    return rpc("HandleReloadConfigRequest", model_management_pb2.ReloadConfigRequest(config=cfg))(server)


def duplicate_reload(server) -> Outcome:
    cfg = config(server, versions="all", labels={"stable": 1, "canary": 2})
    cfg.model_config_list.config.append(cfg.model_config_list.config[0])
    return rpc("HandleReloadConfigRequest", model_management_pb2.ReloadConfigRequest(config=cfg))(server)


def unavailable_label_reload(server) -> Outcome:
    cfg = config(server, versions="all", labels={"stable": 1, "canary": 77})
    return rpc("HandleReloadConfigRequest", model_management_pb2.ReloadConfigRequest(config=cfg))(server)


def floats(*values) -> tensor_pb2.TensorProto:
    return tf.make_tensor_proto(list(values), dtype=tf.float32)


def bad_content() -> tensor_pb2.TensorProto:
    proto = floats(1.0)
    proto.ClearField("float_val")
    proto.tensor_content = b"\x00\x00\x80"
    return proto


def negative_dim() -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0])
    proto.tensor_shape.dim.add(size=-1)
    return proto


def filtered(*aliases) -> predict_pb2.PredictRequest:
    request = predict()
    request.output_filter.extend(aliases)
    return request


def empty_with_context() -> input_pb2.Input:
    model_input = input_pb2.Input()
    model_input.example_list_with_context.context.CopyFrom(standin_example())
    return model_input


def slow_steps(server) -> int:
    """Loop steps for ``slow`` to outlast the flagged server's 0.5 s REST timeout: about 1.5 s in this server's
    TensorFlow functions; TF Serving's C++ session loops faster."""
    return 400_000 if server.ours else 5_000_000


def slow_rest(server) -> Outcome:
    return rest("POST", f"/v1/models/{SIGS}:predict", {"signature_name": "slow", "instances": [slow_steps(server)]})(
        server)


def queue_full(server) -> Outcome:
    steps = tf.make_tensor_proto([slow_steps(server) // 2], dtype=tf.int64)
    return concurrently(8, rpc("Predict", sigs("slow", n=steps)))(server)

# (row, the code TF Serving answers, which server: "default" or "flagged" (conftest.FLAGGED_FLAGS), the call,
#  a part of TF Serving's message or "")
CASES: list[tuple[str, grpc.StatusCode, str, Callable, str]] = [
    ("missing_model_spec", C.INVALID_ARGUMENT, "default", rpc("Predict", predict_pb2.PredictRequest()),
     "Missing ModelSpec"),
    ("missing_model_spec", C.INVALID_ARGUMENT, "default", rpc("Classify", classification_pb2.ClassificationRequest()),
     "Missing ModelSpec"),
    ("missing_model_spec", C.INVALID_ARGUMENT, "default", rpc("Regress", regression_pb2.RegressionRequest()),
     "Missing ModelSpec"),
    ("missing_model_spec", C.INVALID_ARGUMENT, "default", rpc("GetModelMetadata", get_model_metadata_pb2.
                                                              GetModelMetadataRequest(metadata_field=["signature_def"])),
     "Missing ModelSpec"),
    ("missing_model_spec", C.INVALID_ARGUMENT, "default",
     rpc("GetModelStatus", get_model_status_pb2.GetModelStatusRequest()), "Missing ModelSpec"),
    ("no_model_name", C.INVALID_ARGUMENT, "default", rpc("Predict", with_empty_spec(predict_pb2.PredictRequest())),
     "ModelSpec has no name specified."),
    ("no_model_name", C.INVALID_ARGUMENT, "default",
     rpc("Classify", with_empty_spec(classification_pb2.ClassificationRequest(input=examples_input(standin_example())))),
     "ModelSpec has no name specified."),
    ("no_model_name", C.INVALID_ARGUMENT, "default", rpc("GetModelMetadata", with_empty_spec(
        get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"]))),
     "ModelSpec has no name specified."),
    ("unknown_label", C.INVALID_ARGUMENT, "default", rpc("Predict", predict(label="gold")),
     "Unrecognized servable version label: gold"),
    ("unknown_label", C.INVALID_ARGUMENT, "default", rpc("Predict", predict(name="nope", label="gold")),
     "Unrecognized servable version label: gold"),
    ("unknown_label", C.INVALID_ARGUMENT, "default", rest("GET", f"/v1/models/{MODEL}/labels/gold/metadata"),
     "Unrecognized servable version label: gold"),
    ("servable_not_found", C.NOT_FOUND, "default", rpc("Predict", predict(name="nope", version=None)),
     "Servable not found for request: Latest(nope)"),
    ("servable_not_found", C.NOT_FOUND, "default", rpc("Predict", predict(version=99)),
     f"Servable not found for request: Specific({MODEL}, 99)"),
    ("servable_not_found", C.NOT_FOUND, "default", rpc("GetModelMetadata", metadata(version=99)), "Servable not found"),
    ("servable_not_found", C.NOT_FOUND, "default", rest("POST", "/v1/models/nope:predict", {"instances": [1.0]}),
     "Servable not found for request: Latest(nope)"),
    ("predict_signature_not_found", C.FAILED_PRECONDITION, "default", rpc("Predict", predict(signature="nosig")),
     'Serving signature key "nosig" not found.'),
    ("predict_method_name", C.INTERNAL, "flagged", rpc("Predict", sigs("custom_method", x=floats(1.0))),
     "Expected prediction signature method_name to be one of {tensorflow/serving/predict, "
     "tensorflow/serving/classify, tensorflow/serving/regress}. Was: liveml/custom_method"),
    ("input_size_mismatch", C.INVALID_ARGUMENT, "default", rpc("Predict", predict(drop=("fare",))),
     "Missing but required: {fare}."),
    ("input_size_mismatch", C.INVALID_ARGUMENT, "default", rpc("Predict", predict(tip=floats(1.0))),
     "Sent extra: {tip}."),
    ("input_size_mismatch", C.INVALID_ARGUMENT, "default", rpc("Predict", predict(drop=tuple(standin_row()))),
     "input size does not match signature: 0!=8"),
    ("input_alias_not_found", C.INVALID_ARGUMENT, "default", rpc("Predict", predict(drop=("fare",), fair=floats(1.0))),
     "Signature input alias: fare(feed name: serving_default_fare:0) not found in request"),
    ("tensor_parsing_error", C.INVALID_ARGUMENT, "default", rpc("Predict", predict(fare=bad_content())),
     "tensor parsing error: fare"),
    ("tensor_parsing_error", C.INVALID_ARGUMENT, "default", rpc("Predict", predict(fare=negative_dim())),
     "tensor parsing error: fare"),
    ("input_dtype_mismatch", C.INVALID_ARGUMENT, "default", rpc("Predict", predict(fare=tensor("fare", ["x"]))),
     "to be float but string is provided"),
    ("input_shape_mismatch", C.INVALID_ARGUMENT, "default", rpc("Predict", predict(
        signature=EXAMPLES_SIGNATURE, examples=tf.make_tensor_proto([[standin_example().SerializeToString()]]))), ""),
    ("output_filter_unknown", C.INVALID_ARGUMENT, "default", rpc("Predict", filtered("tip")),
     "output tensor alias not found in signature: tip Outputs expected to be in the set {probabilities}."),
    ("output_filter_duplicate", C.INVALID_ARGUMENT, "default", rpc("Predict", filtered("probabilities", "probabilities")),
     "duplicate output tensor alias: probabilities"),
    ("model_op_failed", C.INVALID_ARGUMENT, "default", rpc("Classify", classify(SIGS, "", int_example())),
     "Name: <unknown>, Key: x, Index: 0.  Data types don't match. Data type: int64 but expected type: float"),
    ("model_op_failed", C.INVALID_ARGUMENT, "default", rest("POST", f"/v1/models/{SIGS}:classify",
                                                            {"examples": [{"x": 3}]}), "Data types don't match"),
    ("model_op_failed", C.INVALID_ARGUMENT, "default",
     rpc("Predict", predict(fare=floats(1.0, 2.0), trip_miles=floats(1.0, 2.0, 3.0))), "Incompatible shapes"),
    ("example_signature_not_found", C.INVALID_ARGUMENT, "default", rpc("Classify", classify(signature="nosig")),
     "No signature was found with the name: nosig"),
    ("example_signature_not_found", C.INVALID_ARGUMENT, "default", rpc("Regress", regress(signature="nosig")),
     "No signature was found with the name: nosig"),
    ("classify_method_name", C.INVALID_ARGUMENT, "flagged", rpc("Classify", classify(SIGS, "regress")),
     "Expected classification signature method_name to be tensorflow/serving/classify. Was: "
     "tensorflow/serving/regress"),
    ("regress_method_name", C.INVALID_ARGUMENT, "flagged", rpc("Regress", regress(SIGS, "serving_default")),
     "Expected regression signature method_name to be tensorflow/serving/regress. Was: tensorflow/serving/classify"),
    ("classify_signature_invalid", C.INVALID_ARGUMENT, "default", rpc("Classify", classify(signature="serving_default")),
     "Expected one input Tensor."),
    ("classify_signature_invalid", C.INVALID_ARGUMENT, "default", rpc("Classify", classify(signature=EXAMPLES_SIGNATURE)),
     "No classification inputs found in SignatureDef: "),
    ("regress_signature_invalid", C.INVALID_ARGUMENT, "default", rpc("Regress", regress(signature=CLASSIFY_SIGNATURE)),
     "Expected one output Tensor."),
    ("regress_signature_invalid", C.INVALID_ARGUMENT, "default", rpc("Regress", regress(signature=EXAMPLES_SIGNATURE)),
     "No regression inputs found in SignatureDef: "),
    ("empty_input", C.INVALID_ARGUMENT, "default", rpc("Classify", classify(model_input=input_pb2.Input())),
     "Input is empty."),
    ("empty_input", C.INVALID_ARGUMENT, "default", rpc("Regress", regress(model_input=empty_with_context())),
     "Input is empty."),
    ("classify_output_invalid", C.INVALID_ARGUMENT, "default", rpc("Classify", classify(SIGS, "classify_rank1")),
     "Expected Tensor shape: [batch_size num_classes] but got [1]"),
    ("regress_output_invalid", C.INVALID_ARGUMENT, "default", rpc("Regress", regress(SIGS, "regress_wide")),
     "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got [1,2]"),
    ("metadata_field_missing", C.INVALID_ARGUMENT, "default", rpc("GetModelMetadata", metadata("nope", ())),
     "GetModelMetadataRequest must specify at least one metadata_field"),
    ("metadata_field_unsupported", C.INVALID_ARGUMENT, "default", rpc("GetModelMetadata", metadata(fields=["graph"])),
     "Metadata field graph is not supported"),
    ("status_version_not_found", C.NOT_FOUND, "default", rpc("GetModelStatus", status(version=99)),
     f"Could not find version 99 of model {MODEL}"),
    ("status_version_not_found", C.NOT_FOUND, "default", rest("GET", f"/v1/models/{MODEL}/versions/99"),
     f"Could not find version 99 of model {MODEL}"),
    ("status_model_not_found", C.NOT_FOUND, "default", rpc("GetModelStatus", status("nope")),
     "Could not find any versions of model nope"),
    ("status_model_not_found", C.NOT_FOUND, "default", rest("GET", "/v1/models/nope/labels/stable"),
     "Could not find any versions of model nope"),
    ("reload_config_type", C.INVALID_ARGUMENT, "default", custom_reload,
     "ServerModelConfig type not supported by HandleReloadConfigRequest. Only ModelConfigList is currently supported"),
    ("reload_config_invalid", C.INVALID_ARGUMENT, "default", duplicate_reload,
     f"Illegal to list model {MODEL} multiple times in config list"),
    ("label_not_available", C.FAILED_PRECONDITION, "default", unavailable_label_reload,
     f"Request to assign label to version 77 of model {MODEL}, which is not currently available for inference"),
    ("batch_too_large", C.INVALID_ARGUMENT, "flagged", rpc("Predict", sigs("echo_float", x=floats(1.0, 2.0, 3.0))),
     "Task size 3 is larger than maximum input batch size 2"),
    ("batch_queue_full", C.UNAVAILABLE, "flagged", queue_full,
     "The batch scheduling queue to which this task was submitted is full"),
    ("batch_output_unsplittable", C.FAILED_PRECONDITION, "flagged", rpc("Predict", sigs("sum", x=floats(1.0))),
     "Batched output tensor's 0th dimension does not equal the sum of the 0th dimension sizes of the input tensors"),
    ("message_too_large", C.RESOURCE_EXHAUSTED, "flagged",
     rpc("Predict", sigs("echo_string", x=tf.make_tensor_proto(["x" * (2 << 20)]))), ""),
    ("rest_malformed_request", C.INVALID_ARGUMENT, "default", rest("POST", f"/v1/models/{MODEL}:explain", {}),
     f"Malformed request: POST /v1/models/{MODEL}:explain"),
    ("rest_malformed_request", C.INVALID_ARGUMENT, "default", rest("PUT", f"/v1/models/{MODEL}", {}),
     f"Malformed request: PUT /v1/models/{MODEL}"),
    ("rest_missing_model_name", C.INVALID_ARGUMENT, "default", rest("GET", "/v1/models"),
     "Missing model name in request."),
    ("rest_bad_version", C.INVALID_ARGUMENT, "default", rest("GET", f"/v1/models/{MODEL}/versions/99999999999999999999"),
     "Failed to convert version: 99999999999999999999 to numeric."),
    ("rest_signature_not_found", C.INVALID_ARGUMENT, "default",
     rest("POST", f"/v1/models/{MODEL}:predict", {"signature_name": "nosig", "instances": [standin_row()]}),
     'Serving signature name: "nosig" not found in signature def'),
    ("json_parse_error", C.INVALID_ARGUMENT, "default", rest("POST", f"/v1/models/{MODEL}:predict", data=b"{not json"),
     "JSON Parse error: "),
    ("json_invalid_request", C.INVALID_ARGUMENT, "default",
     rest("POST", f"/v1/models/{MODEL}:predict", {"instances": []}), "No values in 'instances' array"),
    ("json_invalid_request", C.INVALID_ARGUMENT, "default",
     rest("POST", f"/v1/models/{SIGS}:predict", {"signature_name": "echo_float", "instances": ["a"]}),
     "is not of expected type: float"),
    ("json_conversion_unimplemented", C.UNIMPLEMENTED, "default",
     rest("POST", f"/v1/models/{SIGS}:predict", {"signature_name": "echo_half", "inputs": [1.5]}),
     "to type: half"),
    ("json_output_unwritable", C.INVALID_ARGUMENT, "default",
     rest("POST", f"/v1/models/{SIGS}:predict", {"signature_name": "to_half", "inputs": [1.5]}),
     "Failed to write JSON value for tensor type: half"),
    ("cors_preflight_no_origin", C.FAILED_PRECONDITION, "default", rest("OPTIONS", f"/v1/models/{MODEL}:predict"), ""),
    ("rest_timeout", C.DEADLINE_EXCEEDED, "flagged", then_idle(slow_rest), ""),
    ("request_body_too_large", C.RESOURCE_EXHAUSTED, "ours",
     rest("POST", f"/v1/models/{MODEL}:predict", data=b'{"instances": ["' + b"x" * (65 << 20) + b'"]}'), ""),
]

NOT_TRIGGERED = {  # rows no request can reach
    "internal": "a bug in this server; nothing a client sends may cause it",
    "config_invalid": "start-up files, not requests (tests/unit/test_serving_flags.py, test_serving_batching.py)",
}


def test_every_row_of_the_table_is_triggered():
    assert {row for row, *_ in CASES} | set(NOT_TRIGGERED) == set(ERRORS)


@pytest.mark.parametrize("row, code, where, call, message", CASES,
                         ids=[f"{row}-{i}" for i, (row, *_) in enumerate(CASES)])
def test_error_row(request, row, code, where, call, message):
    assert ERRORS[row].code in (code, None), f"the table says {ERRORS[row].code} for {row}"
    if where == "ours":
        server = request.getfixturevalue("deployed")
        if not server.ours:
            pytest.skip("a body limit of this server only: TF Serving's HTTP server reads any size")
    else:
        server = request.getfixturevalue("deployed" if where == "default" else "flagged")
    outcome = call(server)
    if isinstance(outcome.code, int):  # REST: the HTTP status of the code, as TF Serving maps it
        assert outcome.code == (413 if row == "request_body_too_large" else HTTP_STATUS[code]), outcome
    else:
        assert outcome.code == code, outcome
    assert message in outcome.message, outcome.message
    assert not LEAK.search(outcome.message), outcome.message  # item 14: no path, no traceback


def test_a_failing_op_answers_tf_servings_message_and_nothing_of_the_server(deployed):
    """Item 14's report: a ParseExample type mismatch on a TF1-style classify signature."""
    response = requests.post(f"{deployed.rest}/v1/models/{SIGS}:classify", json={"examples": [{"x": 3}]}, timeout=60)
    assert response.status_code == 400
    assert response.json() == {"error": "Name: <unknown>, Key: x, Index: 0.  Data types don't match. Data type: int64 "
                                        "but expected type: float\n\t [[{{node ParseExample/ParseExampleV2}}]]"}
    outcome = rpc("Classify", classify(SIGS, "", int_example()))(deployed)
    assert outcome.code == C.INVALID_ARGUMENT and outcome.message == response.json()["error"]


def test_long_messages_are_cut_at_1024_characters_over_grpc(deployed):
    """grpc_status_util.cc: TF Serving cuts a gRPC message at 1,024 characters and appends "...TRUNCATED"."""
    outcome = rpc("Predict", predict(drop=("fare",), **{"x" * 600: floats(1.0), "y" * 600: floats(1.0)}))(deployed)
    assert outcome.code == C.INVALID_ARGUMENT
    assert len(outcome.message) == 1024 + len("...TRUNCATED") and outcome.message.endswith("...TRUNCATED")


def test_the_server_answers_after_every_error(deployed):
    response = stubs(deployed)[0].Predict(predict(), timeout=60)
    assert tf.make_ndarray(response.outputs["probabilities"]).shape == (1,)
    assert np.isfinite(tf.make_ndarray(response.outputs["probabilities"])).all()
