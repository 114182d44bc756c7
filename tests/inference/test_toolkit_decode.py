"""Decoding options of the challenge toolkit: heatmap maps, smoothing, point NMS."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from histozoom.data.targets import cell_gaussian_heatmaps
from histozoom.inference.decode import PeakConfig, decode_cells, decode_cells_torch, point_nms, smooth_foreground
from histozoom.models.cell_tissue import cell_probability_map
from histozoom.pair import OCELOT_CELL_CLASSES, Points


def brute_force_nms(points: Points, radius: float) -> np.ndarray:
    keep = np.zeros(len(points), bool)
    for c in np.unique(points.cls):
        idx = [i for i in np.argsort(-points.prob, kind="stable") if points.cls[i] == c]
        kept: list[int] = []
        for i in idx:
            if all(np.hypot(*(points.xy[i] - points.xy[j])) >= radius for j in kept):
                kept.append(i)
        keep[kept] = True
    return keep


@pytest.mark.parametrize("seed", range(5))
def test_point_nms_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 300
    xy = rng.uniform(0, 60, (n, 2))
    xy[::7] = np.rint(xy[::7])  # some exact distances on the integer grid
    prob = np.round(rng.uniform(0, 1, n), 2)  # ties
    pts = Points(xy, rng.integers(1, 3, n), prob)
    for radius in (1.0, 3.0, 5.0):
        want = brute_force_nms(pts, radius)
        got = point_nms(pts, radius)
        assert np.array_equal(got.xy, pts.xy[want]) and np.array_equal(got.cls, pts.cls[want])


def test_point_nms_keeps_other_classes_and_exact_radius():
    pts = Points(np.array([[0, 0], [2, 0], [1, 0], [5, 0]], float), np.array([1, 1, 2, 1]), np.array([0.9, 0.8, 0.7, 0.6]))
    out = point_nms(pts, 2.0)  # the BC at distance exactly 2 survives, the TC is another class
    assert np.array_equal(out.cls, [1, 1, 2, 1])
    out = point_nms(pts, 2.5)
    assert out.xy[:, 0].tolist() == [0, 1, 5]


def test_heatmap_outputs_decode_to_their_cells():
    size, mpp = (64, 64), 0.4
    pts = Points.from_array(np.array([[10, 12, 1], [40, 20, 2], [30, 50, 2], [52, 52, 1]]))
    heat = cell_gaussian_heatmaps(pts, size, 1.14 / mpp, OCELOT_CELL_CLASSES)
    logits = torch.logit(torch.from_numpy(heat).clamp(1e-4, 1 - 1e-4))[None]
    prob = cell_probability_map(logits, "heatmap")
    assert prob.shape == (1, 3, 64, 64)
    assert torch.allclose(1 - prob[0, 0], torch.from_numpy(heat).max(0).values, atol=1e-3)
    cfg = PeakConfig(min_distance_um=2.0, threshold=0.3, smooth_um=0.57)
    got = decode_cells_torch(prob, OCELOT_CELL_CLASSES, cfg, mpp)[0]
    order = np.lexsort((got.xy[:, 1], got.xy[:, 0]))
    want = pts.subset(np.lexsort((pts.xy[:, 1], pts.xy[:, 0])))
    assert np.array_equal(got.xy[order], want.xy) and np.array_equal(got.cls[order], want.cls)
    assert np.allclose(got.prob, 1.0, atol=1e-3)
    numpy_path = decode_cells(prob[0].numpy(), OCELOT_CELL_CLASSES, cfg, mpp)
    assert np.array_equal(numpy_path.xy, got.xy)


def test_smoothing_is_a_normalised_gaussian():
    fg = torch.zeros(1, 41, 41)
    fg[0, 20, 20] = 1.0
    out = smooth_foreground(fg, 2.0)[0]
    assert torch.isclose(out.sum(), torch.tensor(1.0), atol=1e-5)
    y, x = torch.meshgrid(torch.arange(41.0) - 20, torch.arange(41.0) - 20, indexing="ij")
    g = torch.exp(-(x**2 + y**2) / 8.0)
    assert torch.allclose(out, g / g.sum(), atol=1e-4)
    assert torch.equal(smooth_foreground(fg, 0.05), fg)
