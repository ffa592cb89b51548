"""Evaluate a task model on a split: the paper's metrics plus one ``score`` that selects checkpoints.

What each task reports and how it selects (higher is better) is its registry entry
(``telly.tasks``): code search MRR, clone F1, summarization BLEU, generation BLEU + EM
(UniXcoder's ``best-score``), completion EM + edit similarity.

Code search ranks each query's code among the split's codes, or, for the test split when
``<tasks_dir>/code_search/codebase.jsonl`` exists, among the codebase (the paper's protocol:
UniXcoder's 14,918 CSN queries against 43,827 codes), in tiles on the device (``metrics.gold_ranks``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from telly import tasks
from telly.finetuning import examples as E
from telly.finetuning import metrics as M
from telly.finetuning.caching import HiddenCache
from telly.finetuning.data import DatasetError, Seq, Tokens, collate, encoder_only, token_ids
from telly.finetuning.generation import beam_search
from telly.finetuning.heads import TaskModel
from telly.jsonl import read_jsonl

log = logging.getLogger(__name__)

Batches = Iterable[list[int]]  # example indices, batch by batch (this process's share when data-parallel)
Gather = Callable[..., Any]  # every process's outputs of one batch, in example order (gather_for_metrics)


def _same(outputs: Any, **_: Any) -> Any:
    return outputs


class Evaluation(dict):
    """The aggregate metrics (a plain ``{name: value}`` dict, ``score`` included) with ``.examples``: one row of
    per-example scores per evaluated example, in order (:mod:`telly.finetuning.examples`)."""

    def __init__(self, metrics: Any = (), examples: list[dict] | None = None):
        super().__init__(metrics)  # copies (dataclasses.asdict, copy) keep the metrics only
        self.examples = examples or []


@dataclass(frozen=True)
class Codebase:
    """The codes the test queries are ranked among, and the row of each query's own code."""

    path: Path
    codes: list[Seq]
    gold: list[int]  # per query, in the order of the evaluated examples


def codebase_path(tasks_dir: str | Path, task: str = "code_search") -> Path:
    """Where a search task's codebase lies: ``<tasks_dir>/<task>/codebase.jsonl``."""
    return Path(tasks_dir) / task / "codebase.jsonl"


def load_codebase(path: str | Path, queries: list[dict], tokenizer: Any, tok: Tokens, max_length: int) -> Codebase:
    """``codebase.jsonl`` (rows ``{"id" or "url", "code"}``) tokenized as codes, each query's code found
    by its ``id`` (UniXcoder's evaluator matches the query's url to the code's)."""
    path = Path(path)
    rows = read_jsonl(path, required=("code",))
    row_of: dict[str, int] = {}
    for line, row in enumerate(rows, 1):
        key = row.get("id", row.get("url"))
        if key is None:
            raise DatasetError(f"{path}: line {line}: a codebase row needs an 'id' (or 'url')")
        if key in row_of:
            raise DatasetError(f"{path}: line {line}: id {key!r} is already on line {row_of[key] + 1}")
        row_of[key] = line - 1
    gold = []
    for query in queries:
        if query.get("id") not in row_of:
            raise DatasetError(f"{path}: has no code with the test query's id {query.get('id')!r}")
        gold.append(row_of[query["id"]])
    codes = [encoder_only(tok, token_ids(tokenizer, row["code"], max_length), max_length) for row in rows]
    log.info("code search: %d test queries ranked against the %d codes of %s", len(queries), len(codes), path)
    return Codebase(path, codes, gold)


@torch.no_grad()
def embed_all(
    model: TaskModel,
    examples: list[dict],
    field: str,
    pad_id: int,
    batches: Batches,
    cache: HiddenCache | None = None,
    gather: Gather = _same,
) -> torch.Tensor:
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for idx in batches:
        hidden = [cache[i] for i in idx] if cache is not None else None
        batch = collate([examples[i][field] for i in idx], pad_id, hidden)
        out.append(gather(model.embed({k: v.to(device) for k, v in batch.items()}).float()).cpu())
    model.train(was_training)
    return torch.cat(out)


def evaluate(
    model: TaskModel,
    examples: list[dict],
    tok: Tokens,
    tokenizer: Any,
    *,
    batches: Batches,
    beam_size: int,
    max_new_tokens: int,
    threshold: float | None = None,
    caches: dict[str, HiddenCache] | None = None,
    gather: Gather = _same,
    codebase: Codebase | None = None,
    codebase_batch_size: int = 64,
) -> Evaluation:
    """Metrics of ``model`` on ``examples``, read in ``batches`` of example indices. Clone
    detection, unless ``threshold`` (chosen on valid) is given, picks its threshold on one half of these
    examples and scores the other half at it (``metrics.threshold_split``: on valid, the checkpoint
    selection never reads the rows the threshold is fitted on).

    Data-parallel, ``batches`` is this process's share (a loader prepared by accelerate) and
    ``gather`` is ``accelerator.gather_for_metrics``: every process's outputs come back in example
    order, once each, so every process computes the metrics of the whole split.

    With ``codebase``, code search ranks each query's code among the codebase's codes (every
    process embeds the whole codebase) instead of among ``examples``' codes."""
    caches = caches or {}
    spec = tasks.get(model.task)
    if spec.head == "lm":
        out, rows = generation_metrics(
            spec, model, examples, tok, tokenizer, batches, beam_size, max_new_tokens, gather
        )
    else:
        a, b = spec.sequence_fields
        va = embed_all(model, examples, a, tok.pad, batches, caches.get(a), gather)
        if spec.head == "search":
            device = next(model.parameters()).device
            if codebase is None:
                codes, gold = embed_all(model, examples, b, tok.pad, batches, caches.get(b), gather), range(len(va))
            else:
                if len(codebase.gold) != len(va):
                    raise ValueError(f"{codebase.path}: {len(codebase.gold)} gold codes for {len(va)} queries")
                n, size = len(codebase.codes), codebase_batch_size
                rows = [{"code": seq} for seq in codebase.codes]
                codes = embed_all(model, rows, "code", tok.pad, [range(i, min(i + size, n)) for i in range(0, n, size)])
                gold = codebase.gold
            ranks = M.gold_ranks(va, codes, list(gold), device=device)
            out, rows = M.metrics_from_ranks(ranks), E.search_rows(ranks)
        else:  # clone: cosine against a threshold chosen on valid
            vb = embed_all(model, examples, b, tok.pad, batches, caches.get(b), gather)
            cos = (va * vb).sum(-1).numpy()
            labels = np.array([ex["label"] for ex in examples])
            if threshold is None:  # valid: threshold on one half, the selection score on the other
                out = M.split_threshold_metrics(cos, labels)
            else:
                out = M.classification_metrics(cos, labels, threshold)
            rows = E.clone_rows(cos >= out["threshold"], labels)
    return Evaluation({**out, "score": spec.score(out)}, rows)


def generation_metrics(
    spec: tasks.DownstreamTask,
    model: TaskModel,
    examples: list[dict],
    tok: Tokens,
    tokenizer: Any,
    batches: Batches,
    beam_size: int,
    max_new_tokens: int,
    gather: Gather,
) -> tuple[dict[str, float], list[dict]]:
    """Decode every prompt (beam search) and score the texts with the task's metrics."""

    hyps: list[str] = []
    for idx in batches:
        generated = beam_search(
            model,
            [examples[i]["prompt"] for i in idx],
            [examples[i]["seq"].prefix for i in idx],
            beam_size=beam_size,
            max_new_tokens=max_new_tokens,
            eos_id=tok.eos,
            pad_id=tok.pad,
            batch_size=len(idx),
        )
        texts = [" ".join(tokenizer.decode(g, skip_special_tokens=True).split()) for g in generated]
        hyps += gather(texts, use_gather_object=True)  # python objects, not tensors
    refs = [" ".join(ex["reference"].split()) for ex in examples]
    rows = E.generation_rows(spec.name, refs, hyps)  # the per-example scores, beside the corpus metrics
    return {name: getattr(M, function)(refs, hyps) for name, function in spec.text_metrics.items()}, rows
