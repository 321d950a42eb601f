"""Training/serving skew: the feature values the enrichment sent, against those a training set gives.

For each prediction (trip id, decision time = its ``event_time``) the offline values come from Iceberg by
the training set's own point-in-time join (:func:`liveml.training_set.features_at`, the SQL a build runs:
the trip's decision event for request-time fields, each view's latest row at or before the decision time,
NULL past the view's TTL). The served values are ``predictions.features``. Per window (as in
:mod:`liveml.drift`), model version and feature, rows with ``kind="skew"``:

- ``share_differ``: the share of compared rows whose two values differ. Missing on one side only differs;
  missing on both does not; strings differ when unequal; numbers when
  ``not isclose(served, offline, rel_tol=FLOAT_REL_TOL, abs_tol=FLOAT_ABS_TOL)`` (1e-6 relative covers the
  float32 a value may pass through, and JSON's shortest repr of doubles, while a real change of a fare by a
  cent is 1e-3 relative). Threshold ``SHARE_DIFFER_THRESHOLD``;
- ``mean_abs_diff`` (numbers): the mean ``|served - offline|`` over rows where both are present; no
  threshold (the scale is the feature's);
- ``linf`` / ``jensen_shannon``: TFDV's ``skew_comparator`` distance between the statistics of the served
  and the offline values of the same rows (``tfdv.validate_statistics(offline, schema,
  serving_statistics=served)``), thresholds from the schema (the served version's, else the curated one).

``reference`` names the Iceberg snapshots read (``iceberg {"raw.trips": id, ...}``). Predictions without an
offline row (their decision event never reached ``raw.trips``) are not compared;
their count is in ``result.attrs["unmatched"]``. ``n`` is the number of compared rows.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from liveml import drift as D

FLOAT_REL_TOL = 1e-6
FLOAT_ABS_TOL = 1e-9
SHARE_DIFFER_THRESHOLD = 0.01


def differ(served: pd.Series, offline: pd.Series, kind: str) -> np.ndarray:
    """Per row: do the two values differ (see the module docstring for the rule)."""
    s_missing, o_missing = served.isna().to_numpy(), offline.isna().to_numpy()
    out = s_missing != o_missing
    both = ~s_missing & ~o_missing
    if kind == "string":
        out[both] = served[both].astype(str).to_numpy() != offline[both].astype(str).to_numpy()
    else:
        a = pd.to_numeric(served[both], errors="coerce").to_numpy(np.float64)
        b = pd.to_numeric(offline[both], errors="coerce").to_numpy(np.float64)
        out[both] = ~np.isclose(a, b, rtol=FLOAT_REL_TOL, atol=FLOAT_ABS_TOL, equal_nan=True)
    return out


def _schema(cfg, name: str, version: int):
    """The served version's schema when its reference is readable, else the curated one."""
    from tfx_pipeline.reference import ReferenceMissing

    try:
        return D.version_reference(cfg, name, version).schema
    except ReferenceMissing:
        import tensorflow_data_validation as tfdv

        from tfx_pipeline.pipeline import SCHEMA_FILE

        return tfdv.load_schema_text(SCHEMA_FILE)


def offline_values(store, predictions: pd.DataFrame, spec=None) -> pd.DataFrame:
    """The point-in-time values for each prediction's (trip id, event time), by the training set's SQL;
    columns: ``_pos`` (row position in ``predictions``) and the model's feature columns."""
    import pyarrow as pa

    from iceberg_schemas.training import TIPS
    from liveml.training_set import features_at

    spec = spec or TIPS
    key = spec.keys[0]
    spine = pd.DataFrame({key: predictions[key].astype(str).to_numpy(),
                          spec.decision_time: pd.to_datetime(predictions["event_time"], utc=True).to_numpy()})
    spine[spec.decision_time] = pd.to_datetime(spine[spec.decision_time], utc=True)
    table = features_at(store, pa.Table.from_pandas(spine, preserve_index=False), spec)
    offline = table.to_pandas()
    offline.attrs["reference"] = "iceberg " + (table.schema.metadata or {}).get(b"liveml.snapshot_ids", b"").decode()
    offline[spec.decision_time] = pd.to_datetime(offline[spec.decision_time], utc=True)
    spine["_pos"] = np.arange(len(spine))
    merged = spine.merge(offline.drop(columns=[spec.label]), on=[key, spec.decision_time], how="inner")
    out = merged.drop_duplicates("_pos").drop(columns=[key, spec.decision_time])
    out.attrs["reference"] = offline.attrs["reference"]
    return out


def skew_rows(store, cfg, predictions: pd.DataFrame, windows: Sequence[str] | None = None,
              min_rows: int = 1, since=None) -> pd.DataFrame:
    """Served vs point-in-time offline feature values per window, model version and feature: rows with the
    columns of ``monitoring.drift`` (``kind="skew"``). ``predictions``: rows of ``predictions.trips`` (at
    least ``trip_id``, ``event_time``, ``model_name``, ``model_version``, ``features``; ``status`` if there);
    ``store``: a :class:`liveml.offline.OfflineStore` over the catalog with ``raw.trips`` and the feature
    tables; ``windows``: default ``cfg.monitor.windows``; ``since``: only windows ending after it.
    ``min_rows``: ``drifted`` is None below it (1: any compared row is evidence of skew)."""
    specs = [D.WindowSpec.parse(w) for w in (windows if windows is not None else cfg.monitor.windows)]
    computed_at = pd.Timestamp.now(tz="UTC")
    live = D.served_rows(predictions).reset_index(drop=True) if len(predictions) else predictions
    rows: list[dict[str, Any]] = []
    unmatched, reference = 0, None
    failed: dict[str, str] = {}
    if len(live):
        offline = offline_values(store, live)
        unmatched, reference = len(live) - len(offline), offline.attrs["reference"]
        live = live.iloc[offline["_pos"].to_numpy()].reset_index(drop=True)
        offline = offline.drop(columns="_pos").reset_index(drop=True)
    for (name, version), group in (live.groupby(["model_name", "model_version"], sort=True) if len(live) else ()):
        schema = _schema(cfg, name, int(version))
        kinds = {k: v for k, v in D.feature_kinds(schema, D.serving_environment(schema)).items() if k in offline}
        served, _ = D.expand_features(group["features"], list(kinds))
        off = offline.iloc[group.index.to_numpy()].reset_index(drop=True)
        served_batch, offline_batch = D.arrow_batch(served, kinds), D.arrow_batch(off, kinds)
        for spec in specs:
            for start, idx in D.window_groups(group["event_time"], spec, since):
                try:
                    rows += _window_rows(spec, start, name, int(version), schema, kinds, served.iloc[idx],
                                         off.iloc[idx], served_batch, offline_batch, idx, reference, min_rows,
                                         computed_at)
                except Exception as exc:  # noqa: BLE001 (one window TFDV cannot summarise never stops the rest)
                    failed[f"{name}/{int(version)} {spec.text} @{D.timestamp(start).isoformat()}"] = \
                        f"{type(exc).__name__}: {exc}"
    out = D.frame(rows)
    out.attrs["unmatched"] = unmatched
    out.attrs["failed_windows"] = failed
    return out


def _window_rows(spec, start, name, version, schema, kinds, served, off, served_batch, offline_batch, idx,
                 reference, min_rows, computed_at) -> list[dict[str, Any]]:
    n = len(idx)
    rows = []
    for feature, kind in kinds.items():
        d = differ(served[feature].reset_index(drop=True), off[feature].reset_index(drop=True), kind)
        rows.append(D.drift_row(spec, start, name, version, "skew", feature, "share_differ", float(d.mean()),
                           SHARE_DIFFER_THRESHOLD, n, reference, min_rows, computed_at))
        if kind != "string":
            a = pd.to_numeric(served[feature], errors="coerce").to_numpy(np.float64)
            b = pd.to_numeric(off[feature], errors="coerce").to_numpy(np.float64)
            both = ~np.isnan(a) & ~np.isnan(b)
            if both.any():
                rows.append(D.drift_row(spec, start, name, version, "skew", feature, "mean_abs_diff",
                                   float(np.abs(a[both] - b[both]).mean()), None, int(both.sum()),
                                   reference, min_rows, computed_at))
    take = D.arrow_indices(idx)
    served_stats = D.statistics(served_batch.take(take), schema)
    offline_stats = D.statistics(offline_batch.take(take), schema)
    for feature, ms in sorted(D.compare(served_stats, offline_stats, schema, kind="skew").items()):
        for statistic, distance, threshold in ms:
            rows.append(D.drift_row(spec, start, name, version, "skew", feature, statistic, distance, threshold, n,
                               reference, min_rows, computed_at))
    return rows
