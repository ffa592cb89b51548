"""The team setup against real servers: PostgreSQL and an MLflow tracking server started by `telly services up`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from corpus_fixture import make_corpus, write_lock
from telly.config import parse_params
from telly.data.corpus import prepare
from telly.services import Services, _system_user

REPO = Path(__file__).resolve().parents[1]


def test_services_run_on_localhost_not_as_root_and_status_prints_the_addresses(team_services):
    services, state = team_services
    assert services.status() == {"postgres": True, "mlflow": True}
    pid = int((services.data / "postmaster.pid").read_text().splitlines()[0])
    owner = Path(f"/proc/{pid}").stat().st_uid
    assert owner != 0, "PostgreSQL runs as an unprivileged user"
    if os.geteuid() == 0:
        import pwd

        assert owner == pwd.getpwnam(_system_user()).pw_uid == services.data.stat().st_uid
    assert services.database_url("optuna").startswith(f"postgresql+psycopg2://telly:{services.password()}@127.0.0.1:")
    cli = subprocess.run(
        [sys.executable, "-m", "telly", "services", "status", "--dir", str(services.root)],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert f"MLFLOW_TRACKING_URI=http://127.0.0.1:{state.mlflow_port}" in cli.stdout
    assert f"tune.storage: {services.database_url('optuna')}" in cli.stdout


def test_a_stage_logs_to_the_tracking_server(team_services, tmp_path, raw_params, monkeypatch):
    services, _ = team_services
    uri = services.tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    write_lock(tmp_path / "corpus.lock", make_corpus(tmp_path / "raw"))
    raw_params["data"] = {
        "lockfile": str(tmp_path / "corpus.lock"),
        "raw_dir": str(tmp_path / "raw"),
        "corpus_dir": str(tmp_path / "corpus"),
    }
    raw_params["prepare"].update(valid_fraction=0.15, test_fraction=0.15)
    metrics = prepare(parse_params(raw_params))

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("telly-prepare").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["functions_train"] == metrics["functions"]["train"]
    # the artifact went through the server into its artifacts folder
    local = client.download_artifacts(run.info.run_id, "corpus_metrics.json", str(tmp_path))
    assert json.loads(Path(local).read_text())["functions"] == metrics["functions"]
    assert list(services.artifacts.rglob("corpus_metrics.json"))


def test_three_workers_on_postgres_one_killed_lose_and_duplicate_no_trial(team_services, tmp_path, raw_params):
    from worker_faults import check_study, run_workers_and_kill_one

    services, _ = team_services
    study, ran, killed, _ = run_workers_and_kill_one(
        tmp_path, raw_params, services.tracking_uri(), services.database_url("optuna"), n_trials=6
    )
    check_study(study, ran, killed, n_trials=6)
    client = MlflowClient(services.tracking_uri())
    (dead,) = [t for t in study.trials if t.state.name == "FAIL"]
    assert client.get_run(dead.user_attrs["mlflow_run_id"]).info.status == "KILLED"


def test_services_name_a_missing_postgres_install(monkeypatch, tmp_path):
    import telly.services as S

    monkeypatch.setattr(S, "postgres_bin", lambda: None)
    with pytest.raises(S.ServiceError, match="apt-get install -y postgresql"):
        Services(tmp_path / "s").up()
