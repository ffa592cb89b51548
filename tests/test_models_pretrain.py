"""The pretrain stage on a tiny corpus: it learns, saves a loadable model, and resumes exactly."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
import torch

from telly.config import parse_params
from telly.models import pretrain as stage
from telly.models.loading import load_encoder

TEMPLATES = [
    "def get_{n}(self):\n    return self.{n}\n",
    "def set_{n}(self, value):\n    self.{n} = value\n",
    "def has_{n}(self):\n    return self.{n} is not None\n",
]
NAMES = [
    "name",
    "size",
    "color",
    "owner",
    "path",
    "mode",
    "parent",
    "count",
    "label",
    "value",
    "index",
    "state",
    "key",
    "data",
    "text",
    "width",
    "height",
    "depth",
    "level",
    "title",
]


def write_corpus(folder):
    for split, names in (("train", NAMES[:14]), ("valid", NAMES[14:])):
        rows = [
            {"id": f"{split}{i}", "code": t.format(n=n)}
            for i, (t, n) in enumerate((t, n) for n in names for t in TEMPLATES)
        ]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def params(raw_params, tmp_path, tracking_env):
    write_corpus(tmp_path)
    raw_params["pretrain"].update(
        train=str(tmp_path / "train.jsonl"),
        valid=str(tmp_path / "valid.jsonl"),
        out_dir=str(tmp_path / "pretrained"),
        checkpoint_dir=str(tmp_path / "ckpt"),
        metrics=str(tmp_path / "results" / "metrics.json"),
        vocab_size=300,
        layers=2,
        hidden_size=32,
        heads=2,
        ffn_size=64,
        max_length=32,
        batch_size=8,
        lr=1e-2,
        warmup_steps=2,
        max_steps=40,
        dropout=0.0,
        finetune_dropout=0.1,
        eval_every=10,
        log_every=5,
        eval_examples=50,
    )
    return raw_params


def test_learns_and_saves_a_loadable_model(params, tmp_path):
    metrics = stage.run(parse_params(params))
    assert metrics["steps"] == 40 and not metrics["budget_reached"]
    assert metrics["masked_token_accuracy"] > metrics["random_init_masked_token_accuracy"] + 0.1
    assert metrics["valid_loss"] < metrics["random_init_valid_loss"] - 1.0
    assert metrics["eval_masked_tokens"] > 0 and metrics["tokens_per_second"] > 0
    saved = json.loads((tmp_path / "results" / "metrics.json").read_text())
    assert saved["masked_token_accuracy"] == metrics["masked_token_accuracy"]
    curve = json.loads((tmp_path / "results" / "curve.json").read_text())
    assert [p["step"] for p in curve] == list(range(5, 41, 5)) and "valid_accuracy" in curve[1]
    assert (tmp_path / "pretrained" / "model.safetensors").exists()
    assert not (tmp_path / "ckpt").exists()  # finished: nothing left to resume

    enc = load_encoder(str(tmp_path / "pretrained"), device="cpu")
    assert enc.num_layers == 2 and enc.max_length == 32 and enc.pad_token_id == 1
    assert enc.model.config.hidden_dropout_prob == 0.1  # finetune_dropout, not the pre-training one
    assert set(enc.mode_tokens) == {"<encoder-only>", "<encoder-decoder>", "<decoder-only>", "<mask0>"}


def test_pieces_carry_the_encoder_prefix_and_fit():
    from telly.models.tokenizer import train_tokenizer

    tok = train_tokenizer([t.format(n=n) for n in NAMES for t in TEMPLATES], vocab_size=300, max_length=16)
    pieces = stage.to_pieces(tok, ["def f(x):\n    return x * 2 + 1 if x else None\n"], max_length=16)
    assert len(pieces) >= 2 and all(len(p) <= 16 for p in pieces)
    assert all(tok.convert_ids_to_tokens(p[:3]) == ["<s>", "<encoder-only>", "</s>"] for p in pieces)


def test_batches_are_a_seeded_permutation():
    lengths = np.arange(100) % 17
    a = stage.epoch_batches(lengths, 8, seed=1, epoch=0)
    assert sorted(np.concatenate(a).tolist()) == list(range(100))
    assert all(np.array_equal(x, y) for x, y in zip(a, stage.epoch_batches(lengths, 8, seed=1, epoch=0)))
    assert not all(np.array_equal(x, y) for x, y in zip(a, stage.epoch_batches(lengths, 8, seed=1, epoch=1)))


def test_interrupted_run_resumes_to_the_same_weights(params, tmp_path, monkeypatch):
    params["pretrain"]["max_steps"] = 12
    p = parse_params(params)
    stage.run(p)
    reference = load_encoder(str(tmp_path / "pretrained"), device="cpu").model.state_dict()

    calls = {"n": 0}
    real_loss = stage.mlm_loss

    def interrupt_at_step_5(model, batch):
        if model.training:
            calls["n"] += 1
            if calls["n"] == 5:
                signal.raise_signal(signal.SIGINT)  # as Ctrl-C would
        return real_loss(model, batch)

    monkeypatch.setattr(stage, "mlm_loss", interrupt_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        stage.run(p)
    state = torch.load(tmp_path / "ckpt" / "state.pt", weights_only=True)
    assert state["step"] == 5  # the step in flight finished, then it stopped

    monkeypatch.setattr(stage, "mlm_loss", real_loss)
    metrics = stage.run(p)
    assert metrics["steps"] == 12
    resumed = load_encoder(str(tmp_path / "pretrained"), device="cpu").model.state_dict()
    for key, value in reference.items():
        if not key.startswith("pooler."):
            torch.testing.assert_close(resumed[key], value, msg=key)


def test_wall_clock_budget_stops_training(params):
    params["pretrain"]["time_budget_minutes"] = 1e-6
    metrics = stage.run(parse_params(params))
    assert metrics["budget_reached"] and metrics["steps"] <= 1


def test_held_out_masks_do_not_follow_the_training_masking_rate(params):
    """Training may mask 40 % of tokens; the held-out measurement keeps BERT's 15 %, so runs with
    different training rates are scored on exactly the same masked tokens."""
    params["pretrain"].update(max_steps=2, eval_mlm_probability=0.15)
    counts = []
    for rate in (0.15, 0.4):
        params["pretrain"]["mlm_probability"] = rate
        counts.append(stage.run(parse_params(params))["eval_masked_tokens"])
    assert counts[0] == counts[1] > 0
    params["pretrain"]["eval_mlm_probability"] = 0.4
    assert stage.run(parse_params(params))["eval_masked_tokens"] > 2 * counts[0]


def test_learning_rate_warms_up_holds_then_cools_down():
    f = stage.learning_rate_factor
    assert [f(s, 0.0, 4) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    # cooldown 1: linear decay over the whole run (progress is the larger of steps and clock)
    assert f(10, 0.5, 4) == pytest.approx(0.5) and f(10, 1.0, 4) == 0.0
    # cooldown 0.25: constant until 75 % of the run, then linear to 0
    assert f(10, 0.5, 4, cooldown=0.25) == 1.0
    assert f(10, 0.875, 4, cooldown=0.25) == pytest.approx(0.5)
    assert f(10, 1.0, 4, cooldown=0.25) == 0.0


def test_position_embeddings_can_start_as_sinusoids(params):
    from telly.models.tokenizer import train_tokenizer

    cfg = parse_params(params).pretrain.model_copy(update={"sinusoidal_positions": 0.05, "init_std": 0.05})
    tok = train_tokenizer([t.format(n=n) for n in NAMES for t in TEMPLATES], vocab_size=300, max_length=32)
    model = stage.build_model(cfg, tok)
    table = model.roberta.embeddings.position_embeddings.weight.detach()
    first = tok.pad_token_id + 1  # RoBERTa's first real position
    assert torch.all(table[:first] == 0)
    assert table[first, 0::2].abs().max() == 0 and torch.allclose(
        table[first, 1::2], torch.full_like(table[first, 1::2], 0.05)
    )
    assert float(table[first + 1, 0]) == pytest.approx(0.05 * np.sin(1.0), rel=1e-5)
    assert model.config.initializer_range == 0.05
    plain = stage.build_model(cfg.model_copy(update={"sinusoidal_positions": 0.0}), tok)
    assert not torch.allclose(plain.roberta.embeddings.position_embeddings.weight[first + 1], table[first + 1])
