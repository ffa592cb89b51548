"""The tune stage on a stand-in trainer with a known optimum: search, pruning, failures, reruns, outputs."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys

import mlflow
import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from telly.config import ConfigError, parse_params
from telly.errors import TellyError
from telly.finetuning.train import override
from telly.tuning import tune
from telly.tuning.space import SearchSpaceMismatch
from tuning_fixture import LAYERS, TASK, fake_train, make_params, quality


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """One throw-away MLflow store for the module (creating one costs seconds); tests look runs up by id."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}")
        yield


def _study(params, task=TASK):
    db = params.tune.results_dir / f"{task}.db"
    return optuna.load_study(study_name=task, storage=f"sqlite:///{db}")


def _states(study):
    return [t.state for t in study.trials]


def test_study_searches_k_and_lr_and_writes_outputs(tmp_path, raw_params, tracking):
    params, _ = make_params(raw_params, tmp_path, n_trials=10, pruner="none")
    summary = tune(params, TASK, train_fn=fake_train, layers=LAYERS)

    study = _study(params)
    assert _states(study).count(TrialState.COMPLETE) == 10
    # trial 0 is the reference: Base at finetune's learning rate
    assert study.trials[0].params == {"k": -1, "lr": 1e-4}
    ks = {t.params["k"] for t in study.trials}
    assert ks <= set(range(-1, LAYERS)) and len(ks) > 1
    assert all(1e-6 <= t.params["lr"] <= 1e-2 for t in study.trials)

    # the best is the best trial, and its score is the stand-in's true quality
    written = json.loads((params.tune.results_dir / f"{TASK}.json").read_text())
    assert written == json.loads(json.dumps(summary))
    best = written["best"]
    assert best["valid_score"] == pytest.approx(max(t.value for t in study.trials))
    assert best["valid_score"] == pytest.approx(quality(best["variant"], best["lr"]))
    assert best["variant"] == ("base" if best["k"] == -1 else f"telly-{best['k']}")
    assert written["trials"]["complete"] == 10 and written["pareto_front"] is None
    assert set(written["importances"]) == {"k", "lr"}
    assert math.isclose(sum(written["importances"].values()), 1.0, rel_tol=1e-6)

    csv = (params.tune.results_dir / f"{TASK}.csv").read_text().splitlines()
    assert len(csv) == 11 and "params_k" in csv[0]
    plots = {p.name for p in (params.tune.results_dir / TASK).glob("*.png")}
    assert {"history.png", "parallel_coordinates.png", "importances.png", "learning_curves.png"} <= plots
    assert not list(params.tune.work_dir.rglob("last.pt")), "finished trials leave no training state"

    # one MLflow run for the study, one nested run per trial with its settings and state
    parent = mlflow.get_run(study.user_attrs["telly.mlflow_run_id"])
    assert parent.data.tags["optuna.study"] == TASK
    assert parent.data.metrics["best_valid_score"] == pytest.approx(best["valid_score"])
    children = mlflow.search_runs(
        experiment_ids=[parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
        output_format="list",
    )
    assert len(children) == 10
    by_trial = {int(r.data.tags["optuna.trial"]): r for r in children}
    first = by_trial[0]
    assert first.data.params["variant"] == "base" and first.data.tags["optuna.state"] == "COMPLETE"
    assert first.data.metrics["valid_score"] == pytest.approx(study.trials[0].value)
    assert study.trials[0].user_attrs["mlflow_run_id"] == first.info.run_id


def test_median_pruner_stops_poor_trials_at_an_epoch(tmp_path, raw_params, tracking):
    params, _ = make_params(raw_params, tmp_path, n_trials=10, epochs=[4], startup_trials=2, warmup_epochs=0)
    tune(params, TASK, train_fn=fake_train, layers=LAYERS)
    study = _study(params)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(pruned) + len(complete) == 10 and pruned
    for t in pruned:  # pruned before its last epoch, below the median of earlier complete trials at that epoch
        last = max(t.intermediate_values)
        assert last < 4
        earlier = [u.intermediate_values[last] for u in complete if u.number < t.number]
        assert len(earlier) >= 2 and t.intermediate_values[last] < statistics.median(earlier)
    assert study.best_trial.intermediate_values[4] == pytest.approx(study.best_value)


def test_failing_trials_are_recorded_and_the_study_goes_on(tmp_path, raw_params, tracking):
    params, _ = make_params(raw_params, tmp_path, n_trials=5, pruner="none", max_failed_trials=3)
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        if len(calls) == 4:
            kwargs["on_epoch"](1, {"epoch": 1, "train_loss": float("nan"), "valid_score": 0.1})
        return fake_train(*args, **kwargs)

    summary = tune(params, TASK, train_fn=flaky, layers=LAYERS)
    study = _study(params)
    assert [s.name for s in _states(study)] == [
        "COMPLETE",
        "FAIL",
        "COMPLETE",
        "FAIL",
        "COMPLETE",
        "COMPLETE",
        "COMPLETE",
    ]
    assert summary["trials"]["fail"] == 2 and summary["trials"]["complete"] == 5
    failed_run = mlflow.get_run(study.trials[1].user_attrs["mlflow_run_id"])
    assert failed_run.data.tags["optuna.state"] == "FAIL"
    assert "OutOfMemoryError" in failed_run.data.tags["optuna.reason"]
    assert "NonFiniteScore" in mlflow.get_run(study.trials[3].user_attrs["mlflow_run_id"]).data.tags["optuna.reason"]


def test_too_many_failures_end_the_session_with_a_clear_error(tmp_path, raw_params, tracking):
    params, _ = make_params(raw_params, tmp_path, n_trials=5, max_failed_trials=2)

    def diverges(params, task, variant, **kwargs):  # every score is NaN
        return fake_train(override(params, task, learning_rate=float("nan")), task, variant, **kwargs)

    with pytest.raises(TellyError, match="no trial completed"):
        tune(params, TASK, train_fn=diverges, layers=LAYERS)
    study = _study(params)
    assert _states(study) == [TrialState.FAIL, TrialState.FAIL]
    assert json.loads((params.tune.results_dir / f"{TASK}.json").read_text())["best"] is None


def test_a_rerun_continues_the_study_up_to_n_trials(tmp_path, raw_params, tracking):
    params, raw = make_params(raw_params, tmp_path, n_trials=3, pruner="none")
    tune(params, TASK, train_fn=fake_train, layers=LAYERS)
    run_id = _study(params).user_attrs["telly.mlflow_run_id"]
    tune(params, TASK, train_fn=fake_train, layers=LAYERS)  # already at n_trials: nothing to do
    assert len(_study(params).trials) == 3

    raw["tune"]["n_trials"] = 5  # the budget is not part of the search space
    summary = tune(parse_params(raw), TASK, train_fn=fake_train, layers=LAYERS)
    study = _study(params)
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]
    assert summary["trials"]["complete"] == 5
    assert study.user_attrs["telly.mlflow_run_id"] == run_id  # all sessions log under the study's run
    children = mlflow.search_runs(
        filter_string=f"tags.mlflow.parentRunId = '{run_id}'",
        experiment_ids=[mlflow.get_run(run_id).info.experiment_id],
        output_format="list",
    )
    assert len(children) == 5


def test_a_study_name_reused_with_another_search_space_is_an_error(tmp_path, raw_params, tracking):
    params, raw = make_params(raw_params, tmp_path, n_trials=1)
    tune(params, TASK, train_fn=fake_train, layers=LAYERS)
    raw["tune"]["lr_max"] = 1e-3
    with pytest.raises(SearchSpaceMismatch) as err:
        tune(parse_params(raw), TASK, train_fn=fake_train, layers=LAYERS)
    message = str(err.value)
    assert "'code_search'" in message and "lr: [1e-06, 0.01] -> [1e-06, 0.001]" in message
    assert "tune.study_name" in message
    with pytest.raises(SearchSpaceMismatch, match=r"k: \[-1, 3\] -> \[-1, 5\]"):  # another model depth
        tune(params, TASK, train_fn=fake_train, layers=6)
    raw["tune"]["lr_max"], raw["tune"]["study_name"] = 1e-3, "{task}-v2"  # a new name starts a new study
    assert tune(parse_params(raw), TASK, train_fn=fake_train, layers=LAYERS)["study_name"] == "code_search-v2"


def test_a_new_model_or_new_data_starts_a_new_study_under_the_inputs_fingerprint(tmp_path, raw_params, tracking):
    params, raw = make_params(raw_params, tmp_path, n_trials=2, study_name="{task}-{inputs}")
    model, data = tmp_path / "model", tmp_path / "tasks" / TASK
    model.mkdir()
    data.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"weights of model one")
    (data / "train.jsonl").write_text('{"code": "def f(): pass"}\n')
    first = tune(params, TASK, train_fn=fake_train, layers=LAYERS)
    assert first["study_name"].startswith("code_search-") and len(first["study_name"]) == len("code_search-") + 8
    assert tune(params, TASK, train_fn=fake_train, layers=LAYERS)["study_name"] == first["study_name"]  # same inputs

    (model / "model.safetensors").write_bytes(b"weights of model two")  # the model was pre-trained again
    second = tune(params, TASK, train_fn=fake_train, layers=LAYERS)
    assert second["study_name"] != first["study_name"]
    assert second["trials"]["complete"] == 2  # its own trials, none of the old model's
    (data / "train.jsonl").write_text('{"code": "def g(): pass"}\n')
    raw["finetune"]["tasks"][TASK]["epochs"] = 3
    third = tune(parse_params(raw), TASK, train_fn=fake_train, layers=LAYERS)
    assert len({first["study_name"], second["study_name"], third["study_name"]}) == 3
    names = {s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{params.tune.results_dir / TASK}.db")}
    assert {first["study_name"], second["study_name"], third["study_name"]} <= names  # the old studies are kept


def test_multi_objective_reports_the_pareto_front(tmp_path, raw_params, tracking):
    params, _ = make_params(raw_params, tmp_path, n_trials=10, objectives=["valid_score", "trainable_params"])
    summary = tune(params, TASK, train_fn=fake_train, layers=LAYERS)
    study = _study(params)
    assert len(study.directions) == 2
    assert _states(study).count(TrialState.COMPLETE) == 10  # multi-objective trials are never pruned
    points = [(t.values[0], t.values[1]) for t in study.trials]
    front = summary["pareto_front"]
    assert front
    for row in front:  # nothing beats a front point on both objectives
        s, c = row["valid_score"], row["trainable_params"]
        assert not any(s2 >= s and c2 <= c and (s2, c2) != (s, c) for s2, c2 in points)
    assert summary["best"]["valid_score"] == pytest.approx(max(p[0] for p in points))
    assert (params.tune.results_dir / TASK / "pareto_front.png").exists()


def test_tune_settings_are_validated(tmp_path, raw_params):
    _, raw = make_params(raw_params, tmp_path)
    raw["tune"]["objectives"] = ["trainable_params", "valid_score"]
    raw["tune"]["lr_max"] = raw["tune"]["lr_min"] / 2
    raw["tune"]["study_name"] = "fixed"
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    message = str(err.value)
    assert "tune.objectives" in message and "tune.lr_max" in message and "tune.study_name" in message


def test_storage_urls_never_show_a_password():
    from telly.runtime import repo_root
    from telly.tuning.study import printable

    assert (
        printable("postgresql://optuna:s3cret@db-host:5432/studies") == "postgresql://optuna:***@db-host:5432/studies"
    )
    assert printable("sqlite:////elsewhere/code_search.db") == "sqlite:////elsewhere/code_search.db"
    inside = repo_root() / "results/tune/code_search.db"  # the JSON is committed: no machine's path in it
    assert printable(f"sqlite:///{inside}") == "sqlite:///results/tune/code_search.db"


def test_cli_names_an_unknown_task(tmp_path, raw_params):
    _, raw = make_params(raw_params, tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    proc = subprocess.run(
        [sys.executable, "-m", "telly", "tune", "code_review", "--params", str(tmp_path / "params.yaml")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "unknown task 'code_review'" in proc.stderr and "Traceback" not in proc.stderr


def test_repeats_of_the_default_setting_measure_the_objective_spread(tmp_path, raw_params, tracking):
    params, _ = make_params(raw_params, tmp_path, n_trials=6, repeats=2, pruner="median", warmup_epochs=0)
    summary = tune(params, TASK, train_fn=fake_train, layers=LAYERS)
    study = _study(params)
    repeats = [t for t in study.trials if "repeat" in t.user_attrs]
    assert [t.user_attrs["seed"] for t in repeats] == [7, 8, 9]  # finetune.seeds [7, 8], then first + 2
    assert all(t.params == {"k": -1, "lr": 1e-4} and t.state == TrialState.COMPLETE for t in repeats)
    rep = summary["repeats"]
    assert rep["n"] == 3 and rep["seeds"] == [7, 8, 9] and rep["variant"] == "base"
    assert rep["valid_scores"] == pytest.approx([t.value for t in repeats])
    assert rep["range"] == pytest.approx(0.002) and rep["std"] == pytest.approx(0.001)  # fake_train: -0.001 per seed
    assert rep["best_above_mean_in_std"] == pytest.approx((summary["best"]["valid_score"] - rep["mean"]) / rep["std"])


def test_plots_logged_to_mlflow_leave_out_another_workers_half_written_files(tmp_path):
    """Workers of one study plot into one folder, each through a hidden temporary file that it renames into
    place: logging the folder whole raced with those renames (FileNotFoundError on a vanished .tmp.png)."""
    from telly.tuning.run import finished_plots

    folder = tmp_path / "code_search"
    folder.mkdir()
    for name in ("history.png", "importances.png", ".history.png.k2x9.tmp.png", "trials.txt"):
        (folder / name).write_bytes(b"x")
    assert [p.name for p in finished_plots(folder)] == ["history.png", "importances.png"]
    assert finished_plots(tmp_path / "missing") == []
