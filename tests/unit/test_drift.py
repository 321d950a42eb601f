"""Drift of live windows from the served version's own training statistics (liveml/drift.py), on the real trips.

The reference is TFDV's statistics of the real trips' request-time features (what StatisticsGen computes over
the train split), written where a TFX run writes them and named by the version's lineage.json. Live windows
are the real trips resampled at one trip per second (flink_jobs.replay.amplify: the joint distribution is
kept), sent as the enrichment sends them (the features JSON, view features missing); hours 2 and 3 go through
the replay's own ``fare_up`` scenario (+40% fare).
"""

import json

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.unit

T0_MS = 1_700_002_800_000  # an hour boundary (epoch aligned), 2023-11-14T23:00Z
HOUR = 3_600_000


def _score(fare: np.ndarray) -> np.ndarray:
    """A stand-in model's score: rises with the fare, so fare_up moves the scores too."""
    return 1.0 / (1.0 + np.exp(-0.08 * (np.asarray(fare, dtype=np.float64) - 12.0)))


def _features_json(df: pd.DataFrame) -> list[str]:
    from iceberg_schemas.training import TIPS

    cols = TIPS.feature_columns()
    out = []
    for r in df.to_dict("records"):
        row = {c: None for c in cols}
        for c in TIPS.context_fields:
            v = r[c]
            row[c] = None if v is None or (isinstance(v, float) and np.isnan(v)) else \
                (int(v) if c.endswith("_area") or c == "trip_seconds" else v)
        out.append(json.dumps(row, sort_keys=True))
    return out


@pytest.fixture(scope="module")
def trips():
    from flink_jobs.replay import load_trips

    df = load_trips()
    df["company"] = df["company"].where(df["company"].map(lambda c: isinstance(c, str)), None)
    return df


@pytest.fixture(scope="module")
def predictions(trips):
    """Four hours of predictions at 1 trip/s; hours 2-3 with fare_up (onset at T0 + 2h)."""
    from flink_jobs.replay import DRIFT_SCENARIOS, amplify

    rng = np.random.default_rng(3)
    live = amplify(trips, 1, rng, T0_MS, 1.0).iloc[:4 * 3600].reset_index(drop=True)
    drifted = live["start_ms"] >= T0_MS + 2 * HOUR
    live.loc[drifted] = DRIFT_SCENARIOS["fare_up"](live.loc[drifted], rng)
    return pd.DataFrame({
        "trip_id": live["trip_id"], "event_time": pd.to_datetime(live["start_ms"], unit="ms", utc=True),
        "model_name": "tips", "model_version": 1, "status": "ok", "score": _score(live["fare"]),
        "features": _features_json(live)}).assign(_fare=live["fare"].to_numpy(),
                                                  _payment=live["payment_type"].to_numpy(),
                                                  _company=live["company"].to_numpy(),
                                                  _pickup=live["pickup_community_area"].to_numpy(),
                                                  _miles=live["trip_miles"].to_numpy())


@pytest.fixture(scope="module")
def version(tmp_path_factory, trips):
    """A served version: models/tips/1 with lineage.json naming a TFX run's statistics and schema."""
    import shutil

    import tensorflow_data_validation as tfdv

    from liveml import drift as D
    from liveml.config import LivemlConfig
    from tfx_pipeline.pipeline import SCHEMA_FILE
    from tfx_pipeline.reference import SCORE_STATS_FILE, reference_lineage, statistics_of_scores

    home = tmp_path_factory.mktemp("home")
    schema = tfdv.load_schema_text(SCHEMA_FILE)
    kinds = D.feature_kinds(schema)
    stats = D.statistics(D.arrow_batch(trips, kinds), schema)
    stats_uri, schema_uri = home / "tfx" / "StatisticsGen" / "statistics" / "7", home / "tfx" / "schema" / "4"
    (stats_uri / "Split-train").mkdir(parents=True)
    (stats_uri / "Split-train" / "FeatureStats.pb").write_bytes(stats.SerializeToString())
    schema_uri.mkdir(parents=True)
    shutil.copy(SCHEMA_FILE, schema_uri / "schema.pbtxt")
    vdir = home / "models" / "tips" / "1"
    vdir.mkdir(parents=True)
    scores = statistics_of_scores(_score(trips["fare"]))
    (vdir / SCORE_STATS_FILE).write_bytes(scores.SerializeToString())
    lineage = {"reference": reference_lineage(str(stats_uri), 7, str(schema_uri), 4, "", {"file": SCORE_STATS_FILE})}
    (vdir / "lineage.json").write_text(json.dumps(lineage))
    return LivemlConfig(home=str(home)), stats, scores


@pytest.fixture(scope="module")
def hourly(version, predictions):
    from liveml.drift import drift_rows

    cfg, _, _ = version
    return drift_rows(None, cfg, predictions, ["1h", "2h/1h"])


def _at(rows, window, start_h, feature):
    sel = rows[(rows.window == window) & (rows.feature == feature) &
               (rows.window_start == pd.Timestamp(T0_MS + start_h * HOUR, unit="ms", tz="UTC"))]
    assert len(sel) == 1, (window, start_h, feature, sel)
    return sel.iloc[0]


def test_rows_have_the_drift_tables_columns(hourly):
    from iceberg_schemas.tables import DRIFT

    assert list(hourly.columns) == [f.name for f in DRIFT.schema.fields]
    assert set(hourly.kind) == {"drift"} and hourly.attrs["skipped_versions"] == {}
    ones = hourly[hourly.window == "1h"]
    assert sorted(ones.window_start.unique()) == [pd.Timestamp(T0_MS + h * HOUR, unit="ms", tz="UTC")
                                                  for h in range(4)]
    assert ((ones.window_end - ones.window_start) == pd.Timedelta(hours=1)).all()


def test_fare_up_crosses_the_fare_threshold_and_an_undrifted_window_of_the_same_size_does_not(hourly):
    one = hourly[hourly.window == "1h"]
    compared = {"pickup_community_area", "dropoff_community_area", "company", "payment_type", "fare",
                "trip_miles", "trip_seconds", "score"}
    for h in range(4):
        w = one[one.window_start == pd.Timestamp(T0_MS + h * HOUR, unit="ms", tz="UTC")]
        # TFDV measures every compared feature, crossed or not (drift_skew_info), with the schema's threshold
        assert set(w.feature) == compared, h
        assert w.distance.notna().all() and (w.n >= 2000).all()
    for h in (0, 1):  # undrifted: nothing crosses
        w = one[one.window_start == pd.Timestamp(T0_MS + h * HOUR, unit="ms", tz="UTC")]
        assert not w.drifted.any(), w[w.drifted][["feature", "distance", "threshold"]]
    for h in (2, 3):
        fare = _at(hourly, "1h", h, "fare")
        assert fare.drifted and fare.distance > fare.threshold == 0.13 and fare.statistic == "jensen_shannon"
        assert _at(hourly, "1h", h, "score").drifted  # the scores follow the fare
        assert not _at(hourly, "1h", h, "payment_type").drifted
        assert _at(hourly, "1h", h, "payment_type").statistic == "linf"
    for h in (0, 1):
        assert _at(hourly, "1h", h, "fare").distance < 0.13 < _at(hourly, "1h", h + 2, "fare").distance
    # the sliding window across the onset holds one undrifted and one drifted hour: it lies between
    mid = _at(hourly, "2h/1h", 1, "fare").distance
    assert _at(hourly, "2h/1h", 0, "fare").distance < mid < _at(hourly, "2h/1h", 2, "fare").distance


def _linf(ref: pd.Series, live: pd.Series) -> float:
    """L-infinity of the normalised value frequencies, missing values left out (as TFDV's rank histogram)."""
    p = ref.dropna().astype(str).value_counts(normalize=True)
    q = live.dropna().astype(str).value_counts(normalize=True)
    p, q = p.align(q, fill_value=0.0)
    return float((p - q).abs().max())


def _quantiles(stats, feature: str):
    (f,) = [f for f in stats.datasets[0].features if f.path.step == [feature]]
    (h,) = [h for h in f.num_stats.histograms if h.type == h.QUANTILES]
    return [(b.low_value, b.high_value, b.sample_count) for b in h.buckets]


def _jensen_shannon(h1, h2) -> float:
    """JS divergence (log2) of two histograms: buckets of zero width are point masses, kept apart; the
    others are cut at the union of both histograms' boundaries, a bucket's mass spread uniformly over its
    width; then scipy's Jensen-Shannon distance, squared (the divergence)."""
    from scipy.spatial.distance import jensenshannon

    points = sorted({lo for lo, hi, _ in h1 + h2 if lo == hi})
    edges = np.array(sorted({x for lo, hi, _ in h1 + h2 if lo != hi for x in (lo, hi)}))

    def masses(h):
        m = np.zeros(len(edges) - 1)
        for lo, hi, c in h:
            if lo == hi:
                continue
            overlap = np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0, None)
            m += c * overlap / (hi - lo)
        pts = [sum(c for lo, hi, c in h if lo == hi == x) for x in points]
        return np.concatenate([m, pts])

    return float(jensenshannon(masses(h1), masses(h2), base=2) ** 2)


@pytest.mark.parametrize("hour", [0, 2])
def test_distances_equal_an_independent_computation(version, predictions, trips, hourly, hour):
    """L-infinity from pandas value counts of the raw rows. Jensen-Shannon over the same buckets TFDV uses:
    the QUANTILES histograms of the reference and of the window (as TFDV summarised them: those are the
    buckets the comparator sees), aligned and compared by the code above, written from the definition."""
    from liveml import drift as D

    cfg, ref_stats, ref_scores = version
    start = T0_MS + hour * HOUR
    win = predictions[(predictions.event_time >= pd.Timestamp(start, unit="ms", tz="UTC")) &
                      (predictions.event_time < pd.Timestamp(start + HOUR, unit="ms", tz="UTC"))]
    for feature, ref_col, live_col in (("payment_type", "payment_type", "_payment"), ("company", "company", "_company"),
                                       ("pickup_community_area", "pickup_community_area", "_pickup")):
        ref_values = trips[ref_col].astype("Int64") if feature.endswith("area") else trips[ref_col]
        live_values = win[live_col].astype("Int64") if feature.endswith("area") else win[live_col]
        assert _at(hourly, "1h", hour, feature).distance == pytest.approx(_linf(ref_values, live_values), abs=1e-12)
    import tensorflow_data_validation as tfdv

    schema = tfdv.load_schema_text(version[0].path("tfx", "schema", "4", "schema.pbtxt"))
    kinds = D.feature_kinds(schema)
    feats, _ = D.expand_features(win["features"], list(kinds))
    window_stats = D.statistics(D.arrow_batch(feats, kinds), schema)
    for feature in ("fare", "trip_miles", "trip_seconds"):
        live_h, ref_h = _quantiles(window_stats, feature), _quantiles(ref_stats, feature)
        assert sum(c for _, _, c in live_h) == pytest.approx(len(win))
        live_fare = win["_fare" if feature == "fare" else "_miles"].to_numpy(np.float32) \
            if feature in ("fare", "trip_miles") else None
        if live_fare is not None:  # the window's buckets span exactly its raw values
            assert (live_h[0][0], live_h[-1][1]) == pytest.approx((live_fare.min(), live_fare.max()), rel=1e-6)
        assert _at(hourly, "1h", hour, feature).distance == pytest.approx(_jensen_shannon(ref_h, live_h), abs=1e-9)
    from tfx_pipeline.reference import statistics_of_scores

    score_h = _quantiles(statistics_of_scores(win["score"].to_numpy()), "score")
    assert _at(hourly, "1h", hour, "score").distance == pytest.approx(
        _jensen_shannon(_quantiles(ref_scores, "score"), score_h), abs=1e-9)


def test_windows_are_epoch_aligned_and_assigned_by_event_time():
    from liveml.drift import WindowSpec, assign_windows, window_groups

    times = pd.Series(pd.to_datetime([0, 3_599_999, 3_600_000, 7_250_000], unit="ms", utc=True))
    tumbling = assign_windows(times, "1h")
    assert tumbling.row.tolist() == [0, 1, 2, 3] and tumbling.window_start.tolist() == [0, 0, 3_600_000, 7_200_000]
    sliding = assign_windows(times, WindowSpec.parse("2h/1h"))
    for row, t in enumerate([0, 3_599_999, 3_600_000, 7_250_000]):
        expected = sorted(s for s in range(-3_600_000, 7_200_001, 3_600_000) if s <= t < s + 7_200_000)
        assert sorted(sliding[sliding.row == row].window_start) == expected
    with pytest.raises(ValueError, match="SLIDE must divide SIZE"):
        WindowSpec.parse("1h/25m")
    since = pd.Timestamp(7_200_000, unit="ms", tz="UTC")  # only windows ending after it
    assert [s for s, _ in window_groups(times, WindowSpec.parse("2h/1h"), since)] == [3_600_000, 7_200_000]
    assert [(s, rows.tolist()) for s, rows in window_groups(times, WindowSpec.parse("1h"), since)] == [(7_200_000, [3])]


def test_empty_windows_a_single_row_and_fallbacks(version, predictions):
    from liveml.drift import COLUMNS, drift_rows

    cfg = version[0]
    empty = drift_rows(None, cfg, predictions.iloc[:0], ["1h"])
    assert list(empty.columns) == COLUMNS and empty.empty
    fallbacks = predictions.iloc[:50].assign(status="timeout", score=None)
    assert drift_rows(None, cfg, fallbacks, ["1h"]).empty  # no version answered: nothing to compare
    one = drift_rows(None, cfg, predictions.iloc[:1], ["1h"])
    assert len(one) and (one.n <= 1).all()
    assert one.drifted.isna().all()  # one row is no evidence either way (MIN_ROWS)
    assert np.isfinite(one.distance.astype(float)).all()
    bad = predictions.iloc[:5].assign(features=["{not json", None, "[]", "{}", predictions.features.iloc[4]])
    rows = drift_rows(None, cfg, bad, ["1h"])
    assert rows[rows.feature == "fare"].n.tolist() == [1]  # only the readable row had a fare


def test_a_version_without_lineage_is_counted_and_skipped(version, predictions):
    from liveml.drift import drift_rows

    cfg = version[0]
    (cfg.path("models", "tips", "3")).mkdir(parents=True)
    (cfg.path("models", "tips", "3", "lineage.json")).write_text("{broken")
    mixed = pd.concat([predictions.iloc[:3600], predictions.iloc[:100].assign(model_version=2),
                       predictions.iloc[:100].assign(model_version=3)])
    rows = drift_rows(None, cfg, mixed, ["1h"])
    assert set(rows.model_version) == {1}
    skipped = rows.attrs["skipped_versions"]
    assert sorted(skipped) == ["tips/2", "tips/3"]
    assert "no lineage.json" in skipped["tips/2"] and "unreadable" in skipped["tips/3"]


def test_a_window_tfdv_fails_on_is_named_and_the_others_kept(version, predictions, monkeypatch):
    from liveml import drift as D

    real = D.statistics
    calls = []

    def flaky(batch, schema):
        calls.append(batch.num_rows)
        if len(calls) == 2:
            raise RuntimeError("TFDV choked")
        return real(batch, schema)

    monkeypatch.setattr(D, "statistics", flaky)
    rows = D.drift_rows(None, version[0], predictions.iloc[:3 * 3600], ["1h"])
    assert len(rows.window_start.unique()) == 2
    (where,) = rows.attrs["failed_windows"]
    assert where.startswith("tips/1 1h @2023-11-15T00:00:00") and "TFDV choked" in rows.attrs["failed_windows"][where]
