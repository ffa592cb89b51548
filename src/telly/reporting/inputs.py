"""Read what the other stages left under ``results/``; a section whose files are missing is
recorded with the command that makes them, so the report says so instead of failing."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from telly import variants
from telly.config import Params
from telly.errors import TellyError
from telly.probing.properties import PROPERTY_NAMES
from telly.tasks import TASK_NAMES as TASKS

log = logging.getLogger(__name__)

PROPERTIES = PROPERTY_NAMES  # telly.probing.properties
STATES = ("random", "pretrained", "finetuned")


@dataclass
class Probing:
    """RQ1: ``details.json`` per model state and property (docs/probing.md)."""

    details: dict[str, dict[str, dict[str, Any]]]  # state -> property -> details
    skipped: dict[str, str]  # "state/property" -> why the probe stage skipped it

    def get(self, state: str, prop: str) -> dict[str, Any] | None:
        return self.details.get(state, {}).get(prop)


@dataclass
class Similarity:
    """RQ2: one curve per task (hidden states 0..L) of the chosen score, with intervals."""

    metric: str
    curves: dict[str, list[float]]
    low: dict[str, list[float | None]]
    high: dict[str, list[float | None]]
    random: list[float] | None
    suggested: dict[str, dict[str, Any]]


@dataclass
class Regime:
    """RQ3 runs of one regime (with or without frozen-prefix caching), per task."""

    label: str
    cached: bool
    runs: dict[str, list[dict[str, Any]]]


@dataclass
class Inputs:
    probing: Probing | None = None
    similarity: Similarity | None = None
    regimes: list[Regime] = field(default_factory=list)
    tuning: dict[str, dict[str, Any]] = field(default_factory=dict)
    baselines: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> the no-training baseline's result
    # task -> the pre-trained model without fine-tuning (<task>.pretrained.json: encoder or decoder mode), where it applies
    pretrained_baselines: dict[str, dict[str, Any]] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # section -> what is missing and what to run
    # task -> points of benchmarks/learning_curves.py (Base and the baseline at each training size), if given
    learning_curves: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # probing property -> the test split's no-model overlap scores (tasks stage: token Jaccard, BM25 MAP@R)
    token_overlap: dict[str, dict[str, float]] = field(default_factory=dict)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise TellyError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None


def read_probing(params: Params) -> tuple[Probing | None, str]:
    out_dir = Path(params.probe.out_dir) if params.probe else Path("results/probe")
    details: dict[str, dict[str, dict[str, Any]]] = {}
    skipped: dict[str, str] = {}
    for path in sorted(out_dir.glob("*/*/details.json")):
        state, prop = path.parent.parent.name, path.parent.name
        result = _read_json(path)
        if "skipped" in result:
            skipped[f"{state}/{prop}"] = result["skipped"]
        else:
            details.setdefault(state, {})[prop] = result
    if not details:
        return None, f"no probe results under {out_dir}/<state>/<property>/details.json: run `dvc repro probe`"
    return Probing(details, skipped), ""


def read_similarity(params: Params, metric: str) -> tuple[Similarity | None, str]:
    out_dir = Path(params.similarity.out_dir) if params.similarity else Path("results/similarity")
    table = out_dir / "table.json"
    if not table.exists():
        return None, f"{table} not found: run `dvc repro similarity`"
    rows = _read_json(table)
    curves: dict[str, list[float]] = {}
    low: dict[str, list[float | None]] = {}
    high: dict[str, list[float | None]] = {}
    random: list[float] | None = None
    for kind in ("finetuned", "random"):
        picked = sorted(
            (r for r in rows if r.get("kind") == kind), key=lambda r: r["hidden_state"]
        )  # tasks keep their order
        for task in dict.fromkeys(r["task"] for r in picked):
            series = [r for r in picked if r["task"] == task]
            values = [r.get(metric) for r in series]
            if kind == "random":
                random = values
            else:
                curves[task] = values
                low[task] = [r.get(f"{metric}_ci_low") for r in series]
                high[task] = [r.get(f"{metric}_ci_high") for r in series]
    if not curves:
        return None, f"{table} has no fine-tuned comparison with {metric!r}: run `dvc repro similarity`"
    suggested_path = out_dir / "suggested_k.json"
    suggested = _read_json(suggested_path) if suggested_path.exists() else {}
    return Similarity(metric, curves, low, high, random, suggested), ""


def read_runs(folder: Path, keep: set[tuple[str, int]] | None = None) -> list[dict[str, Any]]:
    """Every run of one task (each seed of each variant, ``<variant>/seed<S>.json``; only the ``keep`` (variant,
    seed) runs when given), each with its per-example rows under ``examples`` when it saved them (None otherwise)."""
    from telly.finetuning.examples import read_examples
    from telly.finetuning.table import load_runs

    runs = load_runs(folder) if folder.is_dir() else []
    if keep is not None:
        runs = [r for r in runs if (r["variant"], r.get("settings", {}).get("seed")) in keep]
    return [{**r, "examples": read_examples(Path(r["results_path"]))} for r in runs]


def read_regimes(params: Params) -> tuple[list[Regime], dict[str, str]]:
    """The finetune stage's runs, and the paper-regime runs beside the same Base run."""
    missing: dict[str, str] = {}
    if params.finetune is None:
        return [], {"rq3": "params.yaml has no finetune section"}
    tasks = list(params.finetune.task_names)
    main = {t: read_runs(Path(params.finetune.results_dir) / t, params.finetune.runs_of(t)) for t in tasks}
    main = {t: runs for t, runs in main.items() if runs}
    regimes = []
    if main:
        cached = any(r["settings"].get("cache_frozen") for runs in main.values() for r in runs)
        regimes.append(Regime(_label(cached), cached, main))
    else:
        missing["rq3"] = f"no runs under {params.finetune.results_dir}/<task>/<variant>.json: run `dvc repro finetune`"
    if params.report is not None:
        folder = Path(params.report.paper_regime.results_dir)
        other = {t: read_runs(folder / t) for t in tasks}
        # Base freezes nothing, so its run is the same in both regimes
        other = {
            t: [r for r in main.get(t, []) if r["variant"] == variants.BASE] + runs for t, runs in other.items() if runs
        }
        if other:
            regimes.append(Regime(_label(False), False, other))
        else:
            missing["rq3-paper-regime"] = (
                f"no runs under {folder}/<task>/<variant>.json: run `dvc repro finetune-paper-regime`"
            )
    return regimes, missing


def _label(cached: bool) -> str:
    return (
        "with frozen-prefix caching" if cached else "without caching (the paper's regime: frozen layers run every step)"
    )


def read_tuning(params: Params) -> tuple[dict[str, dict[str, Any]], str]:
    if params.study_model is not None:  # Optuna searches on the default model only (studies/dvc.yaml has no tune)
        return {}, f"not part of {params.study_model}'s study (tuning runs on the default model: docs/studies.md)"
    folder = Path(params.tune.results_dir) if params.tune else Path("results/tune")
    found = {}
    for task in TASKS:
        path = folder / f"{task}.json"
        if path.exists():
            found[task] = _read_json(path)
    if not found:
        return {}, f"no studies under {folder}/<task>.json: run `dvc repro tune`"
    return found, ""


def read_baselines(folder: Path, kind: str = "") -> tuple[dict[str, dict[str, Any]], str]:
    """The no-training baselines (``<task><kind>.json`` with ``<task><kind>.examples.jsonl``) of the
    ``baseline`` stage; ``kind`` ``.pretrained``: the pre-trained model without fine-tuning."""
    from telly.finetuning.examples import read_examples

    found = {}
    for task in TASKS:
        path = folder / f"{task}{kind}.json"
        result = _read_json(path) if path.exists() else {}
        if "test" in result:  # a pre-trained baseline that does not apply to the task has no test scores
            found[task] = {**result, "examples": read_examples(path)}
    if not found:
        return {}, f"no baselines under {folder}/<task>.json: run `dvc repro baseline`"
    return found, ""


def read_inputs(params: Params) -> Inputs:
    """Everything the report needs that exists now; the rest is listed in ``missing``."""
    metric = params.report.similarity_metric if params.report else "rsa_spearman"
    inputs = Inputs()
    inputs.probing, why = read_probing(params)
    if why:
        inputs.missing["rq1"] = why
    inputs.similarity, why = read_similarity(params, metric)
    if why:
        inputs.missing["rq2"] = why
    inputs.regimes, missing = read_regimes(params)
    inputs.missing.update(missing)
    inputs.tuning, why = read_tuning(params)
    if why:
        inputs.missing["tuning"] = why
    folder = Path(params.finetune.baselines_dir) if params.finetune else Path("results/baselines")
    inputs.baselines, why = read_baselines(folder)
    if why:
        inputs.missing["baselines"] = why
    inputs.pretrained_baselines, _ = read_baselines(folder, ".pretrained")
    tasks_metrics = Path(params.tasks.out_dir) / "metrics.json" if params.tasks else None
    if tasks_metrics is not None and tasks_metrics.exists():
        for prop, splits in _read_json(tasks_metrics).get("probing", {}).items():
            if overlap := splits.get("test", {}).get("token_overlap"):
                inputs.token_overlap[prop] = overlap
    curves = params.report.learning_curves if params.report else None
    if curves is not None and not Path(curves).exists():
        inputs.missing["learning_curves"] = f"no {curves}: run benchmarks/learning_curves.py (report.learning_curves)"
    elif curves is not None:
        for point in sorted(_read_json(Path(curves)), key=lambda p: (p["task"], p["train_size"])):
            inputs.learning_curves.setdefault(point["task"], []).append(point)
    for section, why in inputs.missing.items():
        log.warning("report: %s: %s", section, why)
    return inputs
