"""Benchmark: how close CBPE's estimate comes to the realised quality, and what a full recompute costs.

Two sources, chosen with ``--source``:

* ``table`` (default when it has rows): ``monitoring.quality`` as the monitor wrote it in the configured
  catalog, i.e. the trained model on the replayed stream (run after ``make demo`` or a replay with the
  feedback job and `liveml monitor`). Only windows whose labels are complete count.
* ``synthetic``: the 15,002 real trips, every one labelled, scored by a logistic regression of the label on
  payment type and fare fitted on the 2013 trips (so calibrated on 2013, and less so as the data drifts
  through 2016: the case CBPE's estimate is exposed to).

Figures, per window spec and metric (log loss, AUC): the number of windows where both the estimate and the
realised figure exist, the median and p90 of ``|estimated - realised|``, and the median signed error (the
estimate's bias). For ``synthetic`` also ``recompute_s``: ``quality_rows`` over every window of the real
trips, and ``recompute_s_per_window``.

Writes flat JSON to LIVEML_HOME/bench/quality_estimate.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from liveml.config import load_config  # noqa: E402
from liveml.figures import figures_file, write_figures  # noqa: E402
from liveml.quality_windows import VersionSettings, estimate_errors, quality_rows  # noqa: E402


def synthetic_rows(windows: list[str]) -> tuple[pd.DataFrame, float]:
    from flink_jobs import replay as rp

    raw, labels = rp.trip_tables(rp.load_trips())
    ends = raw[raw["event_type"] == "end"].reset_index(drop=True)
    from sklearn.linear_model import LogisticRegression

    x = np.column_stack([(ends["payment_type"] == "Credit Card").to_numpy(float), ends["fare"].fillna(0).to_numpy()])
    label = ends["trip_id"].map(labels.set_index("trip_id")["big_tipper"].astype(float))
    first_year = (ends["event_time"] < pd.Timestamp("2014-01-01", tz="UTC")).to_numpy()
    model = LogisticRegression().fit(x[first_year], label.to_numpy()[first_year])
    preds = pd.DataFrame({"trip_id": ends["trip_id"], "event_time": ends["event_time"], "model_name": "tips",
                          "model_version": 1, "model_label": "stable", "score": model.predict_proba(x)[:, 1],
                          "status": "ok"})
    outs = preds.rename(columns={"event_time": "decision_time"}).assign(outcome="labelled", label=label.to_numpy())
    t0 = time.perf_counter()
    rows = quality_rows(preds, outs, windows, lambda n, v: VersionSettings(0.5, 3600))
    return rows, time.perf_counter() - t0


def table_rows(cfg) -> pd.DataFrame:
    from liveml.offline import OfflineStore

    store = OfflineStore.from_config(cfg)
    if "monitoring.quality" not in store.table_names():
        return pd.DataFrame()
    rows = store.scan_pandas("monitoring.quality")
    return rows[rows["labels_complete"].fillna(False)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", choices=["auto", "table", "synthetic"], default="auto")
    args = ap.parse_args()
    cfg = load_config()
    figures_file(cfg, "quality_estimate")
    figures: dict = {}
    rows = table_rows(cfg) if args.source in ("auto", "table") else pd.DataFrame()
    source = "table" if len(rows) else "synthetic"
    if source == "synthetic":
        if args.source == "table":
            sys.exit("monitoring.quality has no window with complete labels yet: run the demo, or --source synthetic")
        rows, seconds = synthetic_rows(list(cfg.monitor.windows))
        windows = rows.drop_duplicates(["window", "window_start"]).shape[0]
        figures.update(recompute_s=round(seconds, 3), windows=windows,
                       recompute_s_per_window=seconds / max(windows, 1), rows=len(rows))
    figures["source"] = source
    errors = estimate_errors(rows)
    for r in errors.itertuples(index=False):
        prefix = f"{r.window}_v{r.model_version}_{r.model_label}_{r.metric}".replace("/", "per")
        figures[f"{prefix}_windows"] = int(r.windows)
        figures[f"{prefix}_median_abs_error"] = round(float(r.median_abs_error), 4)
        figures[f"{prefix}_p90_abs_error"] = round(float(r.p90_abs_error), 4)
        figures[f"{prefix}_median_error"] = round(float(r.median_error), 4)
    write_figures(cfg, "quality_estimate", figures)


if __name__ == "__main__":
    main()
