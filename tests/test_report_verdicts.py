"""The claim rules on hand-computed cases, the paper's numbers as transcribed, and bad paper files."""

from __future__ import annotations

import math

import pytest
import yaml

from telly.errors import TellyError
from telly.reporting import verdicts as vd
from telly.reporting.paper import PACKAGED, load_paper, paper_variant_metrics


def test_spread_entropy_is_one_for_even_weights_and_zero_for_one_state():
    assert vd.spread_entropy([0.25] * 4) == pytest.approx(1.0)
    assert vd.spread_entropy([1.0, 0.0, 0.0, 0.0]) == pytest.approx(0.0)
    assert vd.spread_entropy([0.5, 0.5, 0.0, 0.0]) == pytest.approx(math.log(2) / math.log(4))


def test_semantic_spread_needs_the_strictly_most_even_weights():
    even, peaked = [0.25] * 4, [0.7, 0.1, 0.1, 0.1]
    assert vd.semantic_spread({"semantic": even, "lexical": peaked}).verdict == vd.REPRODUCED
    assert vd.semantic_spread({"semantic": peaked, "lexical": even}).verdict == vd.NOT_REPRODUCED
    assert vd.semantic_spread({"semantic": even, "lexical": even}).verdict == vd.NOT_REPRODUCED  # a tie
    assert vd.semantic_spread({"lexical": even}).verdict == vd.NOT_CHECKED


def test_peaks_lower_is_strict_and_not_checked_without_both():
    assert vd.peaks_lower({"lexical": 1, "syntactic": 3}, "lexical", "syntactic", how="x").verdict == vd.REPRODUCED
    assert vd.peaks_lower({"lexical": 3, "syntactic": 3}, "lexical", "syntactic", how="x").verdict == vd.NOT_REPRODUCED
    assert vd.peaks_lower({"lexical": 3}, "lexical", "syntactic", how="x").verdict == vd.NOT_CHECKED


def test_lower_layers_use_floor_of_the_fraction_and_the_threshold_inclusive():
    assert vd.lower_states(12, 0.5) == 6 and vd.lower_states(5, 0.5) == 2
    curve = [1.0, 0.95, 0.9, 0.2, 0.1, 0.0]  # L = 5: lower = h0..h2, h2 exactly at the threshold
    assert vd.lower_layers_preserved({"t": curve}, 0.5, 0.9).verdict == vd.REPRODUCED
    assert vd.lower_layers_preserved({"t": curve}, 0.5, 0.91).verdict == vd.NOT_REPRODUCED


def test_top_two_and_their_share_of_the_change():
    v = vd.top_two_change_most({"a": [1.0, 0.9, 0.5, 0.0], "b": [1.0, 0.5, 0.9, 0.8]})
    assert v.verdict == vd.NOT_REPRODUCED and v.details["per_task"] == {"a": True, "b": False}
    assert "a: most changed h3, h2; top two carry 94% of Σ(1 - s)" in v.evidence  # (1 + 0.5) / 1.6


def test_deepest_within_stops_at_the_first_failure():
    metrics = {None: 1.0, 0: 1.0, 1: 0.995, 2: 0.98, 3: 1.0}
    assert vd.deepest_within(metrics, 0.01) == (1, [2])
    assert vd.deepest_within({None: 1.0, 0: 0.5}, 0.01) == (None, [0])


def test_within_base_verdicts():
    # L = 4 needs K = 0..1
    assert vd.within_base({None: 1.0, 0: 1.0, 1: 0.995, 3: 0.5}, 4, 0.01, 0.5).verdict == vd.REPRODUCED
    assert vd.within_base({None: 1.0, 0: 0.98, 1: 1.0}, 4, 0.01, 0.5).verdict == vd.NOT_REPRODUCED
    assert vd.within_base({None: 1.0, 0: 1.0}, 4, 0.01, 0.5).verdict == vd.NOT_CHECKED  # no run reaches K = 1
    assert vd.within_base({0: 1.0}, 4, 0.01, 0.5).verdict == vd.NOT_CHECKED  # no Base
    # a metric where lower is not better than Base still uses |Base|
    assert vd.within_base({None: 0.0, 0: 0.0, 1: 0.0}, 4, 0.01, 0.5).verdict == vd.REPRODUCED


def test_all_tasks_ignores_unchecked_ones():
    ok, bad, na = vd.Verdict(vd.REPRODUCED, "a"), vd.Verdict(vd.NOT_REPRODUCED, "b"), vd.not_checked("c")
    assert vd.all_tasks({"x": ok, "y": na}).verdict == vd.REPRODUCED
    assert vd.all_tasks({"x": ok, "y": bad}).verdict == vd.NOT_REPRODUCED
    assert vd.all_tasks({"y": na}).verdict == vd.NOT_CHECKED


def test_paper_numbers_as_transcribed_from_telly_paper_md():
    paper = load_paper()
    assert paper["rq1"]["scores"]["structural"] == {
        "metric_label": "acc %",
        "random": 34.8,
        "pretrained": 29.7,
        "finetuned": 62.2,
    }
    assert paper["rq1"]["layer_weights"]["lexical"]["pretrained"][1] == 0.2825
    assert paper["rq1"]["layer_weights"]["structural"]["random"] is None
    assert paper["rq2"]["similarity"]["clone_detection"][10] == 0.6473
    assert paper_variant_metrics(paper, "code_search", "mrr")[11] == 0.69
    rows = paper["rq3"]["code_generation"]["rows"]
    assert rows[0]["convergence_time"] == "4h08m20s" and rows[0]["convergence_seconds"] == 14900
    for task, spec in paper["rq3"].items():
        assert [r["variant"] for r in spec["rows"]] == ["base"] + [f"telly-{k}" for k in range(12)], task
    # every layer-weight vector sums to about 1 (softmax weights, rounded to 4 digits)
    for prop, states in paper["rq1"]["layer_weights"].items():
        for state, w in states.items():
            assert w is None or abs(sum(w) - 1) < 0.01, (prop, state)


def test_a_bad_paper_file_is_named(tmp_path):
    with pytest.raises(TellyError, match="not found"):
        load_paper(tmp_path / "nope.yaml")
    numbers = yaml.safe_load(PACKAGED.read_text())
    numbers["rq2"]["similarity"]["code_search"] = numbers["rq2"]["similarity"]["code_search"][:5]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(numbers))
    with pytest.raises(TellyError, match="rq2.similarity.code_search has 5 values, expected 13"):
        load_paper(tmp_path / "p.yaml")
    del numbers["rq3"]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(numbers))
    with pytest.raises(TellyError, match="rq3 lacks"):
        load_paper(tmp_path / "p.yaml")
