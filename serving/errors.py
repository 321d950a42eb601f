"""Every error a request can get, with the gRPC status code TF Serving answers it with: :data:`ERRORS`.

:data:`ERRORS` is the one table of codes. Each row names an error path of Predict, Classify, Regress,
GetModelMetadata, GetModelStatus, HandleReloadConfigRequest or the REST API, the code
``tensorflow_model_server`` returns for it, and the TF Serving source (tensorflow/serving, or TensorFlow
where TF Serving passes TensorFlow's status through) that decides it. Code raises errors only through
:func:`fail`, so no error can carry a code that is not in the table. The REST API derives its HTTP status
from the code, with TF Serving's mapping (:data:`HTTP_STATUS`, http_server.cc ``ToHTTPStatusCode``).
``tests/integration/serving/test_conformance.py`` triggers every row through the public API and checks the
code, against this server or a real TF Serving.

Messages are TF Serving's own text where TF Serving writes it. They never carry a traceback or a path of
this server's code: :func:`scrub` cleans TensorFlow's messages (a failing op's message names where the
graph was traced, with Python file paths), and anything that is not a :class:`ServingError` is a bug,
answered INTERNAL with a fixed message while the details go to the server log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import grpc

C = grpc.StatusCode

# tensorflow.error.Code and grpc.StatusCode share their numbers; this turns one into the other.
_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True)
class ErrorRow:
    """One error path: its gRPC code (None: the code of TensorFlow's own status, passed through), the
    TF Serving source that decides it, and what triggers it."""
    code: grpc.StatusCode | None
    source: str
    when: str


# The table. Sources are paths in github.com/tensorflow/serving unless they start with tensorflow/ (TensorFlow).
ERRORS: dict[str, ErrorRow] = {
    # -- every RPC: the ModelSpec and the version it names ------------------------------------------------
    "missing_model_spec": ErrorRow(
        C.INVALID_ARGUMENT, "servables/tensorflow/predict_impl.cc, classification_service.cc, "
        "regression_service.cc, get_model_metadata_impl.cc; model_servers/get_model_status_impl.cc",
        "the request has no model_spec: 'Missing ModelSpec'"),
    "no_model_name": ErrorRow(
        C.INVALID_ARGUMENT, "model_servers/server_core.cc ServableRequestFromModelSpec",
        "model_spec.name is empty (Predict, Classify, Regress, GetModelMetadata)"),
    "unknown_label": ErrorRow(
        C.INVALID_ARGUMENT, "model_servers/server_core.cc GetModelVersionForLabel",
        "model_spec.version_label is not a label of the model (or the model is unknown)"),
    "servable_not_found": ErrorRow(
        C.NOT_FOUND, "core/basic_manager.cc ServingMap::GetUntypedServableHandle",
        "no AVAILABLE version for the model, the version or the version a label names"),
    # -- Predict --------------------------------------------------------------------------------------------
    "predict_signature_not_found": ErrorRow(
        C.FAILED_PRECONDITION, "servables/tensorflow/predict_util.cc RunPredict",
        "model_spec.signature_name is not a signature of the version"),
    "predict_method_name": ErrorRow(
        C.INTERNAL, "servables/tensorflow/predict_util.cc VerifySignature",
        "with --enable_signature_method_name_check, a signature whose method_name is not predict, classify "
        "or regress"),
    "input_size_mismatch": ErrorRow(
        C.INVALID_ARGUMENT, "servables/tensorflow/predict_util.cc VerifyRequestInputsSize",
        "more inputs than the signature has, or fewer (none: an empty request)"),
    "input_alias_not_found": ErrorRow(
        C.INVALID_ARGUMENT, "tensorflow/cc/saved_model/util.cc GetInputValues",
        "as many inputs as the signature has, but one is named differently"),
    "tensor_parsing_error": ErrorRow(
        C.INVALID_ARGUMENT, "tensorflow/cc/saved_model/util.cc GetInputValues (Tensor::FromProto)",
        "a TensorProto that is not a tensor: bad dtype or shape, content that does not fit the shape"),
    "input_dtype_mismatch": ErrorRow(
        C.INVALID_ARGUMENT, "tensorflow/core/framework/function.cc FunctionCallFrame::SetArgs",
        "an input of another dtype than the signature's"),
    "input_shape_mismatch": ErrorRow(
        C.INVALID_ARGUMENT, "tensorflow/core/framework (the graph's ops reject the shape)",
        "an input whose shape the signature cannot take"),
    "output_filter_unknown": ErrorRow(
        C.INVALID_ARGUMENT, "servables/tensorflow/predict_util.cc PreProcessPrediction",
        "output_filter names an output the signature does not have"),
    "output_filter_duplicate": ErrorRow(
        C.INVALID_ARGUMENT, "servables/tensorflow/predict_util.cc PreProcessPrediction",
        "output_filter names an output twice"),
    "model_op_failed": ErrorRow(
        None, "tensorflow/core/common_runtime/direct_session.cc (Session::Run's status, passed through)",
        "an op of the model fails, e.g. ParseExample on a feature of another type: INVALID_ARGUMENT"),
    # -- Classify / Regress -----------------------------------------------------------------------------------
    "example_signature_not_found": ErrorRow(
        C.INVALID_ARGUMENT, "servables/tensorflow/classifier.cc GetClassificationSignatureDef, regressor.cc "
        "GetRegressionSignatureDef", "model_spec.signature_name is not a signature of the version"),
    "classify_method_name": ErrorRow(
        C.INVALID_ARGUMENT, "servables/tensorflow/classifier.cc GetClassificationSignatureDef",
        "with --enable_signature_method_name_check, Classify on a signature that is not a classify one"),
    "regress_method_name": ErrorRow(
        C.INVALID_ARGUMENT, "servables/tensorflow/regressor.cc GetRegressionSignatureDef",
        "with --enable_signature_method_name_check, Regress on a signature that is not a regress one"),
    "classify_signature_invalid": ErrorRow(
        C.INVALID_ARGUMENT, "servables/tensorflow/classifier.cc PreProcessClassification",
        "Classify on a signature without one 'inputs' input and a 'classes' and/or 'scores' output"),
    "regress_signature_invalid": ErrorRow(
        C.INVALID_ARGUMENT, "servables/tensorflow/regressor.cc PreProcessRegression",
        "Regress on a signature without one 'inputs' input and one 'outputs' output"),
    "empty_input": ErrorRow(
        C.INVALID_ARGUMENT, "servables/tensorflow/util.cc InputToSerializedExampleTensor",
        "Classify or Regress with no examples: 'Input is empty.'"),
    "classify_output_invalid": ErrorRow(
        C.INVALID_ARGUMENT, "servables/tensorflow/classifier.cc PostProcessClassificationResult",
        "classes/scores that are not [batch_size, num_classes] of string/float"),
    "regress_output_invalid": ErrorRow(
        C.INVALID_ARGUMENT, "servables/tensorflow/regressor.cc PostProcessRegressionResult",
        "outputs that are not [batch_size] or [batch_size, 1] float"),
    # -- GetModelMetadata / GetModelStatus ------------------------------------------------------------------
    "metadata_field_missing": ErrorRow(
        C.INVALID_ARGUMENT, "servables/tensorflow/get_model_metadata_impl.cc ValidateGetModelMetadataRequest",
        "no metadata_field"),
    "metadata_field_unsupported": ErrorRow(
        C.INVALID_ARGUMENT, "servables/tensorflow/get_model_metadata_impl.cc ValidateGetModelMetadataRequest",
        "a metadata_field other than signature_def"),
    "status_version_not_found": ErrorRow(
        C.NOT_FOUND, "model_servers/get_model_status_impl.cc GetModelStatusWithModelSpec",
        "GetModelStatus for a version the server has never seen"),
    "status_model_not_found": ErrorRow(
        C.NOT_FOUND, "model_servers/get_model_status_impl.cc GetModelStatusWithModelSpec",
        "GetModelStatus for a model without any version (a version_label is ignored)"),
    # -- HandleReloadConfigRequest ------------------------------------------------------------------------------
    "reload_config_type": ErrorRow(
        C.INVALID_ARGUMENT, "model_servers/model_service_impl.cc HandleReloadConfigRequest",
        "a config that is not a model_config_list"),
    "reload_config_invalid": ErrorRow(
        C.INVALID_ARGUMENT, "model_servers/server_core.cc ValidateModelConfigList",
        "a model listed twice, or an entry without a name or base_path, or an unknown platform"),
    "config_invalid": ErrorRow(
        C.INVALID_ARGUMENT, "model_servers/server.cc BuildAndStart (ParseProtoTextFile)",
        "a --model_config_file or --batching_parameters_file that does not parse or holds bad values"),
    "label_not_available": ErrorRow(
        C.FAILED_PRECONDITION, "model_servers/server_core.cc UpdateModelVersionLabelMap",
        "a label on a version that is not AVAILABLE"),
    # -- server-side batching (--enable_batching) -------------------------------------------------------------
    "batch_too_large": ErrorRow(
        C.INVALID_ARGUMENT, "tensorflow/core/kernels/batching_util/shared_batch_scheduler.h",
        "a request with more rows than max_batch_size"),
    "batch_queue_full": ErrorRow(
        C.UNAVAILABLE, "tensorflow/core/kernels/batching_util/shared_batch_scheduler.h",
        "max_enqueued_batches batches already waiting"),
    "batch_output_unsplittable": ErrorRow(
        C.FAILED_PRECONDITION, "batching/batching_session.cc SplitOutputTensors",
        "a batched output without dimensions, or whose 0th dimension is not the batch size"),
    # -- transport ---------------------------------------------------------------------------------------------
    "message_too_large": ErrorRow(
        C.RESOURCE_EXHAUSTED, "model_servers/server.cc (gRPC's max receive message length)",
        "a gRPC request over the receive limit (--grpc_channel_arguments=grpc.max_receive_message_length)"),
    # -- REST ------------------------------------------------------------------------------------------------------
    "rest_malformed_request": ErrorRow(
        C.INVALID_ARGUMENT, "model_servers/http_rest_api_handler.cc ProcessRequest",
        "a /v1/ path or method the API does not have: 'Malformed request'"),
    "rest_missing_model_name": ErrorRow(
        C.INVALID_ARGUMENT, "model_servers/http_rest_api_handler.cc ProcessModelStatusRequest",
        "GET /v1/models without a model name"),
    "rest_bad_version": ErrorRow(
        C.INVALID_ARGUMENT, "model_servers/http_rest_api_util.cc ParseModelInfo",
        "a version in the path that is not an int64"),
    "rest_signature_not_found": ErrorRow(
        C.INVALID_ARGUMENT, "model_servers/http_rest_api_handler.cc GetInfoMap",
        ":predict with a signature_name the version does not have"),
    "json_parse_error": ErrorRow(
        C.INVALID_ARGUMENT, "util/json_tensor.cc ParseJson", "a body that is not a JSON object"),
    "json_invalid_request": ErrorRow(
        C.INVALID_ARGUMENT, "util/json_tensor.cc", "JSON of the wrong form, or values the input's dtype cannot "
        "take (including base64 that does not decode)"),
    "json_conversion_unimplemented": ErrorRow(
        C.UNIMPLEMENTED, "util/json_tensor.cc AddValueToTensor",
        "JSON for an input of a dtype JSON cannot express (half, bfloat16, uint16, complex, ...) in 'inputs'"),
    "json_output_unwritable": ErrorRow(
        C.INVALID_ARGUMENT, "util/json_tensor.cc AddSingleValueAndAdvance",
        "an output of a dtype JSON cannot express (half, uint16, ...)"),
    "cors_preflight_no_origin": ErrorRow(
        C.FAILED_PRECONDITION, "model_servers/http_server.cc RestApiRequestDispatcher::ProcessRequest",
        "an OPTIONS request without an http(s):// Origin header"),
    "rest_timeout": ErrorRow(
        C.DEADLINE_EXCEEDED, "model_servers/http_rest_api_handler.cc (RunOptions.timeout_in_ms)",
        "inference on a REST request takes longer than --rest_api_timeout_in_ms"),
    "request_body_too_large": ErrorRow(
        C.RESOURCE_EXHAUSTED, "(ours: TF Serving's HTTP server reads any size)",
        "a REST body over the server's limit (HTTP 413)"),
    # -- anything else --------------------------------------------------------------------------------------------
    "internal": ErrorRow(
        C.INTERNAL, "(a bug in this server)", "anything unexpected; the details go to the server log only"),
}

# TF Serving's http_server.cc ToHTTPStatusCode; a code not listed is 500.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    C.CANCELLED: 499,
    C.INVALID_ARGUMENT: 400,
    C.DEADLINE_EXCEEDED: 504,
    C.NOT_FOUND: 404,
    C.ALREADY_EXISTS: 409,
    C.PERMISSION_DENIED: 403,
    C.RESOURCE_EXHAUSTED: 429,
    C.FAILED_PRECONDITION: 400,
    C.ABORTED: 409,
    C.OUT_OF_RANGE: 400,
    C.UNIMPLEMENTED: 501,
    C.UNAVAILABLE: 503,
    C.UNAUTHENTICATED: 401,
}

INTERNAL_MESSAGE = "Internal error in the model server; the server's log has the details"
GRPC_MESSAGE_LIMIT = 1024  # model_servers/grpc_status_util.cc ToGRPCStatus


class ServingError(Exception):
    """A request's error: ``code`` (a ``grpc.StatusCode``), ``message`` (TF Serving's text) and ``row``
    (its key in :data:`ERRORS`)."""

    def __init__(self, code: grpc.StatusCode, message: str, row: str = ""):
        super().__init__(message)
        self.code = code
        self.message = message
        self.row = row

    @property
    def code_number(self) -> int:
        """The numeric code, as ``tensorflow.error.Code`` and ``StatusProto.error_code`` spell it."""
        return self.code.value[0]

    @property
    def http_status(self) -> int:
        return http_status(self.code)


def fail(row: str, message: str, code: grpc.StatusCode | None = None) -> ServingError:
    """The error of table row ``row`` (a key of :data:`ERRORS`) with ``message``. ``code`` is only taken for
    rows whose code is TensorFlow's own (``model_op_failed``); anywhere else the table's code wins."""
    entry = ERRORS[row]  # KeyError: a row missing from the table is a bug
    if entry.code is None:
        if code is None:
            raise ValueError(f"error row {row!r} takes the code of TensorFlow's status; pass it")
        return ServingError(code, message, row)
    return ServingError(entry.code, message, row)


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status TF Serving's REST API answers ``code`` with (500 for a code it does not map)."""
    return HTTP_STATUS.get(code, 500)


def status_code(number: int) -> grpc.StatusCode:
    """The gRPC status code with TensorFlow error code ``number`` (UNKNOWN for a number neither knows)."""
    return _BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def grpc_details(message: str) -> str:
    """``message`` as TF Serving sends it in a gRPC status: cut at 1,024 characters, then "...TRUNCATED"."""
    if len(message) > GRPC_MESSAGE_LIMIT:
        return message[:GRPC_MESSAGE_LIMIT] + "...TRUNCATED"
    return message


# TensorFlow's Python runtime wraps an op's error as "Graph execution error:\n\nDetected at node N defined at
# (most recent call last):\n  File "/path/x.py", line 4, in f\n...\n\n<the op's message> [Op:__inference_f_12]".
# TF Serving's C++ session gives only "<the op's message>"; the rest names this server's files.
_HEADER = re.compile(r"^\s*Graph execution error:\s*$")
_DETECTED = re.compile(r"^\s*Detected (?:at|in) node .*(?:\(most recent call last\):|:)\s*$")
_FRAME = re.compile(r"^\s+(?:File \".*\", line \d+.*|\S.*)$")
_OP_SUFFIX = re.compile(r"\s*\[Op:[^\]]*\](?: name: \S*)?\s*$")
_PATH = re.compile(r"File \"[^\"]*\", line \d+(?:, in \S+)?|(?:/[\w.\-+@~]+){2,}\.py\b|Traceback \(most recent call last\):")


def scrub(message: str) -> str:
    """TensorFlow's error ``message`` as TF Serving shows it: without "Graph execution error", the Python
    stack of where the failing node was defined, "<stack traces unavailable>" and the "[Op:...]" suffix.
    Whatever names a Python file is removed too, so no message can leak this server's paths."""
    lines = message.splitlines()
    kept: list[str] = []
    skipping = False
    for line in lines:
        if _HEADER.match(line) or line.strip() == "<stack traces unavailable>":
            continue
        if _DETECTED.match(line):
            skipping = True
            continue
        if skipping:
            if not line.strip():
                skipping = False
                continue
            if _FRAME.match(line) and not line.startswith("\t"):
                continue
            skipping = False
        kept.append(line)
    text = "\n".join(kept).strip("\n ")
    text = _OP_SUFFIX.sub("", text)
    return _PATH.sub("", text).strip()
