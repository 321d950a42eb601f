"""TF Serving's ``BatchingParameters`` (``--batching_parameters_file``): the proto, its defaults and checks.

Split from :mod:`serving.batching`, which runs the batches these parameters describe.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2

from serving.errors import ServingError, fail

# -- the parameters proto -------------------------------------------------------------------------------

def _build_batching_parameters_class() -> type:
    """``tensorflow.serving.BatchingParameters`` (session_bundle_config.proto), in a private pool."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(descriptor_pb2.FileDescriptorProto.FromString(wrappers_pb2.DESCRIPTOR.serialized_pb))
    file = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/servables/tensorflow/session_bundle_config.proto",
        package="tensorflow.serving", syntax="proto3", dependency=["google/protobuf/wrappers.proto"])
    message = file.message_type.add(name="BatchingParameters")
    F = descriptor_pb2.FieldDescriptorProto
    for number, name, kind, type_name, label in [
        (1, "max_batch_size", F.TYPE_MESSAGE, ".google.protobuf.Int64Value", F.LABEL_OPTIONAL),
        (2, "batch_timeout_micros", F.TYPE_MESSAGE, ".google.protobuf.Int64Value", F.LABEL_OPTIONAL),
        (3, "max_enqueued_batches", F.TYPE_MESSAGE, ".google.protobuf.Int64Value", F.LABEL_OPTIONAL),
        (4, "num_batch_threads", F.TYPE_MESSAGE, ".google.protobuf.Int64Value", F.LABEL_OPTIONAL),
        (5, "thread_pool_name", F.TYPE_MESSAGE, ".google.protobuf.StringValue", F.LABEL_OPTIONAL),
        (6, "allowed_batch_sizes", F.TYPE_INT64, "", F.LABEL_REPEATED),
        (7, "pad_variable_length_inputs", F.TYPE_BOOL, "", F.LABEL_OPTIONAL),
        (8, "enable_large_batch_splitting", F.TYPE_MESSAGE, ".google.protobuf.BoolValue", F.LABEL_OPTIONAL),
        (9, "max_execution_batch_size", F.TYPE_MESSAGE, ".google.protobuf.Int64Value", F.LABEL_OPTIONAL),
    ]:
        message.field.add(name=name, number=number, type=kind, label=label, json_name=name,
                          **({"type_name": type_name} if type_name else {}))
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


try:  # the real one, if a full tensorflow-serving package is installed
    from tensorflow_serving.servables.tensorflow.session_bundle_config_pb2 import BatchingParameters
except ImportError:  # tensorflow-serving-api ships only the APIs
    BatchingParameters = _build_batching_parameters_class()

# TF Serving's defaults for omitted fields (SharedBatchScheduler::QueueOptions, BasicBatchScheduler::Options).
DEFAULT_MAX_BATCH_SIZE = 1000
DEFAULT_BATCH_TIMEOUT_MICROS = 0
DEFAULT_MAX_ENQUEUED_BATCHES = 10
DEFAULT_THREAD_POOL_NAME = "batch_threads"


@dataclass(frozen=True)
class BatchingConfig:
    """``BatchingParameters`` with TF Serving's defaults filled in, checked."""
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    batch_timeout_micros: int = DEFAULT_BATCH_TIMEOUT_MICROS
    max_enqueued_batches: int = DEFAULT_MAX_ENQUEUED_BATCHES
    num_batch_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    thread_pool_name: str = DEFAULT_THREAD_POOL_NAME
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    def __post_init__(self):
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) < 1:
                raise fail("config_invalid", f"batching parameter {name} must be >= 1, not {getattr(self, name)}")
        if self.batch_timeout_micros < 0:
            raise fail("config_invalid", f"batching parameter batch_timeout_micros must be >= 0, "
                                   f"not {self.batch_timeout_micros}")
        sizes = list(self.allowed_batch_sizes)
        if sizes:
            if sizes[0] < 1 or any(b <= a for a, b in zip(sizes, sizes[1:])):
                raise fail("config_invalid", f"batching parameter allowed_batch_sizes must be positive and strictly "
                                       f"increasing: {sizes}")
            if sizes[-1] != self.max_batch_size:
                raise fail("config_invalid", f"batching parameter allowed_batch_sizes: the last entry ({sizes[-1]}) "
                                       f"must equal max_batch_size ({self.max_batch_size})")

    @property
    def batch_timeout_s(self) -> float:
        return self.batch_timeout_micros / 1e6

    @classmethod
    def from_proto(cls, params: Any) -> "BatchingConfig":
        def value(name: str, default):
            return getattr(params, name).value if params.HasField(name) else default
        if value("enable_large_batch_splitting", False):
            raise fail("config_invalid", "batching parameter enable_large_batch_splitting is not supported: requests "
                                   "larger than max_batch_size are rejected")
        kwargs = dict(max_batch_size=value("max_batch_size", DEFAULT_MAX_BATCH_SIZE),
                      batch_timeout_micros=value("batch_timeout_micros", DEFAULT_BATCH_TIMEOUT_MICROS),
                      max_enqueued_batches=value("max_enqueued_batches", DEFAULT_MAX_ENQUEUED_BATCHES),
                      thread_pool_name=value("thread_pool_name", DEFAULT_THREAD_POOL_NAME),
                      allowed_batch_sizes=tuple(params.allowed_batch_sizes),
                      pad_variable_length_inputs=params.pad_variable_length_inputs)
        if params.HasField("num_batch_threads"):
            kwargs["num_batch_threads"] = params.num_batch_threads.value
        return cls(**kwargs)


def parse_batching_parameters(text: str, source: str = "batching parameters") -> Any:
    """A ``BatchingParameters`` text proto, checked; INVALID_ARGUMENT naming ``source`` and what is wrong."""
    try:
        params = text_format.Parse(text, BatchingParameters())
    except text_format.ParseError as exc:  # its message carries line:column and the field
        raise fail("config_invalid", f"{source} is not a valid BatchingParameters text proto: {exc}") from exc
    try:
        BatchingConfig.from_proto(params)
    except ServingError as exc:
        raise fail("config_invalid", f"{source}: {exc.message}") from exc
    return params


def read_batching_parameters(path: str | Path) -> Any:
    """``--batching_parameters_file``: the parsed, checked proto; INVALID_ARGUMENT naming the file if bad."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise fail("config_invalid", f"cannot read batching parameters file {path}: {exc}") from exc
    return parse_batching_parameters(text, f"batching parameters file {path}")


def default_parameters() -> Any:
    """``--enable_batching`` without a parameters file: every field at TF Serving's default, and the model
    server's thread pool name."""
    params = BatchingParameters()
    params.thread_pool_name.value = "model_server_batch_threads"
    return params
