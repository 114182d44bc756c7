"""Oracle scores of synthetic data, and the writer of a synthetic dataset's ``synthetic.json``.

The generator (:mod:`histozoom.data.synthetic`) hands over per-pair cell summaries
(:func:`~histozoom.data.synthetic.pair_summary`: classes, the tissue label under each
cell, morphology); here they are scored as the challenge would score oracles with perfect
localisation (:func:`oracle_mf1`). :func:`write_synthetic_dataset` writes a dataset and
its ``synthetic.json`` (config, statistics and oracle mF1 per split and overall), as
``histozoom synth`` does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ..atomic import write_json
from ..data.synthetic import (
    BC,
    CA,
    SYNTHETIC_JSON,
    TC,
    SynthConfig,
    pair_summary,
    summary_statistics,
    write_synthetic_release,
)
from ..metrics.detection import scores_from_counts
from ..pair import Pair


# ---------------------------------------------------------------------- oracles
def _mf1_counts(y: np.ndarray, pred: np.ndarray) -> dict:
    """Per-class P/R/F1 and mF1 of cell labels ``pred`` against ``y`` (one prediction per cell)."""
    counts = np.array([[np.sum((pred == k) & (y == k)), np.sum((pred == k) & (y != k)), np.sum(y == k)]
                       for k in (BC, TC)])
    s = scores_from_counts(counts)
    out = {name: {"precision": float(s["precision"][i]), "recall": float(s["recall"][i]), "f1": float(s["f1"][i])}
           for i, name in enumerate(("BC", "TC"))}
    out["mf1"] = float(s["mf1"])
    return out


def _best_threshold(y: np.ndarray, score: np.ndarray) -> dict:
    """Labels TC where ``score > t`` for the ``t`` that maximises mF1 (an oracle)."""
    n = len(y)
    order = np.argsort(-score, kind="stable")
    is_tc = (y[order] == TC).astype(np.int64)
    n_tc = int(is_tc.sum())
    n_bc = n - n_tc
    k = np.arange(n + 1)
    tp_tc = np.concatenate([[0], np.cumsum(is_tc)])
    fp_tc = k - tp_tc
    tp_bc = n_bc - fp_tc
    f1_tc = np.where(n_tc + k > 0, 2 * tp_tc / np.maximum(n_tc + k, 1), 0.0)
    f1_bc = np.where(n_bc + (n - k) > 0, 2 * tp_bc / np.maximum(n_bc + n - k, 1), 0.0)
    best = int(np.argmax(f1_tc + f1_bc))
    pred = np.full(n, BC)
    pred[order[:best]] = TC
    return _mf1_counts(y, pred)


def _logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, iters: int = 30) -> np.ndarray:
    """In-sample logistic-regression scores (IRLS with a small ridge)."""
    mu, sd = x.mean(0), x.std(0) + 1e-12
    z = np.column_stack([np.ones(len(x)), (x - mu) / sd])
    t = (y == TC).astype(np.float64)
    beta = np.zeros(z.shape[1])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(z @ beta, -30, 30)))
        g = z.T @ (p - t) + l2 * beta
        hess = z.T @ (z * (p * (1 - p))[:, None]) + l2 * np.eye(len(beta))
        step = np.linalg.solve(hess, g)
        beta -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return z @ beta


def summary_oracles(items: Sequence[dict]) -> dict:
    """:func:`oracle_mf1` of :func:`~histozoom.data.synthetic.pair_summary` items (with
    ``n_cells``, the number of cells scored)."""
    y = np.concatenate([s["cls"] for s in items])
    reg = np.concatenate([s["region"] for s in items])
    out: dict = {"n_cells": int(len(y))}
    if len(y) == 0:
        return out
    out["region"] = _mf1_counts(y, np.where(reg == CA, TC, BC))
    if any(s["feats"] is None for s in items) or len(np.unique(y)) < 2:
        return out
    x = np.concatenate([s["feats"] for s in items])
    # Fisher discriminant of the morphology features (within-class covariance).
    m_tc, m_bc = x[y == TC].mean(0), x[y == BC].mean(0)
    cov = np.cov(np.concatenate([x[y == TC] - m_tc, x[y == BC] - m_bc]).T) + 1e-9 * np.eye(x.shape[1])
    out["cell_view"] = _best_threshold(y, x @ np.linalg.solve(cov, m_tc - m_bc))
    pooled = np.concatenate([np.repeat(s["feats"].mean(0, keepdims=True), len(s["feats"]), 0) for s in items])
    out["cell_view_pooled"] = _best_threshold(y, _logistic(np.column_stack([x, pooled]), y))
    ca_ind = (reg == CA).astype(np.float64)[:, None]
    out["region_and_cell_view"] = _best_threshold(y, _logistic(np.column_stack([ca_ind, x, pooled]), y))
    return out


def oracle_mf1(pairs: Iterable[Pair]) -> dict:
    """mF1 of oracles with perfect localisation (every cell found exactly once), pooled
    over all cells of ``pairs``: per class (BC, TC) precision/recall/F1, then their mean.

    * ``region``: labels each cell by the majority class of its tissue label — TC on CA,
      BC elsewhere (BG or unknown). Works on any pairs with points and tissue masks.
    * ``cell_view``: the best single threshold on the Fisher discriminant of the cell's
      own morphology (radius, darkness, elongation, irregularity) — what the cell view
      alone tells about a cell.
    * ``cell_view_pooled``: logistic regression on the cell's morphology plus the mean
      morphology of all cells in its image (a cell-only model that compares a cell with
      its neighbours), best threshold.
    * ``region_and_cell_view``: the same plus the tissue label (a model given the true
      tissue label).

    The last three need ``pair.meta["cell_morphology"]`` (pairs from
    :func:`~histozoom.data.synthetic.generate_pair`); they are fitted on the evaluated
    cells, so they are upper bounds for their inputs.
    """
    return summary_oracles([pair_summary(p) for p in pairs])


# ---------------------------------------------------------------------- synthetic.json
def synthetic_report(cfg: SynthConfig, summaries: Mapping[str, Sequence[dict]]) -> dict:
    """The content of ``synthetic.json``: ``{"config", "splits": {split: {"stats",
    "oracle_mf1"}}}`` for every non-empty split and ``"all"`` (every pair pooled);
    ``summaries``: :func:`~histozoom.data.synthetic.pair_summary` items per split."""
    report: dict = {"config": cfg.to_dict(), "splits": {}}
    everything = [s for items in summaries.values() for s in items]
    for split, items in [*summaries.items(), ("all", everything)]:
        if items:
            report["splits"][split] = {"stats": summary_statistics(items), "oracle_mf1": summary_oracles(items)}
    return report


def write_synthetic_dataset(out_dir: str | Path, cfg: SynthConfig, overwrite: bool = False) -> Path:
    """Write the synthetic dataset of ``cfg`` in the OCELOT release layout
    (:func:`~histozoom.data.synthetic.write_synthetic_release`) and its ``synthetic.json``
    (:func:`synthetic_report`); return its root.

    An existing non-empty ``out_dir`` is an error unless ``overwrite`` (then only the
    release files and ``synthetic.json`` are replaced).
    """
    root, summaries = write_synthetic_release(out_dir, cfg, overwrite=overwrite)
    write_json(root / SYNTHETIC_JSON, synthetic_report(cfg, summaries))
    return root
