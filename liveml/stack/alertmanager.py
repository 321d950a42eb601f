"""Alertmanager (Debian's ``prometheus-alertmanager``), receiving Prometheus's alerts and posting them to a webhook.

One instance, no cluster (``--cluster.listen-address=`` turns gossip off), listening on
``127.0.0.1:alertmanager.port``, its silences and notification log under ``home/alertmanager/data``. The
config it reads is written to ``home/alertmanager/alertmanager.yml`` on every start: one route to the receiver
``liveml``, which posts to ``alertmanager.webhook_url`` (Alertmanager's webhook format, version 4, resolved
alerts included) or, with no URL, has no endpoint, so alerts are only listed (``/api/v2/alerts``, ``amtool``).
The timings are short, for a test or a demo to see a notification within seconds: ``group_wait`` 1 s,
``group_interval`` 5 s, ``repeat_interval`` 1 h.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import requests
import yaml

from liveml.config import LivemlConfig
from liveml.stack import process
from liveml.stack.base import Service, require_binary

RECEIVER = "liveml"
# grouped by alert and the model / job / feature it is about, so one drifted feature is one notification
GROUP_BY = ["alertname", "model_name", "model_version", "job_name", "feature"]


def alertmanager_config(cfg: LivemlConfig) -> dict[str, Any]:
    """Alertmanager's configuration file as a dict (its documented ``route`` / ``receivers`` layout)."""
    receiver: dict[str, Any] = {"name": RECEIVER}
    if cfg.alertmanager.webhook_url:
        receiver["webhook_configs"] = [{"url": cfg.alertmanager.webhook_url, "send_resolved": True}]
    return {
        "route": {"receiver": RECEIVER, "group_by": GROUP_BY, "group_wait": "1s", "group_interval": "5s",
                  "repeat_interval": "1h"},
        "receivers": [receiver],
    }


class AlertmanagerService(Service):
    """Alertmanager for Prometheus's alerts (``alerting.alertmanagers`` in Prometheus's generated config)."""

    name = "alertmanager"
    start_timeout = 30.0

    def ports(self) -> list[int]:
        return [self.cfg.alertmanager.port]

    def address(self) -> str:
        return f"localhost:{self.cfg.alertmanager.port}"

    def write_conf(self) -> Path:
        path = self.cfg.home_file("alertmanager", "alertmanager.yml")
        path.write_text(yaml.safe_dump(alertmanager_config(self.cfg), sort_keys=False))
        return path

    def _start(self) -> subprocess.Popen:
        binary = require_binary("prometheus-alertmanager", "prometheus-alertmanager")
        conf = self.write_conf()
        port = self.cfg.alertmanager.port
        cmd = [binary, f"--config.file={conf}", f"--storage.path={self.cfg.home_dir('alertmanager', 'data')}",
               f"--web.listen-address=127.0.0.1:{port}", f"--web.external-url=http://localhost:{port}/",
               "--cluster.listen-address="]
        return process.spawn(cmd, self.log, self.pidfile)

    def healthy(self) -> bool:
        return requests.get(f"http://localhost:{self.cfg.alertmanager.port}/-/ready", timeout=2).ok
