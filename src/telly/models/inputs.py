"""How code becomes a model input: the special tokens around it, in UniXcoder's three modes.

The one place that knows the layouts (telly-paper.md, "UniXcoder inputs"):

- encoder-only:    ``[<s>, <encoder-only>, </s>] + code + [</s>]``
- encoder-decoder: ``[<s>, <encoder-decoder>, </s>, <mask0>] + source + [</s>]`` (the target follows)
- decoder-only:    ``[<s>, <decoder-only>, </s>] + left context`` (nothing closes it: the model continues it)

A tokenizer without UniXcoder's mode tokens gets ``[<s>/[CLS]] + code + [</s>/[SEP]]``. Extraction,
fine-tuning and pre-training all wrap their inputs with :func:`wrap`, and batch token sequences with
their attention pattern (UniLM's prefix-LM mask) with :func:`collate`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch

Mode = Literal["encoder-only", "encoder-decoder", "decoder-only"]


def wrap(bos: int | None, eos: int | None, modes: Mapping[str, int], mode: Mode) -> tuple[list[int], list[int]]:
    """The ids before and after the text. ``modes`` maps ``encoder-only`` / ``encoder-decoder`` /
    ``decoder-only`` / ``mask0`` (with or without the angle brackets) to ids; empty without them."""
    modes = {name.strip("<>"): i for name, i in modes.items()}
    prefix = [bos] if bos is not None else []
    suffix = [eos] if eos is not None else []
    if mode in modes:
        prefix = prefix + [modes[mode]] + suffix
        if mode == "encoder-decoder" and "mask0" in modes:
            prefix = prefix + [modes["mask0"]]
    if mode == "decoder-only":  # left context: nothing closes it
        suffix = []
    return prefix, suffix


@dataclass(frozen=True)
class Seq:
    """One token sequence; ``prefix`` positions attend bidirectionally, the rest causally."""

    ids: tuple[int, ...]
    prefix: int


def attention_mask(lengths: torch.Tensor, prefixes: torch.Tensor, width: int) -> torch.Tensor:
    """``[B, 1, T, T]`` boolean UniLM mask: query i sees key j < length when j < prefix or j <= i."""
    i = torch.arange(width)[None, :, None]
    j = torch.arange(width)[None, None, :]
    seen = (j < prefixes[:, None, None]) | (j <= i)
    return (seen & (j < lengths[:, None, None]))[:, None]


def collate(seqs: list[Seq], pad_id: int, hidden: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Right-padded ids, lengths, the 4-D mask and, when given, cached hidden states padded alike."""
    width = max(len(s.ids) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, : len(s.ids)] = torch.tensor(s.ids)
    lengths = torch.tensor([len(s.ids) for s in seqs])
    prefixes = torch.tensor([s.prefix for s in seqs])
    batch = {"ids": ids, "lengths": lengths, "mask": attention_mask(lengths, prefixes, width)}
    if hidden is not None:
        states = torch.zeros(len(seqs), width, hidden[0].shape[-1], dtype=hidden[0].dtype)
        for row, h in enumerate(hidden):
            states[row, : h.shape[0]] = h
        batch["hidden"] = states
    return batch
