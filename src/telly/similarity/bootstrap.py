"""Confidence intervals over the code samples, by half-sampling.

Resampling *with* replacement puts duplicate samples into a similarity matrix:
each duplicate adds an off-diagonal pair with similarity 1 in both models, which
inflates RSA and (through the unbiased HSIC's off-diagonal terms) CKA. So we draw
subsets of half the samples *without* replacement instead. For an estimate whose
variance shrinks like 1/n, a half-sample's spread around the full-sample value
has the full sample's variance (finite-population correction: 1/(N/2) - 1/N = 1/N;
McCarthy's half-sampling). The interval is ``[est - q_hi(d), est - q_lo(d)]`` with
``d`` the half-sample values minus their mean.

Every comparison of a run uses the same subsets (one seed), so a shared side, the
pre-trained model's, is computed once per subset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from telly.errors import TellyError


def half_samples(n: int, rounds: int, seed: int) -> list[np.ndarray]:
    """``rounds`` sorted index subsets of size n // 2, drawn without replacement."""
    if rounds > 0 and n < 8:
        raise TellyError(f"bootstrap: need at least 8 samples for half-sampling, got {n}")
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(n, size=n // 2, replace=False)) for _ in range(rounds)]


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


def basic_interval(estimate: float, replicates: np.ndarray | list[float], level: float) -> Interval:
    """Interval of ``estimate`` from the spread of its half-sample replicates.

    The replicates' deviations ``delta = replicate - estimate`` are centred on their mean
    before the quantiles are taken: the interval shows sampling variability around the
    reported value only. (Half-samples shift scores whose bias shrinks like 1/N, e.g. the
    paper's RSA with its diagonal of ones: at N = 120 a random baseline's Pearson moves
    from 0.23 to 0.34; a basic bootstrap interval would reflect that shift and could
    exclude the value it is drawn around.)
    """
    reps = np.asarray(replicates, dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    if reps.size == 0 or not np.isfinite(estimate):
        return Interval(float("nan"), float("nan"))
    alpha = (1.0 - level) / 2.0
    deltas = reps - reps.mean()
    lo_q, hi_q = np.quantile(deltas, [alpha, 1.0 - alpha])
    return Interval(float(estimate - hi_q), float(estimate - lo_q))


def interval(
    statistic: Callable[[np.ndarray], float],
    estimate: float,
    subsets: list[np.ndarray],
    level: float,
) -> Interval:
    """Interval of ``statistic(indices)`` whose full-sample value is ``estimate``."""
    return basic_interval(estimate, [statistic(idx) for idx in subsets], level)
