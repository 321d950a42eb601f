"""The model server's command line: ``tensorflow_model_server``'s flags, so operators' scripts carry over.

    python -m serving.server --port=8500 --rest_api_port=8501 --model_name=tips --model_base_path=/models/tips
    python -m serving.server --model_config_file=models.config --enable_batching \\
        --batching_parameters_file=batching.config --monitoring_config_file=monitoring.config \\
        --rest_api_enable_cors_support=true --rest_api_timeout_in_ms=5000

``liveml serve`` and ``liveml up serving`` run the same thing. Every flag of TF Serving's main.cc is
accepted (the list, with types, defaults and what each does here, is :data:`serving.flags.TF_FLAGS`);
those that cannot mean anything in this server are accepted with one log line saying so. The ones that
take effect mean what they mean to TF Serving (model_servers/server.cc ``BuildAndStart``):

* ``--model_config_file`` is a ``model_config_list`` text proto (several models, version policies, labels);
  it wins over ``--model_name``/``--model_base_path``, which serve one model with the latest version;
* ``--file_system_poll_wait_seconds`` is how often base paths are polled for new or removed versions (0:
  only at start); ``--model_config_file_poll_wait_seconds`` (0 = never) re-reads the config file;
* ``--port`` and ``--grpc_socket_path`` (a UNIX socket), secured by ``--ssl_config_file`` (an ``SSLConfig``
  text proto) or ``--use_alts_credentials``; ``--grpc_channel_arguments`` (``k=v,k2=v2``; integer values
  as integers) are gRPC server options;
* ``--rest_api_port`` 0 turns REST off (so does the gRPC port); ``--rest_api_timeout_in_ms`` (30 s) bounds
  REST inference (504 past it); ``--rest_api_enable_cors_support`` adds CORS headers;
  ``--monitoring_config_file`` (``prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }``)
  exposes Prometheus metrics on the REST port;
* ``--enable_batching`` with ``--batching_parameters_file`` (a ``BatchingParameters`` text proto; the file
  without ``--enable_batching`` is a start-up error, as in TF Serving);
* ``--allow_version_labels_for_unavailable_models``, ``--enable_signature_method_name_check``,
  ``--enable_serialization_as_tensor_content``, ``--enable_model_warmup``,
  ``--num_request_iterations_for_warmup``, ``--saved_model_tags``, ``--tensorflow_intra_op_parallelism``,
  ``--tensorflow_inter_op_parallelism``, ``--tensorflow_session_parallelism``, ``--version``.

Not TF Serving's: ``--host``, ``--grpc_max_receive_message_bytes`` and, for fault drills only,
``--delay_ms`` (slows every request down). A bad flag value or config file stops start-up with the flag or
file and the problem named (exit status 2).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Sequence

from google.protobuf import text_format

from serving.flags import FlagError, Flags, no_effect_lines, parse, usage

log = logging.getLogger("serving")

DEFAULT_METRICS_PATH = "/monitoring/prometheus/metrics"


class StartupError(Exception):
    """Bad flags or config files: the message names the flag or file."""


def _read_text_proto(path: str, message, flag: str):
    file = Path(path)
    if not file.is_file():
        raise StartupError(f"{flag}={path}: no such file")
    try:
        return text_format.Parse(file.read_text(), message)
    except text_format.ParseError as exc:
        raise StartupError(f"{flag}={path}: {exc}") from None


def model_config(flags: Flags):
    """server.cc: the config file if given (then ``--model_name``/``--model_base_path`` are ignored), else
    one model from ``--model_name``/``--model_base_path``."""
    from serving.model_config import read_model_config, single_model_config

    if flags.model_config_file:
        ignored = [f"--{name}" for name in ("model_name", "model_base_path") if name in flags.given]
        if ignored:
            log.warning("%s ignored: --model_config_file is set (as in TF Serving)", " and ".join(ignored))
        try:
            return read_model_config(flags.model_config_file)
        except Exception as exc:  # a ServingError or a parse error: name the file either way
            raise StartupError(f"--model_config_file={flags.model_config_file}: {exc}") from None
    if not flags.model_base_path:
        raise StartupError("Both server_options.model_base_path and server_options.model_config_file are empty! "
                           "Give --model_base_path (and --model_name), or --model_config_file")
    return single_model_config(flags.model_name, flags.model_base_path)


def _proto_class(package_file: str, message: str, fields: Sequence[tuple[str, int, str]],
                 nested: dict[str, Sequence[tuple[str, int, str]]] | None = None) -> type:
    """A message class declared here with TF Serving's names and field numbers: tensorflow-serving-api ships
    the APIs, not the config protos. ``fields``: (name, number, type) with type bool, string or a nested
    message's name."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name=package_file, package="tensorflow.serving", syntax="proto3")
    types = {"bool": F.TYPE_BOOL, "string": F.TYPE_STRING}
    for name, members in list((nested or {}).items()) + [(message, fields)]:
        proto = file.message_type.add(name=name)
        for field, number, kind in members:
            entry = proto.field.add(name=field, number=number, label=F.LABEL_OPTIONAL, json_name=field)
            if kind in types:
                entry.type = types[kind]
            else:
                entry.type, entry.type_name = F.TYPE_MESSAGE, f".tensorflow.serving.{kind}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{message}"))


def _monitoring_config_class() -> type:
    """``tensorflow.serving.MonitoringConfig`` (config/monitoring_config.proto)."""
    return _proto_class("tensorflow_serving/config/monitoring_config.proto", "MonitoringConfig",
                        [("prometheus_config", 1, "PrometheusConfig")],
                        {"PrometheusConfig": [("enable", 1, "bool"), ("path", 2, "string")]})


def _ssl_config_class() -> type:
    """``tensorflow.serving.SSLConfig`` (config/ssl_config.proto)."""
    return _proto_class("tensorflow_serving/config/ssl_config.proto", "SSLConfig",
                        [("server_key", 1, "string"), ("server_cert", 2, "string"), ("custom_ca", 3, "string"),
                         ("client_verify", 4, "bool")])


def metrics_path(flags: Flags) -> str | None:
    if not flags.monitoring_config_file:
        return None
    cfg = _read_text_proto(flags.monitoring_config_file, _monitoring_config_class()(), "--monitoring_config_file")
    if not cfg.prometheus_config.enable:
        return None
    return cfg.prometheus_config.path or DEFAULT_METRICS_PATH


def batching_parameters(flags: Flags):
    if not flags.enable_batching:
        if flags.batching_parameters_file:
            raise StartupError("server_options.batching_parameters_file is set without setting "
                               "server_options.enable_batching to true (--batching_parameters_file needs "
                               "--enable_batching)")
        return None
    from serving.batching_params import default_parameters, read_batching_parameters

    if flags.batching_parameters_file:
        try:
            return read_batching_parameters(flags.batching_parameters_file)
        except Exception as exc:
            raise StartupError(f"--batching_parameters_file={flags.batching_parameters_file}: {exc}") from None
    return default_parameters()


def channel_arguments(text: str) -> list[tuple[str, int | str]]:
    """server.cc ``parseGrpcChannelArgs``: ``k=v,k2=v2``; a value that is an int32 is passed as one."""
    arguments = []
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise StartupError(f"--grpc_channel_arguments: {item!r} is not key=value")
        try:
            number = int(value.strip(), 10)
            arguments.append((key, number) if -(1 << 31) <= number < (1 << 31) else (key, value))
        except ValueError:
            arguments.append((key, value))
    return arguments


def credentials(flags: Flags):
    """server.cc ``BuildServerCredentials``: ALTS, SSL from an ``SSLConfig`` file, or none."""
    import grpc

    if flags.use_alts_credentials and flags.ssl_config_file:
        raise StartupError("Either use_alts_credentials must be false or ssl_config_file must be empty.")
    if flags.use_alts_credentials:
        return grpc.alts_server_credentials()
    if not flags.ssl_config_file:
        return None
    cfg = _read_text_proto(flags.ssl_config_file, _ssl_config_class()(), "--ssl_config_file")
    return grpc.ssl_server_credentials([(cfg.server_key.encode(), cfg.server_cert.encode())],
                                       root_certificates=cfg.custom_ca.encode() or None,
                                       require_client_auth=cfg.client_verify)


def set_parallelism(flags: Flags) -> None:
    """server.cc: the session thread pools, from the intra/inter op flags or else the session one."""
    intra, inter, both = (flags.tensorflow_intra_op_parallelism, flags.tensorflow_inter_op_parallelism,
                          flags.tensorflow_session_parallelism)
    if intra > 0 and inter > 0 and both > 0:
        raise StartupError("Either configure server_options.tensorflow_session_parallelism or "
                           "(server_options.tensorflow_intra_op_parallelism, "
                           "server_options.tensorflow_inter_op_parallelism) separately. You cannot configure all.")
    if not (intra > 0 or inter > 0):
        intra = inter = both
    if intra <= 0 and inter <= 0:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(max(intra, 0))
        tf.config.threading.set_inter_op_parallelism_threads(max(inter, 0))
    except RuntimeError as exc:  # TensorFlow already ran in this process (tests): its pools are fixed
        log.warning("TensorFlow's thread pools are already set up; parallelism flags ignored: %s", exc)


async def run(flags: Flags, started=None) -> None:
    from serving.grpc_server import build_server
    from serving.model_config import read_model_config
    from serving.models import ModelManager
    from serving.servable import InferenceOptions

    config = model_config(flags)
    batching = batching_parameters(flags)
    path = metrics_path(flags)
    creds = credentials(flags)
    arguments = channel_arguments(flags.grpc_channel_arguments)
    set_parallelism(flags)
    options = InferenceOptions(method_name_check=flags.enable_signature_method_name_check,
                               tensor_content=flags.enable_serialization_as_tensor_content,
                               warmup_iterations=max(1, flags.num_request_iterations_for_warmup))
    tags = [tag for tag in flags.saved_model_tags.split(",") if tag] or ["serve"]
    manager = ModelManager(warmup=flags.enable_model_warmup, options=options, saved_model_tags=tags,
                           allow_unavailable_labels=flags.allow_version_labels_for_unavailable_models)
    await manager.reload_config(config)
    tcp_port = None if flags.port == 0 and flags.grpc_socket_path else flags.port
    server, grpc_port = build_server(manager, tcp_port, host=flags.host,
                                     max_receive_message_bytes=flags.grpc_max_receive_message_bytes,
                                     delay_s=flags.delay_ms / 1000.0, batching=batching,
                                     channel_arguments=arguments, socket_path=flags.grpc_socket_path,
                                     credentials=creds)
    await server.start()
    rest_runner, rest_port = None, None
    if flags.rest_api_port and flags.rest_api_port == flags.port:
        log.error("--rest_api_port cannot be the same as --port (%d): the REST API is not started (as in TF "
                  "Serving)", flags.port)
    elif flags.rest_api_port:
        from serving.rest import start_rest

        timeout_s = flags.rest_api_timeout_in_ms / 1000.0 if flags.rest_api_timeout_in_ms > 0 else None
        rest_runner, rest_port = await start_rest(manager, flags.host, flags.rest_api_port, metrics_path=path,
                                                  batcher=getattr(server, "batcher", None), timeout_s=timeout_s,
                                                  cors=flags.rest_api_enable_cors_support,
                                                  delay_s=flags.delay_ms / 1000.0)
    if flags.grpc_socket_path:
        log.info("gRPC also on UNIX socket %s", flags.grpc_socket_path)
    log.info("serving %s: gRPC on %d, REST on %s", sorted(manager.configs), grpc_port, rest_port or "off")
    if started:
        started(grpc_port, rest_port)
    tasks = []
    if flags.file_system_poll_wait_seconds > 0:
        tasks.append(asyncio.create_task(manager.poll_forever(flags.file_system_poll_wait_seconds)))
    else:
        log.info("--file_system_poll_wait_seconds=%s: base paths were read once, at start",
                 flags.file_system_poll_wait_seconds)
    if flags.model_config_file and flags.model_config_file_poll_wait_seconds > 0:
        async def reread() -> None:
            while True:
                await asyncio.sleep(flags.model_config_file_poll_wait_seconds)
                try:
                    await manager.reload_config(read_model_config(flags.model_config_file))
                except Exception as exc:  # keep serving the last good config, as TF Serving does
                    log.error("re-reading %s failed: %s", flags.model_config_file, exc)
        tasks.append(asyncio.create_task(reread()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for t in tasks:
            t.cancel()
        await server.stop(grace=5)
        if rest_runner:
            await rest_runner.cleanup()
        await manager.close()


def version_text() -> str:
    """``--version``: what tensorflow_model_server prints, naming this server and the API it speaks."""
    from importlib.metadata import PackageNotFoundError, version

    def of(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "unknown"
    return (f"TensorFlow ModelServer: liveml serving (the API of tensorflow-serving-api "
            f"{of('tensorflow-serving-api')})\nTensorFlow Library: {of('tensorflow')}")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        flags = parse(sys.argv[1:] if argv is None else argv)
    except FlagError as exc:
        print(f"error: {exc}\n{usage()}", file=sys.stderr)
        return 2
    if "--help" in flags.unknown or "-h" in flags.unknown:
        print(usage())
        return 0
    if flags.version:
        print(version_text())
        return 0
    for arg in flags.unknown:  # tensorflow_model_server prints them and carries on
        log.warning("unknown argument: %s (ignored)", arg)
    for line in no_effect_lines(flags):
        log.warning("%s", line)
    try:
        asyncio.run(run(flags))
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
