"""What every service of the local stack shares: the verbs the launcher drives, pid tracking, prerequisites.

Each service is a small class with the same verbs (start, stop, healthy, address, ports, status); the
launcher in ``liveml.stack.launcher`` drives them in dependency order. Everything a service writes lives
under ``LIVEML_HOME``; nothing is installed system-wide at run time.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from liveml.config import LivemlConfig
from liveml.errors import PrerequisiteError
from liveml.stack import process
from liveml.stack.process import PidFile


def require_binary(binary: str, package: str) -> str:
    """The path of ``binary``; missing, an error naming the Debian package that provides it."""
    found = shutil.which(binary)
    if not found:
        raise PrerequisiteError(f"{binary} is not installed. Run `make setup` (as root it apt-installs it) "
                                f"or `apt-get install {package}`.")
    return found


def java_binary() -> str:
    """Java from JAVA_HOME when it is set, else from PATH; missing Java names the package to install."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if not candidate.exists():
            raise PrerequisiteError(f"JAVA_HOME={java_home} has no bin/java. Install Java 17 "
                                    "(`apt-get install openjdk-17-jdk-headless`) or fix JAVA_HOME.")
        return str(candidate)
    return require_binary("java", "openjdk-17-jdk-headless")


class Service(ABC):
    name: str = ""
    managed = True  # False: nothing to start (e.g. an external PostgreSQL)
    start_timeout = 60.0

    def __init__(self, cfg: LivemlConfig):
        self.cfg = cfg
        self.pidfile = PidFile(cfg.path("run", f"{self.name}.pid"))
        self.log = cfg.path("logs", f"{self.name}.log")

    # overridden by each service
    def ports(self) -> list[int]:
        return []

    def address(self) -> str:
        return ""

    @abstractmethod
    def healthy(self) -> bool:
        """True when the service answers; may raise while it is starting."""

    @abstractmethod
    def _start(self) -> subprocess.Popen | None:
        """Launch the service's process(es), tracked in ``self.pidfile``; return the one to watch."""

    # shared behaviour
    def pids(self) -> list[int]:
        return [t.pid for t in self.pidfile.alive()]

    def start(self) -> str:
        """Start if needed. Returns 'started' or 'already up'."""
        if self.pidfile.alive() and self.is_up():
            return "already up"
        if self.pidfile.alive():  # ours but unhealthy (e.g. half-started): restart cleanly
            self.stop()
        for port in self.ports():
            process.ensure_port_free(self.name, port)
        proc = self._start()
        process.wait_until(self.healthy, self.start_timeout, f"{self.name}", self.log, proc)
        return "started"

    def stop(self) -> str:
        if not self.pidfile.read() and not self.pidfile.marked():
            return "not running"
        process.terminate(self.pidfile)
        self.pidfile.remove()
        return "stopped"

    def is_up(self) -> bool:
        """Healthy, with any failure of the probe read as 'no'."""
        try:
            return bool(self.healthy())
        except Exception:
            return False

    def status(self) -> dict[str, Any]:
        pids = self.pids()
        return {"up": self.is_up(), "address": self.address(), "pid": pids[0] if pids else None,
                "pids": pids, "managed": self.managed, "log": str(self.log)}
