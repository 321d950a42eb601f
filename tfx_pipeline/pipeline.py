"""The pipeline factory (TFX taxi-template style): pure, no paths of its own; runners bind them.

IcebergExampleGen -> StatisticsGen -> ImportSchemaGen (curated schema) -> ExampleValidator -> AnomalyGate
-> Transform -> Trainer -> Resolver (latest blessed model: the baseline) -> Evaluator -> ServingPusher.

StatisticsGen reads the curated schema too, so integer features it marks ``is_categorical`` (community areas)
get categorical statistics (value frequencies), which the schema's L-infinity drift comparators need. The
pusher takes StatisticsGen's and the schema's artifacts as inputs: they are the pushed version's drift
reference (``lineage.json`` -> ``reference``; :mod:`tfx_pipeline.reference`).

The Evaluator (TFMA) computes AUC, log loss (BinaryCrossentropy), BinaryAccuracy, Calibration, counts, mean
label/prediction, overall and sliced by payment_type and pickup_community_area, on the ``eval`` split (the
latest ``eval_fraction`` of the rows by decision time). It blesses a model when overall AUC >= ``auc_floor`` and, once a
blessed baseline exists, AUC has not regressed against it. ServingPusher pushes only blessed models.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import tensorflow_model_analysis as tfma
from tfx import v1 as tfx

from tfx_pipeline import features as F
from tfx_pipeline.components.anomaly_gate import AnomalyGate
from tfx_pipeline.components.iceberg_example_gen import IcebergExampleGen
from tfx_pipeline.components.serving_pusher import ServingPusher

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMA_FILE = os.path.join(HERE, "schema", "schema.pbtxt")
PREPROCESSING_FN = "tfx_pipeline.preprocessing.preprocessing_fn"
RUN_FN = "tfx_pipeline.model.run_fn"
SLICE_FEATURES = ("payment_type", "pickup_community_area")


def eval_config(auc_floor: float = 0.9, slice_features: Sequence[str] = SLICE_FEATURES) -> tfma.EvalConfig:
    auc_threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": auc_floor}),
        change_threshold=tfma.GenericChangeThreshold(direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                                                     absolute={"value": -1e-10}))
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name="serving_examples", label_key=F.LABEL_KEY,
                                    prediction_key="probabilities")],
        slicing_specs=[tfma.SlicingSpec(), *(tfma.SlicingSpec(feature_keys=[f]) for f in slice_features)],
        metrics_specs=[tfma.MetricsSpec(metrics=[
            tfma.MetricConfig(class_name="ExampleCount"),
            # on the overall slice only: a small slice (one payment type) may hold a single class
            tfma.MetricConfig(class_name="AUC", per_slice_thresholds=[tfma.PerSliceMetricThreshold(
                slicing_specs=[tfma.SlicingSpec()], threshold=auc_threshold)]),
            tfma.MetricConfig(class_name="BinaryCrossentropy"),
            tfma.MetricConfig(class_name="BinaryAccuracy"),
            tfma.MetricConfig(class_name="Calibration"),
            tfma.MetricConfig(class_name="MeanLabel"),
            tfma.MetricConfig(class_name="MeanPrediction"),
        ])])


def _sqlite_path(metadata_connection_config) -> str:
    """The ML Metadata SQLite file of a connection config, or "" (another backend, or none given)."""
    if metadata_connection_config is None or not metadata_connection_config.HasField("sqlite"):
        return ""
    return metadata_connection_config.sqlite.filename_uri


def create_pipeline(pipeline_name: str, pipeline_root: str, catalog_properties: str, serving_model_dir: str,
                    training_table: str = F.TRAINING_TABLE, snapshot_id: int = 0,
                    preprocessing_fn: str = PREPROCESSING_FN, run_fn: str = RUN_FN,
                    schema_file: str = SCHEMA_FILE, train_steps: int = 500, eval_steps: int = 50,
                    eval_fraction: float = 0.2, auc_floor: float = 0.9,
                    train_custom_config: dict[str, Any] | None = None, pipeline_run: str = "",
                    propose_schema: bool = False, metadata_connection_config=None,
                    beam_pipeline_args: Sequence[str] | None = None,
                    enable_cache: bool = False) -> tfx.dsl.Pipeline:
    """The tips pipeline. ``catalog_properties``: a JSON object of pyiceberg catalog properties (``name``
    optional); ``snapshot_id`` 0 reads the training table's current snapshot (recorded in MLMD either way);
    ``preprocessing_fn``/``run_fn``: dotted paths of the Transform and Trainer functions.
    ``propose_schema`` adds a SchemaGen whose inferred schema is only a proposal (nothing consumes it)."""
    example_gen = IcebergExampleGen(catalog_properties=catalog_properties, training_table=training_table,
                                    snapshot_id=int(snapshot_id), eval_fraction=float(eval_fraction))
    schema_gen = tfx.components.ImportSchemaGen(schema_file=schema_file)
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"],
                                                  schema=schema_gen.outputs["schema"])
    example_validator = tfx.components.ExampleValidator(statistics=statistics_gen.outputs["statistics"],
                                                        schema=schema_gen.outputs["schema"])
    gate = AnomalyGate(anomalies=example_validator.outputs["anomalies"])
    transform = tfx.components.Transform(examples=example_gen.outputs["examples"],
                                         schema=schema_gen.outputs["schema"], preprocessing_fn=preprocessing_fn)
    transform.add_upstream_node(gate)
    trainer = tfx.components.Trainer(
        run_fn=run_fn, examples=transform.outputs["transformed_examples"],
        transform_graph=transform.outputs["transform_graph"], schema=schema_gen.outputs["schema"],
        train_args=tfx.proto.TrainArgs(num_steps=int(train_steps)),
        eval_args=tfx.proto.EvalArgs(num_steps=int(eval_steps)),
        custom_config=dict(train_custom_config or {}))
    model_resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"], model=trainer.outputs["model"],
        baseline_model=model_resolver.outputs["model"], eval_config=eval_config(auc_floor))
    pusher = ServingPusher(model=trainer.outputs["model"], model_blessing=evaluator.outputs["blessing"],
                           evaluation=evaluator.outputs["evaluation"], examples=example_gen.outputs["examples"],
                           statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"],
                           serving_model_dir=serving_model_dir, pipeline_run=pipeline_run,
                           metadata_path=_sqlite_path(metadata_connection_config))
    components = [example_gen, schema_gen, statistics_gen, example_validator, gate, transform, trainer,
                  model_resolver, evaluator, pusher]
    if propose_schema:
        components.insert(3, tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"],
                                                      infer_feature_shape=False).with_id("proposed_schema_gen"))
    return tfx.dsl.Pipeline(pipeline_name=pipeline_name, pipeline_root=pipeline_root, components=components,
                            enable_cache=enable_cache, metadata_connection_config=metadata_connection_config,
                            beam_pipeline_args=list(beam_pipeline_args or []))
