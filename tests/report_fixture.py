"""Small synthetic results of every stage, in the stages' own file formats, for the report tests.

``holding=True`` makes results where every paper claim holds; ``holding=False`` breaks each one.
"""

from __future__ import annotations

from pathlib import Path

from telly.finetuning.examples import write_examples
from telly.jsonl import write_json
from telly.tasks import TASK_NAMES, TASKS

L = 4  # layers of the synthetic model: hidden states 0..4
PROPS = ("lexical", "syntactic", "structural", "semantic")
METRICS = {name: task.metrics for name, task in TASKS.items()}
TASKS = TASK_NAMES


def _bump(peak: int, height: float = 0.3) -> list[float]:
    """A curve over hidden states with its maximum at ``peak``."""
    return [round(0.6 + height - 0.1 * abs(h - peak), 4) for h in range(L + 1)]


def _weights(peak: int | None) -> list[float]:
    """Layer weights summing to 1: concentrated on ``peak``, or even when ``peak`` is None."""
    if peak is None:
        return [round(1 / (L + 1), 4)] * (L + 1)
    raw = [4.0 if h == peak else 0.5 for h in range(L + 1)]
    return [round(v / sum(raw), 4) for v in raw]


def probe_details(prop: str, state: str, peak: int, weight_peak: int | None) -> dict:
    metric = {"semantic": "map"}.get(prop, "acc")
    curve = _bump(peak)
    control = [0.5] * (L + 1)

    def ms(values):
        return {"mean": values, "std": [0.01] * len(values)}

    weights = _weights(weight_peak)
    return {
        "property": prop,
        "state": state,
        "metric": metric,
        "n_hidden_states": L + 1,
        "hidden_size": 8,
        "sizes": {"train": 10, "valid": 4, "test": 4},
        "seeds": [1, 2],
        "head": "linear",
        "baseline": {metric: 0.4},
        "layer-wise": {
            metric: ms(curve),
            f"control_{metric}": ms(control),
            f"selectivity_{metric}": ms([round(a - b, 4) for a, b in zip(curve, control)]),
        },
        "weighted-layer-wise": {
            metric: ms([0.85]),
            f"control_{metric}": ms([0.5]),
            f"selectivity_{metric}": ms([0.35]),
            "layer_weights": ms(weights),
        },
        "peak": {"layer": peak, metric: max(curve), "std": 0.01, "selectivity": round(max(curve) - 0.5, 4)},
        "weighted_peak_layer": max(range(L + 1), key=weights.__getitem__),
    }


def write_probing(root: Path, holding: bool) -> None:
    # holding: lexical h1 < syntactic h2 < structural h4, semantic even weights
    peaks = (
        {"lexical": 1, "syntactic": 2, "structural": 4, "semantic": 2}
        if holding
        else {"lexical": 3, "syntactic": 2, "structural": 1, "semantic": 2}
    )
    weight_peaks = (
        {"lexical": 1, "syntactic": 2, "structural": 4, "semantic": None}
        if holding
        else {"lexical": None, "syntactic": 2, "structural": 1, "semantic": 0}
    )
    for state in ("random", "pretrained", "finetuned"):
        for prop in PROPS:
            details = probe_details(prop, state, peaks[prop], weight_peaks[prop])
            write_json(root / "results/probe" / state / prop / "details.json", details)


def similarity_curve(task: str, holding: bool) -> list[float]:
    if holding:  # only the top two change
        return [1.0, 0.99, 0.97, 0.7, 0.4]
    return [1.0, 0.6, 0.9, 0.95, 0.8]  # h1 changes most, lower layers not preserved


def write_similarity(root: Path, holding: bool) -> None:
    rows = []
    for task in TASKS:
        for h, v in enumerate(similarity_curve(task, holding)):
            rows.append(
                {
                    "kind": "finetuned",
                    "task": task,
                    "model_a": "pretrained",
                    "model_b": f"ft-{task}",
                    "hidden_state": h,
                    "n_samples": 24,
                    "rsa_spearman": v,
                    "rsa_spearman_ci_low": v - 0.01,
                    "rsa_spearman_ci_high": min(v + 0.01, 1.0),
                    "cka": v,
                    "cka_ci_low": None,
                    "cka_ci_high": None,
                }
            )
    for h in range(L + 1):
        rows.append(
            {
                "kind": "random",
                "task": "all",
                "model_a": "pretrained",
                "model_b": "random",
                "hidden_state": h,
                "n_samples": 24,
                "rsa_spearman": 0.3,
                "rsa_spearman_ci_low": None,
                "rsa_spearman_ci_high": None,
                "cka": 0.1,
                "cka_ci_low": None,
                "cka_ci_high": None,
            }
        )
    write_json(root / "results/similarity/table.json", rows)
    write_json(
        root / "results/similarity/suggested_k.json",
        {
            t: {
                "suggested_k": 2 if holding else None,
                "rule": "r",
                "metric": "rsa_spearman",
                "threshold": 0.9,
                "curve": similarity_curve(t, holding),
                "top_two_layers_claim": "holds (only h3, h4 below 0.8)"
                if holding or t != "code_search"
                else "vacuous (no hidden state below 0.8: nothing changes much)",
            }
            for t in TASKS
        },
    )


def run_json(task: str, variant: str, *, quality: float, epoch_s: float, cached: bool, params: int) -> dict:
    k = None if variant == "base" else int(variant.split("-")[1])
    return {
        "task": task,
        "variant": variant,
        "k": k,
        "test": {m: quality * (1 + 0.1 * i) for i, m in enumerate(METRICS[task])},
        "best_epoch": 2,
        "convergence_epoch": 2,
        "epochs": [],
        "cost": {
            "trainable_params": params + 100,
            "paper_params": params,
            "total_params": 1000,
            "epoch_seconds": epoch_s,
            "eval_seconds": 1.0,
            "cache_seconds": 2.0 if cached and k is not None else 0.0,
            "cache_bytes": 0,
            "epochs_run": 3,
            "epochs_to_convergence": 2,
            "time_to_convergence": 2 * epoch_s + (2.0 if cached and k is not None else 0.0),
            "peak_memory_mb": 100.0,
        },
        "settings": {
            "cache_frozen": bool(cached and k is not None),
            "architecture": f"RobertaModel-L{L}-H8-V100",
            "seed": SEED,
        },
    }


SEED = 123456
ROWS = 1000  # test rows of the synthetic per-example results


def example_rows(task: str, quality: float) -> list[dict]:
    """Per-example rows whose main metric follows ``quality`` (0.5 = Base): continuous scores scale with it
    on every row (so a ratio of qualities is the ratio of metrics on every resample); 0/1 outcomes are right on
    the first ``round(quality, 2) x ROWS`` rows (or clone pairs: the first ``2 x round(quality, 2)`` share)."""
    weight = [0.5 + (i % 10) / 10 for i in range(ROWS)]
    share = round(quality, 2)
    if task == "code_search":
        return [{"rr": quality * w} for w in weight]
    if task == "code_summarization":
        return [{"hyp": "x", "bleu": 100 * quality * w} for w in weight]
    if task == "code_generation":
        possible = [8, 7, 6, 5]
        return [
            {"hyp": "x", "bleu": 1.0, "em": 0.0, "bleu_counts": [quality * w * p for p in possible] + possible + [8, 8]}
            for w in weight
        ]
    if task == "clone_detection":
        right = round(2 * share * ROWS)
        return [{"pred": (i % 2) if i < right else 1 - i % 2, "gold": i % 2} for i in range(ROWS)]
    return [
        {"hyp": "x", "em": 100.0 if i < share * ROWS else 0.0, "edit_sim": 100 * quality * w}
        for i, w in enumerate(weight)
    ]


def write_run(folder: Path, run: dict, quality: float) -> None:
    path = folder / run["variant"] / f"seed{run['settings']['seed']}.json"
    write_json(path, run)
    write_examples(path, [f"row{i}" for i in range(ROWS)], example_rows(run["task"], quality))


def write_baselines(root: Path, quality: float = 0.3) -> None:
    """The equal-input baselines (with their whole-input figure) and the pre-trained model's (encoder or decoder mode)."""
    for task in TASKS:
        path = root / "results/baselines" / f"{task}.json"
        full = {"method": "on the whole inputs", "test": {m: quality + 0.05 for m in METRICS[task]}}
        test = {m: quality for m in METRICS[task]}
        cut = {"test": {"source": 0.25, "target": 0.5}}
        settings = {"max_source_length": 64, "max_target_length": 24}
        write_json(
            path,
            {
                "task": task,
                "variant": "baseline",
                "test": test,
                "full_input": full,
                "truncated": cut,
                "settings": settings,
            },
        )
        write_examples(path, [f"row{i}" for i in range(ROWS)], example_rows(task, quality))
    for task in TASKS:
        path = root / "results/baselines" / f"{task}.pretrained.json"
        test = {m: 0.4 for m in METRICS[task]}
        write_json(
            path, {"task": task, "variant": "pretrained", "applies": True, "method": "pre-trained", "test": test}
        )
        write_examples(path, [f"row{i}" for i in range(ROWS)], example_rows(task, 0.4))


def write_finetune(root: Path, holding: bool, *, paper_regime: bool = True) -> None:
    # holding: Telly-0 and Telly-1 keep >= 99% of Base (L = 4 needs K = 0..1); not holding: Telly-0 drops 5%
    quality = {"base": 0.50, "telly-0": 0.50 if holding else 0.475, "telly-1": 0.498, "telly-3": 0.40}
    for task in TASKS:
        for i, (variant, q) in enumerate(quality.items()):
            params = 1000 if variant == "base" else 800 - 200 * int(variant.split("-")[1])
            write_run(
                root / "results/finetune" / task,
                run_json(task, variant, quality=q, epoch_s=10.0 - 2 * i, cached=True, params=params),
                q,
            )
            if variant in ("base", "telly-0"):  # a second seed (same scores): tables show mean ± std over seeds
                second = run_json(task, variant, quality=q, epoch_s=10.0 - 2 * i, cached=True, params=params)
                second["settings"]["seed"] = 1
                write_run(root / "results/finetune" / task, second, q)
            if paper_regime and variant != "base":
                write_run(
                    root / "results/finetune-paper-regime" / task,
                    run_json(task, variant, quality=q, epoch_s=10.0 - i, cached=False, params=params),
                    q,
                )
    write_baselines(root)


def write_tuning(root: Path) -> None:
    for task in TASKS:
        write_json(
            root / "results/tune" / f"{task}.json",
            {
                "task": task,
                "study_name": task,
                "trials": {"complete": 3, "pruned": 1, "fail": 0},
                "best": {
                    "trial": 2,
                    "variant": "telly-1",
                    "k": 1,
                    "lr": 3e-4,
                    "epochs": 3,
                    "batch_size": 4,
                    "valid_score": 0.61,
                },
                "repeats": {
                    "variant": "base",
                    "lr": 3e-4,
                    "seeds": [123456, 1, 2],
                    "valid_scores": [0.5, 0.52, 0.54],
                    "n": 3,
                    "mean": 0.52,
                    "std": 0.02,
                    "range": 0.04,
                    "best_above_mean_in_std": 4.5,
                },
            },
        )


def write_all(root: Path, holding: bool) -> None:
    write_probing(root, holding)
    write_similarity(root, holding)
    write_finetune(root, holding)
    write_tuning(root)
