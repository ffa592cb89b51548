"""The frozen-prefix cache: reduced precision, memory-mapped, deduplicated, shared between runs, budgeted."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from finetune_fixture import make_setup
from telly.config import parse_params
from telly.finetuning.caching import CacheSettings, HiddenCache, build_caches
from telly.finetuning.data import Tokens, collate, make_example
from telly.finetuning.heads import TaskModel
from telly.finetuning.train import override, train_variant
from telly.models.loading import load_encoder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import yaml

    from conftest import REPO

    root = tmp_path_factory.mktemp("cache")
    params, raw = make_setup(root, yaml.safe_load((REPO / "params.yaml").read_text()))
    return root, params, raw


@pytest.fixture
def encoder(setup):
    return load_encoder(setup[1].finetune.model, device="cpu")


def clone_examples(encoder, codes):
    tok = Tokens.of(encoder.tokenizer)
    rows = [{"code1": a, "code2": b, "label": 1} for a, b in codes]
    return [make_example("clone_detection", r, encoder.tokenizer, tok, 24, 8) for r in rows], tok


def test_identical_sequences_are_stored_once_and_read_back_per_field(encoder, tmp_path):
    examples, tok = clone_examples(encoder, [("def a(): pass", "def b(): pass"), ("def b(): pass", "x = 1")] * 3)
    caches = build_caches(
        encoder.model, 1, {"train": examples}, ("code1", "code2"), tok.pad, 4, CacheSettings("float32", tmp_path)
    )
    code1, code2 = caches.get("train")["code1"], caches.get("train")["code2"]
    assert len(code1) == len(code2) == 6
    distinct = {ex[f] for ex in examples for f in ("code1", "code2")}
    stored = code1.flat.shape[0]
    assert stored == sum(len(s.ids) for s in distinct)  # 3 functions, not 12 sequences
    assert torch.equal(code1[1], code2[0])  # "def b" in both fields: one copy
    fresh = HiddenCache.build(encoder.model, [ex["code2"] for ex in examples], 1, tok.pad, batch_size=1)
    for i in range(6):
        assert torch.allclose(code2[i], fresh[i], atol=1e-5)  # other batches, other padding: rounding


def test_published_once_reused_by_the_next_run_and_keyed_by_k_and_weights(encoder, tmp_path):
    examples, tok = clone_examples(encoder, [("def a(): pass", "def b(): pass"), ("y = 2", "x = 1")])
    settings = CacheSettings("float16", tmp_path)

    def build(k=1):
        return build_caches(encoder.model, k, {"train": examples}, ("code1", "code2"), tok.pad, 4, settings)

    first, second = build(), build()
    assert (first.built, first.reused) == (1, 0) and (second.built, second.reused) == (0, 1)
    assert first.get("train")["code1"].flat.dtype == torch.float16
    assert torch.equal(first.get("train")["code2"][1], second.get("train")["code2"][1])
    published = [p.name for p in (tmp_path / "hidden").iterdir()]
    assert len(published) == 1 and not any(".tmp-" in n for n in published)  # tmp renamed into place
    assert build(k=0).built == 1  # another K: another cache
    with torch.no_grad():
        encoder.model.embeddings.word_embeddings.weight[5] += 1.0  # other frozen weights: another cache
    assert build().built == 1
    assert len(list((tmp_path / "hidden").iterdir())) == 3


@pytest.mark.parametrize("damage", ["flip", "truncate", "offsets", "meta"])
def test_a_damaged_cache_is_rebuilt_with_one_warning_never_reused(encoder, tmp_path, caplog, monkeypatch, damage):
    from telly.finetuning import caching

    monkeypatch.setattr(caching, "BLOCK_BYTES", 256)  # several blocks even for this tiny cache
    examples, tok = clone_examples(encoder, [("def a(): pass", "def b(): pass"), ("y = 2", "x = 1")] * 2)
    settings = CacheSettings("float32", tmp_path)

    def build():
        return build_caches(encoder.model, 1, {"train": examples}, ("code1", "code2"), tok.pad, 4, settings)

    first = build()
    reference = first.get("train")["code1"].flat.clone()
    (folder,) = (tmp_path / "hidden").iterdir()
    hidden = folder / "hidden.bin"
    data = bytearray(hidden.read_bytes())
    assert len(data) > 4 * 256
    middle = len(data) // 2
    if damage == "flip":
        data[middle : middle + 256] = bytes(b ^ 0xFF for b in data[middle : middle + 256])
        hidden.write_bytes(data)
    elif damage == "truncate":
        hidden.write_bytes(data[:middle])
    elif damage == "offsets":
        (folder / "offsets.npy").write_bytes((folder / "offsets.npy").read_bytes()[:-8] + bytes(8))
    else:
        (folder / "meta.json").write_text("{")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = build()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "rebuilding" in warnings[0]
    assert str(folder) in warnings[0]
    expected = {
        "flip": f"hidden.bin: checksum mismatch in {len({(middle + i) // 256 for i in range(256)})} block(s), "
        f"the first at byte {middle // 256 * 256}",
        "truncate": f"hidden.bin: {middle} bytes, expected {len(data)}",
        "offsets": "offsets.npy: checksum mismatch",
        "meta": "meta.json: ",
    }[damage]
    assert expected in warnings[0]
    assert (again.built, again.reused) == (1, 0)
    assert torch.equal(again.get("train")["code1"].flat, reference)
    assert [p.name for p in (tmp_path / "hidden").iterdir()] == [folder.name]  # the damaged copy is gone
    assert build().reused == 1  # the rebuilt cache passes its check


def test_over_budget_falls_back_to_uncached_with_one_warning(setup, encoder, tracking_env, tmp_path, caplog):
    examples, tok = clone_examples(encoder, [("def a(): pass", "def b(): pass")] * 2)
    with caplog.at_level(logging.WARNING):
        none = build_caches(
            encoder.model, 1, {"train": examples}, ("code1",), tok.pad, 4, CacheSettings(budget_gb=1e-9)
        )
    assert none is None
    assert [r.message for r in caplog.records if r.levelno == logging.WARNING][0].startswith(
        "frozen-prefix cache needs"
    )
    _, _, raw = setup
    raw = copy.deepcopy(raw)
    raw["finetune"]["cache_budget_gb"] = 1e-9
    params = override(parse_params(raw), "code_search", epochs=1)
    result = train_variant(params, "code_search", "telly-1", output_dir=tmp_path / "o")
    assert result.settings["cache_frozen"] is False and result.cost["cache_bytes"] == 0


# Measured on this 2-layer, 32-wide model (values up to ~3.1): top-layer error of fp16 9.1e-4, bf16 8.2e-3;
# 3-epoch loss trajectories vs the fp32 cache: relative difference <= 2.1e-5 (fp16), <= 3.3e-4 (bf16),
# test metrics identical (docs/benchmarks.md). The bounds below leave ~2-5x room.
TOLERANCE = {"float16": (3e-3, 1e-4), "bfloat16": (3e-2, 2e-3)}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_reduced_precision_cache_matches_the_uncached_eval_mode_run(setup, encoder, tracking_env, tmp_path, dtype):
    top_bound, loss_bound = TOLERANCE[dtype]
    tok = Tokens.of(encoder.tokenizer)
    rows = [{"source": s, "target": "return a"} for s in ("add two numbers", "a longer description of code", "x")]
    examples = [make_example("code_generation", r, encoder.tokenizer, tok, 20, 8) for r in rows]
    seqs = [ex["seq"] for ex in examples]
    model = TaskModel(encoder.model, "code_generation", 1).eval()
    batch = collate(seqs, tok.pad)
    real = torch.arange(batch["ids"].shape[1])[None] < batch["lengths"][:, None]
    cache = build_caches(encoder.model, 1, {"train": examples}, ("seq",), tok.pad, 2, CacheSettings(dtype))
    with torch.no_grad():
        uncached = model.last_hidden(batch)  # eval mode: the whole encoder, no dropout
        cached = model.last_hidden(collate(seqs, tok.pad, [cache.get("train")["seq"][i] for i in range(3)]))
    error = (cached - uncached)[real].abs().max().item()
    assert 0 < error < top_bound  # rounding, and only rounding

    _, _, raw = setup
    runs = {}
    for name in ("float32", dtype):
        r = copy.deepcopy(raw)
        r["finetune"]["cache_dtype"] = name
        runs[name] = train_variant(
            parse_params(r),
            "code_search",
            "telly-1",
            output_dir=tmp_path / name,
            results_path=tmp_path / f"{name}.json",
        )
    exact = [e["train_loss"] for e in runs["float32"].epochs]
    rounded = [e["train_loss"] for e in runs[dtype].epochs]
    assert max(abs(a - b) / abs(a) for a, b in zip(exact, rounded)) < loss_bound
    assert runs[dtype].test == pytest.approx(runs["float32"].test, abs=1e-6)
