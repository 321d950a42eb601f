"""Point-in-time training sets on a real pyiceberg catalog, checked against pandas ``merge_asof``.

Each label gets a feature row 1 ms before its decision time and one 1 ms after: only the earlier may be
used. Some labels only have rows older than the view's TTL (NULL expected), some exactly at the TTL (kept).
"""

import hashlib
import random
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest

from iceberg_schemas.features import FEATURE_VIEWS, SPEC_VERSION, view
from iceberg_schemas.training import TIPS
from liveml.offline import OfflineStore, QueryError
from liveml.training_set import build_training_set, lineage, training_sql
from tests.offline_fixtures import append, at, create, local_catalog

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


def _load(tmp_path, n=60, seed=7):
    catalog = local_catalog(tmp_path)
    create(catalog, "labels.trips")
    create(catalog, "raw.trips")
    for v in FEATURE_VIEWS:
        create(catalog, v.table)
    labels, context, feats = _dataset(n, seed)
    append(catalog, "labels.trips", labels)
    append(catalog, "raw.trips", context)
    for name, rows in feats.items():
        append(catalog, f"features.{name}", rows)
    return OfflineStore(catalog, tmp_path / "duck"), labels, context, feats


def _reference(labels, context, feats) -> pd.DataFrame:
    """Independent computation: pandas merge_asof per view, then the TTL mask."""
    spine = pd.DataFrame(labels)[["trip_id", "decision_time", "big_tipper"]]
    ctx = pd.DataFrame(context)
    ctx = ctx[ctx.event_type == "end"][["trip_id", *TIPS.context_fields]]
    out = spine.merge(ctx, on="trip_id", how="left").sort_values("decision_time")
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
