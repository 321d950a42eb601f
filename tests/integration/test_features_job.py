"""The feature job on the real stack, compared with pandas over the same real trips.

Each test runs in its own tenant: a topic prefix, a Redis database and a catalog of its own, on the
session's Kafka, Flink and Redis.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyiceberg.catalog import load_catalog

from flink_jobs import replay as rp
from iceberg_schemas.features import FEATURE_VIEWS, SPEC_VERSION, view
from liveml.config import load_config
from liveml.flink import wait_for_job
from liveml.online.redis import RedisOnlineStore
from liveml.tenant import create_tenant
from tests.conftest import cli_json, plain_flink_run
from tests.reference import expected_view, latest_per_entity

pytestmark = pytest.mark.integration

N_TRIPS = 1200


def make_tenant(stack_config: Path, name: str, db: int) -> Path:
    return create_tenant(load_config(stack_config, env={}), name, db)


def real_trips(n: int) -> pd.DataFrame:
    return rp.load_trips().sort_values("start_ms", kind="stable").head(n).reset_index(drop=True)


def event_frames(events: list[rp.Event]) -> tuple[pd.DataFrame, pd.DataFrame]:
    trips = pd.DataFrame([e.value for e in events if e.topic == rp.TRIPS_TOPIC])
    labels = pd.DataFrame([e.value for e in events if e.topic == rp.LABELS_TOPIC])
    return trips, labels


def read_table(cfg_path: Path, table: str) -> pd.DataFrame:
    conf = cli_json(cfg_path, "config")["catalog"]
    return load_catalog(conf["name"], **conf["properties"]).load_table(table).scan().to_pandas()


@pytest.fixture(scope="module")
def replayed(stack_config):
    """N real trips (their start, end and label events) replayed once, and the job run over them."""
    tenant = make_tenant(stack_config, "correct", 1)
    cfg = load_config(tenant, env={})
    events = rp.trip_events(real_trips(N_TRIPS))
    rp.replay(events, rp.kafka_producer(cfg.kafka.bootstrap_servers), topic_prefix=cfg.kafka.topic_prefix)
    job_id = plain_flink_run(cfg.flink.port, "flink_jobs/features_job.py", tenant, "--bounded")
    assert wait_for_job(cfg, job_id, timeout=600) == "FINISHED"
    return tenant, cfg, events, job_id


def _time_col(v) -> str:
    return "label_time" if v.source == "labels" else "event_time"


def _frame_for(v, trips, labels):
    return labels if v.source == "labels" else trips


@pytest.mark.parametrize("view_name", [v.name for v in FEATURE_VIEWS])
def test_iceberg_feature_rows_equal_pandas(replayed, view_name):
    tenant, cfg, events, _ = replayed
    v = view(view_name)
    trips, labels = event_frames(events)
    want = expected_view(_frame_for(v, trips, labels), v, _time_col(v)).set_index("source_id").sort_index()
    got = read_table(tenant, v.table).set_index("source_id").sort_index()

    assert len(want) > 100, "the reference is too small to mean anything"
    assert got.index.is_unique
    assert list(got.index) == list(want.index)
    assert (got["spec_version"] == SPEC_VERSION).all()
    got_ms = ((got["event_time"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)).to_numpy()
    assert (got_ms == want["event_time_ms"].to_numpy()).all()
    for agg, name in zip(v.aggregations, v.feature_names()):
        # exact for every op: the window's aggregates depend on its events alone (feature_sql.agg_expr)
        np.testing.assert_array_equal(got[name].to_numpy(float), want[name].to_numpy(float), err_msg=name)


@pytest.mark.parametrize("view_name", [v.name for v in FEATURE_VIEWS])
def test_redis_holds_the_latest_values(replayed, view_name):
    tenant, cfg, events, _ = replayed
    v = view(view_name)
    trips, labels = event_frames(events)
    latest = latest_per_entity(expected_view(_frame_for(v, trips, labels), v, _time_col(v)), v)
    store = RedisOnlineStore(cfg.redis.url)
    entities = [int(e) if v.entity_type == "int" else e for e in latest.index]
    now = int(latest["event_time_ms"].max()) + 1
    rows = {r.entity: r for r in store.get(v, entities, now_ms=now)}
    checked = 0
    for entity, want in latest.iterrows():
        row = rows[str(int(entity) if v.entity_type == "int" else entity)]
        if now - want["event_time_ms"] > v.ttl_s * 1000:
            assert row.status == "expired"
            continue
        assert row.status == "ok", (entity, row)
        assert row.event_time_ms == want["event_time_ms"]
        for name in v.feature_names():
            assert row.values[name] == want[name], (entity, name)  # exact: feature_sql.agg_expr
        checked += 1
    assert checked >= 1


def test_raw_tables_hold_every_good_event(replayed):
    tenant, cfg, events, _ = replayed
    trips, labels = event_frames(events)
    raw = read_table(tenant, "raw.trips")
    from tests.reference import valid

    good = trips[valid(trips, "trips")]
    assert len(raw) == len(good)
    assert not raw.duplicated(["trip_id", "event_type"]).any()
    assert set(zip(raw.trip_id, raw.event_type)) == set(zip(good.trip_id, good.event_type))
    assert not raw["is_late"].any()
    assert len(read_table(tenant, "labels.trips")) == len(labels)


def test_dlq_holds_exactly_the_invalid_real_rows(replayed):
    """Real rows that break the contract (e.g. 1,710 miles) are dead-lettered with a reason, not lost."""
    tenant, cfg, events, _ = replayed
    trips, _ = event_frames(events)
    from tests.reference import valid

    bad = trips[~valid(trips, "trips")]
    dlq = consume_all(cfg, cfg.kafka.topic("trips.dlq"))
    assert sorted(json.loads(d["payload"])["trip_id"] for d in dlq) == sorted(bad["trip_id"])
    assert all(d["reason"].startswith("absurd_value:") for d in dlq)


def consume_all(cfg, topic: str, timeout_s: float = 20) -> list[dict]:
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": cfg.kafka.bootstrap_servers, "group.id": f"test-{time.time()}",
                         "auto.offset.reset": "earliest", "isolation.level": "read_committed",
                         "enable.auto.commit": False})
    consumer.subscribe([topic])
    out, idle_since = [], time.monotonic()
    while time.monotonic() - idle_since < 5 and time.monotonic() - idle_since < timeout_s:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        out.append(json.loads(msg.value()))
        idle_since = time.monotonic()
    consumer.close()
    return out


def test_features_get_answers(replayed):
    tenant, cfg, events, _ = replayed
    trips, _ = event_frames(events)
    area = int(trips[trips.event_type == "end"].pickup_community_area.dropna().iloc[-1])
    last_ms = int(trips.event_time.max())
    rows = cli_json(tenant, "features", "get", str(area), "--view", "pickup_area_1h", "--now-ms", str(last_ms))
    assert rows[0]["status"] == "ok" and rows[0]["values"]["trips_count_1h"] >= 1
    later = cli_json(tenant, "features", "get", str(area), "--view", "pickup_area_1h",
                     "--now-ms", str(last_ms + 3 * 3600 * 1000))
    assert later[0]["status"] == "expired" and later[0]["values"] == {}
