"""tf.Transform ``preprocessing_fn`` for the tips model: the features of :mod:`tfx_pipeline.features`.

Every raw feature may be missing (a NULL column is left out of its tf.Example): a view's TTL expired, a trip
without a company. Treatment, by kind:

- numbers: ``log1p`` (all are non-negative and heavy-tailed: fares up to $700, trips up to 1,710 miles), then
  z-score over the present values (``tft.scale_to_z_score`` on the sparse input), clipped to [-5, 5]; a
  missing value becomes 0 (the mean) and sets ``<name>_missing_xf`` to 1;
- ``BUCKET_FEATURES`` also: ``tft.bucketize`` into ``BUCKETS`` quantile buckets (missing -> bucket of 0);
- strings and integer ids: a vocabulary (top ``VOCAB_SIZE``, ``OOV_BUCKETS`` hashed out-of-vocabulary
  buckets); a missing value is the token ``__missing__``, which gets an id of its own if it is frequent;
- the label: int64 0/1.

Outputs are dense, shape ``[batch]``.
"""

import tensorflow as tf
import tensorflow_transform as tft

from tfx_pipeline import features as F

MISSING_TOKEN = "__missing__"
Z_CLIP = 5.0


def _as_column(x, default):
    """A ``[batch]`` dense tensor from a ``[batch, 1]`` sparse/dense feature, ``default`` where missing."""
    if isinstance(x, tf.sparse.SparseTensor):
        x = tf.sparse.to_dense(tf.SparseTensor(x.indices, x.values, [x.dense_shape[0], 1]), default)
    elif x.shape.rank == 1:
        return x
    return tf.squeeze(x, axis=1)


def _presence(x):
    if isinstance(x, tf.sparse.SparseTensor):
        ones = tf.SparseTensor(x.indices, tf.ones_like(x.values, tf.float32), [x.dense_shape[0], 1])
        return tf.squeeze(tf.sparse.to_dense(ones, 0.0), axis=1)
    return tf.ones_like(_as_column(tf.cast(x, tf.float32), 0.0))


def _map_values(x, fn):
    if isinstance(x, tf.sparse.SparseTensor):
        return tf.SparseTensor(x.indices, fn(x.values), x.dense_shape)
    return fn(x)


def preprocessing_fn(inputs):
    outputs = {}
    for key in F.NUMERIC_FEATURES:
        x = _map_values(inputs[key], lambda v: tf.math.log1p(tf.maximum(tf.cast(v, tf.float32), 0.0)))
        z = tft.scale_to_z_score(x)
        outputs[F.transformed_name(key)] = tf.clip_by_value(_as_column(z, 0.0), -Z_CLIP, Z_CLIP)
        outputs[F.missing_name(key)] = 1.0 - _presence(inputs[key])
        if key in F.BUCKET_FEATURES:
            outputs[F.bucket_name(key)] = tft.bucketize(_as_column(x, 0.0), F.BUCKETS)
    for key in F.CATEGORICAL_FEATURES:
        x = inputs[key]
        if x.dtype != tf.string:
            x = _map_values(x, tf.strings.as_string)
        outputs[F.transformed_name(key)] = tft.compute_and_apply_vocabulary(
            _as_column(x, MISSING_TOKEN), top_k=F.VOCAB_SIZE, num_oov_buckets=F.OOV_BUCKETS,
            vocab_filename=F.vocab_filename(key))
    outputs[F.LABEL_KEY] = tf.cast(_as_column(inputs[F.LABEL_KEY], tf.constant(0, inputs[F.LABEL_KEY].dtype)),
                                   tf.int64)
    return outputs
