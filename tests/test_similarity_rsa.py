"""The paper's RSA on synthetic representations with known answers."""

import numpy as np
import pytest
from scipy import stats

from telly.errors import TellyError
from telly.similarity.rsa import (
    RSAReference,
    compare,
    l2_normalise,
    n_pairs,
    p_value,
    pearson,
    ranks,
    rsa,
    similarity_vector,
)


def test_similarity_vector_is_the_upper_triangle_with_diagonal_row_by_row():
    x = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    # unit rows: [.6,.8], [1,0], [0,1] -> cosines by hand
    expected = [1.0, 0.6, 0.8, 1.0, 0.0, 1.0]
    np.testing.assert_allclose(similarity_vector(x), expected, atol=1e-6)


@pytest.mark.parametrize("block_rows", [1, 3, 7, 64])
def test_blocks_give_the_same_vector_as_the_full_matrix(block_rows):
    x = np.random.default_rng(0).normal(size=(23, 5))
    u = l2_normalise(x)
    full = (u @ u.T)[np.triu_indices(23)]  # row-major upper triangle incl. diagonal
    got = similarity_vector(x, block_rows=block_rows)
    assert got.dtype == np.float32 and got.size == n_pairs(23) == 276
    np.testing.assert_allclose(got, full, atol=1e-6)


def test_pearson_and_spearman_match_scipy_including_ties():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 20, size=5000).astype(np.float32)  # many ties
    y = (x + rng.normal(size=5000)).astype(np.float32)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    assert pearson(x, y, chunk=333) == pytest.approx(stats.pearsonr(x64, y64)[0], abs=1e-9)
    rho = pearson(ranks(x), ranks(y), chunk=777)
    assert rho == pytest.approx(stats.spearmanr(x64, y64)[0], abs=1e-9)


def test_p_value_matches_scipy_spearman():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=40), rng.normal(size=40)
    res = stats.spearmanr(x, y)
    assert p_value(res[0], 40) == pytest.approx(res[1], rel=1e-6)
    assert p_value(1.0, 40) == 0.0


def test_identical_representations_score_one():
    x = np.random.default_rng(3).normal(size=(60, 16))
    res = rsa(x, x.copy())
    assert res.pearson == pytest.approx(1.0, abs=1e-6) and res.spearman == pytest.approx(1.0, abs=1e-6)
    assert res.n_samples == 60 and res.n_pairs == n_pairs(60)


def test_rotation_and_scaling_keep_rsa_at_one():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(50, 8))
    q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    scale = rng.uniform(0.5, 3.0, size=(50, 1))  # per-sample scale vanishes in L2 normalisation
    res = rsa(x, scale * (x @ q))
    assert res.pearson == pytest.approx(1.0, abs=1e-6)
    # float32 rounding reorders the 50 diagonal values (all 1 +- 1e-7), as in the paper's h0 = 0.99999
    assert res.spearman == pytest.approx(1.0, abs=1e-4)


def test_independent_random_representations_score_about_zero():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(300, 32)), rng.normal(size=(300, 32))
    res = rsa(a, b)
    assert abs(res.spearman) < 0.05
    # The paper keeps the diagonal (all ones in both models): 300 shared outliers among
    # 45,150 pairs lift Pearson, not Spearman; without them Pearson is about 0 too.
    assert res.pearson > 0.1
    off = ~np.eye(300, dtype=bool)[np.triu_indices(300)]
    va, vb = similarity_vector(a), similarity_vector(b)
    assert abs(pearson(va[off], vb[off])) < 0.05


def test_partial_change_scores_between_zero_and_one():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(200, 16))
    res = rsa(x, x + 1.0 * rng.normal(size=x.shape))
    assert 0.2 < res.spearman < 0.9


def test_reference_is_reused_and_lengths_must_match():
    rng = np.random.default_rng(7)
    ref = RSAReference.of(rng.normal(size=(20, 4)))
    with pytest.raises(TellyError, match="same samples"):
        compare(ref, RSAReference.of(rng.normal(size=(21, 4))))
    with pytest.raises(TellyError, match="sample counts differ"):
        rsa(rng.normal(size=(20, 4)), rng.normal(size=(21, 4)))


@pytest.mark.parametrize("seed", range(5))
def test_ranks_equal_scipy_rankdata_with_ties(seed):
    rng = np.random.default_rng(seed)
    values = rng.integers(0, rng.integers(2, 50), size=rng.integers(1, 400)).astype(np.float32)
    got = ranks(values)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, stats.rankdata(values, method="average"))
    np.testing.assert_array_equal(ranks(np.array([3.0, 1.0, 2.0])), [3.0, 1.0, 2.0])
