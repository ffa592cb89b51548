"""Several sessions on one study: three worker processes share a SQLite study, one of them killed with SIGKILL
mid-trial (its trial is retried by another, nothing is lost or run twice); an interrupted trial resumes."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from telly.tuning import tune
from tuning_fixture import LAYERS, TASK, fake_train, make_params


def test_an_interrupted_trial_is_queued_again_and_resumes_from_its_state(tmp_path, raw_params, tracking_env):
    params, _ = make_params(raw_params, tmp_path, n_trials=2, pruner="none", repeats=0)
    seen = []

    def interrupted_once(p, *args, **kwargs):
        seen.append(Path(p.finetune.checkpoint_dir))
        if len(seen) == 1:
            (seen[0]).mkdir(parents=True)
            (seen[0] / "last.pt").write_text("epoch 1")
            raise KeyboardInterrupt
        assert (seen[-1] / "last.pt").exists() == (len(seen) == 2), "the resumed trial finds the saved state"
        return fake_train(p, *args, **kwargs)

    with pytest.raises(KeyboardInterrupt):
        tune(params, TASK, train_fn=interrupted_once, layers=LAYERS)
    study = optuna.load_study(study_name=TASK, storage=f"sqlite:///{params.tune.results_dir / TASK}.db")
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]

    summary = tune(params, TASK, train_fn=interrupted_once, layers=LAYERS)
    study = optuna.load_study(study_name=TASK, storage=f"sqlite:///{params.tune.results_dir / TASK}.db")
    assert study.trials[1].params == study.trials[0].params == {"k": -1, "lr": 1e-4}
    assert study.trials[1].user_attrs["resumes"] == 0
    assert seen[1] == seen[0], "the queued copy uses the interrupted trial's folder"
    assert summary["trials"]["interrupted"] == 1 and summary["trials"]["fail"] == 0
    assert summary["trials"]["complete"] == 2
    assert not seen[0].exists()


def test_a_worker_killed_mid_trial_has_its_trial_failed_by_heartbeat_and_resumed_by_another(
    tmp_path, raw_params, tracking_env
):
    from mlflow import MlflowClient

    from telly.tuning.study import counts
    from worker_faults import check_study, run_workers_and_kill_one

    study, ran, killed, _ = run_workers_and_kill_one(tmp_path, raw_params, tracking_env, n_trials=6)
    check_study(study, ran, killed, n_trials=6)
    summary = json.loads((tmp_path / "tune" / f"{TASK}.json").read_text())
    assert summary["trials"]["running"] == 0 and summary["trials"]["interrupted"] == 1
    assert counts(study)["fail"] == 0
    # the killed trial's MLflow run is not left RUNNING: its retry marked it KILLED
    client = MlflowClient(tracking_env)
    (dead,) = [t for t in study.trials if t.state == TrialState.FAIL]
    assert client.get_run(dead.user_attrs["mlflow_run_id"]).info.status == "KILLED"


def test_a_later_session_retries_a_dead_workers_trial_even_when_the_budget_is_reached(tmp_path, raw_params):
    """The issue's case: n_trials finished, one trial left RUNNING by a killed worker; `telly tune` again."""
    import time

    from telly.tuning.study import open_storage

    params, _ = make_params(raw_params, tmp_path, n_trials=2, pruner="none", repeats=0)
    tune(params, TASK, train_fn=fake_train, layers=LAYERS)
    url = f"sqlite:///{params.tune.results_dir / TASK}.db"
    study = optuna.load_study(study_name=TASK, storage=open_storage(url, params))
    dead = study.ask({"k": optuna.distributions.IntDistribution(-1, LAYERS - 1)})
    dead_lr = dead.suggest_float("lr", 1e-6, 1e-2, log=True)
    study._storage.record_heartbeat(dead._trial_id)  # its last heartbeat, then SIGKILL
    time.sleep(params.tune.grace_seconds + 1)

    ran = []

    def recording(p, *args, **kwargs):
        ran.append((Path(p.finetune.checkpoint_dir), getattr(p.finetune.tasks, TASK).learning_rate))
        return fake_train(p, *args, **kwargs)

    summary = tune(params, TASK, train_fn=recording, layers=LAYERS)
    study = optuna.load_study(study_name=TASK, storage=url)
    states = {t.number: t.state for t in study.trials}
    assert states[dead.number] == TrialState.FAIL
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == dead.number]
    assert retry.state == TrialState.COMPLETE and retry.params["lr"] == dead_lr
    assert ran == [(tmp_path / "work" / TASK / f"trial-{dead.number}" / "state", dead_lr)]
    assert summary["trials"]["running"] == 0 and summary["trials"]["interrupted"] == 1


def test_settle_stops_when_the_session_may_not_run_the_queued_trial(tmp_path, raw_params):
    from telly.tuning.study import settle

    params, _ = make_params(raw_params, tmp_path, repeats=0)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")
    study.enqueue_trial({"x": 1.0})
    calls = []
    settle(study, params, lambda: calls.append(1) or False)
    assert calls == [1]
