"""Benchmark: `liveml train`'s pipeline on the real taxi data, its quality and its cost.

Setup: the 15,002 real trips in a local catalog, with their feature rows and ``training.tips`` built as the
tests build them (:func:`tests.offline_fixtures.real_training_set`). Each repeat runs the whole TFX
pipeline (IcebergExampleGen to ServingPusher, ``LocalDagRunner``) in a fresh process, as `liveml train`
does, with a fresh ML Metadata store so every run is a first run.

Figures, medians over ``--repeats`` runs on this machine:

* ``auc``, ``log_loss``, ``calibration`` (mean prediction / mean label), ``binary_accuracy``: TFMA's, on the
  eval split (the latest 20% of the rows by decision time), from the pipeline's own Evaluator.
* ``seconds`` and ``seconds_<component>``: wall time of the whole run and of each component.
* ``baseline_auc`` / ``baseline_log_loss``: the baseline, measured in the same run on the same rows and the
  same split: scikit-learn's ``HistGradientBoostingClassifier`` (defaults, the same 15 input columns, the two
  string columns as categoricals). ``auc_ratio`` = ``auc`` / ``baseline_auc``.
* ``slice_auc_<feature>=<value>``: per-slice AUC of the median run for the larger slices.

Writes flat JSON to LIVEML_HOME/bench/training.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from liveml.config import load_config, made_dir  # noqa: E402
from liveml.figures import figures_file, write_figures  # noqa: E402

_RUN = """
import json, sys
from tfx_pipeline.runner import run_local
args = json.loads(sys.argv[1])
summary = run_local(args["home"], args["catalog"], args["serving"], train_steps=args["steps"], eval_steps=5,
                    auc_floor=0.5, raise_on_error=False)
open(args["out"], "w").write(json.dumps(summary, default=str))
"""


def run_pipeline(work: Path, catalog: dict, steps: int, i: int) -> dict:
    out = work / f"summary-{i}.json"
    args = {"home": str(work / f"home-{i}"), "catalog": catalog, "serving": str(work / f"serving-{i}" / "tips"),
            "steps": steps, "out": str(out)}
    subprocess.run([sys.executable, "-c", _RUN, json.dumps(args)], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})
    summary = json.loads(out.read_text())
    if summary.get("status") != "succeeded":
        raise SystemExit(f"pipeline run {i} failed: {summary.get('error')}")
    return summary


def gbm_baseline(rows, eval_fraction: float) -> dict:
    """HistGradientBoosting on exactly the pipeline's split: the same rows, features and cut."""
    import numpy as np
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import log_loss, roc_auc_score

    from tfx_pipeline import features as F
    from tfx_pipeline.components.iceberg_example_gen import event_time_split

    df = rows.sort_values(F.DECISION_TIME, kind="stable").reset_index(drop=True)
    times = (df[F.DECISION_TIME].astype("int64") // 10**6).tolist()
    is_eval = np.array(event_time_split(times, eval_fraction)[0])
    x = df[F.FEATURE_KEYS].copy()
    for c in F.STRING_FEATURES:
        x[c] = x[c].astype("category")
    y = df[F.LABEL_KEY].astype(int).to_numpy()
    t0 = time.perf_counter()
    model = HistGradientBoostingClassifier(categorical_features=[x.columns.get_loc(c) for c in F.STRING_FEATURES],
                                           random_state=0).fit(x[~is_eval], y[~is_eval])
    p = model.predict_proba(x[is_eval])[:, 1]
    return {"baseline_auc": float(roc_auc_score(y[is_eval], p)), "baseline_log_loss": float(log_loss(y[is_eval], p)),
            "baseline_seconds": time.perf_counter() - t0, "rows_eval": int(is_eval.sum()),
            "rows_train": int((~is_eval).sum())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-steps", type=int, default=500)
    a = p.parse_args()

    from liveml.offline import OfflineStore
    from tests.offline_fixtures import real_training_set

    cfg = load_config()
    figures_file(cfg, "training")  # a home that cannot take the figures fails now, not after the runs
    work = Path(tempfile.mkdtemp(prefix="training-", dir=cfg.home_dir("tmp")))
    data = made_dir(work / "data")
    print(f"building the training set from the real trips under {data} ...", flush=True)
    catalog, built = real_training_set(data)
    rows = OfflineStore(catalog).scan(built["table"], snapshot_id=built["snapshot_id"]).to_pandas()
    props = {"name": "t", "type": "sql", "uri": f"sqlite:///{data}/c.db", "warehouse": (data / "wh").as_uri()}
    base = gbm_baseline(rows, 0.2)
    print(f"baseline (HistGradientBoosting, same split): AUC {base['baseline_auc']:.4f}", flush=True)

    runs = []
    for i in range(a.repeats):
        t0 = time.perf_counter()
        s = run_pipeline(work, props, a.train_steps, i)
        m = s["metrics"]
        parts = ", ".join(f"{k} {v['seconds']}" for k, v in s["components"].items() if v["seconds"] >= 1)
        print(f"run {i + 1}/{a.repeats}: AUC {m['auc']:.4f}, log loss {m['log_loss']:.4f}, calibration "
              f"{m['calibration']:.3f}, {time.perf_counter() - t0:.0f} s ({parts})", flush=True)
        runs.append(s)

    med = statistics.median
    median_run = sorted(runs, key=lambda s: s["metrics"]["auc"])[len(runs) // 2]
    out = {"rows": built["rows"], "train_steps": a.train_steps, "repeats": a.repeats, **base}
    for k in ("auc", "log_loss", "calibration", "binary_accuracy"):
        out[k] = med(s["metrics"][k] for s in runs)
    out["auc_min"] = min(s["metrics"]["auc"] for s in runs)
    out["seconds"] = med(s["seconds"] for s in runs)
    for name in runs[0]["components"]:
        out[f"seconds_{name}"] = med(s["components"][name]["seconds"] for s in runs)
    out["auc_ratio"] = out["auc"] / out["baseline_auc"]
    for feature, values in median_run.get("slices", {}).items():
        for value, m in list(values.items())[:5]:
            if "auc" in m:
                out[f"slice_auc_{feature}={value}"] = m["auc"]
                out[f"slice_calibration_{feature}={value}"] = m.get("calibration")
                out[f"slice_examples_{feature}={value}"] = m["example_count"]
    write_figures(cfg, "training", out)
    print(f"AUC {out['auc']:.4f} (median of {a.repeats}) vs baseline {out['baseline_auc']:.4f}: "
          f"ratio {out['auc_ratio']:.3f}; wall time {out['seconds']:.0f} s")


if __name__ == "__main__":
    main()
