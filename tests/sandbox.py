"""Run untrusted Python (HumanEval solutions, their rewrites and mutants) in a child process, contained.

The child starts a new session, so it and everything it spawns form one process group that
is killed as a whole on timeout (and after a normal exit, so a forked daemon cannot outlive
the check). The child limits its own CPU time and address space before the program runs: a
loop that never ends or an allocation that would take the machine's memory fails the check
instead. (The limits are set by a prologue in the child rather than a ``preexec_fn``, which
is unsafe in the harness's thread pool.) These limits guard against accidents, not attacks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

MEMORY_BYTES = 1 << 30  # address space: the Python interpreter and a HumanEval program fit many times over


def _prologue(cpu_seconds: int, memory_bytes: int) -> str:
    return (
        "import resource as _r\n"
        f"_r.setrlimit(_r.RLIMIT_CPU, ({cpu_seconds}, {cpu_seconds + 1}))\n"  # SIGXCPU, then SIGKILL
        f"_r.setrlimit(_r.RLIMIT_AS, ({memory_bytes}, {memory_bytes}))\n"
        "del _r\n"
    )


def run_contained(
    program: str, timeout: float, *, cpu_seconds: int | None = None, memory_bytes: int = MEMORY_BYTES
) -> int | None:
    """The program's exit status (negative: killed by that signal), or None when it ran past ``timeout``.

    CPU time is limited to ``cpu_seconds`` (default: the timeout plus a second), past which the child gets SIGXCPU.
    """
    cpu_seconds = cpu_seconds or max(1, int(timeout) + 1)
    proc = subprocess.Popen(
        [sys.executable, "-I", "-c", _prologue(cpu_seconds, memory_bytes) + program],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group is empty: nothing left to kill
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def passes(program: str, timeout: float) -> bool:
    return run_contained(program, timeout) == 0
