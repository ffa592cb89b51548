"""Tiny random encoders of every supported architecture family, built from configs (no download)."""

from __future__ import annotations

import torch

SMALL = {
    "vocab_size": 120,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "pad_token_id": 1,
}
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}  # ModernBERT's default is none
DEBERTA = {
    "relative_attention": True,
    "position_buckets": 8,
    "max_relative_positions": 16,
    "pos_att_type": ["p2c", "c2p"],
}


def tiny(family: str, *, dropout: bool = True):
    """A seeded 2-layer (ModernBERT: 3-layer), 32-wide encoder of ``family``; ``dropout=False`` turns it off."""
    import transformers as tf

    torch.manual_seed(0)
    small = SMALL if dropout else {**SMALL, **NO_DROPOUT}
    if family == "bert":
        return tf.BertModel(tf.BertConfig(**small))
    if family == "roberta":
        return tf.RobertaModel(tf.RobertaConfig(**small))
    if family == "mpnet":
        return tf.MPNetModel(tf.MPNetConfig(**small))
    if family == "deberta-v2":  # DeBERTa-v3's layout: relative embeddings with their own LayerNorm
        return tf.DebertaV2Model(
            tf.DebertaV2Config(**small, **DEBERTA, position_biased_input=False, norm_rel_ebd="layer_norm")
        )
    if family == "deberta-v2-conv":
        return tf.DebertaV2Model(tf.DebertaV2Config(**small, **DEBERTA, conv_kernel_size=3))
    cfg = tf.ModernBertConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=1,
        global_attn_every_n_layers=2,
        local_attention=4,
    )
    return tf.ModernBertModel(cfg)


FAMILIES = ["bert", "roberta", "mpnet", "deberta-v2", "deberta-v2-conv", "modernbert"]
