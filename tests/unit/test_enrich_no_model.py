"""A model server without the model is `no_model`, not `invalid`: its own status, counted, final at once,
with a reason that names what is missing and the command that serves one."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from pyflink.common import Row
from tensorflow.core.framework import types_pb2

from flink_jobs.enrich import STATUSES, Outcome, prediction_row, status_of
from flink_jobs.enrich_job import input_fields, output_type
from flink_jobs.enrich_operator import RETRYABLE, EnrichFunction, StatusIs
from liveml.config import EnrichConfig
from liveml.online.base import EntityRow
from serving.client import ModelNotFound, PredictionClient, model_missing
from serving.model_config import ModelConfig, VersionPolicy, configs_to_proto
from serving.testing import export_standin_model, standin_row
from tests.unit.test_serving_grpc import Running

pytestmark = pytest.mark.unit

# Every gRPC code, and the status a prediction row gets for it.
EXPECTED = {
    "OK": "ok",
    "CANCELLED": "unavailable", "UNKNOWN": "unavailable", "RESOURCE_EXHAUSTED": "unavailable",
    "ABORTED": "unavailable", "INTERNAL": "unavailable", "UNAVAILABLE": "unavailable",
    "DEADLINE_EXCEEDED": "timeout",
    "NOT_FOUND": "no_model",
    "INVALID_ARGUMENT": "invalid", "ALREADY_EXISTS": "invalid", "PERMISSION_DENIED": "invalid",
    "FAILED_PRECONDITION": "invalid", "OUT_OF_RANGE": "invalid", "UNIMPLEMENTED": "invalid",
    "DATA_LOSS": "invalid", "UNAUTHENTICATED": "invalid",
}


class Empty(Running):
    """The in-process model server with model ``tip`` configured, but no label (and maybe no version)."""

    def config(self, labels):
        return configs_to_proto([ModelConfig("tip", str(self.base), VersionPolicy("all"), {})])


@pytest.fixture(scope="module")
def empty(tmp_path_factory):
    base = tmp_path_factory.mktemp("no-models") / "tip"
    base.mkdir()
    running = Empty(base)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory):
    base = tmp_path_factory.mktemp("unlabelled") / "tip"
    export_standin_model(base, 1)
    running = Empty(base)
    yield running
    running.stop()


def test_every_grpc_code_has_its_status():
    assert set(EXPECTED) == {c.name for c in grpc.StatusCode}
    for code in grpc.StatusCode:
        assert status_of(code.name) == EXPECTED[code.name], code
        assert status_of(code.name) in STATUSES


def test_no_model_is_never_retried():
    assert "no_model" in STATUSES and "no_model" not in RETRYABLE and "invalid" not in RETRYABLE
    status = output_type()[0].index("status")
    row = [None] * len(output_type()[0])
    row[status] = "no_model"
    assert not StatusIs(status)([tuple(row)])


def test_unknown_labels_and_missing_versions_are_missing_models():
    assert model_missing(grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(tips)")
    assert model_missing(grpc.StatusCode.INVALID_ARGUMENT, "Unrecognized servable version label: stable")
    assert not model_missing(grpc.StatusCode.INVALID_ARGUMENT, "input fare: expected float, got string")
    assert not model_missing(grpc.StatusCode.UNAVAILABLE, "connection refused")


def _predict(address: str, **spec):
    async def go():
        async with PredictionClient(address, timeout_s=5, retries=3) as client:
            return await client.predict(standin_row(), model="tip", **spec)

    return asyncio.run(go())


def test_a_server_without_versions_names_the_model_and_the_commands(empty):
    with pytest.raises(ModelNotFound) as err:
        _predict(f"127.0.0.1:{empty.port}", label="stable")
    exc = err.value
    # a model with no version has no labels: TF Serving's GetModelVersionForLabel (server_core.cc) answers
    # INVALID_ARGUMENT "Unrecognized servable version label", and the client still knows it for a missing model
    assert isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.INVALID_ARGUMENT
    text = str(exc)
    assert "no version of model 'tip' under label 'stable'" in text and f"127.0.0.1:{empty.port}" in text
    assert "`liveml train`" in text and "`liveml models promote <version> --label stable --model tip`" in text


def test_an_unknown_label_names_the_label(unlabelled):
    with pytest.raises(ModelNotFound) as err:
        _predict(f"127.0.0.1:{unlabelled.port}", label="canary")
    text = str(err.value)
    assert "model 'tip' under label 'canary'" in text and "--label canary" in text
    with pytest.raises(ModelNotFound, match="no version 7 of model 'tip' loaded"):
        _predict(f"127.0.0.1:{unlabelled.port}", version=7)


def test_a_bad_request_stays_a_plain_grpc_error(unlabelled):
    async def go():
        async with PredictionClient(f"127.0.0.1:{unlabelled.port}", timeout_s=5) as client:
            await client.predict(standin_row(), model="tip", version=1, output_filter=["no_such_output"])

    with pytest.raises(grpc.aio.AioRpcError) as err:
        asyncio.run(go())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and not isinstance(err.value, ModelNotFound)


def test_no_model_rows_are_valid_rows():
    event = {"trip_id": "t-1", "event_time": 1}
    row = prediction_row(event, None, Outcome("no_model", reason="no model"), "tips", "stable", 1.0, 2)
    assert row["status"] == "no_model" and row["score"] is None and row["fallback_reason"] == "no model"


# --- the operator itself, against the in-process server without a model ---------------------------------
class _Group:
    """Enough of Flink's metric group for the operator: every counter is kept, by its group path."""

    def __init__(self, path=(), counts=None, gauges=None):
        self.path, self.counts, self.gauges = path, {} if counts is None else counts, {} if gauges is None else gauges

    def add_group(self, *names):
        return _Group(self.path + names, self.counts, self.gauges)

    def counter(self, name):
        key = ".".join(self.path + (name,))
        counts = self.counts

        class C:
            def inc(self, n=1):
                counts[key] = counts.get(key, 0) + n

        return C()

    def distribution(self, name):
        return type("D", (), {"update": lambda self, v: None})()

    def gauge(self, name, fn):
        self.gauges[name] = fn


class _Context:
    def __init__(self):
        self.group = _Group()

    def get_metrics_group(self):
        return self.group


class _NoFeatures:
    async def get_many(self, requests, now_ms=None):
        return [EntityRow(v.name, str(e), "missing") for v, e in requests]


def _event(i: int) -> dict:
    names = [n for n, _ in input_fields()]
    values = {"trip_id": f"trip-{i}", "event_time": 1_420_000_000_000, "fare": 12.5, "trip_miles": 2.0,
              "trip_seconds": 600, "payment_type": "Cash", "company": "Flash Cab",
              "pickup_community_area": 8, "dropoff_community_area": 32}
    return {n: values.get(n) for n in names}


def test_the_operator_answers_no_model_at_once_and_counts_it(empty):
    names = [n for n, _ in input_fields()]
    fields = output_type()[0]
    settings = {"grpc": f"127.0.0.1:{empty.port}", "redis_url": "redis://127.0.0.1:1/0", "model_name": "tip",
                **EnrichConfig(retries=3, timeout_ms=5000, deadline_ms=500).model_dump()}
    fn = EnrichFunction(settings, names, fields)
    ctx = _Context()
    fn.open(ctx)
    batch = Row([Row(*_event(i).values()) for i in range(3)])

    async def go():
        await fn._start()
        fn._store = _NoFeatures()
        t0 = time.perf_counter()
        rows = await fn.async_invoke(batch)
        return rows, time.perf_counter() - t0

    rows, took = asyncio.run(go())
    status, reason = fields.index("status"), fields.index("fallback_reason")
    assert [r[status] for r in rows] == ["no_model"] * 3
    assert "model 'tip'" in rows[0][reason] and "`liveml train`" in rows[0][reason]
    assert not StatusIs(status)(rows)  # the retry strategy takes the batch as final
    assert took < 0.5 and fn.attempts == {}  # one attempt, no wait; nothing left for a retry
    ctx.group.gauges["flushed_rows"]()  # what Flink's gauge read does on the bundle's thread
    counts = ctx.group.counts
    assert counts["liveml.enrich.version.none.status.no_model.predictions"] == 3
    assert counts["liveml.enrich.predictions"] == 3 and counts.get("liveml.enrich.retries", 0) == 0
