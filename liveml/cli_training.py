"""`liveml train`: the TFX pipeline on the local stack's catalog, pushing to the model server's base path."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time

import click
from rich.table import Table

from liveml.cli import _cfg, _emit, console, main, out
from liveml.errors import LivemlError


@contextlib.contextmanager
def _stdout_to_stderr():
    """File descriptor 1 onto 2 for the duration: catches prints from C++ and subprocesses too."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@main.command()
@click.option("--snapshot", "snapshot_id", type=int, default=None,
              help="Snapshot of the training table (default: its current one).")
@click.option("--table", "training_table", default="training.tips", show_default=True)
@click.option("--train-steps", type=int, default=500, show_default=True,
              help="Batches of 256 (about 10 epochs of the real data; more overfits it).")
@click.option("--auc-floor", type=float, default=0.9, show_default=True, help="Absolute AUC a model must reach.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def train(ctx, snapshot_id, training_table, train_steps, auc_floor, as_json) -> None:
    """Validate, retrain, evaluate against the serving model, and push if better (TFX, LocalDagRunner)."""
    from liveml.offline import OfflineStore
    from tfx_pipeline.runner import PipelineFailed, run_local

    cfg = _cfg(ctx)
    store = OfflineStore.from_config(cfg)
    snap = store.resolve_snapshot(store.table(training_table), snapshot_id)
    if snap is None:
        raise LivemlError(f"{training_table} is empty: run `liveml training-set build` first")
    home = cfg.home_dir("tfx")
    serving_dir = cfg.home_dir(cfg.serving.model_base_path, cfg.serving.model_name)
    started = time.monotonic()
    done = threading.Event()

    def heartbeat() -> None:  # TFX logs per component; this says the run is alive between them
        while not done.wait(15):
            console.print(f"  training: {time.monotonic() - started:.0f} s", highlight=False)

    if not as_json:
        console.print(f"training on {training_table} @ {snap} -> {serving_dir}", highlight=False)
        threading.Thread(target=heartbeat, daemon=True).start()
    try:
        with _stdout_to_stderr():  # TFX and Beam print progress; stdout is for the summary alone
            summary = run_local(home, {"name": cfg.catalog.name, **cfg.catalog_properties()}, str(serving_dir),
                                training_table=training_table, snapshot_id=snap, train_steps=train_steps,
                                auc_floor=auc_floor)
    except PipelineFailed as exc:
        summary = exc.summary
    finally:
        done.set()
    summary["training_table"], summary["snapshot_id"] = training_table, snap

    def render(s):
        t = Table("component", "seconds", "state")
        for name, c in s.get("components", {}).items():
            t.add_row(name, str(c.get("seconds")), c.get("state", "") + (f": {c['error']}" if c.get("error") else ""))
        out.print(t)
        for feature, values in (s.get("slices") or {}).items():  # largest slices first
            st = Table(feature, "examples", "auc", "log_loss", "calibration", title=f"eval split by {feature}")
            for value, m in list(values.items())[:8]:
                st.add_row(value, f"{m.get('example_count', 0):.0f}",
                           *(f"{m[k]:.3f}" if k in m else "-" for k in ("auc", "log_loss", "calibration")))
            out.print(st)
        console.print(json.dumps({k: v for k, v in s.items() if k not in ("components", "slices")}, indent=2,
                                 default=str), highlight=False)

    _emit(summary, as_json, render)
    if summary.get("status") != "succeeded":
        raise SystemExit(1)
