"""Paired bootstrap intervals on per-example test scores, and the three-way verdicts they carry.

Two comparisons, both on a task's main metric and over the same test rows (docs/report.md):

- :func:`relative_difference`: Telly-K against Base, ``100 x (metric_K / metric_Base - 1)`` percent;
- :func:`absolute_difference`: Base against its no-training baseline, ``metric_Base - metric_baseline``.

**How the interval is made.** A variant with several seeds contributes, per test row, its per-row
statistics averaged over its seeds (:mod:`telly.finetuning.examples`; the metric of the seeds pooled).
The test rows are the resampling unit and are resampled *paired*: one resample draws row indices once
and both variants are read on those rows, so the difficulty of a row cancels out of the difference. The
interval is scipy's ``stats.bootstrap`` over the row indices (vectorised), BCa by default: the statistic
is a ratio of sums, so its bootstrap distribution is skewed and biased at a few hundred rows, which BCa
corrects and the plain percentile method does not. When BCa cannot be computed (a degenerate jackknife,
e.g. every resample gives the same value) the percentile interval is used and named. Seeds enter through
the per-row averages, not as a resampling level: with 1 to 3 seeds a variant has at most 10 distinct seed
resamples, too few for a bootstrap of its own; the report shows the spread over seeds (mean +- std) beside.

**Non-inferiority** at margin m (``report.within_base_tolerance``, 1%): *reproduced* when the interval's
lower end is at least -m, *not reproduced* when its upper end is below -m, otherwise *inconclusive*, with
the smallest detectable difference: the interval's half-width (high - low) / 2, i.e. the distance from the
estimate within which this run cannot tell a true difference from no difference. A degenerate metric
(Base at 0, or every variant identical on every row) is *not checked*.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from telly.finetuning.examples import main_metric
from telly.reporting.verdicts import INCONCLUSIVE, NOT_CHECKED, NOT_REPRODUCED, REPRODUCED, Verdict


@dataclass(frozen=True)
class Interval:
    """A bootstrap interval of a difference (percent when relative)."""

    estimate: float
    low: float
    high: float
    level: float
    method: str  # "BCa" or "percentile"
    rows: int
    seeds: tuple[int, int]  # seeds of the two sides
    relative: bool

    @property
    def half_width(self) -> float:
        """The smallest difference this run could detect: half the interval's width."""
        return (self.high - self.low) / 2

    def text(self) -> str:
        unit = "%" if self.relative else ""
        return (
            f"{self.estimate:+.2f}{unit} [{self.low:+.2f}{unit}, {self.high:+.2f}{unit}] "
            f"({self.level:.0%} {self.method}, {self.rows} rows, seeds {self.seeds[0]} vs {self.seeds[1]})"
        )

    def to_json(self) -> dict:
        return {**asdict(self), "seeds": list(self.seeds), "half_width": self.half_width}


def seed_mean(per_seed: Sequence[np.ndarray]) -> np.ndarray:
    """``[d, n]`` per-row statistics averaged over seeds (the same rows in each)."""
    return np.mean(np.stack([np.atleast_2d(np.asarray(s, dtype=float)) for s in per_seed]), axis=0)


def _interval(
    statistic, n: int, *, relative: bool, seeds: tuple[int, int], level: float, resamples: int, seed: int
) -> Interval:
    import warnings

    from scipy.stats import bootstrap

    index = np.arange(n)
    estimate = float(statistic(index))
    method = "BCa"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on a degenerate BCa; the fallback below says so instead
        result = bootstrap(
            (index,),
            statistic,
            vectorized=True,
            n_resamples=resamples,
            confidence_level=level,
            method="BCa",
            random_state=np.random.default_rng(seed),
        )
        low, high = result.confidence_interval
        if not (np.isfinite(low) and np.isfinite(high)):
            method = "percentile"
            result = bootstrap(
                (index,),
                statistic,
                vectorized=True,
                n_resamples=resamples,
                confidence_level=level,
                method="percentile",
                random_state=np.random.default_rng(seed),
            )
            low, high = result.confidence_interval
    return Interval(estimate, float(low), float(high), level, method, n, seeds, relative)


def relative_difference(
    task: str,
    base: Sequence[np.ndarray],
    other: Sequence[np.ndarray],
    *,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """``100 x (metric(other) / metric(base) - 1)`` with a paired bootstrap interval over test rows."""
    b, o = seed_mean(base), seed_mean(other)

    def statistic(i: np.ndarray, axis: int = -1) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return 100.0 * (np.asarray(main_metric(task, o[:, i])) / np.asarray(main_metric(task, b[:, i])) - 1)

    return _interval(
        statistic,
        b.shape[-1],
        relative=True,
        seeds=(len(base), len(other)),
        level=level,
        resamples=resamples,
        seed=seed,
    )


def absolute_difference(
    task: str,
    first: Sequence[np.ndarray],
    second: Sequence[np.ndarray],
    *,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """``metric(first) - metric(second)`` with a paired bootstrap interval over test rows."""
    a, b = seed_mean(first), seed_mean(second)

    def statistic(i: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.asarray(main_metric(task, a[:, i])) - np.asarray(main_metric(task, b[:, i]))

    return _interval(
        statistic,
        a.shape[-1],
        relative=False,
        seeds=(len(first), len(second)),
        level=level,
        resamples=resamples,
        seed=seed,
    )


# ------------------------------------------------------------------ verdicts


def degenerate(task: str, base: Sequence[np.ndarray], others: Sequence[Sequence[np.ndarray]]) -> str | None:
    """Why a comparison with Base cannot be checked (Base at 0, every variant identical), else None."""
    if main_metric(task, seed_mean(base)) == 0:
        return "Base scores 0 on the main metric: no relative difference exists"
    first = np.atleast_2d(base[0])
    if all(np.array_equal(np.atleast_2d(s), first) for runs in [base, *others] for s in runs):
        return "every variant and seed scores every test row the same"
    return None


def non_inferiority(interval: Interval, margin: float, what: str = "Telly-K vs Base") -> Verdict:
    """Three-way verdict on a relative difference (percent) against a margin (a fraction, 0.01 = 1%)."""
    bar = -100.0 * margin
    details = {"interval": interval.to_json(), "margin_pct": bar}
    text = f"{what} {interval.text()}, margin {bar:+.0f}%"
    if not (math.isfinite(interval.low) and math.isfinite(interval.high)):
        return Verdict(NOT_CHECKED, text + ": no finite interval", details)
    if interval.low >= bar:
        return Verdict(REPRODUCED, text + ": lower end above the margin", details)
    if interval.high < bar:
        return Verdict(NOT_REPRODUCED, text + ": upper end below the margin", details)
    return Verdict(
        INCONCLUSIVE,
        text + f": the interval spans the margin; smallest detectable difference ±{interval.half_width:.2f}%",
        details,
    )


def check_non_inferior(
    task: str,
    base: Sequence[np.ndarray],
    other: Sequence[np.ndarray],
    margin: float,
    *,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
    what: str = "Telly-K vs Base",
) -> Verdict:
    """Non-inferiority of ``other`` to ``base`` (per-seed ``[d, n]`` statistics), or not checked when degenerate."""
    why = degenerate(task, base, [other])
    if why:
        return Verdict(NOT_CHECKED, f"{what}: {why}")
    return non_inferiority(
        relative_difference(task, base, other, level=level, resamples=resamples, seed=seed), margin, what
    )


def check_learns(
    task: str,
    base: Sequence[np.ndarray],
    baseline: np.ndarray,
    *,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Verdict:
    """Base learns the task when ``Base - baseline`` has an interval above 0 (reproduced = it learns)."""
    interval = absolute_difference(task, base, [baseline], level=level, resamples=resamples, seed=seed)
    details = {"interval": interval.to_json()}
    text = f"Base - baseline {interval.text()}"
    if interval.low > 0:
        return Verdict(REPRODUCED, text + ": Base beats its no-training baseline", details)
    if interval.high < 0:
        return Verdict(NOT_REPRODUCED, text + ": Base is below its no-training baseline", details)
    return Verdict(NOT_REPRODUCED, text + ": Base cannot be told from its no-training baseline", details)
