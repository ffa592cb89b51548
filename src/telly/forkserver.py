"""The ``telly`` launcher and its fork server: stages start from a process that has imported their libraries.

With ``TELLY_FORKSERVER=1`` a stage command goes over a Unix socket to a daemon that imported torch, transformers
and MLflow once; its child per command takes the client's argv, cwd, environment, umask and stdio and runs the CLI
as a fresh process would. Only the standard library here, so that the client stays cheap (docs/architecture.md).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import gc
import hashlib
import importlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

# Commands whose start-up is mostly imports (their first words in argv).
STAGE_COMMANDS = {("finetune",), ("baseline",), ("probe",), ("similarity",), ("tune",), ("report", "paper-regime")}
# Imported by the server before it forks (TELLY_FORKSERVER_PRELOAD, comma-separated, replaces them); none runs a
# torch op, so no thread pool exists yet (pyarrow's jemalloc thread has fork handlers). telly's modules are listed
# for the libraries they import, then dropped: each child runs them afresh (cli's console sees the client's tty).
PRELOAD = (
    "torch", "torch._dynamo", "sympy", "transformers", "transformers.models.roberta.modeling_roberta",
    "transformers.models.roberta.tokenization_roberta", "transformers.models.bert.modeling_bert",
    "transformers.optimization", "peft", "accelerate",
    "mlflow", "mlflow.tracking.fluent", "mlflow.store.tracking.sqlalchemy_store", "mlflow.tracing.processor.otel",
    "opentelemetry.sdk.metrics", "sqlalchemy", "sqlalchemy.dialects.sqlite", "alembic.command", "git",
    "scipy.stats", "rich.table", "telly.cli", "telly.tracking", "telly.finetuning.stage", "telly.finetuning.train",
)  # fmt: skip
# Environment read when the interpreter starts or libraries are imported: a server serves only clients that agree.
FINGERPRINT_ENV = ("PYTHON", "LANG", "LC_", "LD_", "HF_", "TRANSFORMERS_", "TOKENIZERS_", "TORCH", "PYTORCH_",
                   "CUDA", "OMP_", "MKL_", "OPENBLAS_", "MLFLOW_", "TELLY_")  # fmt: skip
START_TIMEOUT_S = 300  # importing PRELOAD on a loaded machine


def main() -> None:
    """The ``telly`` command: a stage through a fork server when asked (falling back to this process), else here."""
    words = [w for w in _without_model_option(sys.argv[1:]) if not w.startswith("-")]
    if os.environ.get("TELLY_FORKSERVER") == "1" and any(tuple(words[: len(c)]) == c for c in STAGE_COMMANDS):
        code = run_through_server()
        if code is not None:
            sys.exit(code)
    from telly.cli import main as run_here

    run_here()


def _without_model_option(args: list[str]) -> list[str]:
    """argv without ``telly``'s global ``--model <tag>`` / ``-m <tag>`` (its value is no command word)."""
    out, skip = [], False
    for word in args:
        if skip:
            skip = False
        elif word in ("--model", "-m"):
            skip = True
        elif not word.startswith("--model="):
            out.append(word)
    return out


def folder() -> Path:
    """The sockets' folder (TELLY_FORKSERVER_DIR), private to this user, or an OSError."""
    default = Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp", f"telly-forkserver-{os.getuid()}")
    path = Path(os.environ.get("TELLY_FORKSERVER_DIR") or default)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if path.is_symlink() or not path.is_dir() or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise OSError(f"{path}: not a folder of this user's alone (mode 0700)")
    return path


def fingerprint() -> str:
    """What a server shares with its clients: the interpreter and its flags, sys.path, telly's sources, the env."""
    package = Path(__file__).resolve().parent
    sources = sorted(
        (str(p.relative_to(package)), p.stat().st_mtime_ns, p.stat().st_size) for p in package.rglob("*.py")
    )
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith(FINGERPRINT_ENV))
    facts = [sys.executable, sys.version, list(sys.flags), sys._xoptions, sys.path, str(package), sources, env]
    return hashlib.sha256(json.dumps(facts, default=str).encode()).hexdigest()[:20]


def _connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError, ConnectionRefusedError):
        sock.connect(str(path))
        return sock
    sock.close()
    return None


def _start(path: Path) -> None:
    """Start a server on ``path`` (own session, double fork, own log) and wait until it listens."""
    ready_r, ready_w = os.pipe()
    code = "import sys, json; sys.path[:] = json.loads(sys.argv[1]); from telly.forkserver import serve; serve(*sys.argv[2:])"
    flags = subprocess._args_from_interpreter_flags()  # -X, -W, -O...: as multiprocessing starts its helpers
    with open(path.with_suffix(".log"), "ab") as log:
        subprocess.run(
            [sys.executable, *flags, "-c", code, json.dumps(sys.path), str(path), str(ready_w)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(ready_w,), start_new_session=True, cwd="/",
            check=True,
        )  # fmt: skip
    os.close(ready_w)
    with open(ready_r, "rb") as ready:  # "ok" once it listens; nothing if it died
        if not select.select([ready], [], [], START_TIMEOUT_S)[0] or ready.read(2) != b"ok":
            raise OSError(f"the fork server did not start (see {path.with_suffix('.log')})")


def _send(sock: socket.socket, message: dict, fds: list[int] = ()) -> None:
    socket.send_fds(sock, [json.dumps(message).encode() + b"\n"], list(fds))


def run_through_server() -> int | None:
    """The command's exit code from a server's child, or None (and one line on stderr) when no server took it."""
    try:
        path = folder() / f"{fingerprint()}.sock"
        sock = _connect(path)
        if sock is None:
            with open(path.with_suffix(".lock"), "w") as lock:  # one client starts the server, the others wait
                fcntl.flock(lock, fcntl.LOCK_EX)
                if (sock := _connect(path)) is None:
                    _start(path)
                    sock = _connect(path)
        if sock is None:
            raise OSError(f"{path}: no server answers")
        os.umask(umask := os.umask(0))
        main = getattr(sys.modules["__main__"], "__package__", None)  # click names the program after it
        message = {"argv": sys.argv, "cwd": os.getcwd(), "env": dict(os.environ), "umask": umask, "main": main}
        _send(sock, message, [0, 1, 2])
        replies = sock.makefile("rb")
        child = json.loads(replies.readline())["pid"]
    except (OSError, ValueError, KeyError, TypeError, subprocess.CalledProcessError) as err:
        print(f"telly: no fork server ({err}); running in this process", file=sys.stderr, flush=True)
        return None
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda number, frame: os.kill(child, number))
    code = json.loads(replies.readline() or "{}").get("exit")
    if code is None:
        print(f"telly: the fork server ended before its child {child} did", file=sys.stderr)
        return 1
    if code < 0:  # the child was killed by a signal: end the same way
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


def stop_all() -> int:
    """Ask every server in the folder to stop (each finishes its running commands); how many were asked."""
    stopped = 0
    for path in folder().glob("*.sock"):
        if (sock := _connect(path)) is not None:
            with sock:
                _send(sock, {"stop": True})
                stopped += sock.recv(16).startswith(b'{"stopped"')
    return stopped


def _log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} server {os.getpid()}: {message}", file=sys.stderr, flush=True)


def serve(path: str, ready_fd: str) -> None:
    """The server: preload, listen on ``path``, fork a child per command; return when idle or asked to stop."""
    if os.fork():
        os._exit(0)  # the second fork: the server is no session leader, and no child of its client
    names = os.environ.get("TELLY_FORKSERVER_PRELOAD")
    for name in PRELOAD if names is None else filter(None, names.split(",")):
        try:
            importlib.import_module(name)
        except Exception as err:  # a child imports it itself
            _log(f"preload {name}: {err!r}")
    for name in [n for n in sys.modules if n.partition(".")[0] == "telly" and n != __name__]:
        del sys.modules[name]
    gc.collect()
    gc.freeze()  # children's collections skip the preloaded objects, so they do not copy those pages
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    Path(path).unlink(missing_ok=True)  # a dead server's socket (the starting client holds the lock)
    listener.bind(path)
    listener.listen(16)
    inode, idle = os.stat(path).st_ino, float(os.environ.get("TELLY_FORKSERVER_IDLE", "120"))
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a Python handler, so that SIGCHLD wakes select through wake_w
    _log(f"listening on {path} ({len(os.listdir('/proc/self/task'))} threads; idle timeout {idle:g} s)")
    os.write(int(ready_fd), b"ok")
    os.close(int(ready_fd))
    children: dict[int, socket.socket] = {}
    last, stop = time.monotonic(), False
    while children or (not stop and time.monotonic() - last < idle):
        timeout = None if children else idle - (time.monotonic() - last)
        ready = select.select([wake_r] if stop else [listener, wake_r], [], [], timeout)[0]
        if wake_r in ready:
            os.read(wake_r, 512)
        while children and (reaped := os.waitpid(-1, os.WNOHANG))[0]:
            code = os.waitstatus_to_exitcode(reaped[1])
            _log(f"child {reaped[0]} exited {code}")
            with children.pop(reaped[0]) as conn, contextlib.suppress(OSError):  # its client may be gone
                conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
            last = time.monotonic()
        if listener in ready:
            stop = _accept(listener.accept()[0], children, (listener, wake_r, wake_w))
            last = time.monotonic()
            if stop:
                os.unlink(path)  # new clients start another server while this one finishes its commands
    with contextlib.suppress(FileNotFoundError):
        if not stop and os.stat(path).st_ino == inode:  # still this server's socket
            os.unlink(path)
    _log("stopped" if stop else f"idle for {idle:g} s: stopped")


def _accept(conn: socket.socket, children: dict[int, socket.socket], own: tuple) -> bool:
    """Serve one connection: fork a child for a command; True when asked to stop."""
    try:
        conn.settimeout(10)
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        if struct.unpack("3i", creds)[1] != os.getuid():
            raise PermissionError("a connection from another user")
        data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
        while data and not data.endswith(b"\n"):
            data += conn.recv(1 << 16) or b"\n"
        message = json.loads(data)
        if message.get("stop"):
            conn.sendall(b'{"stopped": true}\n')
            conn.close()
            return True
        if len(fds) != 3:
            raise ValueError(f"{len(fds)} file descriptors, not stdin, stdout and stderr")
        pid = os.fork()
        if pid == 0:
            _child(message, fds, [conn, *own, *children.values()])
        for fd in fds:
            os.close(fd)
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        children[pid] = conn
        _log(f"ran {message['argv'][1:]} in child {pid}")
    except (OSError, ValueError, KeyError) as err:
        _log(f"refused a connection: {err!r}")
        conn.close()
    return False


def _child(message: dict, fds: list[int], inherited: list) -> None:
    """Become the client's process (stdio, cwd, env, umask, argv), run the CLI, exit as the interpreter would."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for thing in inherited:
        os.close(thing) if isinstance(thing, int) else thing.close()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdout.reconfigure(line_buffering=sys.stdout.isatty())  # as the interpreter sets it up
    os.chdir(message["cwd"])
    os.umask(message["umask"])
    os.environ.clear()
    os.environ.update(message["env"])
    sys.argv = message["argv"]
    sys.modules["__main__"].__package__ = message["main"]
    code = 1
    try:
        from telly.cli import main as run_here

        run_here()
        code = 0
    except SystemExit as end:
        code = end.code if isinstance(end.code, int) else int(end.code is not None)
        if not isinstance(end.code, int | None):
            print(end.code, file=sys.stderr)
    except BaseException as err:  # never back into the server's loop
        traceback.print_exc()
        code = 128 + signal.SIGINT if isinstance(err, KeyboardInterrupt) else 1  # the shell's code for Ctrl-C
    # The interpreter's exit, less the teardown of the preloaded modules (most of a child's exit time).
    threading._shutdown()  # non-daemon threads and executors (MLflow's async logging) finish, as at exit
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
