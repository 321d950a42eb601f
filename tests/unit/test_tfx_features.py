"""The model's inputs come from TIPS, and the curated schema agrees with them."""

import pytest
from pyiceberg.types import StringType

from iceberg_schemas.training import TIPS

pytestmark = pytest.mark.unit


def test_features_and_label_come_from_tips():
    from tfx_pipeline import features as F

    assert F.LABEL_KEY == TIPS.label == "big_tipper"
    assert F.FEATURE_KEYS == TIPS.feature_columns()
    assert F.TRAINING_TABLE == TIPS.table
    assert F.DECISION_TIME == TIPS.decision_time
    assert sorted(F.CATEGORICAL_FEATURES + F.NUMERIC_FEATURES) == sorted(TIPS.feature_columns())
    assert not set(F.CATEGORICAL_FEATURES) & set(F.NUMERIC_FEATURES)
    assert set(F.BUCKET_FEATURES) <= set(F.NUMERIC_FEATURES)


def test_types_follow_the_iceberg_schema():
    from tfx_pipeline import features as F

    schema = TIPS.table_spec().schema
    strings = [n for n in TIPS.feature_columns() if isinstance(schema.find_field(n).field_type, StringType)]
    assert F.STRING_FEATURES == strings == ["company", "payment_type"]
    assert F.RAW_KIND["fare"] == "float" and F.RAW_KIND["trip_seconds"] == "int"
    assert F.RAW_KIND["trips_count_1h"] == "int" and F.RAW_KIND["tip_rate_24h"] == "float"
    assert all(F.RAW_KIND[n] == "int" for n in F.ID_FEATURES)
    assert {F.missing_serving_value(n) for n in F.STRING_FEATURES} == {""}


def test_curated_schema_names_exactly_the_features_and_label():
    from tensorflow_metadata.proto.v0 import schema_pb2
    from google.protobuf import text_format

    from tfx_pipeline import features as F
    from tfx_pipeline.pipeline import SCHEMA_FILE

    schema = text_format.Parse(open(SCHEMA_FILE).read(), schema_pb2.Schema())
    kinds = {"float": schema_pb2.FLOAT, "int": schema_pb2.INT, "string": schema_pb2.BYTES}
    by_name = {f.name: f for f in schema.feature}
    assert sorted(by_name) == sorted([*F.FEATURE_KEYS, F.LABEL_KEY])
    for name in F.FEATURE_KEYS:
        assert by_name[name].type == kinds[F.RAW_KIND[name]], name
        assert not by_name[name].HasField("shape"), f"{name} must parse as VarLen (missing stays missing)"
    assert by_name["fare"].presence.min_fraction == 1.0
    assert by_name["tip_rate_24h"].presence.min_fraction == 0.0
