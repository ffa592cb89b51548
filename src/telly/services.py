"""Services for a team: a PostgreSQL server and an MLflow tracking server, started by the project.

One person needs neither: MLflow and Optuna default to embedded SQLite files. Several
workers (GPUs, machines) share one Optuna study and one tracking server instead:

- PostgreSQL (Debian's ``postgresql`` package) with its cluster in ``<dir>/postgres``,
  listening on 127.0.0.1 only, password-protected (the password is generated into
  ``<dir>/password``). It never runs as root: started by root, it runs as the ``postgres``
  system user (or a ``telly`` system user created for it) and that user owns the cluster.
  Three databases: ``mlflow`` (the tracking server's store), ``mlflow_auth`` (its users)
  and ``optuna`` (the studies).
- An MLflow tracking server on 127.0.0.1 with MLflow's basic authentication (user ``admin``,
  password generated into ``<dir>/mlflow-password``) whose backend store is the ``mlflow``
  database and whose artifacts go to ``<dir>/artifacts`` (served by the server, so clients
  need no access to the folder). Started by root, it runs as the ``telly`` system user, who
  owns the artifacts.

Secrets never go on a command line (``ps`` shows it to every local user) nor to the terminal:
``<dir>/services.env`` (0600, ``source`` it) exports ``MLFLOW_TRACKING_URI``, the MLflow
credentials (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``), ``TELLY_TUNE_STORAGE`` (the study
database's URL, without its password) and ``PGPASSFILE``: ``<dir>/pgpass``, a libpq password
file that PostgreSQL's client reads the password from. Every secret file is created 0600.
Ports are free ones picked at the first start (or given) and kept in ``<dir>/state.json`` so
the addresses stay the same. Other machines reach the servers through an SSH tunnel
(docs/tuning.md).
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from telly.errors import TellyError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
DB_USER = "telly"
DATABASES = ("mlflow", "mlflow_auth", "optuna")
SYSTEM_USERS = ("postgres", "telly")  # who runs PostgreSQL when root starts it: Debian's user, else our own
MLFLOW_USER = "telly"  # who runs the MLflow server when root starts it
MLFLOW_ADMIN = "admin"
START_SECONDS = 180  # MLflow's first start creates its schema: slow on a busy machine
# Runs the MLflow CLI with the project's packages under a Python the service user can execute
# (when the project's own interpreter lives where that user cannot enter, e.g. /root).
MLFLOW_LAUNCHER = "import site, sys; site.addsitedir(sys.argv.pop(1)); from mlflow.cli import cli; cli()"


class ServiceError(TellyError):
    """A service that cannot be started, found or stopped; the message names the file or command."""


def write_secret(path: Path, text: str, user: str | None = None) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600 from its creation, never wider), atomically;
    owned by ``user`` when given (we are root)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask may only narrow the mode; this also drops any wider one
        if user:
            entry = pwd.getpwnam(user)
            os.fchown(fd, entry.pw_uid, entry.pw_gid)
        os.write(fd, text.encode())
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)


@dataclass
class State:
    pg_port: int
    mlflow_port: int
    mlflow_pid: int | None = None


# ------------------------------------------------------------------- PostgreSQL binaries and user


def postgres_bin() -> Path | None:
    """The newest Debian PostgreSQL (``/usr/lib/postgresql/<version>/bin``), else ``initdb`` on PATH."""

    def version(path: str) -> int:
        match = re.search(r"/postgresql/(\d+)/", path)
        return int(match.group(1)) if match else 0

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _require_bin() -> Path:
    found = postgres_bin()
    if found is None:
        raise ServiceError(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb, no initdb on PATH); "
            "install it with `apt-get install -y postgresql` (Debian/Ubuntu)"
        )
    return found


def _system_user(names: tuple[str, ...] = SYSTEM_USERS) -> str | None:
    """The unprivileged user that runs a service when we are root: the first of ``names`` that exists,
    else the last one, created (None: we are not root, we run it)."""
    if os.geteuid() != 0:
        return None
    for name in names:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(
        ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", names[-1]],
        check=True,
        capture_output=True,
    )
    return names[-1]


def _as_user(cmd: list[str], user: str | None) -> list[str]:
    return ["runuser", "-u", user, "--", *cmd] if user else cmd


def _give_to(path: Path, user: str | None) -> None:
    if user:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _can_enter(path: Path) -> bool:
    """Every folder above ``path`` lets others through (what a system user needs to reach it)."""
    return all(os.stat(parent).st_mode & 0o001 for parent in path.resolve().parents)


def _mlflow_command(user: str | None) -> tuple[list[str], dict[str, str]]:
    """How ``user`` runs the MLflow CLI: the project's ``mlflow`` script, or (its interpreter out of the user's
    reach) a system Python of the same version given the project's packages. Returns the command and its env."""
    import sysconfig

    packages = Path(sysconfig.get_paths()["purelib"])
    mlflow = Path(sys.executable).parent / "mlflow"
    if not user or (_can_enter(Path(sys.base_prefix) / "lib") and _can_enter(packages)):
        return [str(mlflow) if mlflow.exists() else "mlflow"], {}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (Path("/usr/bin") / version, Path("/usr/local/bin") / version):
        if candidate.exists() and _can_enter(candidate) and _can_enter(packages / "mlflow"):
            return [str(candidate), "-c", MLFLOW_LAUNCHER, str(packages)], {"PYTHONPATH": str(packages)}
    raise ServiceError(
        f"the {user} user that runs the MLflow server cannot run {sys.executable} (a folder above "
        f"{sys.base_prefix} or {packages} is closed to other users) and there is no /usr/bin/{version}; "
        "install the project's environment where other users can read it"
    )


def _check_reachable(folder: Path, user: str | None) -> None:
    """The system user must be able to walk down to the cluster folder."""
    if not user:
        return
    for parent in [*reversed(folder.parents)]:
        if not os.stat(parent).st_mode & 0o001:
            raise ServiceError(
                f"{parent}: the {user} user that runs PostgreSQL cannot enter this folder (mode "
                f"{oct(os.stat(parent).st_mode & 0o777)}); put the services folder elsewhere (--dir) or `chmod o+x {parent}`"
            )


# ------------------------------------------------------------------------- the services folder


class Services:
    """The services of one folder (``.services`` in the project by default)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).absolute()
        self.data = self.root / "postgres"
        self.sockets = self.root / "run"
        self.artifacts = self.root / "artifacts"
        self.state_file = self.root / "state.json"
        self.password_file = self.root / "password"
        self.pgpass = self.root / "pgpass"
        self.mlflow_password_file = self.root / "mlflow-password"
        self.auth_config = self.root / "mlflow-auth.ini"
        self.env_file = self.root / "services.env"
        self.pg_log = self.root / "postgres.log"
        self.mlflow_log = self.root / "mlflow.log"

    # addresses ------------------------------------------------------------------------------

    def state(self) -> State | None:
        if not self.state_file.exists():
            return None
        return State(**json.loads(self.state_file.read_text()))

    def _save(self, state: State) -> None:
        self.state_file.write_text(json.dumps(asdict(state), indent=2) + "\n")

    def password(self) -> str:
        return self.password_file.read_text().strip()

    def mlflow_password(self) -> str:
        return self.mlflow_password_file.read_text().strip()

    def database_url(self, database: str, state: State | None = None, *, with_password: bool = True) -> str:
        """The database's URL; without the password, the client reads it from :attr:`pgpass` (``PGPASSFILE``)."""
        state = state or self.state()
        if state is None:
            raise ServiceError(f"{self.state_file}: no services here yet; run `telly services up`")
        login = f"{DB_USER}:{self.password()}" if with_password else DB_USER
        return f"postgresql+psycopg2://{login}@{HOST}:{state.pg_port}/{database}"

    def client_env(self, state: State | None = None) -> dict[str, str]:
        """What a client needs in its environment (what ``services.env`` exports): no secret in a URL."""
        return {
            "MLFLOW_TRACKING_URI": self.tracking_uri(state),
            "MLFLOW_TRACKING_USERNAME": MLFLOW_ADMIN,
            "MLFLOW_TRACKING_PASSWORD": self.mlflow_password(),
            "TELLY_TUNE_STORAGE": self.database_url("optuna", state, with_password=False),
            "PGPASSFILE": str(self.pgpass),
        }

    def tracking_uri(self, state: State | None = None) -> str:
        state = state or self.state()
        if state is None:
            raise ServiceError(f"{self.state_file}: no services here yet; run `telly services up`")
        return f"http://{HOST}:{state.mlflow_port}"

    # PostgreSQL ------------------------------------------------------------------------------

    def _pg_ctl(self, *args: str, user: str | None, check: bool = True) -> subprocess.CompletedProcess:
        cmd = _as_user([str(_require_bin() / "pg_ctl"), "-D", str(self.data), *args], user)
        done = subprocess.run(cmd, capture_output=True, text=True)
        if check and done.returncode != 0:
            raise ServiceError(
                f"`{' '.join(cmd)}` failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-1500:]}; "
                f"see {self.pg_log}"
            )
        return done

    def postgres_running(self) -> bool:
        if not (self.data / "PG_VERSION").exists() or postgres_bin() is None:
            return False
        return self._pg_ctl("status", user=_system_user(), check=False).returncode == 0

    def _running_port(self) -> int | None:
        """The port of the running server, from its postmaster.pid (line 4)."""
        with contextlib.suppress(OSError, IndexError, ValueError):
            return int((self.data / "postmaster.pid").read_text().splitlines()[3])
        return None

    def _init_cluster(self, user: str | None) -> None:
        bin_dir = _require_bin()
        _check_reachable(self.data, user)
        self.data.mkdir(parents=True, exist_ok=True)
        _give_to(self.data, user)
        os.chmod(self.data, 0o700)
        pwfile = self.root / ".initdb-password"
        write_secret(pwfile, self.password() + "\n", user)
        try:
            cmd = [
                str(bin_dir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                DB_USER,
                f"--pwfile={pwfile}",
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
            ]
            done = subprocess.run(_as_user(cmd, user), capture_output=True, text=True)
        finally:
            pwfile.unlink(missing_ok=True)
        if done.returncode != 0:
            shutil.rmtree(self.data, ignore_errors=True)
            raise ServiceError(f"initdb {self.data} failed: {(done.stderr or done.stdout).strip()[-1500:]}")

    def start_postgres(self, state: State, user: str | None) -> None:
        self.sockets.mkdir(parents=True, exist_ok=True)
        _give_to(self.sockets, user)
        self.pg_log.touch()
        _give_to(self.pg_log, user)
        options = f"-c listen_addresses={HOST} -p {state.pg_port} -k {self.sockets}"
        self._pg_ctl("start", "-w", "-t", str(START_SECONDS), "-l", str(self.pg_log), "-o", options, user=user)

    def stop_postgres(self) -> bool:
        """Stop PostgreSQL (fast: open connections are closed); False when it was not running."""
        if not self.postgres_running():
            return False
        self._pg_ctl("stop", "-m", "fast", "-w", user=_system_user())
        return True

    def _create_databases(self, state: State) -> None:
        import psycopg2

        conn = psycopg2.connect(
            host=HOST, port=state.pg_port, user=DB_USER, password=self.password(), dbname="postgres"
        )
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT datname FROM pg_database")
                have = {row[0] for row in cur.fetchall()}
                for name in DATABASES:
                    if name not in have:
                        cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()

    # MLflow ----------------------------------------------------------------------------------

    def mlflow_healthy(self, state: State | None = None) -> bool:
        state = state or self.state()
        if state is None:
            return False
        try:
            with urllib.request.urlopen(f"{self.tracking_uri(state)}/health", timeout=5) as reply:
                return reply.status == 200
        except OSError:
            return False

    def _write_auth_config(self, state: State, user: str | None) -> None:
        """MLflow's basic-auth settings: its user store (a database here) and the admin's first password."""
        write_secret(
            self.auth_config,
            "[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = {self.database_url('mlflow_auth', state)}\n"
            f"admin_username = {MLFLOW_ADMIN}\n"
            f"admin_password = {self.mlflow_password()}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
            user,
        )

    def _start_mlflow(self, state: State) -> int:
        user = _system_user((MLFLOW_USER,))
        self.artifacts.mkdir(parents=True, exist_ok=True)
        _check_reachable(self.artifacts, user)
        _give_to(self.artifacts, user)
        os.chmod(self.artifacts, 0o700)
        self._write_auth_config(state, user)
        mlflow, extra_env = _mlflow_command(user)
        cmd = [
            *mlflow,
            "server",
            "--app-name",
            "basic-auth",
            "--host",
            HOST,
            "--port",
            str(state.mlflow_port),
            "--artifacts-destination",
            self.artifacts.as_uri(),
            "--workers",
            "1",
        ]
        # the store URL holds the password: the environment, not the command line (visible to `ps`)
        env = {
            **os.environ,
            **extra_env,
            "MLFLOW_BACKEND_STORE_URI": self.database_url("mlflow", state),
            "MLFLOW_AUTH_CONFIG_PATH": str(self.auth_config),
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32),  # signs the UI's CSRF tokens
        }
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PGPASSFILE"):
            env.pop(name, None)
        if user:
            env["HOME"] = str(self.artifacts)  # the system user has no home; caches land beside its artifacts
        with open(self.mlflow_log, "ab") as out:
            proc = subprocess.Popen(
                _as_user(cmd, user),
                env=env,
                cwd=self.artifacts,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_SECONDS
        while not self.mlflow_healthy(state):
            if proc.poll() is not None:
                raise ServiceError(f"the MLflow server exited ({proc.returncode}): {_tail(self.mlflow_log)}")
            if time.monotonic() > deadline:
                _stop_group(proc.pid)
                raise ServiceError(f"the MLflow server did not answer in {START_SECONDS} s: {_tail(self.mlflow_log)}")
            time.sleep(0.5)
        return proc.pid

    # the commands ----------------------------------------------------------------------------

    def up(self, pg_port: int | None = None, mlflow_port: int | None = None, *, mlflow: bool = True) -> State:
        """Start what is not running (PostgreSQL, and the MLflow server unless ``mlflow`` is false); keep the
        ports of an earlier start unless others are given."""
        _require_bin()
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)  # the system users enter it; the secret files alone are private
        for secret in (self.password_file, self.mlflow_password_file):
            if not secret.exists():
                write_secret(secret, secrets.token_urlsafe(24) + "\n")
        old = self.state()
        state = State(
            pg_port=pg_port or (old.pg_port if old else free_port()),
            mlflow_port=mlflow_port or (old.mlflow_port if old else free_port()),
            mlflow_pid=old.mlflow_pid if old else None,
        )
        user = _system_user()
        if not (self.data / "PG_VERSION").exists():
            self._init_cluster(user)
        if self.postgres_running():
            state.pg_port = self._running_port() or state.pg_port
        else:
            self.start_postgres(state, user)
        self._save(state)
        self._create_databases(state)
        if mlflow and not self.mlflow_healthy(state):
            state.mlflow_pid = self._start_mlflow(state)
        self._save(state)
        # libpq's password file: host:port:database:user:password
        write_secret(self.pgpass, f"{HOST}:{state.pg_port}:*:{DB_USER}:{self.password()}\n")
        write_secret(self.env_file, "".join(f"export {k}={v}\n" for k, v in self.client_env(state).items()))
        return state

    def down(self) -> list[str]:
        """Stop the MLflow server and PostgreSQL; the data stays for the next ``up``."""
        stopped = []
        state = self.state()
        if state and state.mlflow_pid and _is_mlflow_server(state.mlflow_pid) and _stop_group(state.mlflow_pid):
            stopped.append("mlflow")
        if self.stop_postgres():
            stopped.append("postgres")
        if state:
            state.mlflow_pid = None
            self._save(state)
        return stopped

    def status(self) -> dict[str, bool]:
        return {"postgres": self.postgres_running(), "mlflow": self.mlflow_healthy()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _stop_group(pid: int, seconds: float = 10.0) -> bool:
    """SIGTERM the process group ``pid`` leads (the server and its workers), SIGKILL what is left."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + seconds
    while _group_alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # our own child (started in this process): reap it
        time.sleep(0.2)
    if _group_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    return True


def _is_mlflow_server(pid: int) -> bool:
    """The recorded pid is still our MLflow server (not a process that reused the pid after a reboot)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(b"mlflow" in a for a in argv) and b"server" in argv


def _group_alive(pgid: int) -> bool:
    """A process of the group that is not a zombie (a dead process its parent has not reaped yet)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def _tail(path: Path, chars: int = 1500) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else f"(no {path})"


def describe(services: Services, state: State) -> str:
    """What ``up`` and ``status`` print: the addresses and how to use them; no password (they stay in files)."""
    tracking = services.tracking_uri(state)
    storage = services.database_url("optuna", state, with_password=False)
    return (
        f"MLflow tracking server: {tracking}  (UI: user {MLFLOW_ADMIN}, password in {services.mlflow_password_file})\n"
        f"PostgreSQL: {HOST}:{state.pg_port}, cluster {services.data}\n\n"
        f"  source {services.env_file}\n"
        f"      (exports MLFLOW_TRACKING_URI={tracking}, the MLflow login, TELLY_TUNE_STORAGE={storage}\n"
        f"       and PGPASSFILE={services.pgpass}, where PostgreSQL's client reads the password)\n"
        f"  then on each worker: telly tune <task>\n\n"
        f"Stop with `telly services down`."
    )
