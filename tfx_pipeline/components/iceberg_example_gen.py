"""``IcebergExampleGen``: ``training.tips`` at a pinned Iceberg snapshot -> tf.Examples, split by event time.

A Python function component (``tfx.dsl.component.experimental.decorators.component``), which TFX 1.16 runs
in-process with every orchestrator (LocalDagRunner, BeamDagRunner, Kubeflow's container entrypoint).

The rows are split by decision time, not at random: the latest ``eval_fraction`` of the rows, ordered by
decision time, are ``eval``, everything before them ``train``, so evaluation is on the future of training, as
serving will be. (A cut at a fraction of the *time range* instead would leave this data set's sparse last
months with 670 eval rows out of 15,002, too few for a stable AUC.) Examples are written as ``Split-<split>/data_tfrecord-00000-of-00001.gz`` (what TFX's own
ExampleGen writes), and the artifact records in ML Metadata: ``snapshot_id``, ``training_table``,
``snapshot_ids`` (JSON, the inputs of the training-set build, from its lineage), ``spec_version``,
``train_range``/``eval_range`` (JSON ``[start, end]`` ISO times), ``rows_train``/``rows_eval``.

A row that cannot be a valid example (no decision time, no label, or NULL in a feature the curated schema
requires in every example) is set aside, never fatal: ExampleValidator would otherwise report the feature
as missing and AnomalyGate stop the whole run over that one row. Set-aside rows are counted by reason
(``missing_field:<name>`` for the first missing required feature) in ``excluded`` and ``rows_excluded``,
with a few example keys in ``excluded_examples``; the training-set build's own exclusions (labels that
never made a row) are copied into ``training_set_excluded``. Values out of the schema's domain are not
set aside: those are the validator's to judge.
"""

# (no `from __future__ import annotations`: TFX parses the component signature at runtime)

import json
import math
import os
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

SPLITS = ("train", "eval")
CURATED_SCHEMA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schema", "schema.pbtxt")
EXAMPLE_KEYS = 5  # example keys kept per reason a row was set aside


def event_time_split(times_ms: Sequence[int], eval_fraction: float = 0.2) -> tuple[list[bool], int | None]:
    """``(is_eval, cut_ms)``: the latest ``eval_fraction`` of the rows by time are eval, i.e. rows at or after
    ``cut``, the time of the row at position ``ceil(n * (1 - eval_fraction))`` in time order.

    Pure: no row is in both splits, every row in one, and each train time is before each eval time. Rows
    tied with the cut all go to eval, so the eval share can exceed ``eval_fraction`` by the tie."""
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction {eval_fraction} must be in (0, 1)")
    times = [int(t) for t in times_ms]
    if not times:
        return [], None
    ordered = sorted(times)
    cut = ordered[min(len(ordered) - 1, math.ceil(len(ordered) * (1 - eval_fraction)))]
    if cut <= ordered[0]:  # the cut falls on the first instant: nothing would be left to train on
        cut = ordered[-1] + 1
    return [t >= cut for t in times], cut


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")


def time_range(times_ms: Iterable[int]) -> list[str | None]:
    ts = list(times_ms)
    return [_iso(min(ts)), _iso(max(ts))] if ts else [None, None]


def _is_null(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def to_example(row: Mapping[str, Any], kinds: Mapping[str, str], label_key: str):
    """One ``tf.Example``: ``kinds`` maps each feature to "string" | "int" | "float"; NULLs are left out,
    so a missing value reads as missing (not as 0) to statistics, validation and tf.Transform."""
    import tensorflow as tf

    feature = {}
    for name, kind in kinds.items():
        v = row.get(name)
        if _is_null(v):
            continue
        if kind == "string":
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(v).encode()]))
        elif kind == "int":
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))
        else:
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[float(v)]))
    label = row.get(label_key)
    if not _is_null(label):
        feature[label_key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(bool(label))]))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def required_features(schema_file: str = CURATED_SCHEMA) -> list[str]:
    """The features a TFMD schema requires in every example (``presence.min_fraction`` 1): a row lacking
    one fails ExampleValidator for the whole split, so it is set aside instead."""
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = schema_pb2.Schema()
    with open(schema_file) as f:
        text_format.Parse(f.read(), schema)
    return [f.name for f in schema.feature if f.presence.min_fraction >= 1.0]


def set_aside_reason(row: Mapping[str, Any], required: Sequence[str], label_key: str, time_key: str) -> str | None:
    """Why ``row`` cannot be an example, or None: no decision time, no label, then the first required
    feature that is NULL (NaN included)."""
    if row.get(time_key) is None:
        return "no_decision_time"
    if _is_null(row.get(label_key)):
        return "no_label"
    for name in required:
        if name not in (label_key, time_key) and _is_null(row.get(name)):
            return f"missing_field:{name}"
    return None


def set_aside(rows: Iterable[dict], required: Sequence[str], label_key: str, time_key: str,
              key: str | None = None) -> tuple[list[dict], dict[str, int], dict[str, list]]:
    """``(kept, counts, examples)``: the rows that can be examples, and the others counted by reason, with
    the first few values of ``key`` (a trip id) for each reason, so a person can look them up."""
    kept: list[dict] = []
    counts: dict[str, int] = {}
    examples: dict[str, list] = {}
    for row in rows:
        reason = set_aside_reason(row, required, label_key, time_key)
        if reason is None:
            kept.append(row)
            continue
        counts[reason] = counts.get(reason, 0) + 1
        seen = examples.setdefault(reason, [])
        if key is not None and len(seen) < EXAMPLE_KEYS:
            seen.append(row.get(key))
    return kept, counts, {r: e for r, e in examples.items() if e}


def load_catalog_from_json(catalog_properties: str):
    """A pyiceberg catalog from a JSON object of properties (``name`` optional, the rest pyiceberg's)."""
    from pyiceberg.catalog import load_catalog

    props = dict(json.loads(catalog_properties))
    name = props.pop("name", "liveml")
    return load_catalog(name, **props)


def read_training_rows(catalog_properties: str, training_table: str, snapshot_id: int | None):
    """``(rows, snapshot_id, lineage)`` of a training table at a snapshot (0/None: current)."""
    from liveml.offline import OfflineStore
    from liveml.training_set import lineage

    store = OfflineStore(load_catalog_from_json(catalog_properties))
    table = store.table(training_table)
    snap = store.resolve_snapshot(table, snapshot_id or None)
    if snap is None:
        raise ValueError(f"{training_table} has no snapshot to read")
    rows = store.scan(training_table, snapshot_id=snap).to_pylist()
    return rows, snap, lineage(store, training_table, snap)


def write_examples(rows: list[dict], uri: str, eval_fraction: float, kinds: Mapping[str, str], label_key: str,
                   time_key: str, required: Sequence[str] = (), key: str | None = None) -> dict[str, Any]:
    """Write ``Split-train``/``Split-eval`` under ``uri``; returns ranges and counts, and the rows set aside
    (no decision time, no label, a NULL ``required`` feature) by reason (``excluded``, ``excluded_examples``)."""
    import tensorflow as tf

    def ms(v) -> int:
        return int(v.timestamp() * 1000) if isinstance(v, datetime) else int(v)

    rows, excluded, examples = set_aside(rows, required, label_key, time_key, key)
    rows.sort(key=lambda r: ms(r[time_key]))
    times = [ms(r[time_key]) for r in rows]
    is_eval, cut = event_time_split(times, eval_fraction)
    out: dict[str, Any] = {"cut": _iso(cut), "excluded": excluded, "excluded_examples": examples,
                           "rows_excluded": sum(excluded.values())}
    for split, want in (("train", False), ("eval", True)):
        d = os.path.join(uri, f"Split-{split}")
        tf.io.gfile.makedirs(d)
        path = os.path.join(d, "data_tfrecord-00000-of-00001.gz")
        n = 0
        with tf.io.TFRecordWriter(path, options="GZIP") as w:
            for r, e in zip(rows, is_eval):
                if e == want:
                    w.write(to_example(r, kinds, label_key).SerializeToString())
                    n += 1
        out[f"rows_{split}"] = n
        out[f"{split}_range"] = time_range(t for t, e in zip(times, is_eval) if e == want)
    return out


# ---- the TFX component --------------------------------------------------------------------------------
from tfx.dsl.component.experimental.annotations import OutputArtifact, Parameter  # noqa: E402
from tfx.dsl.component.experimental.decorators import component  # noqa: E402
from tfx.types import artifact_utils, standard_artifacts  # noqa: E402


@component
def IcebergExampleGen(  # noqa: N802 (TFX component naming)
        examples: OutputArtifact[standard_artifacts.Examples],
        catalog_properties: Parameter[str],
        training_table: Parameter[str] = "training.tips",
        snapshot_id: Parameter[int] = 0,
        eval_fraction: Parameter[float] = 0.2,
        schema_file: Parameter[str] = "",
) -> None:
    """Read ``training_table`` at ``snapshot_id`` (0: the current one) and write train/eval tf.Examples,
    setting aside the rows ``schema_file`` (default: the curated schema) would reject as incomplete."""
    from tfx_pipeline import features as F

    rows, snap, lin = read_training_rows(catalog_properties, training_table, snapshot_id)
    required = required_features(schema_file or CURATED_SCHEMA)
    info = write_examples(rows, examples.uri, eval_fraction, F.RAW_KIND, F.LABEL_KEY, F.DECISION_TIME,
                          required=required, key=F.SPEC.keys[0])
    examples.split_names = artifact_utils.encode_split_names(list(SPLITS))
    examples.set_string_custom_property("payload_format", "FORMAT_TF_EXAMPLE")
    examples.set_string_custom_property("file_format", "tfrecords_gzip")
    examples.set_string_custom_property("training_table", training_table)
    examples.set_string_custom_property("snapshot_id", str(snap))  # int64 ids overflow a JSON double
    examples.set_string_custom_property("snapshot_ids", json.dumps(lin.get("snapshot_ids", {}), sort_keys=True))
    examples.set_int_custom_property("spec_version", int(lin.get("spec_version", -1)))
    examples.set_string_custom_property("train_range", json.dumps(info["train_range"]))
    examples.set_string_custom_property("eval_range", json.dumps(info["eval_range"]))
    examples.set_int_custom_property("rows_train", info["rows_train"])
    examples.set_int_custom_property("rows_eval", info["rows_eval"])
    examples.set_int_custom_property("rows", info["rows_train"] + info["rows_eval"])
    examples.set_int_custom_property("rows_excluded", info["rows_excluded"])
    examples.set_string_custom_property("excluded", json.dumps(info["excluded"], sort_keys=True))
    examples.set_string_custom_property("excluded_examples", json.dumps(info["excluded_examples"], sort_keys=True,
                                                                        default=str))
    examples.set_string_custom_property("training_set_excluded", json.dumps(lin.get("excluded", {}), sort_keys=True))
