"""Per-example test scores: what each run (and each no-training baseline) saves beside its aggregate metrics,
so that differences between variants can be resampled over the same test rows (docs/finetuning.md).

Rows are in test-row order, one per test row:

- code search: ``{"rr"}`` (1 / rank of the query's own code, 0 beyond rank 1000 as UniXcoder's MRR);
- clone detection: ``{"pred", "gold"}`` (F1 is recomputed from them on every resample);
- summarization: ``{"hyp", "bleu"}`` (sentence BLEU-4 x 100: the corpus figure is their mean);
- generation: ``{"hyp", "bleu", "em", "bleu_counts"}`` (``bleu`` is the pair's own sentence BLEU, for reading;
  the corpus BLEU on Python code tokens is recomputed from the summed ``bleu_counts`` on every resample);
- line completion: ``{"hyp", "em", "edit_sim"}``.

Each task's main metric is a function of per-row *statistics* summed over rows (:func:`statistics`,
:func:`main_metric`), which is what the bootstrap in :mod:`telly.reporting.evidence` resamples.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from telly import tasks
from telly.errors import TellyError
from telly.finetuning import metrics as M
from telly.jsonl import read_jsonl, write_jsonl
from telly.registry import named


def search_rows(ranks: Sequence[float], cutoff: int = M.UNIXCODER_CUTOFF) -> list[dict]:
    """1 / rank of each query's code, 0 beyond ``cutoff`` (UniXcoder's MRR: their mean is ``metrics_from_ranks``)."""
    return [{"rr": 1.0 / float(r) if r <= cutoff else 0.0} for r in np.asarray(ranks, dtype=float)]


def clone_rows(predicted: Sequence[int], labels: Sequence[int]) -> list[dict]:
    return [{"pred": int(p), "gold": int(g)} for p, g in zip(predicted, labels)]


def summary_row(ref: str, hyp: str) -> dict:
    return {"hyp": hyp, "bleu": 100.0 * M.sentence_bleu_csn(ref, hyp)}


def code_row(ref: str, hyp: str) -> dict:
    return {
        "hyp": hyp,
        "bleu": 100.0 * M.sentence_bleu_csn(ref, hyp),
        "em": M.exact_match([ref], [hyp]),
        "bleu_counts": M.code_bleu_counts(ref, hyp),
    }


def line_row(ref: str, hyp: str) -> dict:
    return {"hyp": hyp, "em": M.exact_match([ref], [hyp]), "edit_sim": M.edit_similarity([ref], [hyp])}


def generation_rows(task: str, references: Sequence[str], hypotheses: Sequence[str]) -> list[dict]:
    """Rows of a generation task from whitespace-normalised references and hypotheses (its ``example_row``)."""
    score = named(sys.modules[__name__], tasks.get(task).example_row, f"{task}.example_row")
    return [score(ref, hyp) for ref, hyp in zip(references, hypotheses)]


# ---------------------------------------------------------------- main metric from per-row statistics


def _mean(sums: np.ndarray, n: int) -> np.ndarray:
    return sums[0] / n


def _f1(sums: np.ndarray, n: int) -> np.ndarray:
    tp, fp, fn = sums[0], sums[1], sums[2]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(2 * tp + fp + fn > 0, 2 * tp / np.where(2 * tp + fp + fn > 0, 2 * tp + fp + fn, 1), 0.0)


def _bleu(sums: np.ndarray, n: int) -> np.ndarray:
    return M.bleu_from_counts(sums)


@dataclass(frozen=True)
class Statistic:
    """A main metric as ``combine(sum of per-row statistics over rows, number of rows)``."""

    metric: str
    row_statistics: Callable[[dict], list[float]]
    combine: Callable[[np.ndarray, int], np.ndarray]


# the main metrics a task's ``statistic`` names (telly.tasks)
MRR = Statistic("mrr", lambda r: [r["rr"]], _mean)
F1 = Statistic("f1", lambda r: [r["pred"] * r["gold"], r["pred"] * (1 - r["gold"]), (1 - r["pred"]) * r["gold"]], _f1)
SENTENCE_BLEU = Statistic("bleu", lambda r: [r["bleu"]], _mean)  # the corpus figure is the mean of the rows'
CORPUS_BLEU = Statistic("bleu", lambda r: list(r["bleu_counts"]), _bleu)  # from the summed n-gram counts
EDIT_SIMILARITY = Statistic("edit_sim", lambda r: [r["edit_sim"]], _mean)


def statistic(task: str) -> Statistic:
    """The statistic of ``task``'s main metric (its ``statistic`` in telly.tasks)."""
    return named(sys.modules[__name__], tasks.get(task).statistic, f"{task}.statistic")


def statistics(task: str, rows: Sequence[dict]) -> np.ndarray:
    """``[d, n]``: the per-row statistics of the task's main metric, rows on the last axis."""
    row_statistics = statistic(task).row_statistics
    return np.asarray([row_statistics(r) for r in rows], dtype=float).T


def main_metric(task: str, stats: np.ndarray) -> np.ndarray | float:
    """The main metric of ``stats`` (``[d, ..., n]``; extra axes are resamples), summed over the last axis."""
    value = statistic(task).combine(np.asarray(stats).sum(axis=-1), np.asarray(stats).shape[-1])
    return float(value) if np.ndim(value) == 0 else value


# ---------------------------------------------------------------- files


def examples_path(results_path: Path) -> Path:
    """``<run>.json`` -> ``<run>.examples.jsonl`` beside it."""
    results_path = Path(results_path)
    return results_path.with_name(results_path.name.removesuffix(".json") + ".examples.jsonl")


def write_examples(results_path: Path, ids: Sequence[str], rows: Sequence[dict]) -> Path:
    """Write ``rows`` (in test-row order) with their row ids beside the run json."""
    if len(ids) != len(rows):
        raise ValueError(f"{len(rows)} per-example rows for {len(ids)} test rows")
    path = examples_path(results_path)
    write_jsonl(path, [{"id": i, **r} for i, r in zip(ids, rows)])
    return path


def read_examples(results_path: Path) -> list[dict] | None:
    """The per-example rows of a run json, or None when the run saved none (an older run)."""
    path = examples_path(results_path)
    return read_jsonl(path, required=("id",)) if path.exists() else None


def aligned(task: str, runs: dict[str, list[dict]]) -> dict[str, np.ndarray]:
    """Statistics of several runs' rows over the same test rows (by id, in the first run's order);
    runs on different test rows are an error naming them."""
    names = list(runs)
    order = [r["id"] for r in runs[names[0]]]
    out = {}
    for name, rows in runs.items():
        by_id = {r["id"]: r for r in rows}
        if len(by_id) != len(rows):
            raise TellyError(f"{name}: {len(rows) - len(by_id)} per-example rows repeat an id: rebuild the task set")
        if set(by_id) != set(order):
            raise TellyError(
                f"{name}: per-example rows are not on the same test rows as {names[0]} "
                f"({len(rows)} vs {len(order)} rows): rerun it with the same test_size and seed"
            )
        out[name] = statistics(task, [by_id[i] for i in order])
    return out
