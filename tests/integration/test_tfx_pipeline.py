"""The TFX pipeline end to end on the real 15,002 Chicago taxi trips, without Flink.

The data is :func:`tests.offline_fixtures.real_training_set`: ``raw.trips`` and ``labels.trips`` from the
real trips, feature tables from the pandas reference the Flink job is checked against, and ``training.tips``
built from them by :func:`liveml.training_set.build_training_set`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.offline_fixtures import real_training_set

pytestmark = pytest.mark.integration


TRAIN_STEPS = 500
AUC_FLOOR = 0.9


def _catalog_props(tmp: Path) -> dict:
    return {"name": "t", "type": "sql", "uri": f"sqlite:///{tmp}/c.db", "warehouse": (tmp / "wh").as_uri()}


def _child(args, kwargs, results) -> None:
    from tfx_pipeline.runner import PipelineFailed, run_local

    try:
        results.put(("ok", json.loads(json.dumps(run_local(*args, **kwargs), default=str)), ""))
    except PipelineFailed as exc:
        results.put(("failed", json.loads(json.dumps(exc.summary, default=str)), str(exc)))


def run_isolated(*args, **kwargs) -> dict:
    """``run_local`` in a fresh process. Beam must not share a process with PyFlink: once PyFlink's Python
    runtime has been loaded (other tests in this session run Flink jobs in process), it has swapped Beam's
    coder implementations for its own, and Beam's DirectRunner then fails with "Cannot convert
    CallbackCoderImpl to StreamCoderImpl". `liveml train` is a process of its own for the same reason."""
    import multiprocessing

    from tfx_pipeline.runner import PipelineFailed

    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    proc = ctx.Process(target=_child, args=(args, kwargs, results))
    proc.start()
    status, summary, message = results.get(timeout=900)
    proc.join(60)
    if status == "failed":
        raise PipelineFailed(message, summary)
    return summary


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("tfx")
    data = base / "data"
    data.mkdir()
    catalog, built = real_training_set(data)
    serving = base / "serving" / "tips"
    summary = run_isolated(base / "home", _catalog_props(data), str(serving), snapshot_id=built["snapshot_id"],
                           train_steps=TRAIN_STEPS, eval_steps=5, auc_floor=AUC_FLOOR)
    print("first run:", json.dumps(summary, indent=1, default=str))
    return base, catalog, built, serving, summary


def test_blessed_model_is_pushed_with_lineage(first_run):
    base, _, built, serving, summary = first_run
    assert summary["status"] == "succeeded", summary
    assert summary["blessed"] is True, summary["why"]
    assert summary["pushed_version"] == 1
    assert summary["baseline_model"] is None and "no blessed baseline yet" in summary["why"]
    assert (serving / "1" / "saved_model.pb").is_file()
    lin = json.loads((serving / "1" / "lineage.json").read_text())
    assert lin["training_table"] == "training.tips"
    assert lin["snapshot_id"] == built["snapshot_id"]
    assert lin["snapshot_ids"] == {k: v for k, v in built["snapshot_ids"].items()}
    assert set(lin["snapshot_ids"]) >= {"labels.trips", "raw.trips", "features.pickup_area_1h"}
    assert lin["spec_version"] == built["spec_version"]
    assert lin["blessed"] is True and lin["pipeline_run"] == summary["pipeline_run"]
    assert lin["rows"]["train"] + lin["rows"]["eval"] == built["rows"] == 15002
    assert lin["train_range"][1] < lin["eval_range"][0]
    assert lin["metrics"]["auc"] >= AUC_FLOOR and 0 < lin["metrics"]["log_loss"] < 0.5
    assert {"binary_accuracy", "calibration", "example_count"} <= set(lin["metrics"])
    slices = lin["slice_metrics"]
    assert slices == summary["slices"] and set(slices) == {"payment_type", "pickup_community_area"}
    by_payment = slices["payment_type"]
    assert sum(m["example_count"] for m in by_payment.values()) == lin["rows"]["eval"]
    counts = [m["example_count"] for m in summary["slices"]["payment_type"].values()]  # lineage.json sorts keys
    assert counts == sorted(counts, reverse=True) and set(list(by_payment)[:2]) == {"Cash", "Credit Card"}
    assert 0.5 < by_payment["Credit Card"]["auc"] <= 1 and by_payment["Cash"]["mean_label"] < 0.1
    for name in ("IcebergExampleGen", "StatisticsGen", "ExampleValidator", "AnomalyGate", "Transform",
                 "Trainer", "Evaluator", "ServingPusher"):
        assert summary["components"][name]["state"] == "COMPLETE", name


def _eval_rows(catalog, built, n=64):
    from liveml.offline import OfflineStore

    df = OfflineStore(catalog).scan("training.tips", snapshot_id=built["snapshot_id"]).to_pandas()
    return df.sort_values("decision_time").tail(n).to_dict("records")


def test_serving_default_takes_raw_features_and_matches_serving_examples(first_run):
    import tensorflow as tf

    from tfx_pipeline import features as F
    from tfx_pipeline.components.iceberg_example_gen import to_example

    _, catalog, built, serving, _ = first_run
    rows = _eval_rows(catalog, built)
    assert any(pd.isna(r["tip_rate_24h"]) for r in rows) and any(r["company"] is None for r in rows)
    loaded = tf.saved_model.load(str(serving / "1"))
    default = loaded.signatures["serving_default"]
    dtypes = {"float": tf.float32, "int": tf.int64, "string": tf.string}
    raw = {}
    for key in F.FEATURE_KEYS:
        cast = {"float": float, "int": int, "string": str}[F.RAW_KIND[key]]
        values = [F.missing_serving_value(key) if r[key] is None or (isinstance(r[key], float) and np.isnan(r[key]))
                  else cast(r[key]) for r in rows]
        raw[key] = tf.constant(values, dtype=dtypes[F.RAW_KIND[key]])
    assert set(default.structured_input_signature[1]) == set(F.FEATURE_KEYS)
    p_raw = default(**raw)["probabilities"].numpy()
    assert p_raw.shape == (len(rows),) and p_raw.dtype == np.float32
    assert ((p_raw > 0) & (p_raw < 1)).all()
    serialized = [to_example(r, F.RAW_KIND, F.LABEL_KEY).SerializeToString() for r in rows]
    p_ex = loaded.signatures["serving_examples"](examples=tf.constant(serialized))["probabilities"].numpy()
    np.testing.assert_allclose(p_raw, p_ex, rtol=1e-5, atol=1e-6)
    from serving.servable import Servable  # the project's model server loads it and answers the same

    served = Servable.load("tips", 1, serving / "1").run("serving_default", {k: v.numpy() for k, v in raw.items()})
    np.testing.assert_allclose(served["probabilities"], p_raw, rtol=1e-6)
    labels = np.array([bool(r[F.LABEL_KEY]) for r in rows])
    assert p_raw[labels].mean() > p_raw[~labels].mean()  # it learned something


def test_shuffled_labels_are_not_blessed_nor_pushed(first_run):
    base, _, _, serving, _ = first_run
    data = base / "shuffled"
    data.mkdir()
    _, built = real_training_set(data, shuffle_labels_seed=1)
    summary = run_isolated(base / "home", _catalog_props(data), str(serving), snapshot_id=built["snapshot_id"],
                           train_steps=100, eval_steps=5, auc_floor=AUC_FLOOR)
    print("shuffled run:", json.dumps(summary, indent=1, default=str))
    assert summary["status"] == "succeeded"
    assert summary["blessed"] is False
    assert summary["baseline_model"], "the first run's blessed model is the baseline"
    assert "auc" in summary["why"] and summary["metrics"]["auc"] < 0.7
    assert summary["pushed_version"] is None
    assert sorted(p.name for p in serving.iterdir() if not p.name.startswith(".")) == ["1"]


def test_anomalies_stop_the_pipeline_before_training(tmp_path):
    """Negative fares and an unknown payment type in the newest trips: the gate fails, nothing is trained."""
    from tfx_pipeline.runner import PipelineFailed

    def corrupt(trips):
        last = trips.index[-300:]
        trips.loc[last, "fare"] = -trips.loc[last, "fare"] - 1
        trips.loc[last, "payment_type"] = "Bitcoin"
        return trips

    data = tmp_path / "data"
    data.mkdir()
    _, built = real_training_set(data, n=3000, mutate=corrupt)
    serving = tmp_path / "serving" / "tips"
    with pytest.raises(PipelineFailed) as err:
        run_isolated(tmp_path / "home", _catalog_props(data), str(serving), snapshot_id=built["snapshot_id"],
                     train_steps=10, eval_steps=1)
    summary = err.value.summary
    print("anomalous run:", json.dumps(summary, indent=1, default=str))
    assert summary["status"] == "failed"
    assert summary["components"]["AnomalyGate"]["state"] == "FAILED"
    assert "Transform" not in summary["components"] and "Trainer" not in summary["components"]
    msg = str(err.value)
    assert "fare" in msg and "payment_type" in msg, msg
    assert not serving.exists()
