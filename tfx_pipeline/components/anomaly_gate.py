"""``AnomalyGate``: stop the pipeline before training when ExampleValidator found anomalies.

TFX 1.16's ExampleValidator records anomalies (``Split-<split>/SchemaDiff.pb``) but never fails the run, so a
bad training set would still be trained on. This gate reads the ExampleAnomalies artifact and raises
:class:`DataAnomalyError` listing every anomaly (split, feature, short and long description); Transform and
everything after it depend on the gate, so nothing is trained.
"""

# (no `from __future__ import annotations`: TFX parses the component signature at runtime)
import os

from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils, standard_artifacts

FILE_NAME = "SchemaDiff.pb"


class DataAnomalyError(RuntimeError):
    """The training data breaks the curated schema (tfx_pipeline/schema/schema.pbtxt)."""


def read_anomalies(uri: str, splits: list) -> dict:
    """``{split: Anomalies}`` for the splits whose ``SchemaDiff.pb`` exists under ``uri``."""
    import tensorflow as tf

    out = {}
    for split in splits:
        path = os.path.join(uri, f"Split-{split}", FILE_NAME)
        if tf.io.gfile.exists(path):
            a = anomalies_pb2.Anomalies()
            a.ParseFromString(tf.io.gfile.GFile(path, "rb").read())
            out[split] = a
    return out


def describe_anomalies(by_split: dict) -> list:
    """One readable line per anomaly: ``split 'train': feature 'fare': Out-of-range values (...)``."""
    lines = []
    for split, anomalies in sorted(by_split.items()):
        for feature, info in sorted(anomalies.anomaly_info.items()):
            reasons = "; ".join(f"{r.short_description}: {r.description}" for r in info.reason) \
                or f"{info.short_description}: {info.description}"
            lines.append(f"split {split!r}: feature {feature!r}: {reasons}")
        ds = anomalies.dataset_anomaly_info
        if ds.reason or ds.description:
            reasons = "; ".join(f"{r.short_description}: {r.description}" for r in ds.reason) or ds.description
            lines.append(f"split {split!r}: dataset: {reasons}")
    return lines


def check_anomalies(uri: str, splits: list) -> int:
    """Raise :class:`DataAnomalyError` if any split has an anomaly; otherwise return the splits checked."""
    by_split = read_anomalies(uri, splits)
    lines = describe_anomalies(by_split)
    if lines:
        raise DataAnomalyError(
            f"the training data has {len(lines)} anomal{'y' if len(lines) == 1 else 'ies'} against the curated "
            "schema (tfx_pipeline/schema/schema.pbtxt); training stopped:\n  " + "\n  ".join(lines))
    return len(by_split)


@component
def AnomalyGate(  # noqa: N802
        anomalies: InputArtifact[standard_artifacts.ExampleAnomalies],
        checked: OutputArtifact[standard_artifacts.String],
) -> None:
    """Fail with a readable reason if ``anomalies`` holds any anomaly."""
    splits = artifact_utils.decode_split_names(anomalies.split_names) if anomalies.split_names else ["train", "eval"]
    n = check_anomalies(anomalies.uri, splits)
    checked.value = f"no anomalies in {n} split(s): {', '.join(splits)}"
    checked.set_int_custom_property("splits_checked", n)
