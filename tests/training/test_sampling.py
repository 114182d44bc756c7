"""Class-balanced sampling: the weights, and the weighted epoch sampler."""

from __future__ import annotations

import numpy as np

from histozoom.pair import Points
from histozoom.training.distributed import DistInfo, EpochSampler
from histozoom.training.sampling import class_balance_weights


def _pts(classes):
    return Points.from_array(np.array([[i, i, c] for i, c in enumerate(classes)]).reshape(-1, 3))


def test_weights_equalise_the_expected_class_shares():
    rng = np.random.default_rng(0)
    points = [_pts(rng.choice([1, 2], size=rng.integers(1, 30), p=[0.85, 0.15])) for _ in range(40)]
    points += [None, Points.empty()]
    w = class_balance_weights(points, [1, 2])
    assert w[-1] == 1 and w[-2] == 1
    counts = np.array([[np.sum(p.cls == c) for c in (1, 2)] for p in points[:40]], float)
    uniform = counts.sum(0) / counts.sum()
    drawn = (w[:40, None] * counts).sum(0) / (w[:40, None] * counts).sum()
    assert drawn[1] > uniform[1]  # the rare class's share of the drawn cells grows
    tc_share = counts[:, 1] / counts.sum(1)
    assert np.all(np.diff(w[:40][np.argsort(tc_share)]) >= -1e-12)  # weights grow with the rare share


def test_pure_pairs_of_equal_size_are_drawn_equally_per_class():
    points = [_pts([1] * 5)] * 9 + [_pts([2] * 5)] * 3
    w = class_balance_weights(points, [1, 2])
    assert np.isclose(w[:9].sum(), w[9:].sum())


def test_pure_pairs_weigh_the_inverse_of_their_class_share():
    w = class_balance_weights([_pts([1, 1, 1]), _pts([1]), _pts([2])], [1, 2])
    f1, f2 = 4 / 5, 1 / 5
    assert np.allclose(w, [1 / (2 * f1), 1 / (2 * f1), 1 / (2 * f2)])


def test_weighted_sampler_is_seeded_per_epoch_and_split_across_ranks():
    w = [0.0, 1.0, 3.0, 0.0, 1.0]
    s = EpochSampler(5, seed=4, weights=w)
    s.set_epoch(2)
    a = list(s)
    s.set_epoch(2)
    assert list(s) == a and len(a) == 5 == len(s)
    assert {i for _, i in a} <= {1, 2, 4} and all(e == 2 for e, _ in a)
    ranks = []
    for r in range(2):
        sr = EpochSampler(5, DistInfo(rank=r, world_size=2, local_rank=r), seed=4, weights=w)
        sr.set_epoch(2)
        ranks.append([i for _, i in sr])
    assert len(ranks[0]) == len(ranks[1]) == 3
    big = EpochSampler(5, seed=0, weights=w)
    counts = np.bincount([i for e in range(200) for _, i in (big.set_epoch(e) or big)], minlength=5)
    assert counts[2] > 2 * counts[1] and counts[0] == counts[3] == 0
