"""Targets (disks, Gaussians, tissue crops) and paired augmentation."""

import numpy as np
import pytest
from scipy import ndimage

from conftest import make_pair
from histozoom.data.augment import AugmentConfig, PairedAugment, flip_pair_lr, photometric, rot90_pair
from histozoom.data.targets import (
    DISK_RADIUS_UM,
    cell_disk_map,
    cell_gaussian_heatmaps,
    tissue_mask_in_cell_frame,
    um_to_px,
)
from histozoom.geometry import Placement, tissue_to_cell_np
from histozoom.pair import OCELOT_CELL_CLASSES, Pair, Points


# ---------------------------------------------------------------- targets
def test_disk_radius_is_7px_at_02mpp_and_area():
    r = um_to_px(DISK_RADIUS_UM, 0.2)
    assert r == pytest.approx(7.0)
    m = cell_disk_map(Points.from_array([[30, 30, 2]]), (64, 64), r)
    yy, xx = np.mgrid[0:64, 0:64]
    expected = ((xx - 30) ** 2 + (yy - 30) ** 2 <= 49) * 2
    np.testing.assert_array_equal(m, expected)


def test_disks_overlap_nearest_centre_wins():
    pts = Points.from_array([[20, 20, 1], [28, 20, 2]])
    m = cell_disk_map(pts, (48, 40), 7.0)
    assert m[20, 23] == 1 and m[20, 25] == 2 and m[20, 14] == 1 and m[20, 34] == 2
    # brute force: nearest centre within radius
    yy, xx = np.mgrid[0:40, 0:48]
    d = np.stack([np.hypot(xx - x, yy - y) for x, y in pts.xy])
    exp = np.where(d.min(0) <= 7, pts.cls[d.argmin(0)], 0)
    np.testing.assert_array_equal(m, exp)


def test_disk_map_matches_brute_force_on_random_crowds():
    rng = np.random.default_rng(4)
    yy, xx = np.mgrid[0:30, 0:40]
    for _ in range(30):
        n = int(rng.integers(1, 25))
        pts = Points.from_array(np.column_stack([rng.integers(-3, 43, n), rng.integers(-3, 33, n), rng.integers(1, 4, n)]))
        r = float(rng.choice([2.0, 3.5, 7.0]))
        d = np.stack([np.hypot(xx - x, yy - y) for x, y in pts.xy])
        exp = np.where(d.min(0) <= r, pts.cls[d.argmin(0)], 0)  # argmin: lowest index on ties
        np.testing.assert_array_equal(cell_disk_map(pts, (40, 30), r), exp)


def test_disk_map_empty_and_border_points():
    assert cell_disk_map(Points.empty(), (10, 8), 3).shape == (8, 10)
    m = cell_disk_map(Points.from_array([[0, 0, 1]]), (10, 8), 3)
    assert m[0, 0] == 1 and m[3, 0] == 1 and m[3, 3] == 0


def test_gaussian_heatmaps_peaks_and_sigma():
    sigma = um_to_px(1.14, 0.2)
    pts = Points.from_array([[10, 12, 1], [40, 30, 2]])
    h = cell_gaussian_heatmaps(pts, (64, 48), sigma, OCELOT_CELL_CLASSES)
    assert h.shape == (2, 48, 64)
    assert h[0, 12, 10] == pytest.approx(1.0) and h[1, 30, 40] == pytest.approx(1.0)
    assert h[0, 30, 40] == 0 and h[1, 12, 10] == 0
    assert h[0, 12, 13] == pytest.approx(np.exp(-9 / (2 * sigma**2)), rel=1e-5)


def test_tissue_mask_in_cell_frame():
    mask = np.ones((64, 64), np.uint8)
    mask[:, 32:] = 2
    p = Placement(16, 16, 32, 32, (128, 128), (64, 64))
    crop = tissue_mask_in_cell_frame(mask, p)
    assert crop.shape == (128, 128)
    assert (crop[:, :64] == 1).all() and (crop[:, 64:] == 2).all()


# ---------------------------------------------------------------- augmentation
def consistent_pair(seed=0):
    """A pair whose cell view is exactly the tissue window enlarged, with dark nuclei at the points."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.uniform(0, 1, (96, 80)), 3)
    field = (field - field.min()) / np.ptp(field)
    tissue = (60 + field[..., None] * np.array([120, 90, 110])).astype(np.uint8)  # H&E-like tint, no clipping
    p = Placement.from_centre((0.4, 0.6), (96, 64), (80, 96), 0.2, 0.8)  # non-square views
    cell = tissue_to_cell_np(tissue, p).copy()
    xy = np.stack([rng.integers(3, 93, 15), rng.integers(3, 61, 15)], 1)
    for x, y in xy:
        cell[y - 1:y + 2, x - 1:x + 2] = 0
    pts = Points.from_array(np.column_stack([xy, rng.integers(1, 3, 15)]))
    mask = (np.arange(80)[None, :] > 40).astype(np.uint8).repeat(96, 0) + 1
    return Pair("a", cell, tissue, p, pts, mask)


def check_consistent(pair, photometric_applied=False):
    xy = np.rint(pair.cell_points.xy).astype(int)
    assert pair.cell_points.inside(pair.cell_size).all()
    # every cell still sits on its (dark) nucleus
    if not photometric_applied:
        assert (pair.cell_image[xy[:, 1], xy[:, 0]] == 0).all()
    else:
        assert pair.cell_image[xy[:, 1], xy[:, 0]].mean() < pair.cell_image.mean() - 40
    # the window still shows the cell view's content
    crop = tissue_to_cell_np(pair.tissue_image, pair.placement).astype(float).mean(-1)
    cell = pair.cell_image.astype(float).mean(-1)
    keep = cell_disk_map(pair.cell_points, pair.cell_size, 2.5) == 0  # away from the drawn nuclei
    c = np.corrcoef(crop[keep], cell[keep])[0, 1]
    assert c > (0.8 if photometric_applied else 0.99)
    # the tissue mask moved with the tissue image
    assert pair.tissue_mask.shape == pair.tissue_image.shape[:2]


def test_flip_and_each_rotation_keep_alignment():
    base = consistent_pair()
    check_consistent(base)
    check_consistent(flip_pair_lr(base))
    for k in range(4):
        check_consistent(rot90_pair(base, k))
        check_consistent(rot90_pair(flip_pair_lr(base), k))
    # a mismatched placement fails the check: the check has teeth
    bad = base.replace(placement=base.placement.flipped_lr())
    with pytest.raises(AssertionError):
        check_consistent(bad)


def test_mask_follows_rotation():
    base = consistent_pair()
    r = rot90_pair(base, 1)
    np.testing.assert_array_equal(r.tissue_mask, np.rot90(base.tissue_mask))


def test_paired_augment_random_draws_keep_alignment():
    geometric_only = PairedAugment(AugmentConfig(p_jitter=0, p_noise=0, p_blur=0), seed=0)
    full = PairedAugment(AugmentConfig(p_blur=0.5, blur_sigma=(0.3, 0.8), p_noise=0.5, noise_std=(2, 4)), seed=0)
    seen = set()
    for i in range(16):
        out = geometric_only(consistent_pair(i))
        seen.add((out.cell_size, out.placement.x0 > 30))
        check_consistent(out)
        check_consistent(full(consistent_pair(i)), photometric_applied=True)
    assert len(seen) > 1  # geometric transforms actually happen


def test_photometric_independent_per_view_and_seeded():
    pair = make_pair(np.random.default_rng(0), cell_size=(32, 32), tissue_size=(32, 32))
    a = PairedAugment(seed=7)(pair)
    b = PairedAugment(seed=7)(pair)
    np.testing.assert_array_equal(a.cell_image, b.cell_image)
    img = np.full((16, 16, 3), 120, np.uint8)
    rng = np.random.default_rng(1)
    outs = [photometric(img, AugmentConfig(p_jitter=1, p_noise=0, p_blur=0), rng) for _ in range(2)]
    assert not np.array_equal(outs[0], outs[1])
    assert outs[0].dtype == np.uint8 and outs[0].shape == img.shape


def test_rotate_hue_keeps_luma_and_grey_and_inverts():
    import torch

    from histozoom.data.augment import rotate_hue

    rng = np.random.default_rng(0)
    t = torch.from_numpy(rng.uniform(0.2, 0.8, (3, 8, 8)).astype(np.float32))

    def luma(x):
        return 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]

    r = rotate_hue(t, 0.03)
    torch.testing.assert_close(luma(r), luma(t), atol=1e-5, rtol=0)
    assert (r - t).abs().max() > 0.005
    torch.testing.assert_close(rotate_hue(r, -0.03), t, atol=1e-5, rtol=0)
    grey = torch.full((3, 2, 2), 0.5)
    torch.testing.assert_close(rotate_hue(grey, 0.2), grey, atol=1e-6, rtol=0)
