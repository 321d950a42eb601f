"""Continuous training with TFX 1.16: ``training.tips`` (Iceberg, pinned snapshot) -> TF Serving.

The pipeline factory is :func:`tfx_pipeline.pipeline.create_pipeline`; :func:`tfx_pipeline.runner.run_local`
runs it with ``LocalDagRunner``. The model's inputs come from :mod:`tfx_pipeline.features`, which derives them
from :data:`iceberg_schemas.training.TIPS`.

TFX 1.16 and tf.Transform are written against Keras 2 (``tf_keras``); TensorFlow 2.16 gives Keras 3 as
``tf.keras`` unless ``TF_USE_LEGACY_KERAS`` is set before TensorFlow is first imported, so it is set here.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
