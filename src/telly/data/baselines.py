"""Token-overlap baselines: how much of a clone set plain token overlap already solves.

A clone set is only worth probing or fine-tuning on if its pairs cannot be told
apart by shared tokens alone. Two figures are written to ``data/tasks/metrics.json``
for every split (docs/datasets.md):

- clone detection: ROC AUC of the token-set Jaccard of ``code1`` and ``code2``
  (``sklearn.metrics.roc_auc_score``), 0.5 = no better than chance;
- semantic probing: MAP@R (the paper's definition, :func:`telly.probing.metrics.map_at_r_from_scores`)
  when every function retrieves the others by Jaccard, and by BM25 (:class:`BM25`).

Tokens are words (identifiers, keywords, numbers, the words inside strings) and
single punctuation characters, read by one regular expression so that the same
measure applies to any language. :func:`jaccard_matrix` is also what the clone
detection set uses to pick its hard negatives (:mod:`telly.data.clones`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.metrics import roc_auc_score

TOKEN = re.compile(r"\w+|[^\w\s]")


def tokens(code: str) -> list[str]:
    return TOKEN.findall(code)


def token_sets(
    codes: Sequence[str], vocabulary: dict[str, int] | None = None
) -> tuple[sparse.csr_matrix, dict[str, int]]:
    """Binary function x token matrix (and its vocabulary; pass it back to encode more codes alike)."""
    vectorizer = CountVectorizer(
        tokenizer=tokens, token_pattern=None, lowercase=False, binary=True, vocabulary=vocabulary
    )
    matrix = vectorizer.fit_transform(codes) if vocabulary is None else vectorizer.transform(codes)
    return sparse.csr_matrix(matrix, dtype=np.float32), dict(vectorizer.vocabulary_)


def jaccard_matrix(a: sparse.csr_matrix, b: sparse.csr_matrix) -> np.ndarray:
    """|A ∩ B| / |A ∪ B| for every row of ``a`` against every row of ``b`` (0 when both are empty)."""
    inter = (a @ b.T).toarray()
    union = np.asarray(a.sum(axis=1)) + np.asarray(b.sum(axis=1)).T - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def pair_jaccard(code1: Sequence[str], code2: Sequence[str]) -> np.ndarray:
    """Jaccard of each pair ``(code1[i], code2[i])``."""
    out = np.empty(len(code1))
    for i, (x, y) in enumerate(zip(code1, code2)):
        a, b = set(tokens(x)), set(tokens(y))
        out[i] = len(a & b) / len(a | b) if a | b else 0.0
    return out


def clone_detection_auc(rows: Sequence[dict]) -> float | None:
    """ROC AUC of Jaccard on ``code1``/``code2`` pairs against ``label``; None if one label is missing."""
    labels = [int(r["label"]) for r in rows]
    if len(set(labels)) < 2:
        return None
    scores = pair_jaccard([r["code1"] for r in rows], [r["code2"] for r in rows])
    return float(roc_auc_score(labels, scores))


WORD = re.compile(r"\w+")
PART = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")


def bm25_terms(text: str) -> list[str]:
    """BM25 terms: lower-cased words with their snake_case / camelCase parts added (``getUserName`` ->
    ``getusername get user name``)."""
    terms = []
    for word in WORD.findall(text):
        terms.append(word.lower())
        parts = PART.findall(word)
        if len(parts) > 1:
            terms += [p.lower() for p in parts]
    return terms


class BM25:
    """``bm25s`` (Lucene's variant, k1 1.5, b 0.75) over :func:`bm25_terms` of ``documents``: the project's one
    BM25, light enough for the tasks stage (no torch)."""

    def __init__(self, documents: Sequence[str]):
        import bm25s

        self.index = bm25s.BM25()
        self.index.index([bm25_terms(d) for d in documents], show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        return np.asarray(self.index.get_scores(bm25_terms(query)), dtype=float)

    def nearest(self, queries: Sequence[str]) -> list[int]:
        """Index of the best document per query (the first one on a tie)."""
        return [int(np.argmax(self.scores(q))) for q in queries]


def bm25_matrix(codes: Sequence[str]) -> np.ndarray:
    """BM25 of every code, as a query, against every code."""
    index = BM25(codes)
    return np.stack([index.scores(c) for c in codes])


def semantic_map_at_r(rows: Sequence[dict], measure: str = "jaccard") -> float | None:
    """MAP@R (percent) of retrieving each function's clone class by token-set Jaccard (or ``bm25``); None if no
    class has two members."""
    from telly.probing.metrics import map_at_r_from_scores

    labels = np.asarray([r["label"] for r in rows])
    if len(labels) == 0 or np.unique(labels).size == len(labels):
        return None
    codes = [r["code"] for r in rows]
    if measure == "bm25":
        return map_at_r_from_scores(bm25_matrix(codes), labels)
    matrix, _ = token_sets(codes)
    return map_at_r_from_scores(jaccard_matrix(matrix, matrix), labels)
