"""`liveml monitor`: quality per model version, and drift, recomputed from pinned Iceberg snapshots.

Why a periodic process and not a Flink job: TFDV, CBPE and the quality figures are Python libraries that
work on whole windows, and the inputs (``predictions.trips``, ``monitoring.outcomes``) are exactly-once
Iceberg tables. A window recomputed from pinned snapshots of them is deterministic, so each cycle is a
pure function of its inputs: it overwrites ``monitoring.quality`` (and ``monitoring.drift``) and records
the snapshot ids it read in the table's ``liveml.monitor.inputs`` property; a cycle whose inputs have not
changed writes nothing. (pyiceberg 0.6.1, pinned, can only append to or overwrite an unpartitioned table;
both outputs are unpartitioned, and 0.6.1 has no snapshot-summary properties, hence a table property.)

Each cycle (:func:`run_once`):

1. pins the current snapshot of each input; a missing input table is waited for, not an error;
2. quality (:func:`liveml.quality_windows.quality_rows`) over every window of ``monitor.windows``, each
   version measured at its own ``decision_threshold`` and ``max_label_delay`` (``lineage.json``, else its
   training set's; ``monitor.max_label_delay`` overrides the delay);
3. drift and skew, if :mod:`liveml.drift` / :mod:`liveml.skew` provide ``drift_rows`` / ``skew_rows``
   (imported lazily: the monitor runs without them), only for windows that can have changed since the
   last write: those ending after the earliest event time of the prediction files added since;
4. Prometheus gauges (:mod:`liveml.monitor_metrics`) from the latest window of each spec.

``computed_at`` on every row is the commit time of the newest input snapshot, not the wall clock, so a
rerun over the same snapshots writes equal rows.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd

from iceberg_schemas.tables import DRIFT, QUALITY, TableSpec
from iceberg_schemas.training import TIPS, TRAINING_SETS
from liveml.config import LivemlConfig
from liveml.errors import LivemlError
from liveml.monitor_metrics import MonitorMetrics
from liveml.offline import OfflineStore
from liveml.quality_windows import VersionSettings, quality_rows

log = logging.getLogger("liveml.monitor")

PREDICTIONS, OUTCOMES = "predictions.trips", "monitoring.outcomes"
INPUTS_PROPERTY = "liveml.monitor.inputs"
QUALITY_CODE = 1  # bump when a figure's definition changes: the recorded inputs then differ, and it recomputes
DRIFT_HOOKS = (("liveml.drift", "drift_rows"), ("liveml.skew", "skew_rows"))


# --- versions: threshold, label delay, baseline, from lineage.json -----------------------------------------
def version_dir(cfg: LivemlConfig, model_name: str, version: int):
    return cfg.path(cfg.serving.model_base_path, str(model_name), str(int(version)))


def lineage(cfg: LivemlConfig, model_name: Any, version: Any) -> dict[str, Any]:
    """The version's ``lineage.json`` (written by the pusher), or ``{}`` when it is gone or unreadable."""
    if model_name is None or version is None or version is pd.NA:
        return {}
    try:
        return json.loads((version_dir(cfg, model_name, version) / "lineage.json").read_text())
    except (OSError, ValueError):
        return {}


def version_settings(cfg: LivemlConfig, model_name: Any, version: Any) -> VersionSettings:
    """The version's decision threshold (``lineage.json``'s ``decision_threshold``, else its training set's)
    and label delay (``monitor.max_label_delay``, else the lineage's ``max_label_delay_s``, else its
    training set's). A version without lineage (deleted, or never pushed) gets the ``tips`` training set's."""
    from iceberg_schemas.features import window_seconds

    lin = lineage(cfg, model_name, version)
    name = lin.get("training_set") or str(lin.get("training_table") or "").rpartition(".")[2]
    spec = TRAINING_SETS.get(name, TIPS)
    thr = lin.get("decision_threshold")
    thr = float(thr) if isinstance(thr, (int, float)) and 0.0 <= thr <= 1.0 else spec.decision_threshold
    if cfg.monitor.max_label_delay:
        delay = window_seconds(cfg.monitor.max_label_delay)
    else:
        d = lin.get("max_label_delay_s")
        delay = int(d) if isinstance(d, (int, float)) and d >= 0 else spec.max_label_delay_s
    return VersionSettings(thr, delay)


def versions_on_disk(cfg: LivemlConfig) -> list[tuple[str, int]]:
    base = cfg.model_base_path
    if not base.is_dir():
        return []
    return sorted((m.name, int(v.name)) for m in base.iterdir() if m.is_dir()
                  for v in m.iterdir() if v.is_dir() and v.name.isdigit())


def _settings_key(cfg: LivemlConfig) -> dict[str, Any]:
    """What every version on disk is measured with, and its lineage's time: part of both inputs' keys."""
    out = {}
    for name, v in versions_on_disk(cfg):
        st = version_settings(cfg, name, v)
        try:
            stamp = os.stat(version_dir(cfg, name, v) / "lineage.json").st_mtime_ns
        except OSError:
            stamp = None
        out[f"{name}/{v}"] = [st.decision_threshold, st.max_label_delay_s, stamp]
    return out


# --- inputs and outputs ------------------------------------------------------------------------------------
class MissingInputs(LookupError):
    """An input table does not exist yet: the monitor waits for it."""


def pin_inputs(store: OfflineStore) -> dict[str, int | None]:
    """The current snapshot id of each input (None: the table is still empty)."""
    known = set(store.table_names())
    missing = [t for t in (PREDICTIONS, OUTCOMES) if t not in known]
    if missing:
        raise MissingInputs(f"waiting for {', '.join(missing)}: `liveml tables create` creates them (the enrich "
                            "job fills predictions.trips, the feedback job monitoring.outcomes)")
    return {t: store.resolve_snapshot(store.table(t)) for t in (PREDICTIONS, OUTCOMES)}


def inputs_time(store: OfflineStore, pins: dict[str, int | None]) -> pd.Timestamp | None:
    """The commit time of the newest pinned snapshot: the rows' ``computed_at``."""
    stamps = [store.table(t).snapshot_by_id(s).timestamp_ms for t, s in pins.items() if s is not None]
    return pd.Timestamp(max(stamps), unit="ms", tz="UTC") if stamps else None


def read_predictions(store: OfflineStore, snapshot: int | None, features: bool) -> pd.DataFrame:
    cols = "trip_id, event_time, model_name, model_version, model_label, score, status" + (
        ", features" if features else "")
    return store.sql(f"SELECT {cols} FROM predictions.trips", {PREDICTIONS: snapshot}).to_pandas()


def read_outcomes(store: OfflineStore, snapshot: int | None) -> pd.DataFrame:
    return store.sql("SELECT trip_id, decision_time, model_name, model_version, model_label, score, status, outcome, "
                     "label FROM monitoring.outcomes", {OUTCOMES: snapshot}).to_pandas()


def recorded(store: OfflineStore, spec: TableSpec) -> dict[str, Any] | None:
    """What the current snapshot of an output was computed from, if the monitor wrote it (else None)."""
    table = store.table(spec.identifier)
    try:
        rec = json.loads(table.properties.get(INPUTS_PROPERTY, "null"))
    except ValueError:
        return None
    snap = table.current_snapshot()
    if not isinstance(rec, dict) or snap is None or rec.get("snapshot_id") != snap.snapshot_id:
        return None  # written by something else, or the property commit after it did not happen
    return rec


def overwrite(store: OfflineStore, spec: TableSpec, rows: pd.DataFrame, key: dict[str, Any]) -> int:
    """Replace the table's rows with ``rows`` (one snapshot), then record ``key`` and that snapshot's id."""
    import pyarrow as pa
    from pyiceberg.io.pyarrow import schema_to_pyarrow

    table = store.table(spec.identifier)
    schema = schema_to_pyarrow(table.schema())
    frame = pd.DataFrame({f.name: rows[f.name] if f.name in rows else pd.Series([None] * len(rows), dtype=object)
                          for f in schema})
    table.overwrite(pa.Table.from_pandas(frame, schema=schema, preserve_index=False, safe=False))
    table = store.table(spec.identifier)
    snap = table.current_snapshot().snapshot_id
    table.transaction().set_properties(**{INPUTS_PROPERTY: json.dumps({**key, "snapshot_id": snap},
                                                                      sort_keys=True)}).commit_transaction()
    return snap


def drift_hooks() -> list[tuple[str, Callable[..., pd.DataFrame]]]:
    """The drift and skew functions present in this checkout (``module.function``), in that order."""
    import importlib

    found = []
    for module, name in DRIFT_HOOKS:
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
        found.append((f"{module}.{name}", fn))
    return found


def added_since(store: OfflineStore, previous: int | None, current: int | None) -> pd.Timestamp | None | bool:
    """The earliest event time in prediction files added between two snapshots: windows ending at or
    before it cannot have changed. True: nothing was added; None: cannot tell (recompute everything)."""
    if previous is None or current is None:
        return None
    table = store.table(PREDICTIONS)
    ancestors, snap = set(), table.snapshot_by_id(current)
    while snap is not None:
        ancestors.add(snap.snapshot_id)
        snap = table.snapshot_by_id(snap.parent_snapshot_id) if snap.parent_snapshot_id is not None else None
    if previous not in ancestors:
        return None  # rewritten or expired history
    old, new = store.data_files(table, previous), store.data_files(table, current)
    if old is None or new is None or not set(old) <= set(new):
        return None
    added = sorted(set(new) - set(old))
    if not added:
        return True
    con = store.connect()
    files = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in added) + "]"
    lo = con.execute(f"SELECT min(event_time) FROM read_parquet({files}, hive_partitioning = false)").fetchone()[0]
    return pd.Timestamp(lo).tz_convert("UTC") if lo is not None else True


# --- one cycle ---------------------------------------------------------------------------------------------
@dataclass
class Monitor:
    """The monitor's state across cycles: the store, its metrics, the latest rows for the gauges."""
    cfg: LivemlConfig
    store: OfflineStore
    metrics: MonitorMetrics = field(default_factory=MonitorMetrics)
    quality: pd.DataFrame | None = None
    drift: pd.DataFrame | None = None
    cycles: int = 0

    def run_once(self) -> dict[str, Any]:
        """One cycle; returns a summary (``result``: ok | waiting). Raises on failure (the loop counts it)."""
        from iceberg_schemas.registry import ensure_table

        t0 = time.monotonic()
        self.cycles += 1
        try:
            pins = pin_inputs(self.store)
        except MissingInputs as exc:
            return {"result": "waiting", "reason": str(exc), "seconds": round(time.monotonic() - t0, 3)}
        for spec in (QUALITY, DRIFT):
            ensure_table(self.store.catalog, spec)
        at = inputs_time(self.store, pins)
        settings = _settings_key(self.cfg)
        summary: dict[str, Any] = {"result": "ok", "inputs": pins,
                                   "computed_at": at.isoformat() if at is not None else None}
        preds: dict[bool, pd.DataFrame] = {}

        def predictions(features: bool) -> pd.DataFrame:
            if features not in preds:
                preds[features] = read_predictions(self.store, pins[PREDICTIONS], features)
            return preds[features]

        summary["quality"] = self._quality(pins, settings, at, predictions)
        self.metrics.set_quality(self.quality if self.quality is not None else pd.DataFrame(), self._baselines())
        summary["drift"] = self._drift(pins, settings, at, predictions)
        if self.drift is not None:
            self.metrics.set_drift(self.drift)
        summary["seconds"] = round(time.monotonic() - t0, 3)
        return summary

    def _quality(self, pins, settings, at, predictions) -> dict[str, Any]:
        key = {"inputs": pins, "windows": list(self.cfg.monitor.windows), "versions": settings, "code": QUALITY_CODE}
        rec = recorded(self.store, QUALITY)
        if rec is not None and {k: rec.get(k) for k in key} == key:
            if self.quality is None:
                self.quality = self.store.scan_pandas(QUALITY.identifier)
            return {"written": False, "rows": len(self.quality), "reason": "inputs unchanged",
                    "snapshot_id": rec["snapshot_id"]}
        t0 = time.monotonic()
        rows = quality_rows(predictions(False), read_outcomes(self.store, pins[OUTCOMES]), self.cfg.monitor.windows,
                            lambda n, v: version_settings(self.cfg, n, v), at)
        snap = overwrite(self.store, QUALITY, rows, key)
        self.quality = rows
        return {"written": True, "rows": len(rows), "snapshot_id": snap, "seconds": round(time.monotonic() - t0, 3),
                "windows": int(rows.drop_duplicates(["window", "window_start"]).shape[0]) if len(rows) else 0}

    def _drift(self, pins, settings, at, predictions) -> dict[str, Any]:
        hooks = drift_hooks()
        if not hooks:
            return {"written": False, "reason": "liveml.drift / liveml.skew are not installed"}
        key = {"inputs": {PREDICTIONS: pins[PREDICTIONS]}, "windows": list(self.cfg.monitor.windows),
               "versions": settings, "hooks": [h for h, _ in hooks]}
        rec = recorded(self.store, DRIFT)
        if rec is not None and {k: rec.get(k) for k in key} == key:
            if self.drift is None:
                self.drift = self.store.scan_pandas(DRIFT.identifier)
            return {"written": False, "rows": len(self.drift), "reason": "inputs unchanged",
                    "snapshot_id": rec["snapshot_id"]}
        since = None
        if rec is not None and {k: rec.get(k) for k in key if k != "inputs"} == {k: v for k, v in key.items()
                                                                                   if k != "inputs"}:
            since = added_since(self.store, (rec.get("inputs") or {}).get(PREDICTIONS), pins[PREDICTIONS])
        t0 = time.monotonic()
        old = self.store.scan_pandas(DRIFT.identifier) if since is not None else None
        if since is True:  # no new prediction rows (an empty commit): the rows stand, under the new key
            rows = old
        else:
            parts = [old[pd.to_datetime(old["window_end"], utc=True, cache=False) <= since]] if since is not None else []
            errors = {}
            for name, fn in hooks:
                try:
                    new = fn(self.store, self.cfg, predictions(True), list(self.cfg.monitor.windows), since=since)
                except Exception as exc:  # one hook failing must not lose the other's rows, nor the cycle
                    log.exception("%s failed", name)
                    errors[name] = f"{type(exc).__name__}: {exc}"
                    continue
                parts.append(new.assign(computed_at=at))
            if errors:
                raise RuntimeError(f"drift: {errors}")
            rows = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else \
                pd.DataFrame(columns=[f.name for f in DRIFT.schema.fields])
            order = ["window", "model_name", "model_version", "kind", "feature", "statistic", "window_start"]
            rows = rows.sort_values(order, kind="stable", na_position="last").reset_index(drop=True)
        snap = overwrite(self.store, DRIFT, rows, key)
        self.drift = rows
        return {"written": True, "rows": len(rows), "snapshot_id": snap, "seconds": round(time.monotonic() - t0, 3),
                "since": since.isoformat() if isinstance(since, pd.Timestamp) else None}

    def _baselines(self) -> dict[tuple[str, int], dict[str, float]]:
        seen = set()
        if self.quality is not None and len(self.quality):
            seen = {(n, int(v)) for n, v in self.quality[["model_name", "model_version"]].drop_duplicates()
                    .itertuples(index=False) if n is not None and v is not pd.NA and not _nan(v)}
        return {k: lineage(self.cfg, *k).get("metrics", {}) for k in sorted(seen)}


def _nan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def run_once(cfg: LivemlConfig, store: OfflineStore | None = None, monitor: Monitor | None = None) -> dict[str, Any]:
    """One cycle of the monitor over ``cfg``'s catalog; the summary of :meth:`Monitor.run_once`."""
    monitor = monitor or Monitor(cfg, store or OfflineStore.from_config(cfg))
    summary = monitor.run_once()
    if summary["result"] == "ok":
        monitor.metrics.runs.labels(result="ok").inc()
        monitor.metrics.last_success.set(time.time())
    return summary


def metrics_port(cfg: LivemlConfig) -> int:
    return cfg.prometheus.metrics_base_port + cfg.monitor.metrics_port_offset


def run_forever(cfg: LivemlConfig, store: OfflineStore | None = None, serve: bool = True,
                stop: threading.Event | None = None, max_cycles: int | None = None,
                on_cycle: Callable[[dict[str, Any]], None] | None = None) -> Monitor | None:
    """Run a cycle every ``monitor.interval_s`` until SIGTERM/SIGINT (or ``stop`` is set), serving
    ``/metrics`` on :func:`metrics_port`; ``on_cycle`` gets each summary. A failing cycle is logged and counted
    (``liveml_monitor_runs_total{result="error"}``), and the next one runs as usual."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    monitor = None
    metrics = MonitorMetrics()
    if serve:
        metrics.serve(metrics_port(cfg))
    log.info("monitor: /metrics on 127.0.0.1:%d, a cycle every %.0f s, windows %s", metrics_port(cfg),
             cfg.monitor.interval_s, ",".join(cfg.monitor.windows))
    cycle = 0
    while not stop.is_set():
        t0 = time.monotonic()
        cycle += 1
        try:
            if monitor is None:
                try:
                    monitor = Monitor(cfg, store or OfflineStore.from_config(cfg), metrics)
                except LivemlError as exc:  # the catalog is not up yet: wait for it
                    log.info("monitor: waiting for the catalog: %s", exc)
                    stop.wait(cfg.monitor.interval_s)
                    continue
            summary = run_once(cfg, monitor=monitor)
            log.info("monitor cycle %d: %s", cycle, status_line(summary))
            if on_cycle:
                on_cycle(summary)
        except Exception as exc:  # never die on one bad cycle
            metrics.runs.labels(result="error").inc()
            log.error("monitor cycle failed (%s: %s); next try in %.0f s", type(exc).__name__, exc,
                      cfg.monitor.interval_s, exc_info=log.isEnabledFor(logging.DEBUG))
        if max_cycles is not None and cycle >= max_cycles:
            break
        stop.wait(max(0.0, cfg.monitor.interval_s - (time.monotonic() - t0)))
    if metrics.server is not None:
        metrics.server[0].shutdown()
    return monitor


def status_line(summary: dict[str, Any]) -> str:
    """One line for the log: what was read, what was written or why not, how long it took."""
    if summary["result"] != "ok":
        return str(summary.get("reason") or summary["result"])
    pins = ", ".join(f"{t}@{s}" for t, s in summary["inputs"].items())

    def part(name: str) -> str:
        p = summary.get(name) or {}
        if p.get("written"):
            return f"{name} {p['rows']} rows written in {p.get('seconds', 0):.1f} s"
        return f"{name} {p.get('reason', 'skipped')}"

    return f"{pins}; {part('quality')}; {part('drift')}; {summary['seconds']:.1f} s"
