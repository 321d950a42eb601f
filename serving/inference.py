"""TF Serving's request handlers (Predict, Classify, Regress, GetModelMetadata) on one loaded version.

These are plain functions of a :class:`~serving.servable.Servable` and a request proto, so the same code
answers gRPC, replays warmup records (before a version is available, so outside the manager), and can
back a REST layer. They block; :func:`predict` and friends at the bottom are the async entry points that
resolve the model spec through the manager and run the handler in its inference threads.

Classify and Regress take ``tf.Example`` inputs. TF Serving (with its default
``--enable_signature_method_name_check=false``) runs them on a predict signature too, if it has one input
keyed ``inputs`` and outputs keyed ``classes``/``scores`` (``[batch, classes]``) or ``outputs``. A Keras
export's "serialized examples" signature rarely uses those keys, so this is a little more lenient, and
otherwise the same: any single string input is fed the serialized examples; without ``classes``/``scores``
a single float output is the scores, without ``outputs`` a single output is the regression; and a rank-1
output means one value per example.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, input_pb2,
                                     model_pb2, predict_pb2, prediction_log_pb2, regression_pb2)

from serving.errors import invalid_argument
from serving.servable import DEFAULT_SIGNATURE, Servable
from serving.tensors import decode_inputs, encode_output

if TYPE_CHECKING:
    from serving.batching import Batcher
    from serving.models import ModelManager

SIGNATURE_DEF_FIELD = "signature_def"
MAX_WARMUP_RECORDS = 1000  # TF Serving replays at most this many


def response_spec(servable: Servable, signature_name: str) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=servable.name, signature_name=signature_name)
    spec.version.value = servable.version
    return spec


def run_predict(servable: Servable, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
    signature = request.model_spec.signature_name or DEFAULT_SIGNATURE
    inputs = decode_inputs(request.inputs, servable.input_specs(signature))
    outputs = servable.run(signature, inputs, request.output_filter)
    response = predict_pb2.PredictResponse(model_spec=response_spec(servable, signature))
    for name, array in outputs.items():
        response.outputs[name].CopyFrom(encode_output(array))
    return response


def serialized_examples(model_input: input_pb2.Input) -> list[bytes]:
    """The request's examples, serialized; with a context, the context's features merged into each."""
    kind = model_input.WhichOneof("kind")
    if kind == "example_list":
        examples = list(model_input.example_list.examples)
    elif kind == "example_list_with_context":
        context = model_input.example_list_with_context.context
        examples = []
        for example in model_input.example_list_with_context.examples:
            merged = example_pb2.Example()
            merged.CopyFrom(context)
            merged.MergeFrom(example)  # the example's own features win over the context's
            examples.append(merged)
    else:
        examples = []
    if not examples:
        raise invalid_argument("Input is empty.")
    return [example.SerializeToString() for example in examples]


def _run_on_examples(servable: Servable, model_spec: model_pb2.ModelSpec,
                     model_input: input_pb2.Input) -> tuple[str, dict[str, np.ndarray], int]:
    signature = model_spec.signature_name or DEFAULT_SIGNATURE
    specs = servable.input_specs(signature)
    if len(specs) != 1 or next(iter(specs.values())).dtype != tf.string:
        raise invalid_argument(f"signature {signature!r} must take exactly one string input (serialized "
                               f"tf.Example), but takes {sorted(specs)}")
    examples = serialized_examples(model_input)
    outputs = servable.run(signature, {next(iter(specs)): np.array(examples, dtype=object)})
    return signature, outputs, len(examples)


def _per_example(name: str, array: np.ndarray, count: int) -> np.ndarray:
    """``array`` as ``[count, k]``, refusing any other batch size or rank."""
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if array.ndim != 2 or array.shape[0] != count:
        raise invalid_argument(f"output {name!r} has shape {list(array.shape)}; expected [{count}] or "
                               f"[{count}, k], one row per example")
    return array


def run_classify(servable: Servable,
                 request: classification_pb2.ClassificationRequest) -> classification_pb2.ClassificationResponse:
    signature, outputs, count = _run_on_examples(servable, request.model_spec, request.input)
    classes, scores = outputs.get("classes"), outputs.get("scores")
    if classes is None and scores is None:
        floats = [name for name, array in outputs.items() if array.dtype.kind == "f"]
        if len(floats) != 1:
            raise invalid_argument(f"signature {signature!r} has no 'classes' or 'scores' output, nor a "
                                   f"single float output to use as scores: {sorted(outputs)}")
        scores = outputs[floats[0]]
    scores = None if scores is None else _per_example("scores", scores, count)
    classes = None if classes is None else _per_example("classes", classes, count)
    if scores is not None and classes is not None and scores.shape != classes.shape:
        raise invalid_argument(f"outputs 'classes' {list(classes.shape)} and 'scores' {list(scores.shape)} "
                               f"differ in shape")
    response = classification_pb2.ClassificationResponse(model_spec=response_spec(servable, signature))
    for row in range(count):
        result = response.result.classifications.add()
        width = (scores if scores is not None else classes).shape[1]
        for k in range(width):
            label = classes[row, k] if classes is not None else b""
            result.classes.add(label=label.decode() if isinstance(label, bytes) else str(label),
                               score=float(scores[row, k]) if scores is not None else 0.0)
    return response


def run_regress(servable: Servable,
                request: regression_pb2.RegressionRequest) -> regression_pb2.RegressionResponse:
    signature, outputs, count = _run_on_examples(servable, request.model_spec, request.input)
    if "outputs" in outputs:
        name = "outputs"
    elif len(outputs) == 1:
        name = next(iter(outputs))
    else:
        raise invalid_argument(f"signature {signature!r} has no 'outputs' output, nor a single output: "
                               f"{sorted(outputs)}")
    values = _per_example(name, outputs[name], count)
    if values.shape[1] != 1:
        raise invalid_argument(f"output {name!r} has shape {list(values.shape)}; a regression gives one "
                               f"value per example")
    response = regression_pb2.RegressionResponse(model_spec=response_spec(servable, signature))
    for value in values[:, 0]:
        response.result.regressions.add(value=float(value))
    return response


def model_metadata(servable: Servable, request: get_model_metadata_pb2.GetModelMetadataRequest
                   ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """The version's SignatureDefs, packed as TF Serving packs them: a SignatureDefMap in an Any."""
    fields = list(request.metadata_field)
    if not fields:
        raise invalid_argument("GetModelMetadataRequest must specify at least one metadata_field")
    unsupported = [field for field in fields if field != SIGNATURE_DEF_FIELD]
    if unsupported:
        raise invalid_argument(f"Metadata field {unsupported[0]} is not supported")
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for name, signature_def in servable.signature_defs.items():
        signature_map.signature_def[name].CopyFrom(signature_def)
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
    return response


def replay_warmup(servable: Servable, path: str) -> int:
    """Replay the PredictionLog records in ``path`` (TF Serving's warmup file); the count replayed.

    Any failing record fails the load, as in TF Serving: a version that cannot answer its own warmup
    requests must never take traffic.
    """
    replayed = 0
    for record in tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog.FromString(record)
        kind = log.WhichOneof("log_type")
        if kind == "predict_log":
            run_predict(servable, log.predict_log.request)
        elif kind == "classify_log":
            run_classify(servable, log.classify_log.request)
        elif kind == "regress_log":
            run_regress(servable, log.regress_log.request)
        else:
            raise ValueError(f"warmup record {replayed} is a {kind}, which this server cannot replay")
        replayed += 1
    return replayed


# The async entry points: resolve the spec through the manager, run the handler in its inference threads.

async def predict(manager: "ModelManager", request: predict_pb2.PredictRequest,
                  delay_s: float = 0.0, *, batcher: "Batcher | None" = None) -> predict_pb2.PredictResponse:
    """Predict on the version ``request`` names; through ``batcher`` (server-side batching) if given."""
    if batcher is not None:
        return await batcher.predict(manager, request, delay_s)
    return await manager.call(request.model_spec, lambda s: run_predict(s, request), delay_s=delay_s)


async def classify(manager: "ModelManager", request: classification_pb2.ClassificationRequest,
                   delay_s: float = 0.0) -> classification_pb2.ClassificationResponse:
    return await manager.call(request.model_spec, lambda s: run_classify(s, request), delay_s=delay_s)


async def regress(manager: "ModelManager", request: regression_pb2.RegressionRequest,
                  delay_s: float = 0.0) -> regression_pb2.RegressionResponse:
    return await manager.call(request.model_spec, lambda s: run_regress(s, request), delay_s=delay_s)


async def get_model_metadata(manager: "ModelManager", request: get_model_metadata_pb2.GetModelMetadataRequest
                             ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    return await manager.call(request.model_spec, lambda s: model_metadata(s, request))
