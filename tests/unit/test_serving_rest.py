"""The REST API as a TF Serving REST client sees it: a real ModelManager and aiohttp server on an event loop
thread, called with plain ``requests``; results checked against the SavedModel itself."""

from __future__ import annotations

import base64
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from prometheus_client import REGISTRY

from serving.model_config import ModelConfig, VersionPolicy, configs_to_proto
from serving.models import ModelManager
from serving.rest import http_status, start_rest
from serving.rest_json import json_value
from serving.testing import (CLASSIFY_SIGNATURE, EXAMPLES_SIGNATURE, REGRESS_SIGNATURE, export_standin_model,
                             standin_example, standin_row)
from tests.unit.serving_loop import LoopThread

pytestmark = pytest.mark.unit

MAX_BODY = 1 << 20
LABELS = {"stable": 1, "canary": 2}


class Running(LoopThread):
    """The manager and the REST server on one event loop thread, as in production."""

    def __init__(self, base: Path):
        super().__init__()
        self.base = base
        self.manager, self.runner, self.port = self.call(self._start())
        self.url = f"http://127.0.0.1:{self.port}"

    async def _start(self):
        manager = ModelManager()
        await manager.reload_config(configs_to_proto([ModelConfig("tip", str(self.base), VersionPolicy("all"),
                                                                  LABELS)]))
        runner, port = await start_rest(manager, "127.0.0.1", 0, client_max_size=MAX_BODY)
        return manager, runner, port

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, timeout=30)

    def post(self, path: str, body=None, data: bytes | None = None) -> requests.Response:
        if data is not None:
            return requests.post(self.url + path, data=data, timeout=30,
                                 headers={"Content-Type": "application/json"})
        return requests.post(self.url + path, json=body, timeout=30)

    def stop(self):
        self.call(self.runner.cleanup())
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


def rows() -> list[dict]:
    second = {**standin_row(), "fare": 40.0, "trip_seconds": 2400, "company": "Sun Taxi", "payment_type": "Cash"}
    return [standin_row(), second]


def columns(instances: list[dict]) -> dict[str, list]:
    return {name: [row[name] for row in instances] for name in instances[0]}


def direct(base: Path, version: int, instances: list[dict]) -> np.ndarray:
    """What the SavedModel's serving_default computes for these rows, called in-process."""
    signature = tf.saved_model.load(str(base / str(version))).signatures["serving_default"]
    specs = signature.structured_input_signature[1]
    inputs = {name: tf.constant(values, specs[name].dtype) for name, values in columns(instances).items()}
    return signature(**inputs)["probabilities"].numpy()


def error_of(response: requests.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return body["error"]


def assert_serving(served: Running) -> None:
    """The server still answers a good request correctly."""
    response = served.post("/v1/models/tip:predict", {"instances": rows()})
    assert response.status_code == 200, response.text
    assert np.array_equal(np.float32(response.json()["predictions"]), direct(served.base, 2, rows()))


# -- model status and metadata ---------------------------------------------------------------------------

def available(version: str) -> dict:
    return {"version": version, "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}


@pytest.mark.parametrize("path, versions", [
    ("/v1/models/tip", ["2", "1"]),
    ("/v1/models/tip/versions/1", ["1"]),
    ("/v1/models/tip/labels/canary", ["2", "1"]),  # TF Serving's status ignores a label: every version
    ("/v1/models/tip/labels/stable", ["2", "1"]),
    ("/v1/models/tip/labels/no-such-label", ["2", "1"]),
    ("/V1/MODELS/tip/VERSIONS/2", ["2"]),  # the path is matched case-insensitively
])
def test_model_status_as_tf_serving_prints_it(served, path, versions):
    response = served.get(path)
    assert response.status_code == 200, response.text
    assert response.json() == {"model_version_status": [available(v) for v in versions]}


@pytest.mark.parametrize("path, version", [
    ("/v1/models/tip/metadata", "2"),
    ("/v1/models/tip/versions/1/metadata", "1"),
    ("/v1/models/tip/labels/stable/metadata", "1"),
])
def test_metadata_reports_the_signature_defs(served, path, version):
    response = served.get(path)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_spec"] == {"name": "tip", "signature_name": "", "version": version}
    assert list(body["metadata"]) == ["signature_def"]
    signatures = body["metadata"]["signature_def"]["signature_def"]
    default = signatures["serving_default"]
    assert set(default["inputs"]) == set(standin_row())
    assert default["inputs"]["fare"]["dtype"] == "DT_FLOAT"
    assert default["inputs"]["company"]["dtype"] == "DT_STRING"
    assert default["outputs"]["probabilities"]["dtype"] == "DT_FLOAT"
    assert default["method_name"] == "tensorflow/serving/predict"
    assert set(signatures[EXAMPLES_SIGNATURE]["inputs"]) == {"examples"}


# -- predict ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, version", [
    ("/v1/models/tip:predict", 2),
    ("/v1/models/tip/versions/1:predict", 1),
    ("/v1/models/tip/labels/stable:predict", 1),
    ("/v1/models/tip/labels/canary:predict", 2),
])
def test_predict_row_format_equals_the_saved_model(served, path, version):
    response = served.post(path, {"instances": rows()})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 2 and all(isinstance(p, float) for p in predictions)
    assert np.array_equal(np.float32(predictions), direct(served.base, version, rows()))


def test_predict_columnar_format_equals_the_row_format(served):
    response = served.post("/v1/models/tip/versions/1:predict",
                           {"signature_name": "serving_default", "inputs": columns(rows())})
    assert response.status_code == 200, response.text
    outputs = response.json()["outputs"]
    assert np.array_equal(np.float32(outputs), direct(served.base, 1, rows()))
    assert not np.allclose(np.float32(outputs), direct(served.base, 2, rows()))  # versions really differ


def test_string_inputs_plain_and_b64_are_the_same_bytes(served):
    plain = served.post("/v1/models/tip:predict", {"instances": rows()}).json()["predictions"]
    encoded = [{**row, "company": {"b64": base64.b64encode(row["company"].encode()).decode()}} for row in rows()]
    response = served.post("/v1/models/tip:predict", {"instances": encoded})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == plain
    other = [{**row, "company": "Another Cab Co"} for row in rows()]
    changed = served.post("/v1/models/tip:predict", {"instances": other}).json()["predictions"]
    assert np.array_equal(np.float32(changed), direct(served.base, 2, other))


def test_single_input_signature_takes_a_plain_list_of_b64_values(served):
    examples = [{"b64": base64.b64encode(standin_example(**row).SerializeToString()).decode()} for row in rows()]
    for body, key in [({"signature_name": EXAMPLES_SIGNATURE, "instances": examples}, "predictions"),
                      ({"signature_name": EXAMPLES_SIGNATURE, "inputs": examples}, "outputs")]:
        response = served.post("/v1/models/tip:predict", body)
        assert response.status_code == 200, response.text
        assert np.array_equal(np.float32(response.json()[key]), direct(served.base, 2, rows()))


# -- classify and regress --------------------------------------------------------------------------------

def example_json(row: dict) -> dict:
    return {name: value for name, value in row.items()}


def test_classify_and_regress_on_the_examples_signatures(served):
    expected = direct(served.base, 2, rows())
    examples = [example_json(row) for row in rows()]
    response = served.post("/v1/models/tip:classify", {"signature_name": CLASSIFY_SIGNATURE, "examples": examples})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [[label for label, _ in r] for r in results] == [["0", "1"], ["0", "1"]]
    assert np.array_equal(np.float32([r[1][1] for r in results]), expected)
    response = served.post("/v1/models/tip:regress", {"signature_name": REGRESS_SIGNATURE, "examples": examples})
    assert response.status_code == 200, response.text
    assert np.array_equal(np.float32(response.json()["results"]), expected)


def test_regress_with_a_context_and_by_label(served):
    first, second = rows()
    shared = {"trips_count_1h": 20.0, "fare_avg_1h": 30.0, "pickup_community_area": 32}  # not the rows' own
    examples = [{k: v for k, v in row.items() if k not in shared} for row in (first, second)]
    body = {"signature_name": REGRESS_SIGNATURE, "context": shared, "examples": examples}
    response = served.post("/v1/models/tip/labels/stable:regress", body)
    assert response.status_code == 200, response.text
    merged = [{**first, **shared}, {**second, **shared}]  # the context's features merged into each example
    results = np.float32(response.json()["results"])
    # TF may round a sigmoid differently by an ulp for differently laid out parsed batches.
    assert np.allclose(results, direct(served.base, 1, merged), rtol=1e-6, atol=0)
    assert not np.allclose(results, direct(served.base, 1, [first, second]), rtol=1e-6, atol=0)


# -- errors ----------------------------------------------------------------------------------------------

def without(row: dict, name: str) -> dict:
    return {k: v for k, v in row.items() if k != name}


BAD_PREDICTS = [
    ("/v1/models/nope:predict", {"instances": rows()}, 404, "Servable not found for request: Latest(nope)"),
    ("/v1/models/tip/versions/9:predict", {"instances": rows()}, 404, "Servable not found for request"),
    ("/v1/models/tip/labels/nope:predict", {"instances": rows()}, 400, "Unrecognized servable version label: nope"),
    ("/v1/models/tip:predict", {"signature_name": "nope", "instances": rows()}, 400,
     'Serving signature name: "nope" not found in signature def'),
    ("/v1/models/tip:predict", {"instances": [{**standin_row(), "fare": "12.5"}]}, 400,
     "Failed to process element: 0 key: fare of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: \"12.5\" "
     "Type: String is not of expected type: float"),
    ("/v1/models/tip:predict", {"inputs": {**columns(rows()), "trip_seconds": [900.5, 2400]}}, 400,
     "JSON Value: 900.5 Type: Number is not of expected type: int64"),
    ("/v1/models/tip:predict", {"inputs": {**columns(rows()), "company": [1, 2]}}, 400,
     "JSON Value: 1 Type: Number is not of expected type: string"),
    ("/v1/models/tip:predict", {"instances": [without(row, "company") for row in rows()]}, 400,
     "keys must be equal to: company,fare,"),
    ("/v1/models/tip:predict", {"inputs": without(columns(rows()), "company")}, 400,
     "Missing named input: company in 'inputs' object."),
    ("/v1/models/tip:predict", {"instances": [{**standin_row(), "tip": 1.0}]}, 400,
     "JSON object: does not have named input: tip"),
    ("/v1/models/tip:predict", {"instances": [{**standin_row(), "fare": [1.0, 2.0]},
                                              {**standin_row(), "fare": [1.0]}]}, 400,
     "Failed to process element: 1 key: fare of 'instances' list. Error: INVALID_ARGUMENT: Expecting tensor size: 2 "
     "but got: 1"),
    ("/v1/models/tip:predict", {"inputs": {**columns(rows()), "fare": [[1.0], [2.0]]}}, 400, "'fare'"),
    ("/v1/models/tip:predict", {"instances": [1.0, 2.0]}, 400, "instances is a plain list"),
    ("/v1/models/tip:predict", {"instances": []}, 400, "No values in 'instances' array"),
    ("/v1/models/tip:predict", {"instances": rows(), "inputs": {}}, 400, "only one of 'inputs' or 'instances'"),
    ("/v1/models/tip:predict", {"rows": rows()}, 400, "Missing 'inputs' or 'instances' key"),
    ("/v1/models/tip:predict", {"signature_name": 3, "instances": rows()}, 400, "'signature_name'"),
    ("/v1/models/tip:predict", [1, 2], 400, "Is not object"),
    ("/v1/models/tip:classify", {"examples": [example_json(standin_row())]}, 400, "Expected one input Tensor."),
    ("/v1/models/tip:regress", {"signature_name": REGRESS_SIGNATURE, "examples": []}, 400,
     "'examples' value is an empty array"),
    ("/v1/models/tip:regress", {"signature_name": REGRESS_SIGNATURE}, 400,
     "When method is classify, key 'examples' is expected and was not found"),  # TF Serving's words for :regress
    ("/v1/models/tip:classify", {"signature_name": CLASSIFY_SIGNATURE, "examples": [{"fare": [1.0, "x"]}]}, 400,
     "Unexpected element type in feature: fare expecting type: float"),
    ("/v1/models/nope:predict", {"rows": rows()}, 404, "Servable not found"),  # the model before the body's form
    ("/v1/models/tip:PREDICT", {"instances": rows()}, 400, "Malformed request: POST /v1/models/tip:PREDICT"),
]


@pytest.mark.parametrize("path, body, status, message", BAD_PREDICTS,
                         ids=[f"{i}-{case[2]}" for i, case in enumerate(BAD_PREDICTS)])
def test_bad_requests_get_tf_serving_errors(served, path, body, status, message):
    assert message in error_of(served.post(path, body), status)


@pytest.mark.parametrize("path, status, message", [
    ("/v1/models/nope", 404, "nope"),
    ("/v1/models/tip/versions/9", 404, "Could not find version 9 of model tip"),
    ("/v1/models/tip/labels/nope/metadata", 400, "Unrecognized servable version label: nope"),
    ("/v1/models/nope/metadata", 404, "Servable not found"),
    ("/v1/models", 400, "Missing model name in request."),
    ("/v1/models/versions/1", 400, "Missing model name in request."),
    ("/v1/models/tip/versions/99999999999999999999", 400, "Failed to convert version: 99999999999999999999"),
    ("/v1/models/tip/versions/abc", 400, "Malformed request: GET /v1/models/tip/versions/abc"),
    ("/v1/nothing", 400, "Malformed request"),
    ("/nothing/here", 404, "/nothing/here"),
])
def test_bad_paths(served, path, status, message):
    assert message in error_of(served.get(path), status)


@pytest.mark.parametrize("data", [b"", b"{", b'{"instances": [1,]}', b"\xff\xfe{}", b"[" * 5000 + b"]" * 5000])
def test_malformed_json_is_a_bad_request_and_the_server_keeps_answering(served, data):
    assert "JSON" in error_of(served.post("/v1/models/tip:predict", data=data), 400)
    assert_serving(served)


def test_an_oversized_body_is_413_and_the_server_keeps_answering(served):
    big = {"instances": [{**standin_row(), "company": "x" * (MAX_BODY + 1)}]}
    assert "exceeded" in error_of(served.post("/v1/models/tip:predict", big), 413)
    assert_serving(served)


def test_get_on_a_verb_is_malformed(served):
    assert "Malformed request" in error_of(served.get("/v1/models/tip:predict"), 400)


# -- metrics and the status mapping ----------------------------------------------------------------------

def test_rest_requests_are_counted_and_metrics_are_served(served):
    def latency_count() -> float:
        labels = {"model_name": "tip", "API": "predict", "entrypoint": "REST"}
        return REGISTRY.get_sample_value("tensorflow_serving_request_latency_count", labels) or 0.0

    before = latency_count()
    assert_serving(served)
    assert latency_count() == before + 1
    response = served.get("/monitoring/prometheus/metrics")
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    assert 'tensorflow_serving_request_count_total{API="predict",model_name="tip",status="OK"}' in response.text


def test_grpc_codes_map_to_tf_serving_http_statuses():
    expected = {"OK": 500, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
                "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
                "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501,
                "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401}
    assert {code.name: http_status(code) for code in grpc.StatusCode} == expected


def test_outputs_are_written_as_tf_serving_writes_them():
    assert json_value("scores", np.array([0.1, 3.0], np.float32)) == [0.1, 3.0]  # shortest round-trip
    assert json_value("label", np.array([b"Cash", b"\xff"], dtype=object)) == ["Cash", {"b64": "/w=="}]
    assert json_value("image_bytes", np.array([[b"ab"]], dtype=object)) == [[{"b64": "YWI="}]]
    assert json_value("count", np.array([[1, 2]], np.int64)) == [[1, 2]]
