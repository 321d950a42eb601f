"""The offline store on the real stack: real taxi trips through the feature job into Iceberg, then
backfill (Flink batch), parity, time travel, training sets and SQL, all through the `liveml` command."""

from __future__ import annotations

import hashlib
import time
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from flink_jobs import replay as rp
from iceberg_schemas.features import FEATURE_VIEWS, SPEC_VERSION, view
from iceberg_schemas.training import TIPS
from liveml.config import load_config
from liveml.flink import wait_for_job
from liveml.offline import OfflineStore
from liveml.parity import parity
from liveml.tenant import create_tenant
from tests.conftest import cli_json, plain_flink_run, run_cli

pytestmark = pytest.mark.integration

# the full real replay: every trip of 2013-2016, trip-01518 (1,710 miles) dead-lettered among them
N_TRIPS = None


@pytest.fixture(scope="module")
def streamed(stack_config):
    """Real trips replayed and the feature job run over them (bounded), in a tenant of its own."""
    tenant = create_tenant(load_config(stack_config, env={}), "offline", 3)
    cfg = load_config(tenant, env={})
    trips = rp.load_trips().sort_values("start_ms", kind="stable")
    trips = (trips.head(N_TRIPS) if N_TRIPS else trips).reset_index(drop=True)
    events = rp.trip_events(trips)
    rp.replay(events, rp.kafka_producer(cfg.kafka.bootstrap_servers), topic_prefix=cfg.kafka.topic_prefix)
    job_id = plain_flink_run(cfg.flink.port, "flink_jobs/features_job.py", tenant, "--bounded", "--no-redis")
    assert wait_for_job(cfg, job_id, timeout=600) == "FINISHED"
    return tenant, cfg, events


@pytest.fixture(scope="module")
def backfilled(streamed):
    """A backfill of the first month alone, then of everything: two snapshots of each backfill table."""
    tenant, cfg, events = streamed
    first = cli_json(tenant, "backfill", "--from", "2013-01-03", "--to", "2013-01-20")
    time.sleep(0.05)
    between = datetime.now(timezone.utc).isoformat()
    time.sleep(0.05)
    full = cli_json(tenant, "backfill", "--redis")
    return first, between, full


def test_backfill_covers_whole_months_and_reports(backfilled):
    first, _, full = backfilled
    assert first["from"].startswith("2013-01-01T00:00:00") and first["to"].startswith("2013-01-31T23:59:59.999")
    assert all(n > 0 for n in first["rows"].values())
    assert full["events"] > first["events"] > 0
    assert full["events_per_s"] > 0 and full["spec_version"] == SPEC_VERSION
    assert all(full["redis_entities"][v.name] > 0 for v in FEATURE_VIEWS)


def _frames(events):
    trips = pd.DataFrame([e.value for e in events if e.topic == rp.TRIPS_TOPIC])
    labels = pd.DataFrame([e.value for e in events if e.topic == rp.LABELS_TOPIC])
    return trips, labels


@pytest.mark.parametrize("view_name", [v.name for v in FEATURE_VIEWS])
def test_stream_and_backfill_equal_a_recomputation_exactly(streamed, backfilled, view_name):
    """Every feature row of the full real replay, from the stream and from the backfill, equals pandas over
    the same events, bit for bit (no tolerance: see flink_jobs.feature_sql.agg_expr)."""
    from tests.reference import expected_view

    tenant, cfg, events = streamed
    v = view(view_name)
    trips, labels = _frames(events)
    frame, time_col = (labels, "label_time") if v.source == "labels" else (trips, "event_time")
    want = expected_view(frame, v, time_col).set_index("source_id").sort_index()
    store = OfflineStore.from_config(cfg)
    for table in (v.table, f"backfill.{v.name}"):
        got = store.scan(table, where=f"spec_version = {SPEC_VERSION}").to_pandas().set_index("source_id").sort_index()
        assert list(got.index) == list(want.index), table
        for name in v.feature_names():
            np.testing.assert_array_equal(got[name].to_numpy(float), want[name].to_numpy(float),
                                          err_msg=f"{table}.{name}")


def test_parity_stream_equals_backfill(streamed, backfilled):
    tenant, *_ = streamed
    result = cli_json(tenant, "parity")
    per_view = {v["view"]: v for v in result["views"]}
    for v in FEATURE_VIEWS:
        assert per_view[v.name]["compared"] > 300, v.name
    assert result["mismatches"] == 0, result
    # the stream wrote every real trip's feature rows, so "compared" covers them all
    store = OfflineStore.from_config(load_config(tenant, env={}))
    streamed_rows = sum(store.scan(v.table).num_rows for v in FEATURE_VIEWS)
    assert result["compared"] == streamed_rows


def test_parity_reports_rows_on_one_side_only(streamed, backfilled):
    """Against the first, January-only backfill snapshot, the stream's later months are stream-only rows."""
    tenant, *_ = streamed
    store = OfflineStore.from_config(load_config(tenant, env={}))
    january = {"backfill.pickup_area_1h": store.history("backfill.pickup_area_1h")[0]["snapshot_id"]}
    v = [view("pickup_area_1h")]
    assert parity(store, v, snapshots=january)["mismatches"] == 0  # default range: what both cover
    got = parity(store, v, "2013-01-01", "2013-06-30", snapshots=january, examples=3)["views"][0]
    assert got["stream_only"] > 0 and got["backfill_only"] == got["value_mismatches"] == 0
    assert got["mismatches"] == got["stream_only"] and len(got["examples"]) == 3
    assert all(e["stream_only"] and e["backfill_trips_count_1h"] is None for e in got["examples"])
    proc = run_cli(tenant, "parity", "--views", "pickup_area_1h", "--from", "2013-01-01", "--to", "2013-01-31",
                   check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_time_travel_on_flink_written_tables(streamed, backfilled):
    tenant, *_ = streamed
    first, between, full = backfilled
    history = cli_json(tenant, "tables", "history", "backfill.pickup_area_1h")
    assert len(history) == 2
    (a, b) = history
    assert a["total_rows"] == first["rows"]["pickup_area_1h"] < b["total_rows"]
    at_a = cli_json(tenant, "query", "backfill.pickup_area_1h", "--snapshot", str(a["snapshot_id"]))
    at_b = cli_json(tenant, "query", "backfill.pickup_area_1h", "--snapshot", str(b["snapshot_id"]))
    as_of = cli_json(tenant, "query", "backfill.pickup_area_1h", "--as-of", between, "--columns", "source_id")
    assert len(at_a) == a["total_rows"] and len(at_b) == b["total_rows"] and len(as_of) == a["total_rows"]
    assert {r["event_time"][:7] for r in at_a} == {"2013-01"}
    # re-running January did not duplicate it
    jan = [r for r in at_b if r["event_time"].startswith("2013-01")]
    assert sorted(r["source_id"] for r in jan) == sorted(r["source_id"] for r in at_a)
    # filters push down and select
    some = cli_json(tenant, "query", "raw.trips", "--where", "event_type = 'end' and fare > 30",
                    "--columns", "trip_id,fare", "--limit", "5")
    assert 0 < len(some) <= 5 and all(r["fare"] > 30 and set(r) == {"trip_id", "fare"} for r in some)


def _hashes(rows) -> list[str]:
    return sorted(hashlib.sha256(repr(sorted(r.items())).encode()).hexdigest() for r in rows)


def test_training_set_build_and_rebuild(streamed, backfilled):
    tenant, cfg, events = streamed
    built = cli_json(tenant, "training-set", "build")
    assert set(built) >= {"table", "snapshot_ids", "rows", "spec_version"}
    assert built["table"] == "training.tips" and built["spec_version"] == SPEC_VERSION
    assert set(built["snapshot_ids"]) == {"labels.trips", "raw.trips", *(v.table for v in FEATURE_VIEWS)}
    from tests.reference import valid

    trips, labels = _frames(events)
    ends = trips[trips["event_type"] == "end"]
    decided = set(ends[valid(ends, "trips")]["trip_id"])
    assert len(decided) < len(set(labels["trip_id"]))  # the real data has a dead-lettered end event
    # a label whose decision event was dead-lettered is left out, and counted with its reason
    assert built["rows"] == len(set(labels["trip_id"]) & decided)
    assert built["excluded"]["no_decision_event"] == len(set(labels["trip_id"]) - decided)
    rows = cli_json(tenant, "query", "training.tips")
    assert len(rows) == built["rows"] and list(rows[0]) == TIPS.columns()
    # every request-time field came from the trip's end event
    assert sum(r["fare"] is not None for r in rows) == len(rows)
    # the features are filled for most trips: the busy areas have a trip within the hour
    assert sum(r["trips_count_1h"] is not None for r in rows) > len(rows) // 3
    again = cli_json(tenant, "training-set", "build", "--from-lineage", "training.tips", "--output", "tips_again")
    assert again["snapshot_ids"] == built["snapshot_ids"]
    assert _hashes(cli_json(tenant, "query", "training.tips_again")) == _hashes(rows)
    # the backfilled features give the same training set: no training/serving skew
    from_backfill = cli_json(tenant, "training-set", "build", "--source", "backfill", "--output", "tips_bf")
    assert from_backfill["rows"] == built["rows"]
    bf = pd.DataFrame(cli_json(tenant, "query", "training.tips_bf")).set_index("trip_id").sort_index()
    st = pd.DataFrame(rows).set_index("trip_id").sort_index()
    pd.testing.assert_frame_equal(bf[st.columns], st, check_exact=True)


def test_sql_joins_tables_and_refuses_writes(streamed, backfilled):
    tenant, *_ = streamed
    got = cli_json(tenant, "sql", "SELECT count(*) AS n, count(DISTINCT l.trip_id) AS labelled FROM raw.trips r "
                                  "JOIN labels.trips l USING (trip_id) WHERE r.event_type = 'end'")
    from tests.reference import valid

    trips, _ = _frames(streamed[2])
    ends = trips[trips["event_type"] == "end"]
    assert got[0]["n"] == got[0]["labelled"] == valid(ends, "trips").sum()  # every trip with a good end event
    proc = run_cli(tenant, "sql", "DELETE FROM raw.trips", check=False)
    assert proc.returncode == 6 and "read-only" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli(tenant, "query", "raw.trips", "--snapshot", "1", check=False)
    assert proc.returncode == 6 and "has no snapshot 1" in proc.stderr and "Traceback" not in proc.stderr


def test_backfill_keeps_rows_of_other_spec_versions(streamed, backfilled):
    """A recompute replaces its own (month, spec version) partitions and nothing else. Runs last: it adds
    a snapshot to backfill.pickup_area_1h."""
    from pyflink.table import EnvironmentSettings, TableEnvironment

    from flink_jobs.common import catalog_ddl

    tenant, cfg, _ = streamed
    store = OfflineStore.from_config(cfg)
    current_rows = store.scan("backfill.pickup_area_1h", where=f"spec_version = {SPEC_VERSION}").num_rows
    # an older spec version's row in January, written by Flink (pyiceberg 0.6.1 cannot write partitioned tables)
    t_env = TableEnvironment.create(EnvironmentSettings.in_batch_mode())
    t_env.get_config().set("table.local-time-zone", "UTC")
    t_env.execute_sql(catalog_ddl(cfg))
    t_env.execute_sql(
        f"INSERT INTO `{cfg.catalog.name}`.`backfill`.`pickup_area_1h` "
        "(pickup_community_area, event_time, spec_version, source_id, trips_count_1h) VALUES "
        f"(8, CAST(TIMESTAMP '2013-01-05 10:00:00' AS TIMESTAMP_LTZ(6)), {SPEC_VERSION - 1}, 'old-spec-row', 99)"
    ).wait()
    again = cli_json(tenant, "backfill", "--from", "2013-01-10", "--to", "2013-01-11", "--views", "pickup_area_1h")
    assert again["rows"]["pickup_area_1h"] > 0
    old = store.scan("backfill.pickup_area_1h", where=f"spec_version = {SPEC_VERSION - 1}")
    assert old.column("source_id").to_pylist() == ["old-spec-row"]
    assert store.scan("backfill.pickup_area_1h", where=f"spec_version = {SPEC_VERSION}").num_rows == current_rows
