"""``preprocessing_fn`` on a tiny dataset with tf.Transform's Beam implementation (local, in memory)."""

import math

import pytest

pytestmark = pytest.mark.unit


def test_preprocessing_fills_missing_scales_and_indexes(tmp_path):
    import tfx_pipeline  # noqa: F401
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils
    import tensorflow_data_validation as tfdv

    from tfx_pipeline import features as F
    from tfx_pipeline.pipeline import SCHEMA_FILE
    from tfx_pipeline.preprocessing import preprocessing_fn

    schema = tfdv.load_schema_text(SCHEMA_FILE)
    spec = schema_utils.schema_as_feature_spec(schema).feature_spec
    rows = []
    for i in range(40):
        row = {k: [] for k in F.FEATURE_KEYS}
        row.update({"fare": [5.0 + i], "trip_miles": [0.5 * i], "trip_seconds": [60 * i],
                    "payment_type": [b"Cash" if i % 3 else b"Credit Card"],
                    "company": [] if i % 4 == 0 else [b"Flash Cab"],
                    "pickup_community_area": [8 if i % 2 else 32],
                    "tip_rate_24h": [] if i % 5 == 0 else [0.1 * (i % 10)],
                    F.LABEL_KEY: [i % 2]})
        rows.append(row)
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(spec))
    with tft_beam.Context(temp_dir=str(tmp_path), force_tf_compat_v1=False):
        (out, out_meta), _ = (rows, metadata) | tft_beam.AnalyzeAndTransformDataset(preprocessing_fn)
    assert len(out) == 40
    for i, o in enumerate(out):
        assert o[F.LABEL_KEY] == i % 2
        assert o[F.missing_name("tip_rate_24h")] == (1.0 if i % 5 == 0 else 0.0)
        if i % 5 == 0:
            assert o[F.transformed_name("tip_rate_24h")] == 0.0  # missing -> the mean
        assert o[F.missing_name("trips_count_1h")] == 1.0  # absent in every row
        for key in F.NUMERIC_FEATURES:
            assert math.isfinite(o[F.transformed_name(key)]) and abs(o[F.transformed_name(key)]) <= 5
        for key in F.CATEGORICAL_FEATURES:
            assert 0 <= o[F.transformed_name(key)] < F.categorical_cardinality(key)
        for key in F.BUCKET_FEATURES:
            assert 0 <= o[F.bucket_name(key)] <= F.BUCKETS
    fares = [o[F.transformed_name("fare")] for o in out]
    assert abs(sum(fares) / len(fares)) < 1e-4  # z-scored
    companies = {o[F.transformed_name("company")] for o in out}
    assert len(companies) == 2  # Flash Cab and the missing token
    assert {f.name for f in out_meta.schema.feature} == set(out[0])
