"""IcebergExampleGen sets aside the rows the curated schema would reject as incomplete, and counts them.

One row without a required feature (or its label) would make ExampleValidator report the feature missing for
the whole split, and AnomalyGate stop the run; such a row is left out with its reason instead.
"""

import json
import math
from datetime import datetime, timedelta, timezone

import pytest

from tests.unit.test_training_set import _bad_labels, _load

pytestmark = pytest.mark.unit

T0 = datetime(2015, 1, 1, tzinfo=timezone.utc)


def _row(i: int, **overrides) -> dict:
    from tfx_pipeline import features as F

    row = {"trip_id": f"t{i}", F.DECISION_TIME: T0 + timedelta(hours=i), F.LABEL_KEY: i % 3 == 0,
           "fare": 10.0 + i, "payment_type": "Cash", "trip_miles": 1.5, "trip_seconds": 60 * i,
           "company": None, "tip_rate_24h": math.nan}
    return {**row, **overrides}


def _read(uri, split: str) -> list:
    import tensorflow as tf

    path = f"{uri}/Split-{split}/data_tfrecord-00000-of-00001.gz"
    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path, compression_type="GZIP")]


def test_the_curated_schema_requires_the_label_and_the_trips_own_fields():
    from tfx_pipeline.components.iceberg_example_gen import required_features

    assert required_features() == ["big_tipper", "payment_type", "fare", "trip_miles", "trip_seconds"]


def test_incomplete_rows_are_set_aside_by_reason(tmp_path):
    from tfx_pipeline import features as F
    from tfx_pipeline.components.iceberg_example_gen import required_features, write_examples

    rows = [_row(i) for i in range(50)]
    rows[3]["fare"] = None
    rows[4]["fare"] = math.nan  # NaN is missing too
    rows[5]["trip_miles"] = None
    rows[6]["fare"] = rows[6]["payment_type"] = None  # counted once, under the first required field missing
    rows[7][F.LABEL_KEY] = None
    rows[8][F.DECISION_TIME] = None
    rows[9]["company"] = rows[9]["tip_rate_24h"] = None  # optional features: kept
    info = write_examples(rows, str(tmp_path), 0.2, F.RAW_KIND, F.LABEL_KEY, F.DECISION_TIME,
                          required=required_features(), key="trip_id")
    assert info["excluded"] == {"missing_field:fare": 2, "missing_field:payment_type": 1,
                                "missing_field:trip_miles": 1, "no_label": 1, "no_decision_time": 1}
    assert info["excluded_examples"]["missing_field:fare"] == ["t3", "t4"]
    assert info["excluded_examples"]["missing_field:payment_type"] == ["t6"]
    assert info["rows_excluded"] == 6 and info["rows_train"] + info["rows_eval"] == 44
    written = _read(tmp_path, "train") + _read(tmp_path, "eval")
    assert len(written) == 44
    for name in required_features():
        assert all(e.features.feature[name].ListFields() for e in written), name
    # without required fields nothing but time and label is judged (the split's own tests rely on it)
    again = write_examples(rows, str(tmp_path / "loose"), 0.2, F.RAW_KIND, F.LABEL_KEY, F.DECISION_TIME)
    assert again["excluded"] == {"no_label": 1, "no_decision_time": 1} and again["excluded_examples"] == {}


def test_no_rows_or_none_usable_write_empty_splits(tmp_path):
    from tfx_pipeline import features as F
    from tfx_pipeline.components.iceberg_example_gen import required_features, write_examples

    info = write_examples([], str(tmp_path / "a"), 0.2, F.RAW_KIND, F.LABEL_KEY, F.DECISION_TIME,
                          required=required_features(), key="trip_id")
    assert (info["rows_train"], info["rows_eval"], info["rows_excluded"]) == (0, 0, 0)
    rows = [_row(i, fare=None) for i in range(7)]
    info = write_examples(rows, str(tmp_path / "b"), 0.2, F.RAW_KIND, F.LABEL_KEY, F.DECISION_TIME,
                          required=required_features(), key="trip_id")
    assert info["excluded"] == {"missing_field:fare": 7} and len(info["excluded_examples"]["missing_field:fare"]) == 5
    assert (info["rows_train"], info["rows_eval"]) == (0, 0)


def test_component_reads_a_built_training_set_and_records_what_it_left_out(tmp_path):
    """A training set whose builder left labels out, and which holds a trip whose end event has no fare (the
    source contract allows it; the curated schema does not): the component trains on the rest."""
    from tfx.types import standard_artifacts

    from iceberg_schemas.training import TIPS
    from liveml.training_set import build_training_set
    from tfx_pipeline.components.iceberg_example_gen import IcebergExampleGen

    def no_fare(labels, context):
        labels, context = _bad_labels(labels, context)
        for c in context:
            if c["trip_id"] == "t11" and c["event_type"] == "end":
                c["fare"] = None
        return labels, context

    (tmp_path / "data").mkdir()
    store, *_ = _load(tmp_path / "data", n=40, mutate=no_fare)
    built = build_training_set(store, TIPS)
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "examples")
    props = {"name": "t", "type": "sql", "uri": f"sqlite:///{tmp_path}/data/c.db",
             "warehouse": (tmp_path / "data" / "wh").as_uri()}
    IcebergExampleGen.test_call(examples=examples, catalog_properties=json.dumps(props),
                                training_table="training.tips", snapshot_id=0, eval_fraction=0.2, schema_file="")
    assert json.loads(examples.get_string_custom_property("excluded")) == {"missing_field:fare": 1}
    assert json.loads(examples.get_string_custom_property("excluded_examples")) == {"missing_field:fare": ["t11"]}
    assert examples.get_int_custom_property("rows_excluded") == 1
    assert examples.get_int_custom_property("rows") == built["rows"] - 1
    assert json.loads(examples.get_string_custom_property("training_set_excluded")) == built["excluded"]
    assert len(_read(examples.uri, "train")) + len(_read(examples.uri, "eval")) == built["rows"] - 1
