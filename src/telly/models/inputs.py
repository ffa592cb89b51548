"""How code becomes a model input: the special tokens around it, in UniXcoder's three modes.

The one place that knows the layouts (telly-paper.md, "UniXcoder inputs"):

- encoder-only:    ``[<s>, <encoder-only>, </s>] + code + [</s>]``
- encoder-decoder: ``[<s>, <encoder-decoder>, </s>, <mask0>] + source + [</s>]`` (the target follows)
- decoder-only:    ``[<s>, <decoder-only>, </s>] + left context`` (nothing closes it: the model continues it)

A tokenizer without UniXcoder's mode tokens gets ``[<s>/[CLS]] + code + [</s>/[SEP]]``. Extraction,
fine-tuning and pre-training all wrap their inputs with :func:`wrap`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

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
