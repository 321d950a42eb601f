"""Point-in-time training sets on a real pyiceberg catalog, checked against pandas ``merge_asof``.

Each label gets a feature row 1 ms before its decision time and one 1 ms after: only the earlier may be
used. Some labels only have rows older than the view's TTL (NULL expected), some exactly at the TTL (kept).
"""

import hashlib
import json
import random
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from iceberg_schemas.features import FEATURE_VIEWS, SPEC_VERSION, view
from iceberg_schemas.training import TIPS
from liveml.offline import OfflineStore, QueryError
from liveml.training_set import build_training_set, lineage, training_sql
from tests.offline_fixtures import cli_catalog, append, at, create, local_catalog

pytestmark = pytest.mark.unit

MS = timedelta(milliseconds=1)
AREA_1H = view("pickup_area_1h")
COMPANIES = ["Flash Cab", "Taxi Affiliation Services", "Dispatch Taxi"]


def _feature_row(v, entity, t, base: float, version: int = SPEC_VERSION) -> dict:
    row = {v.entity: entity, "event_time": t, "window_end": t, "spec_version": version, "computed_at": t,
           "source_id": f"s{base}"}
    for agg, name in zip(v.aggregations, v.feature_names()):
        row[name] = int(base) if agg.is_integer else base + 0.5
    return row


def _dataset(n: int, seed: int):
    rnd = random.Random(seed)
    labels, context, feats = [], [], {v.name: [] for v in FEATURE_VIEWS}
    for i in range(n):
        d = at(rnd.randint(0, 6 * 3600 * 1000) / 1000)
        area, company = i + 1, rnd.choice(COMPANIES)
        labels.append({"trip_id": f"t{i}", "decision_time": d, "label_time": d + timedelta(minutes=15),
                       "big_tipper": rnd.random() < 0.3, "company": company, "fare": 10.0})
        context.append({"trip_id": f"t{i}", "event_type": "end", "event_time": d, "pickup_community_area": area,
                        "dropoff_community_area": rnd.randint(1, 77), "company": company, "payment_type": rnd.choice(["Cash", "Credit Card"]),
                        "fare": round(rnd.uniform(3, 60), 2), "trip_miles": 2.5, "trip_seconds": 600})
        context.append({"trip_id": f"t{i}", "event_type": "start", "event_time": d - timedelta(minutes=10),
                        "pickup_community_area": 99, "company": "wrong"})  # must not be used
        ttl = AREA_1H.ttl
        before = {0: d - ttl - MS, 1: d - ttl}.get(i % 5, d - MS)  # expired, exactly at TTL, just before
        feats[AREA_1H.name] += [_feature_row(AREA_1H, area, before, 10 * i + 1),
                                _feature_row(AREA_1H, area, d + MS, 10 * i + 2),
                                _feature_row(AREA_1H, area, d - timedelta(microseconds=500), -1,
                                             version=SPEC_VERSION - 1)]  # an old spec version: ignored
    for v in FEATURE_VIEWS:
        if v is AREA_1H:
            continue
        entities = COMPANIES if v.entity == "company" else [c["pickup_community_area"] for c in context[::2]]
        for j in range(4 * n):
            t = at(rnd.randint(-v.ttl_s * 1000, 6 * 3600 * 1000) / 1000)
            feats[v.name].append(_feature_row(v, rnd.choice(entities), t, 1000 + j))
    return labels, context, feats


def _load(tmp_path, n=60, seed=7, mutate=None, catalog=None, empty_views=()):
    """A local catalog (or ``catalog``) with ``_dataset(n, seed)`` in it; ``mutate(labels, context)`` edits
    the rows first, and the feature tables of ``empty_views`` get none."""
    catalog = catalog or local_catalog(tmp_path)
    create(catalog, "labels.trips")
    create(catalog, "raw.trips")
    for v in FEATURE_VIEWS:
        create(catalog, v.table)
    labels, context, feats = _dataset(n, seed)
    if mutate is not None:
        labels, context = mutate(labels, context)
    append(catalog, "labels.trips", labels)
    append(catalog, "raw.trips", context)
    for name, rows in feats.items():
        if name not in empty_views:
            append(catalog, f"features.{name}", rows)
    return OfflineStore(catalog, tmp_path / "duck"), labels, context, feats


def _reference(labels, context, feats) -> pd.DataFrame:
    """Independent computation: each trip's latest usable label, only trips whose end event arrived, then
    pandas merge_asof per view and the TTL mask."""
    spine = pd.DataFrame(labels)[["trip_id", "label_time", "decision_time", "big_tipper"]]
    spine = spine.dropna(subset=["decision_time", "big_tipper"]).sort_values(
        ["label_time", "big_tipper"], ascending=[False, True]).drop_duplicates("trip_id").drop(columns="label_time")
    spine["decision_time"] = pd.to_datetime(spine["decision_time"], utc=True)
    spine["big_tipper"] = spine["big_tipper"].astype(bool)
    ctx = pd.DataFrame(context)
    ctx = ctx[ctx.event_type == "end"][["trip_id", *TIPS.context_fields]]
    out = spine.merge(ctx, on="trip_id", how="inner").sort_values("decision_time")
    for v in FEATURE_VIEWS:
        f = pd.DataFrame(feats[v.name])
        f = f[f.spec_version == SPEC_VERSION][[v.entity, "event_time", *v.feature_names()]]
        f = f.rename(columns={"event_time": "_t"}).sort_values("_t")
        f[v.entity] = f[v.entity].astype(out[v.entity].dtype)
        out = pd.merge_asof(out, f, left_on="decision_time", right_on="_t", by=v.entity, direction="backward")
        expired = (out["decision_time"] - out["_t"]) > v.ttl
        out.loc[expired | out["_t"].isna(), v.feature_names()] = np.nan
        out = out.drop(columns="_t")
    return out.sort_values("trip_id").reset_index(drop=True)


def test_only_earlier_values_within_ttl_are_used(tmp_path):
    store, labels, context, feats = _load(tmp_path)
    result = build_training_set(store, TIPS)
    got = store.scan("training.tips").to_pandas().set_index("trip_id")
    assert result["rows"] == len(labels) == len(got)
    for i in range(len(labels)):
        value = got.loc[f"t{i}", "trips_count_1h"]
        if i % 5 == 0:
            assert pd.isna(value), f"t{i}: a value older than the TTL must read as NULL"
        else:
            assert value == 10 * i + 1, f"t{i}: must use the row before the decision time, not after"
        assert got.loc[f"t{i}", "fare_avg_1h"] in (10 * i + 1.5,) or (i % 5 == 0)


@pytest.mark.parametrize("slice_rows", [250_000, 17])
def test_equals_pandas_merge_asof(tmp_path, slice_rows):
    store, labels, context, feats = _load(tmp_path, n=120, seed=11)
    built = build_training_set(store, TIPS, slice_rows=slice_rows)
    assert built["slices"] == (1 if slice_rows > 120 else 8)
    got = store.scan("training.tips").to_pandas().sort_values("trip_id").reset_index(drop=True)
    want = _reference(labels, context, feats)
    assert list(got.columns) == TIPS.columns()
    pd.testing.assert_frame_equal(got[want.columns], want, check_dtype=False)
    # the random views really reach back: some values present, some expired or absent
    assert 0 < got["pickups_count_15m"].notna().sum() < len(got)  # a 30 min TTL over 6 h of labels
    assert got["tip_rate_24h"].notna().all()  # a 48 h TTL, three busy companies


def _row_hashes(df: pd.DataFrame) -> list[str]:
    return sorted(hashlib.sha256(repr(tuple(r)).encode()).hexdigest() for r in df.itertuples(index=False))


def test_rebuild_from_recorded_snapshots_is_identical(tmp_path):
    store, labels, context, feats = _load(tmp_path, n=50, seed=3)
    first = build_training_set(store, TIPS)
    assert set(first["snapshot_ids"]) == {"labels.trips", "raw.trips", *(v.table for v in FEATURE_VIEWS)}
    assert first["spec_version"] == SPEC_VERSION
    original = store.scan("training.tips", snapshot_id=first["snapshot_id"]).to_pandas()
    # more data arrives: new labels, and feature rows that would change old labels' values if read
    more_labels, more_ctx, more_feats = _dataset(30, seed=4)
    for row in more_labels:
        row["trip_id"] += "-late"
    for row in more_ctx:
        row["trip_id"] += "-late"
    append(store.catalog, "labels.trips", more_labels)
    append(store.catalog, "raw.trips", more_ctx)
    for name, rows in more_feats.items():
        append(store.catalog, f"features.{name}", rows)
    current = build_training_set(store, TIPS, name="tips_now")
    assert current["rows"] == first["rows"] + 30
    recorded = lineage(store, "training.tips", first["snapshot_id"])
    rebuilt = build_training_set(store, TIPS, snapshot_ids=recorded["snapshot_ids"], name="tips_rebuilt")
    again = store.scan("training.tips_rebuilt").to_pandas()
    assert rebuilt["snapshot_ids"] == first["snapshot_ids"]
    assert _row_hashes(again) == _row_hashes(original)
    # pinning only the label snapshot reads the other inputs as they were then: the same result too
    pinned = build_training_set(store, TIPS, as_of_snapshot=first["snapshot_ids"]["labels.trips"], name="tips_pin")
    assert pinned["snapshot_ids"] == first["snapshot_ids"]
    assert _row_hashes(store.scan("training.tips_pin").to_pandas()) == _row_hashes(original)


def test_bad_pins_are_clear(tmp_path):
    store, *_ = _load(tmp_path, n=5)
    with pytest.raises(QueryError, match="lacks"):
        build_training_set(store, TIPS, snapshot_ids={"labels.trips": 1})
    with pytest.raises(QueryError, match="has no snapshot 99"):
        build_training_set(store, TIPS, as_of_snapshot=99)
    with pytest.raises(QueryError, match="no recorded lineage"):
        lineage(store, "labels.trips")


def test_sql_uses_every_view_and_the_ttl():
    sql = training_sql(TIPS, FEATURE_VIEWS)
    assert sql.count("ASOF LEFT JOIN") == len(FEATURE_VIEWS)
    for v in FEATURE_VIEWS:
        assert f"INTERVAL {v.ttl_s} SECOND" in sql


# --- labels that cannot make a row: left out, counted by reason, never fatal ------------------------------
NO_END = ("t3", "t40", "t77")  # their end events were dead-lettered: only the start events arrived


def _bad_labels(labels, context):
    """Three trips lose their end event; one label has no decision time, one no value; t7 gets a later label
    row without a decision time (ignored: t7 has a usable one); t9 a later label row 3 h later with the
    other value (it wins, and may land in another time slice than t9's first label)."""
    context = [c for c in context if not (c["trip_id"] in NO_END and c["event_type"] == "end")]
    d = labels[0]["decision_time"]
    t7, t9 = labels[7], labels[9]
    extra = [
        {"trip_id": "x-notime", "decision_time": None, "label_time": d, "big_tipper": True},
        {"trip_id": "x-nolabel", "decision_time": d, "label_time": d, "big_tipper": None},
        {**t7, "decision_time": None, "label_time": t7["label_time"] + timedelta(hours=1)},
        {**t9, "decision_time": t9["decision_time"] + timedelta(hours=3),
         "label_time": t9["label_time"] + timedelta(hours=3), "big_tipper": not t9["big_tipper"]},
    ]
    context.append({**context[1], "trip_id": "x-nolabel", "event_type": "end", "event_time": d})
    return labels + extra, context


@pytest.mark.parametrize("slice_rows", [250_000, 7])
def test_labels_without_decision_event_time_or_value_are_left_out_and_counted(tmp_path, slice_rows):
    store, labels, context, feats = _load(tmp_path, n=120, seed=11, mutate=_bad_labels)
    built = build_training_set(store, TIPS, slice_rows=slice_rows)
    assert built["slices"] == (1 if slice_rows > 1000 else 18)  # 120 labels in the spine, 7 a slice
    keys = {r["trip_id"] for r in labels}
    assert built["labels"] == len(keys) == 122
    assert built["excluded"] == {"no_decision_time": 1, "no_label": 1, "no_decision_event": 3}
    assert built["rows"] + sum(built["excluded"].values()) == built["labels"]
    by_time = sorted(NO_END, key=lambda k: next(r["decision_time"] for r in labels if r["trip_id"] == k))
    assert built["excluded_examples"] == {"no_decision_time": ["x-notime"], "no_label": ["x-nolabel"],
                                          "no_decision_event": by_time}
    got = store.scan("training.tips").to_pandas().sort_values("trip_id").reset_index(drop=True)
    want = _reference(labels, context, feats)
    assert built["rows"] == len(got) == len(want) == 117
    pd.testing.assert_frame_equal(got[want.columns], want, check_dtype=False)
    assert not set(NO_END) & set(got["trip_id"]) and got["fare"].notna().all()
    assert got.set_index("trip_id").loc["t9", "big_tipper"] != labels[9]["big_tipper"]  # the later label won
    assert built["positives"] == int(want["big_tipper"].sum())
    assert lineage(store, "training.tips")["excluded"] == built["excluded"]  # recorded on the table too


def test_no_labels_at_all_build_an_empty_set(tmp_path):
    store, *_ = _load(tmp_path, n=20, mutate=lambda labels, context: ([], context))
    built = build_training_set(store, TIPS)
    assert (built["rows"], built["labels"], built["slices"]) == (0, 0, 0)
    assert built["excluded"] == {"no_decision_time": 0, "no_label": 0, "no_decision_event": 0}
    assert built["excluded_examples"] == {}
    assert store.scan("training.tips").num_rows == 0


@pytest.mark.parametrize("slice_rows", [250_000, 6])
def test_labels_without_any_context_are_all_counted(tmp_path, slice_rows):
    store, labels, *_ = _load(tmp_path, n=20, mutate=lambda labels, context: (labels, []))
    built = build_training_set(store, TIPS, slice_rows=slice_rows)
    assert built["slices"] == (1 if slice_rows > 1000 else 4)
    assert (built["rows"], built["labels"]) == (0, 20)
    assert built["excluded"] == {"no_decision_time": 0, "no_label": 0, "no_decision_event": 20}
    earliest = [r["trip_id"] for r in sorted(labels, key=lambda r: r["decision_time"])][:5]
    assert built["excluded_examples"] == {"no_decision_event": earliest}
    assert store.scan("training.tips").num_rows == 0


def test_an_empty_feature_table_reads_as_null_features(tmp_path):
    store, *_ = _load(tmp_path, n=20, empty_views=(AREA_1H.name,))
    built = build_training_set(store, TIPS, slice_rows=6)
    assert built["rows"] == 20 and built["excluded"]["no_decision_event"] == 0
    got = store.scan("training.tips").to_pandas()
    assert got[AREA_1H.feature_names()].isna().all().all()
    assert got["tip_rate_24h"].notna().all()  # the other views still join


def test_cli_reports_what_was_left_out(tmp_path):
    from tests.conftest import run_cli

    config, catalog = cli_catalog(tmp_path)
    _load(tmp_path, n=30, mutate=_bad_labels, catalog=catalog)
    built = json.loads(run_cli(config, "training-set", "build", "--json").stdout)
    assert built["excluded"] == {"no_decision_time": 1, "no_label": 1, "no_decision_event": 1}  # t3 only
    assert built["excluded_examples"]["no_decision_event"] == ["t3"]
    assert built["rows"] == 30 - 1
    text = " ".join(run_cli(config, "training-set", "build").stderr.split())  # the summary is on stderr
    assert "left out 3 of 32 labelled keys" in text, text
    assert "no_decision_event 1 its decision event (the context row) was dead-lettered" in text, text
    assert "e.g. t3" in text and "e.g. x-notime" in text, text
    assert "look one up: liveml query labels.trips --where \"trip_id = 'x-notime'\"" in text, text


def test_real_trip_whose_end_event_was_dead_lettered_is_left_out(tmp_path):
    """Issue 12's case: real trip-01518 (1,710 miles) has its end event dead-lettered, its label arrives."""
    from flink_jobs import replay as rp
    from tests.reference import valid

    trips = rp.load_trips()
    trips = trips[trips["trip_id"].between("trip-01400", "trip-01649")].reset_index(drop=True)
    raw, labels = rp.trip_tables(trips)
    # what the feature job lets through to raw.trips (the rest goes to the DLQ); NA: a NULL optional int, valid
    arrived = raw[valid(raw, "trips").fillna(True).astype(bool)]
    lost = sorted(set(raw.loc[raw["event_type"] == "end", "trip_id"])
                  - set(arrived.loc[arrived["event_type"] == "end", "trip_id"]))
    assert lost == ["trip-01518"] and "trip-01518" in set(arrived["trip_id"])  # its start event arrived
    catalog = local_catalog(tmp_path)
    for name in ("labels.trips", "raw.trips", *(v.table for v in FEATURE_VIEWS)):
        create(catalog, name)
    append(catalog, "raw.trips", _records(arrived))
    append(catalog, "labels.trips", _records(labels))
    store = OfflineStore(catalog, tmp_path / "duck")
    built = build_training_set(store, TIPS)
    assert built["excluded"] == {"no_decision_time": 0, "no_label": 0, "no_decision_event": 1}
    assert built["excluded_examples"] == {"no_decision_event": ["trip-01518"]}
    assert built["rows"] == len(trips) - 1 == built["labels"] - 1
    got = store.scan("training.tips").to_pandas()
    assert "trip-01518" not in set(got["trip_id"])
    assert got[["fare", "payment_type", "trip_miles", "trip_seconds"]].notna().all().all()  # the schema's required


def _records(df: pd.DataFrame) -> list[dict]:
    """DataFrame rows as plain dicts, NaN/NA as None (what a pyarrow write of the declared schema takes)."""
    return [{k: (None if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) else v)
             for k, v in row.items()} for row in df.astype(object).to_dict("records")]
