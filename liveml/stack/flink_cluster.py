"""A Flink standalone cluster (JobManager + TaskManagers) from the pyflink wheel's own bin/ and our config."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import psutil
import requests
import yaml

from liveml.config import LivemlConfig
from liveml.flink import flink_env, flink_home, render_flink_conf
from liveml.stack import process
from liveml.stack.base import Service, java_binary


class FlinkService(Service):
    """A Flink standalone cluster (one JobManager, one TaskManager) from the pyflink wheel's own bin/."""

    name = "flink"
    start_timeout = 120.0

    def __init__(self, cfg: LivemlConfig):
        super().__init__(cfg)
        self.log = cfg.path("logs", "flink-jobmanager.log")  # what a failed start quotes

    def ports(self) -> list[int]:
        return [self.cfg.flink.port, self.cfg.flink.rpc_port]

    def address(self) -> str:
        return self.cfg.flink.rest_url

    @property
    def conf_dir(self) -> Path:
        return self.cfg.path("flink", "conf")

    def write_conf(self) -> Path:
        home = flink_home()
        conf_dir = self.cfg.home_dir("flink", "conf")
        for item in (home / "conf").iterdir():  # log4j, logback, masters, workers: as shipped
            if item.is_file() and item.name != "config.yaml":
                shutil.copy(item, conf_dir / item.name)
        conf = render_flink_conf(self.cfg, yaml.safe_load((home / "conf" / "config.yaml").read_text()))
        (conf_dir / "config.yaml").write_text(yaml.safe_dump(conf, sort_keys=True))
        return conf_dir

    def _start(self) -> subprocess.Popen:
        java_binary()
        self.write_conf()
        jm = process.spawn(["bash", str(flink_home() / "bin" / "jobmanager.sh"), "start-foreground"],
                           self.log, self.pidfile, env=flink_env(self.cfg))
        self.start_taskmanager()
        return jm

    def start_taskmanager(self) -> subprocess.Popen:
        """Start one more TaskManager (also how a killed one is replaced); tracked like the first."""
        return process.spawn(["bash", str(flink_home() / "bin" / "taskmanager.sh"), "start-foreground"],
                             self.cfg.path("logs", "flink-taskmanager.log"), self.pidfile, env=flink_env(self.cfg))

    def taskmanager_java_pids(self) -> list[int]:
        pids = []
        for pid in self.pids():
            for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
                try:
                    if proc.name() == "java" and any("TaskManagerRunner" in a for a in proc.cmdline()):
                        pids.append(proc.pid)
                except psutil.Error:
                    continue
        return sorted(set(pids))

    def healthy(self) -> bool:
        return self.overview().get("taskmanagers", 0) >= 1

    def overview(self) -> dict[str, Any]:
        resp = requests.get(f"{self.cfg.flink.rest_url}/overview", timeout=2)
        resp.raise_for_status()
        return resp.json()

    def status(self) -> dict[str, Any]:
        out = super().status()
        try:
            ov = self.overview()
            out.update({"taskmanagers": ov.get("taskmanagers"), "slots_total": ov.get("slots-total"),
                        "jobs_running": ov.get("jobs-running"), "version": ov.get("flink-version")})
        except Exception:
            out.update({"taskmanagers": 0})
        return out
