"""Suggested freeze depth and the "top two layers" verdict, on the paper's own curves."""

import pytest

from telly.errors import TellyError
from telly.similarity.suggest import suggest_k, top_two_claim

# telly-paper.md section 2.3: rho per hidden state 0..12, UniXcoder.
PAPER = {
    "search": [1.0, .9999, .9990, .9985, .9969, .9960, .9930, .9859, .9598, .8920, .7988, .5875, .3713],
    "clone": [.9998, .9964, .9832, .9814, .9696, .9615, .9523, .9380, .8923, .8438, .6473, .5046, .2652],
    "code_sum": [1.0, .9999, .9987, .9964, .9959, .9930, .9818, .9823, .9421, .9152, .9046, .8019, .2140],
    "completion": [.9999, .9999, .9986, .9981, .9967, .9940, .9923, .9930, .9780, .9792, .9795, .9703, .9219],
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
