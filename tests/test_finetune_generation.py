"""Incremental beam search gives the reference (re-encode every step) beam search's hypotheses."""

from __future__ import annotations

import random

import pytest
import torch

from telly.finetuning.generation import beam_search, beam_search_reference, supports_incremental
from telly.finetuning.heads import TaskModel

VOCAB, PAD, EOS = 40, 1, 2


def tiny(family: str, seed: int = 0) -> TaskModel:
    """A random 2-layer encoder whose next-token distributions are peaked enough to end beams early."""
    from transformers import BertConfig, BertModel, MPNetConfig, MPNetModel, RobertaConfig, RobertaModel

    name, _, attention = family.partition("-")
    families = {
        "roberta": (RobertaConfig, RobertaModel),
        "bert": (BertConfig, BertModel),
        "mpnet": (MPNetConfig, MPNetModel),
    }
    config_class, model_class = families[name]
    config = config_class(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=80,
        pad_token_id=PAD,
        initializer_range=0.3,
        **({} if name == "mpnet" else {"type_vocab_size": 1}),
    )
    config._attn_implementation = attention or "sdpa"
    torch.manual_seed(seed)
    return TaskModel(model_class(config).eval(), "code_generation")


def prompts(seed: int, n: int, decoder_only: bool) -> tuple[list[list[int]], list[int]]:
    rng = random.Random(seed)
    out, prefixes = [], []
    for _ in range(n):
        source = [0] + [rng.randrange(3, VOCAB) for _ in range(rng.randrange(2, 12))]
        prompt = source if decoder_only else source + [EOS, 3]  # 3 stands in for <mask0>
        out.append(prompt)
        prefixes.append(0 if decoder_only else len(source) + 1)
    return out, prefixes


def reference(model: TaskModel, *args, **kwargs) -> list[list[int]]:
    """The reference's hypotheses, under SDPA: through ``TaskModel.last_hidden`` a boolean 4-D mask
    reaches eager attention unconverted (it adds 0/1, so future tokens leak), hence no eager reference."""
    config = model.encoder.config
    chosen, config._attn_implementation = config._attn_implementation, "sdpa"
    try:
        return beam_search_reference(model, *args, **kwargs)
    finally:
        config._attn_implementation = chosen


@pytest.mark.parametrize("family", ["roberta", "bert", "roberta-eager"])
@pytest.mark.parametrize("decoder_only", [False, True])
@pytest.mark.parametrize("beam_size", [1, 3, 5])
def test_incremental_beam_search_matches_reference(family, decoder_only, beam_size):
    model = tiny(family)
    assert supports_incremental(model)
    ps, prefixes = prompts(beam_size, 7, decoder_only)  # prompt lengths 4..14: padding in every batch
    stopped = cut = False
    # an end token the model never produces (-1) makes every hypothesis run to the limit
    for max_new_tokens, eos_id in ((2, EOS), (9, EOS), (9, -1)):
        kwargs = dict(beam_size=beam_size, max_new_tokens=max_new_tokens, eos_id=eos_id, pad_id=PAD, batch_size=4)
        expected = reference(model, ps, prefixes, **kwargs)
        got = beam_search(model, ps, prefixes, **kwargs)
        assert got == expected
        stopped |= any(len(g) < max_new_tokens for g in got)
        cut |= any(len(g) == max_new_tokens for g in got)
    assert stopped and cut  # both ends exercised: hypotheses ending at </s> and ones cut at the limit


def test_generated_pad_token_keeps_roberta_positions():
    """RoBERTa gives a pad token the padding position and does not count it; so must the cache."""
    model = tiny("roberta", seed=3)
    ps, prefixes = prompts(11, 3, False)
    kwargs = dict(beam_size=2, max_new_tokens=6, eos_id=EOS, pad_id=PAD)
    favourite = beam_search_reference(model, ps, prefixes, **kwargs)[0][0]
    with torch.no_grad():  # pad's (tied) embedding takes over the model's favourite token's
        words = model.encoder.embeddings.word_embeddings.weight
        words[PAD] = 1.5 * words[favourite]
    expected = beam_search_reference(model, ps, prefixes, **kwargs)
    assert any(PAD in e for e in expected)
    assert beam_search(model, ps, prefixes, **kwargs) == expected


def test_family_without_incremental_decoding_falls_back_to_reference():
    """MPNet's layers take no key/value cache: its adapter says so, and beam search re-encodes."""
    model = tiny("mpnet-eager")  # MPNet has no sdpa attention
    assert not model.adapter.incremental and not supports_incremental(model)
    assert supports_incremental(tiny("bert")) and supports_incremental(tiny("roberta"))
    ps, prefixes = prompts(5, 3, False)
    kwargs = dict(beam_size=2, max_new_tokens=5, eos_id=EOS, pad_id=PAD)
    assert beam_search(model, ps, prefixes, **kwargs) == beam_search_reference(model, ps, prefixes, **kwargs)


@pytest.mark.parametrize("family", ["roberta", "roberta-eager"])
def test_runs_under_bf16_autocast(family):
    """Evaluation runs under bf16 autocast on a GPU: the cached keys take the layers' dtype, the mask fits."""
    model = tiny(family)
    ps, prefixes = prompts(2, 4, False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = beam_search(model, ps, prefixes, beam_size=2, max_new_tokens=4, eos_id=-1, pad_id=PAD)
    assert [len(g) for g in got] == [4] * 4 and all(0 <= t < VOCAB for g in got for t in g)


def test_key_value_budget_splits_the_batch_without_changing_tokens(monkeypatch):
    import telly.finetuning.generation as G

    model = tiny("roberta")
    ps, prefixes = prompts(4, 6, False)
    kwargs = dict(beam_size=3, max_new_tokens=5, eos_id=EOS, pad_id=PAD)
    whole = beam_search(model, ps, prefixes, batch_size=6, **kwargs)
    sizes = []
    batch = G._beam_batch
    monkeypatch.setattr(G, "_beam_batch", lambda m, p, *a: sizes.append(len(p)) or batch(m, p, *a))
    per_example = 3 * (max(map(len, ps)) + 5) * 2 * 2 * 32 * 4  # beams x positions x layers x (k, v) x hidden x fp32
    assert beam_search(model, ps, prefixes, batch_size=6, kv_budget_bytes=2 * per_example, **kwargs) == whole
    assert sizes == [2, 2, 2]
