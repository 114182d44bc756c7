"""Tissue segmentation scores: per-class IoU and Dice, their means; unknown pixels ignored.

Per image and class ``c`` we count, over the *valid* pixels (ground truth is one of the
class ids; the ignore value 255 = unknown and 0 are left out):

* ``I`` = pixels where both prediction and ground truth are ``c``;
* ``P`` = pixels predicted ``c``; ``G`` = ground-truth pixels of ``c``.

``IoU = I / (P + G - I)`` and ``Dice = 2 I / (P + G)``. Dataset scores pool the counts over
images (each pixel weighs the same); a class absent from both prediction and ground truth
has an undefined score (NaN), left out of the means (mIoU, mDice). A predicted value that is
not a class id (e.g. 0 or 255) on a valid pixel counts as a miss for the true class.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..jsonio import nan_to_none
from ..pair import OCELOT_TISSUE_CLASSES, ClassSet
from .counts import PerImageCounts

INTER, PRED, GT = 0, 1, 2


def segmentation_counts(gt: np.ndarray, pred: np.ndarray, classes: ClassSet = OCELOT_TISSUE_CLASSES) -> np.ndarray:
    """``(n_classes, 3)`` int64 rows ``[intersection, predicted, ground truth]`` of one image."""
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"mask shapes differ: ground truth {gt.shape}, prediction {pred.shape}")
    ids = list(classes.ids)
    lut = np.full(256 if gt.dtype == np.uint8 and pred.dtype == np.uint8 else 0, -1, dtype=np.int64)
    if len(lut):
        lut[ids] = np.arange(len(ids))
        g, p = lut[gt], lut[pred]
    else:
        g = np.full(gt.shape, -1, np.int64)
        p = np.full(pred.shape, -1, np.int64)
        for k, cid in enumerate(ids):
            g[gt == cid] = k
            p[pred == cid] = k
    valid = g >= 0
    g, p = g[valid], p[valid]
    n = len(ids)
    out = np.zeros((n, 3), dtype=np.int64)
    out[:, GT] = np.bincount(g, minlength=n)[:n]
    pv = p[p >= 0]
    out[:, PRED] = np.bincount(pv, minlength=n)[:n]
    out[:, INTER] = np.bincount(g[g == p], minlength=n)[:n]
    return out


def segmentation_scores(counts: np.ndarray) -> dict[str, np.ndarray]:
    """``iou``, ``dice`` ``(..., n_classes)`` and ``miou``, ``mdice`` ``(...)`` from counts
    ``(..., n_classes, 3)``; NaN where a class has no predicted and no true pixel."""
    c = np.asarray(counts, dtype=np.float64)
    i, p, g = c[..., INTER], c[..., PRED], c[..., GT]
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(p + g > 0, i / (p + g - i), np.nan)
        dice = np.where(p + g > 0, 2 * i / (p + g), np.nan)
    with warnings.catch_warnings():  # all-NaN means stay NaN quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        return {"iou": iou, "dice": dice, "miou": np.nanmean(iou, axis=-1), "mdice": np.nanmean(dice, axis=-1)}


@dataclass
class SegmentationCounts(PerImageCounts):
    """Per-image counts ``(n_images, n_classes, 3)`` = ``[intersection, predicted, gt]``."""

    def scores(self) -> dict:
        s = segmentation_scores(self.totals)
        per_class = {
            name: {"iou": nan_to_none(s["iou"][c]), "dice": nan_to_none(s["dice"][c]),
                   "intersection": int(self.totals[c, INTER]), "predicted": int(self.totals[c, PRED]),
                   "ground_truth": int(self.totals[c, GT])}
            for c, name in enumerate(self.classes.names)
        }
        return {
            "mIoU": nan_to_none(s["miou"]), "mDice": nan_to_none(s["mdice"]), "classes": per_class, "n_images": len(self.images),
        }


def count_segmentation(
    gt_masks: Mapping[int, np.ndarray],
    pred_masks: Mapping[int, np.ndarray],
    classes: ClassSet = OCELOT_TISSUE_CLASSES,
    images: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
) -> SegmentationCounts:
    """Counts for every image that has both masks (``images`` defaults to those)."""
    if images is None:
        images = sorted(set(gt_masks) & set(pred_masks))
    images = [int(k) for k in images]
    counts = np.zeros((len(images), len(classes), 3), dtype=np.int64)
    for row, k in enumerate(images):
        counts[row] = segmentation_counts(gt_masks[k], pred_masks[k], classes)
    return SegmentationCounts(counts, classes, images, list(names) if names is not None else [])
