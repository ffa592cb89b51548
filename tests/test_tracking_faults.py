"""MLflow faults a team meets: stages started together on a fresh store, a run whose process was killed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import yaml
from mlflow import MlflowClient

from telly.config import parse_params
from telly.tracking import resume_tags, start_run

TESTS = Path(__file__).resolve().parent

STAGE = """
import os, sys, time
from pathlib import Path
import mlflow
from telly.config import load_params
from telly.tracking import start_run
go = Path(sys.argv[2])
while not go.exists():  # all processes open the fresh store at the same moment
    time.sleep(0.01)
with start_run(load_params(sys.argv[1]), sys.argv[3]) as run:
    mlflow.log_metric("x", 1.0)
print(run.info.run_id)
"""


def test_stages_started_together_on_a_fresh_store_all_log_their_runs(tmp_path, raw_params):
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw_params))
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    go = tmp_path / "go"
    stages = ["prepare", "tasks", "tasks"]  # two of one stage: they share its experiment
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", STAGE, str(params_file), str(go), stage],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for stage in stages
    ]
    time.sleep(3)  # let every interpreter import mlflow and wait at the barrier
    go.touch()
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    run_ids = {out.strip().splitlines()[-1] for out, _ in outputs}
    client = MlflowClient(uri)
    assert {client.get_run(r).info.status for r in run_ids} == {"FINISHED"}
    assert len(run_ids) == 3


KILLED_RUN = """
import os, signal, sys
from telly.config import load_params
from telly.tracking import resume_tags, start_run
with start_run(load_params(sys.argv[1]), "finetune", "t/v", tags=resume_tags("state-a", resumed=False)) as run:
    print(run.info.run_id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no chance to end the run
"""


def test_a_run_resuming_a_killed_runs_state_marks_it_killed(tmp_path, raw_params, tracking_env):
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw_params))
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_env}
    runs = []
    for _ in range(2):  # two killed attempts in a row
        proc = subprocess.run(
            [sys.executable, "-c", KILLED_RUN, str(params_file)], env=env, cwd=tmp_path, capture_output=True, text=True
        )
        assert proc.returncode == -9, proc.stderr[-2000:]
        runs.append(proc.stdout.split()[0])
    params = parse_params(raw_params)
    with start_run(params, "finetune", "t/v", tags=resume_tags("state-b", resumed=False)) as other:
        pass  # another saved state: not a predecessor
    with start_run(params, "finetune", "t/v", tags=resume_tags("state-b", resumed=True)):
        pass  # nothing of state-b is running: nothing to mark
    client = MlflowClient(tracking_env)
    assert [client.get_run(r).info.status for r in runs] == ["RUNNING", "RUNNING"]

    with start_run(params, "finetune", "t/v", tags=resume_tags("state-a", resumed=True)) as successor:
        pass
    for run_id in runs:
        got = client.get_run(run_id)
        assert got.info.status == "KILLED" and got.info.end_time is not None
        assert got.data.tags["telly.resumed_by"] == successor.info.run_id
    assert client.get_run(successor.info.run_id).info.status == "FINISHED"
    assert client.get_run(other.info.run_id).info.status == "FINISHED"
    assert set(mlflow.get_run(successor.info.run_id).data.tags["telly.resumes"].split(",")) == set(runs)


def test_experiments_are_model_training_and_ui_prints_a_runs_link_per_experiment(tmp_path, raw_params, tracking_env):
    params = parse_params(raw_params)
    with start_run(params, "finetune", "t/v"):
        pass
    client = MlflowClient(tracking_env)
    client.create_experiment("telly-older")  # made before experiments were tagged: tagged when listed
    finetune = client.get_experiment_by_name("telly-finetune")
    assert finetune.tags["mlflow.experimentKind"] == "custom_model_development"

    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw_params))
    cli = subprocess.run(
        [sys.executable, "-m", "telly", "ui", "--links-only", "--port", "5123", "--params", str(params_file)],
        capture_output=True,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_env},
    )
    assert cli.returncode == 0, cli.stderr[-2000:]
    lines = dict(line.split() for line in cli.stdout.splitlines())
    assert lines["telly-finetune"] == (
        f"http://127.0.0.1:5123/#/experiments/{finetune.experiment_id}/runs?workflowType=machine_learning"
    )
    older = client.get_experiment_by_name("telly-older")
    assert lines["telly-older"].endswith(f"/#/experiments/{older.experiment_id}/runs?workflowType=machine_learning")
    assert older.tags["mlflow.experimentKind"] == "custom_model_development"
