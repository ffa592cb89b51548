"""What a study found: best settings, Pareto front, parameter importances, plots.

``results/tune/<task>.json`` holds the best settings (DVC metrics); with two
objectives the best is the Pareto-front trial with the highest validation score,
and the whole front is listed. Importances (fANOVA, seeded) say how much of the
score's variation K and the learning rate explain. Plots are PNGs drawn by
``optuna.visualization.matplotlib``; ``<task>.csv`` lists every trial.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from telly.files import atomic_path
from telly.jsonl import write_json
from telly.tuning.space import BASE, NO_METHOD, SearchSpace, variant_name
from telly.tuning.study import counts

log = logging.getLogger(__name__)


def _trial_row(trial: optuna.trial.FrozenTrial, space: SearchSpace) -> dict[str, Any]:
    p = trial.params
    return {
        "trial": trial.number,
        "variant": variant_name(p.get("k", BASE), p.get("method", NO_METHOD)),
        "k": p.get("k", BASE),
        **({"method": p.get("method", NO_METHOD)} if space.methods else {}),
        "lr": p["lr"],
        "epochs": p.get("epochs", space.epochs[0]),
        "batch_size": p.get("batch_size", space.batch_sizes[0]),
        **dict(zip(space.objectives, trial.values)),
        **{
            k: trial.user_attrs[k]
            for k in ("epochs_to_convergence", "time_to_convergence", "trainable_params", "epoch_seconds")
            if k in trial.user_attrs
        },
    }


def importances(study: optuna.Study, space: SearchSpace, seed: int) -> dict[str, float]:
    """fANOVA importance of each searched parameter for the validation score; {} if too few trials."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    try:
        found = optuna.importance.get_param_importances(
            study, evaluator=evaluator, target=lambda t: t.values[0], normalize=True
        )
    except (ValueError, RuntimeError) as err:  # e.g. every trial sampled the same value
        log.info("%s: no parameter importances (%s)", study.study_name, err)
        return {}
    return {k: float(v) for k, v in found.items()}


REPEAT_ATTR = "repeat"  # trial user attr: the i-th repeat of finetune's default setting (another training seed)


def repeats(study: optuna.Study) -> dict[str, Any] | None:
    """The spread of the objective over the repeats of the default setting (trials tagged ``repeat``): how far
    apart two trials of the *same* setting land, the yardstick for the differences between settings."""
    import numpy as np

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if REPEAT_ATTR in t.user_attrs]
    if not done:
        return None
    scores = [float(t.values[0]) for t in done]
    first = done[0].params
    return {
        "variant": variant_name(first["k"]),
        "lr": first["lr"],
        "seeds": [t.user_attrs.get("seed") for t in done],
        "valid_scores": scores,
        "n": len(scores),
        "mean": float(np.mean(scores)),
        "std": float(np.std(scores, ddof=1)) if len(scores) > 1 else None,
        "range": float(max(scores) - min(scores)),
    }


def summarize(study: optuna.Study, space: SearchSpace, task: str, storage: str, seed: int) -> dict[str, Any]:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    front = [_trial_row(t, space) for t in study.best_trials] if complete else []
    if space.multi_objective:
        # best = highest score on the front; ties go to the cheaper trial
        best = max(front, key=lambda r: (r["valid_score"], -r[space.objectives[1]]), default=None)
    else:
        best = front[0] if front else None
    spread = repeats(study)
    if best is not None and spread is not None and spread["std"]:
        # how many repeat standard deviations the best trial sits above the default setting's mean
        spread["best_above_mean_in_std"] = (best["valid_score"] - spread["mean"]) / spread["std"]
    return {
        "task": task,
        "study_name": study.study_name,
        "storage": storage,
        "objectives": dict(zip(space.objectives, space.directions)),
        "trials": counts(study),
        "best": best,
        "pareto_front": sorted(front, key=lambda r: -r["valid_score"]) if space.multi_objective else None,
        "importances": importances(study, space, seed),
        "repeats": spread,
        "search_space": space.describe(),
    }


def write_trials_csv(study: optuna.Study, path: Path) -> None:
    frame = study.trials_dataframe(attrs=("number", "state", "values", "params", "user_attrs", "duration"))
    with atomic_path(path) as tmp:  # workers may write at once: each its own temporary file
        frame.to_csv(tmp, index=False)


def plot(study: optuna.Study, space: SearchSpace, folder: Path, seed: int) -> list[Path]:
    """History, learning curves, parallel coordinates, importances and (two objectives) the Pareto front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    score = {"target": lambda t: t.values[0], "target_name": "valid_score"}
    charts = {
        "history": lambda: vis.plot_optimization_history(study, **score),
        "parallel_coordinates": lambda: vis.plot_parallel_coordinate(study, **score),
        "importances": lambda: vis.plot_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed), **score
        ),
    }
    if space.multi_objective:
        charts["pareto_front"] = lambda: vis.plot_pareto_front(study, target_names=list(space.objectives))
    else:
        charts["learning_curves"] = lambda: vis.plot_intermediate_values(study)

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in charts.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna's ExperimentalWarning on every plot
                axes = draw()
        except (ValueError, RuntimeError, KeyError, IndexError) as err:  # too few trials for this chart
            log.info("%s: no %s plot (%s)", study.study_name, name, err)
            continue
        figure = getattr(axes, "figure", None) or axes.flat[0].figure
        figure.set_size_inches(9, 5.5)
        figure.tight_layout()
        path = folder / f"{name}.png"
        with atomic_path(path) as tmp:  # workers may plot at once
            figure.savefig(tmp, dpi=110)
        plt.close(figure)
        written.append(path)
    return written


def write_outputs(
    study: optuna.Study, space: SearchSpace, task: str, storage: str, results_dir: Path, seed: int
) -> dict[str, Any]:
    """``<task>.json``, ``<task>.csv`` and ``<task>/*.png`` under ``results_dir``; returns the summary."""
    summary = summarize(study, space, task, storage, seed)
    write_json(results_dir / f"{task}.json", summary)
    write_trials_csv(study, results_dir / f"{task}.csv")
    written = plot(study, space, results_dir / task, seed)
    # another worker's half-written ".<name>.*.png" is not stale: leave hidden files alone
    for stale in {p for p in (results_dir / task).glob("*.png") if not p.name.startswith(".")} - set(written):
        stale.unlink(missing_ok=True)  # e.g. a Pareto front from an earlier multi-objective study
    return summary
