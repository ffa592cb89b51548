"""Each metric against cases worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from telly.errors import NonFiniteError
from telly.finetuning import metrics as M


def test_retrieval_mrr_and_recall():
    scores = np.array([[0.9, 0.1, 0.5], [0.8, 0.2, 0.1], [0.1, 0.3, 0.2]])
    out = M.retrieval_metrics(scores)  # ranks 1, 2, 2
    assert out["mrr"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert out["r_at_1"] == pytest.approx(1 / 3)
    assert out["r_at_5"] == pytest.approx(1.0)


def unixcoder_mrr(scores: np.ndarray, query_urls: list, code_urls: list) -> float:
    """UniXcoder's code-search evaluator (run.py ``evaluate``), restated: walk each query's codes in
    descending score order, the first with the query's url gives 1/rank, none in the top 1000 gives 0."""
    ranks = []
    for url, order in zip(query_urls, np.argsort(scores, axis=-1, kind="quicksort")[:, ::-1]):
        hit = next((pos for pos, idx in enumerate(order[:1000], 1) if code_urls[idx] == url), None)
        ranks.append(1 / hit if hit else 0.0)
    return float(np.mean(ranks))


def dense_ranks(queries: np.ndarray, codes: np.ndarray, gold: np.ndarray) -> np.ndarray:
    scores = queries @ codes.T
    return 1 + (scores > scores[np.arange(len(gold)), gold][:, None]).sum(1)


@pytest.mark.parametrize("query_block, code_chunk", [(4096, 8192), (3, 7), (1, 1)])
def test_gold_ranks_in_tiles_equal_the_dense_ranking_with_ties(query_block, code_chunk):
    import torch

    rng = np.random.default_rng(0)
    codes = rng.integers(-2, 3, size=(60, 8)).astype(np.float32)  # small integers: exact dot products, many ties
    codes[40:50] = codes[:10]  # duplicate codes tie with the gold ones exactly
    queries = rng.integers(-2, 3, size=(25, 8)).astype(np.float32)
    gold = rng.permutation(60)[:25]
    expected = dense_ranks(queries, codes, gold)
    assert (expected > 1).any() and len(np.unique(queries @ codes.T)) < 60 * 25 / 10  # ties, not only ones
    got = M.gold_ranks(
        torch.from_numpy(queries), torch.from_numpy(codes), gold, query_block=query_block, code_chunk=code_chunk
    )
    assert got.tolist() == expected.tolist()
    out = M.metrics_from_ranks(got)
    assert out["mrr"] == pytest.approx(np.mean(1 / expected))
    assert out["r_at_5"] == pytest.approx(np.mean(expected <= 5))


def test_mrr_is_unixcoders_and_sklearns_without_ties():
    import torch
    from sklearn.metrics import label_ranking_average_precision_score

    rng = np.random.default_rng(1)
    queries, codes = rng.normal(size=(30, 16)).astype(np.float32), rng.normal(size=(1200, 16)).astype(np.float32)
    gold = rng.permutation(1200)[:30]
    ranks = M.gold_ranks(torch.from_numpy(queries), torch.from_numpy(codes), gold, code_chunk=256)
    scores = queries @ codes.T
    urls = [f"u{i}" for i in range(1200)]
    assert ranks.max() > 1000  # beyond UniXcoder's top-1000 window: counts 0 there too
    assert M.metrics_from_ranks(ranks)["mrr"] == pytest.approx(unixcoder_mrr(scores, [urls[g] for g in gold], urls))
    truth = np.zeros_like(scores, dtype=int)
    truth[np.arange(30), gold] = 1
    no_cutoff = M.metrics_from_ranks(ranks, cutoff=10**9)["mrr"]
    assert no_cutoff == pytest.approx(label_ranking_average_precision_score(truth, scores))


def test_gold_ranks_rejects_a_gold_row_outside_the_codebase():
    import torch

    with pytest.raises(ValueError, match="0..2"):
        M.gold_ranks(torch.ones(2, 4), torch.ones(3, 4), [0, 3])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_score_fails_the_metric_instead_of_ranking_gold_first(bad):
    import torch

    scores = np.eye(3)
    scores[1, 0] = bad  # NaN > gold is false: the query would rank its code first
    with pytest.raises(NonFiniteError, match="retrieval scores: 1 of 9 values are NaN or infinite"):
        M.retrieval_metrics(scores)
    queries, codes = torch.eye(3), torch.eye(3)
    broken = queries.clone()
    broken[2, 1] = bad
    with pytest.raises(NonFiniteError, match="query embeddings 0..2"):
        M.gold_ranks(broken, codes, [0, 1, 2], query_block=3, code_chunk=2)
    with pytest.raises(NonFiniteError, match="against codes 2..2"):
        M.gold_ranks(queries, broken, [0, 1, 2], query_block=3, code_chunk=2)
    with pytest.raises(NonFiniteError, match="clone scores"):
        M.best_threshold([0.9, bad, 0.1], [1, 1, 0])
    with pytest.raises(NonFiniteError, match="clone scores"):
        M.classification_metrics([0.9, bad, 0.1], [1, 1, 0], 0.5)


def test_threshold_and_f1():
    scores, labels = [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]
    t = M.best_threshold(scores, labels)
    assert t == pytest.approx(0.35)  # F1 0.8 beats 0.667 at 0.8
    out = M.classification_metrics(scores, labels, t)
    assert out["precision"] == pytest.approx(2 / 3) and out["recall"] == 1.0 and out["f1"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="both"):
        M.best_threshold([0.1, 0.2], [1, 1])


def test_csn_sentence_bleu_identical_and_partial():
    assert M.sentence_bleu_csn("the cat sat", "the cat sat") == pytest.approx(1.0)
    # ref a b c d, hyp a b x: correct [2,1,0,0], guess [3,2,1,0], add-one from bigrams, BP 1-(4+1)/(3+1)
    expected = math.exp((math.log(2 / 3) + math.log(2 / 3) + math.log(1 / 2) + math.log(1 / 1)) / 4 - 0.25)
    assert M.sentence_bleu_csn("a b c d", "a b x") == pytest.approx(expected)
    # punctuation is split and case is folded: ref has 4 tokens ("."), hyp 3 -> only the brevity penalty
    assert M.sentence_bleu_csn("Returns the value.", "returns THE value") == pytest.approx(math.exp(-0.25))
    assert M.smoothed_bleu4(["the cat sat", "a b c d"], ["the cat sat", "a b x"]) == pytest.approx(
        100 * (1 + expected) / 2
    )


def test_codexglue_corpus_bleu():
    assert M.corpus_bleu_codexglue(["a b c d"], ["a b c d"]) == pytest.approx(100.0)
    # matches [2,1,0,0] / possible [3,2,1,0], add-one on every order; BP exp(1 - 4/3)
    expected = 100 * math.exp((math.log(3 / 4) + math.log(2 / 3) + math.log(1 / 2)) / 4) * math.exp(1 - 4 / 3)
    assert M.corpus_bleu_codexglue(["a b c d"], ["a b x"]) == pytest.approx(expected)


def test_code_tokens_follow_pythons_tokenizer_not_whitespace():
    assert M.code_tokens("def f(a, b):\n    return a+b  # the sum") == [
        "def", "f", "(", "a", ",", "b", ")", ":", "return", "a", "+", "b",
    ]  # fmt: skip
    assert M.code_tokens("x = 'a b'.split()") == ["x", "=", "'a b'", ".", "split", "(", ")"]  # a literal is one token
    assert M.code_tokens("foo(a, [1, 2") == ["foo", "(", "a", ",", "[", "1", ",", "2"]  # cut off: words + punctuation


def test_code_bleu_counts_code_tokens_with_codexglues_smoothing():
    # ref x = foo ( a , b ) (8 tokens), hyp x = foo ( b ) (6): matches [6, 4, 2, 1] of [6, 5, 4, 3]
    expected = math.exp((math.log(7 / 7) + math.log(5 / 6) + math.log(3 / 5) + math.log(2 / 4)) / 4)
    expected *= math.exp(1 - 8 / 6)
    assert M.code_bleu_counts("x = foo(a,b)", "x = foo(b)") == [6, 4, 2, 1, 6, 5, 4, 3, 8, 6]
    assert M.corpus_bleu_code(["x = foo(a,b)"], ["x = foo(b)"]) == pytest.approx(100 * expected)
    assert M.corpus_bleu_code(["return a+b"], ["return a + b"]) == pytest.approx(100.0)


def test_chrf_is_sacrebleus_corpus_chrf():
    assert M.chrf(["return a + b"], ["return a + b"]) == pytest.approx(100.0)
    assert M.chrf(["abc"], ["xyz"]) == pytest.approx(0.0)
    # sacrebleu 2.6 (the reference implementation): chrF2 of two pairs pooled over the corpus
    assert M.chrf(["return a + b", "x = 1"], ["return a - c", "x = 2"]) == pytest.approx(64.027778, abs=1e-5)


def test_clone_threshold_is_fitted_on_rows_the_selection_score_does_not_read():
    labels = [1, 1, 1, 0, 0, 0, 0, 1]
    fit, score = M.threshold_split(labels)
    assert fit.tolist() == [0, 2, 3, 5] and score.tolist() == [1, 4, 6, 7]  # per label: 1st, 3rd / 2nd, 4th
    # the fitting half separates at 0.8; the scoring half has a clone at 0.4 that threshold misses
    scores = [0.9, 0.4, 0.8, 0.1, 0.2, 0.3, 0.45, 0.85]
    out = M.split_threshold_metrics(scores, labels)
    assert out["threshold"] == pytest.approx(0.8) and out["recall"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="2 rows of label 0"):
        M.threshold_split([1, 1, 0])


def test_rouge_l_beta_1_2():
    assert M.rouge_l(["a b c d"], ["a c d e"]) == pytest.approx(75.0)  # LCS 3: P = R = 3/4
    # LCS 2: P = 1, R = 1/2 -> (1 + 1.44) * 0.5 / (0.5 + 1.44)
    assert M.rouge_l(["a b c d"], ["a b"]) == pytest.approx(100 * 2.44 * 0.5 / 1.94)


def test_cider_hand_computed():
    # pair 1 matches unigrams and the bigram (cos 1, 1, 0, 0 -> 5.0);
    # pair 2 shares one of two unigrams with equal idf (cos 0.5, 0, 0, 0 -> 1.25)
    assert M.cider(["a b", "c d"], ["a b", "c x"]) == pytest.approx((5.0 + 1.25) / 2)


def test_meteor_exact_and_stem_only():
    # 3 matches in one chunk: 1 - 0.5 * (1/3)^3
    assert M.meteor(["the cat sat"], ["the cat sat"]) == pytest.approx(100 * (1 - 0.5 / 27))
    assert M.meteor(["cats running"], ["cat run"]) > 50  # Porter stems match
    assert M.meteor(["big"], ["large"]) == 0.0  # no WordNet synonyms


def test_exact_match_and_edit_similarity():
    assert M.exact_match(["a  b", "c"], ["a b", "d"]) == 50.0
    assert M.edit_similarity(["abc", "xyz"], ["abd", "xyz"]) == pytest.approx((67 + 100) / 2)
    with pytest.raises(ValueError, match="as many"):
        M.exact_match(["a"], [])


def test_every_task_metric_names_a_function_of_the_metrics_module():
    from telly.finetuning import metrics
    from telly.finetuning.examples import statistic
    from telly.tasks import TASKS

    for task in TASKS.values():
        assert task.main_metric in task.metrics and set(task.selection) <= set(task.metrics)
        assert statistic(task.name).metric == task.main_metric, task.name  # the intervals read the headline
        for name, function in task.text_metrics.items():
            assert name in task.metrics and callable(getattr(metrics, function)), (task.name, name)
        assert task.generates == bool(task.text_metrics)
