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
from collections.abc import Callable, Sequence
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
# A text goes to the tokenizer clipped to CLIP_CHARS_PER_TOKEN characters per token of the limit at each end
# (no token of real code is that long on average, so no kept token changes), the limit at least
# CLIP_MIN_TOKENS, so one tokenized form serves every length setting: memory per row stays bounded.
CLIP_CHARS_PER_TOKEN = 32
CLIP_MIN_TOKENS = 1024


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


def clip_tokens(*limits: int) -> int:
    """The token limit texts are clipped for: the largest of ``limits``, at least ``CLIP_MIN_TOKENS``."""
    return max(CLIP_MIN_TOKENS, *limits)


def clip_text(text: str, max_tokens: int) -> str:
    """``text`` as the tokenizer sees it: a text longer than twice the bound (``CLIP_CHARS_PER_TOKEN``
    x ``max_tokens`` characters) keeps its first and its last bound characters, so both the first
    ``max_tokens`` tokens (sources, targets) and the last (left contexts) come out as from the whole text."""
    bound = CLIP_CHARS_PER_TOKEN * max_tokens
    return text if len(text) <= 2 * bound else text[:bound] + text[-bound:]


def token_ids(tokenizer: Any, text: str, max_tokens: int) -> list[int]:
    """The ids of ``text`` (no special tokens), tokenized from ``clip_text(text, max_tokens)``."""
    return tokenizer(clip_text(text, clip_tokens(max_tokens)), add_special_tokens=False)["input_ids"]


def encoder_only(tok: Tokens, pieces: list[int], max_length: int) -> Seq:
    head, tail = tok.wrap("encoder-only")
    ids = head + pieces[: max_length - len(head) - len(tail)] + tail
    return Seq(tuple(ids), len(ids))


def encoder_decoder_source(tok: Tokens, pieces: list[int], max_length: int) -> list[int]:
    head, tail = tok.wrap("encoder-decoder")
    return head + pieces[: max_length - len(head) - len(tail)] + tail


def decoder_only_context(tok: Tokens, pieces: list[int], max_length: int) -> list[int]:
    head, _ = tok.wrap("decoder-only")
    keep = max_length - len(head)
    return head + (pieces[-keep:] if keep > 0 else [])  # the nearest left context matters most


def kept_pieces(
    task: str, pieces: dict[str, list[int]], tok: Tokens, max_source: int, max_target: int
) -> dict[str, list[int]]:
    """Each text field's ids as the model's input keeps them: cut to its length less the mode's special tokens
    (an encoder-only field, a source), the last ones of a left context, a target cut before its ``</s>``."""
    spec = tasks.get(task)
    if spec.layout == "encoder-only":
        head, tail = tok.wrap("encoder-only")
        lengths = {"source": max_source, "target": max_target}
        return {name: pieces[name][: lengths[which] - len(head) - len(tail)] for name, which in spec.sequences.items()}
    out = {"target": pieces["target"][: max_target - 2]}
    if spec.layout == "decoder-only":
        head, _ = tok.wrap("decoder-only")
        keep = max_source - len(head)
        out["source"] = pieces["source"][-keep:] if keep > 0 else []  # the nearest left context matters most
    else:
        head, tail = tok.wrap("encoder-decoder")
        out["source"] = pieces["source"][: max_source - len(head) - len(tail)]
    return out


def model_view(
    task: str, row: dict, tokenizer: Any, tok: Tokens, max_source: int, max_target: int, fields: tuple[str, ...] = ()
) -> dict:
    """``row`` with each text field (only ``fields`` when given) replaced by the text of the tokens the model
    reads of it (:func:`kept_pieces`): what a no-training baseline reads to see exactly the model's input."""
    pieces = {f: token_ids(tokenizer, row[f], max(max_source, max_target)) for f in tasks.get(task).text_fields}
    kept = kept_pieces(task, pieces, tok, max_source, max_target)
    view = {f: tokenizer.decode(ids, clean_up_tokenization_spaces=False) for f, ids in kept.items()}
    return {**row, **{f: text for f, text in view.items() if not fields or f in fields}}


def make_example(task: str, row: dict, tokenizer: Any, tok: Tokens, max_source: int, max_target: int) -> dict:
    """One task row as the sequences (and labels, references) its head needs, in the task's layout."""
    pieces = {f: token_ids(tokenizer, row[f], max(max_source, max_target)) for f in tasks.get(task).text_fields}
    return example_from_pieces(task, pieces, row, tok, max_source, max_target)


def example_from_pieces(
    task: str, pieces: dict[str, list[int]], row: dict, tok: Tokens, max_source: int, max_target: int
) -> dict:
    """``make_example`` from the texts' token ids (not yet cut to the lengths, no special tokens); ``row`` gives
    the label (clone detection) or the target text (the reference of the generation tasks)."""
    spec = tasks.get(task)
    pieces = kept_pieces(task, pieces, tok, max_source, max_target)  # the cuts below then keep every id
    if spec.layout == "encoder-only":
        lengths = {"source": max_source, "target": max_target}
        example: dict[str, Any] = {
            name: encoder_only(tok, pieces[name], lengths[which]) for name, which in spec.sequences.items()
        }
        if "label" in spec.fields:
            example["label"] = int(row["label"])
        return example
    target = pieces["target"][: max_target - 2] + [tok.eos]
    if spec.layout == "decoder-only":
        prompt = decoder_only_context(tok, pieces["source"], max_source)
        return {"seq": Seq(tuple(prompt + target), 0), "prompt": prompt, "loss_from": 0, "reference": row["target"]}
    source = encoder_decoder_source(tok, pieces["source"], max_source)
    prompt = source + [tok.target_start]
    ids = prompt + target
    return {"seq": Seq(tuple(ids), len(source)), "prompt": prompt, "loss_from": len(source), "reference": row["target"]}


def _split_path(tasks_dir: Path, task: str, split: str) -> Path:
    if task not in tasks.TASKS:
        raise DatasetError(f"unknown task {task!r}; expected one of {', '.join(tasks.TASK_NAMES)}")
    path = Path(tasks_dir) / task / f"{split}.jsonl"
    if not path.exists():
        raise DatasetError(f"{path}: not found (run `dvc repro tasks` first)")
    return path


def sample_rows(n: int, limit: int, seed: int) -> list[int]:
    """At most ``limit`` of ``n`` row numbers: a seeded sample, in file order (all when ``limit`` is 0)."""
    if limit and n > limit:
        return sorted(random.Random(seed).sample(range(n), limit))
    return list(range(n))


def _check_rows(path: Path, task: str, split: str, n: int, labels: list[int] | None, min_rows: int) -> None:
    if n < min_rows:
        raise DatasetError(f"{path}: {n} row(s); {task} needs at least {min_rows} in {split}")
    if tasks.get(task).head == "clone" and split == "valid" and len(set(labels or ())) < 2:
        raise DatasetError(f"{path}: needs both clone (1) and non-clone (0) pairs to choose the threshold")


def load_split(
    tasks_dir: Path, task: str, split: str, limit: int, seed: int, *, min_rows: int = MIN_ROWS
) -> list[dict]:
    """Rows of one split; at most ``limit`` (a seeded sample, in file order), never fewer than ``min_rows``."""
    path = _split_path(tasks_dir, task, split)
    fields = tasks.get(task).fields
    rows = read_jsonl(path, required=fields)
    rows = [rows[i] for i in sample_rows(len(rows), limit, seed)]
    _check_rows(path, task, split, len(rows), [int(r["label"]) for r in rows] if "label" in fields else None, min_rows)
    return rows


def load_examples(
    tasks_dir: Path,
    task: str,
    split: str,
    limit: int,
    seed: int,
    tokenizer: Any,
    tok: Tokens,
    max_source: int,
    max_target: int,
    *,
    cache_dir: Path | None = None,
    min_rows: int = MIN_ROWS,
) -> list[dict]:
    """``make_example`` of the rows ``load_split`` picks (the same rows, the same examples). With a
    ``cache_dir`` the split is tokenized once into ``cache_dir/tokens/`` (tokens.py) and later runs
    read only the sampled rows' token ids from it."""
    if cache_dir is None:
        rows = load_split(tasks_dir, task, split, limit, seed, min_rows=min_rows)
        return [make_example(task, r, tokenizer, tok, max_source, max_target) for r in rows]
    from telly.finetuning.tokens import tokenized_split

    path = _split_path(tasks_dir, task, split)
    store = tokenized_split(path, task, tokenizer, Path(cache_dir) / "tokens", clip_tokens(max_source, max_target))
    keep = sample_rows(len(store), limit, seed)
    labels = [int(store.labels[i]) for i in keep] if store.labels is not None else None
    _check_rows(path, task, split, len(keep), labels, min_rows)
    return [example_from_pieces(task, store.pieces(i), store.row(i), tok, max_source, max_target) for i in keep]


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
    n: int,
    batch_size: int,
    *,
    shuffle: torch.Generator | None = None,
    collate_fn: Callable[[list[int]], Any] = list,
    lengths: Sequence[int] | None = None,
) -> DataLoader:
    """Batches of the indices ``0..n-1``, in a random order drawn from ``shuffle`` (else in order),
    each passed through ``collate_fn``; ``accelerator.prepare`` shards it across processes. With
    ``lengths`` (and ``shuffle``) the order groups rows of similar length into a batch
    (transformers' ``LengthGroupedSampler``, drawing from ``shuffle``).

    The loader has a generator of its own for its worker seed, so iterating it never draws
    from the global RNG, which drives dropout: batching leaves the training numbers unchanged.
    """
    sampler = RandomSampler(range(n), generator=shuffle) if shuffle is not None else None
    if shuffle is not None and lengths is not None:
        from transformers.trainer_pt_utils import LengthGroupedSampler

        sampler = LengthGroupedSampler(batch_size, lengths=list(lengths), generator=shuffle)
    return DataLoader(
        range(n),
        batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        generator=torch.Generator(),
        pin_memory=torch.cuda.is_available(),  # batches (and cached states) copy to the GPU asynchronously
    )
