"""The model server's command line: ``tensorflow_model_server``'s flags, so operators' scripts carry over.

    python -m serving.server --port=8500 --rest_api_port=8501 --model_name=tips --model_base_path=/models/tips
    python -m serving.server --model_config_file=models.config --enable_batching \\
        --batching_parameters_file=batching.config --monitoring_config_file=monitoring.config

``liveml serve`` and ``liveml up serving`` run the same thing. The flags mean what they mean to TF Serving:

* ``--model_config_file`` is a ``model_config_list`` text proto (several models, version policies, labels);
  ``--model_name``/``--model_base_path`` serve one model with the default policy (latest version);
* ``--file_system_poll_wait_seconds`` is how often base paths are polled for new or removed versions;
* ``--model_config_file_poll_wait_seconds`` (0 = never) re-reads the config file, as TF Serving does;
* ``--rest_api_port`` 0 turns REST off; ``--monitoring_config_file`` (``prometheus_config { enable: true
  path: "/monitoring/prometheus/metrics" }``) exposes Prometheus metrics on the REST port;
* ``--enable_batching`` with ``--batching_parameters_file`` (a ``BatchingParameters`` text proto).

Not TF Serving's, for fault drills only: ``--delay_ms`` slows every request down.
A bad flag or config file stops start-up with the file and the problem named.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path
from typing import Sequence

from google.protobuf import text_format

log = logging.getLogger("serving")

DEFAULT_METRICS_PATH = "/monitoring/prometheus/metrics"


class StartupError(Exception):
    """Bad flags or config files: the message names the flag or file."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="liveml serve", description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=8500, help="gRPC port (TF Serving's default 8500)")
    p.add_argument("--rest_api_port", type=int, default=8501, help="REST port; 0 turns REST off")
    p.add_argument("--host", default="0.0.0.0", help="address to bind (not a TF Serving flag)")
    p.add_argument("--model_name", default=None)
    p.add_argument("--model_base_path", default=None)
    p.add_argument("--model_config_file", default=None, help="a model_config_list text proto")
    p.add_argument("--model_config_file_poll_wait_seconds", type=float, default=0.0)
    p.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0)
    p.add_argument("--enable_batching", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--batching_parameters_file", default=None)
    p.add_argument("--monitoring_config_file", default=None)
    p.add_argument("--grpc_max_receive_message_bytes", type=int, default=64 * 1024 * 1024,
                   help="larger requests are refused with RESOURCE_EXHAUSTED")
    p.add_argument("--delay_ms", type=float, default=0.0, help="slow every request down (fault drills)")
    return p


def _read_text_proto(path: str, message, flag: str):
    file = Path(path)
    if not file.is_file():
        raise StartupError(f"{flag}={path}: no such file")
    try:
        return text_format.Parse(file.read_text(), message)
    except text_format.ParseError as exc:
        raise StartupError(f"{flag}={path}: {exc}") from None


def model_config(args: argparse.Namespace):
    from serving.model_config import read_model_config, single_model_config

    if args.model_config_file and (args.model_name or args.model_base_path):
        raise StartupError("give --model_config_file or --model_name/--model_base_path, not both")
    if args.model_config_file:
        try:
            return read_model_config(args.model_config_file)
        except Exception as exc:  # a ServingError or a parse error: name the file either way
            raise StartupError(f"--model_config_file={args.model_config_file}: {exc}") from None
    if not args.model_base_path:
        raise StartupError("give --model_base_path (and --model_name), or --model_config_file")
    return single_model_config(args.model_name or "default", args.model_base_path)


def _monitoring_config_class() -> type:
    """``tensorflow.serving.MonitoringConfig`` (monitoring_config.proto). tensorflow-serving-api ships only
    the APIs, not the config protos, so it is declared here with TF Serving's names and field numbers."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="tensorflow_serving/config/monitoring_config.proto",
                                              package="tensorflow.serving", syntax="proto3")
    prom = file.message_type.add(name="PrometheusConfig")
    prom.field.add(name="enable", number=1, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL, json_name="enable")
    prom.field.add(name="path", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL, json_name="path")
    mon = file.message_type.add(name="MonitoringConfig")
    mon.field.add(name="prometheus_config", number=1, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                  type_name=".tensorflow.serving.PrometheusConfig", json_name="prometheusConfig")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))


def metrics_path(args: argparse.Namespace) -> str | None:
    if not args.monitoring_config_file:
        return None
    cfg = _read_text_proto(args.monitoring_config_file, _monitoring_config_class()(), "--monitoring_config_file")
    if not cfg.prometheus_config.enable:
        return None
    return cfg.prometheus_config.path or DEFAULT_METRICS_PATH


def batching_parameters(args: argparse.Namespace):
    if not args.enable_batching:
        if args.batching_parameters_file:
            log.warning("--batching_parameters_file is ignored without --enable_batching (as in TF Serving)")
        return None
    from serving.batching_params import default_parameters, read_batching_parameters

    if args.batching_parameters_file:
        try:
            return read_batching_parameters(args.batching_parameters_file)
        except Exception as exc:
            raise StartupError(f"--batching_parameters_file={args.batching_parameters_file}: {exc}") from None
    return default_parameters()


async def run(args: argparse.Namespace, started=None) -> None:
    from serving.grpc_server import build_server
    from serving.model_config import read_model_config
    from serving.models import ModelManager

    config = model_config(args)
    batching = batching_parameters(args)
    path = metrics_path(args)
    manager = ModelManager()
    await manager.reload_config(config)
    server, grpc_port = build_server(manager, args.port, host=args.host,
                                     max_receive_message_bytes=args.grpc_max_receive_message_bytes,
                                     delay_s=args.delay_ms / 1000.0, batching=batching)
    await server.start()
    rest_runner, rest_port = None, None
    if args.rest_api_port:
        from serving.rest import start_rest

        rest_runner, rest_port = await start_rest(manager, args.host, args.rest_api_port, metrics_path=path,
                                                  batcher=getattr(server, "batcher", None))
    log.info("serving %s: gRPC on %d, REST on %s", sorted(manager.configs), grpc_port, rest_port or "off")
    if started:
        started(grpc_port, rest_port)
    tasks = [asyncio.create_task(manager.poll_forever(args.file_system_poll_wait_seconds))]
    if args.model_config_file and args.model_config_file_poll_wait_seconds > 0:
        async def reread() -> None:
            while True:
                await asyncio.sleep(args.model_config_file_poll_wait_seconds)
                try:
                    await manager.reload_config(read_model_config(args.model_config_file))
                except Exception as exc:  # keep serving the last good config, as TF Serving does
                    log.error("re-reading %s failed: %s", args.model_config_file, exc)
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


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        asyncio.run(run(args))
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
