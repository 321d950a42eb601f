"""The anomaly gate stops the pipeline with a readable reason; clean data passes."""

import pytest

pytestmark = pytest.mark.unit


def _write(tmp_path, split, anomalies):
    d = tmp_path / f"Split-{split}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "SchemaDiff.pb").write_bytes(anomalies.SerializeToString())


def test_an_anomaly_raises_with_feature_and_reason(tmp_path):
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    from tfx_pipeline.components.anomaly_gate import DataAnomalyError, check_anomalies

    bad = anomalies_pb2.Anomalies()
    info = bad.anomaly_info["fare"]
    info.short_description = "Out-of-range values"
    info.description = "Unexpectedly low value: -3.5 < 0."
    reason = info.reason.add()
    reason.type = anomalies_pb2.AnomalyInfo.FLOAT_TYPE_SMALL_FLOAT
    reason.short_description = "Out-of-range values"
    reason.description = "Unexpectedly low value: -3.5 < 0."
    _write(tmp_path, "train", anomalies_pb2.Anomalies())
    _write(tmp_path, "eval", bad)
    with pytest.raises(DataAnomalyError) as err:
        check_anomalies(str(tmp_path), ["train", "eval"])
    msg = str(err.value)
    assert "1 anomaly" in msg and "split 'eval'" in msg and "feature 'fare'" in msg
    assert "Unexpectedly low value: -3.5 < 0." in msg and "training stopped" in msg


def test_clean_splits_pass(tmp_path):
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    from tfx_pipeline.components.anomaly_gate import check_anomalies

    for split in ("train", "eval"):
        _write(tmp_path, split, anomalies_pb2.Anomalies())
    assert check_anomalies(str(tmp_path), ["train", "eval"]) == 2


def test_curated_schema_flags_negative_fares_and_missing_required(tmp_path):
    """TFDV against the curated schema, as ExampleValidator runs it, then the gate's message."""
    import pandas as pd
    import tensorflow_data_validation as tfdv

    from tfx_pipeline.components.anomaly_gate import DataAnomalyError, check_anomalies
    from tfx_pipeline.pipeline import SCHEMA_FILE

    schema = tfdv.load_schema_text(SCHEMA_FILE)
    df = pd.DataFrame({"big_tipper": [0, 1, 0, 1], "fare": [10.0, -3.5, 7.0, 9.0],
                       "trip_miles": [1.0, 2.0, 3.0, 4.0], "trip_seconds": [60, 120, 180, 240],
                       "payment_type": ["Cash", "Credit Card", "Cash", "Cash"]})
    stats = tfdv.generate_statistics_from_dataframe(df)
    anomalies = tfdv.validate_statistics(stats, schema)
    _write(tmp_path, "train", anomalies)
    with pytest.raises(DataAnomalyError) as err:
        check_anomalies(str(tmp_path), ["train"])
    assert "feature 'fare'" in str(err.value)


def test_a_missing_required_column_stops_the_run_naming_it(tmp_path):
    """The training set lost ``trip_seconds`` (e.g. a renamed source field): the gate names the column."""
    import pandas as pd
    import tensorflow_data_validation as tfdv

    from tfx_pipeline.components.anomaly_gate import DataAnomalyError, check_anomalies
    from tfx_pipeline.pipeline import SCHEMA_FILE

    schema = tfdv.load_schema_text(SCHEMA_FILE)
    df = pd.DataFrame({"big_tipper": [0, 1, 0, 1], "fare": [10.0, 3.5, 7.0, 9.0],
                       "trip_miles": [1.0, 2.0, 3.0, 4.0],
                       "payment_type": ["Cash", "Credit Card", "Cash", "Cash"]})
    anomalies = tfdv.validate_statistics(tfdv.generate_statistics_from_dataframe(df), schema)
    assert set(anomalies.anomaly_info) == {"trip_seconds"}
    _write(tmp_path, "eval", anomalies)
    with pytest.raises(DataAnomalyError) as err:
        check_anomalies(str(tmp_path), ["eval"])
    msg = str(err.value)
    assert "feature 'trip_seconds'" in msg and "column" in msg.lower(), msg
