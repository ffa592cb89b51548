"""Confidence intervals over the code samples, by half-sampling.

Resampling *with* replacement puts duplicate samples into a similarity matrix:
each duplicate adds an off-diagonal pair with similarity 1 in both models, which
inflates RSA and (through the unbiased HSIC's off-diagonal terms) CKA. So we draw
subsets of half the samples *without* replacement instead. For an estimate whose
variance shrinks like 1/n, a half-sample's spread around the full-sample value
has the full sample's variance (finite-population correction: 1/(N/2) - 1/N = 1/N;
McCarthy's half-sampling). The interval is ``est +- z * sd`` of the half-sample values.

Every comparison of a run uses the same subsets (one seed), so a shared side, the
pre-trained model's, is computed once per subset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats

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


def spread_interval(estimate: float, replicates: np.ndarray | list[float], level: float) -> Interval:
    """``estimate +- z * sd(half-sample values)``: sampling variability around the reported value.

    The normal approximation is steadier than quantiles with the few rounds that RSA can
    afford at N = 5,000. Centring on ``estimate`` rather than on the replicates also keeps
    the interval on its value when half-samples shift a score whose bias shrinks like 1/N
    (the paper's RSA with its diagonal of ones: at N = 120 a random baseline's Pearson goes
    from 0.23 to 0.34 on halves; a basic bootstrap interval would miss its own estimate).
    """
    reps = np.asarray(replicates, dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    if reps.size < 2 or not np.isfinite(estimate):
        return Interval(float("nan"), float("nan"))
    half_width = float(stats.norm.ppf(0.5 + level / 2.0) * reps.std(ddof=1))
    return Interval(estimate - half_width, estimate + half_width)


def interval(
    statistic: Callable[[np.ndarray], float],
    estimate: float,
    subsets: list[np.ndarray],
    level: float,
) -> Interval:
    """Interval of ``statistic(indices)`` whose full-sample value is ``estimate``."""
    return spread_interval(estimate, [statistic(idx) for idx in subsets], level)
