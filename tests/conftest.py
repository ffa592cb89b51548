"""Shared fixtures. Tests need no network and build their own tiny data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one worker per core: one torch thread each
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """End-to-end (`slow`) tests first, so that under pytest-xdist they overlap the short ones instead of ending last;
    the service tests share one worker (`xdist_group`), so one PostgreSQL and MLflow server serve them all."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: the rest keep their order
    for item in items:
        if "team_services" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("services"))


@pytest.fixture
def raw_params() -> dict:
    """The repository's params.yaml as a plain dict, to modify in a test."""
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.fixture(scope="session")
def _session_mlflow(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def _isolated_mlflow(_session_mlflow, monkeypatch):
    """No test writes to the project's own mlruns/: all share one throw-away store.

    (mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI too; monkeypatch restores it.)
    """
    monkeypatch.setenv("MLFLOW_TRACKING_URI", _session_mlflow)
    return _session_mlflow


@pytest.fixture(autouse=True)
def _no_params_guard_after_the_test():
    """A CLI command run in-process guards its params file (telly.files); the next test starts without it."""
    yield
    from telly import files

    files.check_before_publish(None)


@pytest.fixture
def tracking_env(tmp_path, monkeypatch):
    """Point MLflow at a throw-away store inside the test's own folder."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


@pytest.fixture(scope="session")
def team_services():
    """PostgreSQL and an MLflow tracking server (`telly services up`), once for all the tests that need them.

    Skipped only where Debian's postgresql binaries are absent; .ci/run installs them, so CI runs these tests.
    """
    import shutil
    import tempfile

    from telly.services import Services, postgres_bin

    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="telly-services-"))  # not under pytest's 0700 tmp: postgres must enter
    folder.chmod(0o755)
    services = Services(folder / "services")
    try:
        state = services.up()
        # what `source services.env` gives a client: the MLflow login and the PostgreSQL password file
        with pytest.MonkeyPatch.context() as env:
            for name, value in services.client_env(state).items():
                if name not in ("MLFLOW_TRACKING_URI", "TELLY_TUNE_STORAGE"):  # tests choose their stores
                    env.setenv(name, value)
            yield services, state
    finally:
        services.down()
        shutil.rmtree(folder, ignore_errors=True)
