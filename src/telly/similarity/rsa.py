"""Representational similarity analysis, exactly as the paper (R:RSA/run.py).

For one hidden state of two models on the same N code samples:

1. each sample is the plain mean over *all* positions of its fixed-length input,
   padding included (the extract stage's ``mean_unmasked`` pooling);
2. the pooled vectors are L2-normalised, so ``X @ X.T`` is the cosine similarity
   matrix of the N samples;
3. the matrix is flattened to its upper triangle *including the diagonal*, row by row
   (``scores[j, j:]``): N (N + 1) / 2 values, 12,502,500 at N = 5,000;
4. the pre-trained and the fine-tuned vectors are correlated, Pearson and Spearman
   (the paper does not say which; the ``[rho, p]`` it stores fits either).

At N = 5,000 a similarity vector is 50 MB in float32. It is filled block by block
of rows, so the N x N matrix never exists; ranks are kept as float32 too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from telly.errors import TellyError

CHUNK = 1 << 20  # values per chunk when summing in float64


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as ``F.normalize(p=2, dim=-1)`` (eps 1e-12)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def n_pairs(n: int) -> int:
    """Length of the upper triangle of an n x n matrix, diagonal included."""
    return n * (n + 1) // 2


def similarity_vector(pooled: np.ndarray, block_rows: int = 512) -> np.ndarray:
    """Upper triangle (diagonal included, row-major) of the cosine similarity matrix.

    ``pooled`` is ``[N, H]`` (one hidden state). Rows are computed in blocks of
    ``block_rows`` against the rows at and below the block, so peak extra memory
    is ``block_rows x N`` floats.
    """
    x = l2_normalise(pooled)
    n = x.shape[0]
    out = np.empty(n_pairs(n), dtype=np.float32)
    pos = 0
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        block = x[start:stop] @ x[start:].T  # row r of the block starts at column r
        for r in range(stop - start):
            row = block[r, r:]
            out[pos : pos + row.size] = row
            pos += row.size
    assert pos == out.size
    return out


def ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (1-based; ties share their mean rank), as ``scipy.stats.rankdata``.

    ``rankdata`` peaks at about 13 bytes per value of temporaries (650 MB at N = 5,000);
    here only the sort order (8 bytes per value) and the float32 ranks are full size,
    and ties, rare in real similarities, are fixed up on their own. float32 holds
    integers exactly up to 2**24 (16.7M), more than the 12.5M pairs of N = 5,000;
    larger inputs get float64 ranks.
    """
    values = np.asarray(values).ravel()
    n = values.size
    dtype = np.float32 if n <= 2**24 else np.float64
    order = np.argsort(values)  # unstable is fine (tied values get one average) and 3x faster
    out = np.empty(n, dtype=dtype)
    out[order] = np.arange(1, n + 1, dtype=dtype)
    sorted_values = values[order]
    tied = np.flatnonzero(sorted_values[1:] == sorted_values[:-1])  # i and i + 1 share a value
    del sorted_values
    if tied.size:
        # Runs of consecutive tied positions [start, stop) in sorted order.
        new_run = np.r_[True, tied[1:] != tied[:-1] + 1]
        starts = tied[new_run]
        stops = tied[np.r_[new_run[1:], True]] + 2
        lengths = stops - starts
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        positions = np.repeat(starts, lengths) + offsets
        out[order[positions]] = np.repeat((starts + stops + 1) / 2.0, lengths)
    return out


def pearson(x: np.ndarray, y: np.ndarray, chunk: int = CHUNK) -> float:
    """Pearson's r of two long float32 vectors, summed chunk-wise in float64."""
    if x.shape != y.shape or x.ndim != 1:
        raise TellyError(f"pearson: vectors must have the same 1-D shape, got {x.shape} and {y.shape}")
    n = x.size
    if n < 3:
        raise TellyError(f"pearson: need at least 3 values, got {n}")
    mx = sum(float(x[i : i + chunk].sum(dtype=np.float64)) for i in range(0, n, chunk)) / n
    my = sum(float(y[i : i + chunk].sum(dtype=np.float64)) for i in range(0, n, chunk)) / n
    sxy = sxx = syy = 0.0
    for i in range(0, n, chunk):
        dx = x[i : i + chunk].astype(np.float64) - mx
        dy = y[i : i + chunk].astype(np.float64) - my
        sxy += float(dx @ dy)
        sxx += float(dx @ dx)
        syy += float(dy @ dy)
    if sxx == 0.0 or syy == 0.0:
        return float("nan")  # a constant vector has no correlation
    return max(-1.0, min(1.0, sxy / np.sqrt(sxx * syy)))


def p_value(r: float, n: int) -> float:
    """Two-sided p of r under independence (t with n - 2 dof, as scipy's spearmanr).

    The pairs of a similarity matrix are not independent, so this is only the
    paper's column; the bootstrap intervals are the honest uncertainty.
    """
    if not np.isfinite(r):
        return float("nan")
    if abs(r) >= 1.0:
        return 0.0
    t = r * np.sqrt((n - 2) / ((1.0 - r) * (1.0 + r)))
    return float(2 * stats.t.sf(abs(t), n - 2))


@dataclass(frozen=True)
class RSAReference:
    """One model's similarity vector and its ranks, computed once and compared many times."""

    vector: np.ndarray
    ranks: np.ndarray

    @classmethod
    def of(cls, pooled: np.ndarray, block_rows: int = 512) -> RSAReference:
        vector = similarity_vector(pooled, block_rows)
        return cls(vector, ranks(vector))


@dataclass(frozen=True)
class RSAResult:
    pearson: float
    pearson_p: float
    spearman: float
    spearman_p: float
    n_samples: int
    n_pairs: int


def compare(a: RSAReference, b: RSAReference) -> RSAResult:
    """Pearson and Spearman correlation of two models' similarity vectors."""
    if a.vector.size != b.vector.size:
        raise TellyError(
            f"RSA: the two models' similarity vectors differ in length ({a.vector.size} vs {b.vector.size}); "
            "were they extracted on the same samples?"
        )
    m = a.vector.size
    n = int((np.sqrt(8 * m + 1) - 1) // 2)
    r = pearson(a.vector, b.vector)
    rho = pearson(a.ranks, b.ranks)  # Spearman = Pearson of the ranks
    return RSAResult(r, p_value(r, m), rho, p_value(rho, m), n, m)


def rsa(pooled_a: np.ndarray, pooled_b: np.ndarray, block_rows: int = 512) -> RSAResult:
    """The paper's RSA score of one hidden state: ``[N, H]`` vs ``[N, H']``."""
    if pooled_a.shape[0] != pooled_b.shape[0]:
        raise TellyError(f"RSA: sample counts differ ({pooled_a.shape[0]} vs {pooled_b.shape[0]})")
    return compare(RSAReference.of(pooled_a, block_rows), RSAReference.of(pooled_b, block_rows))
