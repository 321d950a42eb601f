"""What a served model version is watched against: the statistics and schema of the TFX run that produced it.

Drift is measured against the serving version's own training data, not a separate snapshot. The link is
made at push time: :class:`tfx_pipeline.components.serving_pusher.ServingPusher` takes StatisticsGen's and
ImportSchemaGen's artifacts as inputs (so ML Metadata records them as inputs of the push, beside the model)
and writes, in ``lineage.json`` beside the SavedModel::

    "reference": {"statistics": {"uri", "train", "artifact_id"}, "schema": {"uri", "file", "artifact_id"},
                  "scores": {"file", "split", "rows"} | {"error"}, "metadata": <MLMD sqlite path>}

- ``statistics.train``: StatisticsGen's ``Split-train/FeatureStats.pb`` (a binary
  ``DatasetFeatureStatisticsList``, TFX's own file name), the reference for feature drift;
- ``schema.file``: the run's ``schema.pbtxt`` (ImportSchemaGen's copy of the curated schema), whose
  ``drift_comparator``/``skew_comparator`` thresholds the comparisons use;
- ``scores.file``: ``score_statistics.pb`` in the version directory: TFDV statistics of the version's own
  scores on its run's ``eval`` split (rows the model never trained on, from the time just before serving),
  the reference for score drift (:func:`score_statistics`).

:func:`load_reference` reads them back. When a recorded URI is gone, or the lineage predates these fields,
it asks ML Metadata: the artifacts by the recorded ids, else the push execution whose PushedModel has this
version directory as ``pushed_destination``, and that execution's ``statistics``/``schema`` inputs (or,
for a push that had none, the ExampleStatistics and Schema artifacts of the same pipeline run).
"""

from __future__ import annotations

import glob
import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterable

LINEAGE_FILE = "lineage.json"
SCORE_STATS_FILE = "score_statistics.pb"
STATS_FILE = "FeatureStats.pb"  # what TFX's StatisticsGen writes per split
SCHEMA_FILE = "schema.pbtxt"  # what ImportSchemaGen/SchemaGen write
SCORE_FEATURE = "score"
EXAMPLES_SIGNATURE = "serving_examples"


class ReferenceMissing(LookupError):
    """The version has no usable reference: its directory, lineage.json or the run's artifacts are gone."""


def split_statistics_file(statistics_uri: str, split: str = "train") -> str:
    return os.path.join(statistics_uri, f"Split-{split}", STATS_FILE)


def schema_file(schema_uri: str) -> str:
    return os.path.join(schema_uri, SCHEMA_FILE)


def reference_lineage(statistics_uri: str, statistics_id: int | None, schema_uri: str, schema_id: int | None,
                      metadata_path: str = "", scores: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``reference`` block of ``lineage.json`` (see the module docstring)."""
    return {"statistics": {"uri": statistics_uri, "train": split_statistics_file(statistics_uri),
                           "artifact_id": statistics_id},
            "schema": {"uri": schema_uri, "file": schema_file(schema_uri), "artifact_id": schema_id},
            "scores": scores or {}, "metadata": metadata_path or None}


# --- score reference ---------------------------------------------------------------------------------------
def _records(examples_uri: str, split: str) -> list[str]:
    files = sorted(glob.glob(os.path.join(examples_uri, f"Split-{split}", "*")))
    if not files:
        raise ReferenceMissing(f"no examples under {os.path.join(examples_uri, f'Split-{split}')}")
    return files


def score_statistics(model_dir: str, examples_uri: str, split: str = "eval", signature: str = EXAMPLES_SIGNATURE,
                     batch_size: int = 1024):
    """``(DatasetFeatureStatisticsList, rows)``: TFDV statistics of one FLOAT feature ``score``, the SavedModel's
    ``probabilities`` on every tf.Example of ``Split-<split>`` (gzipped TFRecords, what IcebergExampleGen and
    TFX's ExampleGen write), through its ``signature`` (serialized examples in, ``probabilities`` out).

    Why the eval split: those rows are held out from training and are the latest before the push, so their
    score distribution is what the version is expected to emit on data like its training data. (The first
    window of the version's life would instead take whatever the live data already was as normal, and hide
    drift present from the first day.) Raises :class:`ReferenceMissing` when the split has no files."""
    import numpy as np
    import tensorflow as tf

    model = tf.saved_model.load(model_dir)
    fn = model.signatures[signature]
    data = tf.data.TFRecordDataset(_records(examples_uri, split), compression_type="GZIP").batch(batch_size)
    scores = [fn(examples=batch)["probabilities"].numpy().reshape(-1) for batch in data]
    values = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    return statistics_of_scores(values), int(values.size)


def single_value_lists(values, present, value_type):
    """An Arrow ``list<value_type>`` column holding ``[value]`` where ``present`` and null elsewhere: the shape
    TFX's tf.Example decoder gives a one-value feature, missing when absent (so statistics count it missing).
    ``values``: one per row (ignored where not present)."""
    import numpy as np
    import pyarrow as pa

    present = np.asarray(present, dtype=bool)
    ends = np.cumsum(present)
    offsets = pa.array(np.concatenate([[0], ends]).astype(np.int32))
    kept = [v for v, p in zip(values, present) if p] if value_type in (pa.binary(), pa.string()) else \
        np.asarray(values)[present]
    return pa.ListArray.from_arrays(offsets, pa.array(kept, type=value_type), mask=pa.array(~present))


def statistics_of_scores(scores: Iterable[float]):
    """TFDV statistics (in-memory path, default options) of a FLOAT feature ``score``; NaN is a missing score."""
    import numpy as np
    import pyarrow as pa
    import tensorflow_data_validation as tfdv
    from tensorflow_data_validation.statistics import stats_impl

    v = np.asarray(scores, dtype=np.float32).reshape(-1)
    batch = pa.RecordBatch.from_arrays([single_value_lists(v, ~np.isnan(v), pa.float32())], [SCORE_FEATURE])
    return stats_impl.generate_statistics_in_memory(batch, tfdv.StatsOptions())


# --- reading a version's reference back ----------------------------------------------------------------------
@dataclass
class Reference:
    """A version's reference: ``statistics`` (DatasetFeatureStatisticsList of the train split), ``schema``
    (TFMD Schema), ``score_statistics`` (or None when the push could not score the eval split) and where
    each came from."""

    version_dir: str
    lineage: dict[str, Any]
    statistics: Any
    schema: Any
    statistics_file: str
    schema_file: str
    score_statistics: Any = None
    score_file: str | None = None


def read_lineage(version_dir: str) -> dict[str, Any]:
    path = os.path.join(version_dir, LINEAGE_FILE)
    try:
        with open(path) as f:
            lineage = json.load(f)
    except FileNotFoundError:
        raise ReferenceMissing(f"{path} is missing: the version directory is gone or was not pushed by "
                               "ServingPusher") from None
    except (OSError, ValueError) as exc:
        raise ReferenceMissing(f"{path} is unreadable: {exc}") from None
    if not isinstance(lineage, dict):
        raise ReferenceMissing(f"{path}: expected a JSON object, got {type(lineage).__name__}")
    return lineage


def load_reference(version_dir: str, metadata_path: str | None = None) -> Reference:
    """The reference of the version in ``version_dir`` (``<model_base_path>/<name>/<version>``), from its
    ``lineage.json``, falling back on ML Metadata for what the lineage lacks or what has moved: the store
    the lineage names when it exists, else ``metadata_path``. Raises :class:`ReferenceMissing` naming what
    is missing."""
    import tensorflow_data_validation as tfdv

    lineage = read_lineage(version_dir)
    ref = lineage.get("reference") or {}
    stats_file = (ref.get("statistics") or {}).get("train")
    schema_path = (ref.get("schema") or {}).get("file")
    if not (stats_file and os.path.isfile(stats_file) and schema_path and os.path.isfile(schema_path)):
        db = ref.get("metadata") if ref.get("metadata") and os.path.isfile(ref["metadata"]) else metadata_path
        if not db or not os.path.isfile(db):
            raise ReferenceMissing(f"{version_dir}: the run's statistics/schema ({stats_file}, {schema_path}) "
                                   f"are not on disk and no ML Metadata store to look them up in ({db})")
        uris = mlmd_reference_uris(db, version_dir, (ref.get("statistics") or {}).get("artifact_id"),
                                   (ref.get("schema") or {}).get("artifact_id"))
        stats_file, schema_path = split_statistics_file(uris["statistics"]), schema_file(uris["schema"])
        for p in (stats_file, schema_path):
            if not os.path.isfile(p):
                raise ReferenceMissing(f"{version_dir}: ML Metadata names {p}, which is not there")
    try:
        stats = tfdv.load_stats_binary(stats_file)
        schema = tfdv.load_schema_text(schema_path)
    except Exception as exc:  # noqa: BLE001 (a corrupt artifact is a missing reference, never a crash)
        raise ReferenceMissing(f"{version_dir}: cannot read {stats_file} / {schema_path}: {exc}") from None
    out = Reference(version_dir, lineage, stats, schema, stats_file, schema_path)
    score_file = os.path.join(version_dir, (ref.get("scores") or {}).get("file") or SCORE_STATS_FILE)
    if os.path.isfile(score_file):
        try:
            out.score_statistics, out.score_file = tfdv.load_stats_binary(score_file), score_file
        except Exception as exc:  # noqa: BLE001 (score drift is then skipped for the version; features still work)
            logging.getLogger(__name__).warning("%s: unreadable score statistics (%s: %s); score drift is skipped "
                                                "for this version", score_file, type(exc).__name__, exc)
    return out


def _store(metadata_path: str):
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    cfg = metadata_store_pb2.ConnectionConfig()
    cfg.sqlite.filename_uri = metadata_path
    cfg.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(cfg)


def mlmd_reference_uris(metadata_path: str, version_dir: str | None = None, statistics_id: int | None = None,
                        schema_id: int | None = None) -> dict[str, str]:
    """``{"statistics": uri, "schema": uri}`` from ML Metadata: by artifact ids when given, else through the
    push that wrote ``version_dir`` (see the module docstring). Raises :class:`ReferenceMissing`."""
    store = _store(metadata_path)
    out: dict[str, str] = {}
    for key, aid in (("statistics", statistics_id), ("schema", schema_id)):
        if aid is not None:
            found = store.get_artifacts_by_id([int(aid)])
            if found:
                out[key] = found[0].uri
    if len(out) == 2:
        return out
    if version_dir is None:
        raise ReferenceMissing(f"{metadata_path}: artifacts {statistics_id}, {schema_id} not found")
    want = os.path.normpath(os.path.abspath(version_dir))
    pushed = [a for a in store.get_artifacts_by_type("PushedModel")
              if "pushed_destination" in a.custom_properties and os.path.normpath(os.path.abspath(
                  a.custom_properties["pushed_destination"].string_value)) == want]
    if not pushed:
        raise ReferenceMissing(f"{metadata_path}: no PushedModel with pushed_destination {version_dir}")
    events = store.get_events_by_artifact_ids([pushed[-1].id])
    executions = [e.execution_id for e in events if e.type == e.OUTPUT]
    inputs = [e for e in store.get_events_by_execution_ids(executions) if e.type == e.INPUT and e.path.steps]
    for e in inputs:
        key = e.path.steps[0].key
        if key in ("statistics", "schema") and key not in out:
            out[key] = store.get_artifacts_by_id([e.artifact_id])[0].uri
    if len(out) < 2:  # a push without these inputs: the same run's artifacts, through its contexts
        type_of = {"statistics": "ExampleStatistics", "schema": "Schema"}
        for ctx in store.get_contexts_by_execution(executions[0]) if executions else []:
            if store.get_context_types_by_id([ctx.type_id])[0].name != "pipeline_run":
                continue
            for a in store.get_artifacts_by_context(ctx.id):
                name = store.get_artifact_types_by_id([a.type_id])[0].name
                for key, t in type_of.items():
                    if name == t and key not in out:
                        out[key] = a.uri
    missing = {"statistics", "schema"} - set(out)
    if missing:
        raise ReferenceMissing(f"{metadata_path}: the push of {version_dir} has no {sorted(missing)} in ML Metadata")
    return out
