"""scripts/prune_dvc_lock.py: a lock loses the entries of stages its dvc.yaml no longer defines, nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "prune_dvc_lock.py"
BIN = str(Path(sys.executable).parent)


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    # no venv on PATH: the script must find the DVC of its own interpreter
    env = {**os.environ, "PATH": os.defpath, "DVC_NO_ANALYTICS": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True)


def _entry(item: str) -> dict:
    return {"cmd": f"echo {item} > {item}.txt", "outs": [{"path": f"{item}.txt", "hash": "md5", "md5": "0" * 32}]}


def test_stale_matrix_items_go_and_current_ones_stay_byte_for_byte(tmp_path):
    subprocess.run([f"{BIN}/dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "params.yaml").write_text("items: [a, b]\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n"
        "  make:\n"
        "    foreach: ${items}\n"
        "    do:\n"
        "      cmd: echo ${item} > ${item}.txt\n"
        "      outs:\n"
        "        - ${item}.txt\n"
        "  single:\n"
        "    cmd: echo x > x.txt\n"
        "    outs:\n"
        "      - x.txt\n"
    )
    lock = {"schema": "2.0", "stages": {"make@a": _entry("a"), "make@c": _entry("c"), "single": _entry("x")}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))

    result = _run(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "1 stale entry removed" in result.stdout
    pruned = yaml.safe_load((tmp_path / "dvc.lock").read_text())
    assert list(pruned["stages"]) == ["make@a", "single"]
    assert pruned["stages"]["make@a"] == lock["stages"]["make@a"]

    again = _run(tmp_path)
    assert "0 stale entries removed" in again.stdout


def test_a_missing_pipeline_file_is_named(tmp_path):
    result = _run(tmp_path, "nope/dvc.yaml")
    assert result.returncode == 2
    assert "nope/dvc.yaml: no such pipeline file" in result.stderr
