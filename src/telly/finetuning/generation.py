"""Beam search for the seq2seq and decoder-only heads.

Hypotheses are scored by the sum of token log-probabilities with no length
penalty, as UniXcoder's ``Beam``. Under the UniLM mask no prompt position ever
sees the target (prefix positions see the prefix, later ones only earlier
positions), so the prompt's keys and values are the same at every step:
``beam_search`` encodes the prompt once and then runs one new token per beam
through the layers, attending to the cached keys/values (incremental decoding).
``beam_search_reference`` is the original, re-encode-everything-per-step version
(kept as the reference the fast one is tested against, and the fallback for
encoders whose layers we cannot drive one token at a time).

The fast path drives the model's own modules (the embeddings and each layer the
architecture adapter names, with a key/value ``cache``, as transformers' BERT/RoBERTa
self-attention accepts; the adapter's ``incremental`` says which families do), so every
number is computed by the module's code; only the position ids of the new token are
computed here, by the embedding's own rule.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from tqdm.auto import tqdm

from telly.finetuning.data import Seq, collate
from telly.finetuning.heads import TaskModel

log = logging.getLogger(__name__)

# The paper's line completion (eval batch 256 x beam 5 x 1,000 positions) would need ~94 GB of fp32
# keys/values at once; batches are cut to stay under this.
KV_BUDGET_BYTES = 8 * 2**30


class _BeamKeyValues:
    """Preallocated keys/values of every layer for ``rows`` = examples x beams: the prompt's
    columns ``[0, P)`` are written once (each beam of an example holds the same prompt), generated
    tokens go to column ``P + t``. Passed to the layers as their ``cache``: ``update`` stores the
    new columns and hands back everything so far (the layer attends over it)."""

    def __init__(self, layers: int):
        self.keys: list[torch.Tensor | None] = [None] * layers
        self.values: list[torch.Tensor | None] = [None] * layers
        self.beams, self.capacity, self.filled = 1, 0, 0
        self.prompt_mode = True

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        if self.prompt_mode:  # [B, heads, P, d] -> every beam's rows
            rows, heads, width, dim = key.shape
            shape = (rows * self.beams, heads, self.capacity, dim)
            self.keys[layer_idx] = key.new_empty(shape)
            self.values[layer_idx] = value.new_empty(shape)
            self.keys[layer_idx][:, :, :width] = key.repeat_interleave(self.beams, 0)
            self.values[layer_idx][:, :, :width] = value.repeat_interleave(self.beams, 0)
            return key, value
        end = self.filled + key.shape[2]
        self.keys[layer_idx][:, :, self.filled : end] = key
        self.values[layer_idx][:, :, self.filled : end] = value
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]

    def reorder(self, rows: torch.Tensor, start: int, every_column: bool = False) -> None:
        """Row i takes row ``rows[i]``'s keys/values: its parent beam's generated columns (the
        prompt's are the same in every beam of an example), or, when the batch shrinks, every column."""
        for store in (self.keys, self.values):
            for i, layer in enumerate(store):
                if every_column:
                    store[i] = layer[rows]
                elif self.filled > start:
                    layer[:, :, start : self.filled] = layer[rows, :, start : self.filled]


def _position_rule(embeddings: torch.nn.Module) -> str | None:
    """How the embedding numbers positions: RoBERTa counts non-pad tokens from ``padding_idx + 1``
    (a generated pad token gets ``padding_idx``), BERT numbers them 0, 1, 2, ..."""
    if hasattr(embeddings, "create_position_ids_from_input_ids") and hasattr(embeddings, "padding_idx"):
        return "count_non_pad"
    if hasattr(embeddings, "position_ids") and hasattr(embeddings, "position_embeddings"):
        return "absolute"
    return None


def supports_incremental(model: TaskModel) -> bool:
    """Whether the encoder's family decodes one token at a time (its adapter says), numbering
    positions by a rule we know, under an attention implementation that takes a 4-D mask."""
    encoder, adapter = model.encoder, model.adapter
    if not adapter.incremental or _position_rule(adapter.embeddings_module(encoder)) is None:
        return False
    return encoder.config._attn_implementation in ("sdpa", "eager")  # flash/flex take no 4-D mask


def _unilm_keep(lengths: torch.Tensor, prefixes: torch.Tensor, width: int) -> torch.Tensor:
    """``data.attention_mask`` built on the device: query i sees key j < length when j < prefix or j <= i."""
    i = torch.arange(width, device=lengths.device)[None, :, None]
    j = torch.arange(width, device=lengths.device)[None, None, :]
    return (((j < prefixes[:, None, None]) | (j <= i)) & (j < lengths[:, None, None]))[:, None]


def _layer_mask(model: TaskModel, keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A 4-D keep-mask in the implementation's form: SDPA takes it as is (any dtype under autocast),
    eager attention adds it (0 / the dtype's minimum)."""
    if model.encoder.config._attn_implementation == "sdpa":
        return keep
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)


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
    kv_budget_bytes: int = KV_BUDGET_BYTES,
) -> list[list[int]]:
    """The best continuation (without the end token) of each prompt: the same hypotheses as
    ``beam_search_reference``, with the prompt encoded once and one token per beam per step.
    Batches shrink below ``batch_size`` where their key/value cache would pass ``kv_budget_bytes``
    (each example is decoded independently, so the tokens do not change)."""
    if not supports_incremental(model):
        log.info("beam search: %s layers take no key/value cache here; re-encoding every step", type(model.encoder))
        return beam_search_reference(
            model,
            prompts,
            prefixes,
            beam_size=beam_size,
            max_new_tokens=max_new_tokens,
            eos_id=eos_id,
            pad_id=pad_id,
            batch_size=batch_size,
        )
    was_training = model.training
    model.eval()
    batch_size = min(batch_size, _examples_within(model, prompts, beam_size, max_new_tokens, kv_budget_bytes))
    results: list[list[int]] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="beam search", leave=False):
        end = min(start + batch_size, len(prompts))
        results += _beam_batch(
            model, prompts[start:end], prefixes[start:end], beam_size, max_new_tokens, eos_id, pad_id
        )
    model.train(was_training)
    return results


def _examples_within(model: TaskModel, prompts: list[list[int]], beams: int, max_new_tokens: int, budget: int) -> int:
    """Examples per batch whose key/value cache (every beam holds prompt + target positions, per
    layer keys and values) stays within ``budget`` bytes, counted at the parameters' dtype."""
    config = model.encoder.config
    weight = next(model.parameters())
    positions = max((len(p) for p in prompts), default=1) + max_new_tokens
    per_example = beams * positions * config.num_hidden_layers * 2 * config.hidden_size * weight.element_size()
    return max(1, budget // per_example)


def _beam_batch(
    model: TaskModel,
    prompts: list[list[int]],
    prefixes: list[int],
    beams: int,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
) -> list[list[int]]:
    encoder = model.encoder
    layers = model.adapter.layers(encoder)
    embeddings = model.adapter.embeddings_module(encoder)
    device = next(model.parameters()).device
    n, rows = len(prompts), len(prompts) * beams

    # 1. The prompt, once: right-padded, UniLM mask, its keys/values stored for every beam.
    batch = collate([Seq(tuple(p), f) for p, f in zip(prompts, prefixes)], pad_id)
    ids, lengths = batch["ids"].to(device), batch["lengths"].to(device)
    width = ids.shape[1]
    kv = _BeamKeyValues(len(layers))
    kv.beams, kv.capacity = beams, width + max_new_tokens
    hidden = embeddings(input_ids=ids)
    mask = _layer_mask(model, _unilm_keep(lengths, torch.tensor(prefixes, device=device), width), hidden.dtype)
    hidden = _through_layers(layers, hidden, mask, kv)
    kv.prompt_mode, kv.filled = False, width
    last = hidden[torch.arange(n, device=device), lengths - 1]
    logprobs = torch.log_softmax(model.lm_logits(last).float(), dim=-1).repeat_interleave(beams, 0)

    # 2. Beams as tensors: row b * beams + s is beam s of the batch's b-th unfinished example. A beam
    # with score -inf is dead (the first step has one live beam per example, as the reference's single
    # empty hypothesis). Finished examples leave the batch, as the reference stops running their rows.
    # Scores in float64: the reference sums Python floats, so ties and near-ties resolve the same way.
    scores = torch.full((n, beams), float("-inf"), dtype=torch.float64, device=device)
    scores[:, 0] = 0.0
    tokens = torch.empty(rows, 0, dtype=torch.long, device=device)
    rule = _position_rule(embeddings)
    prompt_lengths = lengths.repeat_interleave(beams)
    non_pad = (ids != pad_id).sum(1).repeat_interleave(beams)  # RoBERTa's position counter
    # The new token (query) sees the prompt's real columns and every generated column.
    column = torch.arange(kv.capacity, device=device)
    keep = (column[None, :] < prompt_lengths[:, None]) | (column[None, :] >= width)
    step_mask = _layer_mask(model, keep[:, None, None, :], hidden.dtype)
    done: list[list[tuple[list[int], float]]] = [[] for _ in range(n)]
    example_of = list(range(n))  # batch position -> example

    for step in range(max_new_tokens):
        m = len(example_of)
        top_lp, top_ids = logprobs.topk(beams, dim=-1)  # [m * beams, beams]
        candidates = (scores[:, :, None] + top_lp.double().view(m, beams, beams)).view(m, beams * beams)
        # the reference sorts each example's candidates (beam-major, then top-k order) by score, stably
        order = torch.sort(candidates, dim=1, descending=True, stable=True).indices[:, :beams]
        best = candidates.gather(1, order)
        chosen = top_ids.view(m, beams * beams).gather(1, order)
        parents = torch.arange(m, device=device)[:, None] * beams + order // beams  # rows of this step
        ended = chosen == eos_id
        if ended.any():
            for b, s in ended.nonzero().tolist():  # finished hypotheses leave the beam (few: host copies)
                done[example_of[b]].append((tokens[parents[b, s]].tolist(), float(best[b, s])))
        scores = best.masked_fill(ended, float("-inf"))
        finished = torch.tensor([len(done[e]) >= beams for e in example_of], device=device)
        running = (~(finished | torch.isinf(scores).all(1))).nonzero().squeeze(1)
        if len(running) == 0:
            break
        if len(running) < m:
            example_of = [example_of[b] for b in running.tolist()]
            scores, chosen, parents = scores[running], chosen[running], parents[running]
        parents = parents.view(-1)
        tokens = torch.cat([tokens[parents], chosen.view(-1, 1)], dim=1)
        if step == max_new_tokens - 1:
            break
        # 3. One step: the chosen token of every beam through the layers, over the cached keys/values.
        # Per-row state follows each beam's parent (prompt lengths and masks are the same in every
        # beam of an example, so this also drops the finished examples' rows).
        new = chosen.view(-1)
        kv.reorder(parents, width, every_column=len(parents) != len(prompt_lengths))
        prompt_lengths, step_mask = prompt_lengths[parents], step_mask[parents]
        non_pad = non_pad[parents] + (new != pad_id)
        if rule == "count_non_pad":
            position = torch.where(new != pad_id, non_pad + embeddings.padding_idx, embeddings.padding_idx)
        else:
            position = prompt_lengths + step
        hidden = embeddings(input_ids=new[:, None], position_ids=position[:, None])
        mask = step_mask[..., : kv.filled + 1]
        hidden = _through_layers(layers, hidden, mask, kv)
        kv.filled += 1
        logprobs = torch.log_softmax(model.lm_logits(hidden[:, 0]).float(), dim=-1)

    return _best_hypotheses(done, example_of, scores, tokens, beams)


def _through_layers(layers: Any, hidden: torch.Tensor, mask: torch.Tensor, kv: Any) -> torch.Tensor:
    for layer in layers:
        hidden = layer(hidden, mask, cache=kv)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    return hidden


def _best_hypotheses(
    done: list[list[tuple[list[int], float]]],
    example_of: list[int],
    scores: torch.Tensor,
    tokens: torch.Tensor,
    beams: int,
) -> list[list[int]]:
    """An example with finished hypotheses returns the best of them (the first on ties, as the reference's max);
    one cut at max_new_tokens with none, its best live beam."""
    live = {e: b for b, e in enumerate(example_of)}
    results = []
    for e in range(len(done)):
        if done[e]:
            results.append(max(done[e], key=lambda c: c[1])[0])
            continue
        b = live[e]
        beam_scores = [(s, v) for s, v in enumerate(scores[b].tolist()) if v != float("-inf")]
        s = max(beam_scores, key=lambda c: c[1])[0]
        results.append(tokens[b * beams + s].tolist())
    return results


@torch.no_grad()
def beam_search_reference(
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
    """The best continuation (without the end token) of each prompt, re-encoding prompt +
    hypothesis at every step (the original implementation)."""
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
