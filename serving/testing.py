"""A stand-in for the taxi tip model, exported in seconds, for tests of the model server.

The real model comes out of the TFX pipeline, which takes minutes and a trained transform graph. The server
only cares about the SavedModel's signatures, so this stand-in has the same inputs and output as the real
one, each feature a rank-1 tensor of shape ``[None]`` (one value per row, the shape TF Serving's row format
and the REST layer produce most naturally). The score is a sigmoid of a fixed linear function plus
``bias``: deterministic, so a test can compute the expected value, and different per version.

Its signatures:

* ``serving_default`` (predict): the named feature tensors -> ``probabilities`` ``[None]`` float32;
* ``serving_examples`` (predict): ``examples``, serialized ``tf.Example`` protos ``[None]`` string, parsed
  with the same feature names -> the same ``probabilities``, as a TFX Keras export has it;
* ``classify_examples`` and ``regress_examples``: the same examples keyed ``inputs``, in the forms TF
  Serving's Classify (``classes`` ``[None, 2]`` "0"/"1" and ``scores`` ``[None, 2]``: 1 - p, p) and Regress
  (``outputs`` ``[None]``: p) take.

:func:`export_signatures_model` exports a TF1-style SavedModel (a graph and a ``Builder``, as TF 1.x
Estimators exported them) whose signatures exercise TF Serving's conversions and error paths: a classify
signature reading a float feature with ParseExample, a regress one, an ``echo_<dtype>`` predict signature
per dtype, and signatures of the wrong form or method.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

FLOAT_FEATURES = ("fare", "trip_miles", "trips_count_1h", "fare_avg_1h")
INT_FEATURES = ("trip_seconds", "pickup_community_area")
STRING_FEATURES = ("payment_type", "company")
EXAMPLES_SIGNATURE = "serving_examples"
CLASSIFY_SIGNATURE = "classify_examples"
REGRESS_SIGNATURE = "regress_examples"

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

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def classify_examples(self, inputs):
        p = _score(tf.io.parse_example(inputs, _FEATURE_SPEC), self.bias)
        classes = tf.tile(tf.constant([["0", "1"]]), tf.stack([tf.shape(p)[0], 1]))
        return {"classes": classes, "scores": tf.stack([1.0 - p, p], axis=1)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
    def regress_examples(self, inputs):
        return {"outputs": _score(tf.io.parse_example(inputs, _FEATURE_SPEC), self.bias)}


def export_standin_model(base_path: str | Path, version: int, bias: float = 0.0) -> Path:
    """Export the stand-in to ``<base_path>/<version>`` (TF Serving's layout) and return that directory."""
    model = _TipModel(bias)
    # A concrete function of one dict argument gets one named input per key: the features by name.
    signatures = {"serving_default": model.predict.get_concrete_function(),
                  EXAMPLES_SIGNATURE: model.predict_examples.get_concrete_function(),
                  CLASSIFY_SIGNATURE: model.classify_examples.get_concrete_function(),
                  REGRESS_SIGNATURE: model.regress_examples.get_concrete_function()}
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


# -- a TF1-style SavedModel for TF Serving's conversions and error paths -------------------------------------

# echo_<name>: x -> y (the same tensor), one per dtype a request can carry.
ECHO_DTYPES = {"float": tf.float32, "double": tf.float64, "int8": tf.int8, "uint8": tf.uint8, "int16": tf.int16,
               "uint16": tf.uint16, "int32": tf.int32, "int64": tf.int64, "uint32": tf.uint32,
               "uint64": tf.uint64, "bool": tf.bool, "string": tf.string, "half": tf.float16,
               "bfloat16": tf.bfloat16}
CUSTOM_METHOD = "liveml/custom_method"


def export_signatures_model(base_path: str | Path, version: int = 1) -> Path:
    """Export, to ``<base_path>/<version>``, a TF1-style SavedModel with these signatures:

    * ``serving_default`` (method classify): ``inputs``, serialized ``tf.Example`` ``[None]``, parsed for a
      float feature ``x`` (default 0) -> ``classes`` ``[None, 2]`` ("no", "yes") and ``scores``
      ``[None, 2]`` (1 - sigmoid(x), sigmoid(x)). An example whose ``x`` is an int64 list fails in
      ParseExample with INVALID_ARGUMENT, as a TF1 Estimator export does;
    * ``regress`` (method regress): the same ``inputs`` -> ``outputs`` ``[None, 1]``: sigmoid(x);
    * ``echo_<dtype>`` (method predict) for each of :data:`ECHO_DTYPES`: ``x`` of any shape -> ``y``, the
      same tensor; ``echo_bytes``: a string ``x`` -> ``y_bytes`` (written as base64 in JSON);
    * ``classify_rank1`` (predict): ``inputs`` -> ``scores`` ``[None]``, a classify output of the wrong rank;
    * ``regress_wide`` (predict): ``inputs`` -> ``outputs`` ``[None, 2]``, a regress output of the wrong shape;
    * ``to_half`` / ``to_uint16``: ``x`` float / int32 ``[None]`` -> ``y`` in a dtype JSON cannot express;
    * ``sum``: ``x`` float ``[None]`` -> ``y`` ``[1]``, its sum: an output that is not per row;
    * ``custom_method``: method :data:`CUSTOM_METHOD`, ``x`` float -> ``y``;
    * ``slow``: ``n`` int64 ``[None]`` -> ``count`` ``[None]``, after a loop of max(n) steps (for timeouts).
    """
    path = Path(base_path) / str(int(version))
    v1 = tf.compat.v1
    utils = v1.saved_model.utils
    sig = v1.saved_model.signature_def_utils
    graph = tf.Graph()
    with graph.as_default():
        serialized = v1.placeholder(tf.string, [None], name="serialized_examples")
        x = tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([], tf.float32, default_value=0.0)})["x"]
        p = tf.sigmoid(x)
        classes = tf.tile(tf.constant([["no", "yes"]]), tf.stack([tf.shape(p)[0], 1]))
        scores = tf.stack([1.0 - p, p], axis=1)
        signatures = {
            "serving_default": sig.classification_signature_def(serialized, classes, scores),
            "regress": sig.regression_signature_def(serialized, tf.expand_dims(p, 1)),
            "classify_rank1": sig.predict_signature_def({"inputs": serialized}, {"scores": p}),
            "regress_wide": sig.predict_signature_def({"inputs": serialized}, {"outputs": scores}),
        }
        floats = v1.placeholder(tf.float32, [None], name="floats_x")
        ints = v1.placeholder(tf.int32, [None], name="ints_x")
        signatures["to_half"] = sig.predict_signature_def({"x": floats}, {"y": tf.cast(floats, tf.float16)})
        signatures["to_uint16"] = sig.predict_signature_def({"x": ints}, {"y": tf.cast(ints, tf.uint16)})
        signatures["sum"] = sig.predict_signature_def({"x": floats}, {"y": tf.reshape(tf.reduce_sum(floats), [1])})
        for name, dtype in ECHO_DTYPES.items():
            value = v1.placeholder(dtype, None, name=f"echo_{name}_x")
            signatures[f"echo_{name}"] = sig.predict_signature_def({"x": value}, {"y": tf.identity(value)})
        raw = v1.placeholder(tf.string, None, name="echo_bytes_x")
        signatures["echo_bytes"] = sig.predict_signature_def({"x": raw}, {"y_bytes": tf.identity(raw)})
        custom_x = v1.placeholder(tf.float32, [None], name="custom_x")
        signatures["custom_method"] = sig.build_signature_def(
            {"x": utils.build_tensor_info(custom_x)}, {"y": utils.build_tensor_info(tf.identity(custom_x))},
            CUSTOM_METHOD)
        steps = v1.placeholder(tf.int64, [None], name="slow_n")
        count = tf.while_loop(lambda i: i < tf.reduce_max(steps), lambda i: i + 1, [tf.constant(0, tf.int64)])[0]
        signatures["slow"] = sig.predict_signature_def({"n": steps}, {"count": tf.fill(tf.shape(steps), count)})
        with v1.Session(graph=graph) as session:
            builder = v1.saved_model.Builder(str(path))
            builder.add_meta_graph_and_variables(session, [tf.saved_model.SERVING], signature_def_map=signatures)
            builder.save()
    return path

