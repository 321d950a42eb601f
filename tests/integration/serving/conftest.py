"""The model server under test: ours, started as a process with TF Serving's flags, or a real TF Serving.

Set ``LIVEML_TF_SERVING_ADDRESS`` (gRPC, host:port) and ``LIVEML_TF_SERVING_REST`` (host:port) to run the
same suite against a real ``tensorflow_model_server``. It must be able to read
``LIVEML_TF_SERVING_MODEL_BASE_PATH`` (a directory the tests write model versions into), and be started
with a model config file it may be reloaded from, e.g. ``model_config_list {}``:

    docker run -p 8500:8500 -p 8501:8501 -v /tmp/tfs:/tmp/tfs tensorflow/serving:2.16.1 \\
        --model_config_file=/tmp/tfs/empty.config --file_system_poll_wait_seconds=1

The tests of flags (``flagged``) need a second one, started with :data:`FLAGGED_FLAGS` and a batching file
holding :data:`BATCHING_CONFIG`; name it with ``LIVEML_TF_SERVING_FLAGGED_ADDRESS``,
``LIVEML_TF_SERVING_FLAGGED_REST`` and ``LIVEML_TF_SERVING_FLAGGED_MODEL_BASE_PATH`` (without them, against a
real TF Serving, those tests are skipped):

    docker run -p 9500:8500 -p 9501:8501 -v /tmp/tfs2:/tmp/tfs2 tensorflow/serving:2.16.1 \\
        --model_config_file=/tmp/tfs2/empty.config --file_system_poll_wait_seconds=1 \\
        --batching_parameters_file=/tmp/tfs2/batching.config <FLAGGED_FLAGS>

The suite drives the server only through its public API (the tensorflow-serving-api stubs and REST), so
nothing in it depends on our implementation; a test of something only this server does says so and skips
against a real TF Serving (``Server.ours``).
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
from tensorflow_serving.apis import (get_model_status_pb2, model_management_pb2, model_service_pb2_grpc,
                                     prediction_service_pb2_grpc)
from tensorflow_serving.config import model_server_config_pb2

from serving.testing import export_signatures_model, export_standin_model
from tests.conftest import REPO

MODEL = "conformance"  # the stand-in taxi model: versions 1 and 2, labels stable=1 and canary=2
SIGS = "conformance_sigs"  # serving.testing.export_signatures_model: TF1-style, conversions and error paths
BIAS = {1: -1.0, 2: 1.0, 3: 0.5}
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE

# The second server's flags (tensorflow_model_server's; the batching file path is added by the fixture).
FLAGGED_FLAGS = ["--enable_batching=true", "--rest_api_enable_cors_support=true", "--rest_api_timeout_in_ms=500",
                 "--enable_signature_method_name_check=true", "--allow_version_labels_for_unavailable_models=true",
                 "--grpc_channel_arguments=grpc.max_receive_message_length=1048576"]
BATCHING_CONFIG = """max_batch_size { value: 2 }
batch_timeout_micros { value: 0 }
max_enqueued_batches { value: 1 }
num_batch_threads { value: 1 }
allowed_batch_sizes: 2
"""


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


def start_ours(flags: list[str], write_files=None):
    """Our server as a process on free ports, with an empty model config and ``flags``; yields it."""
    home = Path(tempfile.mkdtemp(prefix="liveml-serving-"))
    config = home / "empty.config"
    config.write_text("model_config_list {}\n")
    extra = write_files(home) if write_files else []
    grpc_port, rest_port = free_port(), free_port()
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.server", f"--port={grpc_port}", f"--rest_api_port={rest_port}",
         "--host=127.0.0.1", f"--model_config_file={config}", "--file_system_poll_wait_seconds=0.5", *flags, *extra],
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


def real_server(prefix: str) -> Server | None:
    address = os.environ.get(f"{prefix}_ADDRESS")
    if not address:
        return None
    server = Server(address, os.environ[f"{prefix}_REST"], Path(os.environ[f"{prefix}_MODEL_BASE_PATH"]), ours=False)
    wait_up(server)
    return server


@pytest.fixture(scope="session")
def tf_server():
    server = real_server("LIVEML_TF_SERVING")
    if server is not None:
        yield server
        return
    yield from start_ours([])


@pytest.fixture(scope="session")
def flagged_server():
    """A server started with :data:`FLAGGED_FLAGS`: ours, or a real one named by LIVEML_TF_SERVING_FLAGGED_*."""
    if os.environ.get("LIVEML_TF_SERVING_ADDRESS"):
        server = real_server("LIVEML_TF_SERVING_FLAGGED")
        if server is None:
            pytest.skip("a real TF Serving started with FLAGGED_FLAGS is needed: set LIVEML_TF_SERVING_FLAGGED_*")
        yield server
        return

    def batching_file(home: Path) -> list[str]:
        (home / "batching.config").write_text(BATCHING_CONFIG)
        return [f"--batching_parameters_file={home / 'batching.config'}"]
    yield from start_ours(FLAGGED_FLAGS, batching_file)


# -- driving a server through its API ------------------------------------------------------------------------

def stubs(server: Server):
    channel = grpc.insecure_channel(server.grpc_address)
    return prediction_service_pb2_grpc.PredictionServiceStub(channel), model_service_pb2_grpc.ModelServiceStub(channel)


def config(server: Server, versions=None, labels=None, sigs_labels=None, models=(MODEL, SIGS)
           ) -> model_server_config_pb2.ModelServerConfig:
    """The reload config: MODEL with a version policy ("all", a list, or the latest) and labels, and SIGS."""
    cfg = model_server_config_pb2.ModelServerConfig()
    if MODEL in models:
        m = cfg.model_config_list.config.add(name=MODEL, base_path=str(server.model_path()),
                                             model_platform="tensorflow")
        if versions == "all":
            m.model_version_policy.all.SetInParent()
        elif versions:
            m.model_version_policy.specific.versions.extend(versions)
        for k, v in (labels or {}).items():
            m.version_labels[k] = v
    if SIGS in models:
        s = cfg.model_config_list.config.add(name=SIGS, base_path=str(server.model_path(SIGS)),
                                             model_platform="tensorflow")
        for k, v in (sigs_labels or {}).items():
            s.version_labels[k] = v
    return cfg


def reload(server: Server, cfg):
    _, models = stubs(server)
    return models.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=cfg), timeout=60)


def states(server: Server, model: str = MODEL) -> dict[int, int]:
    _, models = stubs(server)
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = model
    try:
        resp = models.GetModelStatus(req, timeout=5)
    except grpc.RpcError:
        return {}
    return {s.version: s.state for s in resp.model_version_status}


def wait_for(pred, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="session")
def deployed(tf_server):
    """MODEL versions 1 and 2 on disk, both served, labelled stable=1 and canary=2; SIGS version 1."""
    import shutil

    shutil.rmtree(tf_server.model_path(), ignore_errors=True)
    shutil.rmtree(tf_server.model_path(SIGS), ignore_errors=True)
    for v in (1, 2):
        export_standin_model(tf_server.model_path(), v, bias=BIAS[v])
    export_signatures_model(tf_server.model_path(SIGS), 1)
    assert reload(tf_server, config(tf_server, versions="all")).status.error_code == 0
    wait_for(lambda: all(states(tf_server).get(v) == AVAILABLE for v in (1, 2)), what="versions 1 and 2")
    wait_for(lambda: states(tf_server, SIGS).get(1) == AVAILABLE, what=f"{SIGS} version 1")
    resp = reload(tf_server, config(tf_server, versions="all", labels={"stable": 1, "canary": 2}))
    assert resp.status.error_code == 0, resp.status.error_message
    return tf_server


@pytest.fixture(scope="session")
def flagged(flagged_server):
    """The flagged server serving SIGS version 1."""
    import shutil

    shutil.rmtree(flagged_server.model_path(SIGS), ignore_errors=True)
    export_signatures_model(flagged_server.model_path(SIGS), 1)
    assert reload(flagged_server, config(flagged_server, models=(SIGS,))).status.error_code == 0
    wait_for(lambda: states(flagged_server, SIGS).get(1) == AVAILABLE, what=f"{SIGS} version 1")
    return flagged_server
