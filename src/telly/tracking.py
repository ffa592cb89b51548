"""MLflow, the one way every stage logs runs.

The default store is local and embedded: a SQLite database plus artifacts under
``mlruns/``. ``MLFLOW_TRACKING_URI`` in the environment points every stage at a
team server instead. Runs are tagged with the git commit and the stage, and each
stage logs to its own experiment (``<prefix>-<stage>``) so the UI compares like
with like.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from telly.config import Params
from telly.runtime import git_commit

log = logging.getLogger(__name__)


def tracking_uri(params: Params) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or _project_uri(params)


def _project_uri(params: Params) -> str:
    uri = params.tracking.uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        db = Path(uri.removeprefix("sqlite:///")).resolve()
        db.parent.mkdir(parents=True, exist_ok=True)
        uri = f"sqlite:///{db}"
    return uri


def _experiment(mlflow: Any, params: Params, stage: str) -> str:
    name = f"{params.tracking.experiment_prefix}-{stage}"
    if mlflow.get_experiment_by_name(name) is None:
        artifacts = None
        # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, so compare URIs rather than test the variable
        if tracking_uri(params) == _project_uri(params):
            folder = Path(params.tracking.artifacts_dir).resolve()
            folder.mkdir(parents=True, exist_ok=True)
            artifacts = folder.as_uri()
        mlflow.create_experiment(name, artifact_location=artifacts)
    return name


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
    """
    import mlflow

    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(tracking_uri(params))
    if not nested:
        mlflow.set_experiment(_experiment(mlflow, params, stage))
    all_tags = {"telly.stage": stage, "mlflow.source.git.commit": git_commit(), **(tags or {})}
    name = None if run_id else run_name or stage
    with mlflow.start_run(run_id=run_id, run_name=name, nested=nested, tags=all_tags) as run:
        if log_params:
            mlflow.log_params(flatten(log_params))
        yield run


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
