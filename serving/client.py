"""An asyncio client for TF Serving's gRPC API (ours or the real one): raw-feature dicts in, numbers out.

    client = PredictionClient("localhost:8500")
    result = await client.predict({"fare": 12.5, "trip_miles": 2.1, "company": "Flash Cab", ...}, model="tips")
    result.outputs["probabilities"], result.version

* One channel per client (open one per worker, reuse it).
* Every call has a deadline (``timeout_s``).
* Retries are gRPC's own (a ``retryPolicy`` in the channel's service config), on transient codes only:
  UNAVAILABLE by default. INVALID_ARGUMENT, NOT_FOUND and DEADLINE_EXCEEDED are never retried: they will
  not get better, and a retry after a deadline would outlive the caller's budget.
* A model, version or label the server does not have raises :class:`ModelNotFound` (still an
  ``AioRpcError``), which names what is missing and the command that serves one: NOT_FOUND, and TF
  Serving's INVALID_ARGUMENT for an unknown label, are not bad requests, and no retry will help.
* Inputs are converted to the dtypes the model's signature declares (read once per model and signature
  with GetModelMetadata), so callers pass plain Python values; tensors are built from the protos, not
  with ``tf.make_tensor_proto``.

tensorflow-serving-api's generated messages import TensorFlow's protos, and through the ``tensorflow``
package all of TensorFlow (2.3 s and 570 MB per process here); this module loads them without it
(:func:`serving.protos.light_tensorflow`): 0.13 s and 47 MB, so every Flink Python worker can hold a client.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import grpc
import numpy as np

from serving.protos import light_tensorflow

with light_tensorflow():  # the API messages, without loading TensorFlow (serving/protos.py)
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
    from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_management_pb2,
                                         model_pb2, model_service_pb2_grpc, predict_pb2,
                                         prediction_service_pb2_grpc)
    from tensorflow_serving.config import model_server_config_pb2

TRANSIENT = ("UNAVAILABLE",)
# TF Serving answers an unknown version label with INVALID_ARGUMENT and this message (server_core.cc; ours too)
UNKNOWN_LABEL = "Unrecognized servable version label"

_NUMPY = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64, types_pb2.DT_INT32: np.int32,
          types_pb2.DT_INT64: np.int64, types_pb2.DT_BOOL: np.bool_}
_VALUES = {types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val", types_pb2.DT_INT32: "int_val",
           types_pb2.DT_INT64: "int64_val", types_pb2.DT_BOOL: "bool_val", types_pb2.DT_STRING: "string_val"}


def service_config(retries: int, initial_backoff_s: float = 0.05, max_backoff_s: float = 0.5) -> str:
    policy = {"maxAttempts": max(2, retries + 1), "initialBackoff": f"{initial_backoff_s}s",
              "maxBackoff": f"{max_backoff_s}s", "backoffMultiplier": 2, "retryableStatusCodes": list(TRANSIENT)}
    return json.dumps({"methodConfig": [{"name": [{"service": "tensorflow.serving.PredictionService"}],
                                         "retryPolicy": policy}]})


def to_tensor(values: Any, dtype: int) -> tensor_pb2.TensorProto:
    """A 1-D TensorProto of ``dtype`` from a scalar or a list (one value per row)."""
    rows = list(values) if isinstance(values, (list, tuple, np.ndarray)) else [values]
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(rows))]))
    if dtype == types_pb2.DT_STRING:
        proto.string_val.extend(v if isinstance(v, bytes) else str("" if v is None else v).encode() for v in rows)
    elif dtype in _NUMPY:
        arr = np.asarray([0 if v is None else v for v in rows], dtype=_NUMPY[dtype])
        getattr(proto, _VALUES[dtype]).extend(arr.tolist())
    else:
        raise ValueError(f"dtype {types_pb2.DataType.Name(dtype)} is not supported by this client")
    return proto


def from_tensor(proto: tensor_pb2.TensorProto) -> np.ndarray:
    shape = [d.size for d in proto.tensor_shape.dim]
    if proto.dtype == types_pb2.DT_STRING:
        return np.array(list(proto.string_val), dtype=object).reshape(shape)
    np_type = _NUMPY.get(proto.dtype)
    if np_type is None:
        raise ValueError(f"output dtype {types_pb2.DataType.Name(proto.dtype)} is not supported by this client")
    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype=np_type).reshape(shape)
    vals = np.asarray(getattr(proto, _VALUES[proto.dtype]), dtype=np_type)
    n = int(np.prod(shape)) if shape else 1
    return (np.full(n, vals[0], dtype=np_type) if len(vals) == 1 and n != 1 else vals).reshape(shape)


def model_missing(code: grpc.StatusCode, details: str | None) -> bool:
    """True when the server has no such model, version or label (rather than a request it cannot take)."""
    return code == grpc.StatusCode.NOT_FOUND or (
        code == grpc.StatusCode.INVALID_ARGUMENT and (details or "").startswith(UNKNOWN_LABEL))


class ModelNotFound(grpc.aio.AioRpcError):
    """The server has no version to answer with. Keeps the server's code and details (so code that catches
    ``AioRpcError`` sees what it always saw); its text says what is missing and how to serve one."""

    def __init__(self, exc: grpc.aio.AioRpcError, address: str, model: str, version: int | None = None,
                 label: str | None = None):
        super().__init__(exc.code(), exc.initial_metadata(), exc.trailing_metadata(), exc.details(),
                         exc.debug_error_string())
        self.address, self.model, self.version, self.label = address, model, version, label

    @property
    def missing(self) -> str:
        if self.version is not None:
            return f"version {self.version} of model {self.model!r} loaded"
        if self.label and self.code() != grpc.StatusCode.NOT_FOUND:  # NOT_FOUND: no version at all
            return f"version of model {self.model!r} under label {self.label!r}"
        return f"version of model {self.model!r} loaded"

    @property
    def next_step(self) -> str:
        """The platform's commands that serve what is missing (liveml/cli_serving.py)."""
        listing = f"`liveml models list --model {self.model}` shows its versions and their state"
        if self.version is not None:
            return f"{listing}; `liveml train` pushes a new one"
        label = self.label or "stable"
        return (f"`liveml train` pushes a version, `liveml models promote <version> --label {label} "
                f"--model {self.model}` serves it under {label!r}; {listing}")

    def __str__(self) -> str:
        return (f"the model server at {self.address} has no {self.missing} ({self.code().name}: {self.details()}). "
                f"Next: {self.next_step}")


@dataclass
class PredictResult:
    outputs: dict[str, np.ndarray]
    model: str
    version: int
    signature: str
    latency_ms: float


class PredictionClient:
    def __init__(self, address: str, *, timeout_s: float = 1.0, retries: int = 2,
                 max_message_bytes: int = 64 * 1024 * 1024):
        self.address = address
        self.timeout_s = timeout_s
        self.channel = grpc.aio.insecure_channel(address, options=[
            ("grpc.enable_retries", 1), ("grpc.service_config", service_config(retries)),
            # after the server was gone, try to reconnect within a second, not after gRPC's default backoff
            # (which grows to 120 s, and fails every call UNAVAILABLE meanwhile)
            ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes)])
        self.predictions = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self._inputs: dict[tuple[str, str], dict[str, int]] = {}

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> "PredictionClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @staticmethod
    def spec(model: str, version: int | None = None, label: str | None = None,
             signature: str = "") -> model_pb2.ModelSpec:
        spec = model_pb2.ModelSpec(name=model, signature_name=signature)
        if version is not None:
            spec.version.value = int(version)
        elif label:
            spec.version_label = label
        return spec

    async def input_dtypes(self, model: str, signature: str = "serving_default",
                           timeout_s: float | None = None, version: int | None = None,
                           label: str | None = None, refresh: bool = False) -> dict[str, int]:
        """The signature's input dtypes, of the version that ``version`` or ``label`` names (else the latest),
        read once with GetModelMetadata and cached; ``refresh`` reads them again."""
        key = (model, signature, version, label)
        if refresh:
            self._inputs.pop(key, None)
        if key not in self._inputs:
            req = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=self.spec(model, version, label),
                                                                 metadata_field=["signature_def"])
            resp = await self.predictions.GetModelMetadata(req, timeout=timeout_s or self.timeout_s)
            defs = get_model_metadata_pb2.SignatureDefMap()
            resp.metadata["signature_def"].Unpack(defs)
            if signature not in defs.signature_def:
                raise KeyError(f"model {model} has no signature {signature!r}; it has {sorted(defs.signature_def)}")
            self._inputs[key] = {k: v.dtype for k, v in defs.signature_def[signature].inputs.items()}
        return self._inputs[key]

    async def predict(self, features: Mapping[str, Any], *, model: str, version: int | None = None,
                      label: str | None = None, signature: str = "serving_default",
                      timeout_s: float | None = None, output_filter: Sequence[str] = ()) -> PredictResult:
        """``features``: input name -> value (one row) or list of values (a batch).

        :class:`ModelNotFound` if the server has no such model, version or label."""
        timeout = timeout_s or self.timeout_s
        # The signature of the version the label (or version) names, not the latest one's: a label may name
        # an older version, and once it moves to a version with another signature the cached dtypes are
        # stale, so a refused call reads them again, once.
        for refresh in (False, True):
            try:
                dtypes = await self.input_dtypes(model, signature, timeout, version, label, refresh=refresh)
            except grpc.aio.AioRpcError as exc:
                raise self._not_found(exc, model, version, label) from None
            missing = sorted(set(dtypes) - set(features))
            if missing:
                if not refresh:
                    continue
                raise ValueError(f"model {model} signature {signature} needs {missing}")
            req = predict_pb2.PredictRequest(model_spec=self.spec(model, version, label, signature),
                                             output_filter=list(output_filter))
            for name, dtype in dtypes.items():
                req.inputs[name].CopyFrom(to_tensor(features[name], dtype))
            t0 = time.perf_counter()
            try:
                resp = await self.predictions.Predict(req, timeout=timeout)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT and not refresh and \
                        not model_missing(exc.code(), exc.details()) and \
                        await self._signature_changed(dtypes, model, signature, timeout, version, label):
                    continue  # the label moved to a version with another signature: send it as that one takes it
                raise self._not_found(exc, model, version, label) from None
        latency = (time.perf_counter() - t0) * 1000
        return PredictResult({k: from_tensor(v) for k, v in resp.outputs.items()}, resp.model_spec.name,
                             resp.model_spec.version.value, resp.model_spec.signature_name, latency)

    async def _signature_changed(self, used: dict[str, int], model: str, signature: str, timeout: float,
                                 version: int | None, label: str | None) -> bool:
        """Read the signature again; True if it differs from ``used`` (a request refused for any other reason
        is not sent twice)."""
        try:
            return await self.input_dtypes(model, signature, timeout, version, label, refresh=True) != used
        except (grpc.aio.AioRpcError, KeyError):
            return False

    def _not_found(self, exc: grpc.aio.AioRpcError, model: str, version: int | None = None,
                   label: str | None = None) -> grpc.aio.AioRpcError:
        """``exc`` as a :class:`ModelNotFound` when it says the model, version or label is missing."""
        return ModelNotFound(exc, self.address, model, version, label) if model_missing(exc.code(), exc.details()) \
            else exc

    async def status(self, model: str, version: int | None = None, label: str | None = None,
                     timeout_s: float | None = None) -> get_model_status_pb2.GetModelStatusResponse:
        req = get_model_status_pb2.GetModelStatusRequest(model_spec=self.spec(model, version, label))
        return await self.models.GetModelStatus(req, timeout=timeout_s or self.timeout_s)

    async def reload_config(self, config: model_server_config_pb2.ModelServerConfig,
                            timeout_s: float | None = None):
        req = model_management_pb2.ReloadConfigRequest(config=config)
        return await self.models.HandleReloadConfigRequest(req, timeout=timeout_s or max(self.timeout_s, 30.0))
