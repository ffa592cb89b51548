"""What the similarity stage leaves behind: tables, DVC metrics and plots, one figure.

- ``table.csv`` / ``table.json``: one row per comparison and hidden state, every score
  with its interval;
- ``table.md``: the paper's layout (hidden states x tasks), one table per score;
- ``metrics.json``: DVC metrics (per task: each score per hidden state, suggested K,
  the top-two-layers verdict);
- ``plots/<score>.csv``: ``dvc plots`` data, hidden state x tasks (+ baselines);
- ``similarity.png``: the paper's figure (RQ2.ipynb), one panel per score;
- ``suggested_k.json``: the freeze depth read off each task's curve.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from telly.files import atomic_path
from telly.jsonl import write_json
from telly.similarity.compute import KINDS, METRICS, curves

LABELS = {
    "rsa_spearman": "RSA, Spearman ρ",
    "rsa_pearson": "RSA, Pearson r",
    "cka": "linear CKA (debiased)",
    "procrustes": "Procrustes distance (0 = same)",
}
FIGURE_METRICS = ("rsa_spearman", "rsa_pearson", "cka")


def clean(value: Any) -> Any:
    """NaN is not JSON: write it as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _column(row: Mapping[str, Any]) -> str:
    """Table/plot column: the task, ``random``, or ``seed_<task>`` / ``seed_pair_<task>``."""
    if row["kind"] == "finetuned":
        return row["task"]
    return "random" if row["kind"] == "random" else f"{row['kind']}_{row['task']}"


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Tasks first (in run order), then the baselines: random, seed, seed pair."""
    order = {"finetuned": 0, "random": 1, "seed": 2, "seed_pair": 3}
    ranked = sorted(enumerate(rows), key=lambda ir: (order.get(ir[1]["kind"], 9), ir[0]))
    return list(dict.fromkeys(_column(r) for _, r in ranked))


def write_table(rows: Sequence[Mapping[str, Any]], out: Path) -> None:
    import pandas as pd

    frame = pd.DataFrame(rows)
    with atomic_path(out / "table.csv") as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6g")
    write_json(out / "table.json", [{k: clean(v) for k, v in r.items()} for r in rows])
    with atomic_path(out / "table.md") as tmp:
        tmp.write_text(markdown(rows), encoding="utf-8")


def _cell(row: Mapping[str, Any], metric: str) -> str:
    value, low, high = row[metric], row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]
    if value is None or not math.isfinite(value):
        return "–"
    if low is None or not math.isfinite(low):
        return f"{value:.4f}"
    return f"{value:.4f} [{low:.4f}, {high:.4f}]"


def markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """One paper-style table per score: hidden states down, tasks (then baselines) across."""
    columns = _columns(rows)
    layers = sorted({r["hidden_state"] for r in rows})
    by_key = {(_column(r), r["hidden_state"]): r for r in rows}
    n = rows[0]["n_samples"] if rows else 0
    parts = [
        "# RQ2: similarity of each hidden state before and after fine-tuning\n",
        f"{n} inputs; hidden state 0 = embeddings, h = output of layer h. "
        "Brackets: half-sample interval. Baseline columns: "
        + "; ".join(f"`{k}`: {v}" for k, v in KINDS.items() if k != "finetuned")
        + ".\n",
    ]
    for metric in METRICS:
        parts.append(f"\n## {LABELS[metric]}\n")
        parts.append("| h | " + " | ".join(columns) + " |")
        parts.append("|---" * (len(columns) + 1) + "|")
        for h in layers:
            cells = [_cell(by_key[(c, h)], metric) if (c, h) in by_key else "" for c in columns]
            parts.append(f"| {h} | " + " | ".join(cells) + " |")
    return "\n".join(parts) + "\n"


def write_plots_data(rows: Sequence[Mapping[str, Any]], out: Path) -> list[Path]:
    """``plots/<score>.csv``: a ``hidden_state`` column, then one column per task and baseline."""
    import pandas as pd

    written = []
    for metric in METRICS:
        frame = pd.DataFrame(rows).assign(column=lambda f: [_column(r) for r in rows])
        wide = frame.pivot(index="hidden_state", columns="column", values=metric)
        wide = wide[_columns(rows)].reset_index()
        path = out / "plots" / f"{metric}.csv"
        with atomic_path(path) as tmp:
            wide.to_csv(tmp, index=False, float_format="%.6g")
        written.append(path)
    return written


def figure(rows: Sequence[Mapping[str, Any]], path: Path, *, threshold: float, threshold_metric: str) -> None:
    """The paper's figure: similarity per hidden state, one line per task, baselines dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(FIGURE_METRICS), figsize=(5.2 * len(FIGURE_METRICS), 4.2), sharex=True)
    colors = {}
    for ax, metric in zip(axes, FIGURE_METRICS):
        for kind, style in (("finetuned", "-"), ("seed", ":"), ("random", "--")):
            picked = [r for r in rows if r["kind"] == kind]
            for task in dict.fromkeys(r["task"] for r in picked):
                series = sorted((r for r in picked if r["task"] == task), key=lambda r: r["hidden_state"])
                x = [r["hidden_state"] for r in series]
                y = [r[metric] for r in series]
                label = task if kind == "finetuned" else f"{kind} ({task})" if kind == "seed" else "random init"
                color = "black" if kind == "random" else colors.get(task)
                (line,) = ax.plot(
                    x, y, style, marker="o" if kind == "finetuned" else None, ms=3, color=color, label=label
                )
                colors.setdefault(task, line.get_color())
                low = [r[f"{metric}_ci_low"] for r in series]
                high = [r[f"{metric}_ci_high"] for r in series]
                if all(v is not None and math.isfinite(v) for v in low + high):
                    ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
        if metric == threshold_metric:
            ax.axhline(threshold, color="grey", lw=0.8, ls="-.", label=f"suggest-K threshold {threshold}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(LABELS[metric])
        ax.set_xlabel("hidden state (0 = embeddings)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("pre-trained vs fine-tuned")
    axes[-1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)


def metrics(rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """DVC metrics: per task each score per hidden state, plus the summary facts."""
    out: dict[str, Any] = {}
    for metric in METRICS:
        for kind in ("finetuned", "random", "seed", "seed_pair"):
            for task, curve in curves(rows, metric, kind).items():
                key = _column({"kind": kind, "task": task})
                out.setdefault(key, {})[metric] = {f"h{h}": clean(v) for h, v in enumerate(curve)}
    for task, facts in summary.items():  # numbers only: `dvc metrics show` is a table
        numbers = {k: clean(v) for k, v in facts.items() if k in ("suggested_k", "top_two_only", "top_two_share")}
        out.setdefault(task, {}).update(numbers)
    return out
