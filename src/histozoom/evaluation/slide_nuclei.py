"""Scoring a whole slide's nuclei against its ground truth, instance by instance.

Both sides are instance tables (:mod:`histozoom.data.nuclei.instance_table`): the
``nuclei.parquet`` of ``histozoom nuclei slide predict`` and the ``OUT.nuclei.parquet`` of
``histozoom nuclei synth slide``. No slide-sized instance map is built: candidate pairs
come from overlapping boxes, and each pair's intersection from the two masks.

* **PQ pairs**: a prediction and a ground-truth nucleus with ``IoU > match_iou`` (0.5:
  unique when each side is a partition). ``DQ``, ``SQ``, ``PQ`` and per-class PQ (the TP
  pairs whose two members share the class) as in :mod:`histozoom.metrics.instances`;
  ``aPQ`` is the mean per-class PQ over the classes present on either side.
* **Dice**: ``2 Σ|g ∩ p| / (Σ|g| + Σ|p|)`` over all overlapping pairs (the pixel Dice when
  neither side overlaps itself).
* ``gt_matched_twice``: ground-truth nuclei with more than one prediction at
  ``IoU > match_iou`` (only possible when predictions overlap: a seam error);
  ``pred_overlap_px``: pixels claimed by two predictions.
* **Grades**: the slide grade of each side by the same rule, and the G1/G2/G3 shares among tumour nuclei inside the cancer area
  (:func:`histozoom.evaluation.grading.grade_shares`; predictions: their tissue class when
  a tissue model ran, else all), predicted and true.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.nuclei.instance_table import decode_mask, mask_scale_of, read_table
from ..errors import InputError
from ..jsonio import nan_to_none
from ..metrics.instances import PQCounts

__all__ = ["SlideNucleiScores", "evaluate_slide_nuclei", "instance_overlaps", "slide_tables"]

CA_ID = 2
NEEDED = ("x", "y", "x_um", "y_um", "class_id", "tissue_class", "bbox_x0", "bbox_y0", "bbox_w", "bbox_h", "mask")


def slide_tables(pred: str | Path, gt: str | Path) -> tuple[Path, Path]:
    """The two tables of a slide evaluation: ``pred`` a ``nuclei.parquet`` or its slide
    folder; ``gt`` a ground-truth table or the synthetic slide next to it (``OUT.tiff`` →
    ``OUT.nuclei.parquet``)."""
    p, g = Path(pred), Path(gt)
    if p.is_dir():
        p = p / "nuclei.parquet"
    if g.suffix.lower() in (".tif", ".tiff", ".svs"):
        g = g.with_suffix(".nuclei.parquet")
    for path, what in ((p, "predicted nuclei table"), (g, "ground-truth nuclei table")):
        if not path.is_file():
            raise InputError(path, f"no {what} here")
    return p, g


def _mask(cols: dict, i: int) -> np.ndarray:
    return decode_mask(cols["mask"][i], cols["bbox_h"][i], cols["bbox_w"][i])


def _corner(cols: dict, scale: float) -> tuple[np.ndarray, np.ndarray]:
    return np.rint(cols["bbox_x0"] / scale).astype(np.int64), np.rint(cols["bbox_y0"] / scale).astype(np.int64)


def instance_overlaps(a: dict, b: dict, scale: float = 1.0, same: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Overlapping pairs ``(i, j, pixels)`` between instance tables ``a`` and ``b`` (masks on
    one grid of ``scale`` level-0 px); ``same``: ``a is b``, pairs ``i < j`` only."""
    from scipy.spatial import cKDTree

    if not len(a["x"]) or not len(b["x"]):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    ax, ay = _corner(a, scale)
    bx, by = _corner(b, scale)

    def centres(x, y, cols):
        return np.column_stack([x + cols["bbox_w"] / 2, y + cols["bbox_h"] / 2])

    ra = np.hypot(a["bbox_w"], a["bbox_h"]).max() / 2
    rb = np.hypot(b["bbox_w"], b["bbox_h"]).max() / 2
    ta, tb = cKDTree(centres(ax, ay, a)), cKDTree(centres(bx, by, b))
    hits = ta.query_ball_tree(tb, ra + rb + 1)
    out_i, out_j, out_n = [], [], []
    for i, js in enumerate(hits):
        if not js:
            continue
        mi = _mask(a, i)
        for j in js:
            if same and j <= i:
                continue
            x0, y0 = max(ax[i], bx[j]), max(ay[i], by[j])
            x1 = min(ax[i] + a["bbox_w"][i], bx[j] + b["bbox_w"][j])
            y1 = min(ay[i] + a["bbox_h"][i], by[j] + b["bbox_h"][j])
            if x1 <= x0 or y1 <= y0:
                continue
            mj = _mask(b, j)
            n = int(np.count_nonzero(mi[y0 - ay[i]:y1 - ay[i], x0 - ax[i]:x1 - ax[i]]
                                     & mj[y0 - by[j]:y1 - by[j], x0 - bx[j]:x1 - bx[j]]))
            if n:
                out_i.append(i)
                out_j.append(j)
                out_n.append(n)
    return np.array(out_i, np.int64), np.array(out_j, np.int64), np.array(out_n, np.int64)


@dataclass
class SlideNucleiScores:
    """Scores of one slide (definitions: module docstring)."""

    counts: PQCounts
    class_counts: dict[int, PQCounts]
    class_names: dict[int, str]
    dice: float
    gt_matched_twice: int
    pred_overlap_px: int
    grades: dict[str, Any] | None
    match_iou: float
    pred: str = ""
    gt: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def apq(self) -> float:
        v = [c.pq for c in self.class_counts.values() if not c.empty]
        return float(np.mean(v)) if v else float("nan")

    def to_dict(self) -> dict:
        c = self.counts
        return {"pred": self.pred, "gt": self.gt, "match_iou": self.match_iou, "n_gt": c.tp + c.fn, "n_pred": c.tp + c.fp,
                "dice": nan_to_none(self.dice), "dq": nan_to_none(c.dq), "sq": nan_to_none(c.sq), "pq": nan_to_none(c.pq),
                "apq": nan_to_none(self.apq),
                "pq_per_class": {self.class_names.get(k, str(k)): nan_to_none(v.pq) for k, v in self.class_counts.items()},
                "counts": c.to_dict(), "class_counts": {self.class_names.get(k, str(k)): v.to_dict()
                                                        for k, v in self.class_counts.items()},
                "gt_matched_twice": self.gt_matched_twice, "pred_overlap_px": self.pred_overlap_px,
                "grades": self.grades, "warnings": list(self.warnings)}

    def table(self) -> str:
        d = self.to_dict()
        lines = [f"Slide nuclei: {d['n_gt']} true, {d['n_pred']} predicted; PQ pairs at IoU > {self.match_iou:g}",
                 "  " + "  ".join(f"{k} {_fmt(d[k])}" for k in ("dice", "dq", "sq", "pq", "apq")),
                 "  PQ per class: " + ", ".join(f"{k} {_fmt(v)}" for k, v in d["pq_per_class"].items())]
        if self.grades:
            for side in ("predicted", "true"):
                sh = (self.grades[side].get("cancer_area") or {}).get("shares") or {}
                lines.append(f"  {side} grades in the cancer area: " + ", ".join(f"{k} {_fmt(v)}" for k, v in sh.items()))
        if self.grades:
            lines.append(f"  slide grade: predicted {self.grades['slide_grade']['predicted']}, "
                         f"true {self.grades['slide_grade']['true']}")
        lines.append(f"  ground-truth nuclei matched twice: {self.gt_matched_twice}; "
                     f"pixels claimed by two predictions: {self.pred_overlap_px}")
        return "\n".join(lines + [f"  warning: {w}" for w in self.warnings])


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def _read(path: Path) -> tuple[dict, float, Any]:
    import pyarrow.parquet as pq

    cols = read_table(path, list(NEEDED))
    names = pq.read_table(path, columns=["class_id", "class_name"]) if "class_name" in pq.read_schema(path).names else None
    lookup = {}
    if names is not None:
        for i, n in zip(names.column("class_id").to_pylist(), names.column("class_name").to_pylist()):
            lookup.setdefault(int(i), str(n))
    return cols, mask_scale_of(path), lookup


def evaluate_slide_nuclei(pred: str | Path, gt: str | Path, match_iou: float = 0.5, rule=None) -> SlideNucleiScores:
    """Score the predicted nuclei table of a slide against its ground truth (module docstring);
    ``rule``: the :class:`~histozoom.evaluation.grading.GradingRule` of the slide grades compared."""
    from ..data.nuclei.records import CCRCC_CLASSES
    from ..pair import ClassSet
    from .grading import grade_of, grade_shares, slide_grade

    if not 0.5 <= match_iou < 1:
        raise InputError(None, f"match_iou must be in [0.5, 1), got {match_iou}")
    p_path, g_path = slide_tables(pred, gt)
    p, sp, p_names = _read(p_path)
    g, sg, g_names = _read(g_path)
    if abs(sp - sg) > 1e-9:
        raise InputError(p_path, f"its masks are at {sp:g} level-0 px per pixel and the ground truth's at {sg:g}; "
                                 f"score predictions made at the ground truth's resolution")
    pi, gi, inter = instance_overlaps(p, g, sp)
    pa = np.array([_mask(p, i).sum() for i in range(len(p["x"]))], np.int64)
    ga = np.array([_mask(g, i).sum() for i in range(len(g["x"]))], np.int64)
    iou = inter / (pa[pi] + ga[gi] - inter) if len(inter) else np.zeros(0)
    tp = iou > match_iou
    counts = PQCounts(int(tp.sum()), int(len(pa) - tp.sum()), int(len(ga) - tp.sum()), float(iou[tp].sum()))
    names = {**g_names, **p_names}
    classes = sorted((set(np.unique(p["class_id"]).tolist()) | set(np.unique(g["class_id"]).tolist())) - {0})
    class_counts = {}
    for c in classes:
        hit = tp & (p["class_id"][pi] == c) & (g["class_id"][gi] == c)
        n_hit = int(hit.sum())
        class_counts[int(c)] = PQCounts(n_hit, int((p["class_id"] == c).sum()) - n_hit, int((g["class_id"] == c).sum()) - n_hit,
                                        float(iou[hit].sum()))
    twice = int(np.count_nonzero(np.bincount(gi[tp], minlength=len(ga)) > 1)) if len(ga) else 0
    _, _, self_overlap = instance_overlaps(p, p, sp, same=True)
    dice = 2 * inter.sum() / (pa.sum() + ga.sum()) if pa.sum() + ga.sum() else float("nan")
    grades = None
    warnings: list[str] = []
    scheme = ClassSet(tuple(names.get(i, str(i)) for i in sorted(names)), tuple(sorted(names))) if names else CCRCC_CLASSES
    if {"G1", "G2", "G3"} <= set(scheme.names):
        p_inside = (p["tissue_class"] == CA_ID) if (p["tissue_class"] > 0).any() else np.ones(len(p["x"]), bool)
        if not (p["tissue_class"] > 0).any():
            warnings.append("the predictions have no tissue classes (no tissue model): all of them count as inside")
        pg, gg, g_inside = grade_of(p["class_id"], scheme), grade_of(g["class_id"], scheme), g["tissue_class"] == CA_ID
        grades = {"predicted": grade_shares(pg, p_inside), "true": grade_shares(gg, g_inside),
                  "slide_grade": {"predicted": slide_grade(p["x_um"], p["y_um"], pg, p_inside, rule)["grade"],
                                  "true": slide_grade(g["x_um"], g["y_um"], gg, g_inside, rule)["grade"]}}
        ps = grades["predicted"]["cancer_area"]["shares"]
        ts = grades["true"]["cancer_area"]["shares"]
        grades["abs_difference"] = {k: None if ps[k] is None or ts[k] is None else abs(ps[k] - ts[k]) for k in ts}
    return SlideNucleiScores(counts, class_counts, names, float(dice), twice, int(self_overlap.sum()), grades, match_iou,
                             str(p_path), str(g_path), warnings)
