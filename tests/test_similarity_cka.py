"""Linear CKA (debiased HSIC), Procrustes distance and half-sample intervals."""

import numpy as np
import pytest

from telly.errors import TellyError
from telly.similarity.bootstrap import half_samples, interval, spread_interval
from telly.similarity.cka import linear_cka, procrustes_distance


def _gram_space_cka(x, y, debiased):
    """Reference: Kornblith et al.'s Gram-matrix form (center_gram + cka)."""

    def center(g):
        g = g.copy()
        n = g.shape[0]
        if debiased:
            np.fill_diagonal(g, 0)
            means = g.sum(0) / (n - 2)
            means -= means.sum() / (2 * (n - 1))
            g -= means[:, None]
            g -= means[None, :]
            np.fill_diagonal(g, 0)
        else:
            h = np.eye(n) - 1.0 / n
            g = h @ g @ h
        return g

    k, l = center(x @ x.T), center(y @ y.T)
    return (k.ravel() @ l.ravel()) / (np.linalg.norm(k) * np.linalg.norm(l))


def _song_unbiased_hsic(k, l):
    """Song et al. (2012) unbiased HSIC, written out term by term."""
    n = k.shape[0]
    k, l = k.copy(), l.copy()
    np.fill_diagonal(k, 0)
    np.fill_diagonal(l, 0)
    one = np.ones(n)
    return (
        np.trace(k @ l) + (one @ k @ one) * (one @ l @ one) / ((n - 1) * (n - 2)) - 2 / (n - 2) * one @ k @ l @ one
    ) / (n * (n - 3))


@pytest.mark.parametrize("debiased", [True, False])
def test_feature_space_equals_gram_space(debiased):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 7)) + 3.0  # uncentred on purpose
    y = x @ rng.normal(size=(7, 5)) + rng.normal(size=(40, 5))
    assert linear_cka(x, y, debiased=debiased) == pytest.approx(_gram_space_cka(x, y, debiased), abs=1e-10)


def test_debiased_cka_is_song_unbiased_hsic_ratio():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(30, 6)), rng.normal(size=(30, 4))
    x[:, 0] += y[:, 0]
    k, l = x @ x.T, y @ y.T
    want = _song_unbiased_hsic(k, l) / np.sqrt(_song_unbiased_hsic(k, k) * _song_unbiased_hsic(l, l))
    assert linear_cka(x, y) == pytest.approx(want, abs=1e-10)


def test_identical_and_rotated_give_one_and_procrustes_zero():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(100, 12))
    q, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    y = 2.5 * (x @ q) + 7.0  # rotation, isotropic scale, shift
    for other in (x, y):
        assert linear_cka(x, other) == pytest.approx(1.0, abs=1e-9)
        assert linear_cka(x, other, debiased=False) == pytest.approx(1.0, abs=1e-9)
        assert procrustes_distance(x, other) == pytest.approx(0.0, abs=1e-9)


def test_independent_random_gives_about_zero_only_when_debiased():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(200, 64)), rng.normal(size=(200, 64))
    assert abs(linear_cka(x, y)) < 0.03
    assert linear_cka(x, y, debiased=False) > 0.15  # the bias the debiasing removes
    assert procrustes_distance(x, y) > 0.5


def test_procrustes_is_scipys_orthogonal_procrustes():
    from scipy.linalg import orthogonal_procrustes

    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(50, 5)) + 1.0, rng.normal(size=(50, 5))
    x[:, :2] += 2 * y[:, :2]
    xc, yc = x - x.mean(0), y - y.mean(0)
    xc, yc = xc / np.linalg.norm(xc), yc / np.linalg.norm(yc)
    rotation, scale = orthogonal_procrustes(xc, yc)
    want = np.linalg.norm(xc @ rotation - yc) ** 2  # the distance left after the best rotation
    assert want == pytest.approx(2 - 2 * scale)
    assert procrustes_distance(x, y) == pytest.approx(want, abs=1e-12)


def test_procrustes_orders_by_noise_and_handles_width_mismatch():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(80, 6))
    near = procrustes_distance(x, x + 0.1 * rng.normal(size=x.shape))
    far = procrustes_distance(x, x + 1.0 * rng.normal(size=x.shape))
    assert 0 < near < far <= 2
    assert procrustes_distance(x, np.hstack([x, np.zeros((80, 2))])) == pytest.approx(0.0, abs=1e-9)


def test_bad_shapes_are_named():
    with pytest.raises(TellyError, match="same N samples"):
        linear_cka(np.zeros((5, 2)), np.zeros((6, 2)))
    with pytest.raises(TellyError, match="N >= 4 samples"):
        linear_cka(np.zeros((3, 2)), np.zeros((3, 2)))


def test_half_samples_are_distinct_and_seeded():
    subsets = half_samples(20, 3, seed=9)
    assert all(len(s) == 10 == len(set(s.tolist())) for s in subsets)
    assert all((a == b).all() for a, b in zip(subsets, half_samples(20, 3, seed=9)))


def test_half_sample_interval_covers_a_mean_like_the_normal_theory_one():
    rng = np.random.default_rng(5)
    data = rng.normal(size=2000)
    est = data.mean()
    ci = interval(lambda idx: data[idx].mean(), est, half_samples(2000, 400, seed=1), level=0.95)
    half_width = 1.96 * data.std() / np.sqrt(2000)
    assert ci.low < est < ci.high
    assert (ci.high - ci.low) / 2 == pytest.approx(half_width, rel=0.2)


def test_interval_is_the_replicates_spread_around_the_estimate():
    reps = [0.4, 0.45, 0.5, 0.55, 0.6]  # sd 0.0791
    ci = spread_interval(0.5, reps, level=0.95)
    assert (ci.low, ci.high) == pytest.approx((0.5 - 1.96 * 0.0791, 0.5 + 1.96 * 0.0791), abs=1e-3)
    shifted = spread_interval(0.2, [0.35, 0.36, 0.34, 0.35], level=0.9)
    assert shifted.low < 0.2 < shifted.high  # a biased shift of the replicates does not move it
    assert np.isnan(spread_interval(0.2, [0.3], level=0.9).low)  # one replicate has no spread
