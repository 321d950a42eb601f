"""A stand-in for the taxi tip model, exported in seconds, for tests of the model server.

The real model comes out of the TFX pipeline, which takes minutes and a trained transform graph. The server
only cares about the SavedModel's signatures, so this stand-in has the same inputs and output as the real
one, each feature a rank-1 tensor of shape ``[None]`` (one value per row, the shape TF Serving's row format
and the REST layer produce most naturally). The score is a sigmoid of a fixed linear function plus
``bias``: deterministic, so a test can compute the expected value, and different per version.

Two signatures, as a TFX Keras export has:

* ``serving_default`` (predict): the named feature tensors -> ``probabilities`` ``[None]`` float32;
* ``serving_examples`` (predict): ``examples``, serialized ``tf.Example`` protos ``[None]`` string, parsed
  with the same feature names -> the same ``probabilities``; this is what Classify and Regress call.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

FLOAT_FEATURES = ("fare", "trip_miles", "trips_count_1h", "fare_avg_1h")
INT_FEATURES = ("trip_seconds", "pickup_community_area")
STRING_FEATURES = ("payment_type", "company")
EXAMPLES_SIGNATURE = "serving_examples"

_SPECS = {
    **{name: tf.TensorSpec([None], tf.float32, name=name) for name in FLOAT_FEATURES},
    **{name: tf.TensorSpec([None], tf.int64, name=name) for name in INT_FEATURES},
    **{name: tf.TensorSpec([None], tf.string, name=name) for name in STRING_FEATURES},
}
_FEATURE_SPEC = {
    name: tf.io.FixedLenFeature([], spec.dtype, default_value="" if spec.dtype == tf.string else 0)
    for name, spec in _SPECS.items()
}
# Fixed weights, so a test can recompute the score; the string features enter through a stable hash.
_WEIGHTS = {"fare": 0.05, "trip_miles": -0.1, "trips_count_1h": 0.02, "fare_avg_1h": -0.03,
            "trip_seconds": 0.0005, "pickup_community_area": -0.01, "payment_type": 0.3, "company": -0.2}


def _score(features: dict[str, tf.Tensor], bias: tf.Variable) -> tf.Tensor:
    logit = tf.identity(bias)
    for name, weight in _WEIGHTS.items():
        value = features[name]
        if value.dtype == tf.string:
            value = tf.strings.to_hash_bucket_fast(value, 7)
        value = tf.cast(value, tf.float32)
        # a missing number (NaN, as the real model's serving signature takes it) contributes nothing
        logit = logit + weight * tf.where(tf.math.is_nan(value), tf.zeros_like(value), value)
    return tf.sigmoid(logit)


class _TipModel(tf.Module):
    def __init__(self, bias: float):
        super().__init__()
        self.bias = tf.Variable(bias, dtype=tf.float32, trainable=False)

    @tf.function(input_signature=[_SPECS])
    def predict(self, features):
        return {"probabilities": _score(features, self.bias)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def predict_examples(self, examples):
        return {"probabilities": _score(tf.io.parse_example(examples, _FEATURE_SPEC), self.bias)}


def export_standin_model(base_path: str | Path, version: int, bias: float = 0.0) -> Path:
    """Export the stand-in to ``<base_path>/<version>`` (TF Serving's layout) and return that directory."""
    model = _TipModel(bias)
    # A concrete function of one dict argument gets one named input per key: the features by name.
    signatures = {"serving_default": model.predict.get_concrete_function(),
                  EXAMPLES_SIGNATURE: model.predict_examples.get_concrete_function()}
    path = Path(base_path) / str(int(version))
    tf.saved_model.save(model, str(path), signatures=signatures)
    return path


def standin_example(**overrides) -> tf.train.Example:
    """One ``tf.Example`` with every feature of the stand-in set, ``overrides`` replacing the defaults."""
    values = {**standin_row(), **overrides}
    feature = {}
    for name, value in values.items():
        if name in FLOAT_FEATURES:
            feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
        elif name in INT_FEATURES:
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        else:
            feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def standin_row() -> dict:
    """A plausible taxi trip, one value per feature."""
    return {"fare": 12.5, "trip_miles": 3.2, "trip_seconds": 900, "payment_type": "Credit Card",
            "company": "Flash Cab", "pickup_community_area": 8, "trips_count_1h": 4.0, "fare_avg_1h": 11.0}
