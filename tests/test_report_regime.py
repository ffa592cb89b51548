"""Paper-regime runs (no frozen-prefix caching) for the report's second RQ3 table, on a tiny model."""

from __future__ import annotations

import json

import pytest

from finetune_fixture import make_setup
from telly.config import parse_params
from telly.errors import TellyError
from telly.finetuning.regime import run_paper_regime
from telly.reporting.inputs import read_regimes


@pytest.fixture
def setup(tmp_path, raw_params, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, raw = make_setup(tmp_path, raw_params, n_train=8, epochs=1)
    raw["report"]["paper_regime"] = {
        "tasks": ["clone_detection"],
        "variants": ["telly-1"],
        "results_dir": str(tmp_path / "paper-regime"),
    }
    return parse_params(raw)


def test_paper_regime_run_is_uncached_and_joins_the_cached_base(setup, tmp_path):
    from telly.finetuning.train import train_variant

    train_variant(setup, "clone_detection", "base")
    train_variant(setup, "clone_detection", "telly-1")
    path = run_paper_regime(setup, "clone_detection", "telly-1")
    result = json.loads(path.read_text())
    assert path == tmp_path / "paper-regime/clone_detection/telly-1.json"
    assert result["settings"]["cache_frozen"] is False and result["cost"]["cache_seconds"] == 0
    assert not (tmp_path / "checkpoints/paper-regime/models/clone_detection/telly-1").exists()  # weights not kept
    regimes, missing = read_regimes(setup)
    assert [r.cached for r in regimes] == [True, False] and "rq3-paper-regime" not in missing
    assert [r["variant"] for r in regimes[1].runs["clone_detection"]] == ["base", "telly-1"]  # Base is shared


def test_paper_regime_refuses_what_params_do_not_list(setup):
    with pytest.raises(TellyError, match="not in tasks"):
        run_paper_regime(setup, "code_search", "telly-1")


def test_paper_regime_variants_must_be_telly_k(raw_params):
    raw_params["report"]["paper_regime"]["variants"] = ["base", "telly-1"]
    with pytest.raises(TellyError, match="report.paper_regime.variants"):
        parse_params(raw_params)
