"""Pre-training data as UniXcoder sees it: the views of each function and one batch per objective.

Views of a training function (token ids without framing):

- ``code``: the corpus field as it is (docstring included), cut into pieces that fit;
- ``ast``: UniXcoder's multi-modal input, the docstring's first sentence followed by the
  flattened AST of the code without docstring and comments (:func:`telly.data.analysis.flattened_ast`),
  truncated to fit;
- for the contrastive objective, per function with a docstring: the code without docstring
  and comments (as the code search task's ``code``), its comment (as the task's ``query``) and
  its flattened AST alone.

Every input is framed exactly as the downstream tasks frame theirs (:mod:`telly.models.inputs`):

- ``mlm`` (encoder-only): ``<s> <encoder-only> </s> x </s>``, bidirectional, 80/10/10 masking;
- ``ulm`` (decoder-only): ``<s> <decoder-only> </s> x </s>``, causal, next token everywhere
  (line completion's layout);
- ``denoise`` (encoder-decoder): ``<s> <encoder-decoder> </s> x' </s>`` with spans of ``x``
  replaced by ``<mask0>``, ``<mask1>``, ... then the target ``<mask0> span0 <mask1> span1 ... </s>``
  under the prefix-LM mask (summarization's and generation's layout, whose target also starts
  with ``<mask0>``);
- ``crossgen`` (encoder-decoder): UniXcoder's cross-modal generation, ``<s> <encoder-decoder> </s> ast </s>``
  then the target ``<mask0> comment </s>`` under the prefix-LM mask: the comment generated from the
  flattened AST (summarization's layout);
- ``contrastive`` (encoder-only): the three views of a batch of functions, each alone.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from telly.errors import TellyError
from telly.jsonl import read_jsonl
from telly.models.inputs import Mode, wrap

log = logging.getLogger(__name__)

# crossgen last: with its share at 0 the other objectives draw as they would without it
OBJECTIVES = ("mlm", "ulm", "denoise", "contrastive", "crossgen")
CROSSGEN_TARGET = 64  # comment tokens kept as the target (the first docstring sentence rarely needs more)


# ------------------------------------------------------------------------- the views


def read_rows(path: Path, field: str) -> list[dict]:
    rows = read_jsonl(path, required=(field,))
    if not rows:
        raise TellyError(f"{path}: no rows; the pretrain stage needs the corpus (run `dvc repro prepare`)")
    return rows


def comment_of(row: dict) -> str:
    """The docstring's first sentence, as the code search and summarization tasks use it."""
    return " ".join(row.get("docstring_tokens") or [])


def ast_text(tokens: list[str]) -> str:
    """A flattened AST as text for the tokenizer: leaves separated by a space (BPE's word start),
    boundary tokens (special tokens, never split) written without one, so no space token is spent on them."""
    from telly.data.analysis import is_ast_boundary

    return "".join(t if is_ast_boundary(t) else " " + t for t in tokens)


@dataclass
class FunctionViews:
    """Text views of the functions that parse (``None`` where a function does not)."""

    clean: list[str | None]  # code without docstring and comments
    ast: list[str | None]  # its flattened AST as text
    comment: list[str]  # "" where there is no docstring


def function_views(rows: list[dict], field: str, lang: str) -> FunctionViews:
    from telly.data.analysis import UnparsableCode, clean_code, flattened_ast

    clean: list[str | None] = []
    ast: list[str | None] = []
    skipped = 0
    for row in rows:
        try:
            code = clean_code(str(row[field]), lang)
            clean.append(code)
            ast.append(ast_text(flattened_ast(code, lang)))
        except UnparsableCode:
            clean.append(None)
            ast.append(None)
            skipped += 1
    if skipped:
        log.info("%d of %d functions do not parse: no AST view for them", skipped, len(rows))
    return FunctionViews(clean, ast, [comment_of(r) for r in rows])


def token_ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]


def code_pieces(tokenizer: Any, texts: list[str], budget: int) -> list[list[int]]:
    """Every function's tokens, cut into pieces of at most ``budget`` tokens (no framing)."""
    pieces = []
    for ids in token_ids(tokenizer, texts):
        for start in range(0, len(ids), budget):
            chunk = ids[start : start + budget]
            if len(chunk) >= 2:  # a one-token tail teaches nothing
                pieces.append(chunk)
    return pieces


@dataclass
class Corpus:
    """Token ids of every view, ready for batching (each list indexed by its own examples)."""

    pieces: list[list[int]]  # plain code pieces
    ast_inputs: list[list[int]]  # comment + flattened AST
    pairs: list[tuple[list[int], list[int], list[int]]]  # (clean code, comment, AST) of documented functions

    def source(self, name: str) -> list:
        return {"code": self.pieces, "ast": self.ast_inputs, "pairs": self.pairs}[name]

    def lengths(self, name: str) -> np.ndarray:
        if name == "pairs":
            return np.array([len(c) + len(a) for c, _, a in self.pairs])
        return np.array([len(x) for x in self.source(name)])


def build_corpus(tokenizer: Any, rows: list[dict], field: str, lang: str, max_length: int, views: bool) -> Corpus:
    """``views`` off (the MLM-only recipe): code pieces only, nothing parsed."""
    budget = max_length - 4  # <s> mode </s> ... </s>
    pieces = code_pieces(tokenizer, [str(r[field]) for r in rows], budget)
    if not views:
        return Corpus(pieces, [], [])
    fv = function_views(rows, field, lang)
    ok = [i for i, a in enumerate(fv.ast) if a is not None]
    comments = token_ids(tokenizer, [fv.comment[i] for i in ok])
    asts = token_ids(tokenizer, [fv.ast[i] for i in ok])
    cleans = token_ids(tokenizer, [fv.clean[i] for i in ok])
    ast_inputs = [(c + a)[:budget] for c, a in zip(comments, asts) if len(c) + len(a) >= 2]
    pairs = [(s[:budget], c[:budget], a[:budget]) for s, c, a in zip(cleans, comments, asts) if c and s and a]
    return Corpus(pieces, ast_inputs, pairs)


# ------------------------------------------------------------------------- the mixture


def objective_of_step(weights: dict[str, float], seed: int, step: int, mlm_first_steps: int = 0) -> str:
    """The objective of one training step: masked-LM for the first ``mlm_first_steps``, then drawn
    from the mixture; a function of (seed, step) only, so a resumed run draws the same sequence."""
    if step < mlm_first_steps:
        return "mlm"
    names = [n for n in OBJECTIVES if weights.get(n, 0) > 0]
    p = np.array([weights[n] for n in names], dtype=float)
    return names[int(np.random.default_rng([seed, step, 1]).choice(len(names), p=p / p.sum()))]


def input_of_step(ast_share: float, seed: int, step: int, mlm_first_steps: int = 0) -> str:
    """``ast`` (comment + flattened AST) or ``code`` for a language-modelling step (plain code
    throughout the first ``mlm_first_steps``: the MLM-only recipe's start)."""
    if step < mlm_first_steps:
        return "code"
    return "ast" if np.random.default_rng([seed, step, 2]).random() < ast_share else "code"


def epoch_batches(lengths: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Shuffled batches of similar length (less padding), the same for the same seed and epoch."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(lengths))
    pool = batch_size * 50  # sort within pools of 50 batches: similar lengths, still random
    batches = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


class Batcher:
    """The next batch of a source; how many each source has given is the resumable state."""

    def __init__(self, corpus: Corpus, batch_size: int, seed: int, drawn: dict[str, int] | None = None):
        self.corpus, self.batch_size, self.seed = corpus, batch_size, seed
        self.drawn = dict(drawn or {})
        self._epochs: dict[str, tuple[int, list[np.ndarray]]] = {}

    def next(self, name: str) -> list:
        examples = self.corpus.source(name)
        if not examples:
            raise TellyError(f"pretrain: no training examples for the {name!r} input (see docs/models.md)")
        per_epoch = math.ceil(len(examples) / self.batch_size)
        epoch, index = divmod(self.drawn.get(name, 0), per_epoch)
        if self._epochs.get(name, (None,))[0] != epoch:
            seed = self.seed + {"code": 0, "ast": 1, "pairs": 2}[name] * 1_000_003  # code keeps today's order
            self._epochs[name] = (epoch, epoch_batches(self.corpus.lengths(name), self.batch_size, seed, epoch))
        self.drawn[name] = self.drawn.get(name, 0) + 1
        return [examples[i] for i in self._epochs[name][1][index]]


# ------------------------------------------------------------------------ framing


@dataclass(frozen=True)
class Special:
    bos: int
    eos: int
    pad: int
    mask: int
    modes: dict[str, int]
    sentinels: list[int]

    @classmethod
    def of(cls, tokenizer: Any) -> Special:
        from telly.models.tokenizer import sentinel_tokens

        vocab = tokenizer.get_vocab()
        modes = {m: vocab[f"<{m}>"] for m in ("encoder-only", "encoder-decoder", "decoder-only")}
        sentinels = [vocab[t] for t in sentinel_tokens() if t in vocab]
        return cls(
            tokenizer.bos_token_id,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
            tokenizer.mask_token_id,
            modes,
            sentinels,
        )

    def frame(self, mode: Mode, ids: list[int]) -> list[int]:
        """The mode's head (telly.models.inputs.wrap) + ``ids`` + ``</s>``: a sequence the model learns to end."""
        head, _ = wrap(self.bos, self.eos, self.modes, mode)
        return [*head, *ids, self.eos]


def pad(rows: list[list[int]], value: int) -> Any:
    import torch

    out = torch.full((len(rows), max(len(r) for r in rows)), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def mlm_batch(collator: Any, sp: Special, examples: list[list[int]]) -> dict[str, Any]:
    """Encoder-only inputs, masked by the ``transformers`` collator (special tokens never masked)."""
    return collator([{"input_ids": sp.frame("encoder-only", x)} for x in examples])


def lm_batch(sp: Special, seqs: list[tuple[list[int], int, int]]) -> dict[str, Any]:
    """(ids, prefix, loss_from) -> ids, the UniLM mask and next-token labels from ``loss_from`` on,
    built by the fine-tuning code, so pre-training and fine-tuning share one layout."""
    from telly.models.inputs import Seq, collate

    batch = collate([Seq(tuple(ids), prefix) for ids, prefix, _ in seqs], sp.pad)
    labels = batch["ids"].new_full(batch["ids"].shape, -100)
    for row, (ids, _, start) in enumerate(seqs):
        labels[row, start : len(ids) - 1] = batch["ids"][row, start + 1 : len(ids)]
    return {"input_ids": batch["ids"], "attention_mask": batch["mask"], "labels": labels}


def ulm_batch(sp: Special, examples: list[list[int]]) -> dict[str, Any]:
    """Decoder-only: causal over the whole sequence (prefix 0), as line completion."""
    return lm_batch(sp, [(sp.frame("decoder-only", x), 0, 0) for x in examples])


def random_segmentation(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """``total`` split into ``parts`` positive lengths, uniformly (T5's span corruption)."""
    cuts = np.sort(rng.choice(np.arange(1, total), parts - 1, replace=False)) if parts > 1 else np.array([], int)
    return np.diff(np.concatenate([[0], cuts, [total]])).astype(int)


def corrupt_spans(
    ids: list[int], sp: Special, rate: float, mean_span: float, max_length: int, rng: np.random.Generator
) -> tuple[list[int], list[int]]:
    """T5-style span corruption: (source, target) with the spans behind sentinels, sized so that
    framed source + target fit ``max_length``: ``len(x) + 2 * spans + 5`` tokens."""
    length = len(ids)
    while True:
        masked = min(max(1, round(length * rate)), length - 1)
        spans = max(1, min(len(sp.sentinels), round(masked / mean_span), masked, length - masked))
        if length + 2 * spans + 5 <= max_length:
            break
        length = max_length - 5 - 2 * spans
    ids = ids[:length]
    noise = random_segmentation(masked, spans, rng)
    keep = random_segmentation(length - masked, spans, rng)
    source, target, at = [], [], 0
    for i in range(spans):  # kept tokens first, so a span never starts the input
        source.extend(ids[at : at + keep[i]])
        at += keep[i]
        source.append(sp.sentinels[i])
        target.append(sp.sentinels[i])
        target.extend(ids[at : at + noise[i]])
        at += noise[i]
    return source, target + [sp.eos]


def denoise_batch(
    sp: Special, examples: list[list[int]], rate: float, mean_span: float, max_length: int, rng: np.random.Generator
) -> dict[str, Any]:
    """Encoder-decoder: the corrupted input as the bidirectional prefix, the spans as the causal target."""
    seqs = []
    for x in examples:
        source, target = corrupt_spans(x, sp, rate, mean_span, max_length, rng)
        framed = sp.frame("encoder-decoder", source)
        seqs.append((framed + target, len(framed), len(framed)))
    return lm_batch(sp, seqs)


def crossgen_batch(sp: Special, examples: list[tuple[list[int], list[int], list[int]]], max_length: int) -> dict:
    """Encoder-decoder: each function's flattened AST as the bidirectional prefix, its comment as the
    causal target ``<mask0> comment </s>``; the AST is cut so that prefix and target fit ``max_length``."""
    seqs = []
    for _, comment, ast in examples:
        target = [sp.sentinels[0], *comment[:CROSSGEN_TARGET], sp.eos]
        framed = sp.frame("encoder-decoder", ast[: max(1, max_length - len(target) - 4)])
        seqs.append((framed + target, len(framed), len(framed)))
    return lm_batch(sp, seqs)


def encoder_only_batch(sp: Special, examples: list[list[int]]) -> dict[str, Any]:
    """Encoder-only inputs with a 2-D padding mask (for pooled representations)."""
    ids = pad([sp.frame("encoder-only", x) for x in examples], sp.pad)
    return {"input_ids": ids, "attention_mask": (ids != sp.pad).long()}


def contrastive_batch(sp: Special, examples: list[tuple[list[int], list[int], list[int]]]) -> dict[str, Any]:
    """The code, comment and AST views of the same functions (row i of each belongs together)."""
    return {
        "code": encoder_only_batch(sp, [c for c, _, _ in examples]),
        "comment": encoder_only_batch(sp, [q for _, q, _ in examples]),
        "ast": encoder_only_batch(sp, [a for _, _, a in examples]),
    }
