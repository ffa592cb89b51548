"""The paper-scale profile (profiles/paper-unixcoder.yaml) is a valid params file for UniXcoder-base."""

from __future__ import annotations

from conftest import REPO
from telly.config import RealData, load_params

PROFILE = REPO / "profiles" / "paper-unixcoder.yaml"


def test_paper_profile_is_valid_and_targets_unixcoder_on_real_data():
    p = load_params(PROFILE)
    assert p.finetune_model == "microsoft/unixcoder-base"
    assert p.model.device == p.finetune.device == "cuda"
    # Base and every Telly-K of the 12-layer model, with and without caching
    every = p.finetune.variants + p.finetune.deep_variants  # deep: K > L/2, the first seed only
    assert every == ["base"] + [f"telly-{k}" for k in range(12)] and p.finetune.variants[-1] == "telly-6"
    assert p.report.paper_regime.variants == every[1:]
    assert p.report.paper_regime.tasks == p.finetune.task_names == p.similarity.tasks
    # every task and probing set reads the paper's dataset, not the corpus stand-in
    for name in (
        "lexical",
        "syntactic",
        "structural",
        "semantic",
        "code_search",
        "clone_detection",
        "code_summarization",
        "code_generation",
        "line_completion",
    ):
        assert isinstance(getattr(p.tasks, name).source, RealData), name
    # the paper's RSA recipe and downstream hyper-parameters (telly-paper.md sections 2 and 4)
    assert (p.similarity.num_samples, p.similarity.max_length, p.similarity.pooling) == (5000, 256, "mean_unmasked")
    search = p.finetune.tasks.code_search
    assert (search.batch_size, search.learning_rate, search.max_source_length, search.max_target_length) == (
        128,
        2e-5,
        256,
        128,
    )
    assert p.finetune.tasks.code_generation.epochs == 30 and p.finetune.seeds[0] == 123456


def test_paper_profile_inputs_fit_unixcoder_positions():
    p = load_params(PROFILE)
    for name in p.finetune.task_names:
        cfg = getattr(p.finetune.tasks, name)
        # UniXcoder embeds 1,026 positions (1,024 usable with RoBERTa's offset); mode prefixes add up to 5 tokens
        assert cfg.max_source_length + cfg.max_target_length + 5 <= 1024, name
