"""``liveml serve`` / ``python -m serving.server`` take tensorflow_model_server's command line (serving/flags.py):
every flag of main.cc parses, in both spellings; the ones with no meaning here are accepted with a log line;
a whole TF Serving command line starts the server, CORS and the REST timeout included."""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving.flags import FLAGS, TF_FLAGS, FlagError, no_effect_lines, parse, parse_value
from serving.testing import export_standin_model, standin_row
from tests.conftest import LIVEML, OFFLINE_PORTS, REPO, env_without_config, write_test_config

pytestmark = pytest.mark.unit

# The flags tensorflow_serving/model_servers/main.cc defines, in its order (tensorflow/serving at 9d981c5).
MAIN_CC = """port grpc_socket_path rest_api_port rest_api_num_threads rest_api_timeout_in_ms
rest_api_enable_cors_support enable_batching allow_version_labels_for_unavailable_models batching_parameters_file
enable_per_model_batching_parameters model_config_file model_config_file_poll_wait_seconds model_name model_base_path
num_load_threads num_unload_threads max_num_load_retries load_retry_interval_micros file_system_poll_wait_seconds
flush_filesystem_caches tensorflow_session_parallelism tensorflow_session_config_file tensorflow_intra_op_parallelism
tensorflow_inter_op_parallelism use_alts_credentials ssl_config_file platform_config_file
per_process_gpu_memory_fraction saved_model_tags grpc_channel_arguments grpc_max_threads enable_model_warmup
num_request_iterations_for_warmup version monitoring_config_file remove_unused_fields_from_bundle_metagraph
prefer_tflite_model num_tflite_pools num_tflite_interpreters_per_pool enable_signature_method_name_check
xla_cpu_compilation_enabled xla_gpu_compilation_enabled enable_profiler thread_pool_factory_config_file
mixed_precision skip_initialize_tpu enable_grpc_healthcheck_service enable_serialization_as_tensor_content""".split()

SAMPLES = {"int32": ("-7", -7), "int64": (str(1 << 40), 1 << 40), "float": ("0.25", 0.25),
           "string": ("a=b,c", "a=b,c")}


def test_the_flag_list_is_main_ccs():
    assert [flag.name for flag in TF_FLAGS] == MAIN_CC
    assert {flag.type for flag in TF_FLAGS} <= {"int32", "int64", "float", "bool", "string"}


@pytest.mark.parametrize("flag", TF_FLAGS, ids=[f.name for f in TF_FLAGS])
def test_every_flag_parses_in_both_spellings(flag):
    if flag.type == "bool":
        cases = {(f"--{flag.name}",): True, (f"--{flag.name}=true",): True, (f"--{flag.name}=false",): False,
                 (f"--{flag.name}=TRUE",): True, (f"--{flag.name}=1",): True, (f"--{flag.name}=0",): False,
                 (f"--{flag.name}", "false"): False, (f"--{flag.name}", "true"): True,
                 (f"--no-{flag.name}",): False}
    else:
        text, value = SAMPLES[flag.type]
        cases = {(f"--{flag.name}={text}",): value, (f"--{flag.name}", text): value}
    for argv, value in cases.items():
        parsed = parse(list(argv) + ["--port=1"] if flag.name != "port" else list(argv))
        assert getattr(parsed, flag.name) == value, argv
        assert parsed.given[0] == flag.name and parsed.unknown == []


def test_defaults_are_server_hs():
    parsed = parse([])
    assert (parsed.port, parsed.rest_api_timeout_in_ms, parsed.model_name, parsed.file_system_poll_wait_seconds,
            parsed.max_num_load_retries, parsed.enable_model_warmup, parsed.saved_model_tags) == \
        (8500, 30000, "default", 1, 5, True, "serve")
    assert parsed.given == []


@pytest.mark.parametrize("argv, message", [
    (["--port=eighty"], "Couldn't interpret value eighty for flag port."),
    (["--port=2147483648"], "Couldn't interpret value 2147483648 for flag port."),  # past int32
    (["--port=1.5"], "Couldn't interpret value 1.5 for flag port."),
    (["--load_retry_interval_micros=9223372036854775808"], "for flag load_retry_interval_micros"),
    (["--enable_batching=yes"], "Couldn't interpret value yes for flag enable_batching."),
    (["--per_process_gpu_memory_fraction=half"], "for flag per_process_gpu_memory_fraction"),
    (["--model_name"], "--model_name needs a value"),
    (["--model_name", "--port=1"], "--model_name needs a value"),
])
def test_a_value_that_does_not_parse_stops_start_up_naming_the_flag(argv, message):
    with pytest.raises(FlagError, match=re.escape(message)):
        parse(argv)


def test_fractional_poll_seconds_are_this_servers_extension():
    assert parse(["--file_system_poll_wait_seconds=0.5"]).file_system_poll_wait_seconds == 0.5
    assert parse(["--model_config_file_poll_wait_seconds", "2"]).model_config_file_poll_wait_seconds == 2
    assert parse_value(FLAGS["rest_api_timeout_in_ms"], " 250 ") == 250  # absl SimpleAtoi trims whitespace


def test_arguments_that_are_no_flag_are_kept_aside_as_tf_serving_does():
    parsed = parse(["--port=1", "--no_such_flag=3", "stray", "--enable_batchingX", "--", "--port=2"])
    assert parsed.port == 1
    assert parsed.unknown == ["--no_such_flag=3", "stray", "--enable_batchingX", "--", "--port=2"]


def test_flags_without_effect_say_so_once_each():
    parsed = parse(["--num_load_threads=4", "--enable_batching", "--prefer_tflite_model=false", "--port=9"])
    lines = no_effect_lines(parsed)
    assert len(lines) == 2
    assert lines[0].startswith("--num_load_threads=4 is accepted but has no effect in this server: ")
    assert lines[1].startswith("--prefer_tflite_model=False is accepted but has no effect")
    effective = {f.name for f in TF_FLAGS if f.effect is None}
    assert {"rest_api_enable_cors_support", "rest_api_timeout_in_ms", "grpc_socket_path",
            "enable_signature_method_name_check", "allow_version_labels_for_unavailable_models"} <= effective


# -- a whole command line, through `liveml serve` ------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command_line(tmp: Path, rest_port: int) -> list[str]:
    """Every flag of main.cc, half as --flag=value and half as --flag value, with values a server can start
    with here."""
    config = tmp / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "tip" base_path: "{tmp / "tip"}" '
                      f'model_platform: "tensorflow" }} }}\n')
    monitoring = tmp / "monitoring.config"
    monitoring.write_text('prometheus_config { enable: true path: "/metrics" }\n')
    values = {"port": "0", "grpc_socket_path": str(tmp / "grpc.sock"), "rest_api_port": str(rest_port),
              "rest_api_timeout_in_ms": "20000", "rest_api_enable_cors_support": "true", "enable_batching": "false",
              "batching_parameters_file": "", "model_config_file": str(config),
              "model_config_file_poll_wait_seconds": "0", "model_name": "ignored", "model_base_path": "/ignored",
              "file_system_poll_wait_seconds": "1", "tensorflow_session_parallelism": "0",
              "tensorflow_intra_op_parallelism": "2", "tensorflow_inter_op_parallelism": "2",
              "use_alts_credentials": "false", "ssl_config_file": "", "saved_model_tags": "serve",
              "grpc_channel_arguments": "grpc.max_receive_message_length=4194304",
              "num_request_iterations_for_warmup": "2", "version": "false",
              "monitoring_config_file": str(monitoring), "enable_signature_method_name_check": "false",
              "enable_serialization_as_tensor_content": "true"}
    samples = {"int32": "3", "int64": "7", "float": "0.5", "bool": "true", "string": "x"}
    argv = []
    for i, flag in enumerate(TF_FLAGS):
        value = values.get(flag.name, samples[flag.type])
        argv += [f"--{flag.name}={value}"] if i % 2 or value == "" else [f"--{flag.name}", value]
    return argv + ["--host=127.0.0.1"]


def test_a_tensorflow_model_server_command_line_starts_liveml_serve(tmp_path):
    export_standin_model(tmp_path / "tip", 1)
    rest_port = free_port()
    config = write_test_config(tmp_path / "home", OFFLINE_PORTS)
    log_path = tmp_path / "server.log"
    env = env_without_config()  # a developer's config stays out; LIVEML_PROC_MARK and the like stay in
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([LIVEML, "--config", str(config), "serve", *command_line(tmp_path, rest_port)],
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 120
        while not re.search(r"gRPC on \d+, REST on \d+", log_path.read_text()):
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)
        text = log_path.read_text()
        for flag in TF_FLAGS:  # one line for each flag without effect here, and none for the others
            assert (f"--{flag.name}=" in text and "has no effect" in text.split(f"--{flag.name}=")[1].split("\n")[0]) \
                == (flag.effect is not None), flag.name
        assert "unknown argument" not in text and "Traceback" not in text
        response = requests.post(f"http://127.0.0.1:{rest_port}/v1/models/tip:predict",
                                 json={"instances": [standin_row()]}, headers={"Origin": "https://app.example"},
                                 timeout=30)
        assert response.status_code == 200, response.text
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        assert response.headers["Access-Control-Allow-Methods"] == "POST, GET"
        assert response.headers["Access-Control-Allow-Headers"] == "Content-Type"
        preflight = requests.options(f"http://127.0.0.1:{rest_port}/v1/models/tip:predict",
                                     headers={"Origin": "http://app.example"}, timeout=30)
        assert preflight.status_code == 200 and preflight.headers["Access-Control-Allow-Origin"] == "*"
        assert requests.get(f"http://127.0.0.1:{rest_port}/metrics", timeout=30).status_code == 200
        with grpc.insecure_channel(f"unix:{tmp_path / 'grpc.sock'}") as channel:  # --port=0 with a socket: only it
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "tip"
            for name, value in standin_row().items():
                dtype = tf.int64 if isinstance(value, int) else None
                request.inputs[name].CopyFrom(tf.make_tensor_proto([value], dtype=dtype))
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
        assert response.outputs["probabilities"].tensor_content  # --enable_serialization_as_tensor_content
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_version_prints_and_exits(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "serving.server", "--version"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("TensorFlow ModelServer: ")
    assert "TensorFlow Library: " in proc.stdout


@pytest.mark.parametrize("argv, message", [
    (["--port=x"], "Couldn't interpret value x for flag port."),
    (["--model_name=m"], "Both server_options.model_base_path and server_options.model_config_file are empty"),
    (["--model_base_path=/m", "--batching_parameters_file=/b"], "batching_parameters_file is set without"),
    (["--model_base_path=/m", "--tensorflow_session_parallelism=1", "--tensorflow_intra_op_parallelism=1",
      "--tensorflow_inter_op_parallelism=1"], "You cannot configure all."),
    (["--model_base_path=/m", "--use_alts_credentials", "--ssl_config_file=/s"],
     "Either use_alts_credentials must be false or ssl_config_file must be empty."),
])
def test_bad_command_lines_stop_with_tf_servings_reason(argv, message, caplog):
    from serving.server import main

    caplog.set_level(logging.INFO)
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(argv) == 2
    assert message in err.getvalue()
