"""End to end: the real `dvc repro` on the tiny profile, in a temporary copy of the repo.

Every stage of dvc.yaml joins this test through tests/fixtures/params-tiny.yaml.
The corpus is a handful of standard-library modules packed as wheels, so no
network is needed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from behaviour_fixture import write_behaviour_wheels
from corpus_fixture import make_corpus, write_lock

REPO = Path(__file__).resolve().parents[1]
OUTPUTS = (
    "data/raw/",
    "mlruns/",
    "results/",
    "reports/",
    "data/tasks/",
    "data/corpus/python/",
    "dvc.lock",
    "studies/dvc.lock",
    "studies/models/",
)


def _copy_repo(dest: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for name in files:
        src = REPO / name
        # the committed study's outputs stay behind: the tiny run must make every file it reads
        if src.is_file() and not name.startswith(OUTPUTS):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 7.3 min on 2 idle cores beside the other xdist worker (2026-12-01); a guard, not a goal
def test_dvc_repro_on_tiny_profile(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _copy_repo(repo)
    write_lock(repo / "data/corpus.lock", make_corpus(repo / "data/raw"))
    write_behaviour_wheels(repo / "data/raw-semantic", repo / "data/semantic.lock")
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env["DVC_NO_ANALYTICS"] = "1"
    # the tiny profile laid over the repository's params.yaml, as a user applies a profile
    _run(["telly", "params", "compose", "tests/fixtures/params-tiny.yaml", "--out", "params.yaml"], repo, env)
    _run(["git", "init", "-q"], repo, env)
    _run(["dvc", "commit", "-f", "-q", "data.dvc"], repo, env)  # the fixture corpus replaces the real one
    _run(["dvc", "commit", "-f", "-q", "data/raw-semantic.dvc"], repo, env)  # and the fixture behaviour wheels

    _run(["dvc", "repro"], repo, env)

    corpus = repo / "data/corpus/python"
    for split in ("train", "valid", "test"):
        assert (corpus / f"{split}.jsonl").stat().st_size > 0
    metrics = json.loads((corpus / "metrics.json").read_text())
    assert metrics["functions"]["train"] > 0
    run = json.loads((repo / "results/finetune/code_search/base/seed123456.json").read_text())  # one run per seed
    assert run["variant"] == "base" and run["settings"]["seed"] == 123456
    assert (repo / "results/baselines/code_search.json").exists()  # the no-training baseline beside it

    _study_of_a_second_model(repo, env)

    status = _run(["dvc", "status"], repo, env)  # both pipelines: the root one and studies/dvc.yaml
    assert "up to date" in status, status
    again = _run(["dvc", "repro"], repo, env)
    assert "didn't change" in again or "up to date" in again


def _tree(folder: Path, skip: str | None = None) -> dict[str, bytes]:
    """Every file below ``folder`` (those whose path holds ``skip`` left out) and its bytes."""
    files = (p for p in sorted(folder.rglob("*")) if p.is_file())
    return {str(p): p.read_bytes() for p in files if skip is None or skip not in str(p)}


def _study_of_a_second_model(repo: Path, env: dict[str, str]) -> None:
    """studies/dvc.yaml on a tiny random RoBERTa beside the embedded model: its outputs under studies/models/tiny_b,
    the root pipeline's untouched, one report across the two models (docs/studies.md)."""
    import mlflow

    from model_fixture import make_tiny_roberta

    make_tiny_roberta(repo / "models/tiny-b", layers=3)
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["study"]["models"] = {"tiny_b": "models/tiny-b"}
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    before = {name: _tree(repo / name, skip="reports/models") for name in ("results", "reports", "models/finetuned")}

    _run(["dvc", "repro", "studies/dvc.yaml"], repo, env)

    assert before == {name: _tree(repo / name, skip="reports/models") for name in before}  # nothing of the root's
    study = repo / "studies/models/tiny_b"
    run = json.loads((study / "results/finetune/code_search/base/seed123456.json").read_text())
    assert run["settings"]["seed"] == 123456 and (study / "results/baselines/code_search.pretrained.json").exists()
    assert (study / "reports/claims.json").exists() and (study / "results/probe/pretrained/lexical/curve.csv").exists()
    report = (repo / "reports/models/report.md").read_text()
    claims = json.loads((repo / "reports/models/claims.json").read_text())
    assert all(set(c["models"]) == {"embedded", "tiny_b"} for c in claims.values()), claims
    assert "| claim | paper | embedded | tiny_b |" in report  # one verdict column per model
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(experiment_names=["telly-tiny_b-finetune"], output_format="list")
    assert runs and all(r.data.tags["telly.model"] == "tiny_b" for r in runs)
