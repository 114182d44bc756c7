"""Tissue segmentation scores (IoU, Dice; unknown pixels ignored) and tissue lookup of cells."""

from __future__ import annotations

import numpy as np
import pytest

from histozoom.geometry import Placement
from histozoom.metrics.segmentation import count_segmentation, segmentation_counts, segmentation_scores
from histozoom.metrics.subgroups import tissue_at_points
from histozoom.pair import OCELOT_TISSUE_CLASSES, UNKNOWN, ClassSet


def test_counts_by_hand_and_unknown_ignored():
    gt = np.array([[1, 1, 2, 2],
                   [1, 1, 2, UNKNOWN]], np.uint8)
    pred = np.array([[1, 2, 2, 2],
                     [0, 1, 2, 1]], np.uint8)
    c = segmentation_counts(gt, pred)
    # BG: gt 4 px, pred BG on valid px: (0,0),(1,1) -> 2, both correct; CA: gt 3, pred 4 valid (0,1),(0,2),(0,3),(1,2), correct 3.
    assert c.tolist() == [[2, 2, 4], [3, 4, 3]]
    s = segmentation_scores(c)
    np.testing.assert_allclose(s["iou"], [2 / 4, 3 / 4])
    np.testing.assert_allclose(s["dice"], [4 / 6, 6 / 7])
    assert s["miou"] == pytest.approx((0.5 + 0.75) / 2)
    assert s["mdice"] == pytest.approx((4 / 6 + 6 / 7) / 2)


def test_non_uint8_and_other_class_sets_agree_with_uint8():
    rng = np.random.default_rng(0)
    gt = rng.choice(np.array([1, 2, 255], np.uint8), (20, 30))
    pred = rng.choice(np.array([0, 1, 2], np.uint8), (20, 30))
    np.testing.assert_array_equal(segmentation_counts(gt, pred), segmentation_counts(gt.astype(np.int32), pred.astype(np.int64)))
    three = ClassSet(("a", "b", "c"), (1, 2, 7), ignore=255)
    c = segmentation_counts(gt.astype(np.int32), pred.astype(np.int32), three)
    assert c[2].tolist() == [0, 0, 0]
    assert np.isnan(segmentation_scores(c)["iou"][2])  # absent class: undefined, left out of the mean
    assert not np.isnan(segmentation_scores(c)["miou"])
    with pytest.raises(ValueError, match="shapes differ"):
        segmentation_counts(gt, pred[:, :5])


def test_pooling_over_images():
    g1 = np.ones((2, 2), np.uint8)
    g2 = np.full((2, 2), 2, np.uint8)
    sc = count_segmentation({0: g1, 1: g2, 2: g1}, {0: g1, 1: g1, 5: g1}, OCELOT_TISSUE_CLASSES)
    assert sc.images == [0, 1]  # images with both masks
    assert sc.totals.tolist() == [[4, 8, 4], [0, 0, 4]]
    s = sc.scores()
    assert s["classes"]["BG"]["iou"] == pytest.approx(0.5) and s["classes"]["CA"]["iou"] == 0.0
    assert s["mIoU"] == pytest.approx(0.25)


def test_tissue_at_points_uses_the_placement():
    # Cell view 64x64 at 0.2 µm/px in a 64x64 tissue view at 0.8 µm/px, centred: window 16x16 at (24, 24).
    p = Placement.from_centre((0.5, 0.5), (64, 64), (64, 64), 0.2, 0.8)
    assert (p.x0, p.y0, p.width) == (24, 24, 16)
    mask = np.full((64, 64), 1, np.uint8)
    mask[:, 32:] = 2
    mask[:26, :] = UNKNOWN
    xy = np.array([[0, 40], [63, 40], [31, 40], [33, 40], [10, 0]], float)
    # Tissue x = 24 + (x + 0.5) / 4 - 0.5: cell 0 -> 23.625 -> 24 (BG); 63 -> 39.5 -> 40 (CA);
    # 31 -> 31.375 -> 31 (BG); 33 -> 31.875 -> 32 (CA); cell y 0 -> tissue 23.6 -> 24 (unknown).
    assert tissue_at_points(xy, p, mask).tolist() == [1, 2, 1, 2, UNKNOWN]
    # A mask stored at half resolution gives the same labels.
    half = mask[::2, ::2]
    assert tissue_at_points(xy[:2], p, half).tolist() == [1, 2]
    # Off the mask -> unknown.
    far = Placement(60, 60, 16, 16, (64, 64), (64, 64))
    assert tissue_at_points(np.array([[63.0, 63.0]]), far, mask).tolist() == [UNKNOWN]
