"""Drift of the live model inputs and scores from the serving version's own training data, per event-time window.

The reference of a version is the TFX run that produced it (:func:`tfx_pipeline.reference.load_reference`):
StatisticsGen's train-split statistics and the run's schema, whose ``drift_comparator`` thresholds decide.
Each window's live rows (``predictions.trips``: the features JSON the enrichment sent, and the score) are
summarised with TFDV's in-memory statistics (the generators StatisticsGen runs, on one Arrow batch, without
Beam: a window of 3,600 rows takes ~50 ms here), and compared by ``tfdv.validate_statistics(window, schema,
environment="SERVING", previous_statistics=reference)``. TFDV records the measured distance of every feature
it compared in ``Anomalies.drift_skew_info``, whether or not it crossed the threshold (TFDV 0.25 release note;
checked by the tests), so every row below is TFDV's own number:

- categorical features: ``linf``, the L-infinity distance of normalised value frequencies;
- numeric features: ``jensen_shannon``, the Jensen-Shannon divergence (log base 2) of the two QUANTILES
  histograms, after TFDV aligns their buckets (uniform mass within a bucket);
- ``score``: the same divergence between the window's scores and the version's scores on its run's eval
  split (``score_statistics.pb``, written at push time). Why that reference: held-out rows from just before
  the push are what the version is expected to score; the first window of the version's life would instead
  declare whatever the live data already was normal, and hide drift present from the first day. Its
  threshold is declared in ``tfx_pipeline/schema/scores.pbtxt``.

``drifted`` is ``distance > threshold`` (TFDV raises its anomaly on the same test), and None when fewer than
``min_rows`` live values were compared: below that, resampled undrifted real windows cross the thresholds by
chance (see the header of ``tfx_pipeline/schema/schema.pbtxt``). ``n`` is the number of live values compared
(rows where the feature was present).

Windows follow ``cfg.monitor.windows``: ``"1h"`` is tumbling, ``"24h/1h"`` sliding (size/slide); both are
aligned to the Unix epoch and rows are assigned by ``event_time``, as Flink's event-time windows do. Only rows
with status ``ok`` and a model version count (a fallback names no version). A version whose directory,
``lineage.json`` or reference is gone is skipped and counted in ``result.attrs["skipped_versions"]``
(``{"name/version": reason}``); it never stops the others. A window TFDV fails on is left out and named in
``result.attrs["failed_windows"]``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from iceberg_schemas.tables import DRIFT
from liveml.quality_windows import WindowSpec

log = logging.getLogger(__name__)

COLUMNS = [f.name for f in DRIFT.schema.fields]
MIN_ROWS = 2000  # below it resampled undrifted real windows crossed the thresholds (schema.pbtxt header)
SERVING_ENV = "SERVING"
SCORES_SCHEMA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tfx_pipeline", "schema",
                             "scores.pbtxt")
TFX_PIPELINE = "tips"  # tfx_pipeline.runner.run_local's default pipeline name
_STATISTIC = {1: "linf", 2: "jensen_shannon", 3: "normalized_abs_difference"}  # DriftSkewInfo.Measurement.Type


# --- windows -------------------------------------------------------------------------------------------------
def assign_windows(event_time: pd.Series, spec: WindowSpec | str) -> pd.DataFrame:
    """``(row, window_start)`` pairs: every window of ``spec`` holding each row's ``event_time`` (UTC), i.e.
    ``start = k * slide`` with ``start <= t < start + size``; ``row`` is the position in ``event_time``."""
    spec = WindowSpec.parse(spec) if isinstance(spec, str) else spec
    ms = _epoch_ms(event_time)
    slide, per_row = spec.slide_s * 1000, spec.size_s // spec.slide_s
    last = (ms // slide) * slide
    starts = (last[:, None] - np.arange(per_row)[None, :] * slide).reshape(-1)
    rows = np.repeat(np.arange(len(ms)), per_row)
    return pd.DataFrame({"row": rows, "window_start": starts})


def _epoch_ms(times: pd.Series) -> np.ndarray:
    t = pd.to_datetime(times, utc=True)
    return (t.astype("int64") // 1_000_000).to_numpy(np.int64)


def timestamp(ms: int) -> pd.Timestamp:
    return pd.Timestamp(int(ms), unit="ms", tz="UTC")


# --- live rows as TFDV input ----------------------------------------------------------------------------------
def expand_features(features_json: Iterable[Any], names: Sequence[str]) -> tuple[pd.DataFrame, int]:
    """``(frame, unreadable)``: one column per feature name, one row per JSON object (None where missing);
    a null or unreadable JSON is a row of missing values, counted in ``unreadable``."""
    records, bad = [], 0
    for raw in features_json:
        try:
            obj = json.loads(raw) if isinstance(raw, (str, bytes)) else None
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            bad += 1
            obj = {}
        records.append(obj)
    return pd.DataFrame.from_records(records, columns=list(names)), bad


def feature_kinds(schema, environment: str | None = SERVING_ENV) -> dict[str, str]:
    """``{feature: "string" | "int" | "float"}`` for the schema's features in ``environment``."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    kinds = {schema_pb2.BYTES: "string", schema_pb2.INT: "int", schema_pb2.FLOAT: "float"}
    out = {}
    for f in schema.feature:
        if environment and (environment in f.not_in_environment or
                            (f.in_environment and environment not in f.in_environment)):
            continue
        if f.type in kinds:
            out[f.name] = kinds[f.type]
    return out


def arrow_batch(frame: pd.DataFrame, kinds: Mapping[str, str]):
    """An Arrow batch as TFX decodes tf.Examples: one ``list<binary|int64|float32>`` column per feature,
    ``[value]`` where present and null where missing. A value that does not convert (a string where a
    number belongs) is missing."""
    import pyarrow as pa

    from tfx_pipeline.reference import single_value_lists

    arrays, names = [], []
    for name, kind in kinds.items():
        col = frame[name] if name in frame else pd.Series([None] * len(frame), dtype=object)
        if kind == "string":
            present = col.notna().to_numpy() & col.map(lambda v: isinstance(v, (str, bytes, int))).to_numpy()
            values = [v if isinstance(v, bytes) else str(v).encode() for v in col]
            arrays.append(single_value_lists(values, present, pa.binary()))
        else:
            num = pd.to_numeric(col, errors="coerce").to_numpy(np.float64)
            present = ~np.isnan(num)
            if kind == "int":
                arrays.append(single_value_lists(np.where(present, num, 0).astype(np.int64), present, pa.int64()))
            else:
                arrays.append(single_value_lists(num.astype(np.float32), present, pa.float32()))
        names.append(name)
    return pa.RecordBatch.from_arrays(arrays, names)


def statistics(batch, schema):
    """TFDV statistics of an Arrow batch (in memory, StatisticsGen's generators and default options), with
    ``schema`` so integer features it marks categorical get value frequencies, as the reference has."""
    import tensorflow_data_validation as tfdv
    from tensorflow_data_validation.statistics import stats_impl

    return stats_impl.generate_statistics_in_memory(batch, tfdv.StatsOptions(schema=schema))


def non_missing(stats) -> dict[str, int]:
    """``{feature: num_non_missing}`` of a DatasetFeatureStatisticsList's first dataset."""
    out = {}
    for f in stats.datasets[0].features:
        which = f.WhichOneof("stats")
        common = getattr(f, which).common_stats if which in ("num_stats", "string_stats", "bytes_stats") else None
        out[".".join(f.path.step) or f.name] = int(common.num_non_missing) if common is not None else 0
    return out


def measurements(anomalies, kind: str = "drift") -> dict[str, list[tuple[str, float, float]]]:
    """``{feature: [(statistic, distance, threshold)]}`` from ``Anomalies.drift_skew_info``."""
    out: dict[str, list[tuple[str, float, float]]] = {}
    for info in anomalies.drift_skew_info:
        ms = info.drift_measurements if kind == "drift" else info.skew_measurements
        for m in ms:
            out.setdefault(".".join(info.path.step), []).append(
                (_STATISTIC.get(int(m.type), str(m.type)), float(m.value), float(m.threshold)))
    return out


def serving_environment(schema) -> str | None:
    return SERVING_ENV if SERVING_ENV in schema.default_environment else None


def compare(current, reference, schema, kind: str = "drift") -> dict[str, list[tuple[str, float, float]]]:
    """TFDV's comparators between two statistics: ``kind`` "drift" (``previous_statistics=reference``) or
    "skew" (``serving_statistics=current`` against ``reference`` as the training side)."""
    import tensorflow_data_validation as tfdv

    env = serving_environment(schema)
    if kind == "drift":
        anomalies = tfdv.validate_statistics(current, schema, environment=env, previous_statistics=reference)
    else:
        anomalies = tfdv.validate_statistics(reference, schema, environment=env, serving_statistics=current)
    return measurements(anomalies, kind)


def load_scores_schema(path: str = SCORES_SCHEMA):
    import tensorflow_data_validation as tfdv

    return tfdv.load_schema_text(path)


# --- rows ------------------------------------------------------------------------------------------------------
def drift_row(window: WindowSpec, start_ms: int, name: str, version: int, kind: str, feature: str,
              statistic: str, distance, threshold, n: int, reference: str | None, min_rows: int,
              computed_at) -> dict[str, Any]:
    """One ``monitoring.drift`` row; ``drifted`` is ``distance > threshold`` once ``n >= min_rows``, else None."""
    judged = distance is not None and threshold is not None and n >= min_rows
    return {"window_start": timestamp(start_ms), "window_end": timestamp(start_ms + window.size_s * 1000),
            "window": window.text,
            "model_name": name, "model_version": int(version), "kind": kind, "feature": feature,
            "statistic": statistic, "distance": None if distance is None else float(distance),
            "threshold": None if threshold is None else float(threshold),
            "drifted": bool(distance > threshold) if judged else None, "n": int(n), "reference": reference,
            "computed_at": computed_at}


def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows as a DataFrame with exactly the columns of ``monitoring.drift``, in order."""
    out = pd.DataFrame.from_records(rows, columns=COLUMNS)
    for c in ("window_start", "window_end", "computed_at"):
        out[c] = pd.to_datetime(out[c], utc=True)
    return out


_REFERENCES: dict[tuple[str, int], Any] = {}


def version_reference(cfg, model_name: str, version: int):
    """The version's :class:`tfx_pipeline.reference.Reference`, cached while its ``lineage.json`` is unchanged;
    raises :class:`tfx_pipeline.reference.ReferenceMissing`."""
    from tfx_pipeline.reference import LINEAGE_FILE, ReferenceMissing, load_reference

    vdir = str(cfg.path(cfg.serving.model_base_path, model_name, str(int(version))))
    try:
        stamp = os.stat(os.path.join(vdir, LINEAGE_FILE)).st_mtime_ns
    except OSError:
        raise ReferenceMissing(f"{vdir}: no {LINEAGE_FILE} (the version directory is gone?)") from None
    key = (vdir, stamp)
    if key not in _REFERENCES:
        if len(_REFERENCES) >= 64:  # bounded: a long-lived monitor sees many versions come and go
            _REFERENCES.clear()
        # ML Metadata where `liveml train` keeps it (tfx_pipeline.runner's layout), for a lineage naming none
        metadata = cfg.path("tfx", "metadata", TFX_PIPELINE, "metadata.db")
        _REFERENCES[key] = load_reference(vdir, str(metadata) if metadata.is_file() else None)
    return _REFERENCES[key]


def served_rows(predictions: pd.DataFrame) -> pd.DataFrame:
    """The rows that reached a model: status ok (when the column is there) and a model version."""
    p = predictions
    keep = p["model_version"].notna()
    if "status" in p:
        keep &= p["status"].fillna("ok").eq("ok")
    return p[keep]


def window_groups(event_time: pd.Series, spec: WindowSpec, since=None):
    """``[(window_start_ms, row positions)]`` of the windows of ``spec`` holding rows, in time order; with
    ``since`` (a time), only windows that end after it (those new rows can still change)."""
    assigned = assign_windows(event_time, spec)
    if since is not None:
        ts = pd.Timestamp(since)
        cut = (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).value // 1_000_000
        assigned = assigned[assigned["window_start"] + spec.size_s * 1000 > cut]
    return [(int(start), members["row"].to_numpy()) for start, members in assigned.groupby("window_start", sort=True)]


def drift_rows(store, cfg, predictions: pd.DataFrame, windows: Sequence[str] | None = None,
               min_rows: int = MIN_ROWS, since=None) -> pd.DataFrame:
    """Feature and score drift per window, model name and version: rows with the columns of
    ``monitoring.drift`` (``kind="drift"``), one per (window, version, compared feature), plus ``score``.

    ``predictions``: rows of ``predictions.trips`` (at least ``event_time``, ``model_name``, ``model_version``,
    ``score``, ``features``; ``status`` if present). ``windows``: specs as in ``cfg.monitor.windows`` (the
    default). ``store`` is not read (the reference lives beside the model); it is taken for symmetry with
    :func:`liveml.skew.skew_rows`. Windows without rows make no rows; so do features TFDV could not compare
    (absent from the window or the reference). Skipped versions: ``result.attrs["skipped_versions"]``.
    ``since``: only windows ending after this time (a monitor's new rows), as :func:`window_groups`.

    Cost: TFDV's statistics take ~60 ms per 1,000 rows of 15 features here, and a row counts once per window
    holding it (24 times for ``24h/1h``); merging per-slide partial statistics was no cheaper (TFDV's
    merge finalises its quantile sketches, and merging cost as much as recomputing).
    """
    from tfx_pipeline.reference import ReferenceMissing

    specs = [WindowSpec.parse(w) for w in (windows if windows is not None else cfg.monitor.windows)]
    computed_at = pd.Timestamp.now(tz="UTC")
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    live = served_rows(predictions) if len(predictions) else predictions
    scores_schema = None
    for (name, version), group in (live.groupby(["model_name", "model_version"], sort=True) if len(live) else ()):
        try:
            ref = version_reference(cfg, name, int(version))
        except ReferenceMissing as exc:
            skipped[f"{name}/{int(version)}"] = str(exc)
            log.warning("drift: skipping %s version %s: %s", name, version, exc)
            continue
        kinds = feature_kinds(ref.schema, serving_environment(ref.schema))
        feats, _ = expand_features(group["features"], list(kinds))
        batch = arrow_batch(feats, kinds)
        score = pd.to_numeric(group["score"], errors="coerce").to_numpy(np.float64)
        if ref.score_statistics is not None and scores_schema is None:
            scores_schema = load_scores_schema()
        for spec in specs:
            for start, idx in window_groups(group["event_time"], spec, since):
                try:
                    rows += _window_rows(spec, start, name, int(version), ref, batch, idx, score, scores_schema,
                                         min_rows, computed_at)
                except Exception as exc:  # noqa: BLE001 (one window TFDV cannot summarise never stops the rest)
                    where = f"{name}/{int(version)} {spec.text} @{timestamp(start).isoformat()}"
                    failed[where] = f"{type(exc).__name__}: {exc}"
                    log.warning("drift: window %s failed: %s", where, exc)
    out = frame(rows)
    out.attrs["skipped_versions"] = skipped
    out.attrs["failed_windows"] = failed
    return out


def _window_rows(spec, start, name, version, ref, batch, idx, score, scores_schema, min_rows, computed_at):
    from tfx_pipeline.reference import statistics_of_scores

    rows = []
    current = statistics(batch.take(arrow_indices(idx)), ref.schema)
    counts = non_missing(current)
    for feature, ms in sorted(compare(current, ref.statistics, ref.schema).items()):
        for statistic, distance, threshold in ms:
            rows.append(drift_row(spec, start, name, version, "drift", feature, statistic, distance, threshold,
                             counts.get(feature, 0), ref.statistics_file, min_rows, computed_at))
    s = score[idx]
    s = s[~np.isnan(s)]
    if ref.score_statistics is not None and s.size:
        for feature, ms in compare(statistics_of_scores(s), ref.score_statistics, scores_schema).items():
            for statistic, distance, threshold in ms:
                rows.append(drift_row(spec, start, name, version, "drift", feature, statistic, distance, threshold,
                                 int(s.size), ref.score_file, min_rows, computed_at))
    return rows


def arrow_indices(idx: np.ndarray):
    import pyarrow as pa

    return pa.array(np.asarray(idx, dtype=np.int64))

