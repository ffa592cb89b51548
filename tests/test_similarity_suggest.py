"""Suggested freeze depth and the "top two layers" verdict, on the paper's own curves."""

import pytest

from telly.errors import TellyError
from telly.similarity.suggest import suggest_k, top_two_claim

# telly-paper.md section 2.3: rho per hidden state 0..12, UniXcoder.
PAPER = {
    "search": [1.0, 0.9999, 0.9990, 0.9985, 0.9969, 0.9960, 0.9930, 0.9859, 0.9598, 0.8920, 0.7988, 0.5875, 0.3713],
    "clone": [0.9998, 0.9964, 0.9832, 0.9814, 0.9696, 0.9615, 0.9523, 0.9380, 0.8923, 0.8438, 0.6473, 0.5046, 0.2652],
    "code_sum": [1.0, 0.9999, 0.9987, 0.9964, 0.9959, 0.9930, 0.9818, 0.9823, 0.9421, 0.9152, 0.9046, 0.8019, 0.2140],
    "completion": [
        0.9999,
        0.9999,
        0.9986,
        0.9981,
        0.9967,
        0.9940,
        0.9923,
        0.9930,
        0.9780,
        0.9792,
        0.9795,
        0.9703,
        0.9219,
    ],
}


@pytest.mark.parametrize(
    "task,threshold,k",
    [("search", 0.9, 8), ("clone", 0.9, 7), ("code_sum", 0.9, 10), ("completion", 0.9, 11), ("clone", 0.95, 6)],
)
def test_suggested_k_on_the_papers_curves(task, threshold, k):
    assert suggest_k(PAPER[task], threshold) == k


def test_no_freezing_when_even_the_embeddings_change():
    assert suggest_k([0.5, 0.9, 0.9], 0.8) is None
    assert suggest_k([0.9, float("nan"), 0.9], 0.8) == 0


def test_top_two_claim_on_the_papers_curves():
    search = top_two_claim(PAPER["search"], 0.8)
    assert not search.holds and search.changed == [10, 11, 12]  # h10 = 0.7988
    assert search.most_changed[:3] == [12, 11, 10]
    change = [1 - v for v in PAPER["search"]]
    assert search.top_two_share == pytest.approx(sum(change[-2:]) / sum(change))
    assert search.describe(0.8) == "does not hold (h10 also below 0.8)"
    code_sum = top_two_claim(PAPER["code_sum"], 0.85)
    assert code_sum.holds and code_sum.changed == [11, 12]
    completion = top_two_claim(PAPER["completion"], 0.8)
    assert not completion.holds and completion.changed == []
    assert "nothing changes much" in completion.describe(0.8)


def test_too_short_curves_are_errors():
    with pytest.raises(TellyError):
        suggest_k([1.0], 0.9)
    with pytest.raises(TellyError):
        top_two_claim([1.0, 1.0], 0.9)
