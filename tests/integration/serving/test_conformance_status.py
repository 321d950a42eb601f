"""Model status and metadata on every path (issue 13, item 12), as get_model_status_impl.cc and
get_model_metadata_impl.cc answer: status looks only at a version (a label is ignored: every version is
listed), metadata resolves a version, a label or the latest, over gRPC and REST alike."""

from __future__ import annotations

import grpc
import pytest
import requests
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from tests.integration.serving.conftest import MODEL, SIGS, stubs

pytestmark = pytest.mark.integration


def grpc_status(server, **choice) -> list[int]:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = choice.pop("name", MODEL)
    if "version" in choice:
        request.model_spec.version.value = choice["version"]
    if "label" in choice:
        request.model_spec.version_label = choice["label"]
    return [s.version for s in stubs(server)[1].GetModelStatus(request, timeout=30).model_version_status]


def rest_status(server, path: str) -> list[int]:
    response = requests.get(f"{server.rest}/v1/models/{path}", timeout=30)
    assert response.status_code == 200, response.text
    return [int(s["version"]) for s in response.json()["model_version_status"]]


def test_status_by_label_lists_every_version(deployed):
    every = grpc_status(deployed)
    assert {1, 2} <= set(every) and every == sorted(every, reverse=True)
    for label in ("stable", "canary", "no-such-label"):
        assert grpc_status(deployed, label=label) == every
        assert rest_status(deployed, f"{MODEL}/labels/{label}") == every  # the case: canary -> every version
    assert rest_status(deployed, MODEL) == every


def test_status_by_version_lists_that_version(deployed):
    assert grpc_status(deployed, version=1) == [1]
    assert rest_status(deployed, f"{MODEL}/versions/2") == [2]
    assert grpc_status(deployed, name=SIGS) == [1] == grpc_status(deployed, name=SIGS, label="stable")


def test_metadata_resolves_a_version_a_label_or_the_latest(deployed):
    def grpc_version(**choice) -> int:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = MODEL
        if "version" in choice:
            request.model_spec.version.value = choice["version"]
        if "label" in choice:
            request.model_spec.version_label = choice["label"]
        return stubs(deployed)[0].GetModelMetadata(request, timeout=30).model_spec.version.value

    def rest_version(path: str) -> int:
        response = requests.get(f"{deployed.rest}/v1/models/{MODEL}{path}/metadata", timeout=30)
        assert response.status_code == 200, response.text
        assert "serving_default" in response.json()["metadata"]["signature_def"]["signature_def"]
        return int(response.json()["model_spec"]["version"])

    latest = max(grpc_status(deployed))
    assert grpc_version() == rest_version("") == latest
    assert grpc_version(version=1) == rest_version("/versions/1") == 1
    assert grpc_version(label="stable") == rest_version("/labels/stable") == 1
    assert grpc_version(label="canary") == rest_version("/labels/canary") == 2


@pytest.mark.parametrize("path, status, message", [
    ("", 400, "Missing model name in request."),
    ("/metadata", 404, "Could not find any versions of model metadata"),  # the status of a model "metadata"
    (f"/{MODEL}/labels/gold/metadata", 400, "Unrecognized servable version label: gold"),
    (f"/{MODEL}/versions/99/metadata", 404, f"Servable not found for request: Specific({MODEL}, 99)"),
    (f"/{MODEL}/versions/99", 404, f"Could not find version 99 of model {MODEL}"),
    ("/nope", 404, "Could not find any versions of model nope"),
    (f"/{MODEL}/versions/x", 400, f"Malformed request: GET /v1/models/{MODEL}/versions/x"),
])
def test_status_and_metadata_errors(deployed, path, status, message):
    response = requests.get(f"{deployed.rest}/v1/models{path}", timeout=30)
    assert (response.status_code, response.json()) == (status, {"error": message})


def test_grpc_status_errors(deployed):
    with pytest.raises(grpc.RpcError) as err:
        grpc_status(deployed, name="nope", label="stable")
    assert (err.value.code(), err.value.details()) == (grpc.StatusCode.NOT_FOUND,
                                                       "Could not find any versions of model nope")
