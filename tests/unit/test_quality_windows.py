"""Quality per window against independent computations: window assignment against pandas, realised figures
against scikit-learn and estimated ones against liveml.quality.estimated, each window's rows selected again
with pandas; on the real trips, with a deterministic score (a logistic function of fare and payment type)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import brier_score_loss, log_loss, precision_score, recall_score, roc_auc_score

from liveml.quality import estimated
from liveml.quality_windows import COLUMNS, METRICS, VersionSettings, WindowSpec, assign, latest_windows, quality_rows

pytestmark = pytest.mark.unit

SETTINGS = {1: VersionSettings(0.5, 3600), 2: VersionSettings(0.3, 7200)}


def settings(name, version):
    return SETTINGS.get(version, VersionSettings())


def score(fare: pd.Series, payment_type: pd.Series) -> np.ndarray:
    z = -2.5 + 3.0 * (payment_type == "Credit Card").to_numpy() + 0.02 * fare.fillna(0).to_numpy()
    return 1 / (1 + np.exp(-z))


def real_frames(n: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``predictions.trips`` and ``monitoring.outcomes`` as frames from the real trips: version 1 (stable)
    and, for every fifth trip, version 2 (canary); every 23rd prediction timed out (no score); every 11th
    outcome unlabelled."""
    from flink_jobs import replay as rp

    trips = rp.load_trips().sort_values("start_ms", kind="stable")
    if n:
        trips = trips.head(n)
    raw, labels = rp.trip_tables(trips.reset_index(drop=True))
    ends = raw[raw["event_type"] == "end"].reset_index(drop=True)
    i = np.arange(len(ends))
    canary = i % 5 == 0
    p = score(ends["fare"], ends["payment_type"])
    timeout = i % 23 == 7
    preds = pd.DataFrame({
        "trip_id": ends["trip_id"], "event_time": ends["event_time"], "model_name": "tips",
        "model_version": np.where(canary, 2, 1), "model_label": np.where(canary, "canary", "stable"),
        "score": np.where(timeout, np.nan, np.where(canary, np.sqrt(p), p)),
        "status": np.where(timeout, "timeout", "ok")})
    label = preds["trip_id"].map(labels.set_index("trip_id")["big_tipper"].astype(float))
    unlabelled = i % 11 == 3
    outs = preds.rename(columns={"event_time": "decision_time"}).assign(
        outcome=np.where(unlabelled, "unlabelled", "labelled"), label=np.where(unlabelled, np.nan, label))
    return preds, outs


@pytest.fixture(scope="module")
def real():
    preds, outs = real_frames()
    return preds, outs, quality_rows(preds, outs, ["1h", "24h/1h"], settings)


def _pandas_windows(times: pd.Series, size: str, slide: str) -> pd.DataFrame:
    """Every (row, window_start) with start <= t < start + size, by a cross join of the rows with every
    epoch-aligned start over their span (independent of WindowSpec.windows)."""
    t = pd.to_datetime(times, utc=True, cache=False).reset_index(drop=True)
    size_td, slide_td = pd.Timedelta(size), pd.Timedelta(slide)
    starts = pd.date_range((t.min() - size_td).floor(slide), t.max(), freq=slide, tz="UTC")
    cross = pd.DataFrame({"row": np.arange(len(t)), "t": t}).merge(pd.DataFrame({"window_start": starts}),
                                                                   how="cross")
    hit = cross[(cross["window_start"] <= cross["t"]) & (cross["t"] < cross["window_start"] + size_td)]
    return hit[["row", "window_start"]].sort_values(["row", "window_start"]).reset_index(drop=True)


@pytest.mark.parametrize("text,size,slide", [("1h", "1h", "1h"), ("24h/1h", "24h", "1h"), ("15m/5m", "15min", "5min")])
def test_window_assignment_equals_pandas_cross_join(text, size, slide):
    preds, _ = real_frames(1500 if slide == "1h" else 200)
    times = preds["event_time"].sample(frac=1.0, random_state=3)  # unsorted input
    got = assign(times, WindowSpec.parse(text)).sort_values(["row", "window_start"]).reset_index(drop=True)
    want = _pandas_windows(times, size, slide)
    assert len(want) == len(times) * WindowSpec.parse(text).per_row
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


def _window_rows(frame: pd.DataFrame, time_col: str, version: int, start: pd.Timestamp, size: str) -> pd.DataFrame:
    t = pd.to_datetime(frame[time_col], utc=True, cache=False)
    return frame[(frame["model_version"] == version) & (t >= start) & (t < start + pd.Timedelta(size))]


@pytest.mark.parametrize("spec,size", [("1h", "1h"), ("24h/1h", "24h")])
def test_every_window_and_figure_equals_an_independent_computation(real, spec, size):
    preds, outs, rows = real
    rows = rows[rows["window"] == spec]
    # the windows emitted are exactly the non-empty ones of an independent pandas assignment, per version
    for version in (1, 2):
        mine = rows[rows["model_version"] == version]
        want = set()
        for frame, col in ((preds, "event_time"), (outs, "decision_time")):
            t = pd.to_datetime(frame.loc[frame["model_version"] == version, col], utc=True, cache=False)
            floor = t.dt.floor(pd.Timedelta("1h"))
            k = pd.Timedelta(size) // pd.Timedelta("1h")
            hours = floor.drop_duplicates().to_numpy("datetime64[ns]")
            want |= set(pd.to_datetime((hours[:, None] - np.arange(k) * np.timedelta64(1, "h")).ravel(), utc=True))
        assert set(mine["window_start"]) == want
    wide = rows.set_index(["window_start", "model_version", "metric"])[["estimated", "realised"]].unstack("metric")
    firsts = rows.drop_duplicates(["window_start", "model_version"]).set_index(["window_start", "model_version"])
    firsts = firsts.loc[wide.index]
    rng = np.random.default_rng(7)
    keys = firsts.index.to_list()
    with_auc = np.flatnonzero(wide[("realised", "auc")].notna().to_numpy())  # few 1 h windows hold both classes
    picks = np.union1d(rng.choice(len(keys), size=250, replace=False), rng.choice(with_auc, size=60, replace=False))
    checked = {"auc": 0, "precision": 0}
    for i in picks:
        start, version = keys[i]
        thr = SETTINGS[version].decision_threshold
        p_rows = _window_rows(preds, "event_time", version, start, size)
        scored = p_rows[p_rows["status"] == "ok"]
        o_rows = _window_rows(outs, "decision_time", version, start, size)
        lab = o_rows[(o_rows["outcome"] == "labelled") & (o_rows["status"] == "ok")]
        got = wide.loc[(start, version)]
        meta = firsts.loc[(start, version)]
        assert (meta["n_scored"], meta["n_labelled"]) == (len(scored), len(lab))
        assert got[("estimated", "count")] == len(scored) and got[("realised", "count")] == len(lab)
        assert got[("estimated", "unscored")] == len(p_rows) - len(scored)
        assert got[("realised", "unscored")] == ((o_rows["outcome"] == "labelled") & (o_rows["status"] != "ok")).sum()
        assert meta["decision_threshold"] == thr
        est = estimated(scored["score"].to_numpy(), thr)
        for m in ("positive_rate", "log_loss", "brier", "auc", "precision", "recall"):
            _close(got[("estimated", m)], est[m])
        _close(got[("estimated", "mean_score")], scored["score"].mean() if len(scored) else None)
        assert np.isnan(got[("estimated", "calibration")])
        if lab.empty:
            assert all(np.isnan(got[("realised", m)]) for m in METRICS if m not in ("count", "unscored"))
            continue
        y, p = lab["label"].to_numpy() == 1.0, lab["score"].to_numpy()
        pred = p >= thr
        _close(got[("realised", "log_loss")], log_loss(y, p, labels=[False, True]))
        _close(got[("realised", "brier")], brier_score_loss(y, p, pos_label=True))
        _close(got[("realised", "positive_rate")], y.mean())
        _close(got[("realised", "mean_score")], p.mean())
        _close(got[("realised", "calibration")], p.mean() / y.mean() if y.any() else None)
        _close(got[("realised", "auc")], roc_auc_score(y, p) if 0 < y.sum() < len(y) else None)
        _close(got[("realised", "precision")], precision_score(y, pred) if pred.any() else None)
        _close(got[("realised", "recall")], recall_score(y, pred) if y.any() else None)
        checked["auc"] += 0 < y.sum() < len(y)
        checked["precision"] += bool(pred.any())
    assert checked["auc"] >= 20 and checked["precision"] >= 20  # the sample reached defined figures


def _close(got: float, want: float | None) -> None:
    if want is None:
        assert np.isnan(got), f"expected null, got {got}"
    else:
        assert got == pytest.approx(float(want), abs=1e-9)


def test_labels_complete_follows_event_time_not_wall_time():
    t0 = pd.Timestamp("2015-03-02 08:00", tz="UTC")
    preds = pd.DataFrame({"event_time": [t0 + pd.Timedelta(minutes=10), t0 + pd.Timedelta(hours=2)],
                          "model_name": "tips", "model_version": 1, "model_label": "stable", "score": [0.2, 0.7],
                          "status": "ok"})
    empty = pd.DataFrame(columns=["decision_time", "model_name", "model_version", "model_label", "score", "status",
                                  "outcome", "label"])
    rows = quality_rows(preds, empty, ["1h"], lambda n, v: VersionSettings(0.5, 3600))
    done = rows.drop_duplicates("window_start").set_index("window_start")["labels_complete"]
    # [08:00, 09:00) + 1 h delay = 10:00 = the latest decision time: complete; [10:00, 11:00) is not
    assert done.to_dict() == {t0: True, t0 + pd.Timedelta(hours=2): False}
    rows = quality_rows(preds, empty, ["1h"], lambda n, v: VersionSettings(0.5, 3601))
    assert not rows["labels_complete"].any()
    assert (rows.loc[rows["metric"] == "count", "realised"] == 0).all()
    assert rows.loc[~rows["metric"].isin(["count", "unscored"]), "realised"].isna().all()


def test_empty_inputs_give_no_rows_with_the_table_columns():
    empty_p = pd.DataFrame(columns=["event_time", "model_name", "model_version", "model_label", "score", "status"])
    empty_o = pd.DataFrame(columns=["decision_time", "model_name", "model_version", "model_label", "score",
                                    "status", "outcome", "label"])
    rows = quality_rows(empty_p, empty_o, ["1h", "24h/1h"], settings)
    assert rows.empty and list(rows.columns) == COLUMNS
    assert latest_windows(rows).empty


def test_one_row_one_class_ties_and_unscored_predictions_are_handled():
    t = pd.Timestamp("2015-03-02 08:30", tz="UTC")
    preds = pd.DataFrame({"event_time": [t] * 6, "model_name": "tips", "model_version": [1, 1, 1, 1, 1, None],
                          "model_label": "stable", "score": [0.4, 0.4, 0.4, None, 1.5, None],
                          "status": ["ok", "ok", "ok", "unavailable", "ok", "no_model"]})
    outs = preds.rename(columns={"event_time": "decision_time"}).assign(outcome="labelled",
                                                                        label=[1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    rows = quality_rows(preds, outs, ["1h"], settings)
    v1 = rows[rows["model_version"] == 1].set_index("metric")
    # three tied scores, both classes: AUC 0.5 as sklearn gives; the bad score (1.5) and the unavailable
    # prediction are unscored, counted and left out of every figure
    assert v1.loc["auc", "realised"] == pytest.approx(roc_auc_score([1, 1, 0], [0.4, 0.4, 0.4]))
    assert v1.loc["auc", "estimated"] == pytest.approx(0.5)
    assert (v1.loc["count", "estimated"], v1.loc["unscored", "estimated"]) == (3, 2)
    assert (v1.loc["count", "realised"], v1.loc["unscored", "realised"]) == (3, 2)
    assert v1["n_scored"].eq(3).all() and v1["n_labelled"].eq(3).all()
    assert v1.loc["precision", "realised"] != v1.loc["precision", "realised"]  # nothing predicted positive: null
    # no model version at all: its own group, counted, no figures
    none = rows[rows["model_version"].isna()].set_index("metric")
    assert none.loc["unscored", "estimated"] == 1 and none.loc["count", "estimated"] == 0
    assert np.isnan(none.loc["log_loss", "estimated"])
    # a single labelled row of one class: AUC undefined (null), the rest defined
    one = quality_rows(preds.head(1), outs.head(1), ["1h"], settings).set_index("metric")
    assert np.isnan(one.loc["auc", "realised"]) and one.loc["log_loss", "realised"] == pytest.approx(-np.log(0.4))
    assert one.loc["recall", "realised"] == 0.0 and np.isnan(one.loc["precision", "realised"])


def test_latest_window_of_each_spec_and_version(real):
    _, _, rows = real
    latest = latest_windows(rows)
    for (spec, version), g in latest.groupby(["window", "model_version"]):
        assert g["window_start"].nunique() == 1 and len(g) == len(METRICS)
        assert g["window_start"].iloc[0] == rows.loc[(rows["window"] == spec) & (rows["model_version"] == version),
                                                     "window_start"].max()


def test_rerun_gives_equal_rows(real):
    preds, outs, rows = real
    again = quality_rows(preds.sample(frac=1.0, random_state=1), outs.sample(frac=1.0, random_state=2),
                         ["1h", "24h/1h"], settings)
    # bit-equal, whatever order the rows are read in (DataFrame.equals: assert_frame_equal takes a minute here)
    assert rows.equals(again)
    pd.testing.assert_frame_equal(rows.head(1000), again.head(1000))


def test_median_estimate_error_over_real_trips(real, capsys):
    """The issue's figure: |estimated - realised| of log loss and AUC per window, median over windows (here
    with the deterministic score; the demo reports it for the trained model on the live stream)."""
    from liveml.quality_windows import estimate_errors

    _, _, rows = real
    errors = estimate_errors(rows)
    one_hour = errors[(errors["window"] == "1h") & (errors["model_version"] == 1)].set_index("metric")
    assert one_hour.loc["log_loss", "windows"] > 1000 and one_hour.loc["auc", "windows"] > 100
    with capsys.disabled():
        print("\nestimate error, median over windows with labels (real trips, logistic score):")
        print(errors.to_string(index=False))
