"""One property on one model state: both probe types, task and control, every seed.

The result is what the paper reports (per-layer scores, the weighted probe's score
and its mean layer weights) plus what it lacks: mean and standard deviation over
seeds, the control task's score, selectivity (task minus control, same probe, same
seed) and the majority-class baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from telly.probing.objectives import ProbingTask
from telly.probing.train import TrainSettings, train_probe

PROBE_TYPES = ("layer-wise", "weighted-layer-wise")


def _mean_std(values: Sequence[Sequence[float]]) -> dict[str, list[float]]:
    a = np.asarray(values, dtype=float)  # [seeds, heads]
    return {"mean": a.mean(axis=0).round(4).tolist(), "std": a.std(axis=0).round(4).tolist()}


def run_suite(
    name: str,
    task: ProbingTask,
    control: ProbingTask,
    settings: TrainSettings,
    seeds: Sequence[int],
    probe_types: Sequence[str] = PROBE_TYPES,
) -> dict[str, Any]:
    """Train every probe and aggregate; the dict is written as details.json by the stage."""
    result: dict[str, Any] = {
        "property": name,
        "metric": task.primary,
        "n_hidden_states": task.n_states,
        "hidden_size": task.hidden,
        "sizes": {"train": len(task.train), "valid": len(task.valid), "test": len(task.test)},
        "seeds": list(seeds),
        "head": settings.head,
        "baseline": task.majority(seeds[0]),
    }
    jobs = [(p, s) for p in probe_types for s in seeds]
    raw: dict[str, dict[str, list]] = {p: {"task": [], "control": [], "weights": [], "epochs": []} for p in probe_types}
    threads = torch.get_num_threads()
    # probes are tiny: one thread is several times faster than two (no sync per small op)
    torch.set_num_threads(1)
    try:
        for probe_type, seed in tqdm(jobs, desc=f"probe {name}", unit="probe", leave=False):
            fitted = train_probe(task, probe_type, settings, seed)
            controlled = train_probe(control, probe_type, settings, seed)
            raw[probe_type]["task"].append(fitted.test)
            raw[probe_type]["control"].append(controlled.test)
            raw[probe_type]["epochs"].append(fitted.best_epoch)
            if fitted.layer_weights is not None:
                raw[probe_type]["weights"].append(fitted.layer_weights)
    finally:
        torch.set_num_threads(threads)

    for probe_type in probe_types:
        runs = raw[probe_type]
        metric_names = list(runs["task"][0][0])
        summary: dict[str, Any] = {}
        for m in metric_names:
            task_scores = [[head[m] for head in seed_run] for seed_run in runs["task"]]
            control_scores = [[head[m] for head in seed_run] for seed_run in runs["control"]]
            summary[m] = _mean_std(task_scores)
            summary[f"control_{m}"] = _mean_std(control_scores)
            summary[f"selectivity_{m}"] = _mean_std(np.subtract(task_scores, control_scores))
            summary[f"per_seed_{m}"] = task_scores
        summary["best_epoch"] = runs["epochs"]
        if runs["weights"]:
            summary["layer_weights"] = _mean_std(runs["weights"])
        result[probe_type] = summary

    if "layer-wise" in probe_types:
        curve = result["layer-wise"][task.primary]["mean"]
        # a tie on the paper's metric (syntactic accuracy can sit at 0.5 on every layer) is broken by
        # the task's other metrics, in order, rather than always falling on layer 0
        others = [m for m in raw["layer-wise"]["task"][0][0] if m != task.primary]
        peak = peak_layer({m: result["layer-wise"][m]["mean"] for m in (task.primary, *others)})
        result["peak"] = {
            "layer": peak,
            task.primary: curve[peak],
            "std": result["layer-wise"][task.primary]["std"][peak],
            "selectivity": result["layer-wise"][f"selectivity_{task.primary}"]["mean"][peak],
        }
    if "weighted-layer-wise" in probe_types:
        weights = result["weighted-layer-wise"]["layer_weights"]["mean"]
        result["weighted_peak_layer"] = int(np.argmax(weights))
    return result


def peak_layer(curves: dict[str, list[float]]) -> int:
    """The best layer by the first metric's curve; ties are broken by the next metrics, in order."""
    names = list(curves)
    return max(range(len(curves[names[0]])), key=lambda layer: [curves[m][layer] for m in names])
