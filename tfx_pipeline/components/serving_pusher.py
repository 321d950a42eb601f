"""``ServingPusher``: copy a blessed model into TF Serving's layout, ``<serving_model_dir>/<version>/``.

The version is ``max(existing integer versions) + 1`` (1 for an empty base path): TF Serving's convention of
small increasing integers, rather than TFX's stock Pusher's Unix timestamp (also monotonic). The copy goes to
a hidden temp directory first and is renamed into place, so the model server never sees a half-written
version. Beside ``saved_model.pb`` it writes ``lineage.json`` (what ``liveml models list`` shows): the pipeline
run, training table and snapshot, the input snapshot ids, spec version, train/eval ranges, rows, the
Evaluator's metrics and ``blessed: true``; what monitoring needs: the training set's ``decision_threshold``
and ``max_label_delay`` (``max_label_delay_s``), and the ``reference`` the version's drift is measured
against (StatisticsGen's train-split statistics and the run's schema, both inputs of this component so ML
Metadata links them to the push, and ``score_statistics.pb``, the version's scores on the eval split; see
:mod:`tfx_pipeline.reference`). An unblessed model is not pushed; the PushedModel artifact then records
``pushed = 0`` and why.
"""

# (no `from __future__ import annotations`: TFX parses the component signature at runtime)
import json
import math
import os
import shutil
import time

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from tfx_pipeline.reference import LINEAGE_FILE, SCORE_STATS_FILE, reference_lineage, score_statistics


def next_version(base: str) -> int:
    """``max(integer subdirectories) + 1``, ignoring anything else (temp dirs, labels files)."""
    if not os.path.isdir(base):
        return 1
    versions = [int(d) for d in os.listdir(base) if d.isdigit() and os.path.isdir(os.path.join(base, d))]
    return max(versions, default=0) + 1


_METRIC_NAMES = {"auc": "auc", "binary_crossentropy": "log_loss", "binary_accuracy": "binary_accuracy",
                 "calibration": "calibration", "example_count": "example_count", "mean_label": "mean_label",
                 "mean_prediction": "mean_prediction", "weighted_example_count": "weighted_example_count"}


def _slice_value(key) -> str:
    for field in ("bytes_value", "int64_value", "float_value"):
        if key.HasField(field):
            v = getattr(key, field)
            return v.decode() if isinstance(v, bytes) else str(v)
    return ""


def _candidate_metrics(rec) -> dict:
    out: dict = {}
    for kv in rec.metric_keys_and_values:
        if kv.key.is_diff or (kv.key.model_name and kv.key.model_name != "candidate"):
            continue
        if kv.key.name == "loss":  # the Keras compiled loss: BinaryCrossentropy again, i.e. log_loss
            continue
        if kv.value.HasField("double_value") and math.isfinite(kv.value.double_value.value):
            # NaN (e.g. calibration on a slice with no positives) is left out: JSON has no NaN
            out[_METRIC_NAMES.get(kv.key.name, kv.key.name)] = float(kv.value.double_value.value)
    return out


def evaluation_metrics(evaluation_uri: str) -> dict:
    """The overall slice's metrics from TFMA's output: ``{"auc": .., "log_loss": .., ...}``."""
    import tensorflow_model_analysis as tfma

    for rec in tfma.load_metrics(evaluation_uri):
        if not rec.slice_key.single_slice_keys:
            return _candidate_metrics(rec)
    return {}


def slice_metrics(evaluation_uri: str) -> dict:
    """Per-slice metrics: ``{feature: {value: {"auc", "log_loss", "calibration", "example_count", ...}}}``,
    values ordered by example count, largest first. AUC is absent where a slice holds one class only."""
    import tensorflow_model_analysis as tfma

    out: dict = {}
    for rec in tfma.load_metrics(evaluation_uri):
        keys = rec.slice_key.single_slice_keys
        if len(keys) != 1:
            continue
        m = _candidate_metrics(rec)
        if "auc" in m and m.get("mean_label") in (0.0, 1.0):
            del m["auc"]  # undefined on one class (TFMA reports a placeholder)
        out.setdefault(keys[0].column, {})[_slice_value(keys[0])] = m
    return {f: dict(sorted(v.items(), key=lambda kv: -kv[1].get("example_count", 0))) for f, v in out.items()}


def validation_summary(evaluation_uri: str) -> dict:
    """``{"ok": bool, "failures": [readable lines]}`` from the Evaluator's validation result."""
    import tensorflow_model_analysis as tfma

    try:
        result = tfma.load_validation_result(evaluation_uri)
    except Exception as exc:  # no validations written
        return {"ok": None, "failures": [f"no validation result: {exc}"]}
    failures = []
    for f in result.metric_validations_per_slice:
        where = ", ".join(f"{k.column}={_slice_value(k)}"
                          for k in f.slice_key.single_slice_keys) or "overall"
        for m in f.failures:
            threshold = " ".join(str(m.metric_threshold).split())
            failures.append(f"{where}: {m.metric_key.name}{' change vs baseline' if m.metric_key.is_diff else ''}"
                            f" = {m.metric_value.double_value.value:.4f} fails {threshold}")
    if getattr(result, "missing_thresholds", False):
        failures.append("some thresholds could not be checked (missing metrics)")
    return {"ok": bool(result.validation_ok), "failures": failures}


def push(model_dir: str, serving_model_dir: str, lineage: dict,
         extra_files: dict[str, bytes] | None = None) -> tuple[int, str]:
    """Copy ``model_dir`` (a SavedModel) to ``<serving_model_dir>/<next version>``, with ``lineage.json`` and
    ``extra_files`` (name -> content) beside it, all in place before the version appears."""
    os.makedirs(serving_model_dir, exist_ok=True)
    for _ in range(5):
        version = next_version(serving_model_dir)
        tmp = os.path.join(serving_model_dir, f".tmp-{version}-{os.getpid()}-{time.time_ns()}")
        shutil.copytree(model_dir, tmp)
        with open(os.path.join(tmp, LINEAGE_FILE), "w") as f:
            json.dump({**lineage, "version": version}, f, indent=2, sort_keys=True)
        for name, content in (extra_files or {}).items():
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(content)
        dest = os.path.join(serving_model_dir, str(version))
        try:
            os.rename(tmp, dest)  # atomic; fails if another push took this version meanwhile
            return version, dest
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    raise RuntimeError(f"could not claim a version under {serving_model_dir}")


def monitoring_lineage(spec=None) -> dict:
    """The training set's ``decision_threshold`` and ``max_label_delay`` (and in seconds), recorded with the
    version so the monitor measures precision/recall and waits for labels as the training set declares."""
    from tfx_pipeline import features as F

    spec = spec or F.SPEC
    return {"training_set": spec.name, "decision_threshold": float(spec.decision_threshold),
            "max_label_delay": spec.max_label_delay, "max_label_delay_s": int(spec.max_label_delay_s)}


def score_reference(model_dir: str, examples_uri: str, split: str = "eval") -> tuple[dict, dict[str, bytes]]:
    """``(lineage["reference"]["scores"], {file name: bytes})``: the model's score statistics on ``split``.
    A failure is recorded (``{"error": ...}``) and the push goes on: score drift is then skipped for the
    version, feature drift is not."""
    try:
        stats, rows = score_statistics(model_dir, examples_uri, split)
    except Exception as exc:  # noqa: BLE001 (a model that cannot score its eval split is the Evaluator's to catch)
        return {"error": f"{type(exc).__name__}: {exc}", "split": split}, {}
    return {"file": SCORE_STATS_FILE, "split": split, "rows": rows}, {SCORE_STATS_FILE: stats.SerializeToString()}


@component
def ServingPusher(  # noqa: N802
        model: InputArtifact[standard_artifacts.Model],
        model_blessing: InputArtifact[standard_artifacts.ModelBlessing],
        evaluation: InputArtifact[standard_artifacts.ModelEvaluation],
        examples: InputArtifact[standard_artifacts.Examples],
        statistics: InputArtifact[standard_artifacts.ExampleStatistics],
        schema: InputArtifact[standard_artifacts.Schema],
        pushed_model: OutputArtifact[standard_artifacts.PushedModel],
        serving_model_dir: Parameter[str],
        pipeline_run: Parameter[str] = "",
        metadata_path: Parameter[str] = "",
) -> None:
    """Push ``model`` to ``serving_model_dir`` if ``model_blessing`` says blessed. ``statistics``/``schema``:
    the run's StatisticsGen and schema artifacts, recorded as the version's drift reference;
    ``metadata_path``: the ML Metadata SQLite file, recorded so the reference can be looked up again."""
    blessed = int(model_blessing.get_int_custom_property("blessed") or 0) == 1
    validation = validation_summary(evaluation.uri)
    metrics = evaluation_metrics(evaluation.uri)
    slices = slice_metrics(evaluation.uri)
    pushed_model.set_string_custom_property("metrics", json.dumps(metrics, sort_keys=True))
    pushed_model.set_string_custom_property("validation", json.dumps(validation, sort_keys=True))
    if not blessed:
        pushed_model.set_int_custom_property("pushed", 0)
        pushed_model.set_string_custom_property(
            "reason", "not blessed: " + ("; ".join(validation["failures"]) or "the Evaluator did not bless it"))
        return
    prop = examples.get_string_custom_property
    lineage = {
        "pipeline_run": pipeline_run or os.path.basename(os.path.dirname(pushed_model.uri.rstrip("/"))),
        "training_table": prop("training_table"),
        "snapshot_id": int(prop("snapshot_id")) if prop("snapshot_id") else None,
        "snapshot_ids": json.loads(prop("snapshot_ids") or "{}"),
        "spec_version": examples.get_int_custom_property("spec_version"),
        "train_range": json.loads(prop("train_range") or "null"),
        "eval_range": json.loads(prop("eval_range") or "null"),
        "rows": {"train": examples.get_int_custom_property("rows_train"),
                 "eval": examples.get_int_custom_property("rows_eval")},
        "metrics": metrics,
        "slice_metrics": slices,
        "blessed": True,
        "model_uri": model.uri,
        "pushed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **monitoring_lineage(),
    }
    model_dir = os.path.join(model.uri, "Format-Serving")
    scores, extra = score_reference(model_dir, examples.uri)
    lineage["reference"] = reference_lineage(statistics.uri, statistics.id, schema.uri, schema.id, metadata_path,
                                             scores)
    version, dest = push(model_dir, serving_model_dir, lineage, extra)
    pushed_model.set_int_custom_property("pushed", 1)
    pushed_model.set_int_custom_property("pushed_version", version)
    pushed_model.set_string_custom_property("pushed_destination", dest)
