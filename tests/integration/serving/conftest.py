"""The model server under test: ours, started as a process with TF Serving's flags, or a real TF Serving.

Set ``LIVEML_TF_SERVING_ADDRESS`` (gRPC, host:port) and ``LIVEML_TF_SERVING_REST`` (host:port) to run the
same suite against a real ``tensorflow_model_server``. It must be able to read
``LIVEML_TF_SERVING_MODEL_BASE_PATH`` (a directory the tests write model versions into), and be started
with a model config file it may be reloaded from, e.g. ``model_config_list {}``:

    docker run -p 8500:8500 -p 8501:8501 -v /tmp/tfs:/tmp/tfs tensorflow/serving:2.16.1 \\
        --model_config_file=/tmp/tfs/empty.config --file_system_poll_wait_seconds=1

The suite drives the server only through its public API (the tensorflow-serving-api stubs and REST), so
nothing in it depends on our implementation.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import requests

from tests.conftest import REPO

MODEL = "conformance"


@dataclass
class Server:
    grpc_address: str
    rest_address: str
    base_path: Path  # where model versions go: <base_path>/<model>/<version>
    ours: bool
    proc: subprocess.Popen | None = None

    @property
    def rest(self) -> str:
        return f"http://{self.rest_address}"

    def model_path(self, model: str = MODEL) -> Path:
        return self.base_path / model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(server: Server, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc is not None and server.proc.poll() is not None:
            raise AssertionError(f"the model server exited with {server.proc.returncode}")
        try:
            requests.get(f"{server.rest}/v1/models/{MODEL}", timeout=1)
            grpc.channel_ready_future(grpc.insecure_channel(server.grpc_address)).result(timeout=1)
            return
        except (requests.RequestException, grpc.FutureTimeoutError):
            time.sleep(0.3)
    raise AssertionError(f"the model server did not come up in {timeout:.0f} s")


@pytest.fixture(scope="session")
def tf_server():
    address = os.environ.get("LIVEML_TF_SERVING_ADDRESS")
    if address:
        base = Path(os.environ["LIVEML_TF_SERVING_MODEL_BASE_PATH"])
        server = Server(address, os.environ["LIVEML_TF_SERVING_REST"], base, ours=False)
        wait_up(server)
        yield server
        return
    home = Path(tempfile.mkdtemp(prefix="liveml-serving-"))
    config = home / "empty.config"
    config.write_text("model_config_list {}\n")
    grpc_port, rest_port = free_port(), free_port()
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.server", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
         "--host=127.0.0.1", f"--model_config_file={config}", "--file_system_poll_wait_seconds=0.5"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    server = Server(f"127.0.0.1:{grpc_port}", f"127.0.0.1:{rest_port}", home / "models", ours=True, proc=proc)
    try:
        wait_up(server)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        assert proc.returncode in (0, -15), f"the server did not stop cleanly: {proc.returncode}"
