"""The finetune stage at the paper's shape: profiles/paper-unixcoder.yaml's lengths, batches, beams
and learning rates, a randomly initialised 12-layer, 768-wide RoBERTa (UniXcoder-base's shape),
a few rows per split, one epoch, cached Telly-K: one encoder task and one generation task."""

from __future__ import annotations

import copy

import pytest

from conftest import REPO
from finetune_fixture import task_rows
from model_fixture import CODE
from telly.config import parse_params, read_params_file
from telly.finetuning.train import train_variant
from telly.jsonl import write_jsonl

ROWS = {"train": 4, "valid": 3, "test": 3}  # 2 codes trip the ranking metrics


@pytest.fixture(scope="module")
def paper_params(tmp_path_factory):
    from transformers import RobertaConfig

    from telly.models.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("paper")
    shape = root / "unixcoder-shape"  # config + tokenizer only: `random:` builds the weights
    tokenizer = train_tokenizer(CODE * 20, vocab_size=300, max_length=1024)
    tokenizer.save_pretrained(shape)
    RobertaConfig(  # UniXcoder-base: 12 x 768, 12 heads, 3072 FFN, 1026 positions
        vocab_size=len(tokenizer),
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=1026,
        type_vocab_size=10,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    ).save_pretrained(shape)
    raw = read_params_file(REPO / "profiles" / "paper-unixcoder.yaml")
    paper = copy.deepcopy(raw["finetune"])
    for task in paper["tasks"]:
        for split, n in ROWS.items():
            write_jsonl(root / "tasks" / task / f"{split}.jsonl", task_rows(task, n))
        paper["tasks"][task].update(
            {"train_size": ROWS["train"], "valid_size": ROWS["valid"], "test_size": ROWS["test"]}
        )
        paper["tasks"][task]["epochs"] = 1
    paper.update(
        model=f"random:{shape}",
        tasks_dir=str(root / "tasks"),
        output_dir=str(root / "finetuned"),
        results_dir=str(root / "results"),
        checkpoint_dir=str(root / "checkpoints"),
        cache_dir=str(root / "cache"),
        device="cpu",
    )
    raw["finetune"] = paper
    return parse_params(raw), raw


@pytest.mark.parametrize("task", ["code_search", "code_generation"])
def test_paper_profile_finetune_runs_at_paper_shape(paper_params, task, tracking_env):
    params, raw = paper_params
    cfg = raw["finetune"]["tasks"][task]
    result = train_variant(params, task, "telly-6")
    settings = result.settings
    assert settings["architecture"].startswith("RobertaModel-L12-H768")
    assert (settings["max_source_length"], settings["max_target_length"], settings["batch_size"]) == (
        cfg["max_source_length"],
        cfg["max_target_length"],
        cfg["batch_size"],
    )
    assert settings["cache_frozen"] and result.cost["cache_bytes"] > 0
    assert result.cost["paper_params"] == 6 * 7_087_872  # the paper's (12 - K) x 7,087,872
    assert len(result.epochs) == 1 and result.test
