"""Tissue-region subgroups (OCELOT 2023 challenge report, section 4.2).

Each ground-truth and predicted cell is assigned the tissue class under it: its cell-frame
position is mapped into the tissue frame with the pair's :class:`Placement` and the tissue
mask is read at the nearest pixel. Cells on unknown tissue (the ignore value, 0, or outside
the mask) are left out. For every tissue class ``t`` the cells on ``t`` -- ground truth and
predictions alike -- are then scored with the usual matching, which gives a (cell class,
tissue class) subgroup per pair: e.g. BC on BG, TC on CA (the common pairings) and TC on BG,
BC on CA (the rare ones).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..geometry import Placement
from ..pair import OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES, UNKNOWN, ClassSet, Points
from .detection import NGT, MatchMode, match_image, scores_from_counts


def tissue_at_points(xy_cell: np.ndarray, placement: Placement, tissue_mask: np.ndarray, outside: int = UNKNOWN) -> np.ndarray:
    """Tissue label under each cell-frame point ``(N, 2)``; ``outside`` where off the mask.

    The placement is rescaled to the mask's size if the mask is not stored at the tissue
    image's size. Positions are rounded to the nearest tissue pixel (pixel ``i`` spans
    ``[i - 0.5, i + 0.5)`` in index coordinates).
    """
    mask = np.asarray(tissue_mask)
    h, w = mask.shape[:2]
    if tuple(placement.tissue_size) != (w, h):
        placement = placement.resized(placement.cell_size, (w, h))
    txy = placement.cell_to_tissue_points(xy_cell)
    ix = np.floor(txy[:, 0] + 0.5).astype(np.int64)
    iy = np.floor(txy[:, 1] + 0.5).astype(np.int64)
    inside = (ix >= 0) & (iy >= 0) & (ix < w) & (iy < h)
    out = np.full(len(txy), outside, dtype=np.int64)
    out[inside] = mask[iy[inside], ix[inside]]
    return out


@dataclass
class SubgroupCounts:
    """Counts ``(n_images, n_tissue, n_cell, 3)`` = ``[tp, fp, n_gt]`` per tissue region.

    ``off_tissue``: ``(n_images, n_cell, 2)`` ground-truth / predicted cells left out because
    their tissue is unknown.
    """

    counts: np.ndarray
    off_tissue: np.ndarray
    cell_classes: ClassSet
    tissue_classes: ClassSet
    images: list[int]
    names: list[str] = field(default_factory=list)

    @property
    def totals(self) -> np.ndarray:
        return self.counts.sum(axis=0)

    def labels(self) -> list[tuple[str, str]]:
        """``(cell name, tissue name)`` in the order of :meth:`flat_counts`' class axis."""
        return [(c, t) for t in self.tissue_classes.names for c in self.cell_classes.names]

    def flat_counts(self) -> np.ndarray:
        """``(n_images, n_tissue * n_cell, 3)``: subgroups as classes, for scoring/bootstrap."""
        n, t, c, _ = self.counts.shape
        return self.counts.reshape(n, t * c, 3)

    def scores(self) -> list[dict]:
        """One row per subgroup: cell, tissue, precision, recall, F1 and counts."""
        tot = self.flat_counts().sum(axis=0)
        s = scores_from_counts(tot)
        rows = []
        for k, (cname, tname) in enumerate(self.labels()):
            tp, fp, ngt = (int(v) for v in tot[k])
            rows.append({
                "cell": cname, "tissue": tname, "subgroup": f"{cname} on {tname}",
                "precision": float(s["precision"][k]), "recall": float(s["recall"][k]), "f1": float(s["f1"][k]),
                "tp": tp, "fp": fp, "fn": ngt - tp, "n_gt": ngt, "n_pred": tp + fp,
            })
        return rows

    def cell_distribution(self) -> dict:
        """Ground-truth cells per tissue region and cell class (report Fig. 7)."""
        gt = self.counts[..., NGT].sum(axis=0)  # (T, C)
        off = self.off_tissue[..., 0].sum(axis=0)
        d = {
            t: {c: int(gt[i, j]) for j, c in enumerate(self.cell_classes.names)}
            for i, t in enumerate(self.tissue_classes.names)
        }
        d["unknown"] = {c: int(off[j]) for j, c in enumerate(self.cell_classes.names)}
        return d


def subgroup_counts(
    gt: Mapping[int, Points | None],
    pred: Mapping[int, Points | None],
    tissue_masks: Mapping[int, np.ndarray],
    placements: Mapping[int, Placement],
    images: Sequence[int] | None = None,
    radius: float = 15.0,
    cell_classes: ClassSet = OCELOT_CELL_CLASSES,
    tissue_classes: ClassSet = OCELOT_TISSUE_CLASSES,
    mode: MatchMode = "challenge",
    names: Sequence[str] | None = None,
) -> SubgroupCounts:
    """Subgroup counts for every image that has a tissue mask and a placement.

    ``tissue_masks``: tissue-frame label maps; ``placements``: where each cell view sits
    in its tissue image. ``images`` defaults to the images having both.
    """
    if images is None:
        images = sorted(set(tissue_masks) & set(placements))
    images = [int(k) for k in images]
    nt, nc = len(tissue_classes), len(cell_classes)
    counts = np.zeros((len(images), nt, nc, 3), dtype=np.int64)
    off = np.zeros((len(images), nc, 2), dtype=np.int64)
    for row, k in enumerate(images):
        g = gt.get(k) or Points.empty()
        p = pred.get(k) or Points.empty()
        lg = tissue_at_points(g.xy, placements[k], tissue_masks[k])
        lp = tissue_at_points(p.xy, placements[k], tissue_masks[k])
        for ti, tid in enumerate(tissue_classes.ids):
            counts[row, ti] = match_image(g.subset(lg == tid), p.subset(lp == tid), radius, cell_classes, mode)
        known_g = np.isin(lg, tissue_classes.ids)
        known_p = np.isin(lp, tissue_classes.ids)
        for ci, cid in enumerate(cell_classes.ids):
            off[row, ci] = (np.count_nonzero(~known_g & (g.cls == cid)), np.count_nonzero(~known_p & (p.cls == cid)))
    return SubgroupCounts(counts, off, cell_classes, tissue_classes, images, list(names) if names is not None else [])
