"""Run the tips pipeline locally: :func:`run_local` binds paths and runs it with TFX's ``LocalDagRunner``.

Layout under ``home``: ``pipelines/<name>/`` (pipeline root: every artifact), ``metadata/<name>/metadata.db``
(ML Metadata in SQLite). The model goes to ``serving_model_dir/<version>/`` (TF Serving's base path).

Other orchestrators take the same :func:`tfx_pipeline.pipeline.create_pipeline` unchanged:

- ``tfx.orchestration.beam.beam_dag_runner.BeamDagRunner().run(pipeline)`` runs the components as a Beam
  pipeline (set ``beam_pipeline_args`` for e.g. ``--runner=FlinkRunner``/``DataflowRunner`` so Transform,
  StatisticsGen and Evaluator scale out);
- ``tfx.orchestration.experimental.KubeflowV2DagRunner`` (Vertex/KFP v2) compiles it to a pipeline spec JSON;
  the custom components are Python function components, so the image needs this repository installed
  (``pip install .``) and the catalog properties must point at a catalog reachable from the cluster.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import tfx_pipeline  # noqa: F401 (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

DEFAULT_BEAM_ARGS = ("--direct_running_mode=in_memory", "--direct_num_workers=1")


class PipelineFailed(RuntimeError):
    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary


def _node_of(store, execution) -> str:
    for ctx in store.get_contexts_by_execution(execution.id):
        t = store.get_context_types_by_id([ctx.type_id])[0].name
        if t == "node":
            return ctx.name.split(".", 1)[-1]
    return store.get_execution_types_by_id([execution.type_id])[0].name


def summarize(metadata_path: str, since_ms: int) -> dict[str, Any]:
    """Per-component wall time, blessing and why, metrics and the pushed version, from ML Metadata."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    from tfx_pipeline.components.serving_pusher import evaluation_metrics, slice_metrics, validation_summary

    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = metadata_path
    store = metadata_store.MetadataStore(cfg)
    states = {v: k for k, v in metadata_store_pb2.Execution.State.items()}
    components: dict[str, Any] = {}
    outputs: dict[str, Any] = {}  # artifact type name -> the latest output of that type
    examples = baseline = None
    for e in sorted(store.get_executions(), key=lambda e: e.create_time_since_epoch):
        if e.create_time_since_epoch < since_ms:
            continue
        node = _node_of(store, e)
        components[node] = {"seconds": round((e.last_update_time_since_epoch - e.create_time_since_epoch) / 1000, 1),
                            "state": states.get(e.last_known_state, str(e.last_known_state))}
        if "__execution_result__" in e.custom_properties:  # TFX's record of a failure
            raw = e.custom_properties["__execution_result__"].string_value
            try:
                components[node]["error"] = json.loads(raw).get("resultMessage", raw)
            except ValueError:
                components[node]["error"] = raw
        events = store.get_events_by_execution_ids([e.id])
        out_ids = [ev.artifact_id for ev in events if ev.type == ev.OUTPUT]
        baseline_ids = [ev.artifact_id for ev in events if ev.type == ev.INPUT and ev.path.steps
                        and ev.path.steps[0].key == "baseline_model"]  # the Resolver's pick, as the Evaluator got it
        if baseline_ids:
            baseline = store.get_artifacts_by_id(baseline_ids)[0]
        for a in store.get_artifacts_by_id(out_ids):
            type_name = store.get_artifact_types_by_id([a.type_id])[0].name
            outputs[type_name] = a
            if type_name == "Examples" and node == "IcebergExampleGen":
                examples = a
    summary: dict[str, Any] = {"components": components, "blessed": None, "why": None, "metrics": {},
                               "pushed_version": None}
    ev = outputs.get("ModelEvaluation")
    if ev is not None:
        summary["metrics"] = evaluation_metrics(ev.uri)
        summary["slices"] = slice_metrics(ev.uri)
        summary["validation"] = validation_summary(ev.uri)
    blessing = outputs.get("ModelBlessing")
    if blessing is not None:
        blessed = blessing.custom_properties["blessed"].int_value == 1 if "blessed" in blessing.custom_properties \
            else None
        summary["blessed"] = blessed
        v = summary.get("validation", {})
        summary["why"] = (("all thresholds met: AUC floor and no AUC regression vs the baseline" if baseline
                           else "all thresholds met: AUC floor (no blessed baseline yet)") if blessed
                          else "; ".join(v.get("failures") or []) or "the Evaluator did not bless it")
    summary["baseline_model"] = baseline.uri if baseline is not None else None
    pushed = outputs.get("PushedModel")
    if pushed is not None and "pushed_version" in pushed.custom_properties:
        summary["pushed_version"] = pushed.custom_properties["pushed_version"].int_value
        summary["pushed_destination"] = pushed.custom_properties["pushed_destination"].string_value
    if examples is not None:
        cp = examples.custom_properties
        data = {k: (cp[k].string_value or cp[k].int_value) for k in
                ("training_table", "snapshot_id", "train_range", "eval_range", "rows_train", "rows_eval")
                if k in cp}
        for k in ("train_range", "eval_range"):
            if k in data:
                data[k] = json.loads(data[k])
        summary["data"] = data
    return summary


def run_local(home: str | os.PathLike, catalog_properties: Mapping[str, Any] | str, serving_model_dir: str,
              pipeline_name: str = "tips", raise_on_error: bool = True, beam_pipeline_args=DEFAULT_BEAM_ARGS,
              **pipeline_kwargs: Any) -> dict[str, Any]:
    """Run the pipeline with ``LocalDagRunner`` under ``home``; returns the :func:`summarize` dict plus
    ``status`` ("succeeded" | "failed"), ``error`` and ``seconds``. ``pipeline_kwargs`` go to
    :func:`tfx_pipeline.pipeline.create_pipeline` (``snapshot_id``, ``train_steps``, ``auc_floor``, ...).
    A failure (e.g. the anomaly gate) raises :class:`PipelineFailed` carrying the summary, unless
    ``raise_on_error`` is False."""
    if "pyflink.fn_execution.beam.beam_coder_impl_fast" in sys.modules:
        raise RuntimeError("TFX's Beam cannot run in a process that has loaded PyFlink's Python runtime: PyFlink "
                           "swaps Beam's coder implementations for its own. Run the pipeline in a process of its "
                           "own (`liveml train` is one).")
    from tfx import v1 as tfx

    from tfx_pipeline.pipeline import create_pipeline

    home = Path(home)
    root = home / "pipelines" / pipeline_name
    metadata_path = home / "metadata" / pipeline_name / "metadata.db"
    metadata_path.parent.mkdir(parents=True, exist_ok=True)
    props = catalog_properties if isinstance(catalog_properties, str) else json.dumps(dict(catalog_properties))
    run_id = pipeline_kwargs.pop("pipeline_run", None) or time.strftime(f"{pipeline_name}-%Y%m%dT%H%M%S",
                                                                        time.gmtime())
    pipeline = create_pipeline(
        pipeline_name=pipeline_name, pipeline_root=str(root), catalog_properties=props,
        serving_model_dir=str(serving_model_dir), pipeline_run=run_id,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(str(metadata_path)),
        beam_pipeline_args=list(beam_pipeline_args or []), **pipeline_kwargs)
    t0 = time.time()
    since_ms = int(t0 * 1000) - 1
    error = None
    try:
        tfx.orchestration.LocalDagRunner().run(pipeline)
    except Exception as exc:  # noqa: BLE001 (summarized, then re-raised below)
        error = exc
    summary = summarize(str(metadata_path), since_ms)
    failed = {n: c.get("error", "failed") for n, c in summary["components"].items() if c["state"] == "FAILED"}
    if error is None and failed:  # LocalDagRunner may log a failed component and return
        error = RuntimeError("; ".join(f"{n}: {m}" for n, m in failed.items()))
    summary.update(pipeline_run=run_id, seconds=round(time.time() - t0, 1),
                   status="failed" if error else "succeeded", error=str(error) if error else None,
                   pipeline_root=str(root), metadata=str(metadata_path))
    if error is not None and raise_on_error:
        raise PipelineFailed(f"pipeline {pipeline_name} run {run_id} failed: {error}", summary) from error
    return summary


def main(argv=None) -> int:
    """``python -m tfx_pipeline.runner --home H --catalog '{"type": "sql", ...}' --serving-dir D``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m tfx_pipeline.runner", description=main.__doc__)
    p.add_argument("--home", required=True, help="pipeline root and ML Metadata live under it")
    p.add_argument("--catalog", required=True, help="pyiceberg catalog properties, a JSON object")
    p.add_argument("--serving-dir", required=True, help="TF Serving base path of the model")
    p.add_argument("--table", default="training.tips")
    p.add_argument("--snapshot-id", type=int, default=0, help="0: the table's current snapshot")
    p.add_argument("--train-steps", type=int, default=500)
    p.add_argument("--eval-steps", type=int, default=50)
    p.add_argument("--eval-fraction", type=float, default=0.2)
    p.add_argument("--auc-floor", type=float, default=0.9)
    a = p.parse_args(argv)
    try:
        summary = run_local(a.home, a.catalog, a.serving_dir, training_table=a.table, snapshot_id=a.snapshot_id,
                            train_steps=a.train_steps, eval_steps=a.eval_steps, eval_fraction=a.eval_fraction,
                            auc_floor=a.auc_floor)
    except PipelineFailed as exc:
        print(json.dumps(exc.summary, indent=2, default=str))
        return 1
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
