"""TF Serving conformance: every RPC and REST path, version policies, labels, hot load, rollback, status
codes, a version swap under load, and fuzzed TensorProtos. Written against the API (tensorflow-serving-api's
stubs and plain REST), so it runs unchanged against a real TF Serving (see conftest.py)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
import requests
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     input_pb2, predict_pb2, prediction_service_pb2_grpc, regression_pb2)

from serving.testing import (CLASSIFY_SIGNATURE, REGRESS_SIGNATURE, export_standin_model, standin_example,
                             standin_row)
from tests.integration.serving.conftest import (AVAILABLE, BIAS, MODEL, config, reload, states, stubs,
                                                wait_for)

pytestmark = pytest.mark.integration

INT_INPUTS = {"trip_seconds", "pickup_community_area"}


def _dtype(name: str, value):
    if isinstance(value, str):
        return tf.string
    return tf.int64 if name in INT_INPUTS else tf.float32


def inputs_proto(row: dict) -> dict[str, tensor_pb2.TensorProto]:
    return {k: tf.make_tensor_proto([v], dtype=_dtype(k, v)) for k, v in row.items()}


def predict_req(version=None, label=None, signature="", row=None) -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = MODEL
    if signature:
        req.model_spec.signature_name = signature
    if version is not None:
        req.model_spec.version.value = version
    if label:
        req.model_spec.version_label = label
    for k, v in inputs_proto(row or standin_row()).items():
        req.inputs[k].CopyFrom(v)
    return req


def expected(server, version: int, row=None) -> float:
    """The model itself, loaded in this process: what the server must answer."""
    loaded = tf.saved_model.load(str(server.model_path() / str(version)))
    args = {k: tf.constant([v], dtype=_dtype(k, v)) for k, v in (row or standin_row()).items()}
    return float(loaded.signatures["serving_default"](**args)["probabilities"].numpy()[0])


# --- PredictionService -------------------------------------------------------------------------------
def test_predict_latest_version_and_label(deployed):
    predictions, _ = stubs(deployed)
    for kwargs, version in (({}, 2), ({"version": 1}, 1), ({"label": "stable"}, 1), ({"label": "canary"}, 2)):
        resp = predictions.Predict(predict_req(**kwargs), timeout=10)
        assert resp.model_spec.name == MODEL and resp.model_spec.version.value == version, kwargs
        got = tf.make_ndarray(resp.outputs["probabilities"])
        assert got.shape == (1,) and got[0] == pytest.approx(expected(deployed, version), rel=1e-6)


def test_get_model_metadata(deployed):
    predictions, _ = stubs(deployed)
    req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    req.model_spec.name = MODEL
    resp = predictions.GetModelMetadata(req, timeout=10)
    assert resp.model_spec.version.value == 2
    defs = get_model_metadata_pb2.SignatureDefMap()
    resp.metadata["signature_def"].Unpack(defs)
    sig = defs.signature_def["serving_default"]
    assert set(sig.inputs) == set(standin_row()) and "probabilities" in sig.outputs
    assert sig.inputs["fare"].dtype == types_pb2.DT_FLOAT and sig.inputs["company"].dtype == types_pb2.DT_STRING


def _examples(n=3) -> input_pb2.Input:
    inp = input_pb2.Input()
    for i in range(n):
        inp.example_list.examples.add().CopyFrom(standin_example(fare=10.0 + i))
    return inp


def test_classify_and_regress_agree_with_predict(deployed):
    predictions, _ = stubs(deployed)
    row_scores = []
    for i in range(3):
        resp = predictions.Predict(predict_req(version=1, row={**standin_row(), "fare": 10.0 + i}), timeout=10)
        row_scores.append(float(tf.make_ndarray(resp.outputs["probabilities"])[0]))
    reg = regression_pb2.RegressionRequest(input=_examples())
    reg.model_spec.name, reg.model_spec.signature_name = MODEL, REGRESS_SIGNATURE
    reg.model_spec.version.value = 1
    got = [r.value for r in predictions.Regress(reg, timeout=10).result.regressions]
    assert got == pytest.approx(row_scores, rel=1e-6)
    cls = classification_pb2.ClassificationRequest(input=_examples())
    cls.model_spec.name, cls.model_spec.signature_name = MODEL, CLASSIFY_SIGNATURE
    cls.model_spec.version.value = 1
    result = predictions.Classify(cls, timeout=10).result
    assert len(result.classifications) == 3
    assert [[c.label for c in r.classes] for r in result.classifications] == [["0", "1"]] * 3
    assert [r.classes[1].score for r in result.classifications] == pytest.approx(row_scores, rel=1e-6)


# --- ModelService ------------------------------------------------------------------------------------
def test_get_model_status_by_model_version_and_label(deployed):
    _, models = stubs(deployed)
    assert states(deployed) == {1: AVAILABLE, 2: AVAILABLE}
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = MODEL
    req.model_spec.version_label = "stable"  # TF Serving's GetModelStatus ignores a label: every version
    resp = models.GetModelStatus(req, timeout=5)
    assert [s.version for s in resp.model_version_status] == [2, 1]


def test_label_on_a_version_that_is_not_served_is_refused(deployed):
    with pytest.raises(grpc.RpcError) as err:  # TF Serving returns the reload's failure as the RPC status
        reload(deployed, config(deployed, versions="all", labels={"stable": 1, "canary": 7}))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "7" in err.value.details()
    predictions, _ = stubs(deployed)  # the labels in force did not change
    assert predictions.Predict(predict_req(label="canary"), timeout=10).model_spec.version.value == 2


def test_version_policies_latest_and_specific(deployed):
    def latest(n):
        cfg = config(deployed)
        cfg.model_config_list.config[0].model_version_policy.latest.num_versions = n
        return cfg

    on_disk = sorted(int(p.name) for p in deployed.model_path().iterdir() if p.name.isdigit())
    assert reload(deployed, latest(1)).status.error_code == 0  # labels dropped: they would name unserved versions
    wait_for(lambda: {v for v, s in states(deployed).items() if s == AVAILABLE} == {on_disk[-1]}, what="latest 1")
    assert reload(deployed, config(deployed, versions=[1])).status.error_code == 0
    wait_for(lambda: {v for v, s in states(deployed).items() if s == AVAILABLE} == {1}, what="specific [1]")
    predictions, _ = stubs(deployed)
    assert predictions.Predict(predict_req(), timeout=10).model_spec.version.value == 1  # latest served
    assert reload(deployed, latest(2)).status.error_code == 0
    wait_for(lambda: {v for v, s in states(deployed).items() if s == AVAILABLE} == set(on_disk[-2:]), what="latest 2")
    # back to what the other tests expect: all versions, stable=1, canary=2
    assert reload(deployed, config(deployed, versions="all")).status.error_code == 0
    wait_for(lambda: all(states(deployed).get(v) == AVAILABLE for v in on_disk), what="all versions")
    assert reload(deployed, config(deployed, versions="all", labels={"stable": 1, "canary": 2})).status.error_code == 0


# --- status codes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("mutate, code, needle", [
    (lambda r: setattr(r.model_spec, "name", "nope"), grpc.StatusCode.NOT_FOUND, "nope"),
    (lambda r: r.model_spec.version.__setattr__("value", 9), grpc.StatusCode.NOT_FOUND, "9"),
    (lambda r: setattr(r.model_spec, "version_label", "gold"), grpc.StatusCode.INVALID_ARGUMENT, "gold"),
    (lambda r: setattr(r.model_spec, "signature_name", "nosig"), grpc.StatusCode.FAILED_PRECONDITION, "nosig"),
    (lambda r: r.inputs.pop("fare"), grpc.StatusCode.INVALID_ARGUMENT, "fare"),
    (lambda r: r.inputs["fare"].CopyFrom(tf.make_tensor_proto(["x"])), grpc.StatusCode.INVALID_ARGUMENT,
     "but string is provided"),  # the session's feed check names the argument's place, not the tensor
])
def test_errors_have_tf_servings_codes(deployed, mutate, code, needle):
    predictions, _ = stubs(deployed)
    req = predict_req()
    mutate(req)
    with pytest.raises(grpc.RpcError) as err:
        predictions.Predict(req, timeout=10)
    assert err.value.code() == code and needle in err.value.details()


# --- REST -----------------------------------------------------------------------------------------------
def test_rest_status_metadata_and_predict(deployed):
    base = f"{deployed.rest}/v1/models/{MODEL}"
    status = requests.get(base, timeout=5).json()["model_version_status"]
    assert {s["version"]: s["state"] for s in status} == {"1": "AVAILABLE", "2": "AVAILABLE"}
    assert requests.get(f"{base}/versions/1", timeout=5).json()["model_version_status"][0]["version"] == "1"
    by_label = requests.get(f"{base}/labels/stable", timeout=5).json()["model_version_status"]  # label ignored
    assert [s["version"] for s in by_label] == ["2", "1"]
    meta = requests.get(f"{base}/metadata", timeout=5).json()
    assert "serving_default" in meta["metadata"]["signature_def"]["signature_def"]
    row = standin_row()
    rows = requests.post(f"{base}/labels/stable:predict", json={"instances": [row, row]}, timeout=10).json()
    assert rows["predictions"] == pytest.approx([expected(deployed, 1)] * 2, rel=1e-6)
    cols = requests.post(f"{base}/versions/2:predict", json={"inputs": {k: [v] for k, v in row.items()}},
                         timeout=10).json()
    assert cols["outputs"] == pytest.approx([expected(deployed, 2)], rel=1e-6)
    reg = requests.post(f"{base}/versions/1:regress", timeout=10, json={
        "signature_name": REGRESS_SIGNATURE, "examples": [row]}).json()
    assert reg["results"] == pytest.approx([expected(deployed, 1)], rel=1e-6)


@pytest.mark.parametrize("path, body, status", [
    ("/v1/models/nope:predict", {"instances": [{}]}, 404),
    (f"/v1/models/{MODEL}/versions/9:predict", {"instances": [standin_row()]}, 404),
    (f"/v1/models/{MODEL}:predict", {"instances": [{**standin_row(), "fare": "x"}]}, 400),
    (f"/v1/models/{MODEL}:predict", "{not json", 400),
])
def test_rest_errors(deployed, path, body, status):
    kwargs = {"data": body} if isinstance(body, str) else {"json": body}
    resp = requests.post(f"{deployed.rest}{path}", timeout=10, **kwargs)
    assert resp.status_code == status and "error" in resp.json()


# --- hot load, rollback, and a swap under load ------------------------------------------------------
def test_hot_load_of_a_new_version_then_rollback(deployed):
    predictions, _ = stubs(deployed)
    export_standin_model(deployed.model_path(), 3, bias=BIAS[3])
    wait_for(lambda: states(deployed).get(3) == AVAILABLE, what="version 3 to load")
    assert predictions.Predict(predict_req(), timeout=10).model_spec.version.value == 3
    resp = reload(deployed, config(deployed, versions="all", labels={"stable": 3, "canary": 2}))
    assert resp.status.error_code == 0
    assert predictions.Predict(predict_req(label="stable"), timeout=10).model_spec.version.value == 3
    resp = reload(deployed, config(deployed, versions="all", labels={"stable": 1, "canary": 2}))  # roll back
    assert resp.status.error_code == 0
    assert predictions.Predict(predict_req(label="stable"), timeout=10).model_spec.version.value == 1


def test_swap_under_load_fails_no_request(deployed):
    """~200 requests/s for ~30 s on the stable label while a new version is pushed, promoted, then rolled
    back: no request fails, and every answer names the version that gave it."""
    results: list[tuple[int, int | None, str | None]] = []  # (time bucket, version, error)

    async def load(stop: asyncio.Event) -> None:
        channel = grpc.aio.insecure_channel(deployed.grpc_address)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        req = predict_req(label="stable")
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                resp = await stub.Predict(req, timeout=5)
                results.append((0, resp.model_spec.version.value, None))
            except grpc.aio.AioRpcError as exc:
                results.append((0, None, f"{exc.code().name}: {exc.details()}"))
            await asyncio.sleep(max(0.0, 0.01 - (time.monotonic() - t0)))
        await channel.close()

    async def operate(stop: asyncio.Event) -> None:
        await asyncio.sleep(8)
        await asyncio.to_thread(export_standin_model, deployed.model_path(), 4, 0.25)
        await asyncio.to_thread(wait_for, lambda: states(deployed).get(4) == AVAILABLE, 60, "version 4")
        r = await asyncio.to_thread(reload, deployed, config(deployed, versions="all", labels={"stable": 4, "canary": 2}))
        assert r.status.error_code == 0, r.status.error_message
        await asyncio.sleep(10)
        r = await asyncio.to_thread(reload, deployed, config(deployed, versions="all", labels={"stable": 1, "canary": 2}))
        assert r.status.error_code == 0, r.status.error_message
        await asyncio.sleep(8)
        stop.set()

    async def main() -> None:
        stop = asyncio.Event()
        await asyncio.gather(load(stop), load(stop), operate(stop))

    asyncio.run(main())
    errors = [e for _, _, e in results if e]
    versions = [v for _, v, _ in results if v is not None]
    assert not errors, errors[:5]
    assert len(results) > 2000  # the load really ran (about 200/s for 30 s)
    assert set(versions) == {1, 4}, set(versions)  # every answer names its version: old, new, old again
    first4, last4 = versions.index(4), len(versions) - 1 - versions[::-1].index(4)
    assert set(versions[:first4]) == {1} and set(versions[last4 + 1:]) == {1}


# --- fuzz --------------------------------------------------------------------------------------------
_DTYPES = [types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_INT64, types_pb2.DT_INT32, types_pb2.DT_STRING,
           types_pb2.DT_BOOL, types_pb2.DT_HALF, types_pb2.DT_INVALID]


@st.composite
def tensor_protos(draw):
    dims = draw(st.lists(st.integers(min_value=-3, max_value=10**12), min_size=0, max_size=4))
    proto = tensor_pb2.TensorProto(dtype=draw(st.sampled_from(_DTYPES)), tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims]))
    kind = draw(st.sampled_from(["float", "int", "string", "content", "none"]))
    if kind == "float":
        proto.float_val.extend(draw(st.lists(st.floats(width=32, allow_nan=True), max_size=5)))
    elif kind == "int":
        proto.int64_val.extend(draw(st.lists(st.integers(-2**63, 2**63 - 1), max_size=5)))
    elif kind == "string":
        proto.string_val.extend(draw(st.lists(st.binary(max_size=20), max_size=5)))
    elif kind == "content":
        proto.tensor_content = draw(st.binary(max_size=64))
    return proto


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["fare", "company", "trip_seconds", "unknown"]), proto=tensor_protos())
def test_fuzzed_tensors_get_a_status_and_the_server_stays_up(deployed, name, proto):
    predictions, _ = stubs(deployed)
    req = predict_req(version=1)
    req.inputs[name].CopyFrom(proto)
    try:
        resp = predictions.Predict(req, timeout=10)
        assert "probabilities" in resp.outputs  # a fuzzed tensor that happens to be valid
    except grpc.RpcError as exc:
        assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), (
            exc.code(), exc.details())
    assert predictions.Predict(predict_req(version=1), timeout=10).model_spec.version.value == 1
