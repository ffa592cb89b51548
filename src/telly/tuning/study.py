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

A database server (PostgreSQL) that stops or restarts under a worker: every storage call and
heartbeat retries it for up to :func:`outage_seconds` (60 s, or ``tune.grace_seconds`` when
shorter), reconnecting, so a short restart costs nothing. Past that the worker stops with
:class:`telly.errors.ServiceUnavailable` (exit code 75), its running trial left RUNNING: once
the database is back, the trial's stale heartbeat has it failed and retried from its saved state.
A worker whose trial another worker failed meanwhile stops with :class:`TrialTakenOver`.

Each trial's sampler is seeded from ``tune.seed`` and the trial's number, which the database
hands out once: a worker alone draws the same sequence on every run, and workers that start
together draw different trials.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from telly.config import Params
from telly.errors import ServiceUnavailable, TellyError
from telly.tracking import schema_lock
from telly.tuning.space import NO_METHOD, SearchSpace

log = logging.getLogger(__name__)

SPACE_ATTR = "telly.search_space"
SQLITE_LOCK_SECONDS = 60  # several processes on one SQLite file wait this long for its lock
OUTAGE_SECONDS = 60  # a database that does not answer for this long stops the worker
CONNECT_SECONDS = 10  # a database host that does not answer a connection at all
STORAGE_ENV = "TELLY_TUNE_STORAGE"
INTERRUPT_SIGNAL = signal.SIGUSR1  # the heartbeat thread stops the main thread's trial with it


class TrialTakenOver(ServiceUnavailable):
    """This worker's trial was failed by another worker (its heartbeat had gone stale) and is retried there."""


class WorkerStop(BaseException):
    """Stops the worker, not only its trial: Optuna lets a BaseException through without telling the
    study (which would fail the trial, or fail itself on a database that is down)."""

    def __init__(self, error: TellyError) -> None:
        super().__init__(str(error))
        self.error = error


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
    """``override`` (``--storage``), else ``$TELLY_TUNE_STORAGE``, else ``tune.storage``, else
    ``sqlite:///<abs results_dir>/<task>.db``. A password belongs in the environment or a libpq
    password file (``PGPASSFILE``), never on the command line (:func:`check_not_secret`)."""
    url = override or os.environ.get(STORAGE_ENV) or params.tune.storage
    if url is None:
        db = (Path(params.tune.results_dir) / f"{task}.db").resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{db}"
    return url


def check_not_secret(url: str) -> None:
    """A URL given on the command line, which ``ps`` shows to every local user, must hold no password."""
    from sqlalchemy.engine import make_url

    if make_url(url).password:
        raise TellyError(
            f"telly tune --storage {printable(url)}: the URL holds a password, which the command line shows to "
            f"every local user (`ps`); give the URL in {STORAGE_ENV} or the password in a PGPASSFILE instead "
            "(`source .services/services.env` sets both)"
        )


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


def outage_seconds(params: Params) -> float:
    """How long a worker waits for its database: 60 s, or the grace period when shorter (past it, another
    worker may fail the trial for its stale heartbeat anyway)."""
    return min(OUTAGE_SECONDS, params.tune.grace_seconds)


def open_storage(url: str, params: Params) -> StudyStorage:
    """The study database, with heartbeats: a dead worker's trial is failed and retried (up to ``max_retries``)."""
    tune = params.tune
    if url.startswith("sqlite"):
        engine_kwargs: dict[str, Any] = {"connect_args": {"timeout": SQLITE_LOCK_SECONDS}}
    else:  # a server: check a pooled connection before use (a restart drops them all) and give up on a dead host
        engine_kwargs = {"pool_pre_ping": True}
        if url.startswith("postgresql"):
            engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_SECONDS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental"
        try:
            with schema_lock(url):  # workers that start together on a fresh SQLite file: one creates its schema
                return StudyStorage(
                    url,
                    outage=0.0 if url.startswith("sqlite") else outage_seconds(params),
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=tune.heartbeat_seconds,
                    grace_period=tune.grace_seconds,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                        max_retry=tune.max_retries, inherit_intermediate_values=True
                    ),
                )
        except Exception as err:
            if _connection_lost(err):
                raise ServiceUnavailable(_outage_message(printable(url), err)) from None
            raise


def _connection_lost(err: BaseException) -> bool:
    """``err`` (or what caused it) is a lost or refused database connection."""
    import sqlalchemy.exc

    while err is not None:
        if isinstance(err, sqlalchemy.exc.DBAPIError) and (
            err.connection_invalidated or isinstance(err, sqlalchemy.exc.OperationalError)
        ):
            return True
        err = err.__cause__
    return False


def _outage_message(where: str, err: BaseException, seconds: float | None = None) -> str:
    while err.__cause__ is not None:
        err = err.__cause__
    reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0][:300]
    waited = f" for {seconds:.0f} s" if seconds else ""
    return (
        f"the study database {where} has not answered{waited}: {reason}. Start it again (`telly services up` "
        "for the team's PostgreSQL) and rerun this worker: a trial it was running stays in the study and "
        "resumes from its saved state in tune.work_dir"
    )


class StudyStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage, riding out a database restart: a call that finds the connection lost is retried
    until the database answers again or ``outage`` seconds have passed since it stopped answering (then
    :class:`ServiceUnavailable`). The heartbeat never dies on a database error (Optuna's thread would end
    silently, and another worker would take the live trial over): it keeps trying, and past ``outage`` or
    once its trial was failed by another worker it stops the worker's main thread (see :meth:`interrupts`)."""

    def __init__(self, url: str, *, outage: float, **kwargs: Any) -> None:
        self.outage = outage
        self.down_since: float | None = None
        self.stop: TellyError | None = None  # why the heartbeat stopped the main thread
        self._main: int | None = None  # the thread :meth:`interrupts` signals, while it is set
        self._beat_lost = False
        super().__init__(url, **kwargs)

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state["_main"] = None
        return state

    def _retried(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        while True:
            try:
                result = method(self, *args, **kwargs)
            except Exception as err:
                if not self.outage or not _connection_lost(err):
                    raise
                now = time.monotonic()
                self.down_since = self.down_since or now
                if now - self.down_since >= self.outage:
                    raise ServiceUnavailable(_outage_message(printable(self.url), err, now - self.down_since)) from None
                time.sleep(min(1.0, self.outage))
                continue
            if self.down_since is not None:
                log.info("the study database answers again")
                self.down_since = None
            return result

    def record_heartbeat(self, trial_id: int) -> None:
        """One beat; on a lost connection it waits for the next beat instead of raising (which ends the thread)."""
        try:
            super().record_heartbeat(trial_id)
        except Exception as err:
            if not self.outage or not _connection_lost(err):
                log.warning("heartbeat of trial %d not recorded: %s", trial_id, err)
                return
            now = time.monotonic()
            self.down_since = self.down_since or now
            self._beat_lost = True
            if now - self.down_since >= self.outage:
                self._interrupt(ServiceUnavailable(_outage_message(printable(self.url), err, now - self.down_since)))
            return
        if self._beat_lost:  # back after an outage: was the trial taken over meanwhile?
            self._beat_lost = False
            with contextlib.suppress(Exception):
                if super().get_trial(trial_id).state != TrialState.RUNNING:
                    self._interrupt(taken_over(super().get_trial_number_from_id(trial_id)))

    def _interrupt(self, error: TellyError) -> None:
        if self.stop is None and self._main is not None:
            self.stop = error
            signal.pthread_kill(self._main, INTERRUPT_SIGNAL)

    @contextlib.contextmanager
    def interrupts(self) -> Iterator[None]:
        """While the main thread runs trials, the heartbeat may stop it (:class:`WorkerStop`)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def stop(signum: int, frame: Any) -> None:
            if self.stop is not None:
                raise WorkerStop(self.stop)

        previous = signal.signal(INTERRUPT_SIGNAL, stop)
        self._main = threading.get_ident()
        try:
            yield
        finally:
            self._main = None
            signal.signal(INTERRUPT_SIGNAL, previous)


def _retrying(name: str) -> Callable[..., Any]:
    method = getattr(optuna.storages.RDBStorage, name)

    def call(self: StudyStorage, *args: Any, **kwargs: Any) -> Any:
        return self._retried(method, *args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


# every database call Optuna makes (directly or through its cache), besides the heartbeat's own
for _name in (
    *(n for n, v in vars(optuna.storages.BaseStorage).items() if callable(v) and not n.startswith("_")),
    *("_create_new_trial", "_get_best_trial_id", "_get_stale_trial_ids", "_get_trials", "_set_trial_param"),
):
    if _name not in ("remove_session", "get_heartbeat_interval", "get_heartbeat_stale_trial_callback"):
        setattr(StudyStorage, _name, _retrying(_name))


def taken_over(number: int) -> TrialTakenOver:
    return TrialTakenOver(
        f"trial {number} was failed by another worker while this one ran it (its heartbeat had not reached the "
        "database for longer than tune.grace_seconds) and is retried there from its saved state; this worker "
        "stops. Rerun it to go on with the study"
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


def trial_seed(seed: int, number: int) -> int:
    """The sampler's seed for trial ``number``: reproducible, and distinct for the trials of parallel workers."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{number}".encode()).digest()[:4], "big")


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """TPE seeded per trial with :func:`trial_seed`. One seed per worker process would have workers that start
    together on a study sample the same trial (the same random draws from the same history)."""

    def __init__(self, seed: int, **tpe: Any) -> None:
        self.seed, self.tpe = seed, tpe
        self._number: int | None = None
        self._sampler = optuna.samplers.TPESampler(seed=seed, **tpe)

    def _for(self, trial: optuna.trial.FrozenTrial) -> optuna.samplers.TPESampler:
        if trial.number != self._number:
            self._number = trial.number
            self._sampler = optuna.samplers.TPESampler(seed=trial_seed(self.seed, trial.number), **self.tpe)
        return self._sampler

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, search_space: Any) -> Any:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, name: str, dist: Any) -> Any:
        return self._for(trial).sample_independent(study, trial, name, dist)

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: Any, values: Any) -> None:
        self._for(trial).after_trial(study, trial, state, values)


def make_sampler(params: Params, space: SearchSpace) -> optuna.samplers.BaseSampler:
    # TPE handles one or several objectives and starts well with few trials (NSGA-II wants ~50 a generation).
    return TrialSeededSampler(params.tune.seed, n_startup_trials=params.tune.startup_trials)


def make_pruner(params: Params, space: SearchSpace) -> optuna.pruners.BasePruner:
    tune = params.tune
    if tune.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=tune.startup_trials, n_warmup_steps=tune.warmup_epochs)
    if tune.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(space.epochs), reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(params: Params, task: str, space: SearchSpace, storage: StudyStorage, name: str) -> optuna.Study:
    """Load the study ``name`` (:func:`study_name`, computed once by the caller: it hashes model and data)
    from ``storage`` (:func:`open_storage`) or create it; a stored search space that differs is an error."""
    url = storage.url
    study = optuna.create_study(
        storage=storage,
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
