"""The harness that runs HumanEval code kills the whole process group and limits CPU time and memory."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from sandbox import passes, run_contained


def _alive(pid: int) -> bool:
    """Running or sleeping; a zombie (dead, not yet reaped by its new parent) is not alive."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _wait_gone(pid: int, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def test_a_grandchild_is_killed_with_the_program_on_timeout(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    program = f"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open({str(pid_file)!r}, "w").write(str(child.pid))
time.sleep(120)
"""
    assert run_contained(program, timeout=3) is None
    pid = int(pid_file.read_text())
    assert _wait_gone(pid), f"grandchild {pid} survived the harness"


def test_a_daemon_forked_by_a_passing_program_does_not_outlive_it(tmp_path):
    pid_file = tmp_path / "daemon.pid"
    program = f"""
import os, time
pid = os.fork()
if pid == 0:
    time.sleep(120)
    os._exit(0)
open({str(pid_file)!r}, "w").write(str(pid))
"""
    assert passes(program, timeout=10)
    assert _wait_gone(int(pid_file.read_text()))


def test_memory_is_limited():
    assert passes("x = bytearray(10 * 2**20)", timeout=10), "a small allocation is fine"
    assert not passes("x = bytearray(4 * 2**30)", timeout=10), "4 GiB is over the limit"


def test_cpu_time_is_limited_in_the_child():
    assert run_contained("while True: pass", timeout=120, cpu_seconds=1) == -signal.SIGXCPU
    check = "import resource, sys; sys.exit(resource.getrlimit(resource.RLIMIT_CPU) != (6, 7))"
    assert run_contained(check, timeout=5) == 0, "by default the CPU limit is the timeout plus a second"
