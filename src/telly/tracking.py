"""MLflow, the one way every stage logs runs.

The default store is local and embedded: a SQLite database plus artifacts under
``mlruns/``. ``MLFLOW_TRACKING_URI`` in the environment points every stage at a
team server instead. Runs are tagged with the git commit and the stage, and each
stage logs to its own experiment (``<prefix>-<stage>``) so the UI compares like
with like.

Several stages may start at once on a fresh store: an embedded SQLite store's schema is
created once, under a file lock, before any of them uses it. A run that resumes the
saved state of a run whose process was killed (left RUNNING in the store) marks that
run KILLED.

A tracking server that stops answering is retried for a bounded time (:data:`HTTP_DEFAULTS`,
MLflow's own ``MLFLOW_HTTP_REQUEST_*`` settings, set here unless the user set them: about 15 s
for a refused connection, at most about 90 s for a server that hangs), then the run stops with
:class:`telly.errors.ServiceUnavailable` naming the server and what to do. Whatever the run
saved before (checkpoints, results) stays for its rerun.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from telly.config import Params
from telly.runtime import git_commit
from telly.studies import MODEL_TAG_KEY

log = logging.getLogger(__name__)

# MLflow's defaults retry a dead server for minutes (7 retries, backoff factor 2, 120 s timeout).
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


def tracking_uri(params: Params) -> str:
    """The store every client uses; a server's clients get bounded retries (:data:`HTTP_DEFAULTS`)."""
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    return os.environ.get("MLFLOW_TRACKING_URI") or _project_uri(params)


def server_down(err: BaseException, uri: str) -> bool:
    """``err`` says the tracking server at ``uri`` did not answer (refused, timed out, or failing with a
    non-MLflow error page after the retries), not that it refused a request."""
    from mlflow.exceptions import MlflowException, RestException

    return (
        uri.startswith(("http://", "https://"))
        and isinstance(err, MlflowException)
        and not isinstance(err, RestException)  # the server answered with an MLflow error: a real one
        and "API request to" in str(err)
    )


def unavailable(err: BaseException, uri: str, stage: str) -> Exception:
    from telly.errors import ServiceUnavailable

    reason = str(err).splitlines()[0][:300]
    error = ServiceUnavailable(
        f"the MLflow tracking server {uri} (MLFLOW_TRACKING_URI) is not answering: {reason}. Start it again "
        f"(`telly services up`), or unset MLFLOW_TRACKING_URI to log locally, and rerun `telly {stage}`: "
        "checkpoints and results saved so far are kept and the run resumes from them"
    )
    error.tracking_down = True
    return error


def _gone(err: BaseException, uri: str) -> bool:
    """``err`` (or the error a worker stop carries) is the tracking server being down."""
    return server_down(err, uri) or getattr(getattr(err, "error", err), "tracking_down", False)


def _project_uri(params: Params) -> str:
    uri = params.tracking.uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        db = Path(uri.removeprefix("sqlite:///")).resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{db}"
    return uri


_READY_STORES: set[str] = set()


@contextlib.contextmanager
def schema_lock(uri: str) -> Iterator[None]:
    """An exclusive file lock beside an embedded SQLite database (``<db>.lock``) while a process opens it.

    MLflow and Optuna create or migrate a fresh database's schema (alembic) when a process first opens it;
    two processes doing so at once crash in the migration. Under the lock the first creates it, the others
    wait and find it made. A server URL needs no lock: the server creates its own schema.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_store(uri: str) -> None:
    """Create an embedded SQLite MLflow store's schema once (:func:`schema_lock`), before this process uses it."""
    if uri in _READY_STORES or not uri.startswith("sqlite:///"):
        return
    with schema_lock(uri):
        from mlflow import MlflowClient

        MlflowClient(uri).search_experiments(max_results=1)  # opens the store: creates or migrates it
    _READY_STORES.add(uri)


# MLflow 3's UI opens an experiment on its GenAI traces overview ("No data available"). The
# experiment's kind tag (what the UI's experiment-type selector writes) marks ours as model
# training; the UI's sidebar mode is a separate, per-browser setting that a link can set
# (?workflowType=machine_learning), so the links `telly ui` prints open the runs table in it
# (checked in headless Chromium with MLflow 3.17.2: docs/img/mlflow-runs-link.png).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
RUNS_VIEW = "runs?workflowType=machine_learning"


def mark_model_training(client: Any, experiment: Any) -> None:
    """Tag an experiment as model training (once), so the UI lands on its runs table."""
    if experiment.tags.get(EXPERIMENT_KIND_TAG) is None:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)


def experiment_links(params: Params, ui_url: str) -> list[tuple[str, str]]:
    """``(name, link to its runs table)`` for each of the project's experiments; older ones are tagged on the way."""
    from mlflow import MlflowClient

    uri = tracking_uri(params)
    ensure_store(uri)
    client = MlflowClient(uri)
    prefix = params.tracking.experiment_prefix
    found = client.search_experiments(filter_string=f"name LIKE '{prefix}-%'", order_by=["name ASC"])
    links = []
    for experiment in found:
        mark_model_training(client, experiment)
        links.append((experiment.name, f"{ui_url.rstrip('/')}/#/experiments/{experiment.experiment_id}/{RUNS_VIEW}"))
    return links


def _experiment(mlflow: Any, params: Params, stage: str) -> str:
    from mlflow.exceptions import MlflowException

    name = f"{params.tracking.experiment_prefix}-{stage}"
    existing = mlflow.get_experiment_by_name(name)
    if existing is not None:
        mark_model_training(mlflow.MlflowClient(), existing)
    else:
        artifacts = None
        # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, so compare URIs rather than test the variable
        if tracking_uri(params) == _project_uri(params):
            folder = Path(params.tracking.artifacts_dir).resolve()
            folder.mkdir(parents=True, exist_ok=True)
            artifacts = folder.as_uri()
        try:
            mlflow.create_experiment(name, artifact_location=artifacts, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
        except MlflowException:
            if mlflow.get_experiment_by_name(name) is None:
                raise
            # another process (a worker started at the same time) created it first
    return name


RESUME_TAG = "telly.resume_key"
RESUMED_TAG = "telly.resumed"


def resume_tags(state: str, *, resumed: bool) -> dict[str, str]:
    """Tags of a run that saves resumable ``state`` (e.g. its checkpoint folder and settings fingerprint).

    A ``resumed`` run marks KILLED the runs of the same state that a killed process left RUNNING.
    """
    return {RESUME_TAG: hashlib.sha256(state.encode()).hexdigest()[:16], RESUMED_TAG: str(resumed).lower()}


def close_killed_predecessors(run: Any, key: str) -> list[str]:
    """Mark KILLED the runs of this experiment with ``key`` still RUNNING: their process died, this run resumes them."""
    from mlflow import MlflowClient

    client = MlflowClient()
    found = client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.`{RESUME_TAG}` = '{key}' and attributes.status = 'RUNNING'",
    )
    killed = [r.info.run_id for r in found if r.info.run_id != run.info.run_id]
    for run_id in killed:
        client.set_tag(run_id, "telly.resumed_by", run.info.run_id)
        client.set_terminated(run_id, status="KILLED")
        log.info(
            "MLflow run %s was left RUNNING by a killed process: marked KILLED, resumed by %s", run_id, run.info.run_id
        )
    if killed:
        client.set_tag(run.info.run_id, "telly.resumes", ",".join(killed))
    return killed


@contextlib.contextmanager
def start_run(
    params: Params,
    stage: str,
    run_name: str | None = None,
    *,
    nested: bool = False,
    tags: Mapping[str, str] | None = None,
    log_params: Mapping[str, Any] | None = None,
    run_id: str | None = None,
) -> Iterator[Any]:
    """Open an MLflow run for ``stage``; nested runs join the active parent run.

    ``run_id`` reopens an existing run (an Optuna study's run, shared by its sessions and workers).
    A run tagged by :func:`resume_tags` as resumed marks KILLED the runs of the same saved state
    that a killed process left RUNNING.
    """
    import mlflow

    logging.getLogger("alembic").setLevel(logging.WARNING)
    uri = tracking_uri(params)
    try:
        ensure_store(uri)
        mlflow.set_tracking_uri(uri)
        if not nested:
            mlflow.set_experiment(_experiment(mlflow, params, stage))
        all_tags = {
            "telly.stage": stage,
            MODEL_TAG_KEY: params.model_tag,  # the study's model (telly.studies)
            "mlflow.source.git.commit": git_commit(),
            **(tags or {}),
        }
        name = None if run_id else run_name or stage
        run = mlflow.start_run(run_id=run_id, run_name=name, nested=nested, tags=all_tags)
    except Exception as err:
        if server_down(err, uri):
            raise unavailable(err, uri, stage) from None
        raise
    try:
        if all_tags.get(RESUMED_TAG) == "true":
            close_killed_predecessors(run, all_tags[RESUME_TAG])
        if log_params:
            mlflow.log_params(flatten(log_params))
        yield run
    except BaseException as err:
        _end_failed(mlflow, run, "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED", _gone(err, uri))
        if server_down(err, uri):
            raise unavailable(err, uri, stage) from None
        raise
    try:
        mlflow.end_run()
    except Exception as err:
        if server_down(err, uri):
            raise unavailable(err, uri, stage) from None
        raise


def _end_failed(mlflow: Any, run: Any, status: str, server_gone: bool) -> None:
    """End the active run as failed; a tracking server that is down leaves it RUNNING (a resumed run marks it
    KILLED later) rather than hide the error that ended it (and, known to be down, is asked once, not retried)."""
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    if server_gone:
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        mlflow.end_run(status)  # forgets the run locally first, then tells the server
    except Exception as err:
        if not server_down(err, mlflow.get_tracking_uri()):
            raise
        log.warning("MLflow run %s could not be marked %s: the tracking server is down", run.info.run_id, status)
    finally:
        if retries is not None:
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = retries


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}} -> {"a.b": 1}``: MLflow params are flat."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out
