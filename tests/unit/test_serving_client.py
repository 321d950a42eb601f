"""serving/client.py against the real gRPC server: dtypes from the signature, outputs, deadlines, and
gRPC's retry policy retrying UNAVAILABLE only."""

from __future__ import annotations

import asyncio
import socket

import grpc
import numpy as np
import pytest
import tensorflow as tf
from prometheus_client import REGISTRY
from tensorflow.core.framework import types_pb2

from serving.client import PredictionClient, from_tensor, service_config, to_tensor
from serving.testing import export_standin_model, standin_row
from tests.unit.test_serving_grpc import Running

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("client-models") / "tip"
    for version in (1, 2):
        export_standin_model(base, version, bias=float(version))
    running = Running(base)
    yield running
    running.stop()


@pytest.mark.parametrize("values, dtype", [([1.5, -2.25], types_pb2.DT_FLOAT), ([3, 2**40], types_pb2.DT_INT64),
                                           (["a", "é"], types_pb2.DT_STRING), ([True, False], types_pb2.DT_BOOL),
                                           (7.0, types_pb2.DT_DOUBLE)])
def test_tensors_round_trip_like_tensorflows_own(values, dtype):
    proto = to_tensor(values, dtype)
    ours, theirs = from_tensor(proto), tf.make_ndarray(proto)
    assert ours.shape == theirs.shape and list(ours) == list(theirs)


def test_retry_policy_names_only_transient_codes():
    import json

    policy = json.loads(service_config(3))["methodConfig"][0]["retryPolicy"]
    assert policy["retryableStatusCodes"] == ["UNAVAILABLE"] and policy["maxAttempts"] == 4


def _requests(status: str) -> float:
    return REGISTRY.get_sample_value("tensorflow_serving_request_count_total",
                                     {"model_name": "tip", "API": "predict", "status": status}) or 0.0


def test_predict_with_raw_features(served):
    async def go():
        async with PredictionClient(f"127.0.0.1:{served.port}", timeout_s=10) as client:
            one = await client.predict(standin_row(), model="tip", label="stable")
            batch = await client.predict({k: [v, v] for k, v in standin_row().items()}, model="tip", version=2)
            return one, batch

    one, batch = asyncio.run(go())
    direct = tf.saved_model.load(str(served.base / "1")).signatures["serving_default"]
    dtypes = {"trip_seconds": tf.int64, "pickup_community_area": tf.int64}
    want = direct(**{k: tf.constant([v], dtype=dtypes.get(k, tf.string if isinstance(v, str) else tf.float32))
                     for k, v in standin_row().items()})["probabilities"].numpy()
    assert one.version == 1 and one.model == "tip" and np.allclose(one.outputs["probabilities"], want)
    assert batch.version == 2 and batch.outputs["probabilities"].shape == (2,) and one.latency_ms > 0


def test_a_bad_request_is_not_retried(served):
    before = _requests("INVALID_ARGUMENT")

    async def go():
        async with PredictionClient(f"127.0.0.1:{served.port}", timeout_s=10, retries=3) as client:
            await client.predict(standin_row(), model="tip")
            await client.predict(standin_row(), model="tip", output_filter=["no_such_output"])  # refused

    with pytest.raises(grpc.aio.AioRpcError) as err:
        asyncio.run(go())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _requests("INVALID_ARGUMENT") == before + 1  # one attempt, not four, and not re-sent


def test_a_stale_signature_is_read_again_once(served):
    """A label that moves to a version with another signature: the cached dtypes are stale, the server
    refuses once, and the client reads the signature again and sends the request as it now must be."""
    before = _requests("INVALID_ARGUMENT")

    async def go():
        async with PredictionClient(f"127.0.0.1:{served.port}", timeout_s=10, retries=3) as client:
            await client.input_dtypes("tip")
            client._inputs[("tip", "serving_default", None, None)]["fare"] = types_pb2.DT_STRING  # stale
            return await client.predict(standin_row(), model="tip")

    result = asyncio.run(go())
    assert result.outputs["probabilities"].shape == (1,)
    assert _requests("INVALID_ARGUMENT") == before + 1


def test_an_unreachable_server_is_unavailable_within_the_deadline():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def go():
        async with PredictionClient(f"127.0.0.1:{port}", timeout_s=2, retries=2) as client:
            await client.predict(standin_row(), model="tip")

    with pytest.raises(grpc.aio.AioRpcError) as err:
        asyncio.run(go())
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_the_client_loads_without_tensorflow_and_speaks_the_same_bytes():
    """serving/protos.py: the client's messages come without TensorFlow, and are TensorFlow's own."""
    import subprocess
    import sys
    from pathlib import Path

    code = """
import sys
import serving.client as c
assert "tensorflow.python" not in sys.modules, "TensorFlow was loaded"
light = c.to_tensor([1.5, 2.5], c.types_pb2.DT_FLOAT).SerializeToString()
import tensorflow as tf
assert "tensorflow.python" in sys.modules and hasattr(tf, "constant")
real = tf.make_tensor_proto([1.5, 2.5], dtype=tf.float32)
assert type(real) is c.tensor_pb2.TensorProto
assert c.from_tensor(real).tolist() == [1.5, 2.5]
assert tf.make_ndarray(c.tensor_pb2.TensorProto.FromString(light)).tolist() == [1.5, 2.5]  # TF's own decoder
print("ok")
"""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]
