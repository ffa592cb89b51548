"""Optuna with the fine-tuning method in the search space (tune.methods), on the stand-in trainer."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.trial import FixedTrial

from telly import variants
from telly.config import ConfigError
from telly.tuning import tune
from telly.tuning.objective import trial_params
from telly.tuning.space import SearchSpace
from tuning_fixture import LAYERS, TASK, fake_train, make_params


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """One throw-away MLflow store for the module (creating one costs seconds)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}")
        yield


def _space(raw_params, tmp_path, **tune):
    params, _ = make_params(raw_params, tmp_path, **tune)
    return params, SearchSpace.of(params, TASK, LAYERS)


def test_method_choice_maps_to_variant_names(raw_params, tmp_path):
    _, alone = _space(raw_params, tmp_path, methods=["lora-r8", "bitfit"])
    assert alone.suggest(FixedTrial({"method": "lora-r8", "lr": 1e-3})).variant == "lora-r8"  # K not searched
    assert alone.suggest(FixedTrial({"method": "none", "k": 2, "lr": 1e-3})).variant == "telly-2"
    assert alone.suggest(FixedTrial({"method": "none", "k": -1, "lr": 1e-3})).variant == "base"
    _, combined = _space(raw_params, tmp_path, methods=["lora-r8"], combine_methods=True)
    assert combined.suggest(FixedTrial({"method": "lora-r8", "k": 2, "lr": 1e-3})).variant == "telly-2+lora-r8"
    assert combined.suggest(FixedTrial({"method": "lora-r8", "k": -1, "lr": 1e-3})).variant == "lora-r8"
    assert combined.describe()["method"] == ["none", "lora-r8"] and combined.describe()["combine_methods"]
    _, plain = _space(raw_params, tmp_path)
    assert "method" not in plain.describe() and "lora_alpha" not in plain.fixed  # older studies' spaces unchanged


def test_tune_methods_are_validated(raw_params, tmp_path):
    for bad in (["telly-2+lora-r8"], ["lora"], ["base"]):
        with pytest.raises(ConfigError, match="methods"):
            make_params(raw_params, tmp_path, methods=bad)


def test_a_trial_learns_at_the_searched_rate(raw_params, tmp_path):
    params, _ = make_params(raw_params, tmp_path, methods=["lora-r8"])
    params = params.model_copy(
        update={
            "finetune": params.finetune.model_copy(
                update={"peft": params.finetune.peft.model_copy(update={"learning_rate_scale": 10.0})}
            )
        }
    )
    _, space = _space(raw_params, tmp_path, methods=["lora-r8"])
    choice = space.suggest(FixedTrial({"method": "lora-r8", "lr": 3e-4}))
    trial = trial_params(params, TASK, choice, tmp_path / "work")
    assert trial.finetune.peft.learning_rate_scale == 1.0 and trial.finetune.tasks.code_search.learning_rate == 3e-4


def test_study_searches_method_k_and_lr_multi_objective(raw_params, tmp_path, tracking):
    seen = []

    def recording(params, task, variant, **kwargs):
        seen.append(variant)
        return fake_train(params, task, variant, **kwargs)

    params, _ = make_params(
        raw_params,
        tmp_path,
        n_trials=6,
        pruner="none",
        startup_trials=6,
        methods=["lora-r8", "bitfit"],
        combine_methods=True,
        objectives=["valid_score", "epoch_seconds"],
    )
    summary = tune(params, TASK, train_fn=recording, layers=LAYERS)
    study = optuna.load_study(study_name=TASK, storage=f"sqlite:///{params.tune.results_dir / f'{TASK}.db'}")
    assert study.trials[0].params == {"method": "none", "k": -1, "lr": 1e-4}  # the reference: Base
    assert {variants.parse(v).method for v in seen} > {None}  # methods were tried beside Telly-K
    assert any(variants.parse(v).k is not None and variants.parse(v).method for v in seen), seen  # combined
    written = json.loads((params.tune.results_dir / f"{TASK}.json").read_text())
    assert written["best"]["variant"] in seen and "method" in written["best"]
    assert written["pareto_front"] and all("epoch_seconds" in r for r in written["pareto_front"])
    assert summary["trials"]["complete"] == 6
