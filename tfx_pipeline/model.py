"""The Trainer's ``run_fn``: a Keras (``tf_keras``, Keras 2) wide & deep binary classifier over the
transformed features, exported with the transform graph inside.

- deep: the z-scored numbers, their missing indicators and an 8-d embedding per categorical -> 64 -> 32;
- wide: one-hot categoricals and numeric buckets; the two logits are summed, then a sigmoid.

Signatures of the exported SavedModel (what ``serving/`` expects, see ``serving/testing.py``):

- ``serving_default``: one RAW feature per input tensor, shape ``[None]``, dtypes from
  :data:`tfx_pipeline.features.RAW_KIND` (float32 / int64 / string); a missing value is NaN, ``""`` or a
  negative integer (:func:`tfx_pipeline.features.missing_serving_value`). The transform graph (``tft_layer``)
  runs inside the model. Output ``probabilities`` ``[None]`` float32.
- ``serving_examples``: ``examples`` ``[None]`` serialized tf.Example (as training read them) -> the same
  ``probabilities``; TFMA's Evaluator and TF Serving's Classify use it.

``fn_args.custom_config`` may set ``batch_size``, ``learning_rate``, ``hidden_units``, ``embedding_dim``.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402
import tf_keras as keras  # noqa: E402
from tfx_bsl.public import tfxio  # noqa: E402

from tfx_pipeline import features as F  # noqa: E402

EXAMPLES_SIGNATURE = "serving_examples"
_DTYPES = {"float": tf.float32, "int": tf.int64, "string": tf.string}


def raw_serving_specs() -> dict:
    return {k: tf.TensorSpec([None], _DTYPES[F.RAW_KIND[k]], name=k) for k in F.FEATURE_KEYS}


def dense_to_sparse(features: dict) -> dict:
    """Raw ``[None]`` tensors -> ``[None, 1]`` SparseTensors without the missing values: the form the
    transform graph was traced with (optional features parse as ``VarLenFeature``)."""
    out = {}
    for key, x in features.items():
        kind = F.RAW_KIND[key]
        if kind == "float":
            present = tf.logical_not(tf.math.is_nan(x))
        elif kind == "string":
            present = tf.not_equal(x, "")
        else:
            present = tf.greater_equal(x, 0)
        idx = tf.where(present)
        indices = tf.concat([idx, tf.zeros_like(idx)], axis=1)
        out[key] = tf.SparseTensor(indices, tf.gather_nd(x, idx), tf.stack([tf.shape(x, out_type=tf.int64)[0],
                                                                            tf.constant(1, tf.int64)]))
    return out


def _input_fn(file_pattern, data_accessor, tf_transform_output, batch_size: int) -> tf.data.Dataset:
    return data_accessor.tf_dataset_factory(
        file_pattern, tfxio.TensorFlowDatasetOptions(batch_size=batch_size, label_key=F.LABEL_KEY),
        tf_transform_output.transformed_metadata.schema).repeat()


def build_model(tf_transform_output, hidden_units=(64, 32), embedding_dim: int = 8,
                learning_rate: float = 0.003) -> keras.Model:
    inputs, deep, wide = {}, [], []
    for key in F.NUMERIC_FEATURES:
        for name in (F.transformed_name(key), F.missing_name(key)):
            inputs[name] = keras.Input(shape=(), name=name, dtype=tf.float32)
            deep.append(keras.layers.Reshape((1,))(inputs[name]))
    for key in F.BUCKET_FEATURES:
        name = F.bucket_name(key)
        inputs[name] = keras.Input(shape=(), name=name, dtype=tf.int64)
        wide.append(keras.layers.CategoryEncoding(num_tokens=F.BUCKETS + 1, output_mode="one_hot")(inputs[name]))
    for key in F.CATEGORICAL_FEATURES:
        name = F.transformed_name(key)
        n = F.categorical_cardinality(key)
        inputs[name] = keras.Input(shape=(), name=name, dtype=tf.int64)
        wide.append(keras.layers.CategoryEncoding(num_tokens=n, output_mode="one_hot")(inputs[name]))
        deep.append(keras.layers.Embedding(n, embedding_dim)(inputs[name]))
    x = keras.layers.concatenate(deep)
    for units in hidden_units:
        x = keras.layers.Dense(units, activation="relu")(x)
    deep_logit = keras.layers.Dense(1)(x)
    wide_logit = keras.layers.Dense(1)(keras.layers.concatenate(wide))
    prob = keras.layers.Activation("sigmoid")(keras.layers.add([deep_logit, wide_logit]))
    model = keras.Model(inputs, keras.layers.Reshape(())(prob))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=keras.losses.BinaryCrossentropy(),
                  metrics=[keras.metrics.AUC(name="auc"), keras.metrics.BinaryAccuracy()])
    return model


def _signatures(model, tf_transform_output) -> dict:
    model.tft_layer = tf_transform_output.transform_features_layer()
    raw_spec = tf_transform_output.raw_feature_spec()
    raw_spec.pop(F.LABEL_KEY, None)

    def score(raw):
        transformed = model.tft_layer(raw)
        return {"probabilities": tf.reshape(model(transformed), [-1])}

    @tf.function(input_signature=[raw_serving_specs()])
    def serve_raw(features):
        return score(dense_to_sparse(features))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(examples):
        return score(tf.io.parse_example(examples, raw_spec))

    return {"serving_default": serve_raw.get_concrete_function(),
            EXAMPLES_SIGNATURE: serve_examples.get_concrete_function()}


def run_fn(fn_args) -> None:
    """TFX Trainer entry point (GenericExecutor)."""
    cfg = dict(fn_args.custom_config or {})
    batch_size = int(cfg.get("batch_size", 256))
    tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
    train = _input_fn(fn_args.train_files, fn_args.data_accessor, tf_transform_output, batch_size)
    evald = _input_fn(fn_args.eval_files, fn_args.data_accessor, tf_transform_output, batch_size)
    model = build_model(tf_transform_output, tuple(cfg.get("hidden_units", (64, 32))),
                        int(cfg.get("embedding_dim", 8)), float(cfg.get("learning_rate", 0.003)))
    model.fit(train, steps_per_epoch=fn_args.train_steps, validation_data=evald,
              validation_steps=fn_args.eval_steps, epochs=1, verbose=2)
    model.save(fn_args.serving_model_dir, save_format="tf", signatures=_signatures(model, tf_transform_output))
