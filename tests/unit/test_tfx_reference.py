"""A pushed version's drift reference (tfx_pipeline/reference.py): its score statistics on the eval split,
and the run's statistics and schema read back from lineage.json, or from ML Metadata when they moved."""

import json
import shutil

import numpy as np
import pytest

pytestmark = pytest.mark.unit


def _real_rows(n: int):
    from flink_jobs.replay import load_trips

    return load_trips().iloc[:n]


def _write_eval_split(examples_uri, rows) -> None:
    import tensorflow as tf

    from serving.testing import standin_example

    d = examples_uri / "Split-eval"
    d.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(d / "data_tfrecord-00000-of-00001.gz"), options="GZIP") as w:
        for r in rows.itertuples():
            w.write(standin_example(fare=float(r.fare), trip_miles=float(r.trip_miles),
                                    trip_seconds=int(r.trip_seconds)).SerializeToString())


def test_score_reference_is_the_models_scores_on_the_eval_split(tmp_path):
    import tensorflow as tf

    from serving.testing import export_standin_model, standin_row
    from tfx_pipeline.components.serving_pusher import score_reference
    from tfx_pipeline.reference import SCORE_FEATURE, SCORE_STATS_FILE
    from tensorflow_metadata.proto.v0 import statistics_pb2

    model_dir = export_standin_model(tmp_path / "model", 1, bias=-1.0)
    rows = _real_rows(500)
    _write_eval_split(tmp_path / "examples", rows)
    info, files = score_reference(str(model_dir), str(tmp_path / "examples"))
    assert info == {"file": SCORE_STATS_FILE, "split": "eval", "rows": 500}
    stats = statistics_pb2.DatasetFeatureStatisticsList.FromString(files[SCORE_STATS_FILE])
    (feature,) = stats.datasets[0].features
    assert feature.path.step == [SCORE_FEATURE] and stats.datasets[0].num_examples == 500
    # independently: the same model through its other signature (named tensors, not tf.Examples)
    base = standin_row()
    inputs = {k: tf.constant([v] * len(rows)) for k, v in base.items()}
    inputs.update(fare=tf.constant(rows["fare"].to_numpy(np.float32)),
                  trip_miles=tf.constant(rows["trip_miles"].to_numpy(np.float32)),
                  trip_seconds=tf.constant(rows["trip_seconds"].to_numpy(np.int64)),
                  pickup_community_area=tf.constant([base["pickup_community_area"]] * len(rows), tf.int64))
    expected = tf.saved_model.load(str(model_dir)).signatures["serving_default"](**inputs)["probabilities"].numpy()
    assert feature.num_stats.mean == pytest.approx(float(np.mean(expected)), rel=1e-5)
    assert feature.num_stats.min == pytest.approx(float(expected.min()), rel=1e-6)
    assert feature.num_stats.max == pytest.approx(float(expected.max()), rel=1e-6)
    # no eval split: recorded, not raised (the push goes on; score drift is skipped for that version)
    info, files = score_reference(str(model_dir), str(tmp_path / "nowhere"))
    assert files == {} and "no examples" in info["error"]


def _run_artifacts(root):
    """A StatisticsGen output (Split-train/FeatureStats.pb of real trips) and a schema dir, as TFX lays them out."""
    import pyarrow as pa
    import tensorflow_data_validation as tfdv
    from tensorflow_data_validation.statistics import stats_impl

    from tfx_pipeline.pipeline import SCHEMA_FILE

    rows = _real_rows(2000)
    batch = pa.RecordBatch.from_arrays([pa.array([[float(v)] for v in rows["fare"]], pa.list_(pa.float32()))],
                                       ["fare"])
    stats = stats_impl.generate_statistics_in_memory(batch, tfdv.StatsOptions())
    (root / "StatisticsGen" / "statistics" / "5" / "Split-train").mkdir(parents=True)
    (root / "StatisticsGen" / "statistics" / "5" / "Split-train" / "FeatureStats.pb").write_bytes(
        stats.SerializeToString())
    (root / "ImportSchemaGen" / "schema" / "3").mkdir(parents=True)
    shutil.copy(SCHEMA_FILE, root / "ImportSchemaGen" / "schema" / "3" / "schema.pbtxt")
    return stats, str(root / "StatisticsGen" / "statistics" / "5"), str(root / "ImportSchemaGen" / "schema" / "3")


def _version(tmp_path, lineage: dict):
    vdir = tmp_path / "serving" / "tips" / "1"
    vdir.mkdir(parents=True)
    (vdir / "lineage.json").write_text(json.dumps(lineage))
    return vdir


def test_load_reference_reads_what_the_lineage_names(tmp_path):
    import tensorflow_data_validation as tfdv

    from tfx_pipeline.reference import SCORE_STATS_FILE, load_reference, reference_lineage, statistics_of_scores

    stats, stats_uri, schema_uri = _run_artifacts(tmp_path / "root")
    vdir = _version(tmp_path, {"reference": reference_lineage(stats_uri, 5, schema_uri, 3, "",
                                                              {"file": SCORE_STATS_FILE, "rows": 3})})
    scores = statistics_of_scores([0.2, 0.4, float("nan")])
    (vdir / SCORE_STATS_FILE).write_bytes(scores.SerializeToString())
    ref = load_reference(str(vdir))
    assert ref.statistics == stats and ref.score_statistics == scores
    assert ref.schema == tfdv.load_schema_text(schema_uri + "/schema.pbtxt")
    assert tfdv.get_feature(ref.schema, "fare").drift_comparator.jensen_shannon_divergence.threshold > 0
    assert ref.statistics_file == stats_uri + "/Split-train/FeatureStats.pb"


def _mlmd(db: str, version_dir: str, stats_uri: str, schema_uri: str, with_inputs: bool = True) -> None:
    """An ML Metadata store holding one run: its statistics and schema, and the push that wrote version_dir."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2 as m

    cfg = m.ConnectionConfig()
    cfg.sqlite.filename_uri = db
    cfg.sqlite.connection_mode = m.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    store = metadata_store.MetadataStore(cfg)
    types = {name: store.put_artifact_type(m.ArtifactType(name=name))
             for name in ("ExampleStatistics", "Schema", "PushedModel")}
    stats_a = m.Artifact(type_id=types["ExampleStatistics"], uri=stats_uri)
    schema_a = m.Artifact(type_id=types["Schema"], uri=schema_uri)
    pushed = m.Artifact(type_id=types["PushedModel"], uri="/somewhere/pushed")
    pushed.custom_properties["pushed_destination"].string_value = version_dir
    stats_id, schema_id, pushed_id = store.put_artifacts([stats_a, schema_a, pushed])
    exec_type = store.put_execution_type(m.ExecutionType(name="ServingPusher"))
    run_type = store.put_context_type(m.ContextType(name="pipeline_run"))
    (run,) = store.put_contexts([m.Context(type_id=run_type, name="tips-run-1")])
    (eid,) = store.put_executions([m.Execution(type_id=exec_type)])
    events = [m.Event(artifact_id=pushed_id, execution_id=eid, type=m.Event.OUTPUT)]
    if with_inputs:
        for aid, key in ((stats_id, "statistics"), (schema_id, "schema")):
            e = m.Event(artifact_id=aid, execution_id=eid, type=m.Event.INPUT)
            e.path.steps.add().key = key
            events.append(e)
    store.put_events(events)
    store.put_attributions_and_associations(
        [m.Attribution(artifact_id=a, context_id=run) for a in (stats_id, schema_id, pushed_id)],
        [m.Association(execution_id=eid, context_id=run)])


@pytest.mark.parametrize("with_inputs", [True, False], ids=["push-inputs", "same-run-context"])
def test_load_reference_asks_ml_metadata_when_the_artifacts_moved(tmp_path, with_inputs):
    from tfx_pipeline.reference import load_reference, reference_lineage

    stats, stats_uri, schema_uri = _run_artifacts(tmp_path / "old")
    moved = tmp_path / "new"
    shutil.move(str(tmp_path / "old"), moved)
    new_stats, new_schema = stats_uri.replace("/old/", "/new/"), schema_uri.replace("/old/", "/new/")
    db = str(tmp_path / "metadata.db")
    # an older lineage without ids: found through the push of this very version directory
    vdir = _version(tmp_path, {"reference": reference_lineage(stats_uri, None, schema_uri, None, db)})
    _mlmd(db, str(vdir), new_stats, new_schema, with_inputs=with_inputs)
    ref = load_reference(str(vdir))
    assert ref.statistics == stats and ref.statistics_file.startswith(str(moved))
    assert ref.schema_file == new_schema + "/schema.pbtxt" and ref.score_statistics is None


def test_a_version_without_a_usable_reference_raises_reference_missing(tmp_path):
    from tfx_pipeline.reference import ReferenceMissing, load_reference

    with pytest.raises(ReferenceMissing, match="lineage.json is missing"):
        load_reference(str(tmp_path / "gone"))
    vdir = _version(tmp_path, {"snapshot_id": 1})  # pushed before references were recorded, no MLMD
    with pytest.raises(ReferenceMissing, match="no ML Metadata store"):
        load_reference(str(vdir))
    (vdir / "lineage.json").write_text("{not json")
    with pytest.raises(ReferenceMissing, match="unreadable"):
        load_reference(str(vdir))
    db = str(tmp_path / "empty.db")
    _mlmd(db, "/another/version", "/x", "/y")
    (vdir / "lineage.json").write_text("{}")
    with pytest.raises(ReferenceMissing, match="no PushedModel"):
        load_reference(str(vdir), metadata_path=db)
