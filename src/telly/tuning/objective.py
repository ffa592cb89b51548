"""One trial: fine-tune the sampled variant and return its validation score (and cost).

The trainer is injected (``train_fn``, by default ``telly.finetuning.train.train_variant``)
and called as ``train_fn(params, task, variant, on_epoch=, output_dir=,
results_path=)``; it returns a result with ``epochs`` (one record per epoch holding
``valid_score``) and ``cost`` (``time_to_convergence``, ``trainable_params``). After
every epoch ``on_epoch`` reports the validation score to Optuna, which may prune the
trial there (single objective only: Optuna cannot prune multi-objective studies).

Each trial is a nested MLflow run under the study's run, holding the sampled
settings, the validation curve, the objective values and the trial's state. A
trial that runs out of memory or reaches a non-finite score fails on its own and
the study goes on; an interrupted trial is queued again and resumes from its last
saved epoch. A team service that stops answering (:class:`telly.errors.ServiceUnavailable`)
or a trial that another worker took over stops the worker (:class:`~telly.tuning.study.WorkerStop`):
the trial's folder stays for the retry.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from telly.config import Params
from telly.errors import ServiceUnavailable, TellyError
from telly.tuning.space import Choice, SearchSpace
from telly.tuning.study import WorkerStop, origin, queue_again, taken_over

log = logging.getLogger(__name__)

TrainFn = Callable[..., Any]


class NonFiniteScore(TellyError):
    """A trial whose validation score (or loss) is NaN or infinite: it failed."""


def trial_failures() -> tuple[type[BaseException], ...]:
    """What fails one trial but not the study: out of memory, a diverged score."""
    import torch

    return (torch.OutOfMemoryError, NonFiniteScore, FloatingPointError)


def trial_params(params: Params, task: str, choice: Choice, work_dir: Path) -> Params:
    """``params`` with the trial's learning rate, epochs, batch size and data sizes, and its own checkpoint folder."""
    tune, finetune = params.tune, params.finetune
    task_cfg = getattr(finetune.tasks, task)
    sizes = {
        "batch_size": choice.batch_size,
        "test_size": tune.test_size,
        "learning_rate": choice.lr,
        "epochs": choice.epochs,
    }
    if tune.train_size:
        sizes["train_size"] = tune.train_size
    if tune.valid_size:
        sizes["valid_size"] = tune.valid_size
    tasks = finetune.tasks.model_copy(update={task: task_cfg.model_copy(update=sizes)})
    peft = finetune.peft.model_copy(update={"learning_rate_scale": 1.0})  # the searched lr is the method's own
    # Each trial saves its state apart, so parallel trials of one variant never share a folder.
    finetune = finetune.model_copy(update={"tasks": tasks, "checkpoint_dir": work_dir / "state", "peft": peft})
    return params.model_copy(update={"finetune": finetune})


def objective_values(result: Any, objectives: tuple[str, ...]) -> list[float]:
    """valid_score = the best epoch's score (the checkpoint a run keeps); costs from ``result.cost``."""
    values = []
    for name in objectives:
        if name == "valid_score":
            value = max(float(r["valid_score"]) for r in result.epochs)
        else:
            value = float(result.cost[name])
        if not math.isfinite(value):
            raise NonFiniteScore(f"{name} = {value}")
        values.append(value)
    return values


class Objective:
    def __init__(self, params: Params, task: str, space: SearchSpace, train_fn: TrainFn, study_name: str) -> None:
        self.params, self.task, self.space, self.train_fn, self.study_name = params, task, space, train_fn, study_name

    def work_dir(self, trial: optuna.Trial) -> Path:
        """A resumed trial reuses the folder of the trial it resumes."""
        return Path(self.params.tune.work_dir) / self.study_name / f"trial-{origin(trial)}"

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        from telly.tracking import resume_tags, start_run

        choice = self.space.suggest(trial)
        work = self.work_dir(trial)
        curve: list[tuple[int, float]] = []
        report = not self.space.multi_objective
        repeat = "repeat" in trial.user_attrs  # a repeat of the default setting measures the spread: never pruned

        def on_epoch(epoch: int, record: dict[str, Any]) -> None:
            score = float(record["valid_score"])
            curve.append((epoch, score))
            loss = float(record.get("train_loss", 0.0))
            if not (math.isfinite(score) and math.isfinite(loss)):
                raise NonFiniteScore(f"epoch {epoch}: valid score {score}, train loss {loss}")
            if report:
                try:
                    trial.report(score, epoch)
                except optuna.exceptions.UpdateFinishedTrialError:
                    raise WorkerStop(taken_over(trial.number)) from None
                if not repeat and trial.should_prune():
                    raise optuna.TrialPruned(f"at epoch {epoch} (valid score {score:.4f})")

        tags = {
            "optuna.study": self.study_name,
            "optuna.trial": str(trial.number),
            "telly.task": self.task,
            "telly.variant": choice.variant,
            # a retry marks KILLED the MLflow run a dead worker left RUNNING for the same trial folder
            **resume_tags(str(work.resolve()), resumed=origin(trial) != trial.number),
        }
        logged = {
            "k": choice.k,
            "variant": choice.variant,
            "method": choice.method,
            "lr": choice.lr,
            "epochs": choice.epochs,
            "batch_size": choice.batch_size,
        }
        error: BaseException | None = None
        state = "COMPLETE"
        try:
            with start_run(
                self.params,
                "tune",
                f"{self.study_name}/trial-{trial.number}",
                nested=True,
                tags=tags,
                log_params=logged,
            ) as run:
                import mlflow

                trial.set_user_attr("mlflow_run_id", run.info.run_id)
                try:
                    result = self.train_fn(
                        trial_params(self.params, self.task, choice, work),
                        self.task,
                        choice.variant,
                        on_epoch=on_epoch,
                        output_dir=work / "model",
                        results_path=work / "result.json",
                        seed=trial.user_attrs.get("seed"),  # set on the repeats of the default setting
                    )
                    values = objective_values(result, self.space.objectives)
                except optuna.TrialPruned as err:
                    state, error = "PRUNED", err
                except trial_failures() as err:
                    state, error = "FAIL", err
                except KeyboardInterrupt:
                    queue_again(trial.study, trial)
                    mlflow.set_tag("optuna.state", "INTERRUPTED")
                    raise  # the work folder stays: the queued copy resumes from it
                except ServiceUnavailable as err:
                    raise WorkerStop(err) from None  # left RUNNING: retried from its folder once its heartbeat is stale
                if trial.storage.get_trial(trial._trial_id).state != optuna.trial.TrialState.RUNNING:
                    raise WorkerStop(taken_over(trial.number))  # failed meanwhile by another worker, which retries it
                for epoch, score in curve:
                    if math.isfinite(score):
                        mlflow.log_metric("valid_score", score, step=epoch)
                if state == "COMPLETE":
                    mlflow.log_metrics(dict(zip(self.space.objectives, values)))
                    trial.set_user_attr("epochs_to_convergence", result.convergence_epoch)
                    for key in ("time_to_convergence", "trainable_params", "epoch_seconds"):
                        if key in result.cost:
                            trial.set_user_attr(key, result.cost[key])
                mlflow.set_tag("optuna.state", state)
                if error is not None:
                    mlflow.set_tag("optuna.reason", f"{type(error).__name__}: {error}"[:500])
        except ServiceUnavailable as err:  # the tracking server: the trial stays RUNNING, retried from its folder
            raise WorkerStop(err) from None
        shutil.rmtree(work, ignore_errors=True)
        if error is not None:
            log.warning("trial %d (%s, lr %.2e): %s %s", trial.number, choice.variant, choice.lr, state.lower(), error)
            raise error
        return values[0] if len(values) == 1 else values
