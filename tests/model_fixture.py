"""A tiny, real encoder for tests: a 2-layer RoBERTa with a byte-level BPE code tokenizer.

Saved with ``save_pretrained`` like a hub model, with UniXcoder's mode tokens, so any
stage's test can load it with ``telly.models.load_encoder(folder)`` in well under a second.
"""

from __future__ import annotations

from pathlib import Path

CODE = [
    "def add(a, b):\n    return a + b\n",
    "class Stack:\n    def push(self, item):\n        self.items.append(item)\n",
    "for i in range(10):\n    print(i * 2)\n",
]


def make_tiny_roberta(folder: str | Path, *, max_length: int = 64, layers: int = 2, hidden: int = 32) -> Path:
    """Write the model and tokenizer into ``folder`` and return it."""
    import torch
    from transformers import RobertaConfig, RobertaForMaskedLM

    from telly.models.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(CODE * 20, vocab_size=300, max_length=max_length)
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=max_length + 2,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        type_vocab_size=1,
    )
    torch.manual_seed(0)
    RobertaForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)
