"""Beam search for the seq2seq and decoder-only heads.

Hypotheses are scored by the sum of token log-probabilities with no length
penalty, as UniXcoder's ``Beam``. Each step re-runs the encoder over prompt +
hypothesis (RoBERTa has no key/value cache outside decoder mode); sequences
are short here, and the UniLM mask makes the result identical to cached decoding.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from telly.finetuning.data import Seq, collate
from telly.finetuning.heads import TaskModel


@torch.no_grad()
def beam_search(
    model: TaskModel,
    prompts: list[list[int]],
    prefixes: list[int],
    *,
    beam_size: int,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    batch_size: int = 16,
) -> list[list[int]]:
    """The best continuation (without the end token) of each prompt."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    results: list[list[int]] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="beam search", leave=False):
        chunk = range(start, min(start + batch_size, len(prompts)))
        live = {i: [((), 0.0)] for i in chunk}  # example -> [(tokens, log-prob)]
        done: dict[int, list[tuple[tuple[int, ...], float]]] = {i: [] for i in chunk}
        for _ in range(max_new_tokens):
            rows = [(i, toks, score) for i in chunk for toks, score in live[i]]
            if not rows:
                break
            seqs = [Seq(tuple(prompts[i]) + toks, prefixes[i]) for i, toks, _ in rows]
            batch = {k: v.to(device) for k, v in collate(seqs, pad_id).items()}
            hidden = model.last_hidden(batch)
            last = hidden[torch.arange(len(rows), device=device), batch["lengths"] - 1]
            logprobs = torch.log_softmax(model.lm_logits(last).float(), dim=-1)
            top_lp, top_ids = logprobs.topk(beam_size, dim=-1)
            candidates: dict[int, list] = {i: [] for i in chunk}
            for r, (i, toks, score) in enumerate(rows):
                for lp, tid in zip(top_lp[r].tolist(), top_ids[r].tolist()):
                    candidates[i].append((toks + (tid,), score + lp))
            for i in chunk:
                if not candidates[i]:
                    continue
                best = sorted(candidates[i], key=lambda c: -c[1])[:beam_size]
                done[i] += [(toks[:-1], s) for toks, s in best if toks[-1] == eos_id]
                live[i] = [(toks, s) for toks, s in best if toks[-1] != eos_id]
                if len(done[i]) >= beam_size:
                    live[i] = []
        for i in chunk:
            pool = done[i] or live[i]
            results.append(list(max(pool, key=lambda c: c[1])[0]))
    model.train(was_training)
    return results
