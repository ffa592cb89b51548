"""Two cross-checks of RSA beyond the paper: linear CKA and orthogonal Procrustes.

Linear CKA (Kornblith et al., ICML 2019) compares the two models' linear-kernel
Gram matrices K = X X^T and L = Y Y^T:

    CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)).

With the plain (biased) HSIC, two *independent* random representations score well
above 0 when the feature count is not small next to N. We use the unbiased HSIC
estimator (Song et al., 2012), which removes that bias (the "debiased CKA" of
Kornblith et al. and Nguyen et al., ICLR 2021). For a linear kernel it can be
written with feature-space products only, O(N H^2) time and no N x N matrix; this
is the same algebra as Kornblith et al.'s ``feature_space_linear_cka``.

Orthogonal Procrustes distance (Ding, Denain & Steinhardt, NeurIPS 2021): centre
each representation, scale it to unit Frobenius norm, and measure what is left
after the best rotation: ``d = 2 - 2 ||X^T Y||_*`` in [0, 2] (0 = same up to a
rotation). ``scipy.linalg.orthogonal_procrustes`` returns the nuclear norm as
``scale``.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import orthogonal_procrustes

from telly.errors import TellyError


def _check(x: np.ndarray, y: np.ndarray, need: int) -> None:
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise TellyError(f"need two [N, H] arrays over the same N samples, got {x.shape} and {y.shape}")
    if x.shape[0] < need:
        raise TellyError(f"need at least {need} samples, got {x.shape[0]}")


def _unbiased_hsic_terms(xty_sq: float, rows_x: np.ndarray, rows_y: np.ndarray, n: int) -> float:
    """n (n - 3) x unbiased HSIC of two centred linear kernels, from feature-space sums.

    ``xty_sq`` = ||X^T Y||_F^2 = tr(K L); ``rows_*`` = squared row norms = diag(K), diag(L).
    With the diagonals removed (K~, L~) the unbiased estimator needs
    tr(K~ L~), 1^T K~ 1, 1^T L~ 1 and 1^T K~ L~ 1; for centred features
    1^T K 1 = 0, which collapses them to the three terms below.
    """
    sum_x, sum_y = rows_x.sum(), rows_y.sum()
    return float(xty_sq - n / (n - 2.0) * rows_x @ rows_y + sum_x * sum_y / ((n - 1.0) * (n - 2.0)))


def linear_cka(x: np.ndarray, y: np.ndarray, *, debiased: bool = True) -> float:
    """Linear CKA of ``[N, H]`` and ``[N, H']``; debiased (unbiased HSIC) by default."""
    _check(x, y, 4 if debiased else 2)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x = x - x.mean(0, keepdims=True)
    y = y - y.mean(0, keepdims=True)
    xy = np.linalg.norm(x.T @ y) ** 2
    xx = np.linalg.norm(x.T @ x) ** 2
    yy = np.linalg.norm(y.T @ y) ** 2
    if debiased:
        n = x.shape[0]
        rows_x = np.einsum("ij,ij->i", x, x)
        rows_y = np.einsum("ij,ij->i", y, y)
        xy = _unbiased_hsic_terms(xy, rows_x, rows_y, n)
        xx = _unbiased_hsic_terms(xx, rows_x, rows_x, n)
        yy = _unbiased_hsic_terms(yy, rows_y, rows_y, n)
    if xx <= 0 or yy <= 0:
        return float("nan")  # a constant representation (or too few samples) has no CKA
    return float(xy / np.sqrt(xx * yy))


def procrustes_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Orthogonal Procrustes distance in [0, 2] after centring and unit-norm scaling."""
    _check(x, y, 2)
    if x.shape[1] != y.shape[1]:
        # Zero-pad the narrower one: the rotation then maps into the wider space.
        width = max(x.shape[1], y.shape[1])
        x = np.pad(x, ((0, 0), (0, width - x.shape[1])))
        y = np.pad(y, ((0, 0), (0, width - y.shape[1])))
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x = x - x.mean(0, keepdims=True)
    y = y - y.mean(0, keepdims=True)
    nx, ny = np.linalg.norm(x), np.linalg.norm(y)
    if nx == 0 or ny == 0:
        return float("nan")
    _, nuclear = orthogonal_procrustes(x / nx, y / ny)
    return float(max(0.0, 2.0 - 2.0 * nuclear))
