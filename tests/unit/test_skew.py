"""Training/serving skew (liveml/skew.py) on a real pyiceberg SQL catalog holding real trips and their feature rows.

The offline side is the training set's own point-in-time SQL (liveml.training_set.features_at). The served side
is what a prediction carries: here the built training set's row for the same trip and decision time, sent
unchanged (skew 0) or with known edits, so every expected figure is counted from the edits themselves.
"""

import json

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.unit

N = 400


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    from liveml.config import LivemlConfig
    from liveml.offline import OfflineStore
    from tests.offline_fixtures import real_training_set

    tmp = tmp_path_factory.mktemp("skew")
    catalog, _ = real_training_set(tmp, n=N)
    store = OfflineStore(catalog, tmp / "duck")
    rows = store.scan_pandas("training.tips").sort_values("trip_id").reset_index(drop=True)
    return store, LivemlConfig(home=str(tmp / "home")), rows


def _json(rows: pd.DataFrame) -> list[str]:
    from iceberg_schemas.training import TIPS

    ints = {"pickup_community_area", "dropoff_community_area", "trip_seconds", "trips_count_1h",
            "pickups_count_15m", "company_distinct_15m", "labels_count_24h"}
    out = []
    for r in rows[TIPS.feature_columns()].to_dict("records"):
        out.append(json.dumps({k: None if v is None or (isinstance(v, float) and np.isnan(v))
                               else int(v) if k in ints else v for k, v in r.items()}))
    return out


def _predictions(rows: pd.DataFrame, served: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"trip_id": rows["trip_id"], "event_time": rows["decision_time"], "model_name": "tips",
                         "model_version": 1, "status": "ok", "score": 0.5, "features": _json(served)})


def _get(rows, feature, statistic):
    sel = rows[(rows.feature == feature) & (rows.statistic == statistic)]
    assert len(sel) == 1, (feature, statistic, sel)
    return sel.iloc[0]


def test_served_values_equal_to_the_offline_ones_show_no_skew(offline):
    from liveml.skew import skew_rows

    store, cfg, rows = offline
    out = skew_rows(store, cfg, _predictions(rows, rows), ["3650d"])
    assert set(out.kind) == {"skew"} and out.attrs["unmatched"] == 0
    share = out[out.statistic == "share_differ"]
    assert len(share) == 15 and (share.distance == 0).all() and (share.n == len(rows)).all()
    assert not share.drifted.any()
    tfdv_rows = out[out.statistic.isin(["linf", "jensen_shannon"])]
    assert len(tfdv_rows) >= 7 and (tfdv_rows.distance == 0).all()  # identical values, identical statistics
    assert out.reference.iloc[0].startswith("iceberg {") and "raw.trips" in out.reference.iloc[0]


def test_served_values_that_differ_are_counted_and_measured(offline):
    from liveml.skew import FLOAT_REL_TOL, skew_rows

    store, cfg, rows = offline
    served = rows.copy()
    served.loc[:59, "fare"] += 1.0  # 60 rows off by a dollar
    served.loc[:19, "payment_type"] = "Dispute"  # 20 rows, unless they already were
    had_rate = served["tip_rate_24h"].notna()
    served.loc[:99, "tip_rate_24h"] = None  # missing when served, present offline for some of them
    served["fare_avg_1h"] = served["fare_avg_1h"] * (1 + FLOAT_REL_TOL / 10)  # within the float tolerance
    preds = _predictions(rows, served)
    ghost = preds.iloc[:1].assign(trip_id="trip-never-ended")  # no decision event offline: not compared
    out = skew_rows(store, cfg, pd.concat([preds, ghost], ignore_index=True), ["3650d"])
    assert out.attrs["unmatched"] == 1
    n = len(rows)
    fare = _get(out, "fare", "share_differ")
    assert fare.distance == pytest.approx(60 / n) and fare.n == n and fare.drifted
    assert _get(out, "fare", "mean_abs_diff").distance == pytest.approx(60 / n, rel=1e-9)  # |1.0| on 60 of n
    expected_payment = (rows.loc[:19, "payment_type"] != "Dispute").sum() / n
    assert _get(out, "payment_type", "share_differ").distance == pytest.approx(expected_payment)
    assert _get(out, "tip_rate_24h", "share_differ").distance == pytest.approx(had_rate[:100].sum() / n)
    assert _get(out, "fare_avg_1h", "share_differ").distance == 0.0
    assert _get(out, "trip_miles", "share_differ").distance == 0.0
    # TFDV's skew comparator sees the fare's shift; features sent unchanged stay at 0
    js = _get(out, "fare", "jensen_shannon")
    assert js.distance > 0 and js.threshold == 0.01
    assert _get(out, "trip_miles", "jensen_shannon").distance == 0.0
    assert _get(out, "payment_type", "linf").distance == pytest.approx(expected_payment, abs=1e-12)


def test_no_predictions_no_rows(offline):
    from liveml.drift import COLUMNS
    from liveml.skew import skew_rows

    store, cfg, rows = offline
    out = skew_rows(store, cfg, _predictions(rows, rows).iloc[:0], ["1h"])
    assert out.empty and list(out.columns) == COLUMNS
