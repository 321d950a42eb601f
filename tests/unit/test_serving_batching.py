"""Server-side batching (TF Serving's --enable_batching): its parameters, and Predict batched through the
real gRPC server on a stand-in model."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tensorflow as tf
from prometheus_client import REGISTRY
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving.batching import Batcher, merge_inputs, split_outputs
from serving.batching_params import (BatchingConfig, BatchingParameters, default_parameters,
                                     parse_batching_parameters, read_batching_parameters)
from serving.errors import ServingError
from serving.grpc_server import build_server
from serving.model_config import ModelConfig, VersionPolicy, configs_to_proto
from serving.models import ModelManager
from serving.testing import export_standin_model, standin_row

pytestmark = pytest.mark.unit

INT64 = {"trip_seconds", "pickup_community_area"}


# -- parameters ---------------------------------------------------------------------------------------------

def test_text_proto_is_parsed_with_tf_serving_defaults_for_omitted_fields():
    params = parse_batching_parameters("""
        max_batch_size { value: 32 }
        batch_timeout_micros { value: 2000 }
        num_batch_threads { value: 3 }
        allowed_batch_sizes: 8
        allowed_batch_sizes: 32
    """)
    assert isinstance(params, BatchingParameters)
    config = BatchingConfig.from_proto(params)
    assert (config.max_batch_size, config.batch_timeout_micros, config.num_batch_threads) == (32, 2000, 3)
    assert config.allowed_batch_sizes == (8, 32)
    assert config.max_enqueued_batches == 10 and config.thread_pool_name == "batch_threads"
    assert BatchingConfig.from_proto(BatchingParameters()).max_batch_size == 1000
    defaults = BatchingConfig.from_proto(default_parameters())
    assert (defaults.max_batch_size, defaults.batch_timeout_micros, defaults.thread_pool_name) == (
        1000, 0, "model_server_batch_threads")


@pytest.mark.parametrize("text, expected", [
    ("max_batch_size { value: 8 }\nmax_batch_sise { value: 3 }", ["2:", "max_batch_sise"]),
    ("max_batch_size: 8", ["1:", "max_batch_size"]),
    ("max_batch_size { value: 16 }\nallowed_batch_sizes: 4\nallowed_batch_sizes: 8", ["allowed_batch_sizes", "16"]),
    ("allowed_batch_sizes: 8\nallowed_batch_sizes: 4\nmax_batch_size { value: 4 }", ["allowed_batch_sizes"]),
    ("num_batch_threads { value: 0 }", ["num_batch_threads"]),
    ("enable_large_batch_splitting { value: true }", ["enable_large_batch_splitting"]),
])
def test_a_bad_file_fails_naming_the_file_and_what_is_wrong(tmp_path, text, expected):
    path = tmp_path / "batching.config"
    path.write_text(text)
    with pytest.raises(ServingError) as err:
        read_batching_parameters(path)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert str(path) in err.value.message
    for part in expected:
        assert part in err.value.message


def test_merge_pads_with_the_first_row_and_split_drops_the_padding():
    parts = [{"x": np.array([[1, 2]])}, {"x": np.array([[3, 4], [5, 6]])}]
    merged, size = merge_inputs(parts, allowed_batch_sizes=(2, 4, 8))
    assert size == 4
    assert merged["x"].tolist() == [[1, 2], [3, 4], [5, 6], [1, 2]]
    results = split_outputs({"y": merged["x"] * 10}, [1, 2], size)
    assert results[0]["y"].tolist() == [[10, 20]] and results[1]["y"].tolist() == [[30, 40], [50, 60]]
    ragged = [{"s": np.array([[b"a"]], dtype=object)}, {"s": np.array([[b"b", b"c"]], dtype=object)}]
    merged, size = merge_inputs(ragged, pad_variable_length=True)
    assert size == 2 and merged["s"].tolist() == [[b"a", b"a"], [b"b", b"c"]]
    with pytest.raises(ServingError) as err:
        split_outputs({"y": np.array([1.0, 2.0])}, [1, 2], 3)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION  # batching_session.cc SplitOutputTensors
    assert err.value.message == "Batched output tensor's 0th dimension does not equal the sum of the 0th " \
                                "dimension sizes of the input tensors"


# -- through the gRPC server --------------------------------------------------------------------------------

class Loaded:
    """One manager with the stand-in loaded, on its own loop thread; servers are built on it per test."""

    def __init__(self, base):
        self.base = base
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.manager = ModelManager()
        self.call(self.manager.reload_config(configs_to_proto([ModelConfig("tip", str(base), VersionPolicy())])))

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def stop(self):
        self.call(self.manager.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    base = tmp_path_factory.mktemp("models") / "tip"
    export_standin_model(base, 1, bias=0.5)
    running = Loaded(base)
    yield running
    running.stop()


class Server:
    def __init__(self, loaded: Loaded, batcher: Batcher | None):
        self.loaded, self.batcher = loaded, batcher

        async def start():
            server, port = build_server(loaded.manager, 0, host="127.0.0.1", batching=batcher)
            await server.start()
            return server, port
        self.server, port = loaded.call(start())
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)

    def close(self):
        self.channel.close()
        self.loaded.call(self.server.stop(0))
        if self.batcher is not None:
            self.loaded.call(self.batcher.close())


@pytest.fixture
def serve_with(loaded):
    servers = []

    def make(params_text: str | None, batcher: Batcher | None = None) -> Server:
        if batcher is None and params_text is not None:
            batcher = Batcher(parse_batching_parameters(params_text))
        servers.append(Server(loaded, batcher))
        return servers[-1]
    yield make
    for server in servers:
        server.close()


def request_for(fares: list[float]) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "tip"
    for name, value in standin_row().items():
        values = fares if name == "fare" else [value] * len(fares)
        request.inputs[name].CopyFrom(tf.make_tensor_proto(values, dtype=tf.int64 if name in INT64 else None))
    return request


def probabilities(response) -> np.ndarray:
    return tf.make_ndarray(response.outputs["probabilities"])


def batch_size_samples() -> tuple[float, float]:
    labels = {"model_name": "tip"}
    name = "tensorflow_serving_batching_session_processed_batch_size"
    return (REGISTRY.get_sample_value(f"{name}_count", labels) or 0.0,
            REGISTRY.get_sample_value(f"{name}_sum", labels) or 0.0)


def concurrently(stub, requests, timeout=30):
    """Each request from its own client thread; the response or the RpcError of each."""
    def one(request):
        try:
            return stub.Predict(request, timeout=timeout)
        except grpc.RpcError as exc:
            return exc
    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(one, requests))


def test_concurrent_single_rows_are_batched_and_answer_as_unbatched(serve_with):
    plain = serve_with(None)
    batched = serve_with("max_batch_size { value: 16 }\nbatch_timeout_micros { value: 100000 }\n"
                         "max_enqueued_batches { value: 100 }")
    requests = [request_for([float(i)]) for i in range(64)]
    expected = [probabilities(plain.stub.Predict(r, timeout=30)) for r in requests]
    count, total = batch_size_samples()
    responses = concurrently(batched.stub, requests)
    for response, want in zip(responses, expected):
        assert isinstance(response, predict_pb2.PredictResponse), response
        assert response.model_spec.version.value == 1
        got = probabilities(response)
        assert got.shape == want.shape == (1,)
        assert np.allclose(got, want, rtol=1e-6, atol=0)
    assert len({float(probabilities(r)[0]) for r in responses}) == 64  # every caller got its own row
    sizes = batched.batcher.processed_batch_sizes
    assert sum(size * n for size, n in sizes.items()) == 64
    assert max(sizes) > 1
    new_count, new_total = batch_size_samples()
    assert new_count - count == sum(sizes.values()) < 64
    assert new_total - total == 64  # no padding configured: processed rows == request rows


def test_a_lone_request_is_flushed_by_the_timeout(serve_with):
    server = serve_with("max_batch_size { value: 100 }\nbatch_timeout_micros { value: 10000 }")
    begun = time.monotonic()
    response = server.stub.Predict(request_for([3.0, 4.0]), timeout=30)
    assert time.monotonic() - begun < 5  # far below the 30 s deadline: the timeout, not a full batch, sent it
    assert probabilities(response).shape == (2,)
    assert dict(server.batcher.processed_batch_sizes) == {2: 1}
    assert server.server.batcher is server.batcher  # how serving.server finds it for REST


def test_numpy_entry_point_for_rest_matches_the_manager(loaded):
    batcher = Batcher(parse_batching_parameters("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 1000 }"))
    row = standin_row()
    arrays = {name: np.array([value, value], dtype=np.int64 if name in INT64 else
                             np.float32 if isinstance(value, float) else object)
              for name, value in row.items()}
    arrays["fare"] = np.array([1.0, 2.0], np.float32)
    try:
        batched, version = loaded.call(batcher.run(loaded.manager, "tip", arrays))
        direct, direct_version = loaded.call(loaded.manager.run("tip", arrays))
    finally:
        loaded.call(batcher.close())
    assert version == direct_version == 1
    assert np.allclose(batched["probabilities"], direct["probabilities"], rtol=1e-6, atol=0)
    assert dict(batcher.processed_batch_sizes) == {2: 1}


def test_batches_are_padded_to_an_allowed_size_and_results_sliced_back(serve_with):
    plain = serve_with(None)
    server = serve_with("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 200000 }\n"
                        "allowed_batch_sizes: 4\nallowed_batch_sizes: 8")
    requests = [request_for([1.0]), request_for([20.0, 30.0]), request_for([7.0, 8.0, 9.0])]
    expected = [probabilities(plain.stub.Predict(r, timeout=30)) for r in requests]
    padding_name = "tensorflow_serving_batching_session_padding_size_sum"
    padding = REGISTRY.get_sample_value(padding_name, {"model_name": "tip"}) or 0.0
    responses = concurrently(server.stub, requests)
    for response, want in zip(responses, expected):
        assert np.allclose(probabilities(response), want, rtol=1e-6, atol=0)
    rows = sum(size * n for size, n in server.batcher.processed_batch_sizes.items())
    assert rows == 6
    added = REGISTRY.get_sample_value(padding_name, {"model_name": "tip"}) - padding
    # each batch is padded to 4 or 8: 6 rows in one batch -> 2 padding rows; split batches pad more
    assert added >= 2 and (added + rows) % 4 == 0


def test_a_request_larger_than_max_batch_size_is_invalid_argument(serve_with):
    server = serve_with("max_batch_size { value: 2 }")
    with pytest.raises(grpc.RpcError) as err:
        server.stub.Predict(request_for([1.0, 2.0, 3.0]), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "Task size 3" in err.value.details()
    assert probabilities(server.stub.Predict(request_for([1.0, 2.0]), timeout=30)).shape == (2,)


def test_a_full_queue_answers_unavailable_and_later_requests_succeed(serve_with, monkeypatch):
    batcher = Batcher(parse_batching_parameters(
        "max_batch_size { value: 1 }\nmax_enqueued_batches { value: 1 }\nnum_batch_threads { value: 1 }"))
    real = Batcher.run_model

    def slow(*args):
        time.sleep(1.0)
        return real(*args)
    monkeypatch.setattr(batcher, "run_model", slow)
    server = serve_with(None, batcher)
    responses = concurrently(server.stub, [request_for([float(i)]) for i in range(6)])
    rejected = [r for r in responses if isinstance(r, grpc.RpcError)]
    assert rejected and all(r.code() == grpc.StatusCode.UNAVAILABLE for r in rejected)
    assert all(r.details() == "The batch scheduling queue to which this task was submitted is full"
               for r in rejected)
    assert len(responses) - len(rejected) >= 2  # one running, one queued
    monkeypatch.setattr(batcher, "run_model", real)
    assert probabilities(server.stub.Predict(request_for([5.0]), timeout=30)).shape == (1,)


def test_a_model_error_fails_the_whole_batch_and_the_server_keeps_serving(serve_with, monkeypatch):
    batcher = Batcher(parse_batching_parameters("max_batch_size { value: 4 }\nbatch_timeout_micros { value: 5000000 }"))
    calls = []

    def broken(servable, signature, inputs, output_filter):
        calls.append(len(inputs["fare"]))
        raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, "out of memory in the model")
    monkeypatch.setattr(batcher, "run_model", broken)
    server = serve_with(None, batcher)
    responses = concurrently(server.stub, [request_for([float(i)]) for i in range(4)])
    assert calls == [4]  # one batch of all four, run once
    assert all(isinstance(r, grpc.RpcError) for r in responses)
    assert {(r.code(), r.details()) for r in responses} == {
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "out of memory in the model")}
    monkeypatch.setattr(batcher, "run_model", Batcher.run_model)
    responses = concurrently(server.stub, [request_for([float(i)]) for i in range(4)])
    assert all(probabilities(r).shape == (1,) for r in responses)
