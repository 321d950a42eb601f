"""The pusher's TF Serving layout (max + 1 versions, lineage.json beside the SavedModel) and the pipeline's
shape (the anomaly gate before Transform, AUC thresholds on the overall slice only)."""

import json

import pytest

pytestmark = pytest.mark.unit


def test_next_version_is_max_plus_one(tmp_path):
    from tfx_pipeline.components.serving_pusher import next_version

    assert next_version(str(tmp_path / "absent")) == 1
    for name in ("1", "3", "10", ".tmp-11-x", "labels"):
        (tmp_path / name).mkdir()
    (tmp_path / "12").write_text("a file, not a version")
    assert next_version(str(tmp_path)) == 11


def test_push_copies_the_model_and_writes_lineage(tmp_path):
    from tfx_pipeline.components.serving_pusher import LINEAGE_FILE, push

    model = tmp_path / "model"
    (model / "variables").mkdir(parents=True)
    (model / "saved_model.pb").write_bytes(b"pb")
    base = tmp_path / "serving" / "tips"
    (base / "4").mkdir(parents=True)
    version, dest = push(str(model), str(base), {"snapshot_id": 7, "metrics": {"auc": 0.95}, "blessed": True})
    assert version == 5 and dest == str(base / "5")
    assert (base / "5" / "saved_model.pb").read_bytes() == b"pb"
    lineage = json.loads((base / "5" / LINEAGE_FILE).read_text())
    assert lineage == {"snapshot_id": 7, "metrics": {"auc": 0.95}, "blessed": True, "version": 5}
    assert sorted(p.name for p in base.iterdir()) == ["4", "5"]  # no temp dir left behind
    assert push(str(model), str(base), {})[0] == 6


def test_pipeline_gates_training_on_anomalies(tmp_path):
    from tfx_pipeline.pipeline import create_pipeline

    p = create_pipeline("tips", str(tmp_path / "root"), json.dumps({"type": "sql"}), str(tmp_path / "serving"),
                        snapshot_id=42, train_steps=3)
    ids = [c.id for c in p.components]
    assert sorted(ids) == sorted(["IcebergExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator",
                                  "AnomalyGate", "Transform", "Trainer", "latest_blessed_model_resolver",
                                  "Evaluator", "ServingPusher"])
    order = ["IcebergExampleGen", "StatisticsGen", "ExampleValidator", "AnomalyGate", "Transform", "Trainer",
             "Evaluator", "ServingPusher"]
    assert [i for i in ids if i in order] == order  # topologically sorted: the gate runs before Transform
    by_id = {c.id: c for c in p.components}
    assert "AnomalyGate" in {u.id for u in by_id["Transform"].upstream_nodes}
    assert by_id["IcebergExampleGen"].exec_properties["snapshot_id"] == 42
    proposing = create_pipeline("tips", str(tmp_path / "root"), "{}", str(tmp_path / "serving"), propose_schema=True)
    schema_gen = {c.id: c for c in proposing.components}["proposed_schema_gen"]
    assert not any(schema_gen.id in {u.id for u in c.upstream_nodes} for c in proposing.components)  # a proposal


def test_auc_thresholds_hold_on_the_overall_slice_only():
    from tfx_pipeline.pipeline import eval_config

    cfg = eval_config(auc_floor=0.93)
    assert [list(s.feature_keys) for s in cfg.slicing_specs] == [[], ["payment_type"], ["pickup_community_area"]]
    metrics = {m.class_name: m for m in cfg.metrics_specs[0].metrics}
    assert {"AUC", "BinaryCrossentropy", "BinaryAccuracy", "Calibration"} <= set(metrics)
    (auc,) = metrics["AUC"].per_slice_thresholds
    assert [list(s.feature_keys) for s in auc.slicing_specs] == [[]]
    assert auc.threshold.value_threshold.lower_bound.value == 0.93
    assert auc.threshold.change_threshold.absolute.value < 0  # no regression against the baseline
    assert cfg.model_specs[0].signature_name == "serving_examples"


def test_the_pusher_takes_the_runs_statistics_and_schema_as_inputs(tmp_path):
    """The version's drift reference is linked in ML Metadata itself: StatisticsGen's and the schema's
    artifacts are inputs of the push; StatisticsGen reads the schema (categorical ints get value counts)."""
    from tfx import v1 as tfx

    from tfx_pipeline.pipeline import create_pipeline

    db = str(tmp_path / "metadata.db")
    p = create_pipeline("tips", str(tmp_path / "root"), "{}", str(tmp_path / "serving"),
                        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(db))
    by_id = {c.id: c for c in p.components}
    pusher = by_id["ServingPusher"]
    assert pusher.inputs["statistics"].producer_component_id == "StatisticsGen"
    assert pusher.inputs["schema"].producer_component_id == "ImportSchemaGen"
    assert pusher.exec_properties["metadata_path"] == db
    assert by_id["StatisticsGen"].inputs["schema"].producer_component_id == "ImportSchemaGen"
    assert create_pipeline("tips", str(tmp_path / "r"), "{}", str(tmp_path / "s")).components[-1] \
        .exec_properties["metadata_path"] == ""


def test_monitoring_lineage_is_the_training_sets_declaration():
    from iceberg_schemas.training import TIPS, TrainingSetSpec
    from tfx_pipeline.components.serving_pusher import monitoring_lineage

    assert monitoring_lineage() == {"training_set": "tips", "decision_threshold": TIPS.decision_threshold,
                                    "max_label_delay": TIPS.max_label_delay,
                                    "max_label_delay_s": TIPS.max_label_delay_s}
    other = TrainingSetSpec(name="x", label="big_tipper", max_label_delay="2h", decision_threshold=0.3)
    assert monitoring_lineage(other)["max_label_delay_s"] == 7200
    assert monitoring_lineage(other)["decision_threshold"] == 0.3


def test_the_pusher_records_the_reference_in_lineage(tmp_path, monkeypatch):
    """ServingPusher's executor, as TFX runs it, on a stand-in model: lineage.json names the run's statistics
    and schema (URIs and ML Metadata ids), the training set's threshold and label delay, and the version's
    eval-split score statistics sit beside it. (The Evaluator's output is stubbed: TFMA is not under test.)"""
    import tensorflow as tf
    from tfx.types import standard_artifacts

    from iceberg_schemas.training import TIPS
    from serving.testing import export_standin_model, standin_example
    from tfx_pipeline.components import serving_pusher as sp
    from tfx_pipeline.reference import ReferenceMissing, load_reference

    monkeypatch.setattr(sp, "evaluation_metrics", lambda uri: {"auc": 0.9})
    monkeypatch.setattr(sp, "slice_metrics", lambda uri: {})
    monkeypatch.setattr(sp, "validation_summary", lambda uri: {"ok": True, "failures": []})

    def artifact(cls, uri, aid):
        a = cls()
        a.uri = str(uri)
        a.id = aid
        return a

    model = artifact(standard_artifacts.Model, tmp_path / "Trainer" / "model" / "9", 9)
    export_standin_model(tmp_path / "standin", 1)
    (tmp_path / "Trainer" / "model" / "9").mkdir(parents=True)
    (tmp_path / "standin" / "1").rename(tmp_path / "Trainer" / "model" / "9" / "Format-Serving")
    blessing = artifact(standard_artifacts.ModelBlessing, tmp_path / "blessing", 10)
    blessing.set_int_custom_property("blessed", 1)
    examples = artifact(standard_artifacts.Examples, tmp_path / "examples", 2)
    (tmp_path / "examples" / "Split-eval").mkdir(parents=True)
    with tf.io.TFRecordWriter(str(tmp_path / "examples" / "Split-eval" / "data.gz"), options="GZIP") as w:
        for fare in (5.0, 12.0, 40.0):
            w.write(standin_example(fare=fare).SerializeToString())
    statistics = artifact(standard_artifacts.ExampleStatistics, tmp_path / "StatisticsGen" / "statistics" / "3", 3)
    schema = artifact(standard_artifacts.Schema, tmp_path / "ImportSchemaGen" / "schema" / "1", 1)
    pushed = artifact(standard_artifacts.PushedModel, tmp_path / "pushed", 11)
    serving = tmp_path / "serving" / "tips"
    evaluation = artifact(standard_artifacts.ModelEvaluation, tmp_path / "eval", 8)
    sp.ServingPusher.EXECUTOR_SPEC.executor_class().Do(
        {"model": [model], "model_blessing": [blessing], "evaluation": [evaluation], "examples": [examples],
         "statistics": [statistics], "schema": [schema]},
        {"pushed_model": [pushed]},
        {"serving_model_dir": str(serving), "pipeline_run": "tips-1", "metadata_path": "/m/metadata.db"})
    lineage = json.loads((serving / "1" / "lineage.json").read_text())
    assert lineage["decision_threshold"] == TIPS.decision_threshold
    assert (lineage["max_label_delay"], lineage["max_label_delay_s"]) == (TIPS.max_label_delay, TIPS.max_label_delay_s)
    ref = lineage["reference"]
    assert ref["statistics"] == {"uri": statistics.uri, "artifact_id": 3,
                                 "train": statistics.uri + "/Split-train/FeatureStats.pb"}
    assert ref["schema"] == {"uri": schema.uri, "artifact_id": 1, "file": schema.uri + "/schema.pbtxt"}
    assert ref["scores"] == {"file": "score_statistics.pb", "split": "eval", "rows": 3}
    assert ref["metadata"] == "/m/metadata.db"
    assert (serving / "1" / "score_statistics.pb").is_file() and (serving / "1" / "saved_model.pb").is_file()
    assert pushed.get_int_custom_property("pushed_version") == 1
    with pytest.raises(ReferenceMissing, match="not on disk"):  # the fake run wrote no statistics: said so
        load_reference(str(serving / "1"))
