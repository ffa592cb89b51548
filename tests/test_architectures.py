"""Every supported encoder family runs layer by layer under the prefix-LM mask; a leaking one is refused."""

from __future__ import annotations

import pytest
import torch

from arch_fixture import FAMILIES, tiny
from telly.finetuning.caching import bottom, top
from telly.finetuning.data import attention_mask
from telly.models.architectures import (
    ArchitectureError,
    MPNetAdapter,
    adapter_for,
    check_prefix_mask,
)


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_matches_the_native_forward_without_a_prefix(family):
    """With a plain bidirectional mask (no padding) the adapter's layer-by-layer run is the model's own."""
    model = tiny(family).eval()
    ids = torch.randint(5, 120, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = attention_mask(torch.tensor([12, 12]), torch.tensor([12, 12]), 12)
    with torch.no_grad():
        native = model(input_ids=ids).last_hidden_state
        ours = adapter_for(model).forward(model, ids, mask)
    assert (ours - native).abs().max().item() < 1e-5


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "deberta-v2-conv"])
def test_prefix_mask_honoured_and_split_at_k_equals_the_whole(family):
    model = tiny(family).eval()
    check_prefix_mask(model)  # passes: no exception
    ids = torch.randint(5, 120, (2, 10), generator=torch.Generator().manual_seed(2))
    mask = attention_mask(torch.tensor([10, 7]), torch.tensor([4, 7]), 10)
    with torch.no_grad():
        whole = adapter_for(model).forward(model, ids, mask)
        split = top(model, bottom(model, ids, mask, 1), mask, 1)
    assert (whole - split).abs().max().item() < 1e-5
    assert adapter_for(model).word_embeddings(model).weight.shape == (120, 32)


def test_mpnet_native_forward_leaks_and_is_refused():
    """MPNet's own forward adds the boolean mask to its scores: the load-time check catches it."""

    class NativeMPNet(MPNetAdapter):
        def forward(self, model, ids, mask):
            return model(input_ids=ids, attention_mask=mask).last_hidden_state

    model = tiny("mpnet").eval()
    with pytest.raises(ArchitectureError, match="ignores the prefix-LM mask"):
        check_prefix_mask(model, NativeMPNet())


def test_deberta_conv_layer_leaks_and_is_refused():
    """DeBERTa-v2 with a conv layer (e.g. deberta-v2-xlarge) mixes neighbours after layer 0, mask or not."""
    with pytest.raises(ArchitectureError, match=r"DebertaV2Model \(deberta-v2\).*ignores the prefix-LM mask"):
        check_prefix_mask(tiny("deberta-v2-conv").eval())


def test_unsupported_family_is_refused_by_name():
    import transformers as tf

    model = tf.T5EncoderModel(tf.T5Config(vocab_size=50, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8))
    with pytest.raises(ArchitectureError, match="T5EncoderModel.*not supported"):
        adapter_for(model)


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_eager_attention_gets_an_additive_mask_and_passes_the_check(family):
    """Eager attention adds the mask to its scores: a boolean 4-D mask would leak future tokens."""
    model = tiny(family).eval()
    model.config._attn_implementation = "eager"
    adapter = adapter_for(model)
    check_prefix_mask(model, adapter)  # raises when a later token moves earlier positions
    mask = attention_mask(torch.tensor([6]), torch.tensor([2]), 6)
    assert adapter.layer_mask(model, torch.zeros(1, 6, 32), mask).dtype == torch.float32
