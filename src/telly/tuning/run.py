"""The ``tune`` stage: one Optuna study per task over freeze depth K and learning rate.

A session opens the task's study (creating it the first time), runs trials until
the study has ``n_trials`` finished ones, too many have failed, or the session's
``timeout_minutes`` is spent, then writes what the study knows so far. Any number
of sessions may run at once on one study (``--storage`` a shared database): each
is a worker. All sessions log under one MLflow run per study, each trial a nested
run.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from telly.config import Params
from telly.errors import TellyError
from telly.tuning.objective import Objective, TrainFn, trial_failures
from telly.tuning.report import write_outputs
from telly.tuning.space import SearchSpace
from telly.tuning.study import (
    Budget,
    WorkerStop,
    fail_stale,
    open_storage,
    open_study,
    printable,
    settle,
    storage_url,
    study_name,
)

log = logging.getLogger(__name__)

PARENT_RUN_ATTR = "telly.mlflow_run_id"


def num_layers(params: Params) -> int:
    """L of the model every trial starts from."""
    from telly.models.loading import load_encoder

    return load_encoder(params.finetune_model, device="cpu", seed=params.finetune.first_seed).num_layers


def _on_gpu() -> bool:
    """Collect garbage after each trial on a GPU, where a leaked model holds memory the next trial needs."""
    import torch

    return torch.cuda.is_available()


def _settings(params: Params, task: str) -> None:
    if params.tune is None:
        raise TellyError("params: the tune section is missing (see params.yaml and docs/tuning.md)")
    if params.finetune is None:
        raise TellyError("params: tune needs the finetune section (model, tasks) -- see docs/finetuning.md")
    if not hasattr(params.finetune.tasks, task):
        raise TellyError(
            f"unknown task {task!r}; finetune.tasks has {', '.join(type(params.finetune.tasks).model_fields)}"
        )


def _parent_run_id(params: Params, study: Any) -> str | None:
    """The study's MLflow run, if it exists in the current tracking store."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from telly.tracking import tracking_uri

    run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if run_id is None:
        return None
    try:
        run = MlflowClient(tracking_uri(params)).get_run(run_id)
    except MlflowException:
        return None
    return run_id if run.info.lifecycle_stage == "active" else None


def finished_plots(folder: Path) -> list[Path]:
    """The plots in ``folder``, without the hidden temporary files that another worker of the same
    study may be writing there at this moment (they vanish when it renames them into place)."""
    return sorted(p for p in folder.glob("*.png") if not p.name.startswith(".")) if folder.is_dir() else []


def tune(
    params: Params,
    task: str,
    *,
    train_fn: TrainFn | None = None,
    layers: int | None = None,
    storage: str | None = None,
    n_trials: int | None = None,
    timeout_minutes: float | None = None,
) -> dict[str, Any]:
    """Run one session of ``task``'s study and write ``results/tune/<task>.{json,csv}`` and plots."""
    import mlflow

    from telly.tracking import start_run

    _settings(params, task)
    cfg = params.tune
    if train_fn is None:
        from telly.finetuning.train import train_variant as train_fn
    space = SearchSpace.of(params, task, layers if layers is not None else num_layers(params))
    url = storage_url(params, task, storage)
    name = study_name(params, task)
    storage = open_storage(url, params)
    study = open_study(params, task, space, storage, name)
    budget = Budget(n_trials or cfg.n_trials, cfg.max_failed_trials)
    timeout = timeout_minutes or cfg.timeout_minutes

    parent_id = _parent_run_id(params, study)
    tags = {"optuna.study": name, "optuna.storage": printable(url), "telly.task": task}
    first = {"tune": cfg.model_dump(mode="json"), "search_space": space.describe()} if parent_id is None else None
    with start_run(params, "tune", name, run_id=parent_id, tags=tags, log_params=first) as run:
        if parent_id is None:
            study.set_user_attr(PARENT_RUN_ATTR, run.info.run_id)
        fail_stale(study)  # trials of workers that died since the last session: failed and queued again
        objective = Objective(params, task, space, train_fn, name)
        started = time.monotonic()

        def run_trials() -> bool:
            left = None if timeout is None else timeout * 60 - (time.monotonic() - started)
            if left is not None and left <= 0:
                return False
            reason = budget.exhausted(study)
            if reason:
                log.info("%s: nothing to run, %s", name, reason)
                return False
            with tqdm(total=budget.n_trials, initial=budget.finished(study), desc=f"tune {task}", unit="trial") as bar:
                budget.progress = bar
                study.optimize(
                    objective, timeout=left, catch=trial_failures(), callbacks=[budget], gc_after_trial=_on_gpu()
                )
            return True

        try:
            with storage.interrupts():  # the heartbeat stops this worker when the database is gone too long
                run_trials()
                settle(study, params, run_trials)  # a dead worker's trial is retried here, none left RUNNING
        except WorkerStop as stop:
            raise stop.error from None
        summary = write_outputs(study, space, task, printable(url), cfg.results_dir, cfg.seed)
        mlflow.log_metrics({f"trials_{state}": n for state, n in summary["trials"].items()})
        if summary["best"] is not None:
            mlflow.log_metrics({f"best_{k}": v for k, v in summary["best"].items() if k not in ("variant", "method")})
            mlflow.set_tag("best_variant", summary["best"]["variant"])
        mlflow.log_artifact(str(cfg.results_dir / f"{task}.json"))
        for plot in finished_plots(cfg.results_dir / task):
            mlflow.log_artifact(str(plot), artifact_path="plots")
    if summary["best"] is None:
        raise TellyError(
            f"{name}: no trial completed ({summary['trials']}); see the failed trials in {cfg.results_dir / task}.csv"
        )
    best = summary["best"]
    log.info(
        "%s: best %s, lr %.2e, valid score %.4f (trial %d)",
        name,
        best["variant"],
        best["lr"],
        best["valid_score"],
        best["trial"],
    )
    return summary
