"""Class-balanced sampling of training pairs (``train --sampling class-balanced``).

A pair's weight is ``w_i = (1/C) Σ_c f_ic / F_c``: ``f_ic`` is the share of pair ``i``'s
cells that are of class ``c``, ``F_c`` the share of class ``c`` among all cells of the
split, ``C`` the number of classes present in the split. A pair whose mixture equals the
split's weighs 1; a pair of only a rare class weighs ``1 / (C·F_rare)``; pairs without
cells weigh 1. When every pair holds cells of one class only, and as many as the others,
drawing with these weights (with replacement) draws each class's pairs equally often; in
general it shifts the drawn cells towards the rare classes (each pair's weight grows with
its share of rare cells).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..pair import Points


def class_balance_weights(points: Sequence[Points | None], class_ids: Sequence[int]) -> np.ndarray:
    """``(N,)`` float64 weights of pairs with cells ``points`` (see the module doc)."""
    ids = list(class_ids)
    counts = np.zeros((len(points), len(ids)), np.float64)
    for i, p in enumerate(points):
        if p is not None and len(p):
            counts[i] = [np.count_nonzero(p.cls == c) for c in ids]
    totals = counts.sum(axis=0)
    present = totals > 0
    weights = np.ones(len(points))
    if not present.any():
        return weights
    n_cells = counts.sum(axis=1)
    has = n_cells > 0
    share = counts[has][:, present] / n_cells[has, None]
    global_share = totals[present] / totals.sum()
    weights[has] = (share / global_share).sum(axis=1) / present.sum()
    return weights
