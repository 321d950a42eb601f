"""TF Serving's request handlers (Predict, Classify, Regress, GetModelMetadata) on one loaded version.

These are plain functions of a :class:`~serving.servable.Servable` and a request proto, so the same code
answers gRPC, replays warmup records (before a version is available, so outside the manager), and backs
the REST layer. They block; :func:`predict` and friends at the bottom are the async entry points that
check the request's ModelSpec, resolve it through the manager and run the handler in its inference threads.

Each handler checks a request in TF Serving's order and answers each fault with TF Serving's code and
message (the rows of :data:`serving.errors.ERRORS`):

* Predict (servables/tensorflow/predict_util.cc): the signature (FAILED_PRECONDITION if the version has
  none of that name), its method name when ``--enable_signature_method_name_check`` is on (INTERNAL), the
  input names, each input's TensorProto, the output filter, then each input's dtype and shape, then the run.
* Classify / Regress (classifier.cc, regressor.cc, util.cc): the signature (INVALID_ARGUMENT if missing),
  its method name when checked, then its form: one input keyed ``inputs`` fed the serialized examples;
  for Classify outputs ``classes`` (string) and/or ``scores`` (float), each ``[batch_size, num_classes]``;
  for Regress one output ``outputs``, ``[batch_size]`` or ``[batch_size, 1]`` float. A signature of another
  form is refused, as TF Serving refuses it (there is no guessing of other keys).
* GetModelMetadata (get_model_metadata_impl.cc): ``metadata_field`` is checked before the model is looked up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.example import example_pb2
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, input_pb2, model_pb2,
                                     predict_pb2, prediction_log_pb2, regression_pb2)

from serving.errors import fail
from serving.servable import DEFAULT_SIGNATURE, Servable
from serving.tensors import (check_dtypes, check_input_names, check_shapes, data_type_string, dtype_name,
                             encode_output, parse_tensor, shape_string)

if TYPE_CHECKING:
    from serving.batching import Batcher
    from serving.models import ModelManager

SIGNATURE_DEF_FIELD = "signature_def"
MAX_WARMUP_RECORDS = 1000  # TF Serving replays at most this many

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
CLASSIFY_INPUTS, CLASSIFY_CLASSES, CLASSIFY_SCORES = "inputs", "classes", "scores"
REGRESS_INPUTS, REGRESS_OUTPUTS = "inputs", "outputs"


def response_spec(servable: Servable, signature_name: str) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=servable.name, signature_name=signature_name)
    spec.version.value = servable.version
    return spec


def require_model_spec(request) -> None:
    """Every RPC's first check (predict_impl.cc and its siblings): the request names a model."""
    if not request.HasField("model_spec"):
        raise fail("missing_model_spec", "Missing ModelSpec")


# -- Predict ---------------------------------------------------------------------------------------------

def predict_signature(servable: Servable, signature_name: str) -> tuple[str, meta_graph_pb2.SignatureDef]:
    """predict_util.cc ``RunPredict``/``VerifySignature``: the signature's name and SignatureDef."""
    name = signature_name or DEFAULT_SIGNATURE
    signature = servable.signature_def(name, "predict_signature_not_found",
                                       f'Serving signature key "{name}" not found.')
    if servable.options.method_name_check and \
            signature.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
        raise fail("predict_method_name",
                   f"Expected prediction signature method_name to be one of {{{PREDICT_METHOD}, {CLASSIFY_METHOD}, "
                   f"{REGRESS_METHOD}}}. Was: {signature.method_name}")
    return name, signature


def check_output_filter(output_filter, signature: meta_graph_pb2.SignatureDef) -> list[str]:
    """predict_util.cc ``PreProcessPrediction``: the outputs to fetch (all of them without a filter)."""
    seen: list[str] = []
    for alias in output_filter:
        if alias not in signature.outputs:
            raise fail("output_filter_unknown", f"output tensor alias not found in signature: {alias} Outputs "
                                                f"expected to be in the set {{{','.join(sorted(signature.outputs))}}}.")
        if alias in seen:
            raise fail("output_filter_duplicate", f"duplicate output tensor alias: {alias}")
        seen.append(alias)
    return seen


def with_defaults(arrays: dict[str, np.ndarray], signature: meta_graph_pb2.SignatureDef) -> dict[str, np.ndarray]:
    """The inputs, with the signature's default for each one the request left out."""
    for alias, proto in signature.defaults.items():
        if alias not in arrays and alias in signature.inputs:
            arrays[alias] = parse_tensor(alias, proto)
    return arrays


def prepare_predict(servable: Servable, request: predict_pb2.PredictRequest
                    ) -> tuple[str, dict[str, np.ndarray], list[str]]:
    """A PredictRequest checked in TF Serving's order: (signature name, input arrays, outputs to fetch)."""
    name, signature = predict_signature(servable, request.model_spec.signature_name)
    check_input_names(set(request.inputs), signature)
    arrays = {alias: parse_tensor(alias, request.inputs[alias]) for alias in sorted(request.inputs)}
    outputs = check_output_filter(request.output_filter, signature)
    return name, checked_arrays(servable, name, signature, with_defaults(arrays, signature)), outputs


def checked_arrays(servable: Servable, name: str, signature: meta_graph_pb2.SignatureDef,
                   arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The session's checks on inputs that are already arrays: dtypes, then shapes (see serving.tensors)."""
    check_dtypes(arrays, signature)
    check_shapes(arrays, servable.input_specs(name))
    return arrays


def prepare_arrays(servable: Servable, signature_name: str, arrays: dict[str, np.ndarray]
                   ) -> tuple[str, dict[str, np.ndarray]]:
    """:func:`prepare_predict` for inputs already converted to arrays (REST's JSON, the numpy entry point)."""
    name, signature = predict_signature(servable, signature_name)
    check_input_names(set(arrays), signature)
    return name, checked_arrays(servable, name, signature, with_defaults(dict(arrays), signature))


def predict_response(servable: Servable, signature_name: str,
                     outputs: Mapping[str, np.ndarray]) -> predict_pb2.PredictResponse:
    """The PredictResponse for ``outputs`` (alias -> array): the version and signature that computed them, each
    output as predict_util.cc ``PostProcessPredictionResult`` writes it (value fields, or tensor_content)."""
    response = predict_pb2.PredictResponse(model_spec=response_spec(servable, signature_name))
    for name, array in outputs.items():
        response.outputs[name].CopyFrom(encode_output(array, servable.options.tensor_content))
    return response


def run_predict(servable: Servable, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
    """predict_util.cc ``RunPredict`` on one version: the request checked (:func:`prepare_predict`), run, answered.
    Errors are :class:`~serving.errors.ServingError` rows of :data:`serving.errors.ERRORS`."""
    name, arrays, outputs = prepare_predict(servable, request)
    return predict_response(servable, name, servable.run(name, arrays, outputs))


# -- Classify / Regress ------------------------------------------------------------------------------------

def _debug(signature: meta_graph_pb2.SignatureDef) -> str:
    return text_format.MessageToString(signature)


def classification_signature(servable: Servable, signature_name: str) -> tuple[str, meta_graph_pb2.SignatureDef]:
    """classifier.cc ``GetClassificationSignatureDef`` and ``PreProcessClassification``."""
    name = signature_name or DEFAULT_SIGNATURE
    signature = servable.signature_def(name, "example_signature_not_found",
                                       f"No signature was found with the name: {name}")
    if servable.options.method_name_check and signature.method_name != CLASSIFY_METHOD:
        raise fail("classify_method_name", f"Expected classification signature method_name to be "
                                           f"{CLASSIFY_METHOD}. Was: {signature.method_name}")
    if len(signature.inputs) != 1:
        raise fail("classify_signature_invalid", "Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise fail("classify_signature_invalid",
                   f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if CLASSIFY_INPUTS not in signature.inputs:
        raise fail("classify_signature_invalid", f"No classification inputs found in SignatureDef: {_debug(signature)}")
    if CLASSIFY_CLASSES not in signature.outputs and CLASSIFY_SCORES not in signature.outputs:
        raise fail("classify_signature_invalid",
                   f'Expected classification signature outputs to contain at least one of "{CLASSIFY_CLASSES}" or '
                   f'"{CLASSIFY_SCORES}". Signature was: {_debug(signature)}')
    return name, signature


def regression_signature(servable: Servable, signature_name: str) -> tuple[str, meta_graph_pb2.SignatureDef]:
    """regressor.cc ``GetRegressionSignatureDef`` and ``PreProcessRegression``."""
    name = signature_name or DEFAULT_SIGNATURE
    signature = servable.signature_def(name, "example_signature_not_found",
                                       f"No signature was found with the name: {name}")
    if servable.options.method_name_check and signature.method_name != REGRESS_METHOD:
        raise fail("regress_method_name", f"Expected regression signature method_name to be {REGRESS_METHOD}. "
                                          f"Was: {signature.method_name}")
    if len(signature.inputs) != 1:
        raise fail("regress_signature_invalid", "Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise fail("regress_signature_invalid", "Expected one output Tensor.")
    if REGRESS_INPUTS not in signature.inputs:
        raise fail("regress_signature_invalid", f"No regression inputs found in SignatureDef: {_debug(signature)}")
    if REGRESS_OUTPUTS not in signature.outputs:
        raise fail("regress_signature_invalid", f"No regression outputs found in SignatureDef: {_debug(signature)}")
    return name, signature


def serialized_examples(model_input: input_pb2.Input) -> list[bytes]:
    """The request's examples, serialized; with a context, the context's features merged into each (as TF
    Serving concatenates the serialized context and example, so the example's features win)."""
    kind = model_input.WhichOneof("kind")
    if kind == "example_list":
        examples = list(model_input.example_list.examples)
    elif kind == "example_list_with_context":
        context = model_input.example_list_with_context.context
        examples = []
        for example in model_input.example_list_with_context.examples:
            merged = example_pb2.Example()
            merged.CopyFrom(context)
            merged.MergeFrom(example)
            examples.append(merged)
    else:
        examples = []
    if not examples:
        raise fail("empty_input", "Input is empty.")
    return [example.SerializeToString() for example in examples]


def _run_on_examples(servable: Servable, name: str, signature: meta_graph_pb2.SignatureDef,
                     model_input: input_pb2.Input, outputs: list[str]) -> tuple[dict[str, np.ndarray], int]:
    examples = serialized_examples(model_input)
    alias = CLASSIFY_INPUTS  # the same key for Regress
    want = signature.inputs[alias].dtype
    if want != types_pb2.DT_STRING:  # the session's feed check
        raise fail("input_dtype_mismatch", f"Expects arg[0] to be {data_type_string(want)} but string is provided")
    arrays = {alias: np.array(examples, dtype=object)}
    check_shapes(arrays, servable.input_specs(name))
    return servable.run(name, arrays, outputs), len(examples)


def _check_matrix(kind: str, array: np.ndarray, dtype: int, count: int) -> None:
    """classifier.cc ``PostProcessClassificationResult``'s checks of the classes or scores output."""
    if array.ndim != 2:
        raise fail("classify_output_invalid",
                   f"Expected Tensor shape: [batch_size num_classes] but got {shape_string(array.shape)}")
    have = tf.dtypes.as_dtype(array.dtype).as_datatype_enum if array.dtype != object else types_pb2.DT_STRING
    if have != dtype:
        raise fail("classify_output_invalid", f"Expected {kind} Tensor of {dtype_name(dtype)}. Got: {dtype_name(have)}")
    if array.shape[0] != count:
        raise fail("classify_output_invalid", f"Expected {kind} output batch size of {count}. Got: {array.shape[0]}")


def run_classify(servable: Servable,
                 request: classification_pb2.ClassificationRequest) -> classification_pb2.ClassificationResponse:
    """classifier.cc ``RunClassify``: one Classifications per example, ``num_classes`` (label, score) pairs each
    (a label is "" without a ``classes`` output, a score 0 without ``scores``)."""
    name, signature = classification_signature(servable, request.model_spec.signature_name)
    wanted = [key for key in (CLASSIFY_CLASSES, CLASSIFY_SCORES) if key in signature.outputs]
    outputs, count = _run_on_examples(servable, name, signature, request.input, wanted)
    classes, scores = outputs.get(CLASSIFY_CLASSES), outputs.get(CLASSIFY_SCORES)
    if classes is not None:
        _check_matrix("classes", classes, types_pb2.DT_STRING, count)
    if scores is not None:
        _check_matrix("scores", scores, types_pb2.DT_FLOAT, count)
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise fail("classify_output_invalid", f"Tensors class and score should match in dim_size(1). Got "
                                              f"{classes.shape[1]} vs. {scores.shape[1]}")
    width = (classes if classes is not None else scores).shape[1]
    response = classification_pb2.ClassificationResponse(model_spec=response_spec(servable, name))
    for row in range(count):
        result = response.result.classifications.add()
        for k in range(width):
            label = classes[row, k] if classes is not None else b""
            result.classes.add(label=label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label),
                               score=float(scores[row, k]) if scores is not None else 0.0)
    return response


def run_regress(servable: Servable,
                request: regression_pb2.RegressionRequest) -> regression_pb2.RegressionResponse:
    """regressor.cc ``RunRegress``: one float per example, from ``outputs`` ``[batch]`` or ``[batch, 1]``."""
    name, signature = regression_signature(servable, request.model_spec.signature_name)
    outputs, count = _run_on_examples(servable, name, signature, request.input, [REGRESS_OUTPUTS])
    values = outputs[REGRESS_OUTPUTS]
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise fail("regress_output_invalid", f"Expected output Tensor shape to be either [batch_size] or "
                                             f"[batch_size, 1] but got {shape_string(values.shape)}")
    if values.shape[0] != count:
        raise fail("regress_output_invalid", f"Input batch size did not match output batch size: {count} vs. "
                                             f"{values.shape[0]}")
    if values.dtype != np.float32:
        have = tf.dtypes.as_dtype(values.dtype).as_datatype_enum if values.dtype != object else types_pb2.DT_STRING
        raise fail("regress_output_invalid", f"Expected output Tensor of DT_FLOAT.  Got: {dtype_name(have)}")
    response = regression_pb2.RegressionResponse(model_spec=response_spec(servable, name))
    for value in values.reshape(-1):
        response.result.regressions.add(value=float(value))
    return response


# -- GetModelMetadata --------------------------------------------------------------------------------------

def check_metadata_fields(request: get_model_metadata_pb2.GetModelMetadataRequest) -> None:
    """get_model_metadata_impl.cc ``ValidateGetModelMetadataRequest`` (before the model is looked up)."""
    if not request.metadata_field:
        raise fail("metadata_field_missing", "GetModelMetadataRequest must specify at least one metadata_field")
    for field in request.metadata_field:
        if field != SIGNATURE_DEF_FIELD:
            raise fail("metadata_field_unsupported", f"Metadata field {field} is not supported")


def model_metadata(servable: Servable, request: get_model_metadata_pb2.GetModelMetadataRequest
                   ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """The version's SignatureDefs, packed as TF Serving packs them: a SignatureDefMap in an Any."""
    check_metadata_fields(request)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for name, signature_def in servable.signature_defs.items():
        signature_map.signature_def[name].CopyFrom(signature_def)
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
    return response


# -- warmup ------------------------------------------------------------------------------------------------

def replay_warmup(servable: Servable, path: str) -> int:
    """Replay the PredictionLog records in ``path`` (TF Serving's warmup file), each
    ``options.warmup_iterations`` times; the count of records replayed.

    Any failing record fails the load, as in TF Serving: a version that cannot answer its own warmup
    requests must never take traffic.
    """
    runs: dict[str, Callable] = {"predict_log": lambda log: run_predict(servable, log.predict_log.request),
                                 "classify_log": lambda log: run_classify(servable, log.classify_log.request),
                                 "regress_log": lambda log: run_regress(servable, log.regress_log.request)}
    replayed = 0
    for record in tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog.FromString(record)
        kind = log.WhichOneof("log_type")
        if kind not in runs:
            raise ValueError(f"warmup record {replayed} is a {kind}, which this server cannot replay")
        for _ in range(max(1, servable.options.warmup_iterations)):
            runs[kind](log)
        replayed += 1
    return replayed


# -- the async entry points: check the ModelSpec, resolve it, run the handler in an inference thread --------

async def predict(manager: "ModelManager", request: predict_pb2.PredictRequest,
                  delay_s: float = 0.0, *, batcher: "Batcher | None" = None) -> predict_pb2.PredictResponse:
    """Predict on the version ``request`` names; through ``batcher`` (server-side batching) if given."""
    require_model_spec(request)
    if batcher is not None:
        return await batcher.predict(manager, request, delay_s)
    return await manager.call(request.model_spec, lambda s: run_predict(s, request), delay_s=delay_s)


async def classify(manager: "ModelManager", request: classification_pb2.ClassificationRequest,
                   delay_s: float = 0.0) -> classification_pb2.ClassificationResponse:
    """Classify (classification_service.cc): the ModelSpec checked and resolved, :func:`run_classify` in a thread."""
    require_model_spec(request)
    return await manager.call(request.model_spec, lambda s: run_classify(s, request), delay_s=delay_s)


async def regress(manager: "ModelManager", request: regression_pb2.RegressionRequest,
                  delay_s: float = 0.0) -> regression_pb2.RegressionResponse:
    """Regress (regression_service.cc): the ModelSpec checked and resolved, :func:`run_regress` in a thread."""
    require_model_spec(request)
    return await manager.call(request.model_spec, lambda s: run_regress(s, request), delay_s=delay_s)


async def get_model_metadata(manager: "ModelManager", request: get_model_metadata_pb2.GetModelMetadataRequest
                             ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    """GetModelMetadata (get_model_metadata_impl.cc): the ModelSpec, then the fields, then the version."""
    require_model_spec(request)
    check_metadata_fields(request)
    return await manager.call(request.model_spec, lambda s: model_metadata(s, request))
