"""The pretrain stage on a tiny corpus: each objective's inputs and labels, the mixture, and the
stage: it learns, saves a loadable model, trains exactly max_steps, fails on its clock guard and
resumes exactly."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest
import torch
import yaml

from telly.config import parse_params, read_params_file
from telly.errors import NonFiniteError, TellyError
from telly.models import pretrain as stage
from telly.models import pretrain_data as data
from telly.models.loading import load_encoder
from telly.models.tokenizer import pretraining_specials, train_tokenizer

TEMPLATES = [
    'def get_{n}(self):\n    """Return the {n}."""\n    return self.{n}\n',
    'def set_{n}(self, value):\n    """Set the {n}."""\n    self.{n} = value\n',
    'def has_{n}(self):\n    """Whether there is a {n}."""\n    return self.{n} is not None\n',
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
            {"id": f"{split}{i}", "code": code, "docstring_tokens": code.split('"""')[1].replace(".", " .").split()}
            for i, code in enumerate(t.format(n=n) for n in names for t in TEMPLATES)
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
        vocab_size=600,
        layers=2,
        hidden_size=32,
        heads=2,
        ffn_size=64,
        max_length=48,
        batch_size=8,
        lr=1e-2,
        warmup_steps=2,
        max_steps=40,
        mlm_first_steps=0,  # the mixture from the first step (the resume test also runs masked-LM first)
        dropout=0.0,
        finetune_dropout=0.1,
        eval_every=10,
        log_every=5,
        eval_examples=50,
        threads=1,
    )
    return raw_params


MLM_ONLY = {
    "objectives": {"mlm": 1.0, "ulm": 0.0, "denoise": 0.0, "crossgen": 0.0, "contrastive": 0.0},
    "ast_share": 0.0,
}


@pytest.fixture(scope="module")
def tok():
    texts = [t.format(n=n) for n in NAMES for t in TEMPLATES]
    return train_tokenizer(texts, vocab_size=600, max_length=48, extra_specials=pretraining_specials())


@pytest.fixture(scope="module")
def tiny_model(tok):
    cfg = parse_params(yaml_params()).pretrain.model_copy(
        update={"layers": 2, "hidden_size": 32, "heads": 2, "ffn_size": 64, "max_length": 48}
    )
    torch.manual_seed(0)
    return stage.build_model(cfg, tok).eval()


def yaml_params():

    from conftest import REPO

    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_learns_and_saves_a_loadable_model(params, tmp_path):
    metrics = stage.run(parse_params(params))
    assert metrics["steps"] == 40 and sum(metrics["objective_steps"].values()) == 40
    assert all(metrics["objective_steps"][k] > 0 for k in ("mlm", "ulm", "denoise", "contrastive"))
    # the tiny valid split's names are unseen, so masked tokens are hard: the loss is the steadier figure
    assert metrics["masked_token_accuracy"] > metrics["random_init_masked_token_accuracy"]
    assert metrics["valid_loss"] < metrics["random_init_valid_loss"] - 0.8
    assert metrics["next_token_accuracy"] > metrics["random_init_next_token_accuracy"] + 0.1
    assert metrics["next_token_loss"] < metrics["random_init_next_token_loss"] - 1.0
    assert 0 < metrics["retrieval_mrr"] <= 1 and metrics["eval_retrieval_queries"] == 18
    assert metrics["eval_masked_tokens"] > 0 and metrics["eval_next_tokens"] > 0 and metrics["tokens_per_second"] > 0
    saved = json.loads((tmp_path / "results" / "metrics.json").read_text())
    assert saved["masked_token_accuracy"] == metrics["masked_token_accuracy"]
    curve = json.loads((tmp_path / "results" / "curve.json").read_text())
    assert [p["step"] for p in curve] == list(range(5, 41, 5)) and "valid_next_token_accuracy" in curve[1]
    assert (tmp_path / "pretrained" / "model.safetensors").exists()
    assert not (tmp_path / "ckpt").exists()  # finished: nothing left to resume

    enc = load_encoder(str(tmp_path / "pretrained"), device="cpu")
    assert enc.num_layers == 2 and enc.max_length == 48 and enc.pad_token_id == 1
    assert enc.model.config.hidden_dropout_prob == 0.1  # finetune_dropout, not the pre-training one
    assert set(enc.mode_tokens) == {"<encoder-only>", "<encoder-decoder>", "<decoder-only>", "<mask0>"}
    assert "<block::left>" in enc.tokenizer.get_vocab() and "<mask15>" in enc.tokenizer.all_special_tokens


def test_mlm_only_recipe_parses_nothing_and_still_learns(params, monkeypatch):
    """Today's recipe stays a setting: masked-LM steps only, on code pieces only (no AST views built)."""
    built = []
    real_build = data.build_corpus

    def spy(*args, **kwargs):
        corpus = real_build(*args, **kwargs)
        built.append(corpus)
        return corpus

    params["pretrain"].update(MLM_ONLY)
    monkeypatch.setattr(data, "build_corpus", spy)
    metrics = stage.run(parse_params(params))
    assert metrics["objective_steps"] == {"mlm": 40, "ulm": 0, "denoise": 0, "contrastive": 0, "crossgen": 0}
    assert built[0].pieces and not built[0].ast_inputs and not built[0].pairs
    assert metrics["masked_token_accuracy"] > metrics["random_init_masked_token_accuracy"]
    assert metrics["valid_loss"] < metrics["random_init_valid_loss"] - 0.8


def test_tiny_profile_runs_every_objective(tmp_path, tracking_env):
    """The tiny profile (tests/fixtures/params-tiny.yaml) as the pipeline test runs it: every objective,
    exactly its max_steps."""
    from conftest import REPO

    raw = read_params_file(REPO / "tests/fixtures/params-tiny.yaml")
    write_corpus(tmp_path)
    raw["pretrain"].update(
        train=str(tmp_path / "train.jsonl"),
        valid=str(tmp_path / "valid.jsonl"),
        out_dir=str(tmp_path / "pretrained"),
        checkpoint_dir=str(tmp_path / "ckpt"),
        metrics=str(tmp_path / "metrics.json"),
    )
    p = parse_params(raw)
    metrics = stage.run(p)
    assert metrics["steps"] == p.pretrain.max_steps
    assert all(metrics["objective_steps"][k] > 0 for k in ("mlm", "ulm", "denoise", "crossgen"))
    assert metrics["objective_weights"] == p.pretrain.objectives.model_dump()


def test_objective_mixture_follows_the_weights_and_the_step_only():
    weights = {"mlm": 0.5, "ulm": 0.2, "denoise": 0.3, "contrastive": 0.0}
    drawn = [data.objective_of_step(weights, 42, step) for step in range(2000)]
    assert drawn == [data.objective_of_step(weights, 42, step) for step in range(2000)]  # resumable
    assert "contrastive" not in drawn
    for name in ("mlm", "ulm", "denoise"):
        assert abs(drawn.count(name) / 2000 - weights[name]) < 0.04
    inputs = [data.input_of_step(0.25, 42, step) for step in range(2000)]
    assert abs(inputs.count("ast") / 2000 - 0.25) < 0.04
    assert {data.input_of_step(0.0, 42, s) for s in range(100)} == {"code"}


def test_masked_lm_alone_on_plain_code_comes_first_then_the_mixture():
    weights = {"mlm": 0.5, "ulm": 0.2, "denoise": 0.3, "contrastive": 0.0}
    first = [data.objective_of_step(weights, 42, step, mlm_first_steps=300) for step in range(600)]
    assert set(first[:300]) == {"mlm"} and {"ulm", "denoise"} <= set(first[300:])
    assert first[300:] == [data.objective_of_step(weights, 42, step) for step in range(300, 600)]  # the same draws
    inputs = [data.input_of_step(1.0, 42, step, mlm_first_steps=300) for step in range(600)]
    assert set(inputs[:300]) == {"code"} and set(inputs[300:]) == {"ast"}


def test_mlm_first_steps_cannot_exceed_training(raw_params):
    from telly.config import ConfigError

    raw_params["pretrain"].update(max_steps=100, mlm_first_steps=101)
    with pytest.raises(ConfigError, match="mlm_first_steps 101 is more than max_steps 100"):
        parse_params(raw_params)


def test_code_pieces_fit_and_are_framed_in_each_mode(tok):
    sp = data.Special.of(tok)
    pieces = data.code_pieces(tok, ["def f(x):\n    return x * 2 + 1 if x else None\n"], budget=12)
    assert len(pieces) >= 2 and all(2 <= len(p) <= 12 for p in pieces)
    for mode in ("encoder-only", "decoder-only", "encoder-decoder"):
        framed = sp.frame(mode, pieces[0])
        assert tok.convert_ids_to_tokens(framed[:3]) == ["<s>", f"<{mode}>", "</s>"] and framed[-1] == sp.eos


def test_tokenizer_keeps_ast_boundaries_whole(tok):
    from telly.data.analysis import flattened_ast, is_ast_boundary

    flat = flattened_ast('def get_size(self, x=1):\n    """Doc."""\n    return self.size + x\n')
    ids = tok(data.ast_text(flat), add_special_tokens=False)["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    assert [p for p in pieces if is_ast_boundary(p)] == [t for t in flat if is_ast_boundary(t)]
    # no space token spent in front of a boundary (leaves carry their word-start space)
    assert not any(a == "Ġ" and is_ast_boundary(b) for a, b in zip(pieces, pieces[1:]))
    leaves = "".join(tok.convert_tokens_to_string([p]) for p in pieces if not is_ast_boundary(p))
    assert leaves.split() == " ".join(t for t in flat if not is_ast_boundary(t)).split()
    collator_never_masks = set(tok.all_special_ids)
    assert all(tok.convert_tokens_to_ids(t) in collator_never_masks for t in flat if is_ast_boundary(t))


def test_mlm_labels_are_the_masked_tokens_and_never_special_ones(tok):
    from transformers import DataCollatorForLanguageModeling

    sp = data.Special.of(tok)
    text = data.ast_text(["<block::left>", "return", "self", ".", "size", "<block::right>"]) * 6
    examples = [tok(text, add_special_tokens=False)["input_ids"]] * 8
    batch = data.mlm_batch(DataCollatorForLanguageModeling(tok, mlm_probability=0.5, seed=0), sp, examples)
    original = torch.tensor([sp.frame("encoder-only", x) for x in examples])
    labelled = batch["labels"] != -100
    assert labelled.float().mean() > 0.3
    assert torch.equal(batch["labels"][labelled], original[labelled])
    assert not any(int(i) in set(tok.all_special_ids) for i in original[labelled])
    assert torch.equal(batch["input_ids"][~labelled], original[~labelled])


def hidden(model, batch):
    with torch.inference_mode():
        return stage.encode(model, batch)


def test_unidirectional_mode_is_causal_and_predicts_the_next_token(tok, tiny_model):
    sp = data.Special.of(tok)
    ids = tok("def get_size(self):\n    return self.size\n", add_special_tokens=False)["input_ids"]
    batch = data.ulm_batch(sp, [ids])
    framed = sp.frame("decoder-only", ids)
    assert batch["labels"][0, :-1].tolist() == framed[1:] and batch["labels"][0, -1] == -100
    changed = dict(batch, input_ids=batch["input_ids"].clone())
    k = 8
    changed["input_ids"][0, k] = tok.convert_tokens_to_ids("<mask>")
    before, after = hidden(tiny_model, batch), hidden(tiny_model, changed)
    torch.testing.assert_close(before[0, :k], after[0, :k])  # earlier positions cannot see position k
    assert not torch.allclose(before[0, k:], after[0, k:])


def test_denoising_targets_are_the_masked_spans_under_a_prefix_lm_mask(tok, tiny_model):
    sp = data.Special.of(tok)
    ids = tok(" ".join(f"x{i}" for i in range(30)), add_special_tokens=False)["input_ids"]
    rng = np.random.default_rng(0)
    source, target = data.corrupt_spans(ids, sp, rate=0.3, mean_span=3, max_length=48, rng=rng)
    sentinels = [t for t in source if t in sp.sentinels]
    assert sentinels == sp.sentinels[: len(sentinels)] and len(sentinels) >= 2
    assert [t for t in target if t in sp.sentinels] == sentinels and target[-1] == sp.eos
    # filling each sentinel of the source with its span of the target gives the input back
    spans, current = {}, None
    for t in target[:-1]:
        if t in sp.sentinels:
            current = t
            spans[t] = []
        else:
            spans[current].append(t)
    restored = [x for t in source for x in (spans.get(t, [t]))]
    assert restored == ids[: len(restored)] and len(restored) + 2 * len(sentinels) + 5 <= 48
    assert sum(len(v) for v in spans.values()) == round(len(restored) * 0.3)

    batch = data.denoise_batch(sp, [ids], 0.3, 3, 48, np.random.default_rng(0))
    prefix = len(source) + 4  # <s> <encoder-decoder> </s> source </s>
    row = batch["input_ids"][0].tolist()
    assert row[prefix:] == target and row[prefix] == tok.convert_tokens_to_ids("<mask0>")
    labels = batch["labels"][0]
    assert (labels[:prefix] == -100).all() and labels[prefix:-1].tolist() == target[1:]
    h = hidden(tiny_model, batch)
    late_source = dict(batch, input_ids=batch["input_ids"].clone())
    late_source["input_ids"][0, prefix - 2] = tok.convert_tokens_to_ids("<mask>")
    assert not torch.allclose(h[0, 1], hidden(tiny_model, late_source)[0, 1])  # the source is bidirectional
    late_target = dict(batch, input_ids=batch["input_ids"].clone())
    late_target["input_ids"][0, -2] = tok.convert_tokens_to_ids("<mask>")
    torch.testing.assert_close(h[0, :-2], hidden(tiny_model, late_target)[0, :-2])  # the target is causal


def test_cross_modal_generation_writes_the_comment_from_the_ast_under_a_prefix_lm_mask(tok, tiny_model):
    sp = data.Special.of(tok)
    ast = tok(" ".join(f"x{i}" for i in range(60)), add_special_tokens=False)["input_ids"]
    comment = tok("Return the size .", add_special_tokens=False)["input_ids"]
    batch = data.crossgen_batch(sp, [([1, 2], comment, ast)], max_length=48)
    row, labels = batch["input_ids"][0].tolist(), batch["labels"][0]
    target = [tok.convert_tokens_to_ids("<mask0>"), *comment, sp.eos]
    assert len(row) == 48 and row[-len(target) :] == target  # the AST is cut, the comment kept whole
    prefix = len(row) - len(target)
    assert row[:prefix] == sp.frame("encoder-decoder", ast[: prefix - 4])
    assert (labels[:prefix] == -100).all() and labels[prefix:-1].tolist() == target[1:]  # loss on the comment only
    h = hidden(tiny_model, batch)
    late_ast = dict(batch, input_ids=batch["input_ids"].clone())
    late_ast["input_ids"][0, prefix - 2] = tok.convert_tokens_to_ids("<mask>")
    assert not torch.allclose(h[0, 1], hidden(tiny_model, late_ast)[0, 1])  # the AST is read both ways
    late_comment = dict(batch, input_ids=batch["input_ids"].clone())
    late_comment["input_ids"][0, -2] = tok.convert_tokens_to_ids("<mask>")
    torch.testing.assert_close(h[0, :-2], hidden(tiny_model, late_comment)[0, :-2])  # the comment is causal


def test_cross_modal_generation_at_zero_leaves_every_earlier_recipe_drawing_the_same():
    old = {"mlm": 0.5, "ulm": 0.2, "denoise": 0.2, "contrastive": 0.1}
    drawn = [data.objective_of_step(old, 7, step) for step in range(500)]
    assert drawn == [data.objective_of_step({**old, "crossgen": 0.0}, 7, step) for step in range(500)]
    mixed = [data.objective_of_step({**old, "crossgen": 0.25}, 7, step) for step in range(2000)]
    assert abs(mixed.count("crossgen") / 2000 - 0.2) < 0.04


def test_contrastive_objective_prefers_each_functions_own_views(tok, tiny_model):
    sp = data.Special.of(tok)
    codes = [tok(t.format(n=n), add_special_tokens=False)["input_ids"] for n in NAMES[:6] for t in TEMPLATES[:1]]
    own = data.contrastive_batch(sp, [(c, c, c) for c in codes])
    shifted = data.contrastive_batch(sp, [(c, codes[i - 1], codes[i - 2]) for i, c in enumerate(codes)])
    assert torch.equal(own["code"]["input_ids"], shifted["code"]["input_ids"])
    with torch.inference_mode():
        assert stage.contrastive_loss(tiny_model, own) < stage.contrastive_loss(tiny_model, shifted)


def test_batches_are_a_seeded_permutation():
    lengths = np.arange(100) % 17
    a = data.epoch_batches(lengths, 8, seed=1, epoch=0)
    assert sorted(np.concatenate(a).tolist()) == list(range(100))
    assert all(np.array_equal(x, y) for x, y in zip(a, data.epoch_batches(lengths, 8, seed=1, epoch=0)))
    assert not all(np.array_equal(x, y) for x, y in zip(a, data.epoch_batches(lengths, 8, seed=1, epoch=1)))


def test_interrupted_run_resumes_to_the_same_weights(params, tmp_path, monkeypatch):
    # masked-LM alone for 6 steps, then the mixture: the interruption at step 5 resumes across the switch
    params["pretrain"].update(max_steps=12, mlm_first_steps=6)
    p = parse_params(params)
    first = stage.run(p)
    assert first["mlm_first_steps"] == 6 and first["objective_steps"]["mlm"] >= 6
    assert sum(first["objective_steps"].values()) - first["objective_steps"]["mlm"] > 0
    reference = load_encoder(str(tmp_path / "pretrained"), device="cpu").model.state_dict()

    calls = {"n": 0}
    real_loss = stage.training_loss

    def interrupt_at_step_5(model, objective, batch):
        calls["n"] += 1
        if calls["n"] == 5:
            signal.raise_signal(signal.SIGINT)  # as Ctrl-C would
        return real_loss(model, objective, batch)

    monkeypatch.setattr(stage, "training_loss", interrupt_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        stage.run(p)
    state = torch.load(tmp_path / "ckpt" / "state.pt", weights_only=True)
    assert state["step"] == 5  # the step in flight finished, then it stopped

    monkeypatch.setattr(stage, "training_loss", real_loss)
    metrics = stage.run(p)
    assert metrics["steps"] == 12
    resumed = load_encoder(str(tmp_path / "pretrained"), device="cpu").model.state_dict()
    for key, value in reference.items():
        if not key.startswith("pooler."):
            torch.testing.assert_close(resumed[key], value, msg=key)


def test_steps_decide_the_length_and_the_clock_guard_fails_the_stage(params, tmp_path):
    """max_steps alone decides how long it trains; a run slower than the guard fails loudly (no model
    saved) and, the guard raised, resumes to exactly the weights of a run the guard never stopped."""
    params["pretrain"]["max_steps"] = 12
    assert stage.run(parse_params(params))["steps"] == 12
    reference = load_encoder(str(tmp_path / "pretrained"), device="cpu").model.state_dict()
    (tmp_path / "results" / "metrics.json").unlink()
    import shutil

    shutil.rmtree(tmp_path / "pretrained")

    params["pretrain"]["time_budget_minutes"] = 1e-6
    with pytest.raises(
        TellyError, match=r"pretrain\.time_budget_minutes = 1e-06 at step 1 of pretrain\.max_steps = 12"
    ):
        stage.run(parse_params(params))
    assert isinstance(stage.TrainingTooSlow("x"), TellyError)
    assert not (tmp_path / "pretrained").exists() and not (tmp_path / "results" / "metrics.json").exists()
    assert torch.load(tmp_path / "ckpt" / "state.pt", weights_only=True)["step"] == 1

    # no guard by default: a rerun after days of (say) a suspended machine still finishes
    state_file = tmp_path / "ckpt" / "state.pt"
    state = torch.load(state_file, weights_only=True)
    torch.save({**state, "elapsed": 10 * 24 * 3600.0}, state_file)
    del params["pretrain"]["time_budget_minutes"]
    assert parse_params(params).pretrain.time_budget_minutes is None
    assert stage.run(parse_params(params))["steps"] == 12
    resumed = load_encoder(str(tmp_path / "pretrained"), device="cpu").model.state_dict()
    for key, value in reference.items():
        if not key.startswith("pooler."):
            torch.testing.assert_close(resumed[key], value, msg=key)


def test_a_non_finite_loss_stops_pretraining_before_its_step_and_saves_nothing(params, tmp_path, monkeypatch):
    params["pretrain"]["max_steps"] = 12
    real_loss, calls = stage.training_loss, {"n": 0}

    def diverges_at_step_3(model, objective, batch):
        calls["n"] += 1
        loss = real_loss(model, objective, batch)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(stage, "training_loss", diverges_at_step_3)
    with pytest.raises(NonFiniteError, match=r"pretrain: the \w+ loss is nan at step 3; stopped, no model saved"):
        stage.run(parse_params(params))
    assert not (tmp_path / "pretrained").exists() and not (tmp_path / "results" / "metrics.json").exists()


def test_held_out_masks_do_not_follow_the_training_masking_rate(params):
    """Training may mask 40 % of tokens; the held-out measurement keeps BERT's 15 %, so runs with
    different training rates are scored on exactly the same masked tokens."""
    params["pretrain"].update(max_steps=2, mlm_first_steps=0, eval_mlm_probability=0.15, **MLM_ONLY)
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
    # cooldown 1: linear decay over the whole run (progress: steps done / max_steps)
    assert f(10, 0.5, 4) == pytest.approx(0.5) and f(10, 1.0, 4) == 0.0
    # cooldown 0.25: constant until 75 % of the run, then linear to 0
    assert f(10, 0.5, 4, cooldown=0.25) == 1.0
    assert f(10, 0.875, 4, cooldown=0.25) == pytest.approx(0.5)
    assert f(10, 1.0, 4, cooldown=0.25) == 0.0


def test_position_embeddings_can_start_as_sinusoids(params):
    cfg = parse_params(params).pretrain.model_copy(update={"sinusoidal_positions": 0.05, "init_std": 0.05})
    tok = train_tokenizer(
        [t.format(n=n) for n in NAMES for t in TEMPLATES],
        vocab_size=600,
        max_length=48,
        extra_specials=pretraining_specials(),
    )
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
