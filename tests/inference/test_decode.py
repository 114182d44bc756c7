"""Peak decoding: planted peaks are found; the NumPy and torch finders agree exactly."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from histozoom.inference.decode import (
    PeakConfig,
    decode_cells,
    decode_cells_torch,
    find_peaks,
    find_peaks_torch,
    keep_spaced,
    keep_spaced_grid,
)
from histozoom.pair import OCELOT_CELL_CLASSES


def planted(rng, h=96, w=80, n=12, sigma=3.0):
    yx = []
    while len(yx) < n:
        p = (int(rng.integers(8, h - 8)), int(rng.integers(8, w - 8)))
        if all(max(abs(p[0] - q[0]), abs(p[1] - q[1])) > 12 for q in yx):
            yx.append(p)
    fg = np.zeros((h, w))
    for y, x in yx:
        fg[y, x] = 1.0
    fg = ndimage.gaussian_filter(fg, sigma)
    return fg / fg.max() * 0.95, np.array(yx)


def test_planted_peaks_found_including_border():
    rng = np.random.default_rng(0)
    fg, yx = planted(rng)
    fg2 = fg.copy()
    fg2[0, 0] = 0.99  # a peak on the border is kept
    got = find_peaks(fg2, 4, 0.1)
    assert {tuple(p) for p in got} == {tuple(p) for p in yx} | {(0, 0)}
    assert len(got) == len(yx) + 1


def test_decode_classes_and_confidences():
    rng = np.random.default_rng(1)
    fg, yx = planted(rng, n=6)
    prob = np.zeros((3, *fg.shape))
    prob[0] = 1 - fg
    tc = np.zeros(fg.shape, bool)
    tc[:, 40:] = True  # right half is TC (id 2), left half BC (id 1)
    prob[1] = np.where(tc, 0.3 * fg, 0.7 * fg)
    prob[2] = np.where(tc, 0.7 * fg, 0.3 * fg)
    pts = decode_cells(prob, OCELOT_CELL_CLASSES, PeakConfig(min_distance_um=0.8, threshold=0.2), mpp=0.2)
    assert len(pts) == len(yx)
    for (x, y), c, p in zip(pts.xy, pts.cls, pts.prob):
        assert c == (2 if x >= 40 else 1)
        assert p == pytest.approx(0.7 * fg[int(y), int(x)])
    assert np.all(np.diff(1 - prob[0][pts.xy[:, 1].astype(int), pts.xy[:, 0].astype(int)]) <= 0)  # highest first


@pytest.mark.parametrize("quantize", [None, 8, 3])
def test_torch_and_numpy_finders_agree(quantize):
    rng = np.random.default_rng(2)
    for _trial in range(25):
        fg = ndimage.gaussian_filter(rng.uniform(size=(40, 48)), float(rng.uniform(0.5, 2.5)))
        fg = (fg - fg.min()) / np.ptp(fg)
        if quantize:  # plateaus and ties between neighbours
            fg = np.round(fg * quantize) / quantize
        md = int(rng.integers(1, 6))
        th = float(rng.uniform(0, 0.6))
        ref = find_peaks(fg, md, th)
        got = find_peaks_torch(torch.from_numpy(fg)[None], md, th)[0]
        np.testing.assert_array_equal(got, ref)


def test_constant_map_has_no_peaks_in_both():
    fg = np.full((10, 10), 0.8)
    assert len(find_peaks(fg, 2, 0.1)) == 0
    assert len(find_peaks_torch(torch.from_numpy(fg)[None], 2, 0.1)[0]) == 0


def test_batched_torch_decode_matches_numpy():
    rng = np.random.default_rng(3)
    probs = []
    for _ in range(3):
        fg, _ = planted(rng, n=5)
        cls = rng.uniform(size=(2, *fg.shape))
        cls = cls / cls.sum(0) * fg
        probs.append(np.concatenate([(1 - fg)[None], cls]))
    batch = torch.from_numpy(np.stack(probs))
    cfg = PeakConfig(1.0, 0.3)
    for b, pts in enumerate(decode_cells_torch(batch, OCELOT_CELL_CLASSES, cfg)):
        ref = decode_cells(probs[b], OCELOT_CELL_CLASSES, cfg)
        np.testing.assert_array_equal(pts.xy, ref.xy)
        np.testing.assert_array_equal(pts.cls, ref.cls)
        np.testing.assert_allclose(pts.prob, ref.prob)


# ---------------------------------------------------------------------- the spacing rule
def test_spacing_rule_hand_worked():
    """Visit in order; drop a point when an already *kept* one is closer than 3 (Chebyshev)."""
    coords = np.array([[0, 0], [0, 2], [0, 4], [5, 5], [5, 7], [9, 0], [9, 3]])
    # (0,0) kept; (0,2) 2 from (0,0): dropped; (0,4) 4 from (0,0) — the dropped (0,2) at 2
    # suppresses nothing: kept; (5,5) 5 from (0,4): kept; (5,7) 2 from (5,5): dropped;
    # (9,0) kept; (9,3) exactly 3 from (9,0), not closer: kept.
    assert keep_spaced(coords, 3).tolist() == [True, False, True, True, False, True, True]
    # the order decides which of two close points stays
    assert keep_spaced(coords[[1, 0]], 3).tolist() == [True, False]
    # Euclidean: (2,2) is 2.83 from (0,0), closer than 3: dropped; (0,3) is exactly 3: kept
    assert keep_spaced(np.array([[0, 0], [2, 2], [0, 3]]), 3, p_norm=2).tolist() == [True, False, True]
    assert keep_spaced(np.zeros((0, 2)), 3).tolist() == []
    assert keep_spaced(np.array([[1, 1], [1, 1]]), 0).tolist() == [True, True]


def _greedy_reference(coords, spacing, p_norm):
    kept = []
    for i, c in enumerate(coords):
        if all(np.linalg.norm(c - coords[j], ord=p_norm) >= spacing for j in kept):
            kept.append(i)
    mask = np.zeros(len(coords), bool)
    mask[kept] = True
    return mask


@pytest.mark.parametrize("p_norm", [np.inf, 2])
def test_spacing_rule_equals_brute_force_greedy(p_norm):
    rng = np.random.default_rng(4)
    for _ in range(10):
        coords = rng.integers(0, 30, (300, 2))
        spacing = int(rng.integers(1, 7))
        np.testing.assert_array_equal(keep_spaced(coords, spacing, p_norm), _greedy_reference(coords, spacing, p_norm))


def test_grid_spacing_equals_the_pair_list_rule():
    """The raster version (used on probability maps) gives keep_spaced's mask: random
    pixels with duplicates, and a full plateau where every pixel is a candidate."""
    rng = np.random.default_rng(6)
    for _ in range(20):
        h, w = (int(v) for v in rng.integers(5, 60, 2))
        coords = np.column_stack([rng.integers(0, h, 400), rng.integers(0, w, 400)])
        for spacing in (0, 1, 2, 3, 7):
            np.testing.assert_array_equal(keep_spaced_grid(coords, spacing, (h, w)), keep_spaced(coords, spacing))
    plateau = np.argwhere(np.ones((64, 80), bool))
    order = rng.permutation(len(plateau))
    for coords in (plateau, plateau[order]):
        got = keep_spaced_grid(coords, 10, (64, 80))
        np.testing.assert_array_equal(got, keep_spaced(coords, 10))
    assert keep_spaced_grid(plateau, 10, (64, 80)).sum() == 7 * 8  # a kept pixel every 10 in raster order


@pytest.mark.parametrize("p_norm", [np.inf, 2])
def test_spacing_rule_equals_scikit_image(p_norm):
    """Against scikit-image's own (private) ensure_spacing, where it can be imported; it
    processes points in batches, which must not change the result."""
    try:
        from skimage._shared.coord import ensure_spacing
    except ImportError:
        pytest.skip("skimage._shared.coord.ensure_spacing is not importable in this scikit-image")
    rng = np.random.default_rng(5)
    for n in (2, 40, 700, 3000):  # 700 and 3000 span several of its batches
        coords = rng.integers(0, int(np.sqrt(n) * 3) + 2, (n, 2))
        for spacing in (1, 2, 3, 5):
            ref = ensure_spacing(coords, spacing=spacing, p_norm=p_norm)
            np.testing.assert_array_equal(coords[keep_spaced(coords, spacing, p_norm)], ref)


def test_plateaus_match_peak_local_max():
    """Wide flat tops (many tied candidates within min_distance): the torch finder with our
    spacing rule returns peak_local_max's peaks, in its order."""
    fg = np.zeros((60, 70))
    fg[5:12, 5:20] = 0.9  # a 7x15 plateau
    fg[30:33, 40:43] = 0.9
    fg[31, 50] = 0.9  # tied with the plateaus, 8 px from the second one
    fg[50:58:2, 10:30:3] = 0.7  # a lattice of isolated equal peaks, 2-3 px apart
    for md in (1, 2, 3, 4, 8):
        ref = find_peaks(fg, md, 0.1)
        np.testing.assert_array_equal(find_peaks_torch(torch.from_numpy(fg)[None], md, 0.1)[0], ref)
