"""PNG figures of evaluation results (matplotlib, Agg backend), written atomically.

* :func:`plot_f1_violins` -- per-image F1 distributions per method and class (report Fig. 4).
* :func:`plot_rank_probabilities` -- probability of each method holding each rank over
  bootstrap resamples (report Fig. 5).
* :func:`plot_pairwise_wins` -- probability that the row method beats the column method
  (report Fig. 6).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ..atomic import atomic_path


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Save ``fig`` as PNG atomically and close it."""
    path = Path(path)
    try:
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def plot_f1_violins(
    per_image_f1: Mapping[str, np.ndarray], class_names: Sequence[str], path: str | Path, title: str = "Per-image F1"
) -> Path:
    """Violin plot of per-image F1: one panel per class plus mF1, one violin per method.

    ``per_image_f1``: method → ``(n_images, n_classes)`` with NaN where undefined.
    """
    methods = list(per_image_f1)
    panels = list(class_names) + ["mF1"]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 + 1.3 * len(methods) * len(panels), 3.6), squeeze=False)
    for pi, panel in enumerate(panels):
        ax = axes[0, pi]
        data = []
        for m in methods:
            a = np.asarray(per_image_f1[m], dtype=np.float64).reshape(-1, len(class_names))
            v = _row_mean(a) if panel == "mF1" else a[:, pi]
            v = v[~np.isnan(v)]
            data.append(v if len(v) else np.array([np.nan]))
        pos = np.arange(1, len(methods) + 1)
        ok = [i for i, d in enumerate(data) if np.isfinite(d).any()]
        if ok:
            parts = ax.violinplot([data[i] for i in ok], positions=pos[ok], showmedians=True, widths=0.8)
            for body in parts["bodies"]:
                body.set_alpha(0.6)
        ax.set_xticks(pos)
        ax.set_xticklabels(methods, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(panel)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_ylabel("F1 per image")
    fig.suptitle(title, y=1.04)
    return save_figure(fig, path)


def _row_mean(a: np.ndarray) -> np.ndarray:
    """Per-image mean over the classes that are defined there (NaN if none)."""
    ok = ~np.isnan(a)
    n = ok.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.where(ok, a, 0).sum(axis=1) / n, np.nan)


def _heatmap(ax, mat: np.ndarray, xlabels, ylabels, xlabel: str, ylabel: str, title: str):
    im = ax.imshow(mat, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(xlabels)))
    ax.set_xticklabels(xlabels, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(ylabels)))
    ax.set_yticklabels(ylabels, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            ax.text(j, i, f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if mat[i, j] < 0.6 else "black")
    return im


def plot_rank_probabilities(
    rank_probs: Mapping[str, np.ndarray], methods: Sequence[str], path: str | Path
) -> Path:
    """Heat maps of rank probabilities, one panel per metric (rows: ranks, columns: methods).

    ``rank_probs``: metric name → ``(n_methods, n_ranks)`` from
    :func:`histozoom.metrics.stats.rank_probabilities`.
    """
    metrics = list(rank_probs)
    n = len(methods)
    fig, axes = plt.subplots(1, len(metrics), figsize=(1.5 + (0.6 * n + 1.6) * len(metrics), 0.6 * n + 2), squeeze=False)
    im = None
    for k, metric in enumerate(metrics):
        im = _heatmap(axes[0, k], np.asarray(rank_probs[metric]).T, methods, [str(r + 1) for r in range(n)],
                      "method", "rank" if k == 0 else "", metric)
    if im is not None:
        fig.colorbar(im, ax=axes[0, :].tolist(), shrink=0.8, label="probability")
    return save_figure(fig, path)


def plot_pairwise_wins(wins: np.ndarray, methods: Sequence[str], path: str | Path, metric: str = "mF1") -> Path:
    """Heat map: probability that the row method scores better than the column method."""
    n = len(methods)
    fig, ax = plt.subplots(figsize=(0.7 * n + 2.5, 0.6 * n + 2))
    im = _heatmap(ax, np.asarray(wins), methods, methods, "column method", "row method", f"P(row beats column), {metric}")
    fig.colorbar(im, ax=ax, shrink=0.8)
    return save_figure(fig, path)
