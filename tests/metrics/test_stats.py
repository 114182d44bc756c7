"""Bootstrap over images: resampling, CIs, rank and pairwise-win probabilities, speed."""

from __future__ import annotations

import numpy as np
import pytest

from histozoom.metrics.detection import scores_from_counts
from histozoom.metrics.stats import (
    observed_ranks,
    pairwise_win_probabilities,
    percentile_ci,
    rank_probabilities,
    resample_sums,
    resample_weights,
)


def test_weights_are_a_seeded_resampling_with_replacement():
    w = resample_weights(7, 500, seed=3)
    assert w.shape == (500, 7) and (w.sum(axis=1) == 7).all() and (w >= 0).all()
    np.testing.assert_array_equal(w, resample_weights(7, 500, seed=3))
    assert not np.array_equal(w, resample_weights(7, 500, seed=4))
    # Same draws as resampling indices with default_rng(seed).
    idx = np.random.default_rng(3).integers(0, 7, size=(500, 7))
    counts = np.random.default_rng(0).integers(0, 50, size=(7, 2, 3))
    explicit = counts[idx].sum(axis=1)
    np.testing.assert_array_equal(resample_sums(w, counts), explicit)
    # Each image is drawn about once per resample on average.
    assert abs(w.mean() - 1) < 0.05


def test_percentile_ci():
    s = np.arange(1001, dtype=float)
    lo, hi = percentile_ci(s)
    assert lo == pytest.approx(25) and hi == pytest.approx(975)
    lo, hi = percentile_ci(np.column_stack([s, np.full(1001, np.nan)]))
    assert np.isnan(lo[1]) and lo[0] == pytest.approx(25)


def test_rank_probabilities_and_pairwise_wins():
    rng = np.random.default_rng(0)
    b = 4000
    # Method 0 is always best; 1 and 2 are exchangeable.
    a = rng.normal(0.5, 0.01, b)
    s = np.column_stack([a + 1, a + rng.normal(0, 0.02, b), a + rng.normal(0, 0.02, b)])
    p = rank_probabilities(s)
    assert p.shape == (3, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1)
    assert p[0, 0] == 1
    assert abs(p[1, 1] - 0.5) < 0.05 and abs(p[2, 1] - 0.5) < 0.05
    w = pairwise_win_probabilities(s)
    assert w[0, 1] == 1 and w[1, 0] == 0 and np.all(np.diag(w) == 0)
    np.testing.assert_allclose(w + w.T + np.eye(3), 1)  # no ties here
    # Lower is better flips it.
    assert rank_probabilities(s, higher_is_better=False)[0, 2] == 1


def test_ties_share_the_better_rank():
    s = np.array([[0.5, 0.5, 0.1]] * 10)
    p = rank_probabilities(s)
    assert p[0, 0] == 1 and p[1, 0] == 1 and p[2, 2] == 1
    w = pairwise_win_probabilities(s)
    assert w[0, 1] == 0 and w[1, 0] == 0 and w[0, 2] == 1
    assert observed_ranks(np.array([0.2, 0.9, 0.2])).tolist() == [2, 1, 2]


def test_ten_thousand_resamples_of_126_images():
    """The report's bootstrap size on the challenge's image count (its speed is measured in
    ``bench/bench_evaluation.py``): shapes, and CIs that contain the full-sample score."""
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 200, size=(3, 126, 2, 3))  # 3 methods
    w = resample_weights(126, 10_000, seed=0)
    samples = np.stack([scores_from_counts(resample_sums(w, c))["mf1"] for c in counts], axis=1)
    assert samples.shape == (10_000, 3)
    lo, hi = percentile_ci(samples)
    full = np.array([scores_from_counts(c.sum(axis=0))["mf1"] for c in counts])
    assert (lo <= full).all() and (full <= hi).all()
    np.testing.assert_allclose(rank_probabilities(samples).sum(axis=1), 1.0)
    w2 = pairwise_win_probabilities(samples)
    assert np.all(np.diag(w2) == 0) and np.all(w2 + w2.T <= 1 + 1e-12)
