"""``tensorflow_model_server``'s command line, as data: :data:`TF_FLAGS`, and :func:`parse` for it.

:data:`TF_FLAGS` lists every flag tensorflow_serving/model_servers/main.cc defines, in its order, with the
type and default of its field in model_servers/server.h ``Server::Options``, so an operator's existing
command line starts this server unchanged. Each flag either takes effect here (``effect`` is None) or is
accepted with one log line saying it has no effect, and why (:func:`no_effect_lines`).

:func:`parse` takes TensorFlow's flag syntax (tensorflow/core/util/command_line_flags.cc): ``--name=value``;
for a bool ``--name`` alone (true) or ``--name=true|false|1|0``, case-insensitive. It also takes
``--name value`` (and ``--name true|false`` for a bool), which TensorFlow's parser would ignore, and the
``--no-name`` of the previous argparse command line. A value that does not parse as the flag's type stops
start-up naming the flag, as TensorFlow's parser does (int32 and int64 are range-checked). An argument
that is no flag is logged and ignored, as tensorflow_model_server does ("unknown argument").

A few flags are this server's own (:data:`OUR_FLAGS`): ``--host``, ``--grpc_max_receive_message_bytes``
and ``--delay_ms``. ``--file_system_poll_wait_seconds`` and ``--model_config_file_poll_wait_seconds``
also take fractions of a second here (TF Serving: whole seconds).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

log = logging.getLogger("serving")

_CPUS = os.cpu_count() or 1
_INT_RANGES = {"int32": (-(1 << 31), (1 << 31) - 1), "int64": (-(1 << 63), (1 << 63) - 1)}


@dataclass(frozen=True)
class Flag:
    """One flag: its name, type (``int32``, ``int64``, ``float``, ``bool``, ``string``), default, the usage
    text of main.cc (shortened), and None if it takes effect here, else why it has none."""
    name: str
    type: str
    default: Any
    usage: str
    effect: str | None = None


_NO_THREADS = "this server's threads are asyncio and fixed pools"
_NO_TFLITE = "only TensorFlow SavedModels are served"

# main.cc's flag list, in its order; types and defaults from server.h Server::Options.
TF_FLAGS: tuple[Flag, ...] = (
    Flag("port", "int32", 8500, "TCP port to listen on for gRPC/HTTP API (0: any free port here, unless "
                                "--grpc_socket_path is set; then none, as TF Serving)"),
    Flag("grpc_socket_path", "string", "", "If non-empty, listen to a UNIX socket for gRPC API on the given path"),
    Flag("rest_api_port", "int32", 8501, "Port for the HTTP/REST API; 0 turns it off (TF Serving's default is 0; "
                                         "this server's 8501, the port TF Serving's docs and images use)"),
    Flag("rest_api_num_threads", "int32", 4 * _CPUS, "Number of threads for HTTP/REST API processing",
         _NO_THREADS),
    Flag("rest_api_timeout_in_ms", "int32", 30000, "Timeout for HTTP/REST API calls (inference)"),
    Flag("rest_api_enable_cors_support", "bool", False, "Enable CORS headers in response"),
    Flag("enable_batching", "bool", False, "enable batching"),
    Flag("allow_version_labels_for_unavailable_models", "bool", False,
         "If true, allows assigning unused version labels to models that are not available yet"),
    Flag("batching_parameters_file", "string", "", "If non-empty, read an ascii BatchingParameters protobuf"),
    Flag("enable_per_model_batching_parameters", "bool", False,
         "Read batching params from batching_params.pbtxt in each SavedModel dir",
         "one set of batching parameters serves every model here"),
    Flag("model_config_file", "string", "", "If non-empty, read an ascii ModelServerConfig protobuf (then "
                                            "--model_name and --model_base_path are ignored)"),
    Flag("model_config_file_poll_wait_seconds", "int32", 0,
         "Interval in seconds between each poll of the filesystem for model_config_file; 0: read once"),
    Flag("model_name", "string", "default", "name of model (ignored if --model_config_file flag is set)"),
    Flag("model_base_path", "string", "", "path to export (ignored if --model_config_file flag is set)"),
    Flag("num_load_threads", "int32", 0, "The number of threads in the thread-pool used to load servables",
         "versions load one at a time in a thread of their own"),
    Flag("num_unload_threads", "int32", 0, "The number of threads in the thread-pool used to unload servables",
         "versions unload on the event loop once drained"),
    Flag("max_num_load_retries", "int32", 5, "maximum number of times it retries loading a model",
         "a version that fails to load is not retried until it leaves the aspired set"),
    Flag("load_retry_interval_micros", "int64", 60 * 1000 * 1000, "The interval between each servable load retry",
         "a version that fails to load is not retried until it leaves the aspired set"),
    Flag("file_system_poll_wait_seconds", "int32", 1,
         "Interval in seconds between each poll of the filesystem for new model version; 0: poll once"),
    Flag("flush_filesystem_caches", "bool", True, "Flush filesystem caches after loads",
         "there are no filesystem caches to flush"),
    Flag("tensorflow_session_parallelism", "int64", 0,
         "Number of threads to use for running a Tensorflow session (both thread pools)"),
    Flag("tensorflow_session_config_file", "string", "", "If non-empty, read an ascii TensorFlow Session "
                                                         "ConfigProto", "models run as TF2 functions, not sessions"),
    Flag("tensorflow_intra_op_parallelism", "int64", 0,
         "Number of threads to use to parallelize the execution of an individual op"),
    Flag("tensorflow_inter_op_parallelism", "int64", 0,
         "Controls the number of operators that can be executed simultaneously"),
    Flag("use_alts_credentials", "bool", False, "Use Google ALTS credentials"),
    Flag("ssl_config_file", "string", "", "If non-empty, read an ascii SSLConfig protobuf and set up a secure "
                                          "gRPC channel"),
    Flag("platform_config_file", "string", "", "If non-empty, read an ascii PlatformConfigMap protobuf",
         "the TensorFlow platform is the only one"),
    Flag("per_process_gpu_memory_fraction", "float", 0.0, "Fraction that each process occupies of the GPU memory",
         "no GPU is used"),
    Flag("saved_model_tags", "string", "serve",
         "Comma-separated set of tags corresponding to the meta graph def to load from SavedModel"),
    Flag("grpc_channel_arguments", "string", "", "A comma separated list of arguments to be passed to the grpc "
                                                 "server. (e.g. grpc.max_connection_age_ms=2000)"),
    Flag("grpc_max_threads", "int32", 4 * _CPUS, "Max grpc server threads to handle grpc messages", _NO_THREADS),
    Flag("enable_model_warmup", "bool", True, "Enables model warmup (replays assets.extra/tf_serving_warmup_"
                                              "requests at load)"),
    Flag("num_request_iterations_for_warmup", "int32", 0,
         "Number of times a request is iterated during warmup replay. This value is used only if > 0"),
    Flag("version", "bool", False, "Display version"),
    Flag("monitoring_config_file", "string", "", "If non-empty, read an ascii MonitoringConfig protobuf"),
    Flag("remove_unused_fields_from_bundle_metagraph", "bool", True,
         "Removes unused fields from MetaGraphDef proto message to save memory",
         "only the SignatureDefs of a MetaGraphDef are kept"),
    Flag("prefer_tflite_model", "bool", False, "Prefer TensorFlow Lite model from model.tflite", _NO_TFLITE),
    Flag("num_tflite_pools", "int32", _CPUS, "Number of TFLite interpreter pools", _NO_TFLITE),
    Flag("num_tflite_interpreters_per_pool", "int32", 1, "Number of TFLite interpreters per pool", _NO_TFLITE),
    Flag("enable_signature_method_name_check", "bool", False, "Enable method_name check for SignatureDef"),
    Flag("xla_cpu_compilation_enabled", "bool", False, "Enable XLA:CPU JIT",
         "models run as TensorFlow compiles them"),
    Flag("xla_gpu_compilation_enabled", "bool", False, "Enable both XLA:CPU JIT and XLA:GPU JIT",
         "models run as TensorFlow compiles them"),
    Flag("enable_profiler", "bool", True, "Enable profiler service", "there is no profiler service"),
    Flag("thread_pool_factory_config_file", "string", "", "If non-empty, read an ascii ThreadPoolConfig protobuf",
         _NO_THREADS),
    Flag("mixed_precision", "string", "", "specify mixed_precision mode", "models run in the precision they "
                                                                         "were exported in"),
    Flag("skip_initialize_tpu", "bool", False, "Whether to skip auto initializing TPU", "no TPU is used"),
    Flag("enable_grpc_healthcheck_service", "bool", False, "Enable the standard gRPC healthcheck service",
         "grpcio-health-checking is not installed; GET /v1/models/<name> answers health checks"),
    Flag("enable_serialization_as_tensor_content", "bool", False,
         "Enable serialization of predict response as tensor content"),
)

# Not TF Serving's.
OUR_FLAGS: tuple[Flag, ...] = (
    Flag("host", "string", "0.0.0.0", "address to bind (not a TF Serving flag)"),
    Flag("grpc_max_receive_message_bytes", "int64", 64 * 1024 * 1024,
         "larger gRPC requests are refused with RESOURCE_EXHAUSTED (not a TF Serving flag; TF Serving: 2 GiB, "
         "or --grpc_channel_arguments=grpc.max_receive_message_length=N)"),
    Flag("delay_ms", "float", 0.0, "slow every request down, for fault drills (not a TF Serving flag)"),
)

FLAGS: dict[str, Flag] = {flag.name: flag for flag in TF_FLAGS + OUR_FLAGS}
FRACTIONAL_SECONDS = {"file_system_poll_wait_seconds", "model_config_file_poll_wait_seconds"}
_TRUE, _FALSE = {"true", "1"}, {"false", "0"}


class FlagError(ValueError):
    """A flag value that does not parse: the message names the flag and the value."""


class Flags:
    """Parsed flags: every flag of :data:`FLAGS` as an attribute (its default unless given); ``given`` the
    names on the command line, in order; ``unknown`` the arguments that are no flag."""

    def __init__(self, values: dict[str, Any], given: list[str], unknown: list[str]):
        self.__dict__.update(values)
        self.given = given
        self.unknown = unknown


def parse_value(flag: Flag, text: str) -> Any:
    """``text`` as ``flag``'s type, as TensorFlow's parser reads it (absl SimpleAtoi / SimpleAtof)."""
    value = text.strip()
    try:
        if flag.type == "bool":
            if value.lower() in _TRUE:
                return True
            if value.lower() in _FALSE:
                return False
            raise ValueError
        if flag.type in _INT_RANGES:
            if flag.name in FRACTIONAL_SECONDS and value and not value.lstrip("+-").isdigit():
                number = float(value)
                if not math.isfinite(number):
                    raise ValueError
                return number
            number = int(value, 10)
            low, high = _INT_RANGES[flag.type]
            if not low <= number <= high:
                raise ValueError
            return number
        if flag.type == "float":
            return float(value)
        return text
    except ValueError:
        raise FlagError(f"Couldn't interpret value {text} for flag {flag.name}.") from None


def parse(argv: Sequence[str]) -> Flags:
    """Parse ``argv`` (without the program name); :class:`FlagError` for a value that does not parse."""
    values = {flag.name: flag.default for flag in FLAGS.values()}
    given: list[str] = []
    unknown: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            unknown.extend(args[i - 1:])
            break
        if not arg.startswith("--"):
            unknown.append(arg)
            continue
        name, has_value, text = arg[2:].partition("=")
        negated = False
        if name not in FLAGS and name.startswith("no-") and name[3:] in FLAGS and not has_value:
            name, negated = name[3:], True
        flag = FLAGS.get(name)
        if flag is None or (negated and flag.type != "bool"):
            unknown.append(arg)
            continue
        if negated:
            value: Any = False
        elif flag.type == "bool" and not has_value:
            if i < len(args) and args[i].lower() in ("true", "false"):  # --flag true|false
                value = args[i].lower() == "true"
                i += 1
            else:
                value = True
        elif has_value:
            value = parse_value(flag, text)
        elif i < len(args) and not args[i].startswith("--"):  # --flag value
            value = parse_value(flag, args[i])
            i += 1
        else:
            raise FlagError(f"Couldn't interpret value  for flag {flag.name}: --{flag.name} needs a value.")
        values[flag.name] = value
        if flag.name not in given:
            given.append(flag.name)
    return Flags(values, given, unknown)


def no_effect_lines(flags: Flags) -> list[str]:
    """One line for each flag given that has no effect in this server, saying so and why."""
    return [f"--{name}={getattr(flags, name)} is accepted but has no effect in this server: {FLAGS[name].effect}"
            for name in flags.given if FLAGS[name].effect]


def usage() -> str:
    """``--help``: every flag with its type and default, as TensorFlow's ``Flags::Usage`` lists them."""
    lines = ["usage: liveml serve [--flag=value ...]  (tensorflow_model_server's flags)", "Flags:"]
    for flag in TF_FLAGS + OUR_FLAGS:
        default = str(flag.default).lower() if flag.type == "bool" else \
            f'"{flag.default}"' if flag.type == "string" else flag.default
        note = f" [no effect here: {flag.effect}]" if flag.effect else ""
        lines.append(f"\t--{flag.name}={default}".ljust(50) + f"\t{flag.type}\t{flag.usage}{note}")
    return "\n".join(lines)
