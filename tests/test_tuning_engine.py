"""The tune stage on the real fine-tuning engine (a 2-layer model, tiny data)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from telly.config import parse_params
from telly.tuning import tune
from tuning_fixture import TASK, make_params, required_sections


def test_tune_runs_the_real_fine_tuning_engine(tmp_path, raw_params, tracking_env):
    """Two trials of the real trainer on a tiny model: scores come from training, not from the stand-in."""
    finetune_fixture = pytest.importorskip("finetune_fixture")
    ft_params, ft_raw = finetune_fixture.make_setup(tmp_path, required_sections(raw_params))
    params, _ = make_params(
        ft_raw, tmp_path, finetune=ft_raw["finetune"], n_trials=2, epochs=[2], lr_min=1e-4, lr_max=1e-2, test_size=4
    )
    summary = tune(params, TASK, layers=None)  # the real train_variant, L read from the model
    assert summary["search_space"]["k"] == [-1, 1]  # the tiny model has 2 layers
    study = optuna.load_study(study_name=TASK, storage=f"sqlite:///{params.tune.results_dir / TASK}.db")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    for t in study.trials:
        assert 0.0 <= t.value <= 1.0  # validation MRR
        assert sorted(t.intermediate_values) == [1, 2]
        assert t.user_attrs["trainable_params"] > 0
    assert not list(Path(params.tune.work_dir).rglob("*.pt")), "trial state is cleaned up"
    assert not Path(ft_params.finetune.checkpoint_dir).exists(), "trials never touch the finetune stage's state"
    assert parse_params(ft_raw).finetune == ft_params.finetune
