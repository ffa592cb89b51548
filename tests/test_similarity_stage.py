"""The similarity stage end to end on a tiny encoder: represent, score, write, suggest."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model_fixture import make_tiny_roberta
from telly.config import parse_params
from telly.errors import TellyError
from telly.jsonl import write_jsonl
from telly.similarity.represent import represent
from telly.similarity.stage import plan, run

N = 24


def _finetuned(src, dst, layers_to_change, seed):
    """A stand-in for a fine-tuned checkpoint: the same weights, chosen layers perturbed."""
    from transformers import AutoModel, AutoTokenizer

    AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    model = AutoModel.from_pretrained(src)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i in layers_to_change:
            for p in model.encoder.layer[i].parameters():
                p.add_(torch.randn(p.shape, generator=gen) * 0.5)
    model.save_pretrained(dst)


@pytest.fixture
def workspace(tmp_path, monkeypatch, raw_params, tracking_env):
    monkeypatch.chdir(tmp_path)
    tiny = make_tiny_roberta(tmp_path / "models" / "pretrained")
    # code search: only the top layer (hidden state 2) changes; clone detection: both layers.
    _finetuned(tiny, tmp_path / "models/finetuned/code_search/base/seed123456", [1], seed=1)
    _finetuned(tiny, tmp_path / "models/finetuned/clone_detection/base/seed123456", [0, 1], seed=2)
    rng = np.random.default_rng(0)
    words = ["def", "return", "self", "x", "(", ")", ":", "+", "items", "append", "for", "in", "range", "print"]
    rows = [{"id": f"f{i}", "code_tokens": list(rng.choice(words, size=rng.integers(3, 20)))} for i in range(N + 5)]
    write_jsonl(tmp_path / "data/corpus/python/train.jsonl", rows)
    raw_params["data"]["corpus_dir"] = "data/corpus"
    raw_params["model"]["name_or_path"] = "models/pretrained"
    raw_params["similarity"].update(
        num_samples=N,
        max_length=32,
        batch_size=8,
        tasks=["code_search", "clone_detection"],
        rsa_bootstrap_rounds=3,
        bootstrap_rounds=10,
        pooling="mean_unmasked",
        suggest_threshold=0.95,
        change_threshold=0.95,
    )
    return parse_params(raw_params)


def test_stage_scores_each_hidden_state_and_suggests_k(workspace, tmp_path, capsys):
    params = workspace
    for tag in ("pretrained", "random", "finetuned-code_search-base", "finetuned-clone_detection-base"):
        represent(params, tag)
    summary = run(params)
    out = tmp_path / "results/similarity"
    for name in (
        "table.csv",
        "table.md",
        "table.json",
        "metrics.json",
        "suggested_k.json",
        "similarity.png",
        "plots/rsa_spearman.csv",
        "plots/cka.csv",
    ):
        assert (out / name).stat().st_size > 0, name

    rows = json.loads((out / "table.json").read_text())
    assert len(rows) == 3 * 3  # (2 tasks + random) x (L + 1 = 3 hidden states)
    by = {(r["kind"], r["task"], r["hidden_state"]): r for r in rows}
    search = [by[("finetuned", "code_search", h)] for h in range(3)]
    # Unchanged hidden states are identical: every score says so.
    for r in search[:2]:
        assert r["rsa_spearman"] == pytest.approx(1.0) and r["rsa_pearson"] == pytest.approx(1.0)
        assert r["cka"] == pytest.approx(1.0) and r["procrustes"] == pytest.approx(0.0, abs=1e-9)
    assert search[2]["rsa_spearman"] < 0.95 and search[2]["cka"] < 0.99
    assert search[2]["rsa_spearman_ci_low"] <= search[2]["rsa_spearman_ci_high"]
    clone = [by[("finetuned", "clone_detection", h)] for h in range(3)]
    assert clone[0]["rsa_spearman"] == pytest.approx(1.0) and clone[1]["rsa_spearman"] < 0.95

    assert summary["code_search"]["suggested_k"] == 1  # h0, h1 kept; capped at L - 1
    assert summary["clone_detection"]["suggested_k"] == 0  # only the embeddings kept
    assert summary["code_search"]["top_two_only"] and summary["code_search"]["most_changed"][0] == 2
    suggested = json.loads((out / "suggested_k.json").read_text())
    assert suggested["code_search"]["suggested_k"] == 1 and len(suggested["code_search"]["curve"]) == 3
    assert suggested["code_search"]["top_two_layers_claim"].startswith("holds")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["code_search"]["cka"]["h0"] == pytest.approx(1.0) and "random" in metrics
    plot = (out / "plots/rsa_spearman.csv").read_text().splitlines()
    assert plot[0] == "hidden_state,code_search,clone_detection,random" and len(plot) == 4
    md = (out / "table.md").read_text()
    assert "| h | code_search | clone_detection | random |" in md
    printed = capsys.readouterr().out
    assert "code_search" in printed and "suggested K = 1" in printed and "claim holds for" in printed

    import mlflow

    runs = mlflow.search_runs(experiment_names=["telly-similarity"], output_format="list")
    assert len(runs) == 1 and runs[0].data.metrics["suggested_k.code_search"] == 1
    curve = mlflow.MlflowClient().get_metric_history(runs[0].info.run_id, "rsa_spearman.clone_detection")
    assert [m.step for m in curve] == [0, 1, 2]  # step = hidden state

    # The real-token mean (beyond the paper) works on the same extraction.
    masked = params.model_copy(update={"similarity": params.similarity.model_copy(update={"pooling": "mean"})})
    run(masked, out=tmp_path / "masked")
    rows_masked = json.loads((tmp_path / "masked/table.json").read_text())
    unchanged = [r for r in rows_masked if r["task"] == "code_search" and r["hidden_state"] < 2]
    assert [r["cka"] for r in unchanged] == pytest.approx([1.0, 1.0])
    assert rows_masked != rows


def test_missing_inputs_are_named(workspace):
    params = workspace
    with pytest.raises(
        TellyError, match=r"data/representations/rsa/pretrained: no representations.*represent pretrained"
    ):
        run(params)
    bad = params.model_copy(update={"similarity": params.similarity.model_copy(update={"tasks": ["code_generation"]})})
    with pytest.raises(TellyError, match=r"models/finetuned/code_generation/base/seed123456: no fine-tuned checkpoint"):
        represent(bad, "finetuned-code_generation-base")
    with pytest.raises(TellyError, match="model tag 'finetuned'"):
        represent(params, "finetuned")


def test_a_checkpoint_without_its_tokenizer_is_caught(workspace, tmp_path):
    params = workspace
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "models/finetuned/code_search/base/seed123456" / name).unlink(missing_ok=True)
    # Caught when the checkpoint is loaded, before any representation is written for it.
    with pytest.raises(TellyError, match=r"models/finetuned/code_search/base/seed123456.*has no tokenizer"):
        represent(params, "finetuned-code_search-base")
    assert not (tmp_path / "data/representations/rsa/finetuned-code_search-base").exists()


def test_representations_of_differently_tokenized_inputs_are_refused(workspace, tmp_path):
    """A checkpoint saved with another tokenizer that still fits its embeddings: the token counts differ."""
    params = workspace
    folders = {
        tag: represent(params, tag)
        for tag in ("pretrained", "random", "finetuned-code_search-base", "finetuned-clone_detection-base")
    }
    meta_file = folders["finetuned-code_search-base"] / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["tokens"] += 1
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(TellyError, match="tokenizer saved with the checkpoint"):
        run(params)


def test_seed_baseline_is_planned_and_its_absence_explained(workspace, tmp_path):
    params = workspace
    sp = params.similarity.model_copy(update={"seed_variant": "base-seed2"})
    kinds = [(c.kind, c.a, c.b) for c in plan(sp)]
    assert ("seed", "pretrained", "finetuned-code_search-base-seed2") in kinds
    assert ("seed_pair", "finetuned-code_search-base", "finetuned-code_search-base-seed2") in kinds
    for tag in ("pretrained", "random", "finetuned-code_search-base", "finetuned-clone_detection-base"):
        represent(params, tag)
    with_seed = params.model_copy(update={"similarity": sp})
    with pytest.raises(TellyError, match=r"models/finetuned/<task>/<variant>/seed<S>/.*seed_variant: null"):
        run(with_seed)

    # Once the finetune stage has written the second seeds, both baselines appear.
    tiny = tmp_path / "models/pretrained"
    _finetuned(tiny, tmp_path / "models/finetuned/code_search/base/seed2", [1], seed=3)
    _finetuned(tiny, tmp_path / "models/finetuned/clone_detection/base/seed2", [0, 1], seed=4)
    for task in ("code_search", "clone_detection"):
        represent(with_seed, f"finetuned-{task}-base-seed2")
    run(with_seed)
    rows = json.loads((tmp_path / "results/similarity/table.json").read_text())
    pair = {r["hidden_state"]: r for r in rows if r["kind"] == "seed_pair" and r["task"] == "code_search"}
    assert pair[0]["cka"] == pytest.approx(1.0) and pair[2]["cka"] < 0.99  # two seeds differ only on top
    header = (tmp_path / "results/similarity/plots/cka.csv").read_text().splitlines()[0]
    assert header == (
        "hidden_state,code_search,clone_detection,random,seed_code_search,seed_clone_detection,"
        "seed_pair_code_search,seed_pair_clone_detection"
    )
