"""The RQ3 claim checker on synthetic per-example results: each of the four verdicts, and the intervals under it."""

from __future__ import annotations

import numpy as np
import pytest

from telly.config import ReportParams
from telly.finetuning import examples as E
from telly.finetuning import metrics as M
from telly.reporting import evidence as ev
from telly.reporting import verdicts as vd
from telly.reporting.claims import task_evidence

L = 4  # K = 0..1 must hold (ceil(0.5 x 4) - 1)


@pytest.fixture
def settings() -> ReportParams:
    return ReportParams(
        out_dir="reports",
        paper_numbers=None,
        similarity_metric="rsa_spearman",
        lower_layers_fraction=0.5,
        preserve_threshold=0.9,
        within_base_tolerance=0.01,
        within_base_min_depth=0.5,
        ci_level=0.95,
        bootstrap_resamples=1000,
        bootstrap_seed=0,
        paper_regime={"tasks": ["code_search"], "variants": ["telly-0"], "results_dir": "x"},
        track=False,
    )


def _runs(rr: dict[str, list[np.ndarray]]) -> list[dict]:
    """Code search runs: per variant, one reciprocal-rank array per seed."""
    runs = []
    for variant, seeds in rr.items():
        for s, values in enumerate(seeds):
            runs.append(
                {
                    "variant": variant,
                    "settings": {"seed": s, "architecture": f"RobertaModel-L{L}-H8-V100"},
                    "test": {"mrr": float(np.mean(values))},
                    "examples": [{"id": f"q{i}", "rr": float(v)} for i, v in enumerate(values)],
                }
            )
    return runs


def _baseline(values: np.ndarray) -> dict:
    return {"examples": [{"id": f"q{i}", "rr": float(v)} for i, v in enumerate(values)]}


def _check(runs, baseline, settings):
    return task_evidence("code_search", runs, baseline, L, settings)


def _rr(rng, n, scale=1.0):
    return np.clip(scale / rng.integers(1, 20, size=n), 0, 1)


def _seeds(rng, n, k, noise=0.01):
    """``k`` seeds' reciprocal ranks on the same ``n`` rows: a row's difficulty shared, a little noise per seed."""
    rows = _rr(rng, n)
    return [np.clip(rows * (1 + rng.normal(0, noise, n)), 0, 1) for _ in range(k)]


def test_equal_variants_are_reproduced(settings):
    rng = np.random.default_rng(0)
    base = _seeds(rng, 400, 3)
    runs = _runs({"base": base, "telly-0": [b.copy() for b in base], "telly-1": [b.copy() for b in base]})
    out = _check(runs, _baseline(np.full(400, 0.01)), settings)
    assert out.learns.verdict == vd.REPRODUCED
    assert out.verdict.verdict == vd.REPRODUCED, out.verdict.evidence
    assert out.deepest_k == 1 and out.needed_k == 1


def test_clearly_worse_is_not_reproduced(settings):
    rng = np.random.default_rng(1)
    base = _seeds(rng, 400, 3)
    runs = _runs({"base": base, "telly-0": [b * 0.9 for b in base], "telly-1": [b * 0.9 for b in base]})
    out = _check(runs, _baseline(np.full(400, 0.01)), settings)
    assert out.verdict.verdict == vd.NOT_REPRODUCED, out.verdict.evidence
    interval = out.per_k[0].details["interval"]
    assert interval["high"] < -1.0 and interval["estimate"] == pytest.approx(-10.0)


def test_noisy_with_few_rows_is_inconclusive_with_the_detectable_difference(settings):
    rng = np.random.default_rng(2)
    base = [rng.random(12)]
    other = [np.clip(base[0] + rng.normal(0, 0.3, 12), 0, 1)]
    runs = _runs({"base": base, "telly-0": other, "telly-1": other})
    out = _check(runs, _baseline(np.zeros(12)), settings)
    assert out.learns.verdict == vd.REPRODUCED
    assert out.verdict.verdict == vd.INCONCLUSIVE, out.verdict.evidence
    interval = out.per_k[0].details["interval"]
    assert interval["low"] < -1.0 <= interval["high"]
    assert interval["half_width"] == pytest.approx((interval["high"] - interval["low"]) / 2)
    assert "detectable difference (80% power)" in out.verdict.evidence
    power = out.per_k[0].details["power"]
    assert power["mde"] == pytest.approx(2.8016 * interval["se"], rel=1e-3)  # (1.96 + 0.8416) x SE
    assert power["mde"] > 1.0 and power["rows_needed"] > 12  # a +-1% margin needs more rows


def test_all_zero_is_not_checked(settings):
    zero = [np.zeros(50)]
    runs = _runs({"base": zero, "telly-0": zero, "telly-1": zero})
    out = _check(runs, _baseline(np.zeros(50)), settings)
    assert out.verdict.verdict == vd.NOT_CHECKED  # Base cannot beat a baseline at 0 with 0 either
    # and with the baseline out of the way, Base at 0 is a degenerate metric of its own
    assert "Base scores 0" in ev.check_non_inferior("code_search", zero, zero, 0.01).evidence


def test_a_task_that_does_not_beat_its_baseline_gets_no_verdict(settings):
    rng = np.random.default_rng(3)
    base = [_rr(rng, 300)]
    noisy = [np.clip(b * (1 + rng.normal(0, 0.2, len(b))), 0, 1) for b in base]
    runs = _runs({"base": base, "telly-0": base, "telly-1": noisy})
    out = _check(runs, _baseline(base[0].copy()), settings)
    assert out.learns.verdict == vd.NOT_REPRODUCED
    assert out.verdict.verdict == vd.NOT_CHECKED and "does not beat its no-training baseline" in out.verdict.evidence
    assert out.per_k == {}  # no RQ3 verdict drawn
    # ... but the report still says what the design detects at K = need (1), for sizing a bigger run
    assert out.needed_k == 1 and out.design_power["mde"] > 0 and out.design_power["margin"] == 1.0
    from telly.reporting import document
    from telly.reporting.inputs import Inputs

    text = document.rq3_evidence("code_search", Inputs(baselines={}), out.to_json())
    assert (
        f"Power of this design at K = 1 (Telly-K against Base, though no verdict is drawn): detects {out.design_power['mde']:.2f}%"
        in text
    )


def test_no_design_power_without_the_needed_k(settings):
    rng = np.random.default_rng(3)
    base = [_rr(rng, 300)]
    out = _check(_runs({"base": base, "telly-0": base}), _baseline(base[0].copy()), settings)
    assert out.verdict.verdict == vd.NOT_CHECKED and out.design_power is None


def test_a_missing_k_below_the_needed_one_is_refused(settings):
    rng = np.random.default_rng(4)
    base = [_rr(rng, 200)]
    runs = _runs({"base": base, "telly-1": [b.copy() for b in base]})  # Telly-0 never ran
    out = _check(runs, _baseline(np.full(200, 0.01)), settings)
    assert out.verdict.verdict == vd.NOT_CHECKED
    assert "missing K = [0]" in out.verdict.evidence and out.per_k == {}


def test_seed_effect_widens_the_two_level_interval_and_the_verdict_is_no_longer_firm(settings):
    from telly.reporting.claims import Claim, firm_rq3

    rng = np.random.default_rng(5)
    rows = rng.uniform(0.2, 0.8, 300)
    base = [rows * (1 + rng.normal(0, 0.002, 300)) for _ in range(3)]
    # the seeds of Telly-K move the whole metric by -2% to +6%; the rows add almost nothing
    shifts = (0.06, -0.02, 0.05)
    other = [rows * (1 + d) * (1 + rng.normal(0, 0.002, 300)) for d in shifts]
    interval = ev.relative_difference("code_search", base, other, resamples=1000)
    rows_only = interval.rows_only
    assert interval.method == "two-level percentile" and rows_only.method in ("BCa", "percentile")
    assert interval.estimate == pytest.approx(rows_only.estimate)
    assert interval.high - interval.low > 5 * (rows_only.high - rows_only.low)
    assert interval.se > rows_only.se
    assert rows_only.low > -1.0  # the row-only interval alone would call it reproduced
    runs = _runs({"base": base, "telly-0": other, "telly-1": other})
    out = _check(runs, _baseline(np.full(300, 0.01)), settings)
    assert out.verdict.verdict == vd.INCONCLUSIVE, out.verdict.evidence
    per_k = out.per_k[0].details
    assert per_k["interval"]["rows_only"]["low"] > -1.0 > per_k["interval"]["low"]
    claim = firm_rq3(Claim("x", "x", "RQ3", vd.all_tasks({"code_search": out.verdict}), vd.not_checked("")))
    assert not claim.firm


def test_one_seed_each_leaves_only_the_row_level(settings):
    rng = np.random.default_rng(6)
    base = [_rr(rng, 300)]
    other = [np.clip(base[0] * rng.uniform(0.9, 1.1, 300), 0, 1)]
    interval = ev.relative_difference("code_search", base, other, resamples=2000)
    assert interval.se == pytest.approx(interval.rows_only.se, rel=0.15)


def test_runs_on_different_test_rows_are_an_error_naming_them(settings):
    runs = _runs({"base": [np.ones(5)], "telly-0": [np.ones(6)], "telly-1": [np.ones(5)]})
    out = _check(runs, _baseline(np.zeros(5)), settings)
    assert out.verdict.verdict == vd.NOT_CHECKED and "telly-0/seed0" in out.verdict.evidence


def test_all_tasks_is_three_way():
    ok, bad = vd.Verdict(vd.REPRODUCED, "a"), vd.Verdict(vd.NOT_REPRODUCED, "b")
    maybe, na = vd.Verdict(vd.INCONCLUSIVE, "c"), vd.not_checked("d")
    assert vd.all_tasks({"x": ok, "y": maybe}).verdict == vd.INCONCLUSIVE
    assert vd.all_tasks({"x": maybe, "y": bad}).verdict == vd.NOT_REPRODUCED
    assert vd.all_tasks({"x": ok, "y": na}).verdict == vd.REPRODUCED


# ------------------------------------------------------------------ metrics from per-example statistics


def test_main_metric_from_rows_equals_the_aggregate_metric():
    refs = ["return a + b", "x = 1", "print ( x )", "return self . items"]
    hyps = ["return a + b", "x = 2", "print x", "return items"]
    rows = E.generation_rows("code_generation", refs, hyps)
    assert E.main_metric("code_generation", E.statistics("code_generation", rows)) == pytest.approx(
        M.corpus_bleu_code(refs, hyps)
    )
    rows = E.generation_rows("code_summarization", refs, hyps)
    assert E.main_metric("code_summarization", E.statistics("code_summarization", rows)) == pytest.approx(
        M.smoothed_bleu4(refs, hyps)
    )
    rows = E.generation_rows("line_completion", refs, hyps)
    assert E.main_metric("line_completion", E.statistics("line_completion", rows)) == pytest.approx(
        M.edit_similarity(refs, hyps)
    )
    scores, labels = np.array([0.9, 0.2, 0.7, 0.1]), np.array([1, 1, 0, 0])
    rows = E.clone_rows(scores >= 0.5, labels)
    f1 = M.classification_metrics(scores, labels, 0.5)["f1"]
    assert E.main_metric("clone_detection", E.statistics("clone_detection", rows)) == pytest.approx(f1)
    ranks = [1, 2, 2, 1500]  # beyond rank 1000 a query scores 0 (UniXcoder's MRR)
    rows = E.search_rows(ranks)
    assert E.main_metric("code_search", E.statistics("code_search", rows)) == pytest.approx(
        M.metrics_from_ranks(ranks)["mrr"]
    )
    assert rows[-1]["rr"] == 0.0


def test_the_bootstrap_resamples_clone_f1_not_a_mean_of_rows():
    gold = np.array([1, 0] * 100)
    base = E.statistics("clone_detection", E.clone_rows(gold, gold))  # F1 = 1
    worse = gold.copy()
    worse[:20] = 1 - worse[:20]  # 10 misses, 10 false alarms: F1 = 180 / 200
    other = E.statistics("clone_detection", E.clone_rows(worse, gold))
    interval = ev.relative_difference("clone_detection", [base], [other], resamples=500)
    assert interval.estimate == pytest.approx(-10.0)
    assert interval.low < -10.0 < interval.high < 0


def test_a_task_that_does_not_beat_its_baseline_shows_its_learning_curve(settings, tmp_path):
    """The report shows benchmarks/learning_curves.py's points for a task whose Base does not beat its baseline,
    and none for a task that does."""
    from telly.reporting import document
    from telly.reporting.inputs import Inputs

    point = {"task": "code_search", "train_size": 256, "epochs": 3, "seed": 1, "base": 0.05, "baseline": 0.4}
    point["difference"] = {"estimate": -0.35, "low": -0.38, "high": -0.32}
    inputs = Inputs(baselines={"code_search": {"method": "BM25", "test": {"mrr": 0.4}}})
    inputs.learning_curves = {"code_search": [point, {**point, "train_size": 4000, "base": 0.09}]}
    interval = {"estimate": -0.3, "low": -0.33, "high": -0.28, "level": 0.95, "method": "x", "rows": 9, "seeds": [3, 1]}
    losing = {"learns": {"verdict": vd.NOT_REPRODUCED, "interval": interval}}
    text = "".join(document.baseline_lines("code_search", inputs, losing))
    assert "*Learning curve*" in text and "256 rows: 0.0500 vs 0.4000" in text and "4,000 rows: 0.0900" in text
    winning = {"learns": {"verdict": vd.REPRODUCED, "interval": {**interval, "low": 0.1, "estimate": 0.2}}}
    assert "Learning curve" not in "".join(document.baseline_lines("code_search", inputs, winning))
