"""compute(): every comparison of every hidden state, shared preparations, intervals."""

import numpy as np
import pytest

from telly.similarity.cka import linear_cka, procrustes_distance
from telly.similarity.compute import Comparison, _Shared, compute, curves
from telly.similarity.rsa import rsa


def test_scores_equal_the_single_metric_functions_and_intervals_bracket_them():
    rng = np.random.default_rng(0)
    n, hidden, states = 120, 16, 3
    pre = rng.normal(size=(n, states, hidden)).astype(np.float32)
    models = {
        "pretrained": pre,
        "finetuned-a-base": pre + np.float32(0.3) * rng.normal(size=pre.shape).astype(np.float32),
        "random": rng.normal(size=pre.shape).astype(np.float32),
    }
    comparisons = [
        Comparison("finetuned", "a", "pretrained", "finetuned-a-base"),
        Comparison("random", "all", "pretrained", "random"),
    ]
    rows = compute(
        lambda tag, h: models[tag][:, h],
        comparisons,
        states,
        num_samples=n,
        block_rows=7,
        rsa_rounds=20,
        rounds=40,
        seed=1,
    )
    assert len(rows) == 6
    for row in rows:
        a, b = models[row["model_a"]][:, row["hidden_state"]], models[row["model_b"]][:, row["hidden_state"]]
        want = rsa(a, b)
        assert row["rsa_spearman"] == pytest.approx(want.spearman, abs=1e-6)
        assert row["rsa_pearson"] == pytest.approx(want.pearson, abs=1e-6)
        assert row["cka"] == pytest.approx(linear_cka(a, b)) and row["procrustes"] == pytest.approx(
            procrustes_distance(a, b)
        )
        for m in ("rsa_spearman", "rsa_pearson", "cka", "procrustes"):
            assert row[f"{m}_ci_low"] < row[f"{m}_ci_high"]
            assert row[f"{m}_ci_low"] - 0.05 <= row[m] <= row[f"{m}_ci_high"] + 0.05
    finetuned = curves(rows, "cka")["a"]
    assert len(finetuned) == 3 and min(finetuned) > curves(rows, "cka", "random")["all"][0] + 0.5


def test_shared_preparations_are_made_once_and_dropped_after_last_use():
    made = []
    comparisons = [Comparison("finetuned", t, "pretrained", f"finetuned-{t}-base") for t in "abc"]
    shared = _Shared(comparisons, lambda tag: made.append(tag) or tag)
    for c in comparisons:
        shared.pair(c)
        assert set(shared.ready) <= {"pretrained"}
    assert made == ["pretrained", "finetuned-a-base", "finetuned-b-base", "finetuned-c-base"]
    assert shared.ready == {}


def test_baseline_columns_follow_the_tasks():
    from telly.similarity.outputs import _columns

    rows = [
        {"kind": k, "task": t}
        for k, t in [("finetuned", "a"), ("seed", "a"), ("seed_pair", "a"), ("finetuned", "b"), ("random", "all")]
    ]
    assert _columns(rows) == ["a", "b", "random", "seed_a", "seed_pair_a"]
