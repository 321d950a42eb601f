"""The model server (serving/), started as TF Serving would be: a model config file and the usual flags.

Not part of a bare `liveml up`: it loads TensorFlow, which a feature pipeline does not need. Start it with
`liveml up serving`; a bare `liveml down` stops it too. Its models come from the config file it is given,
written from ``liveml.yaml`` on first start (``<home>/serving/models.config``: model ``serving.model_name``
under ``<model_base_path>/<model_name>``) and rewritten by `liveml models promote|rollback`, so version
labels survive a restart as they would with TF Serving.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import requests

from liveml.config import REPO_ROOT, LivemlConfig
from liveml.stack import process
from liveml.stack.base import Service


def model_config_path(cfg: LivemlConfig) -> Path:
    return cfg.home_file("serving", "models.config")


def default_model_config(cfg: LivemlConfig) -> str:
    base = cfg.model_base_path / cfg.serving.model_name
    return ("model_config_list {\n  config {\n"
            f"    name: \"{cfg.serving.model_name}\"\n    base_path: \"{base}\"\n"
            "    model_platform: \"tensorflow\"\n  }\n}\n")


def ensure_model_config(cfg: LivemlConfig) -> Path:
    path = model_config_path(cfg)
    if not path.is_file():
        path.write_text(default_model_config(cfg))
    cfg.home_dir(cfg.serving.model_base_path, cfg.serving.model_name)
    return path


class ServingService(Service):
    name = "serving"
    start_timeout = 90.0  # TensorFlow's import and the first model load
    on_request = True  # started only when named: `liveml up serving`

    def _port(self, addr: str) -> int:
        return int(addr.rsplit(":", 1)[1])

    def ports(self) -> list[int]:
        return [self._port(self.cfg.serving.grpc), self._port(self.cfg.serving.rest)]

    def address(self) -> str:
        return self.cfg.serving.grpc

    def _start(self) -> subprocess.Popen:
        conf = ensure_model_config(self.cfg)
        cmd = [sys.executable, "-m", "serving.server", f"--port={self.ports()[0]}",
               f"--rest_api_port={self.ports()[1]}", "--host=127.0.0.1", f"--model_config_file={conf}",
               "--file_system_poll_wait_seconds=1", f"--monitoring_config_file={self.monitoring_config()}"]
        return process.spawn(cmd, self.log, self.pidfile, cwd=REPO_ROOT)

    def monitoring_config(self) -> Path:
        path = self.cfg.home_file("serving", "monitoring.config")
        path.write_text('prometheus_config {\n  enable: true\n  path: "/monitoring/prometheus/metrics"\n}\n')
        return path

    def healthy(self) -> bool:
        return requests.get(f"http://{self.cfg.serving.rest}/v1/models/{self.cfg.serving.model_name}",
                            timeout=2).status_code in (200, 404)
