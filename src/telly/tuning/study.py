"""Open (or create) one task's Optuna study in a database, so sessions and workers share it.

The default storage is an embedded SQLite file, ``<results_dir>/<task>.db``: a
rerun loads the same study (``load_if_exists``) and tops it up. Any SQLAlchemy URL
(PostgreSQL, MySQL) lets several workers on several machines fill one study --
Optuna's own distributed mode: each worker asks the database for its next trial.

Trials send a heartbeat (``tune.heartbeat_seconds``); a trial whose worker died without
a word (SIGKILL, machine lost) is marked failed once its heartbeat is older than
``tune.grace_seconds`` and queued again with the same settings by Optuna's
``RetryHeartbeatStaleTrialCallback`` (at most ``tune.max_retries`` times). Any worker
that asks for a trial, or starts or ends a session, fails stale trials first; the copy
resumes from the dead trial's saved state in ``tune.work_dir`` (a folder all workers
share).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from telly.config import Params
from telly.tuning.space import NO_METHOD, SearchSpace

log = logging.getLogger(__name__)

SPACE_ATTR = "telly.search_space"
SQLITE_LOCK_SECONDS = 60  # several processes on one SQLite file wait this long for its lock


def study_name(params: Params, task: str) -> str:
    """``tune.study_name`` with ``{task}`` and ``{inputs}`` (:func:`inputs_fingerprint`) filled in."""
    template = params.tune.study_name
    inputs = inputs_fingerprint(params, task) if "{inputs}" in template else ""
    return template.format(task=task, inputs=inputs)


def inputs_fingerprint(params: Params, task: str) -> str:
    """Eight hex digits of what every trial's score depends on besides the search space: the encoder
    (a local folder's files, else its hub id), the task's data files and ``finetune.tasks.<task>``.

    In the study name, a new model or new data starts a new study instead of topping up one whose
    trials scored another model; workers with the same inputs compute the same name and share it."""
    import hashlib
    import json

    from telly.fingerprint import model_fingerprint, update_with_tree

    digest = hashlib.sha256(model_fingerprint(params.finetune_model).encode())
    data = Path(params.finetune.tasks_dir) / task
    if data.is_dir():
        update_with_tree(digest, data)
    settings = getattr(params.finetune.tasks, task, None)
    digest.update(json.dumps(settings.model_dump(mode="json") if settings else None, sort_keys=True).encode())
    return digest.hexdigest()[:8]


def storage_url(params: Params, task: str, override: str | None = None) -> str:
    """``override``, else ``tune.storage``, else ``sqlite:///<abs results_dir>/<task>.db``."""
    url = override or params.tune.storage
    if url is None:
        db = (Path(params.tune.results_dir) / f"{task}.db").resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{db}"
    return url


def printable(url: str) -> str:
    """The URL with any password hidden and a SQLite file inside the repo relative (it goes into JSON and MLflow)."""
    from sqlalchemy.engine import make_url

    from telly.runtime import repo_root

    parsed = make_url(url)
    if parsed.drivername.startswith("sqlite") and parsed.database:
        db = Path(parsed.database)
        if db.is_absolute() and db.is_relative_to(repo_root()):
            return f"sqlite:///{db.relative_to(repo_root())}"
    return parsed.render_as_string(hide_password=True)


def _system_attrs(trial: optuna.trial.BaseTrial) -> dict[str, Any]:
    if isinstance(trial, optuna.trial.FrozenTrial):
        return trial.system_attrs
    return trial.storage.get_trial_system_attrs(trial._trial_id)  # a live Trial does not expose them


def origin(trial: optuna.trial.BaseTrial) -> int:
    """The trial whose saved state this one resumes: itself, or the first of its line of retries."""
    if "resumes" in trial.user_attrs:  # queued again after an interrupt (kept by heartbeat retries too)
        return trial.user_attrs["resumes"]
    retried = _system_attrs(trial).get("failed_trial")  # RetryHeartbeatStaleTrialCallback's mark
    return trial.number if retried is None else retried


def predecessor(trial: optuna.trial.BaseTrial) -> int | None:
    """The failed trial this one retries, if any."""
    history = _system_attrs(trial).get("retry_history")
    return history[-1] if history else trial.user_attrs.get("follows")


def queue_again(study: optuna.Study, trial: optuna.trial.BaseTrial) -> None:
    """Queue a trial's settings again: the copy ``follows`` it and ``resumes`` the first one's saved state."""
    study.enqueue_trial(
        trial.params, user_attrs={"resumes": origin(trial), "follows": trial.number}, skip_if_exists=False
    )
    log.info("trial %d of %s is queued again and will resume from its saved state", trial.number, study.study_name)


def open_storage(url: str, params: Params) -> optuna.storages.RDBStorage:
    """The study database, with heartbeats: a dead worker's trial is failed and retried (up to ``max_retries``)."""
    engine_kwargs = {"connect_args": {"timeout": SQLITE_LOCK_SECONDS}} if url.startswith("sqlite") else {}
    tune = params.tune
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental"
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=tune.heartbeat_seconds,
            grace_period=tune.grace_seconds,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=tune.max_retries, inherit_intermediate_values=True
            ),
        )


def fail_stale(study: optuna.Study) -> None:
    """Fail the trials of dead workers now (Optuna does it only before it starts a trial); they are retried."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def settle(study: optuna.Study, params: Params, run_more: Callable[[], bool]) -> None:
    """At the end of a session: wait (at most a grace period) for other workers' running trials to end or go stale.

    A trial left RUNNING by a dead worker is failed once its heartbeat is stale and retried here
    (``run_more``, which says whether it could run trials), so a study ends with no trial RUNNING
    even when the last worker standing would otherwise stop first. A live worker's trial keeps its
    heartbeat fresh: it is not waited for longer than the grace period.
    """
    tune = params.tune
    deadline = time.monotonic() + tune.grace_seconds + tune.heartbeat_seconds
    while True:
        fail_stale(study)
        states = [t.state for t in study.get_trials(deepcopy=False)]
        if TrialState.WAITING in states:
            if not run_more():
                return  # the session may not run more (its timeout is spent): a later session will
            deadline = time.monotonic() + tune.grace_seconds + tune.heartbeat_seconds
            continue
        if TrialState.RUNNING not in states or time.monotonic() > deadline:
            return
        time.sleep(tune.heartbeat_seconds)


def make_sampler(params: Params, space: SearchSpace) -> optuna.samplers.BaseSampler:
    # TPE handles one or several objectives and starts well with few trials (NSGA-II wants ~50 a generation).
    return optuna.samplers.TPESampler(seed=params.tune.seed, n_startup_trials=params.tune.startup_trials)


def make_pruner(params: Params, space: SearchSpace) -> optuna.pruners.BasePruner:
    tune = params.tune
    if tune.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=tune.startup_trials, n_warmup_steps=tune.warmup_epochs)
    if tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(space.epochs), reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(params: Params, task: str, space: SearchSpace, url: str, name: str) -> optuna.Study:
    """Load the study ``name`` (:func:`study_name`, computed once by the caller: it hashes model and data)
    or create it; a stored search space that differs is an error."""
    study = optuna.create_study(
        storage=open_storage(url, params),
        study_name=name,
        directions=space.directions,
        load_if_exists=True,
        sampler=make_sampler(params, space),
        pruner=make_pruner(params, space),
    )
    stored = study.user_attrs.get(SPACE_ATTR)
    if stored is None and study.trials:
        stored = {"(created outside telly)": True}
    space.check(stored, name, printable(url))
    if stored is None:
        study.set_user_attr(SPACE_ATTR, space.describe())
        _enqueue_default(params, task, space, study)
    return study


def repeat_seeds(params: Params) -> list[int]:
    """Training seeds of the repeats of the default setting: finetune.seeds after the first, then first + i."""
    finetune, n = params.finetune, params.tune.repeats
    return [finetune.seeds[i] if i < len(finetune.seeds) else finetune.first_seed + i for i in range(1, n + 1)]


def _enqueue_default(params: Params, task: str, space: SearchSpace, study: optuna.Study) -> None:
    """Trial 0 of a new study: Base at finetune's settings, a reference the search must beat; then ``tune.repeats``
    trials of the same setting with other training seeds (never pruned): how far the objective moves when only the
    seed does, the yardstick for the differences between trials (``repeats`` in results/tune/<task>.json)."""
    cfg = getattr(params.finetune.tasks, task)
    if not params.tune.enqueue_default or study.trials or not space.lr_min <= cfg.learning_rate <= space.lr_max:
        return
    setting: dict[str, Any] = {"k": -1, "lr": cfg.learning_rate} | ({"method": NO_METHOD} if space.methods else {})
    if len(space.epochs) > 1 and cfg.epochs in space.epochs:
        setting["epochs"] = cfg.epochs
    if len(space.batch_sizes) > 1 and cfg.batch_size in space.batch_sizes:
        setting["batch_size"] = cfg.batch_size
    first = params.finetune.first_seed
    study.enqueue_trial(setting, user_attrs={"reference": "finetune default", "repeat": 0, "seed": first})
    for i, seed in enumerate(repeat_seeds(params), start=1):
        study.enqueue_trial(setting, user_attrs={"reference": "finetune default", "repeat": i, "seed": seed})


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state; ``interrupted`` trials (failed, then queued again to resume) are not failures."""
    trials = study.get_trials(deepcopy=False)
    followed = {predecessor(t) for t in trials} - {None}
    out = {s.name.lower(): 0 for s in TrialState}
    out["interrupted"] = 0
    for t in trials:
        if t.state == TrialState.FAIL and t.number in followed:
            out["interrupted"] += 1
        else:
            out[t.state.name.lower()] += 1
    return out


class Budget:
    """Stop a session when the study has ``n_trials`` finished trials or too many failures.

    Finished = complete or pruned, over all sessions and workers, so a rerun
    tops the study up rather than adding ``n_trials`` more.
    """

    def __init__(self, n_trials: int, max_failed: int, progress: Any = None) -> None:
        self.n_trials, self.max_failed, self.progress = n_trials, max_failed, progress

    def finished(self, study: optuna.Study) -> int:
        c = counts(study)
        return c["complete"] + c["pruned"]

    def exhausted(self, study: optuna.Study) -> str | None:
        c = counts(study)
        if c["waiting"]:
            return None  # queued trials (retries of interrupted or dead workers' trials) run even past n_trials
        if c["complete"] + c["pruned"] >= self.n_trials:
            return f"the study has {c['complete'] + c['pruned']} finished trials (n_trials = {self.n_trials})"
        if c["fail"] >= self.max_failed:
            return f"{c['fail']} trials failed (max_failed_trials = {self.max_failed})"
        return None

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.progress is not None:
            self.progress.n = min(self.finished(study), self.n_trials)
            self.progress.refresh()
        reason = self.exhausted(study)
        if reason:
            log.info("%s: stopping, %s", study.study_name, reason)
            study.stop()
