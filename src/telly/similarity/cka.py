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
rotation). ``||X^T Y||_*`` is the ``scale`` that ``scipy.linalg.orthogonal_procrustes``
returns (the tests check that); we take it from the singular values directly.

Both need ``X^T Y``: :func:`scores` computes it once, and a :class:`Centred`
representation (the pre-trained one) is prepared once and compared many times.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from telly.errors import TellyError


def _unbiased_hsic_terms(xty_sq: float, rows_x: np.ndarray, rows_y: np.ndarray, n: int) -> float:
    """n (n - 3) x unbiased HSIC of two centred linear kernels, from feature-space sums.

    ``xty_sq`` = ||X^T Y||_F^2 = tr(K L); ``rows_*`` = squared row norms = diag(K), diag(L).
    With the diagonals removed (K~, L~) the unbiased estimator needs
    tr(K~ L~), 1^T K~ 1, 1^T L~ 1 and 1^T K~ L~ 1; for centred features
    1^T K 1 = 0, which collapses them to the three terms below.
    """
    sum_x, sum_y = rows_x.sum(), rows_y.sum()
    return float(xty_sq - n / (n - 2.0) * rows_x @ rows_y + sum_x * sum_y / ((n - 1.0) * (n - 2.0)))


@dataclass(frozen=True)
class Centred:
    """One ``[N, H]`` representation, centred in float64, with its own CKA/Procrustes terms."""

    x: np.ndarray
    rows: np.ndarray  # squared row norms: the diagonal of the linear Gram matrix
    self_plain: float  # ||X^T X||_F^2, the biased HSIC(K, K) up to scale
    self_unbiased: float  # n (n - 3) x unbiased HSIC(K, K)
    norm: float  # ||X||_F

    @classmethod
    def of(cls, x: np.ndarray) -> Centred:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 4:
            raise TellyError(f"need an [N, H] array with N >= 4 samples, got shape {x.shape}")
        x = x - x.mean(0, keepdims=True)
        rows = np.einsum("ij,ij->i", x, x)
        plain = float(np.linalg.norm(x.T @ x) ** 2)
        return cls(x, rows, plain, _unbiased_hsic_terms(plain, rows, rows, x.shape[0]), float(np.sqrt(rows.sum())))


def scores(a: Centred, b: Centred, *, debiased: bool = True) -> tuple[float, float]:
    """(linear CKA, Procrustes distance) of two prepared representations of the same samples."""
    if a.x.shape[0] != b.x.shape[0]:
        raise TellyError(f"need two [N, H] arrays over the same N samples, got {a.x.shape} and {b.x.shape}")
    xty = a.x.T @ b.x
    cross = float(np.linalg.norm(xty) ** 2)
    if debiased:
        cross = _unbiased_hsic_terms(cross, a.rows, b.rows, a.x.shape[0])
        selfs = a.self_unbiased * b.self_unbiased
    else:
        selfs = a.self_plain * b.self_plain
    cka = cross / np.sqrt(selfs) if selfs > 0 else float("nan")  # constant input: undefined
    if a.norm == 0 or b.norm == 0:
        return float(cka), float("nan")
    nuclear = np.linalg.svd(xty, compute_uv=False).sum() / (a.norm * b.norm)
    return float(cka), float(max(0.0, 2.0 - 2.0 * nuclear))


def _check(x: np.ndarray, y: np.ndarray) -> None:
    if np.ndim(x) != 2 or np.ndim(y) != 2 or len(x) != len(y):
        raise TellyError(f"need two [N, H] arrays over the same N samples, got {np.shape(x)} and {np.shape(y)}")


def linear_cka(x: np.ndarray, y: np.ndarray, *, debiased: bool = True) -> float:
    """Linear CKA of ``[N, H]`` and ``[N, H']``; debiased (unbiased HSIC) by default."""
    _check(x, y)
    return scores(Centred.of(x), Centred.of(y), debiased=debiased)[0]


def procrustes_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Orthogonal Procrustes distance in [0, 2] after centring and unit-norm scaling."""
    _check(x, y)
    return scores(Centred.of(x), Centred.of(y))[1]
