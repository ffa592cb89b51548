"""Run untrusted Python (HumanEval solutions, their rewrites and mutants, wheel functions) in a child process, contained.

The child starts a new session, so it and everything it spawns form one process group that
is killed as a whole on timeout (and after a normal exit, so a forked daemon cannot outlive
the check). The child limits its own CPU time, address space and file size before the program
runs: a loop that never ends or an allocation that would take the machine's memory fails the
check instead. It runs in a fresh temporary folder, removed afterwards. (The limits are set by a
prologue in the child rather than a ``preexec_fn``, which is unsafe in the harness's thread pool.)
These limits guard against accidents, not attacks.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

MEMORY_BYTES = 1 << 30  # address space: the Python interpreter and a HumanEval program fit many times over


def _prologue(cpu_seconds: int, memory_bytes: int, file_bytes: int | None) -> str:
    fsize = "" if file_bytes is None else f"_r.setrlimit(_r.RLIMIT_FSIZE, ({file_bytes}, {file_bytes}))\n"
    return (
        "import resource as _r\n"
        f"_r.setrlimit(_r.RLIMIT_CPU, ({cpu_seconds}, {cpu_seconds + 1}))\n"  # SIGXCPU, then SIGKILL
        f"_r.setrlimit(_r.RLIMIT_AS, ({memory_bytes}, {memory_bytes}))\n"
        f"{fsize}"
        "del _r\n"
    )


@dataclass(frozen=True)
class Outcome:
    returncode: int | None  # negative: killed by that signal; None: ran past the timeout
    stdout: str


def run_captured(
    program: str,
    timeout: float,
    *,
    stdin: str = "",
    cpu_seconds: int | None = None,
    memory_bytes: int = MEMORY_BYTES,
    file_bytes: int | None = None,
    capture: bool = True,
) -> Outcome:
    """Run ``program`` with ``stdin`` in a temporary working folder; its exit status and standard output.

    CPU time is limited to ``cpu_seconds`` (default: the timeout plus a second), past which the child gets
    SIGXCPU; ``file_bytes`` (if set) caps the size of any file it writes (0: it can write none). Hash
    randomisation is off (PYTHONHASHSEED=0), so set orders, and outputs that show them, repeat across runs.
    Without ``capture`` standard output is discarded and the run ends when the program exits, even if a
    process it forked still holds the output open.
    """
    cpu_seconds = cpu_seconds or max(1, int(timeout) + 1)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONHASHSEED": "0", "LC_ALL": "C.UTF-8"}
    with tempfile.TemporaryDirectory(prefix="telly-sandbox-") as cwd:
        proc = subprocess.Popen(
            # -s -P: no user site, no script folder on sys.path; -B: no .pyc written
            [sys.executable, "-s", "-P", "-B", "-c", _prologue(cpu_seconds, memory_bytes, file_bytes) + program],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd=cwd,
            env=env,
            text=True,
        )
        try:
            if capture:
                out, _ = proc.communicate(stdin, timeout=timeout)
                return Outcome(proc.returncode, out)
            proc.stdin.close()  # type: ignore[union-attr]
            return Outcome(proc.wait(timeout=timeout), "")
        except subprocess.TimeoutExpired:
            return Outcome(None, "")
        finally:
            with contextlib.suppress(ProcessLookupError):  # the group is empty: nothing left to kill
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_contained(
    program: str, timeout: float, *, cpu_seconds: int | None = None, memory_bytes: int = MEMORY_BYTES
) -> int | None:
    """The program's exit status (negative: killed by that signal), or None when it ran past ``timeout``."""
    return run_captured(program, timeout, cpu_seconds=cpu_seconds, memory_bytes=memory_bytes, capture=False).returncode


def passes(program: str, timeout: float) -> bool:
    return run_contained(program, timeout) == 0
