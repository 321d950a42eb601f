"""The model registry: TF Serving's config, version policies, labels, and the load/unload lifecycle."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client import REGISTRY
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from serving.errors import ServingError
from serving.model_config import (ModelConfig, VersionPolicy, configs_from_proto, configs_to_proto,
                                  parse_model_config, single_model_config)
from serving.models import ModelManager, VersionState
from serving.testing import export_standin_model, standin_row

pytestmark = pytest.mark.unit

CONFIG_TEXT = """
model_config_list {
  config { name: "tip" base_path: "/models/tip" model_platform: "tensorflow"
           model_version_policy { latest { num_versions: 2 } }
           version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 2 } }
  config { name: "pinned" base_path: "/models/pinned" model_version_policy { specific { versions: 1 versions: 3 } } }
  config { name: "every" base_path: "/models/every" model_version_policy { all {} } }
  config { name: "plain" base_path: "/models/plain" }
}
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """Versions 1..3 of the stand-in, exported once; tests copy the ones they need."""
    root = tmp_path_factory.mktemp("exported")
    for version in (1, 2, 3):
        export_standin_model(root, version, bias=float(version))
    return root


def install(exported: Path, base: Path, *versions: int) -> Path:
    for version in versions:
        shutil.copytree(exported / str(version), base / str(version))
    return base


def spec(name: str = "tip", version: int | None = None, label: str | None = None) -> model_pb2.ModelSpec:
    s = model_pb2.ModelSpec(name=name)
    if version is not None:
        s.version.value = version
    if label is not None:
        s.version_label = label
    return s


def states(manager: ModelManager, name: str = "tip") -> dict[int, VersionState]:
    return {s.version: VersionState(s.state) for s in manager.model_status(spec(name))}


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(ServingError) as err:
        call()
    return err.value.code


def run(coro):
    return asyncio.run(coro)


def test_text_proto_config_is_parsed_and_round_trips():
    configs = {c.name: c for c in configs_from_proto(parse_model_config(CONFIG_TEXT))}
    assert configs["tip"] == ModelConfig("tip", "/models/tip", VersionPolicy("latest", 2), {"stable": 1, "canary": 2})
    assert configs["pinned"].policy == VersionPolicy("specific", versions=(1, 3))
    assert configs["every"].policy == VersionPolicy("all")
    assert configs["plain"].policy == VersionPolicy("latest", 1)  # TF Serving's default
    assert configs_from_proto(configs_to_proto(configs.values())) == list(configs.values())
    assert configs_from_proto(single_model_config("tip", "/m")) == [ModelConfig("tip", "/m")]


def test_bad_config_is_invalid_argument():
    assert code_of(lambda: parse_model_config("model_config_list { nonsense: 1 }")) == grpc.StatusCode.INVALID_ARGUMENT
    twice = 'model_config_list { config { name: "a" base_path: "/x" } config { name: "a" base_path: "/y" } }'
    with pytest.raises(ServingError, match="Illegal to list model a multiple times in config list"):
        configs_from_proto(parse_model_config(twice))


def test_version_policies_pick_versions_like_tf_serving():
    on_disk = [1, 2, 5, 9]
    assert VersionPolicy().select(on_disk) == {9}
    assert VersionPolicy("latest", 3).select(on_disk) == {2, 5, 9}
    assert VersionPolicy("specific", versions=(2, 3)).select(on_disk) == {2}
    assert VersionPolicy("all").select(on_disk) == set(on_disk)
    with pytest.raises(ValueError):
        VersionPolicy("newest")


def test_poll_loads_a_new_version_and_unloads_the_old_one_after_drain(exported, tmp_path):
    async def scenario():
        base = install(exported, tmp_path / "tip", 1)
        manager = ModelManager()
        await manager.reload_config([ModelConfig("tip", str(base))])
        assert states(manager) == {1: VersionState.AVAILABLE}
        held = manager.checkout(spec())  # a request still running on version 1
        install(exported, base, 2)
        await manager.poll()
        assert states(manager) == {2: VersionState.AVAILABLE, 1: VersionState.UNLOADING}
        assert manager.resolve(spec()).version == 2
        assert code_of(lambda: manager.resolve(spec(version=1))) == grpc.StatusCode.NOT_FOUND
        with pytest.raises(asyncio.TimeoutError):  # version 1 waits for its request
            await asyncio.wait_for(asyncio.shield(manager.wait_unloaded()), 0.2)
        assert held.servable is not None
        manager.release(held)
        await manager.wait_unloaded()
        assert states(manager) == {2: VersionState.AVAILABLE, 1: VersionState.END}
        assert held.servable is None
        await manager.close()
    run(scenario())


def test_a_removed_version_directory_is_unloaded(exported, tmp_path):
    async def scenario():
        base = install(exported, tmp_path / "tip", 1, 2)
        manager = ModelManager()
        await manager.reload_config([ModelConfig("tip", str(base), VersionPolicy("all"))])
        assert states(manager) == {1: VersionState.AVAILABLE, 2: VersionState.AVAILABLE}
        assert REGISTRY.get_sample_value("tensorflow_serving_loaded_versions", {"model_name": "tip"}) == 2
        shutil.rmtree(base / "1")
        await manager.poll()
        await manager.wait_unloaded()
        assert states(manager) == {2: VersionState.AVAILABLE, 1: VersionState.END}
        assert REGISTRY.get_sample_value("tensorflow_serving_loaded_versions", {"model_name": "tip"}) == 1
        await manager.close()
    run(scenario())


def test_a_failed_load_is_reported_and_never_serves(exported, tmp_path):
    async def scenario():
        base = install(exported, tmp_path / "tip", 1)
        manager = ModelManager()
        await manager.reload_config([ModelConfig("tip", str(base))])
        (base / "2").mkdir()
        (base / "2" / "saved_model.pb").write_bytes(b"not a saved model")
        await manager.poll()
        [status] = manager.model_status(spec(version=2))
        assert status.state == VersionState.END and status.status.error_code != 0
        assert "version 2" in status.status.error_message
        assert manager.resolve(spec()).version == 1  # the old version keeps serving
        assert code_of(lambda: manager.resolve(spec(version=2))) == grpc.StatusCode.NOT_FOUND
        await manager.poll()  # not retried, still not served
        assert states(manager)[2] == VersionState.END and manager.resolve(spec()).version == 1
        await manager.close()
    run(scenario())


def write_warmup(version_dir: Path, fare_value) -> None:
    row = {**standin_row(), "fare": fare_value}
    request = predict_pb2.PredictRequest(model_spec=spec())
    dtypes = {"trip_seconds": tf.int64, "pickup_community_area": tf.int64}
    for name, value in row.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto([value], dtype=dtypes.get(name)))
    (version_dir / "assets.extra").mkdir()
    with tf.io.TFRecordWriter(str(version_dir / "assets.extra" / "tf_serving_warmup_requests")) as writer:
        log = prediction_log_pb2.PredictionLog()
        log.predict_log.request.CopyFrom(request)
        writer.write(log.SerializeToString())


def test_warmup_requests_are_replayed_before_the_version_is_available(exported, tmp_path):
    async def scenario():
        good = install(exported, tmp_path / "good", 1)
        write_warmup(good / "1", 10.0)
        bad = install(exported, tmp_path / "bad", 1)
        write_warmup(bad / "1", "ten")  # a string fare: the replay fails, so the load must
        manager = ModelManager()
        await manager.reload_config([ModelConfig("good", str(good)), ModelConfig("bad", str(bad))])
        assert states(manager, "good") == {1: VersionState.AVAILABLE}
        [status] = manager.model_status(spec("bad"))
        assert status.state == VersionState.END
        assert status.status.error_message.endswith("Expects arg[1] to be float but string is provided")
        assert code_of(lambda: manager.resolve(spec("bad"))) == grpc.StatusCode.NOT_FOUND
        await manager.close()
    run(scenario())


def test_labels_resolve_and_only_point_at_available_versions(exported, tmp_path):
    async def scenario():
        base = install(exported, tmp_path / "tip", 1, 2)
        manager = ModelManager()
        policy = VersionPolicy("all")
        await manager.reload_config([ModelConfig("tip", str(base), policy, {"stable": 1, "canary": 2})])
        assert manager.resolve(spec(label="stable")).version == 1
        assert manager.resolve(spec(label="canary")).version == 2
        with pytest.raises(ServingError) as err:
            await manager.reload_config([ModelConfig("tip", str(base), policy, {"stable": 3})])
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION and "version 3" in err.value.message
        assert manager.labels("tip") == {"stable": 1, "canary": 2}  # unchanged
        await manager.reload_config([ModelConfig("tip", str(base), policy, {"stable": 2})])
        assert manager.resolve(spec(label="stable")).version == 2
        # an unknown label is a bad request to TF Serving, an unknown model is not found
        assert code_of(lambda: manager.resolve(spec(label="canary"))) == grpc.StatusCode.INVALID_ARGUMENT
        assert code_of(lambda: manager.resolve(spec("nope"))) == grpc.StatusCode.NOT_FOUND
        await manager.close()
    run(scenario())


def test_labels_may_wait_for_their_version_when_allowed(exported, tmp_path):
    """--allow_version_labels_for_unavailable_models: a new label, or one that keeps its version, may name a
    version that is not loaded (requests on it are NOT_FOUND meanwhile); moving a label still needs one."""
    async def scenario():
        base = install(exported, tmp_path / "tip", 1, 2)
        manager = ModelManager(allow_unavailable_labels=True)
        policy = VersionPolicy("all")
        await manager.reload_config([ModelConfig("tip", str(base), policy, {"stable": 1, "next": 3})])
        assert manager.labels("tip") == {"stable": 1, "next": 3}
        with pytest.raises(ServingError) as err:
            manager.resolve(spec(label="next"))
        assert err.value.code == grpc.StatusCode.NOT_FOUND and err.value.message == \
            "Servable not found for request: Specific(tip, 3)"
        with pytest.raises(ServingError) as err:  # stable already names 1: it may move only to a loaded version
            await manager.reload_config([ModelConfig("tip", str(base), policy, {"stable": 4, "next": 3})])
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        await manager.close()
    run(scenario())


def test_a_model_removed_from_the_config_is_unloaded(exported, tmp_path):
    async def scenario():
        manager = ModelManager()
        a, b = install(exported, tmp_path / "a", 1), install(exported, tmp_path / "b", 2)
        await manager.reload_config([ModelConfig("a", str(a)), ModelConfig("b", str(b))])
        await manager.reload_config([ModelConfig("b", str(b))])
        await manager.wait_unloaded()
        assert states(manager, "a") == {1: VersionState.END}
        assert code_of(lambda: manager.resolve(spec("a"))) == grpc.StatusCode.NOT_FOUND
        assert manager.resolve(spec("b")).version == 2
        await manager.close()
    run(scenario())


def test_run_on_numpy_inputs_matches_the_saved_model(exported, tmp_path):
    async def scenario():
        base = install(exported, tmp_path / "tip", 1, 2)
        manager = ModelManager()
        await manager.reload_config([ModelConfig("tip", str(base), VersionPolicy("all"))])
        signature = tf.saved_model.load(str(base / "1")).signatures["serving_default"]
        specs = signature.structured_input_signature[1]
        inputs = {k: np.array([v, v], dtype=object if isinstance(v, str) else specs[k].dtype.as_numpy_dtype)
                  for k, v in standin_row().items()}
        outputs, version = await manager.run("tip", inputs, version=1)
        expected = signature(**{k: tf.constant(v, specs[k].dtype) for k, v in inputs.items()})["probabilities"]
        assert version == 1 and np.array_equal(outputs["probabilities"], expected.numpy())
        latest, version = await manager.run("tip", inputs)
        assert version == 2 and not np.allclose(latest["probabilities"], outputs["probabilities"])
        with pytest.raises(ServingError, match=r"Expects arg\[1\] to be float but string is provided"):
            await manager.run("tip", {**inputs, "fare": inputs["company"]})
        await manager.close()
    run(scenario())
