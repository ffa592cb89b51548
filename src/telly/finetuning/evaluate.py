"""Evaluate a task model on a split: the paper's metrics plus one ``score`` that selects checkpoints.

What each task reports and how it selects (higher is better) is its registry entry
(``telly.tasks``): code search MRR, clone F1, summarization BLEU, generation BLEU + EM
(UniXcoder's ``best-score``), completion EM + edit similarity.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from telly import tasks
from telly.finetuning import examples as E
from telly.finetuning import metrics as M
from telly.finetuning.caching import HiddenCache
from telly.finetuning.data import Tokens, collate
from telly.finetuning.generation import beam_search
from telly.finetuning.heads import TaskModel

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
) -> Evaluation:
    """Metrics of ``model`` on ``examples``, read in ``batches`` of example indices. Clone
    detection picks its threshold on these examples unless ``threshold`` (chosen on valid) is given.

    Data-parallel, ``batches`` is this process's share (a loader prepared by accelerate) and
    ``gather`` is ``accelerator.gather_for_metrics``: every process's outputs come back in example
    order, once each, so every process computes the metrics of the whole split. The per-example scores come
    back beside them (``.examples``)."""
    caches = caches or {}
    spec = tasks.get(model.task)
    if spec.head == "lm":
        out, rows = generation_metrics(
            spec, model, examples, tok, tokenizer, batches, beam_size, max_new_tokens, gather
        )
    else:
        a, b = spec.sequence_fields
        va = embed_all(model, examples, a, tok.pad, batches, caches.get(a), gather)
        vb = embed_all(model, examples, b, tok.pad, batches, caches.get(b), gather)
        if spec.head == "search":
            scores = (va @ vb.T).numpy()
            out, rows = M.retrieval_metrics(scores), E.search_rows(scores)
        else:  # clone: cosine against a threshold chosen on valid
            cos = (va * vb).sum(-1).numpy()
            labels = np.array([ex["label"] for ex in examples])
            chosen = M.best_threshold(cos, labels) if threshold is None else threshold
            out, rows = M.classification_metrics(cos, labels, chosen), E.clone_rows(cos >= chosen, labels)
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
    """Decode every prompt (beam search) and score the texts with the task's metrics; the per-example rows."""

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
    rows = E.generation_rows(spec.name, refs, hyps)
    return {name: getattr(M, function)(refs, hyps) for name, function in spec.text_metrics.items()}, rows
