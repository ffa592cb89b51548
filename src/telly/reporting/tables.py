"""Markdown tables of the report, this run's numbers beside the paper's."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from telly import tasks, variants
from telly.finetuning.table import clock, mean_std, task_table
from telly.reporting.claims import MAIN_METRIC
from telly.reporting.inputs import PROPERTIES, STATES, Probing, Similarity

STATE_LABEL = {"random": "random", "pretrained": "pre-trained", "finetuned": "fine-tuned"}


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def millions(m: float) -> str:
    """Parameters in millions: two decimals as the paper, more for tiny models."""
    return f"{m:.2f}" if m >= 1 else f"{m:.4f}"


def num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


# ------------------------------------------------------------------ RQ1


def probe_scores(probing: Probing, paper: dict[str, Any]) -> str:
    """The paper's RQ1 table: the weighted-layer-wise probe per model state, with selectivity."""
    rows = []
    for prop in PROPERTIES:
        cells, metric = [], None
        for state in STATES:
            d = probing.get(state, prop)
            w = (d or {}).get("weighted-layer-wise")
            if not w:
                cells.append("–")
                continue
            metric = d["metric"]
            cells.append(
                f"{w[metric]['mean'][0]:.3f} ± {w[metric]['std'][0]:.3f} "
                f"(sel. {w[f'selectivity_{metric}']['mean'][0]:+.3f})"
            )
        p = paper["rq1"]["scores"].get(prop)  # none for a property that is not the paper's
        theirs = f"{p['random']} / {p['pretrained']} / {p['finetuned']}" if p else "–"
        rows.append([prop, metric or "–", *cells, theirs])
    header = [
        "property",
        "metric",
        *(f"{STATE_LABEL[s]} (this run)" for s in STATES),
        "paper: random / pre-trained / fine-tuned",
    ]
    return table(header, rows)


def probe_peaks(probing: Probing) -> str:
    """Layer-wise probes (beyond the paper): the best hidden state, its score and selectivity, the majority baseline."""
    rows = []
    for prop in PROPERTIES:
        for state in STATES:
            d = probing.get(state, prop)
            if not d:
                continue
            m, last = d["metric"], d["n_hidden_states"] - 1
            pk = d.get("peak")
            rows.append(
                [
                    prop,
                    STATE_LABEL[state],
                    f"h{pk['layer']} of {last}" if pk else "–",
                    f"{pk[m]:.3f} ± {pk['std']:.3f}" if pk else "–",
                    f"{pk['selectivity']:+.3f}" if pk else "–",
                    f"h{d['weighted_peak_layer']}" if "weighted_peak_layer" in d else "–",
                    num(d["baseline"].get(m)),
                ]
            )
    return table(
        [
            "property",
            "model",
            "best layer (layer-wise)",
            "score at best",
            "selectivity at best",
            "largest layer weight",
            "majority baseline",
        ],
        rows,
    )


def layer_weight_table(probing: Probing) -> str:
    """The paper's layer-weight table layout: hidden states down, property x model state across."""
    columns = [(p, s) for p in PROPERTIES for s in STATES if "weighted-layer-wise" in (probing.get(s, p) or {})]
    if not columns:
        return ""
    weights = {c: probing.get(c[1], c[0])["weighted-layer-wise"]["layer_weights"]["mean"] for c in columns}
    n = max(len(w) for w in weights.values())
    rows = [[h, *(f"{weights[c][h]:.4f}" if h < len(weights[c]) else "" for c in columns)] for h in range(n)]
    return table(["h", *(f"{p[:3]}-{s[:4]}" for p, s in columns)], rows)


# ------------------------------------------------------------------ RQ2


def similarity_table(sim: Similarity) -> str:
    tasks = list(sim.curves)
    n = max(len(v) for v in sim.curves.values())
    rows = []
    for h in range(n):
        cells = []
        for t in tasks:
            v, lo, hi = sim.curves[t][h], sim.low[t][h], sim.high[t][h]
            cells.append(num(v, 4) + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""))
        rows.append([h, *cells, num(sim.random[h], 4) if sim.random and h < len(sim.random) else "–"])
    return table(["h", *tasks, "random init"], rows)


def paper_similarity_table(paper: dict[str, Any]) -> str:
    curves = paper["rq2"]["similarity"]
    n = len(next(iter(curves.values())))
    return table(["h", *curves], [[h, *(f"{curves[t][h]:.4f}" for t in curves)] for h in range(n)])


# ------------------------------------------------------------------ RQ3


def telly_table(task: str, runs: list[dict[str, Any]], baseline: dict[str, Any] | None = None) -> str:
    """One task's runs in the layout of telly-paper.md section 3.3 (↓% = reduction against Base): test metrics as
    mean ± std over each variant's seeds, and the no-training baseline's metrics in the first row when given."""
    df = task_table(task, runs)
    spec = tasks.get(task)
    main = spec.main_metric
    header = [
        "Variant",
        "Train params (M)",
        "↓%",
        "Epoch time",
        "↓%",
        "#Ep→conv",
        "Conv. time",
        "↓%",
        "seeds",
        *spec.metrics,
        f"{main} Δ% vs Base",
    ]
    rows = []
    if baseline is not None:
        base_main = float(df[df["variant"] == variants.BASE][main].iloc[0])
        value = baseline["test"][main]
        rows.append(
            ["no-training baseline", "0", "–", "–", "–", "–", "–", "–", "–"]
            + [num(baseline["test"].get(m), 4) for m in spec.metrics]
            + [f"{100 * (value / base_main - 1):+.1f}" if base_main else "–"]
        )
    rows += [
        [
            variants.label(r["variant"]),
            millions(r["paper_params_m"]),
            f"{r['params_reduction_pct']:.1f}",
            clock(r["epoch_seconds"]),
            f"{r['epoch_reduction_pct']:.1f}",
            f"{r['epochs_to_convergence']:.3g}",
            clock(r["convergence_seconds"]),
            f"{r['convergence_reduction_pct']:.1f}",
            r["seeds"],
            *(mean_std(r, m) for m in spec.metrics),
            f"{r[f'{main}_vs_base_pct']:+.1f}",
        ]
        for r in df.to_dict("records")
    ]
    return table(header, rows)


def paper_telly_table(task: str, paper: dict[str, Any]) -> str:
    spec = paper["rq3"][task]
    main = spec["metrics"][0]
    base = spec["rows"][0]["metrics"][main]
    header = [
        "Variant",
        "Train params (M)",
        "↓%",
        "Epoch time",
        "↓%",
        "#Ep→conv",
        "Conv. time",
        "↓%",
        *spec["metrics"],
        f"{main} Δ% vs Base",
    ]
    rows = [
        [
            variants.label(r["variant"]),
            f"{r['params_m']:.2f}",
            r["params_reduction_pct"],
            r["epoch_time"],
            r["epoch_reduction_pct"],
            r["epochs_to_convergence"],
            r["convergence_time"],
            r["convergence_reduction_pct"],
            *(r["metrics"][m] for m in spec["metrics"]),
            f"{100 * (r['metrics'][main] / base - 1):+.1f}",
        ]
        for r in spec["rows"]
    ]
    return table(header, rows)


# ------------------------------------------------------------------ tuning


def _spread(rep: dict[str, Any] | None) -> str:
    if not rep:
        return "–"
    std = f" ± {rep['std']:.4f}" if rep.get("std") is not None else ""
    return f"{rep['mean']:.4f}{std} (n = {rep['n']}, range {rep['range']:.4f})"


def tuning_agreement(
    tuning: dict[str, dict[str, Any]], suggested: dict[str, dict[str, Any]], deepest: dict[str, int | None]
) -> str:
    """One line: does Optuna's K agree with the similarity's suggested K and with RQ3's deepest non-inferior K?"""
    parts, same_sim, same_rq3, n_sim, n_rq3 = [], 0, 0, 0, 0
    for task in MAIN_METRIC:
        best = (tuning.get(task) or {}).get("best")
        if not best:
            continue
        tuned = None if best["k"] == -1 else best["k"]
        bits = [f"tuned {'Base' if tuned is None else f'K = {tuned}'}"]
        if task in suggested:
            n_sim += 1
            sk = suggested[task].get("suggested_k")
            same_sim += sk == tuned
            bits.append(f"similarity {'Base' if sk is None else f'K = {sk}'}")
        if task in deepest:
            n_rq3 += 1
            same_rq3 += deepest[task] == tuned
            bits.append(f"RQ3 {'none' if deepest[task] is None else f'K = {deepest[task]}'}")
        rep = (tuning.get(task) or {}).get("repeats") or {}
        if rep.get("std"):
            bits.append(f"best {rep['best_above_mean_in_std']:+.1f} repeat std above the default")
        parts.append(f"{task}: " + ", ".join(bits))
    if not parts:
        return ""
    return (
        f"**Agreement.** Optuna's K equals the similarity's suggestion on {same_sim} of {n_sim} tasks and RQ3's "
        f"deepest non-inferior K on {same_rq3} of {n_rq3} ({'; '.join(parts)}). A best trial less than about two "
        "repeat standard deviations above the default setting is within the objective's own noise.\n"
    )


def tuning_table(
    tuning: dict[str, dict[str, Any]],
    suggested: dict[str, dict[str, Any]],
    deepest: dict[str, int | None],
    base_lr: dict[str, float],
    tolerance: float,
) -> str:
    rows = []
    for task in MAIN_METRIC:
        study = tuning.get(task)
        best = (study or {}).get("best") or {}
        trials = (study or {}).get("trials") or {}
        sk = suggested.get(task, {})
        rows.append(
            [
                task,
                best.get("variant", "–"),
                f"{best['lr']:.2e}" if "lr" in best else "–",
                num(best.get("valid_score"), 4),
                _spread((study or {}).get("repeats")),
                ", ".join(f"{k} {v}" for k, v in trials.items() if v) or "–",
                variants.label(variants.name(sk.get("suggested_k"))) if sk else "–",
                "–"
                if task not in deepest
                else ("none" if deepest[task] is None else variants.label(variants.name(deepest[task]))),
                f"{base_lr[task]:.1e}" if task in base_lr else "–",
            ]
        )
    return table(
        [
            "task",
            "tuned variant (Optuna)",
            "tuned lr",
            "valid score",
            "same setting repeated (default, other seeds)",
            "trials",
            "suggested by similarity (RQ2)",
            f"deepest non-inferior K, margin {tolerance:.0%} (RQ3)",
            "finetune lr",
        ],
        rows,
    )
