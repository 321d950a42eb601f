"""The monitor over a real pyiceberg catalog (sqlite, temp dir) holding the real trips' predictions and
outcomes: what it writes equals quality_rows on the same frames, a rerun over the same snapshots writes
nothing and a forced one writes equal rows, its gauges equal the table's latest windows, a missing table is
waited for, a bad cycle is counted and the loop goes on, and the drift hook (an in-memory twin of
liveml.drift.drift_rows) is recomputed only for windows new prediction files can change."""

from __future__ import annotations

import json
import threading

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pyiceberg.io.pyarrow import schema_to_pyarrow

from iceberg_schemas.tables import DRIFT
from liveml import monitor as M
from liveml.config import load_config
from liveml.offline import OfflineStore
from liveml.quality_windows import latest_windows, quality_rows
from tests.offline_fixtures import cli_catalog, create
from tests.unit.test_quality_windows import real_frames

pytestmark = pytest.mark.unit

N = 2000


def write(catalog, identifier: str, df: pd.DataFrame) -> int:
    table = catalog.load_table(identifier)
    schema = schema_to_pyarrow(table.schema())
    cols = {f.name: (df[f.name] if f.name in df else pd.Series([None] * len(df), index=df.index)) for f in schema}
    frame = pd.DataFrame(cols).astype(object).where(pd.DataFrame(cols).notna(), None)
    table.append(pa.Table.from_pandas(frame, schema=schema, preserve_index=False))
    return catalog.load_table(identifier).current_snapshot().snapshot_id


@pytest.fixture(autouse=True)
def no_drift_hooks(monkeypatch):
    """liveml.drift / liveml.skew need a trained version's TFX artifacts and the feature tables: the tests
    here use none, or the in-memory twin below."""
    monkeypatch.setattr(M, "drift_hooks", lambda: [])


@pytest.fixture(scope="module")
def frames():
    preds, outs = real_frames(N)
    preds = preds.assign(features=[json.dumps({"fare": i % 7}) for i in range(len(preds))])
    return preds, outs


@pytest.fixture
def env(tmp_path, frames):
    config, catalog = cli_catalog(tmp_path)
    cfg = load_config(config, env={})
    for t in ("predictions.trips", "monitoring.outcomes"):
        create(catalog, t)
    preds, outs = frames
    half = len(preds) // 2
    write(catalog, "predictions.trips", preds.iloc[:half])
    write(catalog, "monitoring.outcomes", outs.iloc[:half])
    # version 2 has a lineage.json (threshold 0.3, its Evaluator's metrics); version 1 has none
    vdir = cfg.home_dir(cfg.serving.model_base_path, "tips", "2")
    (vdir / "lineage.json").write_text(json.dumps({"training_set": "tips", "decision_threshold": 0.3,
                                                   "metrics": {"auc": 0.91, "log_loss": 0.31}}))
    return cfg, catalog, OfflineStore(catalog, tmp_path / "duck")


def _settings(cfg):
    return lambda n, v: M.version_settings(cfg, n, v)


def _table(store, name="monitoring.quality") -> pd.DataFrame:
    return store.scan_pandas(name)


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    keys = ["window", "model_name", "model_version", "model_label", "window_start", "metric"]
    return df.sort_values(keys).reset_index(drop=True)


def _gauges(monitor: M.Monitor) -> dict[str, list]:
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(monitor.metrics.exposition()):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_writes_quality_equal_to_the_frames_then_skips_unchanged_inputs(env, frames):
    cfg, catalog, store = env
    mon = M.Monitor(cfg, store)
    first = M.run_once(cfg, monitor=mon)
    assert first["result"] == "ok" and first["quality"]["written"]
    table = _table(store)
    preds, outs = frames
    half = len(preds) // 2
    want = quality_rows(preds.iloc[:half], outs.iloc[:half], cfg.monitor.windows, _settings(cfg),
                        M.inputs_time(store, first["inputs"]))
    got = _sorted(table)
    pd.testing.assert_frame_equal(got, _sorted(want), check_dtype=False)
    # each version at its own threshold: lineage.json's for version 2, the training set's for version 1
    assert set(table.loc[table["model_version"] == 2, "decision_threshold"]) == {0.3}
    assert set(table.loc[table["model_version"] == 1, "decision_threshold"]) == {0.5}
    recorded = json.loads(store.table("monitoring.quality").properties[M.INPUTS_PROPERTY])
    assert recorded["inputs"] == first["inputs"] and recorded["snapshot_id"] == first["quality"]["snapshot_id"]

    snaps = len(store.table("monitoring.quality").metadata.snapshots)
    again = M.run_once(cfg, monitor=mon)
    assert not again["quality"]["written"] and again["quality"]["reason"] == "inputs unchanged"
    fresh = M.run_once(cfg, store=store)  # a new process over the same snapshots: nothing to write either
    assert not fresh["quality"]["written"]
    assert len(store.table("monitoring.quality").metadata.snapshots) == snaps

    # forced (the record removed): the same snapshots give equal rows, computed_at included
    store.table("monitoring.quality").transaction().remove_properties(M.INPUTS_PROPERTY).commit_transaction()
    forced = M.run_once(cfg, store=store)
    assert forced["quality"]["written"]
    pd.testing.assert_frame_equal(_sorted(_table(store)), got)

    # new outcomes: recomputed over the new snapshot, recorded
    write(catalog, "monitoring.outcomes", outs.iloc[half:])
    later = M.run_once(cfg, monitor=mon)
    assert later["quality"]["written"] and later["inputs"]["monitoring.outcomes"] != first["inputs"]["monitoring.outcomes"]
    assert _table(store)["n_labelled"].sum() > table["n_labelled"].sum()


def test_gauges_are_the_latest_window_of_each_spec_and_the_lineage_baseline(env):
    cfg, _, store = env
    mon = M.Monitor(cfg, store)
    M.run_once(cfg, monitor=mon)
    g = _gauges(mon)
    latest = latest_windows(_table(store))
    want = {}
    for r in latest.itertuples(index=False):
        for kind in ("estimated", "realised"):
            v = getattr(r, kind)
            if pd.notna(v):
                want[(r.model_name, str(r.model_version), r.model_label, r.window, r.metric, kind)] = v
    got = {(s["model_name"], s["model_version"], s["model_label"], s["window"], s["metric"], s["kind"]): v
           for s, v in g["liveml_quality"]}
    assert got == pytest.approx(want) and len(got) > 20
    ends = {(s["model_version"], s["window"]): v for s, v in g["liveml_quality_window_end_timestamp_seconds"]}
    for r in latest.drop_duplicates(["model_version", "window"]).itertuples(index=False):
        assert ends[(str(r.model_version), r.window)] == pd.Timestamp(r.window_end).timestamp()
    assert sorted((s["model_version"], s["metric"], v) for s, v in g["liveml_quality_baseline"]) == \
        [("2", "auc", 0.91), ("2", "log_loss", 0.31)]
    assert dict((s["result"], v) for s, v in g["liveml_monitor_runs_total"]) == {"ok": 1.0, "error": 0.0}
    assert g["liveml_monitor_last_success_timestamp_seconds"][0][1] > 0
    # a fresh process that skips the write still exports the table's figures
    other = M.Monitor(cfg, store)
    assert not M.run_once(cfg, monitor=other)["quality"]["written"]
    assert sorted(_gauges(other)["liveml_quality"], key=str) == sorted(g["liveml_quality"], key=str)


def test_missing_tables_are_waited_for_and_empty_ones_give_empty_quality(tmp_path):
    config, catalog = cli_catalog(tmp_path)
    cfg = load_config(config, env={})
    store = OfflineStore(catalog, tmp_path / "duck")
    waiting = M.run_once(cfg, store=store)
    assert waiting["result"] == "waiting" and "predictions.trips" in waiting["reason"]
    for t in ("predictions.trips", "monitoring.outcomes"):
        create(catalog, t)
    done = M.run_once(cfg, store=store)
    assert done["result"] == "ok" and done["quality"]["rows"] == 0 and done["inputs"] == {
        "predictions.trips": None, "monitoring.outcomes": None}
    assert _table(store).empty


def test_a_failing_cycle_is_counted_and_the_loop_goes_on(env, monkeypatch):
    cfg, _, store = env
    cfg = cfg.model_copy(update={"monitor": cfg.monitor.model_copy(update={"interval_s": 0.01})})
    calls = {"n": 0}
    real = M.Monitor.run_once

    def flaky(self):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("catalog locked")
        return real(self)

    monkeypatch.setattr(M.Monitor, "run_once", flaky)
    seen = []
    mon = M.run_forever(cfg, store=store, serve=False, max_cycles=3, on_cycle=seen.append)
    g = _gauges(mon)
    assert dict((s["result"], v) for s, v in g["liveml_monitor_runs_total"]) == {"ok": 2.0, "error": 1.0}
    assert [s["quality"]["written"] for s in seen] == [True, False]


def test_stop_event_ends_the_loop(env):
    cfg, _, store = env
    stop = threading.Event()
    stop.set()
    assert M.run_forever(cfg, store=store, serve=False, stop=stop) is None


def _fake_drift(calls):
    """An in-memory twin of liveml.drift.drift_rows: per window and version, the mean of ``features.fare``
    as the distance, threshold 3; records the ``since`` it was given."""
    from liveml.quality_windows import WindowSpec, assign

    def drift_rows(store, cfg, predictions, windows, since=None):
        calls.append(since)
        rows = []
        fare = predictions["features"].map(lambda s: json.loads(s)["fare"]).astype(float)
        for text in windows:
            spec = WindowSpec.parse(text)
            a = assign(predictions["event_time"], spec)
            a["version"] = predictions["model_version"].to_numpy()[a["row"]]
            a["fare"] = fare.to_numpy()[a["row"]]
            a["end"] = a["window_start"] + pd.Timedelta(seconds=spec.size_s)
            if since is not None:
                a = a[a["end"] > since]
            for (start, version), g in a.groupby(["window_start", "version"]):
                rows.append({"window_start": start, "window_end": start + pd.Timedelta(seconds=spec.size_s),
                             "window": text, "model_name": "tips", "model_version": int(version), "kind": "drift",
                             "feature": "fare", "statistic": "jensen_shannon", "distance": g["fare"].mean(),
                             "threshold": 3.0, "drifted": bool(g["fare"].mean() > 3), "n": len(g),
                             "reference": "fake", "computed_at": pd.Timestamp.now(tz="UTC")})
        return pd.DataFrame(rows, columns=[f.name for f in DRIFT.schema.fields])

    return drift_rows


def test_drift_hook_recomputes_only_windows_new_files_can_change(env, frames, monkeypatch):
    cfg, catalog, store = env
    calls: list = []
    monkeypatch.setattr(M, "drift_hooks", lambda: [("fake.drift_rows", _fake_drift(calls))])
    mon = M.Monitor(cfg, store)
    first = M.run_once(cfg, monitor=mon)
    assert first["drift"]["written"] and calls == [None]
    preds, _ = frames
    half = len(preds) // 2
    write(catalog, "predictions.trips", preds.iloc[half:])
    second = M.run_once(cfg, monitor=mon)
    new_times = pd.to_datetime(preds["event_time"].iloc[half:], utc=True)
    assert second["drift"]["written"] and calls[-1] == new_times.min()
    incremental = _table(store, "monitoring.drift")
    # the same as a full recompute over the same snapshot (computed_at says which cycle computed a window)
    store.table("monitoring.drift").transaction().remove_properties(M.INPUTS_PROPERTY).commit_transaction()
    assert M.run_once(cfg, monitor=mon)["drift"]["written"] and calls[-1] is None
    full = _table(store, "monitoring.drift")
    keys = ["window", "model_version", "window_start"]
    cols = [c for c in full.columns if c != "computed_at"]
    pd.testing.assert_frame_equal(incremental.sort_values(keys)[cols].reset_index(drop=True),
                                  full.sort_values(keys)[cols].reset_index(drop=True))
    assert not M.run_once(cfg, monitor=mon)["drift"]["written"]
    # gauges: the latest window of each (spec, version, kind, feature, statistic)
    g = _gauges(mon)
    dist = {(s["window"], s["model_version"]): v for s, v in g["liveml_drift_distance"]}
    for (w, v), grp in full.groupby(["window", "model_version"]):
        assert dist[(w, str(v))] == pytest.approx(grp.loc[grp["window_start"].idxmax(), "distance"])
    assert {v for _, v in g["liveml_drift_threshold"]} == {3.0}


def test_monitor_once_from_the_cli(env):
    from click.testing import CliRunner

    from liveml.cli import main

    cfg, _, _ = env
    result = CliRunner().invoke(main, ["--config", str(cfg.source), "monitor", "--once", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["result"] == "ok" and summary["quality"]["rows"] > 0


def test_version_settings_fall_back_and_the_config_overrides_the_delay(env):
    cfg, _, _ = env
    assert M.version_settings(cfg, "tips", 2).decision_threshold == 0.3
    assert M.version_settings(cfg, "tips", 9) == M.VersionSettings(0.5, 3600)  # no lineage: the training set's
    assert M.version_settings(cfg, None, None) == M.VersionSettings(0.5, 3600)
    over = cfg.model_copy(update={"monitor": cfg.monitor.model_copy(update={"max_label_delay": "2h"})})
    assert M.version_settings(over, "tips", 2).max_label_delay_s == 7200
    assert np.isfinite(M.metrics_port(cfg))


def test_the_stack_service_is_started_by_name_on_the_metrics_port(env):
    from liveml.stack.launcher import default_up, resolve
    from liveml.stack.monitor import MonitorService

    cfg, _, _ = env
    assert "monitor" not in default_up(cfg) and resolve(cfg, ["monitor", "catalog"]) == ["catalog", "monitor"]
    svc = MonitorService(cfg)
    assert svc.ports() == [M.metrics_port(cfg)] == [cfg.prometheus.metrics_base_port + cfg.monitor.metrics_port_offset]
    assert svc.status()["up"] is False  # nothing listens: not healthy, and no error
