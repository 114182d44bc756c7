"""Cell detection scores exactly as the OCELOT 2023 challenge computed them (mF1).

Definition (challenge report, section 2.3 and Algorithm 1; official code
``ocelot23algo/evaluation/eval.py``):

* Matching is done **per image and per cell class**: a prediction can only hit a
  ground-truth (GT) cell of its own class.
* Predictions are visited by **descending probability**. Each takes the **nearest
  still-unmatched** GT cell within the hit radius (3 µm = 15 px at 0.2 µm/px; a distance
  **equal** to the radius is a hit) and becomes a true positive (TP); with none in reach
  it is a false positive (FP). GT cells left unmatched are false negatives (FN).
* TP, FP and the number of GT cells are **pooled over all images** per class; precision,
  recall and F1 follow per class; mF1 is the mean of the per-class F1.

Visiting order — three texts, one result on the real submissions:

* **The challenge report** (Algorithm 1) visits predictions by descending confidence.
* **The public ``ocelot23algo`` ``evaluation/eval.py``** stores each prediction as
  ``(x, y, cls, prob)`` and then takes column 2 as the "confidence", i.e. the *class id*,
  not the probability. Within one class that key is constant, so predictions are visited
  in whatever order numpy's default (unstable) ``argsort`` leaves equal keys. The same
  code raises (an ``IndexError`` on an empty GT array) on an image that has predictions
  of a class but no GT cell of that class; the two real submissions in
  ``shared/data/ocelot/predictions`` have 15 and 17 such image–class cases, so the scores
  of the official table did not come from that file unchanged. (Its history also has
  both 25 px and 15 px as ``DISTANCE_CUTOFF``; the report states 15 px = 3 µm.)
* **histozoom** follows the report: descending probability compared as float32 (the
  official code holds values in float32 arrays), equal probabilities in input order (a
  *stable* sort); such images count their predictions as FPs.

On both real submissions the three orders (probability, input order, numpy's order of
the class-id key) give the same counts and the official table to the last digit (checked
by ``tests/metrics/test_detection.py``); they differ only where two predictions compete
for one GT cell, and ``test_probability_order_differs_from_input_order`` is such a case.
Among GT cells at the same distance, the one listed first wins (the official
``min(..., key=distance)`` returns the first minimum).

Distances: a pair is a hit when ``dx² + dy² <= r²``, computed in float64. For integer
pixel coordinates (the challenge format) this is exact, so a distance of exactly 15 px is
a hit; :func:`radius_px` rounds ``µm / mpp`` to 1e-9 px so that e.g. 1.4 µm at 0.2 µm/px
is 7 px, not 6.999999999999999.

Zero division: the official scorer adds 1e-7 to every denominator, so a class with no
predictions and no GT gets P = R = F1 = 0 (never NaN). :func:`scores_from_counts` gives the
exact ratios with the same convention (0 where a denominator is 0);
:func:`challenge_scores` reproduces the official numbers bit for bit (1e-7 terms,
``round(v, 4)``, mF1 = mean of the *rounded* per-class F1).

Speed: candidate pairs come from a KD-tree query within the radius, so the cost grows with
the number of points and close pairs, not with their product.

:func:`match_image` also offers ``mode="hungarian"``: a maximum-cardinality matching with
minimum total distance (``scipy.optimize.linear_sum_assignment``). It is **not** the
challenge's metric; it is an upper bound on TP for the same radius.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from ..constants import CHALLENGE_MPP, CHALLENGE_RADIUS_UM, MATCH_MODES
from ..pair import OCELOT_CELL_CLASSES, ClassSet, Points
from .counts import PerImageCounts

MatchMode = Literal["challenge", "hungarian"]
MODE_LABELS = {
    "challenge": "challenge (greedy by probability, nearest unmatched GT; the OCELOT 2023 rule)",
    "hungarian": "hungarian (optimal one-to-one matching; NOT the challenge's metric)",
}

CHALLENGE_EPS = 1e-7
"""The official scorer's denominator offset."""

TP, FP, NGT = 0, 1, 2
"""Indices of the last axis of count arrays: ``[tp, fp, n_gt]``."""


def radius_px(radius_um: float = CHALLENGE_RADIUS_UM, mpp: float = CHALLENGE_MPP) -> float:
    """Hit radius in pixels: ``radius_um / mpp`` rounded to 1e-9 px (3 µm at 0.2 µm/px = 15)."""
    if not (radius_um > 0 and mpp > 0):
        raise ValueError(f"radius and mpp must be positive, got {radius_um} µm, {mpp} µm/px")
    return round(radius_um / mpp, 9)


# ---------------------------------------------------------------------- matching
def prediction_order(prob: np.ndarray) -> np.ndarray:
    """Indices of predictions by descending float32 probability; ties keep input order."""
    p = np.asarray(prob, dtype=np.float32)
    return np.argsort(-p, kind="stable")


def candidate_pairs(
    gt_xy: np.ndarray, pred_xy: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (prediction, GT) pairs with ``d² <= radius²``: ``(pred_idx, gt_idx, d²)``.

    Built with a KD-tree (queried with a hair more than the radius, then filtered with the
    exact squared-distance test), so the cost follows the number of close pairs.
    """
    gt_xy = np.asarray(gt_xy, dtype=np.float64).reshape(-1, 2)
    pred_xy = np.asarray(pred_xy, dtype=np.float64).reshape(-1, 2)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    if len(gt_xy) == 0 or len(pred_xy) == 0:
        return empty
    r2 = radius * radius
    pairs = cKDTree(pred_xy).sparse_distance_matrix(cKDTree(gt_xy), radius * (1 + 1e-9) + 1e-9, output_type="ndarray")
    if len(pairs) == 0:
        return empty
    pi = pairs["i"].astype(np.int64)
    gj = pairs["j"].astype(np.int64)
    d = pred_xy[pi] - gt_xy[gj]
    d2 = d[:, 0] * d[:, 0] + d[:, 1] * d[:, 1]
    keep = d2 <= r2
    return pi[keep], gj[keep], d2[keep]


def greedy_match(
    n_pred: int, n_gt: int, pred_idx: np.ndarray, gt_idx: np.ndarray, d2: np.ndarray, order: np.ndarray
) -> np.ndarray:
    """The challenge's greedy matching on candidate pairs.

    ``order``: predictions in visiting order (see :func:`prediction_order`). Returns, per
    prediction, the matched GT index or -1. Each prediction takes the nearest unmatched
    candidate (ties: lowest GT index).
    """
    match = np.full(n_pred, -1, dtype=np.int64)
    if len(pred_idx) == 0:
        return match
    rank = np.empty(n_pred, dtype=np.int64)
    rank[order] = np.arange(n_pred)
    srt = np.lexsort((gt_idx, d2, rank[pred_idx]))
    pred_used = bytearray(n_pred)
    gt_used = bytearray(n_gt)
    for i, g in zip(pred_idx[srt].tolist(), gt_idx[srt].tolist()):
        if pred_used[i] or gt_used[g]:
            continue
        pred_used[i] = 1
        gt_used[g] = 1
        match[i] = g
    return match


def optimal_match(n_pred: int, n_gt: int, pred_idx: np.ndarray, gt_idx: np.ndarray, d2: np.ndarray) -> np.ndarray:
    """Maximum-cardinality one-to-one matching of candidate pairs with minimum total distance.

    Solved per connected component of the candidate graph with
    ``linear_sum_assignment``; non-candidate pairs cost more than any full set of
    candidate pairs, so the number of matches is maximised first. Not the challenge's rule.
    """
    match = np.full(n_pred, -1, dtype=np.int64)
    if len(pred_idx) == 0:
        return match
    d = np.sqrt(d2)
    n = n_pred + n_gt
    graph = coo_matrix((np.ones(len(pred_idx)), (pred_idx, n_pred + gt_idx)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    comp = label[pred_idx]
    srt = np.argsort(comp, kind="stable")
    bounds = np.flatnonzero(np.diff(comp[srt])) + 1
    for sel in np.split(srt, bounds):
        p_ids, p_loc = np.unique(pred_idx[sel], return_inverse=True)
        g_ids, g_loc = np.unique(gt_idx[sel], return_inverse=True)
        if len(sel) == 1:
            match[p_ids[0]] = g_ids[0]
            continue
        big = float(d[sel].sum()) + 1.0
        cost = np.full((len(p_ids), len(g_ids)), big)
        cost[p_loc, g_loc] = d[sel]
        rows, cols = linear_sum_assignment(cost)
        ok = cost[rows, cols] < big
        match[p_ids[rows[ok]]] = g_ids[cols[ok]]
    return match


def match_points(
    gt: Points | None,
    pred: Points | None,
    radius: float = 15.0,
    mode: MatchMode = "challenge",
) -> np.ndarray:
    """Per prediction, the index of the GT cell it hits (-1 for a false positive).

    Class-wise: only same-class pairs are candidates. ``radius`` in pixels.
    """
    gt = gt if gt is not None else Points.empty()
    pred = pred if pred is not None else Points.empty()
    if mode not in MATCH_MODES:
        raise ValueError(f"mode must be one of {MATCH_MODES}, got {mode!r}")
    pi, gj, d2 = candidate_pairs(gt.xy, pred.xy, radius)
    same = pred.cls[pi] == gt.cls[gj]
    pi, gj, d2 = pi[same], gj[same], d2[same]
    if mode == "challenge":
        return greedy_match(len(pred), len(gt), pi, gj, d2, prediction_order(pred.prob))
    return optimal_match(len(pred), len(gt), pi, gj, d2)


def match_image(
    gt: Points | None,
    pred: Points | None,
    radius: float = 15.0,
    classes: ClassSet | Sequence[int] = OCELOT_CELL_CLASSES,
    mode: MatchMode = "challenge",
) -> np.ndarray:
    """Counts of one image: ``(n_classes, 3)`` int64 rows ``[tp, fp, n_gt]`` per class.

    ``radius`` in pixels (see :func:`radius_px`). Points of classes outside ``classes``
    are not counted. ``gt``/``pred`` may be ``None`` (no points).
    """
    ids = np.asarray(classes.ids if isinstance(classes, ClassSet) else classes, dtype=np.int64)
    gt = gt if gt is not None else Points.empty()
    pred = pred if pred is not None else Points.empty()
    match = match_points(gt, pred, radius, mode)
    out = np.zeros((len(ids), 3), dtype=np.int64)
    hit = match >= 0
    for c, cid in enumerate(ids.tolist()):
        is_c = pred.cls == cid
        tp = int(np.count_nonzero(hit & is_c))
        out[c] = (tp, int(np.count_nonzero(is_c)) - tp, int(np.count_nonzero(gt.cls == cid)))
    return out


# ---------------------------------------------------------------------- scores
def scores_from_counts(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Exact scores from counts ``(..., n_classes, 3)`` (``[tp, fp, n_gt]``), vectorised.

    Returns ``precision``, ``recall``, ``f1`` of shape ``(..., n_classes)`` and ``mf1`` of
    shape ``(...)``. A ratio with a zero denominator is 0 (the official convention).
    F1 = 2 TP / (2 TP + FP + FN), which equals 2 P R / (P + R).
    """
    c = np.asarray(counts, dtype=np.float64)
    tp, fp, ngt = c[..., TP], c[..., FP], c[..., NGT]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(ngt > 0, tp / ngt, 0.0)
        f1 = np.where(tp + fp + ngt > 0, 2 * tp / (tp + fp + ngt), 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "mf1": f1.mean(axis=-1)}


def per_image_f1(counts: np.ndarray) -> np.ndarray:
    """F1 per image and class ``(n_images, n_classes)``; NaN where the image has neither
    GT nor predictions of the class (undefined, left out of distributions)."""
    c = np.asarray(counts, dtype=np.float64)
    tp, fp, ngt = c[..., TP], c[..., FP], c[..., NGT]
    den = tp + fp + ngt
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, 2 * tp / den, np.nan)


def challenge_scores(totals: np.ndarray, classes: ClassSet = OCELOT_CELL_CLASSES) -> dict[str, float]:
    """The official scorer's numbers from pooled counts ``(n_classes, 3)``.

    Keys as the official output: ``Pre/<name>``, ``Rec/<name>``, ``F1/<name>`` (rounded to
    4 decimals with Python's ``round``) and ``mF1`` = mean of the rounded F1 values.
    """
    out: dict[str, float] = {}
    f1s = []
    for name, (tp, fp, ngt) in zip(classes.names, np.asarray(totals).tolist()):
        p = tp / (tp + fp + CHALLENGE_EPS)
        r = tp / (ngt + CHALLENGE_EPS)
        f = 2 * p * r / (p + r + CHALLENGE_EPS)
        out[f"Pre/{name}"], out[f"Rec/{name}"], out[f"F1/{name}"] = round(p, 4), round(r, 4), round(f, 4)
        f1s.append(round(f, 4))
    out["mF1"] = sum(f1s) / len(f1s)
    return out


@dataclass
class DetectionScores:
    """Pooled scores of one prediction set (exact values, plus the official rounding)."""

    classes: ClassSet
    totals: np.ndarray  # (n_classes, 3) [tp, fp, n_gt]
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    mf1: float
    challenge: dict[str, float]

    @classmethod
    def from_totals(cls, totals: np.ndarray, classes: ClassSet) -> DetectionScores:
        totals = np.asarray(totals, dtype=np.int64)
        s = scores_from_counts(totals)
        return cls(classes, totals, s["precision"], s["recall"], s["f1"], float(s["mf1"]), challenge_scores(totals, classes))

    def to_dict(self) -> dict:
        per_class = {}
        for c, name in enumerate(self.classes.names):
            tp, fp, ngt = (int(v) for v in self.totals[c])
            per_class[name] = {
                "precision": float(self.precision[c]), "recall": float(self.recall[c]), "f1": float(self.f1[c]),
                "tp": tp, "fp": fp, "fn": ngt - tp, "n_gt": ngt, "n_pred": tp + fp,
            }
        return {"mF1": self.mf1, "classes": per_class, "challenge": dict(self.challenge)}


@dataclass
class DetectionCounts(PerImageCounts):
    """Per-image, per-class counts ``(n_images, n_classes, 3)`` = ``[tp, fp, n_gt]``.

    Everything else (pooled scores, per-organ scores, bootstrap) is computed from these.
    """

    mode: str = "challenge"
    radius: float = 15.0

    def scores(self) -> DetectionScores:
        return DetectionScores.from_totals(self.totals, self.classes)

    def per_image_f1(self) -> np.ndarray:
        return per_image_f1(self.counts)

    def subset(self, rows: np.ndarray | Sequence[int]) -> DetectionCounts:
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return DetectionCounts(self.counts[rows], self.classes, [self.images[i] for i in rows],
                               [self.names[i] for i in rows], self.mode, self.radius)

    def grouped(self, labels: Sequence[str | None]) -> dict[str, DetectionCounts]:
        """Split rows by a label per image (e.g. organ); ``None`` labels are left out."""
        out: dict[str, DetectionCounts] = {}
        labels = list(labels)
        for lab in sorted({label for label in labels if label is not None}):
            out[lab] = self.subset(np.array([label == lab for label in labels], dtype=bool))
        return out


def count_detections(
    gt: Mapping[int, Points | None],
    pred: Mapping[int, Points | None],
    images: Sequence[int] | None = None,
    radius: float = 15.0,
    classes: ClassSet = OCELOT_CELL_CLASSES,
    mode: MatchMode = "challenge",
    names: Sequence[str] | None = None,
) -> DetectionCounts:
    """Match every image and collect counts. ``images`` defaults to the union of the keys;
    a missing entry on either side is an image without points."""
    if images is None:
        images = sorted(set(gt) | set(pred))
    images = [int(k) for k in images]
    counts = np.zeros((len(images), len(classes), 3), dtype=np.int64)
    for row, k in enumerate(images):
        counts[row] = match_image(gt.get(k), pred.get(k), radius, classes, mode)
    return DetectionCounts(counts, classes, images, list(names) if names is not None else [], mode, radius)
