"""The monitor (`liveml monitor`) as a stack service: `liveml up monitor` runs it in the background.

Started only when named, like ``serving``: it reads tables that the jobs fill (``predictions.trips``,
``monitoring.outcomes``), so it belongs with the jobs a demo or an operator starts, not with the
infrastructure a bare `liveml up` brings (and CI's fixtures bring up, where it would only spend a core).
Started before those tables exist, it does not fail: it serves ``/metrics``, logs that it is waiting, and
begins once they are there. Healthy when its ``/metrics`` answers; its log is ``<home>/logs/monitor.log``.
"""

from __future__ import annotations

import subprocess
import sys

import requests

from liveml.config import REPO_ROOT
from liveml.stack import process
from liveml.stack.base import Service


class MonitorService(Service):
    name = "monitor"
    start_timeout = 60.0  # pandas, pyiceberg and DuckDB imports before /metrics answers
    on_request = True  # started only when named: `liveml up monitor`

    def port(self) -> int:
        return self.cfg.prometheus.metrics_base_port + self.cfg.monitor.metrics_port_offset

    def ports(self) -> list[int]:
        return [self.port()]

    def address(self) -> str:
        return f"localhost:{self.port()}"

    def _start(self) -> subprocess.Popen:
        # not `-m liveml.cli`: run as __main__, the CLI module would lack the commands registered on liveml.cli
        cmd = [sys.executable, "-c", "from liveml.cli import main; main(prog_name='liveml')"]
        if self.cfg.source:
            cmd += ["--config", str(self.cfg.source)]
        return process.spawn([*cmd, "monitor"], self.log, self.pidfile, cwd=REPO_ROOT)

    def healthy(self) -> bool:
        return requests.get(f"http://127.0.0.1:{self.port()}/metrics", timeout=2).ok
