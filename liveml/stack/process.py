"""Processes we start, remembered by pid file, so `liveml down` stops exactly those and nothing else.

A pid file records each pid with its start time: a pid the kernel has since given to another program
is never mistaken for ours. Every process we start also carries the pid file's path in its environment
(``LIVEML_PROC_MARK``), and so does everything it starts in turn: Flink's Python workers, which detach
from the TaskManager's process tree, are found by that mark and stopped with the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import psutil

from liveml.config import made_dir
from liveml.errors import PortInUseError, ServiceError

MARK = "LIVEML_PROC_MARK"


@dataclass(frozen=True)
class Tracked:
    pid: int
    create_time: float

    def alive(self) -> bool:
        try:
            proc = psutil.Process(self.pid)
            return abs(proc.create_time() - self.create_time) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False


class PidFile:
    def __init__(self, path: Path):
        self.path = path

    def read(self) -> list[Tracked]:
        try:
            data = json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return []
        return [Tracked(int(p["pid"]), float(p["create_time"])) for p in data.get("processes", [])]

    def add(self, pid: int) -> None:
        tracked = self.read() + [Tracked(pid, psutil.Process(pid).create_time())]
        made_dir(self.path.parent)
        self.path.write_text(json.dumps({"processes": [t.__dict__ for t in tracked]}))

    def alive(self) -> list[Tracked]:
        return [t for t in self.read() if t.alive()]

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)

    @property
    def marker(self) -> str:
        return str(self.path.resolve())

    def marked(self) -> list[psutil.Process]:
        """Every live process carrying this pid file's mark, however far it detached from the tree."""
        found = []
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if proc.environ().get(MARK) == self.marker:
                    found.append(proc)
        return found


def spawn(cmd: Sequence[str], log: Path, pidfile: PidFile, env: Mapping[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own session (so a Ctrl-C in the shell does not kill it), logging to ``log``."""
    made_dir(log.parent)
    child_env = dict(os.environ if env is None else env)
    child_env[MARK] = pidfile.marker
    with open(log, "ab") as out:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=child_env, cwd=cwd, start_new_session=True)
    pidfile.add(proc.pid)
    return proc


def terminate(pidfile: PidFile, timeout: float = 20.0) -> None:
    """SIGTERM every process of ``pidfile`` (tracked, their children, and anything carrying its mark), wait,
    then SIGKILL whatever is left."""
    procs: dict[int, psutil.Process] = {}
    for t in pidfile.alive():
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(t.pid)
            procs.update((p.pid, p) for p in [proc, *proc.children(recursive=True)])
    procs.update((p.pid, p) for p in pidfile.marked())
    procs.pop(os.getpid(), None)
    for proc in procs.values():
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(list(procs.values()), timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_owner(port: int) -> str | None:
    """Best effort: 'pid 123 (java)' for the process listening on ``port``."""
    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                try:
                    return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
                except psutil.Error:
                    return f"pid {conn.pid}"
    except (psutil.Error, PermissionError):
        return None
    return None


def ensure_port_free(service: str, port: int, host: str = "127.0.0.1") -> None:
    if port_open(host, port):
        owner = port_owner(port)
        who = f" by {owner}" if owner else ""
        raise PortInUseError(
            f"port {port} needed by {service} is already taken{who}, by a process `liveml up` did not start. "
            f"Stop it, or choose another port in liveml.yaml (see `liveml config`).")


def wait_until(check: Callable[[], bool], timeout: float, what: str, log: Path | None = None,
               proc: subprocess.Popen | None = None, interval: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"{what} exited with code {proc.returncode} while starting."
                               + _tail_hint(log))
        # a health probe failing is the normal state while starting
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(interval)
    raise ServiceError(f"{what} was not healthy after {timeout:.0f}s." + _tail_hint(log))


def _tail_hint(log: Path | None) -> str:
    if log is None or not log.exists():
        return ""
    lines = log.read_text(errors="replace").splitlines()[-15:]
    return f"\nLast lines of {log}:\n  " + "\n  ".join(lines)


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if extra:
        env.update(extra)
    return env
