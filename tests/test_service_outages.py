"""Team services that stop under a running worker: a PostgreSQL restart (the trial goes on), PostgreSQL stopped
(the worker stops within a bounded time with a clear message, the trial resumes later), a trial another worker
took over, an MLflow server stopped mid-trial, and workers started together (they sample different trials)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from telly.errors import ServiceUnavailable
from telly.services import Services, _stop_group, _system_user, free_port, postgres_bin
from telly.tuning import tune
from telly.tuning.study import TrialTakenOver, fail_stale, open_storage
from tuning_fixture import LAYERS, TASK, fake_train, make_params


@pytest.fixture(scope="module")
def own_postgres():
    """A PostgreSQL of these tests alone (they stop and restart it), without an MLflow server."""
    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql)")
    folder = Path(tempfile.mkdtemp(prefix="telly-outage-"))
    folder.chmod(0o755)
    services = Services(folder / "services")
    try:
        yield services, services.up(mlflow=False)
    finally:
        services.down()
        shutil.rmtree(folder, ignore_errors=True)


def _two_trials_on(url: str, raw_params, tmp_path, **tune):
    """Two unpruned trials, no repeats, on the study database ``url``."""
    params, _ = make_params(raw_params, tmp_path, n_trials=2, pruner="none", repeats=0, storage=url, **tune)
    return params


def _study(params, url: str) -> optuna.Study:
    return optuna.load_study(study_name=params.tune.study_name.format(task=TASK), storage=url)


def test_a_database_restart_under_a_running_trial_loses_nothing(own_postgres, tmp_path, raw_params, tracking_env):
    services, state = own_postgres
    url = services.database_url("optuna")
    params = _two_trials_on(url, raw_params, tmp_path, grace_seconds=10, study_name="restart-{task}")
    calls = []

    def restarted_once(p, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            services.stop_postgres()
            time.sleep(3)  # heartbeats fail meanwhile
            services.start_postgres(state, _system_user())
            # longer than the grace period after the restart: only a heartbeat that came back keeps the trial
            time.sleep(params.tune.grace_seconds + 2)
            other_worker = optuna.load_study(study_name=f"restart-{TASK}", storage=open_storage(url, params))
            fail_stale(other_worker)
        return fake_train(p, *args, **kwargs)

    summary = tune(params, TASK, train_fn=restarted_once, layers=LAYERS)
    states = [t.state for t in _study(params, url).trials]
    assert states == [TrialState.COMPLETE] * 2 and len(calls) == 2
    assert summary["trials"]["fail"] == 0 and summary["trials"]["interrupted"] == 0


def test_a_stopped_database_stops_the_worker_with_a_message_and_the_trial_resumes_later(
    own_postgres, tmp_path, raw_params, tracking_env, monkeypatch
):
    services, state = own_postgres
    url = services.database_url("optuna")
    params = _two_trials_on(url, raw_params, tmp_path, grace_seconds=4, study_name="stop-{task}")
    monkeypatch.setenv("TELLY_FAKE_LOG", str(tmp_path / "ran.jsonl"))

    def database_stops(p, *args, **kwargs):
        if services.postgres_running():
            services.stop_postgres()
            monkeypatch.setenv("TELLY_FAKE_DELAY", "3")  # the trial goes on training while the worker waits
        return fake_train(p, *args, **kwargs)

    with pytest.raises(ServiceUnavailable) as stopped:
        tune(params, TASK, train_fn=database_stops, layers=LAYERS)
    message = str(stopped.value)
    assert "telly services up" in message and f"127.0.0.1:{state.pg_port}/optuna" in message
    assert services.password() not in message and stopped.value.exit_code == 75
    (folder,) = (tmp_path / "work" / f"stop-{TASK}").iterdir()
    assert (folder / "state" / "last.pt").exists(), "the trial's saved state is kept for its retry"

    monkeypatch.setenv("TELLY_FAKE_DELAY", "0")
    services.up(mlflow=False)
    time.sleep(params.tune.grace_seconds + 1)  # the stopped worker's heartbeat is stale
    tune(params, TASK, train_fn=fake_train, layers=LAYERS)
    trials = _study(params, url).trials
    assert trials[0].state == TrialState.FAIL and trials[1].system_attrs["failed_trial"] == 0
    assert trials[1].state == TrialState.COMPLETE
    ran = [__import__("json").loads(line) for line in (tmp_path / "ran.jsonl").read_text().splitlines()]
    assert [r["resumed"] for r in ran][:2] == [False, True], "the retry resumed from the saved state"


def test_a_worker_whose_trial_another_worker_failed_stops_with_a_message(tmp_path, raw_params, tracking_env):
    params, _ = make_params(raw_params, tmp_path, n_trials=2, pruner="none", repeats=0)
    url = f"sqlite:///{params.tune.results_dir / TASK}.db"

    def taken_over(p, *args, **kwargs):
        other = optuna.load_study(study_name=TASK, storage=url)  # as a worker that found its heartbeat stale
        (mine,) = [t for t in other.trials if t.state == TrialState.RUNNING]
        other._storage.set_trial_state_values(mine._trial_id, TrialState.FAIL)
        return fake_train(p, *args, **kwargs)

    with pytest.raises(TrialTakenOver, match="was failed by another worker") as stopped:
        tune(params, TASK, train_fn=taken_over, layers=LAYERS)
    assert stopped.value.exit_code == 75
    assert (tmp_path / "work" / TASK / "trial-0" / "state" / "last.pt").exists(), "left to the worker retrying it"


def test_the_cli_exits_75_when_a_service_is_down(monkeypatch):
    import telly.cli as cli

    def down() -> None:
        raise ServiceUnavailable("the study database is down")

    monkeypatch.setattr(cli, "app", down)
    with pytest.raises(SystemExit) as leaving:
        cli.main()
    assert leaving.value.code == 75


def test_a_stopped_tracking_server_stops_the_trial_with_a_message_and_keeps_its_state(
    tmp_path, raw_params, monkeypatch
):
    port = free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    server = subprocess.Popen(
        [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'm.db'}", "--host", "127.0.0.1"]
        + ["--port", str(port), "--workers", "1", "--artifacts-destination", (tmp_path / "a").as_uri()],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "the MLflow server did not start"
                time.sleep(0.5)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
        for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
            monkeypatch.delenv(name, raising=False)  # telly's bounded defaults apply
        params, _ = make_params(raw_params, tmp_path, n_trials=2, pruner="none", repeats=0)

        def server_stops(p, *args, **kwargs):
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
            return fake_train(p, *args, **kwargs)

        with pytest.raises(ServiceUnavailable, match="telly services up") as stopped:
            tune(params, TASK, train_fn=server_stops, layers=LAYERS)
        assert f"http://127.0.0.1:{port}" in str(stopped.value) and stopped.value.exit_code == 75
        assert (tmp_path / "work" / TASK / "trial-0" / "state" / "last.pt").exists()
        trial = optuna.load_study(study_name=TASK, storage=f"sqlite:///{params.tune.results_dir / TASK}.db").trials[0]
        assert trial.state == TrialState.RUNNING, "left for a heartbeat retry, not failed"
    finally:
        if server.poll() is None:
            _stop_group(server.pid)


WORKER = """
import sys
from telly.config import load_params
from telly.tuning import tune
from tuning_fixture import LAYERS, TASK, fake_train
tune(load_params(sys.argv[1]), TASK, train_fn=fake_train, layers=LAYERS)
"""


def test_two_workers_starting_together_on_a_fresh_study_sample_different_trials(tmp_path, raw_params, tracking_env):
    import json

    import yaml

    _, raw = make_params(
        raw_params, tmp_path, n_trials=2, pruner="none", repeats=0, enqueue_default=False, epochs=[2], startup_trials=5
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    tests = Path(__file__).resolve().parent
    env = {
        **os.environ,
        "PYTHONPATH": f"{tests}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "TELLY_FAKE_LOG": str(tmp_path / "ran.jsonl"),
        "TELLY_FAKE_DELAY": "1",
    }
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path / "params.yaml")],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    for w in workers:
        out = w.communicate(timeout=300)[0]
        assert w.returncode == 0, out[-3000:]
    ran = [json.loads(line) for line in (tmp_path / "ran.jsonl").read_text().splitlines()]
    assert len({r["pid"] for r in ran}) == 2, "each worker ran a trial"
    first = {}
    for r in ran:
        first.setdefault(r["pid"], (r["variant"], r["lr"]))
    assert len(set(first.values())) == 2, f"both workers' first trials were {first}"
