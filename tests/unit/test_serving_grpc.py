"""The gRPC server as a TF Serving client sees it: the real grpc.aio server on a free port, called with
the stubs from tensorflow-serving-api."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from prometheus_client import REGISTRY
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     model_management_pb2, model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc, regression_pb2)

from serving.grpc_server import build_server, serve
from serving.model_config import ModelConfig, VersionPolicy, configs_to_proto, single_model_config
from serving.models import ModelManager
from serving.testing import (CLASSIFY_SIGNATURE, EXAMPLES_SIGNATURE, REGRESS_SIGNATURE, export_standin_model,
                             standin_example, standin_row)
from tests.unit.serving_loop import LoopThread

pytestmark = pytest.mark.unit

MAX_RECEIVE = 1 << 20
LABELS = {"stable": 1, "canary": 2}


class Running(LoopThread):
    """The server on its own event loop thread, so tests can use the ordinary blocking stubs."""

    def __init__(self, base: Path):
        super().__init__()
        self.base = base
        self.manager, self.server, self.port = self.call(self._start())
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)

    def config(self, labels: dict[str, int]):
        return configs_to_proto([ModelConfig("tip", str(self.base), VersionPolicy("all"), labels)])

    async def _start(self):
        manager = ModelManager()
        await manager.reload_config(self.config(LABELS))
        server, port = build_server(manager, 0, host="127.0.0.1", max_receive_message_bytes=MAX_RECEIVE)
        await server.start()
        return manager, server, port

    def stop(self):
        self.channel.close()
        self.call(self.server.stop(0))
        self.call(self.manager.close())
        self.close_loop()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("models") / "tip"
    for version in (1, 2):
        export_standin_model(base, version, bias=float(version))
    running = Running(base)
    yield running
    running.stop()


def feature_tensors(rows: int = 2) -> dict[str, tensor_pb2.TensorProto]:
    int64 = {"trip_seconds", "pickup_community_area"}
    return {name: tf.make_tensor_proto([value] * rows, dtype=tf.int64 if name in int64 else None)
            for name, value in standin_row().items()}


def predict_request(version: int | None = None, label: str | None = None, signature: str = "",
                    name: str = "tip", **overrides: tensor_pb2.TensorProto) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for tensor_name, proto in {**feature_tensors(), **overrides}.items():
        if proto is not None:
            request.inputs[tensor_name].CopyFrom(proto)
    return request


def direct_probabilities(base: Path, version: int) -> np.ndarray:
    signature = tf.saved_model.load(str(base / str(version))).signatures["serving_default"]
    inputs = {name: tf.make_ndarray(proto) for name, proto in feature_tensors().items()}
    return signature(**{k: tf.constant(v) for k, v in inputs.items()})["probabilities"].numpy()


def error_of(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(request, timeout=30)
    return err.value


def probabilities(response) -> np.ndarray:
    return tf.make_ndarray(response.outputs["probabilities"])


def test_predict_returns_what_the_saved_model_computes(served):
    response = served.predictions.Predict(predict_request(), timeout=30)
    assert response.model_spec.name == "tip"
    assert response.model_spec.version.value == 2  # the latest
    assert response.model_spec.signature_name == "serving_default"
    assert np.array_equal(probabilities(response), direct_probabilities(served.base, 2))


def test_predict_by_version_and_by_label(served):
    by_version = served.predictions.Predict(predict_request(version=1), timeout=30)
    by_label = served.predictions.Predict(predict_request(label="stable"), timeout=30)
    assert by_version.model_spec.version.value == by_label.model_spec.version.value == 1
    assert np.array_equal(probabilities(by_version), direct_probabilities(served.base, 1))
    assert np.array_equal(probabilities(by_label), probabilities(by_version))
    latest = served.predictions.Predict(predict_request(), timeout=30)
    assert not np.allclose(probabilities(latest), probabilities(by_version))


def test_output_filter(served):
    request = predict_request()
    request.output_filter.append("probabilities")
    assert list(served.predictions.Predict(request, timeout=30).outputs) == ["probabilities"]
    request.output_filter[:] = ["tip_amount"]
    err = error_of(served.predictions.Predict, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "tip_amount" in err.details()


def test_get_model_metadata_reports_signature_defs(served):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "tip"
    response = served.predictions.GetModelMetadata(request, timeout=30)
    assert response.model_spec.version.value == 2
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    default = signatures.signature_def["serving_default"]
    assert set(default.inputs) == set(standin_row())
    assert default.inputs["fare"].dtype == types_pb2.DT_FLOAT
    assert default.outputs["probabilities"].dtype == types_pb2.DT_FLOAT
    assert set(signatures.signature_def[EXAMPLES_SIGNATURE].inputs) == {"examples"}


def test_get_model_status(served):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "tip"
    response = served.models.GetModelStatus(request, timeout=30)
    assert {(s.version, s.state) for s in response.model_version_status} == {
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE),
        (2, get_model_status_pb2.ModelVersionStatus.AVAILABLE)}
    request.model_spec.name = "nope"
    err = error_of(served.models.GetModelStatus, request)
    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, "Could not find any versions of model nope")


@pytest.mark.parametrize("choice, versions", [({}, [2, 1]), ({"version": 1}, [1]), ({"label": "stable"}, [2, 1]),
                                              ({"label": "canary"}, [2, 1]), ({"label": "no-such-label"}, [2, 1])])
def test_get_model_status_ignores_a_label_as_tf_serving_does(served, choice, versions):
    """get_model_status_impl.cc looks only at model_spec.version: a label lists every version."""
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "tip"
    if "version" in choice:
        request.model_spec.version.value = choice["version"]
    if "label" in choice:
        request.model_spec.version_label = choice["label"]
    response = served.models.GetModelStatus(request, timeout=30)
    assert [s.version for s in response.model_version_status] == versions


def test_get_model_status_of_an_unknown_version_is_not_found(served):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "tip"
    request.model_spec.version.value = 9
    err = error_of(served.models.GetModelStatus, request)
    assert (err.code(), err.details()) == (grpc.StatusCode.NOT_FOUND, "Could not find version 9 of model tip")


@pytest.mark.parametrize("fields, message", [
    ([], "GetModelMetadataRequest must specify at least one metadata_field"),
    (["signature_def", "graph"], "Metadata field graph is not supported"),
])
def test_metadata_fields_are_checked_before_the_model_is_looked_up(served, fields, message):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=fields)
    request.model_spec.name = "no-such-model"
    err = error_of(served.predictions.GetModelMetadata, request)
    assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)


def test_reload_config_moves_a_label(served):
    request = model_management_pb2.ReloadConfigRequest(config=served.config({"stable": 1, "canary": 1}))
    try:
        served.models.HandleReloadConfigRequest(request, timeout=60)
        moved = served.predictions.Predict(predict_request(label="canary"), timeout=30)
        assert moved.model_spec.version.value == 1
        request = model_management_pb2.ReloadConfigRequest(config=served.config({"canary": 7}))
        err = error_of(served.models.HandleReloadConfigRequest, request)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "version 7" in err.details()
    finally:
        served.models.HandleReloadConfigRequest(
            model_management_pb2.ReloadConfigRequest(config=served.config(LABELS)), timeout=60)
    assert served.predictions.Predict(predict_request(label="canary"), timeout=30).model_spec.version.value == 2


@pytest.mark.parametrize("request_kwargs", [dict(name="nope"), dict(version=9)])
def test_unknown_model_or_version_is_not_found(served, request_kwargs):
    err = error_of(served.predictions.Predict, predict_request(**request_kwargs))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details().startswith("Servable not found for request:")


@pytest.mark.parametrize("request_kwargs, code, message", [
    (dict(label="nope"), grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: nope"),
    (dict(label="nope", name="no-such-model"), grpc.StatusCode.INVALID_ARGUMENT,
     "Unrecognized servable version label: nope"),  # the label is looked up before the model
    (dict(name=""), grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified."),
    (dict(signature="nope"), grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "nope" not found.'),
])
def test_unknown_label_or_signature_get_tf_servings_codes(served, request_kwargs, code, message):
    err = error_of(served.predictions.Predict, predict_request(**request_kwargs))
    assert err.code() == code and err.details() == message


def test_a_request_without_model_spec_is_invalid_argument_in_every_rpc(served):
    for call, request in [(served.predictions.Predict, predict_pb2.PredictRequest()),
                          (served.predictions.Classify, classification_pb2.ClassificationRequest()),
                          (served.predictions.Regress, regression_pb2.RegressionRequest()),
                          (served.predictions.GetModelMetadata,
                           get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])),
                          (served.models.GetModelStatus, get_model_status_pb2.GetModelStatusRequest())]:
        err = error_of(call, request)
        assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec"), call


def test_wrong_dtype_or_missing_input_is_invalid_argument_as_tf_servings_session_says(served):
    err = error_of(served.predictions.Predict, predict_request(fare=tf.make_tensor_proto(["12.5", "3"])))
    # the feeds in sorted order: serving_default_company:0, serving_default_fare:0, ...
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == "Expects arg[1] to be float but string is provided"
    err = error_of(served.predictions.Predict, predict_request(company=None))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("input size does not match signature: 7!=8 ")
    assert err.details().endswith("Sent extra: {}. Missing but required: {company}.")
    err = error_of(served.predictions.Predict, predict_request(tip=tf.make_tensor_proto([1.0, 2.0])))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "Sent extra: {tip}." in err.details()
    err = error_of(served.predictions.Predict, predict_request(company=None, tip=tf.make_tensor_proto([1.0])))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith("Signature input alias: company(feed name: serving_default_company:0) not "
                                    "found in request")
    err = error_of(served.predictions.Predict, predict_request(fare=tf.make_tensor_proto([[1.0], [2.0]])))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "'fare'" in err.details()


def malformed(dims: list[int], **content) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, **content)
    for size in dims:
        proto.tensor_shape.dim.add(size=size)
    return proto


@pytest.mark.parametrize("proto", [
    malformed([-1], float_val=[1.0]),
    malformed([2], tensor_content=np.array([1.0, 2.0, 3.0], np.float32).tobytes()),
    malformed([1_000_000_000_000], float_val=[1.0]),
    malformed([1 << 40, 1 << 40], tensor_content=b"\0" * 8),
    tensor_pb2.TensorProto(dtype=types_pb2.DT_INVALID, float_val=[1.0, 2.0]),
], ids=["negative-dim", "content-size", "huge-fill", "huge-content", "no-dtype"])
def test_malformed_tensor_protos_are_invalid_and_the_server_keeps_answering(served, proto):
    err = error_of(served.predictions.Predict, predict_request(fare=proto))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("tensor parsing error: fare")
    assert served.predictions.Predict(predict_request(), timeout=30).model_spec.version.value == 2


def test_extra_values_are_ignored_and_missing_ones_repeat_the_last_as_tensorflow_reads_them(served):
    """Tensor::FromProto: a value list longer than the shape is cut; a shorter one is filled with its last."""
    long = served.predictions.Predict(predict_request(fare=malformed([2], float_val=[12.5, 12.5, 99.0])), timeout=30)
    short = served.predictions.Predict(predict_request(fare=malformed([2], float_val=[12.5])), timeout=30)
    assert np.array_equal(probabilities(long), probabilities(short))
    assert np.array_equal(probabilities(long), direct_probabilities(served.base, 2))


def test_small_ints_wrap_around_as_tensorflow_narrows_int_val(tmp_path):
    """A DT_INT8 TensorProto's int_val holds int32s; TensorFlow narrows each one (300 -> 44, -129 -> 127)."""
    from serving.inference import run_predict
    from serving.servable import Servable
    from serving.testing import export_signatures_model

    servable = Servable.load("sigs", 1, export_signatures_model(tmp_path / "sigs", 1))
    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = "echo_int8"
    request.inputs["x"].CopyFrom(tensor_pb2.TensorProto(
        dtype=types_pb2.DT_INT8, int_val=[300, -129, 5],
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[{"size": 3}])))
    assert tf.make_ndarray(run_predict(servable, request).outputs["y"]).tolist() == [44, 127, 5]


def test_an_oversized_request_is_resource_exhausted(served):
    big = tf.make_tensor_proto(["x" * (MAX_RECEIVE + 1), "y"])
    err = error_of(served.predictions.Predict, predict_request(company=big))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert served.predictions.Predict(predict_request(), timeout=30).model_spec.version.value == 2


def test_classify_and_regress_take_tf_examples(served):
    expected = direct_probabilities(served.base, 2)
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "tip"
    request.model_spec.signature_name = CLASSIFY_SIGNATURE
    request.input.example_list.examples.extend([standin_example(), standin_example()])
    response = served.predictions.Classify(request, timeout=30)
    assert response.model_spec.version.value == 2
    assert [[c.label for c in r.classes] for r in response.result.classifications] == [["0", "1"]] * 2
    assert np.allclose([r.classes[1].score for r in response.result.classifications], expected)
    regression = regression_pb2.RegressionRequest(model_spec=request.model_spec, input=request.input)
    regression.model_spec.signature_name = REGRESS_SIGNATURE
    values = [r.value for r in served.predictions.Regress(regression, timeout=30).result.regressions]
    assert np.allclose(values, expected)


@pytest.mark.parametrize("signature, message", [
    ("serving_default", "Expected one input Tensor."),  # takes features, not examples
    (EXAMPLES_SIGNATURE, "No classification inputs found in SignatureDef: "),  # keyed "examples", not "inputs"
    (REGRESS_SIGNATURE, 'Expected classification signature outputs to contain at least one of "classes" or '
                        '"scores".'),
    ("nope", "No signature was found with the name: nope"),
])
def test_classify_takes_only_signatures_of_tf_servings_form(served, signature, message):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = "tip", signature
    request.input.example_list.examples.append(standin_example())
    err = error_of(served.predictions.Classify, request)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith(message)


def test_classify_and_regress_without_examples_are_invalid_argument(served):
    for call, request in [(served.predictions.Classify, classification_pb2.ClassificationRequest()),
                          (served.predictions.Regress, regression_pb2.RegressionRequest())]:
        request.model_spec.name = "tip"
        request.model_spec.signature_name = CLASSIFY_SIGNATURE if call == served.predictions.Classify \
            else REGRESS_SIGNATURE
        err = error_of(call, request)
        assert (err.code(), err.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Input is empty.")


def test_serve_polls_for_new_versions_and_applies_the_artificial_delay(tmp_path):
    base = tmp_path / "tip"
    export_standin_model(base, 1)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    bound: list[int] = []
    started = threading.Event()
    task = asyncio.run_coroutine_threadsafe(
        serve(single_model_config("tip", base), 0, host="127.0.0.1", poll_interval_s=0.2, delay_s=0.5,
              started=lambda port: (bound.append(port), started.set())), loop)
    try:
        assert started.wait(60)
        with grpc.insecure_channel(f"127.0.0.1:{bound[0]}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            err = error_of(lambda r, timeout: stub.Predict(r, timeout=0.1), predict_request())
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            begun = time.monotonic()
            assert stub.Predict(predict_request(), timeout=30).model_spec.version.value == 1
            assert time.monotonic() - begun >= 0.5
            export_standin_model(base, 2, bias=2.0)
            deadline = time.monotonic() + 30
            while stub.Predict(predict_request(), timeout=30).model_spec.version.value != 2:
                assert time.monotonic() < deadline, "version 2 was never picked up by polling"
                time.sleep(0.2)
    finally:
        task.cancel()
        try:
            task.result(timeout=30)
        except concurrent.futures.CancelledError:
            pass
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_requests_are_counted_with_tf_serving_metric_names(served):
    def count(model: str, status: str) -> float:
        labels = {"model_name": model, "API": "predict", "status": status}
        return REGISTRY.get_sample_value("tensorflow_serving_request_count_total", labels) or 0.0

    ok, missing = count("tip", "OK"), count("", "NOT_FOUND")
    served.predictions.Predict(predict_request(), timeout=30)
    error_of(served.predictions.Predict, predict_request(name="no-such-model"))
    assert count("tip", "OK") == ok + 1
    assert count("", "NOT_FOUND") == missing + 1  # unknown names share one label value


@pytest.mark.parametrize("proto", [
    tf.make_tensor_proto(np.array([1.5, -2.0, 3.25], np.float32)),
    tf.make_tensor_proto(np.arange(6, dtype=np.int64).reshape(2, 3)),
    tf.make_tensor_proto(np.array([[True], [False]])),
    tf.make_tensor_proto([b"a", b"\xff", b""]),
    tf.make_tensor_proto(7.0, shape=[4]),  # one value broadcast to the shape
    tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32, int_val=[3, 4],
                           tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[{"size": 2}])),
    tensor_pb2.TensorProto(dtype=types_pb2.DT_DOUBLE, double_val=[0.1],
                           tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[{"size": 1}])),
])
def test_numpy_decoding_equals_tensorflows(proto):
    from serving.tensors import to_array

    shape = tuple(d.size for d in proto.tensor_shape.dim)
    ours, theirs = to_array(proto, shape), tf.make_ndarray(proto)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert ours.tolist() == theirs.tolist()
