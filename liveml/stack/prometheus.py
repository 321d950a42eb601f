"""Prometheus, scraping Flink's reporter and the Python processes' /metrics endpoints, evaluating the alert
rules in ``deploy/prometheus/*.yml`` and sending what fires to the stack's Alertmanager."""

from __future__ import annotations

import subprocess
from pathlib import Path

import requests
import yaml

from liveml.config import REPO_ROOT
from liveml.stack import process
from liveml.stack.base import Service, require_binary

RULES_DIR = REPO_ROOT / "deploy" / "prometheus"


class PrometheusService(Service):
    """Prometheus scraping Flink's reporter and the Python processes' /metrics endpoints."""

    name = "prometheus"
    start_timeout = 30.0

    def ports(self) -> list[int]:
        return [self.cfg.prometheus.port]

    def address(self) -> str:
        return f"localhost:{self.cfg.prometheus.port}"

    def write_conf(self) -> Path:
        p = self.cfg.prometheus
        lo, hi = (int(x) for x in self.cfg.flink.metrics_port_range.split("-"))
        conf = {
            "global": {"scrape_interval": p.scrape_interval, "evaluation_interval": p.scrape_interval},
            # every rules file in deploy/prometheus/ (one per concern; their promtool tests are in tests/)
            "rule_files": [str(RULES_DIR / "*.yml")],
            "alerting": {"alertmanagers": [{"static_configs": [
                {"targets": [f"localhost:{self.cfg.alertmanager.port}"]}]}]},
            "scrape_configs": [
                {"job_name": "flink", "static_configs": [{"targets": [f"localhost:{port}"
                                                                      for port in range(lo, hi + 1)]}]},
                {"job_name": "liveml", "static_configs": [{"targets": [
                    f"localhost:{p.metrics_base_port + i}" for i in range(10)]}]},
                # the model server's metrics, on its REST port at TF Serving's monitoring path
                {"job_name": "serving", "metrics_path": "/monitoring/prometheus/metrics",
                 "static_configs": [{"targets": [self.cfg.serving.rest]}]},
            ],
        }
        path = self.cfg.home_file("prometheus", "prometheus.yml")
        path.write_text(yaml.safe_dump(conf, sort_keys=False))
        return path

    def _start(self) -> subprocess.Popen:
        binary = require_binary("prometheus", "prometheus")
        conf = self.write_conf()
        cmd = [binary, f"--config.file={conf}", f"--storage.tsdb.path={self.cfg.home_dir('prometheus', 'data')}",
               f"--web.listen-address=127.0.0.1:{self.cfg.prometheus.port}", "--web.enable-lifecycle"]
        return process.spawn(cmd, self.log, self.pidfile)

    def healthy(self) -> bool:
        return requests.get(f"http://localhost:{self.cfg.prometheus.port}/-/ready", timeout=2).ok
