"""Bootstrap over images: confidence intervals, ranking uncertainty, pairwise wins.

As in the OCELOT 2023 challenge report (section 4): images are resampled with replacement
(10,000 resamples), every score is recomputed on each resample, and 95 % intervals are the
2.5th / 97.5th percentiles. Ranking uncertainty (report Fig. 5) is the share of resamples in
which each method holds each rank; pairwise win probabilities (Fig. 6) the share in which
the row method beats the column method. Methods are compared on the *same* resampled images
(a paired bootstrap).

Scores are computed from per-image counts, so a resample is a weighted sum of count rows:
:func:`resample_weights` gives how often each image is drawn in each resample ``(B, N)``
and :func:`resample_sums` turns per-image counts ``(N, ...)`` into resampled totals
``(B, ...)`` with one matrix product. No matching is redone.
"""

from __future__ import annotations

import warnings

import numpy as np

DEFAULT_RESAMPLES = 10_000
DEFAULT_SEED = 0


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def resample_weights(
    n_items: int, n_resamples: int = DEFAULT_RESAMPLES, seed: int | np.random.Generator | None = DEFAULT_SEED
) -> np.ndarray:
    """``(n_resamples, n_items)`` int64 multiplicities of a with-replacement resampling.

    Row ``b`` counts how often each item was drawn in resample ``b`` (rows sum to
    ``n_items``). Seeded with ``np.random.default_rng(seed)``.
    """
    if n_items <= 0 or n_resamples <= 0:
        return np.zeros((max(n_resamples, 0), max(n_items, 0)), dtype=np.int64)
    idx = _rng(seed).integers(0, n_items, size=(n_resamples, n_items))
    flat = idx + (np.arange(n_resamples) * n_items)[:, None]
    return np.bincount(flat.ravel(), minlength=n_resamples * n_items).reshape(n_resamples, n_items)


def resample_sums(weights: np.ndarray, per_item: np.ndarray) -> np.ndarray:
    """Totals of ``per_item`` ``(N, ...)`` under each resample: ``(B, ...)`` float64.

    Exact for integer counts (float64 holds integers up to 2**53).
    """
    per_item = np.asarray(per_item)
    flat = per_item.reshape(per_item.shape[0], -1).astype(np.float64)
    return (np.asarray(weights, dtype=np.float64) @ flat).reshape((weights.shape[0],) + per_item.shape[1:])


def percentile_ci(samples: np.ndarray, level: float = 0.95, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval ``(low, high)`` of ``samples`` along ``axis`` (NaNs ignored)."""
    a = 100 * (1 - level) / 2
    with warnings.catch_warnings():  # all-NaN slices (undefined scores) give NaN quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanpercentile(samples, [a, 100 - a], axis=axis)
    return lo, hi


def rank_probabilities(samples: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """``P[m, r]``: share of resamples in which method ``m`` holds rank ``r + 1``.

    ``samples``: ``(B, M)`` scores. Rank = 1 + the number of methods strictly better, so
    tied methods share the better rank (each method's row sums to 1).
    """
    s = np.asarray(samples, dtype=np.float64)
    if not higher_is_better:
        s = -s
    b, m = s.shape
    better = (s[:, None, :] > s[:, :, None]).sum(axis=2)  # (B, M): methods better than m
    out = np.zeros((m, m))
    for j in range(m):
        out[j] = np.bincount(better[:, j], minlength=m)[:m] / max(b, 1)
    return out


def pairwise_win_probabilities(samples: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """``W[i, j]``: share of resamples in which method ``i`` scores strictly better than ``j``.

    ``W[i, j] + W[j, i] + P(tie) = 1``; the diagonal is 0.
    """
    s = np.asarray(samples, dtype=np.float64)
    if not higher_is_better:
        s = -s
    return (s[:, :, None] > s[:, None, :]).mean(axis=0) if len(s) else np.zeros((s.shape[1], s.shape[1]))


def observed_ranks(scores: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Ranks (1 = best, ties share the better rank) of one score per method."""
    s = np.asarray(scores, dtype=np.float64)
    if not higher_is_better:
        s = -s
    return 1 + (s[None, :] > s[:, None]).sum(axis=1)
