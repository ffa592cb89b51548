"""No-training baselines, one per downstream task, on exactly the test rows the fine-tuning runs score.

A task only says something about freezing when Base learns it: beats what needs no training at all.
Each baseline reads the same seeded samples as :func:`telly.finetuning.train` (``load_split`` with the
task's ``train_size`` / ``valid_size`` / ``test_size`` and the data seed), scores the test rows with the
task's own metrics and writes a run-like ``results/baselines/<task>.json`` (``task``, ``variant: baseline``,
``method``, ``test``, ``settings``) with per-example rows beside it (:mod:`telly.finetuning.examples`):

- code search: BM25 (``bm25s``, Lucene's variant, k1 1.5, b 0.75) of each query against the test codes
  (rank = 1 + codes scoring strictly higher, MRR as UniXcoder's; the model ranks against
  ``codebase.jsonl`` when the tasks stage writes one: then the baseline's pool is smaller);
- clone detection: token-set Jaccard of the two codes (:func:`telly.data.baselines.pair_jaccard`), the
  threshold chosen on valid by the same F1 rule as the model's;
- code summarization: the docstring of the BM25-nearest training function;
- code generation: the code of the training row whose description is BM25-nearest;
- line completion: a 4-gram model of the training lines (nltk's ``NgramCounter``), greedy decoding with
  backoff to the longest context seen in training (no smoothing: greedy only needs the most frequent
  continuation), until the end of the line.

BM25 terms are lower-cased words with their snake_case / camelCase parts added (``getUserName`` ->
``getusername get user name``), so a query's words can meet an identifier's parts.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from telly import tasks
from telly.config import Params
from telly.data.baselines import BM25, pair_jaccard
from telly.errors import TellyError
from telly.finetuning import examples as E
from telly.finetuning import metrics as M
from telly.finetuning.data import load_split
from telly.jsonl import read_jsonl, write_json
from telly.registry import named

log = logging.getLogger(__name__)

NGRAM_ORDER = 4
MAX_LINE_TOKENS = 64
LINE_TOKEN = re.compile(r"\w+|[^\w\s]|\s+")
EOL = "\n"


# ------------------------------------------------------------------ the five baselines


def describe(method: str) -> Callable:
    """Mark a baseline (the function a task's ``baseline`` names) with the method its result reports."""

    def mark(fn: Callable) -> Callable:
        fn.method = method
        return fn

    return mark


@describe("BM25 of the query over the test codes (bm25s)")
def code_search(
    train: list[dict], valid: list[dict], test: list[dict], codebase: list[dict] | None = None
) -> tuple[dict, list[dict]]:
    """Each query ranked among the test codes, or among ``codebase`` rows (``{"id", "code"}``) when the model
    is ranked against one (``data/tasks/code_search/codebase.jsonl``)."""
    if codebase is None:
        pool, gold = [r["code"] for r in test], np.arange(len(test))
    else:
        row_of = {r.get("id", r.get("url")): i for i, r in enumerate(codebase)}
        missing = [r["id"] for r in test if r["id"] not in row_of]
        if missing:
            raise TellyError(f"code search codebase: no code for test queries {missing[:3]}")
        pool, gold = [r["code"] for r in codebase], np.array([row_of[r["id"]] for r in test])
    bm25 = BM25(pool)
    scores = np.stack([bm25.scores(r["query"]) for r in test])
    right = scores[np.arange(len(test)), gold][:, None]
    ranks = 1 + (scores > right).sum(axis=1)  # the model's rule: codes scoring strictly higher
    out = M.metrics_from_ranks(ranks)
    return {**out, "score": out["mrr"]}, E.search_rows(ranks)


@describe("token-set Jaccard, threshold chosen on valid")
def clone_detection(train: list[dict], valid: list[dict], test: list[dict]) -> tuple[dict, list[dict]]:
    def jaccard(rows: list[dict]) -> np.ndarray:
        return pair_jaccard([r["code1"] for r in rows], [r["code2"] for r in rows])

    fit, _ = M.threshold_split([int(r["label"]) for r in valid])  # the rows the model's threshold is chosen on
    threshold = M.best_threshold(jaccard([valid[i] for i in fit]), [int(valid[i]["label"]) for i in fit])
    scores, labels = jaccard(test), np.array([int(r["label"]) for r in test])
    out = M.classification_metrics(scores, labels, threshold)
    return {**out, "score": out["f1"]}, E.clone_rows(scores >= threshold, labels)


def _generated(task: str, hyps: list[str], test: list[dict]) -> tuple[dict, list[dict]]:
    """The task's metrics of whitespace-normalised hypotheses, as :func:`telly.finetuning.evaluate.evaluate`."""
    spec = tasks.get(task)
    hyps = [" ".join(h.split()) for h in hyps]
    refs = [" ".join(r["target"].split()) for r in test]
    out = {name: getattr(M, function)(refs, hyps) for name, function in spec.text_metrics.items()}
    return {**out, "score": spec.score(out)}, E.generation_rows(task, refs, hyps)


def nearest_target(train: list[dict], test: list[dict]) -> list[str]:
    """The target of the training row whose source is BM25-nearest to each test row's source."""
    bm25 = BM25([r["source"] for r in train])
    return [train[i]["target"] for i in bm25.nearest([r["source"] for r in test])]


@describe("docstring of the BM25-nearest training function")
def code_summarization(train: list[dict], valid: list[dict], test: list[dict]) -> tuple[dict, list[dict]]:
    return _generated("code_summarization", nearest_target(train, test), test)


@describe("code of the BM25-nearest training description")
def code_generation(train: list[dict], valid: list[dict], test: list[dict]) -> tuple[dict, list[dict]]:
    return _generated("code_generation", nearest_target(train, test), test)


def line_tokens(text: str) -> list[str]:
    """Tokens of code lines: words, punctuation, one space for a run of blanks inside a line, EOL between
    lines; indentation is dropped (the task's targets are stripped lines)."""
    out: list[str] = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        out += [" " if t.isspace() else t for t in LINE_TOKEN.findall(line.strip())]
        out.append(EOL)
    return out


class NgramLines:
    """A count-based n-gram model of code lines (nltk's ``NgramCounter``) that completes a line greedily."""

    def __init__(self, texts: Sequence[str], order: int = NGRAM_ORDER):
        from nltk.lm import NgramCounter
        from nltk.util import everygrams

        self.order = order
        self.start = ["<s>"] * (order - 1)
        self.counts = NgramCounter(everygrams(self.start + line_tokens(t), max_len=order) for t in texts)

    def next_token(self, context: list[str]) -> str | None:
        for n in range(self.order - 1, -1, -1):
            seen = self.counts[tuple(context[len(context) - n :])] if n else self.counts.unigrams
            seen = {t: c for t, c in seen.items() if t != "<s>"}
            if seen:
                return max(seen, key=seen.__getitem__)  # the first seen among equal counts
        return None

    def complete(self, left_context: str) -> str:
        """The next line after ``left_context``."""
        context = self.start + line_tokens(left_context)
        line: list[str] = []
        while len(line) < MAX_LINE_TOKENS:
            token = self.next_token(context)
            if token is None or token == EOL:
                break
            line.append(token)
            context.append(token)
        return "".join(line).strip()


@describe(f"{NGRAM_ORDER}-gram model of the training lines, greedy with backoff")
def line_completion(train: list[dict], valid: list[dict], test: list[dict]) -> tuple[dict, list[dict]]:
    model = NgramLines([r["source"] + r["target"] for r in train])
    return _generated("line_completion", [model.complete(r["source"]) for r in test], test)


# ------------------------------------------------------------------ the stage


def _splits(params: Params, task: str) -> dict[str, list[dict]]:
    settings = params.finetune
    cfg = getattr(settings.tasks, task)
    seed = data_seed(params)
    return {
        split: load_split(settings.tasks_dir, task, split, size, seed, min_rows=2)
        for split, size in (("train", cfg.train_size), ("valid", cfg.valid_size), ("test", cfg.test_size))
    }


def equal_inputs(params: Params, task: str, splits: dict[str, list[dict]], codebase: list[dict] | None) -> tuple:
    """The splits (and codebase) as the model reads them (``data.model_view``: the same tokenizer, the same
    cuts of finetune.tasks.<task>'s lengths): every field of train and valid, the input fields of test (the
    references stay whole)."""
    from telly.finetuning.data import Tokens, model_view
    from telly.models.loading import load_tokenizer

    cfg = getattr(params.finetune.tasks, task)
    tokenizer = load_tokenizer(params.finetune_model)
    tok = Tokens.of(tokenizer)
    spec = tasks.get(task)
    inputs = spec.text_fields if not spec.generates else ("source",)

    def view(rows: list[dict], fields: tuple[str, ...] = ()) -> list[dict]:
        return [model_view(task, r, tokenizer, tok, cfg.max_source_length, cfg.max_target_length, fields) for r in rows]

    out = {"train": view(splits["train"]), "valid": view(splits["valid"]), "test": view(splits["test"], inputs)}
    if codebase is not None:  # ranked as the model ranks them: each code cut to max_source_length
        codebase = [{**r, "query": ""} for r in codebase]
        codebase = [{k: v for k, v in r.items() if k != "query"} for r in view(codebase, ("code",))]
    return out, codebase


def truncated_shares(
    params: Params, task: str, splits: dict[str, list[dict]], codebase: list[dict] | None
) -> dict[str, dict[str, float]]:
    """Per split (and ``codebase``), per text field: the share of rows whose tokens the model's input cuts
    (``data.kept_pieces`` keeps fewer ids than the text has; a target: cut before its ``</s>`` as the model
    learns it, so on test a reference longer than the model is taught to write)."""
    from telly.finetuning.data import Tokens, kept_pieces, token_ids
    from telly.models.loading import load_tokenizer

    cfg = getattr(params.finetune.tasks, task)
    lengths = (cfg.max_source_length, cfg.max_target_length)
    tokenizer = load_tokenizer(params.finetune_model)
    tok = Tokens.of(tokenizer)
    fields = tasks.get(task).text_fields

    def shares(rows: list[dict]) -> dict[str, float]:
        cut = dict.fromkeys(fields, 0)
        for row in rows:
            pieces = {f: token_ids(tokenizer, row[f], max(lengths)) for f in fields}
            for f, kept in kept_pieces(task, pieces, tok, *lengths).items():
                cut[f] += len(kept) < len(pieces[f])
        return {f: n / len(rows) for f, n in cut.items()}

    out = {split: shares(rows) for split, rows in splits.items()}
    if codebase is not None:  # each code cut to max_source_length, as the model ranks them (evaluate.load_codebase)
        head, tail = tok.wrap("encoder-only")
        room = cfg.max_source_length - len(head) - len(tail)
        cut = sum(len(token_ids(tokenizer, r["code"], cfg.max_source_length)) > room for r in codebase)
        out["codebase"] = {"code": cut / len(codebase)}
    return out


def compute(params: Params, task: str) -> dict[str, Any]:
    """The baseline's run-like result of ``task`` on the model's inputs (with per-example ``examples`` and their
    row ``ids``), the same baseline on the whole inputs beside it (``full_input``), and the share of rows whose
    inputs the model cuts (``truncated``: :func:`truncated_shares`)."""
    if params.finetune is None:
        raise TellyError("params: the finetune section is missing (the baselines read its task sizes)")
    spec = tasks.get(task)
    splits = _splits(params, task)
    fn = named(sys.modules[__name__], spec.baseline, f"{task}.baseline")
    method, codebase = fn.method, None
    if spec.head == "search":
        path = Path(params.finetune.tasks_dir) / task / "codebase.jsonl"  # evaluate.codebase_path (no torch here)
        if path.exists():  # the model ranks against it: so does the baseline
            codebase = read_jsonl(path, required=("code",))
            method += f" among the {len(codebase)} codes of {path.name}"
    extra = {} if codebase is None else {"codebase": codebase}
    full, _ = fn(splits["train"], splits["valid"], splits["test"], **extra)
    seen, seen_codebase = equal_inputs(params, task, splits, codebase)
    extra = {} if seen_codebase is None else {"codebase": seen_codebase}
    metrics, rows = fn(seen["train"], seen["valid"], seen["test"], **extra)
    cfg = getattr(params.finetune.tasks, task)
    return {
        "task": task,
        "variant": "baseline",
        "method": method + f", on the model's tokens ({cfg.max_source_length} / {cfg.max_target_length})",
        "test": metrics,
        "full_input": {"method": method + ", on the whole inputs", "test": full},
        "truncated": truncated_shares(params, task, splits, codebase),
        "settings": {
            "train_size": len(splits["train"]),
            "valid_size": len(splits["valid"]),
            "test_size": len(splits["test"]),
            "data_seed": data_seed(params),
            "max_source_length": cfg.max_source_length,
            "max_target_length": cfg.max_target_length,
        },
        "ids": [r["id"] for r in splits["test"]],
        "examples": rows,
    }


def data_seed(params: Params) -> int:
    """The seed of the row samples, shared with the fine-tuning runs (every seed of a run reads the same rows)."""
    return params.finetune.data_seed


# ------------------------------------------------------------------ the pre-trained model, not fine-tuned


def decoder_mode_missing(name_or_path: str, tok: Any) -> str | None:
    """Why the model has no pre-trained decoder mode to generate with, or None when it has one: a UniXcoder-style
    checkpoint (its tokenizer knows the ``<encoder-decoder>`` / ``<decoder-only>`` / ``<mask0>`` tokens the
    pre-training's generation objectives read) that is not ``random``."""
    from telly.models.loading import RANDOM

    if name_or_path == RANDOM or name_or_path.startswith(RANDOM + ":"):
        return f"not run: finetune.model = {name_or_path!r} has random weights, nothing pre-trained to generate with"
    missing = [m for m in ("encoder-decoder", "decoder-only", "mask0") if m not in tok.modes]
    if missing:
        return (
            f"not run: finetune.model = {name_or_path!r} has no decoder mode (its tokenizer lacks "
            f"{', '.join(f'<{m}>' for m in missing)}): a plain encoder was never pre-trained to generate"
        )
    return None


def pretrained(params: Params, task: str) -> dict[str, Any]:
    """The pre-trained model without fine-tuning, scored as a fine-tuned one is (``evaluate`` on the same test rows
    and tokens). The encoder tasks read its pooled embedding: code search ranks the same pool, clone detection
    thresholds the cosine on valid's threshold half. The generation tasks decode in its own mode (encoder-decoder
    for summarization and generation, decoder-only for completion) through the tied output projection
    (hidden @ word embeddings) its pre-training's generation objectives (ULM, denoising) and the fine-tuning heads
    use, with the runs' beam and ``max_target_length`` new tokens. ``applies: False`` with the reason in ``method``
    where the model has no decoder mode (:func:`decoder_mode_missing`)."""
    from telly.finetuning.data import Tokens, load_examples
    from telly.finetuning.evaluate import codebase_path, evaluate, load_codebase
    from telly.finetuning.heads import TaskModel
    from telly.models.loading import load_encoder, load_tokenizer

    spec, settings = tasks.get(task), params.finetune
    cfg = getattr(settings.tasks, task)
    if spec.generates:
        reason = decoder_mode_missing(params.finetune_model, Tokens.of(load_tokenizer(params.finetune_model)))
        if reason:
            return {"task": task, "variant": "pretrained", "applies": False, "method": reason}
    encoder = load_encoder(params.finetune_model, device=settings.device, seed=settings.data_seed)
    tok = Tokens.of(encoder.tokenizer)
    model = TaskModel(encoder.model, task)
    lengths = (cfg.max_source_length, cfg.max_target_length)

    def scored(split: str, size: int, **kwargs: Any) -> Any:
        rows = load_examples(settings.tasks_dir, task, split, size, data_seed(params), encoder.tokenizer, tok, *lengths)
        batches = [
            range(i, min(i + settings.eval_batch_size, len(rows)))
            for i in range(0, len(rows), settings.eval_batch_size)
        ]
        return evaluate(model, rows, tok, encoder.tokenizer, batches=batches, **kwargs)

    extra: dict[str, Any] = {"beam_size": 1, "max_new_tokens": 1}
    method = "pre-trained model's encoder mode without fine-tuning, mean-pooled last layer"
    if spec.generates:
        extra = {"beam_size": cfg.beam_size, "max_new_tokens": cfg.max_target_length}
        search = "greedy" if cfg.beam_size == 1 else f"beam {cfg.beam_size}"
        method = (
            f"pre-trained model's own {spec.layout} mode without fine-tuning, tied output projection "
            f"(as its pre-training's generation objectives), {search}, {cfg.max_target_length} new tokens at most"
        )
    elif spec.head == "clone":
        extra["threshold"] = scored("valid", cfg.valid_size, **extra)["threshold"]
        method += ", cosine thresholded on valid's threshold half"
    elif codebase_path(settings.tasks_dir, task).exists():
        test_rows = load_split(settings.tasks_dir, task, "test", cfg.test_size, data_seed(params), min_rows=2)
        extra["codebase"] = load_codebase(
            codebase_path(settings.tasks_dir, task), test_rows, encoder.tokenizer, tok, cfg.max_source_length
        )
        extra["codebase_batch_size"] = settings.eval_batch_size
        method += f", ranking the {len(extra['codebase'].codes)} codes of the codebase"
    out = scored("test", cfg.test_size, **extra)
    metrics = {k: v for k, v in out.items()}
    return {
        "task": task,
        "variant": "pretrained",
        "applies": True,
        "method": method,
        "test": metrics,
        "examples": out.examples,
    }


def run(params: Params, task: str, out_dir: Path | None = None) -> Path:
    """``telly baseline <task>``: write ``<out_dir>/<task>.json`` and ``<task>.examples.jsonl`` (the equal-input
    baseline), and ``<task>.pretrained.json`` with ``<task>.pretrained.examples.jsonl`` (the pre-trained model
    without fine-tuning, :func:`pretrained`; a model without a decoder mode: a note why not, no rows) under
    ``finetune.baselines_dir`` by default."""
    result = compute(params, task)
    folder = Path(out_dir or params.finetune.baselines_dir)
    path = folder / f"{task}.json"
    ids = result.pop("ids")
    E.write_examples(path, ids, result.pop("examples"))
    write_json(path, result)
    log.info("%s baseline (%s): %s", task, result["method"], result["test"])
    other = folder / f"{task}.pretrained.json"
    model = pretrained(params, task)
    E.write_examples(other, ids if model["applies"] else [], model.pop("examples", []))
    write_json(other, model)
    log.info("%s pre-trained model (%s): %s", task, model["method"], model.get("test"))
    return path
