"""Pid files and port checks: `down` must stop only what `up` started."""

import os
import socket
import subprocess
import sys

import pytest

from liveml.errors import PortInUseError
from liveml.stack.process import PidFile, Tracked, ensure_port_free, spawn, terminate

pytestmark = pytest.mark.unit


def test_taken_port_is_named():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(PortInUseError) as err:
            ensure_port_free("redis", port)
    assert f"port {port}" in str(err.value) and "redis" in str(err.value)
    assert f"pid {os.getpid()}" in str(err.value)


def test_pid_reused_by_another_program_is_not_ours(tmp_path):
    pf = PidFile(tmp_path / "x.pid")
    pf.path.write_text('{"processes": [{"pid": %d, "create_time": 1.0}]}' % os.getpid())
    assert pf.read() == [Tracked(os.getpid(), 1.0)]
    assert pf.alive() == []  # same pid, different start time


def test_spawn_track_terminate(tmp_path):
    pf = PidFile(tmp_path / "s.pid")
    proc = spawn([sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "s.log", pf)
    assert [t.pid for t in pf.alive()] == [proc.pid]
    terminate(pf, timeout=5)
    proc.wait(timeout=5)
    assert pf.alive() == []


def test_terminate_escalates_to_kill(tmp_path):
    pf = PidFile(tmp_path / "k.pid")
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    proc = spawn([sys.executable, "-c", code], tmp_path / "k.log", pf)
    for _ in range(100):
        if "ready" in (tmp_path / "k.log").read_text():
            break
        subprocess.run(["sleep", "0.05"])
    terminate(pf, timeout=1)
    assert pf.alive() == []  # it ignores SIGTERM, so only the SIGKILL escalation can have ended it
    assert proc.poll() is not None


def test_a_detached_grandchild_is_found_by_its_mark_and_stopped(tmp_path):
    """What Flink's Python workers do: leave the process tree (new session, parent gone)."""
    import psutil

    pf = PidFile(tmp_path / "d.pid")
    pid_file = tmp_path / "grandchild.pid"
    code = ("import os, subprocess, sys, time; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); sys.exit(0)")
    proc = spawn([sys.executable, "-c", code], tmp_path / "d.log", pf)
    proc.wait(timeout=10)
    grandchild = int(pid_file.read_text())
    assert psutil.pid_exists(grandchild)
    assert [p.pid for p in pf.marked()] == [grandchild]
    terminate(pf, timeout=5)
    assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
