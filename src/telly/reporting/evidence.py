"""Paired bootstrap intervals on per-example test scores, and the three-way verdicts they carry.

Two comparisons, both on a task's main metric and over the same test rows (docs/report.md):

- :func:`relative_difference`: Telly-K against Base, ``100 x (metric_K / metric_Base - 1)`` percent;
- :func:`absolute_difference`: Base against its no-training baseline, ``metric_Base - metric_baseline``.

**Two intervals per comparison.** The first, on which every verdict rests, is a *two-level* bootstrap
(:func:`two_level`): each resample draws each side's seeds with replacement (the sides independently:
a seed number names a different run in each variant), averages the drawn seeds' per-row statistics, then
draws the test rows with replacement, once for both sides (paired, so a row's difficulty cancels out of
the difference), and recomputes the difference; the interval is the percentile interval of the resamples
and its standard error their standard deviation. So the seed-to-seed spread widens the interval as much
as it moves the result. The second, kept as a figure beside it, resamples the rows only (each variant's
seeds averaged per row first): scipy's ``stats.bootstrap`` over the row indices, BCa (the statistic is a
ratio of sums, skewed and biased at a few hundred rows); the percentile interval, named, when BCa cannot
be computed. With one seed on both sides the two levels coincide but for the interval method.

**Non-inferiority** at margin m (``report.within_base_tolerance``, 1%): *reproduced* when the two-level
interval's lower end is at least -m, *not reproduced* when its upper end is below -m, otherwise
*inconclusive*. Beside it, the design's power (:func:`power`): the smallest difference it detects with 80%
power, ``(z_{1-alpha/2} + z_{0.8}) x SE``, and the rows and seeds a +-m margin would need. A degenerate
metric (Base at 0, or every variant identical on every row) is *not checked*.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from telly.finetuning.examples import main_metric
from telly.reporting.verdicts import INCONCLUSIVE, NOT_CHECKED, NOT_REPRODUCED, REPRODUCED, Verdict

POWER = 0.8  # the power the detectable difference and the sample sizes are stated at
BLOCK = 256  # resamples drawn at once by the two-level bootstrap (bounds its memory: BLOCK x rows x stats)


@dataclass(frozen=True)
class Interval:
    """A bootstrap interval of a difference (percent when relative)."""

    estimate: float
    low: float
    high: float
    level: float
    method: str  # "two-level percentile", "BCa" or "percentile"
    rows: int
    seeds: tuple[int, int]  # seeds of the two sides
    relative: bool
    se: float = math.nan  # the standard deviation of the resampled differences
    rows_only: Interval | None = None  # the row-only interval, kept beside a two-level one

    @property
    def half_width(self) -> float:
        """Half the interval's width: how far from the estimate this run cannot tell differences apart."""
        return (self.high - self.low) / 2

    def bounds(self, unit: str = "") -> str:
        return f"[{self.low:+.2f}{unit}, {self.high:+.2f}{unit}]"

    def text(self) -> str:
        unit = "%" if self.relative else ""
        out = (
            f"{self.estimate:+.2f}{unit} {self.bounds(unit)} "
            f"({self.level:.0%} {self.method}, {self.rows} rows, seeds {self.seeds[0]} vs {self.seeds[1]})"
        )
        if self.rows_only is not None:
            out += f"; rows only {self.rows_only.bounds(unit)}"
        return out

    def to_json(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k != "rows_only"}
        out.update(seeds=list(self.seeds), half_width=self.half_width)
        if self.rows_only is not None:
            out["rows_only"] = self.rows_only.to_json()
        return out


def seed_mean(per_seed: Sequence[np.ndarray]) -> np.ndarray:
    """``[d, n]`` per-row statistics averaged over seeds (the same rows in each)."""
    return np.mean(_stack(per_seed), axis=0)


def _stack(per_seed: Sequence[np.ndarray]) -> np.ndarray:
    """``[seeds, d, n]``."""
    return np.stack([np.atleast_2d(np.asarray(s, dtype=float)) for s in per_seed])


def _row_interval(
    statistic, n: int, *, relative: bool, seeds: tuple[int, int], level: float, resamples: int, seed: int
) -> Interval:
    from scipy.stats import bootstrap

    index = np.arange(n)
    estimate = float(statistic(index))
    method = "BCa"
    common = dict(vectorized=True, n_resamples=resamples, confidence_level=level)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on a degenerate BCa; the fallback below says so instead
        result = bootstrap((index,), statistic, method="BCa", random_state=np.random.default_rng(seed), **common)
        low, high = result.confidence_interval
        if not (np.isfinite(low) and np.isfinite(high)):
            method = "percentile"
            result = bootstrap(
                (index,), statistic, method="percentile", random_state=np.random.default_rng(seed), **common
            )
            low, high = result.confidence_interval
    se = float(result.standard_error)
    return Interval(estimate, float(low), float(high), level, method, n, seeds, relative, se)


def two_level(
    first: Sequence[np.ndarray],
    second: Sequence[np.ndarray],
    difference: Callable[[np.ndarray, np.ndarray], np.ndarray],
    *,
    resamples: int,
    seed: int,
) -> np.ndarray:
    """``resamples`` values of ``difference(stats_first, stats_second)`` (each ``[d, m, n]``: m resamples of n
    rows): each side's seeds drawn with replacement and averaged per row, then the rows drawn once for both."""
    rng = np.random.default_rng(seed)
    a, b = _stack(first), _stack(second)
    n = a.shape[-1]
    out = []
    for start in range(0, resamples, BLOCK):
        m = min(BLOCK, resamples - start)
        wa = rng.multinomial(len(a), np.full(len(a), 1 / len(a)), size=m) / len(a)  # [m, seeds]: draw weights
        wb = rng.multinomial(len(b), np.full(len(b), 1 / len(b)), size=m) / len(b)
        rows = rng.integers(0, n, size=(1, m, n))
        sa = np.take_along_axis(np.einsum("ms,sdn->dmn", wa, a), rows, axis=-1)
        sb = np.take_along_axis(np.einsum("ms,sdn->dmn", wb, b), rows, axis=-1)
        out.append(np.asarray(difference(sa, sb), dtype=float))
    return np.concatenate(out)


def _interval(
    difference: Callable[[np.ndarray, np.ndarray], np.ndarray],
    first: Sequence[np.ndarray],
    second: Sequence[np.ndarray],
    *,
    relative: bool,
    level: float,
    resamples: int,
    seed: int,
) -> Interval:
    """The two-level interval of ``difference`` with the row-only one beside it."""
    a, b = seed_mean(first), seed_mean(second)
    seeds = (len(first), len(second))

    def statistic(i: np.ndarray, axis: int = -1) -> np.ndarray:
        return difference(a[:, i], b[:, i])

    rows_only = _row_interval(
        statistic, a.shape[-1], relative=relative, seeds=seeds, level=level, resamples=resamples, seed=seed
    )
    values = two_level(first, second, difference, resamples=resamples, seed=seed)
    with np.errstate(invalid="ignore"):
        low, high = (
            np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
            if np.isfinite(values).all()
            else (
                math.nan,
                math.nan,
            )
        )
        se = float(np.std(values, ddof=1)) if np.isfinite(values).all() else math.nan
    estimate = float(difference(a, b))
    return Interval(
        estimate, float(low), float(high), level, "two-level percentile", a.shape[-1], seeds, relative, se, rows_only
    )


def relative_difference(
    task: str,
    base: Sequence[np.ndarray],
    other: Sequence[np.ndarray],
    *,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """``100 x (metric(other) / metric(base) - 1)`` with its two-level and row-only paired intervals."""

    def difference(b: np.ndarray, o: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return 100.0 * (np.asarray(main_metric(task, o)) / np.asarray(main_metric(task, b)) - 1)

    return _interval(difference, base, other, relative=True, level=level, resamples=resamples, seed=seed)


def absolute_difference(
    task: str,
    first: Sequence[np.ndarray],
    second: Sequence[np.ndarray],
    *,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """``metric(first) - metric(second)`` with its two-level and row-only paired intervals."""

    def difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.asarray(main_metric(task, a)) - np.asarray(main_metric(task, b))

    return _interval(difference, first, second, relative=False, level=level, resamples=resamples, seed=seed)


# ------------------------------------------------------------------ power and sample sizes


def power(interval: Interval, margin_pct: float, *, power_level: float = POWER) -> dict:
    """What the design detects and what a +-``margin_pct`` margin would need (docs/report.md, "Power").

    ``mde = (z_{1-alpha/2} + z_power) x SE`` with SE the two-level standard error. The squared SE splits
    into a row part ``V_r = SE_rows^2`` (shrinks as 1/rows) and a seed part ``V_s = SE^2 - V_r`` (shrinks
    as 1/seeds); the target is ``T = margin / (z_{1-alpha/2} + z_power)``. Rows needed at the current seeds:
    ``n x V_r / (T^2 - V_s)``; seeds needed at the current rows: ``S x V_s / (T^2 - V_r)`` (None: that
    alone cannot reach it); both scaled by one factor: ``f = SE^2 / T^2``."""
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + interval.level / 2) + norm.ppf(power_level))
    se = interval.se
    rows_se = interval.rows_only.se if interval.rows_only is not None else se
    out = {"power": power_level, "se": se, "mde": z * se, "margin": margin_pct}
    if not (math.isfinite(se) and math.isfinite(rows_se)) or se <= 0:
        return {**out, "rows_needed": None, "seeds_needed": None, "scale": None}
    target = (margin_pct / z) ** 2
    v_rows = min(rows_se**2, se**2)
    v_seeds = se**2 - v_rows
    seeds = max(interval.seeds)

    def need(now: int, part: float, rest: float) -> int | None:
        return None if rest >= target else max(math.ceil(now * part / (target - rest)), 1)

    scale = se**2 / target
    return {
        **out,
        "rows_needed": need(interval.rows, v_rows, v_seeds),
        "seeds_needed": need(seeds, v_seeds, v_rows),
        "scale": scale,
        "rows_scaled": math.ceil(interval.rows * max(scale, 1.0)),
        "seeds_scaled": math.ceil(seeds * max(scale, 1.0)),
    }


def power_text(p: dict) -> str:
    """One line: the detectable difference and the sizes a +-margin needs."""
    if not math.isfinite(p.get("mde", math.nan)):
        return "power: no finite standard error"
    text = f"detects {p['mde']:.2f}% with {p['power']:.0%} power"
    if p.get("scale") is None:
        return text
    if p["scale"] <= 1:
        return text + f"; a ±{p['margin']:.0f}% margin needs no more rows or seeds"
    rows = "unreachable by rows alone" if p["rows_needed"] is None else f"{p['rows_needed']:,} rows at these seeds"
    seeds = "unreachable by seeds alone" if p["seeds_needed"] is None else f"{p['seeds_needed']} seeds at these rows"
    return (
        text + f"; a ±{p['margin']:.0f}% margin needs {rows}, or {seeds}, or {p['rows_scaled']:,} rows "
        f"and {p['seeds_scaled']} seeds"
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
    details = {"interval": interval.to_json(), "margin_pct": bar, "power": power(interval, 100.0 * margin)}
    text = f"{what} {interval.text()}, margin {bar:+.0f}%"
    if not (math.isfinite(interval.low) and math.isfinite(interval.high)):
        return Verdict(NOT_CHECKED, text + ": no finite interval", details)
    if interval.low >= bar:
        return Verdict(REPRODUCED, text + ": lower end above the margin", details)
    if interval.high < bar:
        return Verdict(NOT_REPRODUCED, text + ": upper end below the margin", details)
    return Verdict(
        INCONCLUSIVE,
        text + f": the interval spans the margin; {power_text(details['power'])}",
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
    what: str = "its no-training baseline",
) -> Verdict:
    """Base beats ``what`` when ``Base - baseline`` has a two-level interval above 0 (reproduced = it does)."""
    interval = absolute_difference(task, base, [baseline], level=level, resamples=resamples, seed=seed)
    details = {"interval": interval.to_json()}
    text = f"Base - {'baseline' if what == 'its no-training baseline' else what} {interval.text()}"
    if interval.low > 0:
        return Verdict(REPRODUCED, text + f": Base beats {what}", details)
    if interval.high < 0:
        return Verdict(NOT_REPRODUCED, text + f": Base is below {what}", details)
    return Verdict(NOT_REPRODUCED, text + f": Base cannot be told from {what}", details)
