"""The team setup against real servers: PostgreSQL and an MLflow tracking server started by `telly services up`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from corpus_fixture import make_corpus, write_lock
from telly.config import parse_params
from telly.data.corpus import prepare
from telly.errors import TellyError
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
    cli = subprocess.run(
        [sys.executable, "-m", "telly", "services", "status", "--dir", str(services.root)],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert f"MLFLOW_TRACKING_URI=http://127.0.0.1:{state.mlflow_port}" in cli.stdout
    assert f"TELLY_TUNE_STORAGE=postgresql+psycopg2://telly@127.0.0.1:{state.pg_port}/optuna" in cli.stdout
    assert services.password() not in cli.stdout + cli.stderr
    assert services.mlflow_password() not in cli.stdout + cli.stderr


def test_the_mlflow_server_runs_unprivileged_and_refuses_requests_without_its_login(team_services):
    import base64
    import urllib.error
    import urllib.request

    services, state = team_services
    url = f"{services.tracking_uri()}/api/2.0/mlflow/experiments/search?max_results=1"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=30)
    assert refused.value.code == 401
    login = base64.b64encode(f"admin:{services.mlflow_password()}".encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {login}"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        assert reply.status == 200
    server = [p for p in Path("/proc").glob("[0-9]*") if _listens(p, state.mlflow_port)]
    assert server, "the process listening on the MLflow port"
    assert all(p.stat().st_uid != 0 for p in server), "the MLflow server does not run as root"
    assert services.artifacts.stat().st_uid == server[0].stat().st_uid
    assert services.artifacts.stat().st_mode & 0o777 == 0o700


def _listens(proc: Path, port: int) -> bool:
    """``proc`` holds the listening socket of ``port`` on 127.0.0.1 (from /proc/net/tcp and its fds)."""
    try:
        inodes = {os.readlink(fd).removeprefix("socket:[").rstrip("]") for fd in (proc / "fd").iterdir()}
        table = (proc / "net" / "tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in table:
        fields = line.split()
        if fields[1] == f"0100007F:{port:04X}" and fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
            return True
    return False


def test_secrets_stay_in_0600_files_and_workers_read_the_storage_from_the_environment(
    team_services, tmp_path, monkeypatch
):
    import optuna

    from telly.services import write_secret
    from telly.tuning.study import storage_url
    from tuning_fixture import make_params

    services, _ = team_services
    for secret in (
        services.password_file,
        services.mlflow_password_file,
        services.pgpass,
        services.env_file,
        services.auth_config,
    ):
        assert secret.stat().st_mode & 0o777 == 0o600, secret
    assert f"PGPASSFILE={services.pgpass}" in services.env_file.read_text()
    # the file is 0600 when the secret is written into it, not chmod'ed afterwards
    modes = []
    real_write = os.write
    monkeypatch.setattr(
        os, "write", lambda fd, data: modes.append(os.fstat(fd).st_mode & 0o777) or real_write(fd, data)
    )
    old = os.umask(0)  # the widest umask: the mode must not come from it
    try:
        write_secret(tmp_path / "secret", "s3cret\n")
    finally:
        os.umask(old)
    monkeypatch.undo()
    assert modes == [0o600] and (tmp_path / "secret").stat().st_mode & 0o777 == 0o600

    # a worker finds the study database from TELLY_TUNE_STORAGE, its password from the PGPASSFILE
    params, _ = make_params(yaml.safe_load((REPO / "params.yaml").read_text()), tmp_path)
    public = services.database_url("optuna", with_password=False)
    monkeypatch.setenv("TELLY_TUNE_STORAGE", public)
    monkeypatch.setenv("PGPASSFILE", str(services.pgpass))
    assert storage_url(params, "code_search") == public
    optuna.get_all_study_summaries(storage=public)  # connects: the password came from the file
    from typer.testing import CliRunner

    from telly.cli import app

    refused = CliRunner().invoke(app, ["tune", "code_search", "--storage", services.database_url("optuna")])
    assert isinstance(refused.exception, TellyError) and "holds a password" in str(refused.exception)
    assert services.password() not in str(refused.exception)


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
