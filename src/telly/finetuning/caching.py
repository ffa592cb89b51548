"""Frozen-prefix caching: run the frozen bottom of the encoder once per dataset.

With the embeddings and the bottom K layers frozen (Telly-K), hidden state K of
a fixed input never changes -- as long as the frozen part runs without dropout.
So we compute it once per dataset, keep it (one flat tensor plus offsets, like
the extracted representations), and each training step runs only layers K..L-1.
The backward pass never reached below layer K anyway; caching removes the
forward pass through the frozen layers as well, which is what dominates an
epoch of Telly-K with a large K.

The paper's regime (frozen layers still run every step in train mode, dropout
on) is ``finetune.cache_frozen: false``.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from telly.finetuning.data import Seq, collate


def _layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    return model.encoder.layer


def layer_mask(model: torch.nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The 4-D boolean mask in the form the model's attention implementation wants."""
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=model.config, inputs_embeds=hidden, attention_mask=mask)


def bottom(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """Hidden state k: the embeddings followed by layers 0..k-1."""
    hidden = model.embeddings(input_ids=ids)
    attn = layer_mask(model, hidden, mask)
    for layer in _layers(model)[:k]:
        hidden = layer(hidden, attn)
    return hidden


def top(model: torch.nn.Module, hidden: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
    """The last hidden state from hidden state k: layers k..L-1."""
    attn = layer_mask(model, hidden, mask)
    for layer in _layers(model)[k:]:
        hidden = layer(hidden, attn)
    return hidden


class HiddenCache:
    """Hidden state k of every sequence of a dataset, stored flat: ``[sum of lengths, H]`` + offsets."""

    def __init__(self, flat: torch.Tensor, offsets: list[int]):
        self.flat, self.offsets = flat, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.flat[self.offsets[i] : self.offsets[i + 1]]

    @property
    def nbytes(self) -> int:
        return self.flat.numel() * self.flat.element_size()

    @classmethod
    @torch.no_grad()
    def build(
        cls, model: torch.nn.Module, seqs: list[Seq], k: int, pad_id: int, batch_size: int, desc: str = "cache"
    ) -> HiddenCache:
        """Run embeddings + layers 0..k-1 once over ``seqs`` in eval mode (no dropout)."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        parts: list[torch.Tensor] = []
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i].ids))  # similar lengths, less padding
        by_index: dict[int, torch.Tensor] = {}
        for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False):
            idx = order[start : start + batch_size]
            batch = collate([seqs[i] for i in idx], pad_id)
            hidden = bottom(model, batch["ids"].to(device), batch["mask"].to(device), k).float().cpu()
            for row, i in enumerate(idx):
                by_index[i] = hidden[row, : len(seqs[i].ids)].clone()
        model.train(was_training)
        offsets = [0]
        for i in range(len(seqs)):
            parts.append(by_index[i])
            offsets.append(offsets[-1] + by_index[i].shape[0])
        return cls(torch.cat(parts), offsets)
