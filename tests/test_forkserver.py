"""The fork server (telly.forkserver): stage commands run in a preloaded server's child exactly as in their own process.

Every test runs ``python -m telly`` in subprocesses with a private socket folder under tmp_path and stops its
servers at the end. Which server ran a command is read from the server's log (its pid, one line per command).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from finetune_fixture import make_setup

REPO = Path(__file__).resolve().parents[1]
STAGE = ["finetune", "--task", "code_search", "--variant", "telly-1", "--seed", "7", "-p", "params.yaml"]
# measured, not decided, by a run: they differ between any two runs
TIMINGS = re.compile(r"_seconds$|^time_to_convergence$|^peak_memory_mb$")


@pytest.fixture
def env(tmp_path):
    """The clients' environment: the server on, its sockets under tmp_path; every server stopped at the end."""
    base = {**os.environ, "TELLY_FORKSERVER": "1", "TELLY_FORKSERVER_DIR": str(tmp_path / "fs"), "COLUMNS": "200"}
    base["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])
    base.pop("TELLY_FORKSERVER_PRELOAD", None)
    yield base
    telly(["forkserver", "stop"], tmp_path, base)


def telly(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "telly", *args], cwd=cwd, env=env, capture_output=True, text=True)


def served(folder: Path) -> dict[int, list[str]]:
    """Server pid -> the commands it ran, from the servers' logs."""
    runs: dict[int, list[str]] = {}
    for log in folder.glob("*.log"):
        for pid, what in re.findall(r"server (\d+): (listening|ran .*) ", log.read_text()):
            runs.setdefault(int(pid), []).extend([what] if what != "listening" else [])
    return runs


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def outputs(root: Path) -> dict[str, object]:
    """Every file a stage wrote (its own folder named ROOT), its result JSON less the timings."""
    found: dict[str, object] = {}
    for path in sorted(p for d in ("finetuned", "results") for p in (root / d).rglob("*") if p.is_file()):
        name, data = str(path.relative_to(root)), path.read_bytes().replace(str(root).encode(), b"ROOT")
        found[name] = (
            json.dumps(_drop_timings(json.loads(data)))
            if name.startswith("results/") and name.endswith(".json")
            else data
        )
    return found


def _drop_timings(value):
    if isinstance(value, dict):
        return {k: _drop_timings(v) for k, v in value.items() if not TIMINGS.search(k)}
    return [_drop_timings(v) for v in value] if isinstance(value, list) else value


@pytest.mark.slow
def test_a_stage_run_by_the_server_writes_what_its_own_process_writes(tmp_path, env, raw_params):
    """The same files as a normal run; later commands served by the same server, with their own env, cwd, codes."""
    root, alone_root = tmp_path / "project", tmp_path / "alone"
    _, raw = make_setup(root, raw_params)
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    shutil.copytree(root, alone_root)
    (alone_root / "params.yaml").write_text((root / "params.yaml").read_text().replace(str(root), str(alone_root)))
    env = {**env, "MLFLOW_TRACKING_URI": f"sqlite:///{root}/served.db"}
    alone_env = {**env, "TELLY_FORKSERVER": "0", "MLFLOW_TRACKING_URI": f"sqlite:///{alone_root}/alone.db"}
    # the server starts (with a cheap command) while the stage runs in its own process
    launch = [sys.executable, "-m", "telly"]
    starting = subprocess.Popen([*launch, "finetune", "--help"], cwd=root, env=env, stdout=subprocess.DEVNULL)
    alone = subprocess.run([*launch, *STAGE], cwd=alone_root, env=alone_env, capture_output=True, text=True)
    assert starting.wait() == 0 and alone.returncode == 0, alone.stderr
    expected = outputs(alone_root)
    assert any(name.endswith("model.safetensors") for name in expected)

    served_run = telly(STAGE, root, env)
    assert served_run.returncode == 0, served_run.stderr
    assert "no fork server" not in served_run.stderr and "test {'mrr'" in served_run.stderr  # its log reached us
    assert outputs(root) == expected
    assert (root / "served.db").exists()  # the client's MLflow store, reached through its environment

    wrong = ["finetune", "--task", "nosuch", "--variant", "base", "-p", "params.yaml"]  # relative to the client's cwd
    narrow = telly(wrong, root, {**env, "COLUMNS": "40"})
    assert narrow.returncode == 2
    assert "unknown task 'nosuch'" in narrow.stderr and "no fork server" not in narrow.stderr
    assert max(map(len, narrow.stderr.splitlines())) <= 40  # rich wraps at the client's COLUMNS
    wide = telly(wrong, root, env)
    assert wide.returncode == 2 and "unknown task 'nosuch'; the downstream tasks are" in wide.stderr
    assert max(map(len, wide.stderr.splitlines())) > 40

    runs = served(tmp_path / "fs")
    assert len(runs) == 1 and len(next(iter(runs.values()))) == 4, runs  # one server ran all four
    stop = telly(["forkserver", "stop"], root, env)
    assert stop.returncode == 0 and "stopped 1 fork server" in stop.stdout
    assert not list((tmp_path / "fs").glob("*.sock"))


def test_changed_sources_start_another_server_and_servers_stop_when_idle(tmp_path, env):
    """A copy of telly's sources, edited between commands: the second server serves the edited code; both idle out."""
    shutil.copytree(REPO / "src" / "telly", tmp_path / "src" / "telly", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**env, "PYTHONPATH": str(tmp_path / "src"), "TELLY_FORKSERVER_PRELOAD": "telly.cli"}
    env["TELLY_FORKSERVER_IDLE"] = "3"
    help_ = ["finetune", "--help"]
    for _ in range(2):
        done = telly(help_, tmp_path, env)
        assert done.returncode == 0 and "--variant" in done.stdout and "no fork server" not in done.stderr
    (before,) = served(tmp_path / "fs").values()
    assert len(before) == 2  # the second command was served by the first one's server

    cli = tmp_path / "src" / "telly" / "cli.py"
    cli.write_text(cli.read_text().replace("RQ3: fine-tune one variant", "RQ3, edited: fine-tune one variant"))
    done = telly(help_, tmp_path, env)
    assert done.returncode == 0 and "RQ3, edited" in done.stdout
    runs = served(tmp_path / "fs")
    assert len(runs) == 2 and sorted(map(len, runs.values())) == [1, 2]

    deadline = time.monotonic() + 60
    while any(map(alive, runs)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(map(alive, runs)), "the servers outlived their idle timeout"
    assert not list((tmp_path / "fs").glob("*.sock"))
    assert all("idle for 3 s: stopped" in log.read_text() for log in (tmp_path / "fs").glob("*.log"))


@pytest.mark.parametrize("make", [lambda p: p.mkdir(mode=0o755), lambda p: p.write_text("not a folder")])
def test_a_command_runs_in_its_own_process_when_no_server_can_be_reached(tmp_path, env, make):
    make(tmp_path / "fs")
    os.chmod(tmp_path / "fs", 0o755)  # whatever the umask
    done = telly(["finetune", "--help"], tmp_path, {**env, "TELLY_FORKSERVER_PRELOAD": ""})
    assert done.returncode == 0 and "--variant" in done.stdout
    assert len([line for line in done.stderr.splitlines() if "no fork server" in line]) == 1
