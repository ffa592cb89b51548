"""The paper's probing metrics (telly-paper.md section 1), exactly as defined there.

- lexical: token accuracy over labelled positions only (padding and non-final
  subwords carry no label and are never counted);
- syntactic: accuracy of "cos(code, AST-only) > 0.5 means paired" over the true
  and false pairs, plus the MRR of each code's own AST-only among all true AST-only;
- structural: 6-class accuracy and macro-F1;
- semantic: MAP@R over clone classes, the paper's exact loop (self excluded,
  R = class size - 1, AP divided by R).

Scores are returned on the paper's scales: accuracy and MAP in percent, the
syntactic accuracy and MRR in [0, 1].
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score


def token_accuracy(labels: np.ndarray, predictions: np.ndarray, pad_label: int = 0) -> float:
    """Percent of labelled tokens whose type is predicted right; ``pad_label`` positions are ignored."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    keep = labels != pad_label
    if not keep.any():
        raise ValueError("token_accuracy: no labelled token (every label is the pad label)")
    return 100.0 * float((labels[keep] == predictions[keep]).mean())


def class_scores(labels: np.ndarray, predictions: np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy (percent) and macro-F1 (percent) over ``n_classes`` classes, absent ones included."""
    return {
        "acc": 100.0 * accuracy_score(labels, predictions),
        "macro_f1": 100.0
        * f1_score(labels, predictions, labels=list(range(n_classes)), average="macro", zero_division=0),
    }


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def pair_accuracy(code_vecs: np.ndarray, ast_vecs: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> float:
    """Accuracy in [0, 1] of predicting "paired" when cos(code_i, ast_i) > threshold, over true and false pairs."""
    cos = np.sum(_unit(code_vecs) * _unit(ast_vecs), axis=-1)
    return float(((cos > threshold).astype(int) == np.asarray(labels)).mean())


def mean_reciprocal_rank(query_vecs: np.ndarray, key_vecs: np.ndarray) -> float:
    """MRR in [0, 1] where query i's answer is key i, ranked by cosine among all keys (ties count against)."""
    scores = _unit(query_vecs) @ _unit(key_vecs).T
    own = np.diag(scores)
    ranks = 1 + (scores > own[:, None]).sum(axis=1) + ((scores == own[:, None]).sum(axis=1) - 1)
    return float(np.mean(1.0 / ranks))


def map_at_r(vecs: np.ndarray, labels: np.ndarray) -> float:
    """The paper's MAP (percent), i.e. MAP@R with cosine scores.

    scores = V V^T with the diagonal set to -1e6; for item i of class c, R_i = |c| - 1;
    AP_i = sum over hits in the top R_i of (hits so far / rank) / R_i. Items alone in
    their class (R_i = 0) have no answer and are left out of the mean.
    """
    vecs = _unit(np.asarray(vecs, dtype=np.float64))
    return map_at_r_from_scores(vecs @ vecs.T, labels)


def map_at_r_from_scores(scores: np.ndarray, labels: np.ndarray) -> float:
    """MAP@R (percent) as in :func:`map_at_r`, for any square matrix of scores (higher = more alike)."""
    labels = np.asarray(labels)
    scores = np.array(scores, dtype=np.float64)
    np.fill_diagonal(scores, -1e6)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    r = counts[inverse] - 1  # R_i: how many other members of i's class
    answered = r > 0
    if not answered.any():
        raise ValueError("map_at_r: no class has two or more items")
    depth = int(r.max())
    top = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
    ranks = np.arange(1, depth + 1)
    hits = (labels[top] == labels[:, None]) & (ranks[None, :] <= r[:, None])
    precision = np.cumsum(hits, axis=1) / ranks
    ap = (precision * hits).sum(axis=1)[answered] / r[answered]
    return 100.0 * float(ap.mean())
