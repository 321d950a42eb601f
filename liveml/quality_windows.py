"""Quality per model version over event-time windows: the rows of ``monitoring.quality``, from two frames.

The monitor (:mod:`liveml.monitor`) reads ``predictions.trips`` and ``monitoring.outcomes`` at pinned
snapshots and hands them here; everything in this module is a pure function of those frames, so a rerun
over the same snapshots gives equal rows.

Windows (``monitor.windows``): ``SIZE`` is tumbling, ``SIZE/SLIDE`` sliding (SLIDE divides SIZE); both are
aligned to the Unix epoch, as Flink's ``TUMBLE``/``HOP`` windows are with no offset. A window is
``[start, start + SIZE)``; a row at time ``t`` is in every window whose start is ``floor(t / SLIDE) * SLIDE
- j * SLIDE`` for ``j = 0 .. SIZE/SLIDE - 1``. Rows are assigned by decision time (the prediction's event
time). Only windows holding at least one row are emitted.

Per window and (model_name, model_version, model_label), one row per metric of :data:`METRICS`:

- ``estimated``: NannyML-style CBPE (:func:`liveml.quality.estimated`) over every *scored* prediction of the
  window in ``predictions.trips``, available before any label; ``count`` is the number of those scores and
  ``mean_score`` their mean. ``calibration`` has no estimate (CBPE assumes a calibrated model, so its
  estimate would be 1 by construction): null.
- ``realised``: :func:`liveml.quality.realised` over the window's *labelled, scored* outcomes
  (``outcome = 'labelled'``, label 0 or 1); ``count`` is their number. Null where a window has no such row,
  or a figure is undefined there (AUC with one class, precision with no predicted positive...).

A prediction is *scored* when its status is ``ok`` and its score is a number in [0, 1]. The others
(timeout, unavailable, no_model, invalid, or a bad score) are left out of every figure and counted in the
extra metric ``unscored``: ``estimated`` = the window's predictions without a score, ``realised`` = its
labelled outcomes without a score. ``n_scored`` / ``n_labelled`` repeat the two ``count`` figures on every
row of the window. ``labels_complete`` is true once ``window_end + max_label_delay`` is at or before the
latest decision time in ``predictions.trips`` (event time, not wall time): every label the feedback job
will ever join to the window has then been joined.

The figures are those of :mod:`liveml.quality` (its scalar ``realised``/``estimated`` are the reference
definitions), computed for every window at once over (row, window) pairs with NumPy segment sums, since a
call per window costs about 0.3 ms and the 15,002 real trips alone fill 45,000 windows of ``1h`` and
``24h/1h``. Sums are exact up to float64 rounding (the unit tests hold them to 1e-9 of scikit-learn);
realised AUC, from integer counts, is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from iceberg_schemas.features import window_seconds
from liveml.quality import EPS

METRICS = ("count", "positive_rate", "mean_score", "log_loss", "brier", "auc", "calibration", "precision",
           "recall", "unscored")
GROUP = ["model_name", "model_version", "model_label"]
COLUMNS = ["window_start", "window_end", "window", *GROUP, "metric", "estimated", "realised", "n_scored",
           "n_labelled", "decision_threshold", "labels_complete", "computed_at"]
_NS = 1_000_000_000


@dataclass(frozen=True)
class WindowSpec:
    """One entry of ``monitor.windows``: ``1h`` (tumbling) or ``24h/1h`` (size/slide), sizes in seconds."""
    text: str
    size_s: int
    slide_s: int

    @classmethod
    def parse(cls, text: str) -> "WindowSpec":
        size, _, slide = text.partition("/")
        try:
            size_s, slide_s = window_seconds(size), window_seconds(slide or size)
        except ValueError as exc:
            raise ValueError(f"monitor.windows: {text!r}: {exc}") from None
        if slide_s > size_s or size_s % slide_s:
            raise ValueError(f"monitor.windows: {text!r}: SLIDE must divide SIZE")
        return cls(text, size_s, slide_s)

    @property
    def per_row(self) -> int:
        """How many windows hold each row: 1 for a tumbling window, SIZE/SLIDE for a sliding one."""
        return self.size_s // self.slide_s

    def windows(self, times_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The non-empty windows over ``times_ns`` (int64 epoch nanoseconds, sorted ascending):
        ``(starts_ns, lo, hi)``, starts ascending, rows ``lo[i]:hi[i]`` in window ``i``."""
        t = np.asarray(times_ns, dtype=np.int64)
        if t.size == 0:
            empty = np.empty(0, dtype=np.int64)
            return empty, empty, empty
        if t.size > 1 and (np.diff(t) < 0).any():
            raise ValueError("times must be sorted ascending")
        slide, size = self.slide_s * _NS, self.size_s * _NS
        floors = np.unique(np.floor_divide(t, slide) * slide)
        starts = np.unique((floors[:, None] - slide * np.arange(self.per_row)[None, :]).ravel())
        lo = np.searchsorted(t, starts, side="left")
        hi = np.searchsorted(t, starts + size, side="left")
        keep = hi > lo
        return starts[keep], lo[keep], hi[keep]


def parse_windows(texts: Iterable[str]) -> list[WindowSpec]:
    return [WindowSpec.parse(t) for t in texts]


def assign(times: pd.Series, spec: WindowSpec) -> pd.DataFrame:
    """Which window each row falls in: one ``(row, window_start)`` pair per row and window it belongs to
    (``row`` is the position in ``times``); the public form of the assignment :func:`quality_rows` uses."""
    ns = _ns(times)
    order = np.argsort(ns, kind="stable")
    starts, lo, hi = spec.windows(ns[order])
    counts = hi - lo
    rows = np.concatenate([order[a:b] for a, b in zip(lo, hi)]) if len(starts) else np.empty(0, np.int64)
    return pd.DataFrame({"row": rows.astype(np.int64),
                         "window_start": pd.to_datetime(np.repeat(starts, counts), utc=True)})


@dataclass(frozen=True)
class VersionSettings:
    """What a model version is measured with: its decision threshold and maximum label delay (seconds)."""
    decision_threshold: float = 0.5
    max_label_delay_s: int = 3600


def _ns(times: pd.Series) -> np.ndarray:
    s = pd.to_datetime(pd.Series(times), utc=True, cache=False)
    return s.astype("int64").to_numpy() if len(s) else np.empty(0, dtype=np.int64)


def _scored(frame: pd.DataFrame) -> np.ndarray:
    score = pd.to_numeric(frame["score"], errors="coerce").astype(float)
    return ((frame["status"] == "ok") & score.between(0.0, 1.0)).fillna(False).to_numpy(bool)


def _prepare(frame: pd.DataFrame, time_col: str, labelled: bool) -> pd.DataFrame:
    """Rows with a valid time, sorted by it, with ``_t`` (ns), ``_scored`` and (outcomes) ``_labelled``,
    ``_y``. Rows with no time cannot be placed in a window and are dropped."""
    out = pd.DataFrame({c: frame[c] if c in frame else pd.Series([None] * len(frame), index=frame.index,
                                                                     dtype=object) for c in
                        [*GROUP, "score", "status", *(("outcome", "label") if labelled else ())]})
    t = pd.to_datetime(frame[time_col], utc=True, errors="coerce", cache=False)
    out = out[t.notna().to_numpy()]
    out["_t"] = _ns(t[t.notna()])
    out["_scored"] = _scored(out)
    out["_p"] = pd.to_numeric(out["score"], errors="coerce").astype(float).where(out["_scored"], np.nan)
    if labelled:
        label = pd.to_numeric(out["label"], errors="coerce").astype(float)
        out["_labelled"] = ((out["outcome"] == "labelled") & label.isin([0.0, 1.0])).fillna(False).to_numpy(bool)
        out["_y"] = label.eq(1.0).to_numpy(bool)
    out["model_version"] = pd.array(pd.to_numeric(out["model_version"], errors="coerce"), dtype="Int64")
    # a canonical order, whatever order the rows were read in (DuckDB's parallel scan has none): the sums
    # below then add in the same order, and a rerun over the same snapshots gives bit-equal figures
    out["_id"] = frame["trip_id"].astype(str).to_numpy()[t.notna().to_numpy()] if "trip_id" in frame else ""
    order = [c for c in ("_t", "_id", "_p", "_y", "status") if c in out]
    return out.sort_values(order, kind="stable", na_position="last").reset_index(drop=True)


def _groups(df: pd.DataFrame) -> dict[tuple, np.ndarray]:
    """Row positions of each (model_name, model_version, model_label), nulls as None in the key."""
    if df.empty:
        return {}
    keys = df[GROUP].astype(object).where(df[GROUP].notna(), "\0null")
    found = keys.groupby(GROUP, sort=False).indices
    return {tuple(None if v == "\0null" else v for v in (k if isinstance(k, tuple) else (k,))): idx
            for k, idx in found.items()}


def quality_rows(predictions: pd.DataFrame, outcomes: pd.DataFrame, windows: Iterable[str | WindowSpec],
                 settings: Callable[[Any, Any], VersionSettings], computed_at: pd.Timestamp | None = None
                 ) -> pd.DataFrame:
    """The rows of ``monitoring.quality`` (columns :data:`COLUMNS`, ordered by window spec, group, start and
    metric) for ``predictions`` (``predictions.trips``: event_time, model_name, model_version, model_label,
    score, status) and ``outcomes`` (``monitoring.outcomes``: decision_time, the same model columns, score,
    status, outcome, label). ``settings(model_name, model_version)`` gives each version's threshold and
    label delay. ``computed_at`` is stamped on every row (the monitor passes the inputs' commit time, so
    the rows are a function of the inputs). Empty inputs give an empty frame with the columns."""
    specs = [w if isinstance(w, WindowSpec) else WindowSpec.parse(w) for w in windows]
    preds = _prepare(predictions, "event_time", labelled=False)
    outs = _prepare(outcomes, "decision_time", labelled=True)
    latest_ns = int(preds["_t"].max()) if len(preds) else None
    p_groups, o_groups = _groups(preds), _groups(outs)
    keys = sorted(set(p_groups) | set(o_groups), key=lambda k: tuple((v is None, v) for v in k))
    parts = []
    none = np.empty(0, dtype=np.int64)
    for spec in specs:
        for key in keys:
            p_g, o_g = preds.iloc[p_groups.get(key, none)], outs.iloc[o_groups.get(key, none)]
            parts.append(_group_rows(spec, key, p_g, o_g, settings(key[0], key[1]), latest_ns))
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({c: [] for c in COLUMNS if c != "computed_at"})
    df = df.astype({"window": object, "model_name": object, "model_label": object, "metric": object,
                    "estimated": float, "realised": float, "n_scored": np.int64, "n_labelled": np.int64,
                    "decision_threshold": float, "labels_complete": bool})
    for col in ("window_start", "window_end"):
        df[col] = pd.to_datetime(df[col], utc=True, cache=False)
    df["model_version"] = pd.array(df["model_version"], dtype="Int64")
    df["computed_at"] = pd.Series([computed_at] * len(df), dtype="datetime64[ns, UTC]")
    return df[COLUMNS]


def _group_rows(spec: WindowSpec, key: tuple, preds: pd.DataFrame, outs: pd.DataFrame, st: VersionSettings,
                latest_ns: int | None) -> pd.DataFrame:
    """One group's rows for one window spec: the union of the windows its predictions and outcomes fill."""
    thr = st.decision_threshold
    p_starts, p_fig = _figures(spec, preds, thr, "estimated")
    o_starts, o_fig = _figures(spec, outs, thr, "realised")
    starts = np.union1d(p_starts, o_starts)
    w = len(starts)

    def place(at: np.ndarray, fig: dict[str, np.ndarray], name: str, fill: float) -> np.ndarray:
        out = np.full(w, fill, dtype=float)
        out[np.searchsorted(starts, at)] = fig[name]
        return out

    ends = starts + spec.size_s * _NS
    n_scored = place(p_starts, p_fig, "count", 0).astype(np.int64)
    n_labelled = place(o_starts, o_fig, "count", 0).astype(np.int64)
    complete = (ends + st.max_label_delay_s * _NS <= latest_ns) if latest_ns is not None else np.zeros(w, bool)
    m = len(METRICS)
    est = np.column_stack([place(p_starts, p_fig, k, 0 if k in ("count", "unscored") else np.nan) for k in METRICS])
    real = np.column_stack([place(o_starts, o_fig, k, 0 if k in ("count", "unscored") else np.nan) for k in METRICS])
    return pd.DataFrame({
        "window_start": np.repeat(starts, m), "window_end": np.repeat(ends, m), "window": spec.text,
        "model_name": key[0], "model_version": key[1], "model_label": key[2], "metric": np.tile(METRICS, w),
        "estimated": est.ravel() if w else np.empty(0), "realised": real.ravel() if w else np.empty(0),
        "n_scored": np.repeat(n_scored, m), "n_labelled": np.repeat(n_labelled, m),
        "decision_threshold": thr, "labels_complete": np.repeat(complete, m)})


CHUNK_PAIRS = 2_000_000  # (row, window) pairs per batch: bounds memory on dense sliding windows


def _figures(spec: WindowSpec, frame: pd.DataFrame, thr: float, kind: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(starts, figures)`` over the non-empty windows of ``frame`` (prepared, sorted by time): each figure
    an array aligned with ``starts``. ``kind`` ``estimated``: CBPE over the scored rows; ``realised``: over
    the labelled scored rows. The same definitions as :func:`liveml.quality.estimated` / ``realised``
    (which are the reference: the unit tests check every window against them and against scikit-learn),
    computed for all windows at once, since one call per window costs ~0.3 ms and a 4-year stream has tens
    of thousands of windows."""
    starts, lo, hi = spec.windows(frame["_t"].to_numpy(np.int64))
    scored = frame["_scored"].to_numpy(bool)
    p_all = np.nan_to_num(frame["_p"].to_numpy(float), nan=0.0)
    if kind == "estimated":
        use, other = scored, ~scored
        y_all = None
    else:
        lab = frame["_labelled"].to_numpy(bool)
        use, other = lab & scored, lab & ~scored
        y_all = frame["_y"].to_numpy(bool)
    parts: list[dict[str, np.ndarray]] = []
    i = 0
    while i < len(starts):  # batches of windows holding at most CHUNK_PAIRS pairs (at least one window)
        j = i + max(1, int(np.searchsorted(np.cumsum(hi[i:] - lo[i:]), CHUNK_PAIRS, side="right")))
        parts.append(_batch(lo[i:j], hi[i:j], p_all, use, other, y_all, thr))
        i = j
    if not parts:
        return starts, {k: np.empty(0) for k in METRICS}
    return starts, {k: np.concatenate([p[k] for p in parts]) for k in METRICS}


def _batch(lo: np.ndarray, hi: np.ndarray, p_all: np.ndarray, use_all: np.ndarray, other_all: np.ndarray,
           y_all: np.ndarray | None, thr: float) -> dict[str, np.ndarray]:
    lengths = hi - lo
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    rows = np.arange(lengths.sum()) - np.repeat(offsets - lo, lengths)  # window-major (row, window) pairs
    win = np.repeat(np.arange(len(lo)), lengths)
    use = use_all[rows]
    p = np.where(use, p_all[rows], 0.0)
    u = use.astype(float)

    def total(x: np.ndarray) -> np.ndarray:
        return np.add.reduceat(x, offsets) if len(x) else np.zeros(len(lo))

    n = total(u)
    q = np.clip(p, EPS, 1 - EPS)
    pred = use & (p >= thr)
    with np.errstate(divide="ignore", invalid="ignore"):
        def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)

        s_p, s_pred = total(p), total(pred.astype(float))
        out = {"count": n, "unscored": total(other_all[rows].astype(float)), "mean_score": ratio(s_p, n)}
        if y_all is None:
            s_tp = total(np.where(pred, p, 0.0))
            out.update(
                positive_rate=ratio(s_p, n),
                log_loss=ratio(total(np.where(use, -(q * np.log(q) + (1 - q) * np.log1p(-q)), 0.0)), n),
                brier=ratio(total(p * (1 - p)), n), calibration=np.full(len(lo), np.nan),
                precision=ratio(s_tp, s_pred), recall=ratio(s_tp, s_p),
                auc=_auc_windows(win, p, p * u, (1 - p) * u, len(lo)))
        else:
            y = use & y_all[rows]
            yf = y.astype(float)
            s_y = total(yf)
            s_tp = total((pred & y).astype(float))
            out.update(
                positive_rate=ratio(s_y, n),
                log_loss=ratio(total(np.where(use, -np.where(y, np.log(q), np.log1p(-q)), 0.0)), n),
                brier=ratio(total(np.where(use, (p - yf) ** 2, 0.0)), n),
                calibration=ratio(ratio(s_p, n), ratio(s_y, n)),
                precision=ratio(s_tp, s_pred), recall=ratio(s_tp, s_y),
                auc=_auc_windows(win, p, yf, u - yf, len(lo)))
    return out


def _auc_windows(win: np.ndarray, p: np.ndarray, pos: np.ndarray, neg: np.ndarray, n_windows: int) -> np.ndarray:
    """Per window, the weighted Mann-Whitney AUC of :func:`liveml.quality._auc` (ties count half; NaN when a
    class has no weight), for all windows at once: pairs sorted by (window, score), grouped by distinct
    score, each group's positive weight times the negative weight strictly below it in its window."""
    auc = np.full(n_windows, np.nan)
    if len(win) == 0:
        return auc
    order = np.lexsort((p, win))
    w, s, a, b = win[order], p[order], pos[order], neg[order]
    new = np.ones(len(w), dtype=bool)
    new[1:] = (w[1:] != w[:-1]) | (s[1:] != s[:-1])
    g = np.flatnonzero(new)
    ga, gb, gw = np.add.reduceat(a, g), np.add.reduceat(b, g), w[g]
    first = np.ones(len(g), dtype=bool)
    first[1:] = gw[1:] != gw[:-1]
    heads = np.flatnonzero(first)
    sizes = np.diff(np.append(heads, len(g)))
    below = np.empty(len(g))
    for_window = np.repeat(heads, sizes)
    # negative weight strictly below each group, within its window (a cumulative sum restarted per window)
    cum = np.cumsum(gb)
    below = cum - gb - (cum[for_window] - gb[for_window])
    wins = np.add.reduceat(ga * below + 0.5 * ga * gb, heads)
    tot_a, tot_b = np.add.reduceat(ga, heads), np.add.reduceat(gb, heads)
    ok = (tot_a > 0) & (tot_b > 0)
    idx = gw[heads]
    auc[idx[ok]] = wins[ok] / (tot_a[ok] * tot_b[ok])
    return auc


def latest_windows(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of each (window spec, model_name, model_version, model_label)'s latest window (largest
    ``window_start``): what the monitor exports as Prometheus gauges."""
    if rows.empty:
        return rows
    keys = ["window", *GROUP]
    k = rows[keys].astype(object).where(rows[keys].notna(), "")
    last = rows.groupby([k[c] for c in keys], dropna=False)["window_start"].transform("max")
    return rows[rows["window_start"] == last]


def estimate_errors(rows: pd.DataFrame, metrics: tuple[str, ...] = ("log_loss", "auc")) -> pd.DataFrame:
    """How far CBPE's estimate was from the realised figure: per window spec, version, label and metric, over
    the windows where both are defined, the number of windows, the median and 90th percentile of
    ``|estimated - realised|`` and the median signed error (``estimated - realised``, the bias)."""
    cols = ["window", *GROUP, "metric", "windows", "median_abs_error", "p90_abs_error", "median_error"]
    sel = rows[rows["metric"].isin(metrics) & rows["estimated"].notna() & rows["realised"].notna()]
    if sel.empty:
        return pd.DataFrame(columns=cols)
    err = sel.assign(_e=sel["estimated"] - sel["realised"])
    keys = ["window", *GROUP, "metric"]
    out = err.groupby(keys, dropna=False)["_e"].agg(
        windows="size", median_abs_error=lambda e: e.abs().median(), p90_abs_error=lambda e: e.abs().quantile(0.9),
        median_error="median").reset_index()
    return out[cols]
