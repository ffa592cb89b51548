"""Beyond the paper: Telly-K against LoRA, BitFit and (IA)3, and combined with them, at equal cost.

Per task: the test quality of every run (Base and Telly-K from ``finetune.results_dir``, the
methods from ``finetune.peft.results_dir``) against trainable parameters and against epoch
time, one figure with two panels, the Pareto front (cheaper and at least as good) marked;
then, at the budget of each method's run, the best Telly-K (or Base) that fits the same budget
and which of the two is better.

Intervals: where a variant has runs with several seeds (``settings.seed`` differs: ``finetune.seeds``,
``<variant>/seed<S>.json``), its quality is the mean with a 95% t-interval over the seeds (shown in the
table). Two variants are compared as the RQ3 claims are (:mod:`telly.reporting.evidence`): the relative
difference of their main metric with a paired bootstrap interval over the same test rows (each
variant's seeds pooled per row); one is better when the interval excludes 0, otherwise the comparison
is "inconclusive" with the interval given. Runs without per-example rows fall back to the seed
intervals (apart only when they do not overlap; "inconclusive (single seed)" with one seed). Cost is
identical for every method: ``trainable_params`` (what the optimiser updates: adapters, biases or
layers) and ``epoch_seconds`` (training only; Telly-K's one-off cache build is in time to convergence,
not here).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from telly import variants
from telly.config import Params
from telly.errors import TellyError
from telly.finetuning import examples as E
from telly.reporting import evidence as ev
from telly.reporting.claims import MAIN_METRIC
from telly.reporting.tables import num, table
from telly.reporting.verdicts import REPRODUCED

AXES = {"trainable_params": "trainable parameters", "epoch_seconds": "epoch time (s)"}
FAMILY_COLORS = {  # registry: a colour per variant family (telly.variants.family)
    variants.BASE: "black",
    "telly": "tab:blue",
    "lora": "tab:orange",
    "lora-all": "tab:red",
    "ia3": "tab:green",
    "bitfit": "tab:purple",
}


@dataclass
class Point:
    """One variant of one task: quality (mean over seeds) with its interval, and its cost."""

    variant: str
    quality: float
    low: float | None  # None: a single seed, no interval
    high: float | None
    seeds: int
    cost: dict[str, float]
    task: str = ""
    rows: list[Any] | None = None  # per seed, the main metric's per-row statistics over the task's test rows

    @property
    def family(self) -> str:
        return variants.family(self.variant)

    @property
    def is_method(self) -> bool:
        return variants.parse(self.variant).method is not None


def _canonical(variant: str) -> str:
    """One point per variant: its seeds are runs of their own (``<variant>/seed<S>.json``), read together."""
    return variant


def read_points(folders: list[Path], task: str) -> list[Point]:
    """Every run of ``task`` under ``folders`` (``<folder>/<task>/**/*.json``), one point per variant."""
    metric = MAIN_METRIC[task]
    runs: dict[str, list[dict[str, Any]]] = {}
    for folder in folders:
        for path in sorted((folder / task).rglob("*.json")):
            try:
                run = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise TellyError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from None
            if not isinstance(run, dict) or "variant" not in run or metric not in run.get("test", {}):
                continue
            run["examples"] = E.read_examples(path)
            runs.setdefault(_canonical(run["variant"]), []).append(run)
    points = sorted((_point(v, rs, metric) for v, rs in runs.items()), key=lambda p: variants.sort_key(p.variant))
    _attach_rows(task, points, runs)
    return points


def _attach_rows(task: str, points: list[Point], runs: dict[str, list[dict[str, Any]]]) -> None:
    """Per-seed row statistics on the same test rows, for the paired comparisons (none when a run lacks rows
    or the runs are on different test rows)."""
    named = {(p.variant, i): r["examples"] for p in points for i, r in enumerate(runs[p.variant]) if r.get("examples")}
    if not named or len(named) != sum(len(runs[p.variant]) for p in points):
        return
    try:
        stats = E.aligned(task, {f"{v}#{i}": rows for (v, i), rows in named.items()})
    except TellyError:
        return
    for p in points:
        p.task = task
        p.rows = [stats[f"{p.variant}#{i}"] for i in range(len(runs[p.variant]))]


def _point(variant: str, runs: list[dict[str, Any]], metric: str) -> Point:
    by_seed = {r.get("settings", {}).get("seed", i): r for i, r in enumerate(runs)}  # one run per seed
    values = [r["test"][metric] for r in by_seed.values()]
    mean = sum(values) / len(values)
    low = high = None
    if len(values) >= 2:
        from scipy import stats

        sem = stats.sem(values)
        low, high = (mean, mean) if sem == 0 else stats.t.interval(0.95, len(values) - 1, loc=mean, scale=sem)
    cost = {axis: sum(r["cost"][axis] for r in by_seed.values()) / len(by_seed) for axis in AXES}
    return Point(variant, mean, low, high, len(values), cost)


def pareto_front(points: list[Point], axis: str) -> list[Point]:
    """Points no other point beats: none cheaper-or-equal on ``axis`` with quality at least as high (one strictly)."""

    def dominated(p: Point) -> bool:
        return any(
            q.cost[axis] <= p.cost[axis]
            and q.quality >= p.quality
            and (q.cost[axis] < p.cost[axis] or q.quality > p.quality)
            for q in points
        )

    return sorted((p for p in points if not dominated(p)), key=lambda p: p.cost[axis])


def compare(a: Point, b: Point) -> str:
    """Which of two points is better: a name, or "inconclusive" (the paired interval of their difference holds
    0; without per-example rows: the seed intervals overlap, or a single seed)."""
    if a.rows and b.rows and a.task == b.task:
        interval = ev.relative_difference(a.task, b.rows, a.rows)  # a relative to b, in %
        text = f"{variants.label(a.variant)} vs {variants.label(b.variant)} {interval.estimate:+.1f}% "
        text += f"[{interval.low:+.1f}, {interval.high:+.1f}]"
        if interval.rows_only is not None:
            text += f", rows only [{interval.rows_only.low:+.1f}, {interval.rows_only.high:+.1f}]"
        if interval.low > 0:
            return f"{variants.label(a.variant)} ({text})"
        if interval.high < 0:
            return f"{variants.label(b.variant)} ({text})"
        return f"inconclusive ({text})"
    if a.low is None or b.low is None:
        higher = a if a.quality >= b.quality else b
        return f"inconclusive (single seed; higher point estimate: {variants.label(higher.variant)})"
    if a.low > b.high:
        return variants.label(a.variant)
    if b.low > a.high:
        return variants.label(b.variant)
    return "inconclusive (95% intervals overlap)"


def budget_answers(points: list[Point], axis: str) -> list[list[str]]:
    """At each method run's cost: the best Base/Telly-K within it, and which is better."""
    freezing = [p for p in points if not p.is_method]
    rows = []
    for m in (p for p in points if p.is_method):
        fits = [p for p in freezing if p.cost[axis] <= m.cost[axis]]
        if not fits:
            cheapest = min(freezing, key=lambda p: p.cost[axis], default=None)
            answer = "only the method fits"
            if cheapest is not None:
                answer += f" (the cheapest Base/Telly-K, {variants.label(cheapest.variant)}, costs "
                answer += f"{_fmt(cheapest.cost[axis], axis)})"
            rows.append([variants.label(m.variant), _fmt(m.cost[axis], axis), "–", answer])
            continue
        best = max(fits, key=lambda p: p.quality)
        rows.append(
            [
                variants.label(m.variant),
                _fmt(m.cost[axis], axis),
                f"{variants.label(best.variant)} ({_fmt(best.cost[axis], axis)})",
                compare(m, best),
            ]
        )
    return rows


def _fmt(value: float, axis: str) -> str:
    return f"{value:,.0f}" if axis == "trainable_params" else f"{value:.2f}"


def _quality(p: Point) -> str:
    if p.low is None:
        return f"{num(p.quality)} (1 seed)"
    return f"{num(p.quality)} [{num(p.low)}, {num(p.high)}] ({p.seeds} seeds)"


def draw(task: str, points: list[Point], path: Path) -> Path:
    """Quality vs trainable parameters (log) and vs epoch time, Pareto front as a step line, front points ringed."""
    from telly.reporting.figures import _plt, _save

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (axis, title) in zip(axes, AXES.items()):
        for p in points:
            color = FAMILY_COLORS.get(p.family.removeprefix("telly+"), "gray")
            marker = "s" if p.family.startswith("telly+") else "o"
            err = None if p.low is None else [[p.quality - p.low], [p.high - p.quality]]
            ax.errorbar(p.cost[axis], p.quality, yerr=err, fmt=marker, color=color, ms=5, capsize=2)
            ax.annotate(variants.label(p.variant), (p.cost[axis], p.quality), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")  # fmt: skip
        front = pareto_front(points, axis)
        ax.step([p.cost[axis] for p in front], [p.quality for p in front], where="post", color="gray", lw=1, ls="--")
        ax.scatter([p.cost[axis] for p in front], [p.quality for p in front], s=90, facecolors="none",
                   edgecolors="black", lw=0.8, label="Pareto front")  # fmt: skip
        if axis == "trainable_params" and all(p.cost[axis] > 0 for p in points):
            ax.set_xscale("log")
        ax.set_xlabel(title)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"test {MAIN_METRIC[task]}")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"{task}: quality vs cost (circles: alone; squares: on Telly-K)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def task_section(task: str, points: list[Point], figure: Path | None, learns: str = "") -> str:
    out = [f"### {task}\n"] + ([learns] if learns else [])
    if figure is not None:
        out.append(f"![{task}: quality vs cost](figures/{figure.name})\n")
    fronts = {axis: {p.variant for p in pareto_front(points, axis)} for axis in AXES}
    out.append(
        table(
            ["variant", f"test {MAIN_METRIC[task]}", "trainable params", "epoch s", "front (params / time)"],
            [
                [
                    variants.label(p.variant),
                    _quality(p),
                    _fmt(p.cost["trainable_params"], "trainable_params"),
                    _fmt(p.cost["epoch_seconds"], "epoch_seconds"),
                    " / ".join("●" if p.variant in fronts[a] else "·" for a in AXES),
                ]
                for p in points
            ],
        )
    )
    for axis, title in AXES.items():
        rows = budget_answers(points, axis)
        if rows:
            out += [
                f"**At the same {title.split(' (')[0]} budget, which is better?**\n",
                table(["method", "its budget", "best Base/Telly-K within it", "better"], rows),
            ]
    return "\n".join(out)


def learns_line(evidence: dict[str, Any] | None) -> str:
    """Whether Base beats the task's no-training baseline (the RQ3 evidence), so a reader weighs the comparison."""
    learns = (evidence or {}).get("learns")
    if not learns:
        return ""
    if learns["verdict"] == REPRODUCED:
        return "Base beats its no-training baseline on this task (RQ3), so these differences are about learning.\n"
    return (
        "**Base does not beat its no-training baseline on this task (RQ3)**: the methods below are compared on "
        "a task where Base does not beat its no-training baseline, so read them as cost figures only.\n"
    )


def section(params: Params, figures_dir: Path, evidence: dict[str, dict[str, Any]] | None = None) -> str:
    """The report's section (Markdown), its figures drawn into ``figures_dir`` as ``peft-<task>.png``;
    ``evidence``: the RQ3 evidence per task (whether Base learns it)."""
    out = ["## Beyond the paper: Telly-K against LoRA, BitFit and (IA)3, and combined with them\n"]
    if params.finetune is None:
        return out[0] + "\nNo finetune section in params.\n"
    settings = params.finetune
    out.append(
        "Quality (the task's main test metric) against trainable parameters (adapters, biases or unfrozen layers: "
        "what the optimiser updates) and against epoch time, with the same accounting for every method "
        "(docs/finetuning.md). Front = Pareto front: no other run is as cheap and at least as good. "
        "*Better* compares each method with the best Base/Telly-K run that fits its budget: the relative "
        "difference with a paired 95% two-level bootstrap interval (seeds, then test rows, as RQ3's; the "
        "row-only interval beside it); *inconclusive* where the two-level interval holds 0.\n"
    )
    tasks = settings.peft.tasks or list(MAIN_METRIC)
    folders = [Path(settings.results_dir), Path(settings.peft.results_dir)]
    drawn_any = False
    for task in tasks:
        points = read_points(folders, task)
        if not any(p.is_method for p in points):
            out.append(f"### {task}\n\nNo method runs yet (`dvc repro finetune-peft`).\n")
            continue
        finite = all(math.isfinite(p.quality) for p in points)
        figure = draw(task, points, figures_dir / f"peft-{task}.png") if finite else None
        drawn_any = True
        out.append(task_section(task, points, figure, learns_line((evidence or {}).get(task))))
    if not drawn_any:
        out.append(
            f"Full matrix: set `finetune.peft.variants` and `finetune.peft.tasks` ({settings.peft.results_dir}).\n"
        )
    return "\n".join(out)
