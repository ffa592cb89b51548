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
from telly.data.baselines import pair_jaccard
from telly.errors import TellyError
from telly.finetuning import examples as E
from telly.finetuning import metrics as M
from telly.finetuning.data import load_split
from telly.jsonl import read_jsonl, write_json
from telly.registry import named

log = logging.getLogger(__name__)

NGRAM_ORDER = 4
MAX_LINE_TOKENS = 64
WORD = re.compile(r"\w+")
PART = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
LINE_TOKEN = re.compile(r"\w+|[^\w\s]|\s+")
EOL = "\n"


# ------------------------------------------------------------------ BM25


def bm25_terms(text: str) -> list[str]:
    terms = []
    for word in WORD.findall(text):
        terms.append(word.lower())
        parts = PART.findall(word)
        if len(parts) > 1:
            terms += [p.lower() for p in parts]
    return terms


class BM25:
    """``bm25s`` over :func:`bm25_terms` of ``documents``."""

    def __init__(self, documents: Sequence[str]):
        import bm25s

        self.index = bm25s.BM25()
        self.index.index([bm25_terms(d) for d in documents], show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        return np.asarray(self.index.get_scores(bm25_terms(query)), dtype=float)

    def nearest(self, queries: Sequence[str]) -> list[int]:
        """Index of the best document per query (the first one on a tie)."""
        return [int(np.argmax(self.scores(q))) for q in queries]


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


def compute(params: Params, task: str) -> dict[str, Any]:
    """The baseline's run-like result of ``task`` (with per-example ``examples`` and their row ``ids``)."""
    if params.finetune is None:
        raise TellyError("params: the finetune section is missing (the baselines read its task sizes)")
    spec = tasks.get(task)
    settings = params.finetune
    cfg = getattr(settings.tasks, task)
    seed = data_seed(params)
    splits = {
        split: load_split(settings.tasks_dir, task, split, size, seed, min_rows=2)
        for split, size in (("train", cfg.train_size), ("valid", cfg.valid_size), ("test", cfg.test_size))
    }
    fn = named(sys.modules[__name__], spec.baseline, f"{task}.baseline")
    method, extra = fn.method, {}
    if spec.head == "search":
        path = Path(settings.tasks_dir) / task / "codebase.jsonl"  # evaluate.codebase_path (no torch here)
        if path.exists():  # the model ranks against it: so does the baseline
            extra["codebase"] = read_jsonl(path, required=("code",))
            method += f" among the {len(extra['codebase'])} codes of {path.name}"
    metrics, rows = fn(splits["train"], splits["valid"], splits["test"], **extra)
    return {
        "task": task,
        "variant": "baseline",
        "method": method,
        "test": metrics,
        "settings": {
            "train_size": len(splits["train"]),
            "valid_size": len(splits["valid"]),
            "test_size": len(splits["test"]),
            "data_seed": seed,
        },
        "ids": [r["id"] for r in splits["test"]],
        "examples": rows,
    }


def data_seed(params: Params) -> int:
    """The seed of the row samples, shared with the fine-tuning runs (every seed of a run reads the same rows)."""
    return params.finetune.data_seed


def run(params: Params, task: str, out_dir: Path | None = None) -> Path:
    """``telly baseline <task>``: write ``<out_dir>/<task>.json`` and ``<task>.examples.jsonl``
    (``finetune.baselines_dir`` by default)."""
    result = compute(params, task)
    path = Path(out_dir or params.finetune.baselines_dir) / f"{task}.json"
    E.write_examples(path, result.pop("ids"), result.pop("examples"))
    write_json(path, result)
    log.info("%s baseline (%s): %s", task, result["method"], result["test"])
    return path
