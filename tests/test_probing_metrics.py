"""The paper's probing metrics on hand-computed cases (telly-paper.md section 1)."""

import numpy as np
import pytest

from telly.probing import metrics


def test_token_accuracy_ignores_pad_positions():
    labels = np.array([0, 2, 2, 5, 0, 1])
    preds = np.array([3, 2, 1, 5, 0, 1])  # pad positions are wrong and right: neither counts
    assert metrics.token_accuracy(labels, preds) == pytest.approx(100 * 3 / 4)
    with pytest.raises(ValueError, match="no labelled token"):
        metrics.token_accuracy(np.zeros(3), np.zeros(3))


def test_class_scores_macro_f1_counts_absent_classes():
    labels = np.array([0, 0, 1, 1])
    preds = np.array([0, 0, 1, 0])
    s = metrics.class_scores(labels, preds, n_classes=3)
    assert s["acc"] == pytest.approx(75.0)
    # class 0: P 2/3 R 1 F 0.8; class 1: P 1 R .5 F 2/3; class 2: absent, F 0 -> macro over 3
    assert s["macro_f1"] == pytest.approx(100 * (0.8 + 2 / 3 + 0) / 3)


def test_pair_accuracy_thresholds_cosine_at_half():
    code = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    ast = np.array([[1.0, 0.1], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])  # cos: .995, 0, .707, -1
    labels = np.array([1, 1, 0, 0])
    # predictions 1,0,1,0 vs labels 1,1,0,0 -> 2 of 4
    assert metrics.pair_accuracy(code, ast, labels) == pytest.approx(0.5)


def test_mrr_ranks_own_key_among_all_keys():
    q = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    k = np.array([[1.0, 0.0], [1.0, 0.1], [0.2, 1.0]])
    # q0: own k0 (1) is best -> 1; q1: own k1 (.0995) < k2 (.98) -> rank 2; q2: own k2 (.832) > k1 (.774) -> 1
    assert metrics.mean_reciprocal_rank(q, k) == pytest.approx((1 + 0.5 + 1) / 3)
    # a tie is ranked against the query: two identical keys give rank 2 to both
    assert metrics.mean_reciprocal_rank(np.eye(2)[[0, 0]], np.eye(2)[[0, 0]]) == pytest.approx(0.5)


def test_map_at_r_matches_the_papers_loop():
    vecs = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.7, 0.7]])
    labels = np.array([0, 0, 1, 1, 0])

    def paper(vecs, labels):  # the exact loop of telly-paper.md 1.5, written out
        v = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
        scores = v @ v.T
        np.fill_diagonal(scores, -1e6)
        dic = {c: int((labels == c).sum()) - 1 for c in set(labels)}
        out = []
        for i in range(len(labels)):
            order = np.argsort(-scores[i])
            hits = []
            for j in range(dic[labels[i]]):
                if labels[order[j]] == labels[i]:
                    hits.append((len(hits) + 1) / (j + 1))
            out.append(sum(hits) / dic[labels[i]])
        return 100 * np.mean(out)

    assert metrics.map_at_r(vecs, labels) == pytest.approx(paper(vecs, labels))
    perfect = np.array([[1.0, 0], [1.0, 0], [0, 1.0], [0, 1.0]])
    assert metrics.map_at_r(perfect, np.array([0, 0, 1, 1])) == pytest.approx(100.0)
    wrong = np.array([[1.0, 0], [0, 1.0], [1.0, 0], [0, 1.0]])
    assert metrics.map_at_r(wrong, np.array([0, 0, 1, 1])) == pytest.approx(0.0)


def test_map_at_r_skips_singletons_and_needs_a_pair():
    vecs = np.eye(3)
    assert metrics.map_at_r(np.array([[1.0, 0], [1.0, 0.1], [0, 1.0]]), np.array([0, 0, 1])) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="two or more"):
        metrics.map_at_r(vecs, np.array([0, 1, 2]))
