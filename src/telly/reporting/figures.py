"""The report's figures (PNG): probe curves, layer weights, similarity per layer, quality vs cost.

Where the paper has the same quantity it is drawn beside this run's. The paper's model has
12 layers and ours may have fewer, so shared axes use relative depth (hidden state / L) and
layer weights are drawn relative to uniform (weight x (L + 1); 1 = every state equal).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from telly import variants
from telly.files import atomic_path
from telly.probing.properties import PROPERTIES
from telly.reporting.claims import MAIN_METRIC
from telly.reporting.inputs import STATES, Inputs

STATE_COLORS = {"random": "tab:gray", "pretrained": "tab:blue", "finetuned": "tab:orange"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    _plt().close(fig)
    return path


def _percent(prop: str, values: list[float]) -> list[float]:
    return [100 * v for v in values] if PROPERTIES[prop].fraction else list(values)  # metrics in [0, 1]


def probe_curves(inputs: Inputs, path: Path) -> Path | None:
    """Layer-wise probe score per hidden state, one panel per property, one line per model state."""
    probing = inputs.probing
    if probing is None or not any("layer-wise" in d for by in probing.details.values() for d in by.values()):
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(PROPERTIES), figsize=(4.25 * len(PROPERTIES), 3.8))
    for ax, prop in zip(axes, PROPERTIES):
        for state in STATES:
            d = probing.get(state, prop)
            if not d or "layer-wise" not in d:
                continue
            m = d["metric"]
            mean, std = _percent(prop, d["layer-wise"][m]["mean"]), _percent(prop, d["layer-wise"][m]["std"])
            x = range(len(mean))
            ax.plot(x, mean, marker="o", ms=3, color=STATE_COLORS[state], label=state)
            ax.fill_between(
                x,
                [a - b for a, b in zip(mean, std)],
                [a + b for a, b in zip(mean, std)],
                color=STATE_COLORS[state],
                alpha=0.15,
                linewidth=0,
            )
            ax.plot(
                x,
                _percent(prop, d["layer-wise"][f"control_{m}"]["mean"]),
                ls="--",
                color=STATE_COLORS[state],
                alpha=0.6,
            )
        ax.set_title(f"{prop} (dashed: control task)", fontsize=10)
        ax.set_xlabel("hidden state (0 = embeddings)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test score (%)")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def layer_weights(inputs: Inputs, paper: dict[str, Any], path: Path) -> Path:
    """Weighted-layer-wise probes: learned weight per relative depth, this run (solid) and the paper (dashed)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(PROPERTIES), figsize=(4.25 * len(PROPERTIES), 3.8), sharey=True)
    for ax, prop in zip(axes, PROPERTIES):
        for state in ("pretrained", "finetuned", "random"):
            d = inputs.probing.get(state, prop) if inputs.probing else None
            if d and "weighted-layer-wise" in d:
                w = d["weighted-layer-wise"]["layer_weights"]["mean"]
                ax.plot(
                    _depth(len(w)),
                    [v * len(w) for v in w],
                    marker="o",
                    ms=3,
                    color=STATE_COLORS[state],
                    label=f"{state} (this run)",
                )
            pw = paper["rq1"]["layer_weights"].get(prop, {}).get(state)  # the paper has none for our own properties
            if pw and state != "random":
                ax.plot(
                    _depth(len(pw)),
                    [v * len(pw) for v in pw],
                    ls="--",
                    color=STATE_COLORS[state],
                    alpha=0.7,
                    label=f"{state} (paper)",
                )
        ax.axhline(1, color="black", lw=0.6, ls=":")
        ax.set_title(prop, fontsize=10)
        ax.set_xlabel("relative depth (hidden state / L)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("layer weight x (L + 1)   (1 = uniform)")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _depth(n_states: int) -> list[float]:
    return [h / (n_states - 1) for h in range(n_states)]


def similarity(inputs: Inputs, paper: dict[str, Any], path: Path) -> Path:
    """RQ2: similarity per hidden state for the five tasks, this run (left) and the paper (right)."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    colors = {}
    sim = inputs.similarity
    if sim is not None:
        for task, curve in sim.curves.items():
            x = list(range(len(curve)))
            (line,) = left.plot(x, curve, marker="o", ms=3, label=task)
            colors[task] = line.get_color()
            low, high = sim.low.get(task), sim.high.get(task)
            if low and high and all(v is not None and math.isfinite(v) for v in low + high):
                left.fill_between(x, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
        if sim.random:
            left.plot(range(len(sim.random)), sim.random, ls="--", color="black", label="random init (floor)")
        left.set_title(f"this run ({sim.metric})", fontsize=10)
    else:
        left.text(0.5, 0.5, "no similarity results yet\n(dvc repro similarity)", ha="center", transform=left.transAxes)
    for task, curve in paper["rq2"]["similarity"].items():
        right.plot(range(len(curve)), curve, marker="o", ms=3, color=colors.get(task), label=task)
    right.set_title("paper (UniXcoder, RSA ρ)", fontsize=10)
    for ax in (left, right):
        ax.set_xlabel("hidden state (0 = embeddings)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower left")
    left.set_ylabel("similarity, pre-trained vs fine-tuned")
    fig.tight_layout()
    return _save(fig, path)


def quality_vs_cost(inputs: Inputs, paper: dict[str, Any], path: Path) -> Path | None:
    """RQ3: main metric vs epoch time, both relative to Base; one panel per task, K written at each point."""
    if not inputs.regimes:
        return None
    plt = _plt()
    tasks = list(MAIN_METRIC)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 4), sharey=False)
    styles = [dict(marker="o", color="tab:blue"), dict(marker="s", color="tab:red", mfc="none")]
    for ax, task in zip(axes, tasks):
        metric = MAIN_METRIC[task]
        for regime, style in zip(inputs.regimes, styles):
            points = _relative(regime.runs.get(task, []), metric)
            if points:
                ax.plot(
                    [p[1] for p in points],
                    [p[2] for p in points],
                    ls="-",
                    lw=0.8,
                    ms=5,
                    label="this run, " + ("cached" if regime.cached else "paper's regime"),
                    **style,
                )
                for k, x, y in points:
                    ax.annotate(
                        "B" if k is None else str(k), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points"
                    )
        rows = paper["rq3"][task]["rows"]
        base = rows[0]
        ax.plot(
            [100 * r["epoch_seconds"] / base["epoch_seconds"] for r in rows],
            [100 * r["metrics"][metric] / base["metrics"][metric] for r in rows],
            ls=":",
            marker="x",
            color="tab:gray",
            ms=4,
            label="paper",
        )
        ax.axhline(100, color="black", lw=0.6)
        ax.axhline(99, color="black", lw=0.6, ls=":")
        ax.set_title(f"{task} ({metric})", fontsize=10)
        ax.set_xlabel("epoch time, % of Base")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test metric, % of Base (dotted: 99%)")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _relative(runs: list[dict[str, Any]], metric: str) -> list[tuple[int | None, float, float]]:
    """(K, epoch time % of Base, metric % of Base) per variant (the means over its seeds), Base first then K
    ascending."""
    grouped: dict[int | None, list[dict[str, Any]]] = {}
    for r in runs:
        grouped.setdefault(variants.k_of(r["variant"]), []).append(r)
    if None not in grouped:
        return []

    def mean(group: list[dict[str, Any]], get) -> float:
        return sum(get(r) for r in group) / len(group)

    base_metric = mean(grouped[None], lambda r: r["test"].get(metric) or 0.0)
    base_seconds = mean(grouped[None], lambda r: r["cost"]["epoch_seconds"])
    if not base_metric or not base_seconds:
        return []
    points = [
        (
            k,
            100 * mean(group, lambda r: r["cost"]["epoch_seconds"]) / base_seconds,
            100 * mean(group, lambda r: r["test"][metric]) / base_metric,
        )
        for k, group in grouped.items()
    ]
    return sorted(points, key=lambda p: -1 if p[0] is None else p[0])
