"""dvc.yaml must see the code and the params each stage runs with, or `dvc repro` calls stale results fresh.

For every stage: start from the module whose function the stage's command calls (ENTRY), follow every
``import`` of a ``telly`` module (at module level or inside functions, package ``__init__`` files
included: they run too), and require each module reached to be a dependency of the stage (the file or a
folder above it). Then scan those modules for ``params.<section>[.<key>]`` and require the stage to track
that section or key. A few modules only validate or log and cannot change an output (PLUMBING).
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"

# The module whose function each stage's command calls (dvc.yaml stage name -> module). The CLI check
# below makes sure the `telly` subcommand of the stage's cmd really imports it.
ENTRY = {
    "prepare": "telly.data.corpus",
    "tasks": "telly.data.datasets",
    "pretrain": "telly.models.pretrain",
    "finetune-run": "telly.finetuning.stage",
    "finetune-run-deep": "telly.finetuning.stage",
    "baseline": "telly.finetuning.baselines",
    "finetune-peft": "telly.finetuning.stage",
    "finetune": "telly.finetuning.table",
    "similarity-represent-base": "telly.similarity.represent",
    "similarity-represent": "telly.similarity.represent",
    "similarity": "telly.similarity.stage",
    "probe-run": "telly.probing.stage",
    "probe-run-finetuned": "telly.probing.stage",
    "probe": "telly.probing.summary",
    "tune": "telly.tuning",
    "finetune-paper-regime": "telly.finetuning.regime",
    "report": "telly.reporting.stage",
}
# Validation, errors, logging, the command line and its launcher (the fork server): they decide no output.
PLUMBING = {
    "telly",
    "telly.__main__",
    "telly.forkserver",
    "telly.cli",
    "telly.config",
    "telly.errors",
    "telly.tracking",
}
# params a module reads that decide no output (where MLflow logs)
UNTRACKED_PARAMS = {"tracking", "study_model"}  # study_model: the command's --model tag (dvc tracks the cmd)


def _module_file(name: str) -> Path | None:
    base = SRC / Path(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.exists():
            return path
    return None


def _imports(name: str) -> set[str]:
    """The telly modules one module imports (anywhere in it), with the packages they live in."""
    path = _module_file(name)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            if target.split(".")[0] != "telly":
                continue
            parts = target.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                candidate = ".".join(parts[:i])
                if _module_file(candidate):
                    found.add(candidate)
    return found


@cache
def closure(entry: str) -> frozenset[str]:
    seen, todo = set(), [entry, *(".".join(entry.split(".")[:i]) for i in range(1, len(entry.split("."))))]
    while todo:
        name = todo.pop()
        if name in seen or not _module_file(name):
            continue
        if name in PLUMBING:  # nothing it imports decides an output through it
            continue
        seen.add(name)
        todo.extend(_imports(name) - seen)
    return frozenset(seen)


def _stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def _body(stage: dict) -> dict:
    return stage.get("do", stage)


def _covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(REPO).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


def test_every_stage_has_an_entry_module():
    assert set(_stages()) == set(ENTRY), "a new stage needs its entry module in ENTRY"


def missing_code(stage: str, stages: dict[str, dict], entry: dict[str, str] = ENTRY) -> list[str]:
    """The source files a stage runs that its deps do not cover."""
    deps = [str(d) for d in _body(stages[stage]).get("deps", [])]
    needed = sorted(closure(entry[stage]) - PLUMBING)
    return [str(_module_file(m).relative_to(REPO)) for m in needed if not _covered(_module_file(m), deps)]


@pytest.mark.parametrize("stage", sorted(ENTRY))
def test_stage_depends_on_the_code_it_runs(stage):
    missing = missing_code(stage, _stages())
    assert not missing, f"dvc.yaml stage {stage!r} runs code it does not depend on: {missing}"


@pytest.mark.parametrize("stage", sorted(ENTRY))
def test_stage_command_calls_its_entry_module(stage):
    """The ENTRY table matches the CLI: the subcommand of the stage's cmd imports the entry module."""
    cmd = _body(_stages()[stage])["cmd"].split()
    assert cmd[0] == "telly"
    words = [w for w in cmd[1:] if not w.startswith(("-", "$"))]
    cli = ast.parse((SRC / "telly/cli.py").read_text(encoding="utf-8"))
    functions = {n.name: n for n in ast.walk(cli) if isinstance(n, ast.FunctionDef)}
    candidates = ["_".join(words[:2]), words[0]]  # `report paper-regime` -> report_paper_regime
    function = next(functions[c.replace("-", "_")] for c in candidates if c.replace("-", "_") in functions)
    imported = {n.module for n in ast.walk(function) if isinstance(n, ast.ImportFrom)}
    imported |= {f"{n.module}.{a.name}" for n in ast.walk(function) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert ENTRY[stage] in imported, f"`{' '.join(cmd)}` ({function.name} in cli.py) does not import {ENTRY[stage]}"


PARAM_ACCESS = re.compile(r"\bparams\.([a-z_0-9]+)(?:\.([a-z_0-9]+))?")


@pytest.mark.parametrize("stage", sorted(ENTRY))
def test_stage_tracks_the_params_its_code_reads(stage):
    missing = missing_params(stage, _stages(), ENTRY)
    assert not missing, f"dvc.yaml stage {stage!r} reads params it does not track: {sorted(missing)}"


def missing_params(stage: str, stages: dict[str, dict], entry: dict[str, str]) -> set[str]:
    from telly.config import Params

    tracked = [str(p) for p in _body(stages[stage]).get("params", [])]
    sections = set(Params.model_fields)
    missing = set()
    for module in closure(entry[stage]) - PLUMBING:
        text = _module_file(module).read_text(encoding="utf-8")
        for section, key in PARAM_ACCESS.findall(text):
            if section not in sections or section in UNTRACKED_PARAMS:
                continue
            wanted = f"{section}.{key}" if key else section
            ok = any(t in (section, wanted) or t.startswith(f"{wanted}.") for t in tracked)
            if not ok and key:  # a read of the whole section (params.finetune.x via a local) counts as any key
                ok = any(t.startswith(f"{section}.") for t in tracked) and key not in _fields(section)
            if not ok:
                missing.add(wanted)
    return missing


def _fields(section: str) -> set[str]:
    from telly.config import Params

    annotation = Params.model_fields[section].annotation
    model = next((a for a in getattr(annotation, "__args__", (annotation,)) if hasattr(a, "model_fields")), None)
    return set(model.model_fields) if model is not None else set()


def test_the_check_fails_when_an_import_is_missing_from_dvc_yaml():
    """The check itself: drop Telly-K's freezing code from the finetune runs' deps, and it must complain."""
    stages = _stages()
    assert missing_code("finetune-run", stages) == []
    deps = stages["finetune-run"]["deps"]
    stages["finetune-run"]["deps"] = [d for d in deps if d != "src/telly/models/freezing.py"]
    assert missing_code("finetune-run", stages) == ["src/telly/models/freezing.py"]


@pytest.mark.parametrize("stage", sorted(ENTRY))
def test_stage_tracks_the_top_level_seed_its_sections_inherit(stage):
    """``prepare``, ``model``, ``pretrain``, ... take the top-level ``seed`` unless they set one (config.INHERITED_SEEDS)."""
    from telly.config import INHERITED_SEEDS

    tracked = [str(p) for p in _body(_stages()[stage]).get("params", [])]
    inherits = [t for t in tracked if t in INHERITED_SEEDS or t in {f"{s}.seed" for s in INHERITED_SEEDS}]
    assert not inherits or "seed" in tracked, f"dvc.yaml stage {stage!r} tracks {inherits} but not `seed`"


# studies/dvc.yaml (docs/studies.md): the root stages again for every study model, plus the report across models
STUDY_ENTRY = {
    **{name: module for name, module in ENTRY.items() if name not in ("prepare", "tasks", "pretrain", "tune")},
    "report-models": "telly.reporting.models",
}
STUDY_ENTRY.pop("finetune-peft")


def _study_stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "studies/dvc.yaml").read_text(encoding="utf-8"))["stages"]


def test_every_study_stage_has_an_entry_module():
    assert set(_study_stages()) == set(STUDY_ENTRY)


@pytest.mark.parametrize("stage", sorted(STUDY_ENTRY))
def test_study_stage_depends_on_the_code_it_runs_and_on_where_its_outputs_go(stage):
    stages = _study_stages()
    missing = missing_code(stage, stages, STUDY_ENTRY)
    assert not missing, f"studies/dvc.yaml stage {stage!r} runs code it does not depend on: {missing}"
    deps = [str(d) for d in _body(stages[stage]).get("deps", [])]
    assert "src/telly/studies.py" in deps  # it decides each model's params and output paths


@pytest.mark.parametrize("stage", sorted(STUDY_ENTRY))
def test_study_stage_tracks_the_params_its_code_reads_and_its_model(stage):
    stages = _study_stages()
    missing = missing_params(stage, stages, STUDY_ENTRY)
    assert not missing, f"studies/dvc.yaml stage {stage!r} reads params it does not track: {sorted(missing)}"
    tracked = [str(p) for p in _body(stages[stage]).get("params", [])]
    if stage != "report-models":  # a model's stage: its encoder and the settings laid over params.yaml
        assert {"study.dir", "study.settings"} <= set(tracked), tracked
        assert any(t.startswith("study.models.") for t in tracked) or stage in ("finetune",), tracked
