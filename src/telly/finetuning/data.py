"""Task rows -> token sequences in UniXcoder's three modes, and batches of them.

Every input is one token sequence with a *prefix length* that fixes its
attention pattern (UniLM): positions ``< prefix`` see each other both ways,
later positions see the prefix and, causally, the positions before them.

- encoder-only (search, clone): ``[<s>, <encoder-only>, </s>] + code + [</s>]``, prefix = whole sequence;
- encoder-decoder (summarization, generation): source ``[<s>, <encoder-decoder>, </s>, <mask0>] + src + [</s>]``
  then target ``[<mask0>] + tgt + [</s>]``, prefix = source length;
- decoder-only (completion): ``[<s>, <decoder-only>, </s>] + left context + line + [</s>]``, prefix = 0.

Without UniXcoder mode tokens in the tokenizer the mode token is left out and
``<s>`` starts the target.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, RandomSampler

from telly import tasks
from telly.errors import TellyError
from telly.jsonl import read_jsonl
from telly.models.inputs import Mode, Seq, attention_mask, collate, wrap  # noqa: F401 - re-exported

MIN_ROWS = 2  # in-batch negatives, a threshold, a ranking: nothing works on fewer


class DatasetError(TellyError):
    """A task dataset that is missing, empty or too small."""


@dataclass(frozen=True)
class Tokens:
    """The ids a task needs from its tokenizer."""

    bos: int
    eos: int
    pad: int
    modes: dict[str, int]

    @classmethod
    def of(cls, tokenizer: Any) -> Tokens:
        vocab = tokenizer.get_vocab()
        modes = {m: vocab[f"<{m}>"] for m in ("encoder-only", "encoder-decoder", "decoder-only") if f"<{m}>" in vocab}
        if "<mask0>" in vocab:
            modes["mask0"] = vocab["<mask0>"]
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.cls_token_id
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        if bos is None or eos is None or tokenizer.pad_token_id is None:
            raise TellyError("the tokenizer needs <s>/[CLS], </s>/[SEP] and a pad token for fine-tuning")
        return cls(bos=bos, eos=eos, pad=tokenizer.pad_token_id, modes=modes)

    def wrap(self, mode: Mode) -> tuple[list[int], list[int]]:
        """The ids before and after a text in ``mode`` (telly.models.inputs)."""
        return wrap(self.bos, self.eos, self.modes, mode)

    @property
    def target_start(self) -> int:
        """The token that starts every generated target (UniXcoder's ``<mask0>``)."""
        return self.modes.get("mask0", self.bos)


def _pieces(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encoder_only(tokenizer: Any, tok: Tokens, text: str, max_length: int) -> Seq:
    head, tail = tok.wrap("encoder-only")
    ids = head + _pieces(tokenizer, text)[: max_length - len(head) - len(tail)] + tail
    return Seq(tuple(ids), len(ids))


def encoder_decoder_source(tokenizer: Any, tok: Tokens, text: str, max_length: int) -> list[int]:
    head, tail = tok.wrap("encoder-decoder")
    return head + _pieces(tokenizer, text)[: max_length - len(head) - len(tail)] + tail


def decoder_only_context(tokenizer: Any, tok: Tokens, text: str, max_length: int) -> list[int]:
    head, _ = tok.wrap("decoder-only")
    keep = max_length - len(head)
    pieces = _pieces(tokenizer, text)
    return head + (pieces[-keep:] if keep > 0 else [])  # the nearest left context matters most


def make_example(task: str, row: dict, tokenizer: Any, tok: Tokens, max_source: int, max_target: int) -> dict:
    """One task row as the sequences (and labels, references) its head needs, in the task's layout."""
    spec = tasks.get(task)
    if spec.layout == "encoder-only":
        lengths = {"source": max_source, "target": max_target}
        example: dict[str, Any] = {
            name: encoder_only(tokenizer, tok, row[name], lengths[which]) for name, which in spec.sequences.items()
        }
        if "label" in spec.fields:
            example["label"] = int(row["label"])
        return example
    target = _pieces(tokenizer, row["target"])[: max_target - 2] + [tok.eos]
    if spec.layout == "decoder-only":
        prompt = decoder_only_context(tokenizer, tok, row["source"], max_source)
        return {"seq": Seq(tuple(prompt + target), 0), "prompt": prompt, "loss_from": 0, "reference": row["target"]}
    source = encoder_decoder_source(tokenizer, tok, row["source"], max_source)
    prompt = source + [tok.target_start]
    ids = prompt + target
    return {"seq": Seq(tuple(ids), len(source)), "prompt": prompt, "loss_from": len(source), "reference": row["target"]}


def load_split(
    tasks_dir: Path, task: str, split: str, limit: int, seed: int, *, min_rows: int = MIN_ROWS
) -> list[dict]:
    """Rows of one split; at most ``limit`` (a seeded sample, in file order), never fewer than ``min_rows``."""
    if task not in tasks.TASKS:
        raise DatasetError(f"unknown task {task!r}; expected one of {', '.join(tasks.TASK_NAMES)}")
    path = Path(tasks_dir) / task / f"{split}.jsonl"
    if not path.exists():
        raise DatasetError(f"{path}: not found (run `dvc repro tasks` first)")
    rows = read_jsonl(path, required=tasks.get(task).fields)
    if limit and len(rows) > limit:
        keep = sorted(random.Random(seed).sample(range(len(rows)), limit))
        rows = [rows[i] for i in keep]
    if len(rows) < min_rows:
        raise DatasetError(f"{path}: {len(rows)} row(s); {task} needs at least {min_rows} in {split}")
    if tasks.get(task).head == "clone" and split == "valid" and len({int(r["label"]) for r in rows}) < 2:
        raise DatasetError(f"{path}: needs both clone (1) and non-clone (0) pairs to choose the threshold")
    return rows


# --------------------------------------------------------------------- batches


def lm_labels(examples: list[dict], width: int) -> torch.Tensor:
    """Next-token labels from ``loss_from`` on (-100 elsewhere): the target for seq2seq, all for completion."""
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, ex in enumerate(examples):
        ids = ex["seq"].ids
        start = ex["loss_from"]
        labels[row, start : len(ids) - 1] = torch.tensor(ids[start + 1 :])
    return labels


def index_loader(
    n: int, batch_size: int, *, shuffle: torch.Generator | None = None, collate_fn: Callable[[list[int]], Any] = list
) -> DataLoader:
    """Batches of the indices ``0..n-1``, in a random order drawn from ``shuffle`` (else in order),
    each passed through ``collate_fn``; ``accelerator.prepare`` shards it across processes.

    The loader has a generator of its own for its worker seed, so iterating it never draws
    from the global RNG, which drives dropout: batching leaves the training numbers unchanged.
    """
    sampler = RandomSampler(range(n), generator=shuffle) if shuffle is not None else None
    return DataLoader(range(n), batch_size, sampler=sampler, collate_fn=collate_fn, generator=torch.Generator())
