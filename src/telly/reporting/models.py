"""The report across models: each model's study (the embedded model's at the repository root, the others
under ``studies/<tag>/``) side by side: which claims hold on every model and which move with it.

It reads only what each model's stages and report left (its ``claims.json``, probe curves, similarity
table and RQ3 tables); a model whose files are missing reads "not run" where they would be.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from telly.config import Params
from telly.errors import TellyError
from telly.files import write_text
from telly.jsonl import write_json
from telly.probing.properties import PROPERTY_NAMES
from telly.reporting.document import MARK, _escape
from telly.reporting.figures import _plt, _save
from telly.reporting.tables import table
from telly.reporting.verdicts import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED
from telly.tasks import TASK_NAMES, TASKS

NOT_RUN = "not run"
DECISIVE = (REPRODUCED, NOT_REPRODUCED)
GENERATION_TASKS = tuple(t for t in TASK_NAMES if TASKS[t].generates)
LOWER_CASE_REASON = (
    "its tokenizer lower-cases, so generated code and comments could not match case-sensitive references; "
    "the generation tasks are not studied for it"
)

Models = list[tuple[str, Params]]


# ------------------------------------------------------------------ the models


@dataclass
class ModelInfo:
    tag: str
    name: str
    shape: str  # "<layers> x <hidden>" or "unknown"
    lowercases: bool | None  # None: the tokenizer could not be loaded
    tasks: list[str]


def _shape(name: str) -> str:
    from transformers import AutoConfig

    try:  # local files only: the report must not reach the hub
        config = AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"
    layers, hidden = getattr(config, "num_hidden_layers", None), getattr(config, "hidden_size", None)
    return f"{layers} x {hidden}" if layers and hidden else "unknown"


def _lowercases(name: str) -> bool | None:
    """Whether the tokenizer maps "Ab" and "ab" to the same ids."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return tokenizer("Ab")["input_ids"] == tokenizer("ab")["input_ids"]


def describe(tag: str, params: Params) -> ModelInfo:
    name = params.model.name_or_path if params.model else "unknown"
    tasks = list(params.finetune.task_names) if params.finetune else []
    return ModelInfo(tag, name, _shape(name), _lowercases(name), tasks)


def lower_case_note(info: ModelInfo) -> str:
    """Why a lower-casing model's study leaves the generation tasks out ("" where that does not apply)."""
    missing = [t for t in GENERATION_TASKS if t not in info.tasks]
    if not info.lowercases or not missing:
        return ""
    if len(missing) == len(GENERATION_TASKS):
        return LOWER_CASE_REASON
    return f"{LOWER_CASE_REASON.split(';')[0]}; {', '.join(missing)} are not studied for it"


def models_section(infos: list[ModelInfo]) -> str:
    case = {True: "yes", False: "no", None: "unknown"}
    rows = [[f"**{i.tag}**", f"`{i.name}`", i.shape, case[i.lowercases], ", ".join(i.tasks) or "none"] for i in infos]
    notes = [f"- **{i.tag}**: {note}.\n" for i in infos if (note := lower_case_note(i))]
    return (
        "## The models\n\n"
        + table(["tag", "model", "layers x hidden", "tokenizer lower-cases", "tasks fine-tuned"], rows)
        + ("\n" + "".join(notes) if notes else "")
    )


# ------------------------------------------------------------------ claims


def read_claims(params: Params) -> dict[str, dict[str, Any]]:
    """A model's ``claims.json`` (``{}`` where its report has not run)."""
    if params.report is None:
        return {}
    path = Path(params.report.out_dir) / "claims.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise TellyError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None


def claim_keys(claims: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """Every claim of any model: the first model's order, then the others' new ones."""
    return list(dict.fromkeys(key for by_key in claims.values() for key in by_key))


def _first(claims: dict[str, dict[str, dict[str, Any]]], key: str) -> dict[str, Any]:
    return next(by_key[key] for by_key in claims.values() if key in by_key)


def verdict(claims: dict[str, dict[str, dict[str, Any]]], tag: str, key: str) -> str:
    entry = claims[tag].get(key)
    return entry["this_run"] if entry else NOT_RUN


def verdict_cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return NOT_RUN
    text = MARK.get(entry["this_run"], entry["this_run"])
    if entry.get("firm") is not None:
        text += " (firm)" if entry["firm"] else " (not firm)"
    return text


def claims_section(claims: dict[str, dict[str, dict[str, Any]]]) -> str:
    tags = list(claims)
    rows = []
    evidence = []
    for key in claim_keys(claims):
        first = _first(claims, key)
        paper = first.get("paper")
        rows.append(
            [_escape(first["claim"]), MARK.get(paper, paper or "–")] + [verdict_cell(claims[t].get(key)) for t in tags]
        )
        evidence.append(f"- {first['claim']} (`{key}`)\n")
        for t in tags:
            entry = claims[t].get(key)
            evidence.append(f"  - {t}: {entry.get('evidence', '–') if entry else NOT_RUN}\n")
    if not rows:
        return "## Claims per model\n\nNo model has a claims.json yet: run each model's `report` stage.\n"
    return (
        "## Claims per model\n\n"
        "Each model's verdicts come from its own report (the same rules); *paper* applies the rule to the "
        "paper's published numbers.\n\n" + table(["claim", "paper"] + tags, rows) + "\n" + "".join(evidence)
    )


def summary(claims: dict[str, dict[str, dict[str, Any]]]) -> str:
    """A paragraph from the verdicts: the claims every model agrees on, those that move with the model, the rest."""
    tags = list(claims)
    same, moving, open_ = [], [], []
    for key in claim_keys(claims):
        first = _first(claims, key)
        by_tag = {t: verdict(claims, t, key) for t in tags}
        decisive = {v for v in by_tag.values() if v in DECISIVE}
        if len(decisive) > 1:
            moving.append(f"{first['claim']} ({', '.join(f'{t}: {v}' for t, v in by_tag.items())})")
        elif decisive and all(v in DECISIVE for v in by_tag.values()):
            (v,) = decisive
            paper = first.get("paper")
            agrees = "as in the paper" if paper == v else f"the paper's numbers: {paper}"
            same.append(f"{first['claim']} ({v} on every model, {agrees})")
        else:
            open_.append(f"{first['claim']} ({', '.join(f'{t}: {v}' for t, v in by_tag.items())})")
    total = len(same) + len(moving) + len(open_)
    if not total:
        return ""
    parts = [
        f"{_count(same, 'holds', 'hold')} the same on every model" + (f": {'; '.join(same)}" if same else ""),
        f"{_count(moving, 'moves', 'move')} with the model" + (f": {'; '.join(moving)}" if moving else ""),
    ]
    if open_:
        parts.append(f"{_count(open_, 'has', 'have')} no verdict on some model: {'; '.join(open_)}")
    counts = {t: sum(verdict(claims, t, k) == INCONCLUSIVE for k in claim_keys(claims)) for t in tags}
    return (
        f"**Across models.** Of {total} claims over {len(tags)} models ({', '.join(tags)}), "
        + ". ".join(parts)
        + f". Inconclusive verdicts, counted apart: {sum(counts.values())} "
        + f"({', '.join(f'{t} {n}' for t, n in counts.items())}).\n"
    )


def _count(items: list[str], one: str, many: str) -> str:
    return f"{len(items)} {one if len(items) == 1 else many}"


def combined_claims(claims: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    out = {}
    for key in claim_keys(claims):
        first = _first(claims, key)
        out[key] = {
            "claim": first["claim"],
            "paper": first.get("paper"),
            "models": {
                t: {"this_run": verdict(claims, t, key), "firm": (claims[t].get(key) or {}).get("firm")} for t in claims
            },
        }
    return out


# ------------------------------------------------------------------ figures on relative depth


def _depth(states: list[int]) -> list[float]:
    last = max(states) or 1
    return [h / last for h in states]


def probe_curves(models: Models) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """property -> tag -> (hidden states, score) of the pre-trained model's layer-wise probes."""
    curves: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for tag, params in models:
        if params.probe is None:
            continue
        for prop in PROPERTY_NAMES:
            path = Path(params.probe.out_dir) / "pretrained" / prop / "curve.csv"
            if not path.exists():
                continue
            with path.open(encoding="utf-8", newline="") as fh:
                rows = sorted(csv.DictReader(fh), key=lambda r: int(r["layer"]))
            if rows:
                curves.setdefault(prop, {})[tag] = ([int(r["layer"]) for r in rows], [float(r["score"]) for r in rows])
    return curves


def similarity_curves(models: Models, metric: str) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """task -> tag -> (hidden states, similarity) of pre-trained vs fine-tuned."""
    curves: dict[str, dict[str, tuple[list[int], list[float]]]] = {}
    for tag, params in models:
        path = Path(params.similarity.out_dir) / "table.json" if params.similarity else None
        if path is None or not path.exists():
            continue
        rows = [r for r in json.loads(path.read_text(encoding="utf-8")) if r.get("kind") == "finetuned"]
        for task in TASK_NAMES:
            series = sorted((r for r in rows if r["task"] == task and r.get(metric) is not None), key=_state)
            if series:
                curves.setdefault(task, {})[tag] = ([_state(r) for r in series], [r[metric] for r in series])
    return curves


def _state(row: dict[str, Any]) -> int:
    return int(row["hidden_state"])


def overlay(curves: dict[str, dict[str, tuple[list[int], list[float]]]], ylabel: str, path: Path) -> Path | None:
    """One panel per key, one line per model, on relative depth (hidden state / L)."""
    if not curves:
        return None
    plt = _plt()
    tags = list(dict.fromkeys(tag for by_tag in curves.values() for tag in by_tag))
    color = {tag: f"C{i % 10}" for i, tag in enumerate(tags)}  # a model keeps its colour in every panel
    fig, axes = plt.subplots(1, len(curves), figsize=(4.25 * len(curves), 3.8), squeeze=False)
    for ax, (key, by_tag) in zip(axes[0], curves.items()):
        for tag, (states, values) in by_tag.items():
            ax.plot(_depth(states), values, marker="o", ms=3, color=color[tag], label=f"{tag} (L = {max(states)})")
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("relative depth (hidden state / L)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel(ylabel)
    fig.tight_layout()
    return _save(fig, path)


def figures_section(models: Models, folder: Path) -> str:
    for old in folder.glob("*.png"):
        old.unlink()  # a figure whose inputs are gone must not linger
    metric = next((p.report.similarity_metric for _, p in models if p.report), "rsa_spearman")
    rq1 = overlay(probe_curves(models), "test score (layer-wise probe)", folder / "rq1-probe-depth.png")
    rq2 = overlay(similarity_curves(models, metric), f"{metric}, pre-trained vs fine-tuned", folder / "rq2-depth.png")
    out = ["## Layers on relative depth\n\nHidden state / L, so that models of different depths share the axes.\n"]
    out.append(
        f"![RQ1 probe curves per model](figures/{rq1.name})\n" if rq1 else "RQ1: no model has probe curves yet.\n"
    )
    out.append(f"![RQ2 similarity per model](figures/{rq2.name})\n" if rq2 else "RQ2: no model has similarity yet.\n")
    return "\n".join(out)


# ------------------------------------------------------------------ RQ3

WITHIN_BASE = "telly_within_base"  # the RQ3 claim: its per-task evidence holds Base against both baselines


def _difference(entry: dict[str, Any] | None) -> str:
    """``+0.12 [+0.10, +0.14] ✓`` from a per-task comparison (two-level interval; ✓ = above 0)."""
    interval = (entry or {}).get("interval")
    if not interval:
        return "–"
    mark = "✓" if interval["low"] > 0 else ("✗" if interval["high"] < 0 else "?")
    return f"{interval['estimate']:+.3g} [{interval['low']:+.3g}, {interval['high']:+.3g}] {mark}"


def learning_section(claims: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Per task and model: Base minus its no-training baseline, Base minus the pre-trained model, the RQ3 verdict."""
    per_model = {t: (by_key.get(WITHIN_BASE) or {}).get("per_task") or {} for t, by_key in claims.items()}
    tasks = [t for t in TASK_NAMES if any(t in per for per in per_model.values())]
    if not tasks:
        return ""
    rows = []
    for task in tasks:
        for tag, per in per_model.items():
            if task in per:
                e = per[task]
                rows.append([task, tag, _difference(e.get("learns")), _difference(e.get("pretrained")), e["verdict"]])
    return (
        "## Does fine-tuning learn? Base against its baselines, per model\n\n"
        "Base minus the no-training baseline (on the model's own tokens) and minus the pre-trained model "
        "without fine-tuning, on the task's main metric: two-level 95% intervals over seeds and rows "
        "(✓ above 0, ✗ below, ? undecided). RQ3's Telly-K verdict is drawn only where Base beats its "
        "no-training baseline.\n\n"
        + table(["task", "model", "Base − no-training baseline", "Base − pre-trained model", "RQ3 verdict"], rows)
        + "\n"
        + tasks_that_measure(per_model, tasks)
    )


def tasks_that_measure(per_model: dict[str, dict[str, Any]], tasks: list[str]) -> str:
    """Which tasks show, on some model, a Base above its no-training baseline: where the setup can measure."""
    beats = {
        task: [tag for tag, per in per_model.items() if _above_zero((per.get(task) or {}).get("learns"))]
        for task in tasks
    }
    shown = [f"{task} ({', '.join(tags)})" for task, tags in beats.items() if tags]
    never = [task for task, tags in beats.items() if not tags]
    text = f"**Tasks where Base beats its no-training baseline on at least one model: {len(shown)} of {len(tasks)}**"
    text += f" ({'; '.join(shown)})." if shown else "."
    if never:
        text += f" On none: {', '.join(never)} (each model's report shows its learning curve and the cause)."
    return text + "\n"


def _above_zero(entry: dict[str, Any] | None) -> bool:
    interval = (entry or {}).get("interval")
    return bool(interval) and interval["low"] > 0


def _table_body(path: Path) -> str:
    """A task table without its own heading (the report gives it one)."""
    lines = path.read_text(encoding="utf-8").strip().splitlines()
    while lines and (lines[0].startswith("#") or not lines[0].strip()):
        lines.pop(0)
    return "\n".join(lines) + "\n"


def rq3_section(models: Models, out_dir: Path) -> str:
    out = ["## RQ3 per model\n"]
    for tag, params in models:
        if params.report is not None and (Path(params.report.out_dir) / "report.md").exists():
            link = os.path.relpath(Path(params.report.out_dir) / "report.md", out_dir)
            out.append(f"Full report of **{tag}**: [{link}]({link})\n")
        if params.finetune is None:
            continue
        for task in params.finetune.task_names:
            path = Path(params.finetune.results_dir) / "tables" / f"{task}.md"
            if path.exists():
                out.append(f"### {tag}: {task}\n\n{_table_body(path)}")
    return "\n".join(out)


def write_models_report(models: list[tuple[str, Params]], out_dir: Path) -> Path:
    """models: (tag, that model's Params) in report order, the default model first. Writes out_dir/report.md
    (+ figures in out_dir/figures/*.png) and out_dir/claims.json; returns the report.md path."""
    if not models:
        raise TellyError("the report across models needs at least one model")
    tags = [tag for tag, _ in models]
    if len(set(tags)) != len(tags):
        raise TellyError(f"the report across models got a model tag twice: {tags}")
    out_dir = Path(out_dir)
    claims = {tag: read_claims(params) for tag, params in models}
    markdown = "\n".join(
        [
            "# Telly study across models\n\nEach model ran the same stages; its own report holds the details.\n",
            models_section([describe(tag, params) for tag, params in models]),
            claims_section(claims),
            summary(claims),
            learning_section(claims),
            figures_section(models, out_dir / "figures"),
            rq3_section(models, out_dir),
        ]
    )
    write_text(out_dir / "report.md", markdown)
    write_json(out_dir / "claims.json", combined_claims(claims))
    return out_dir / "report.md"
