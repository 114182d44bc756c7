import json

import numpy as np
import pytest
import torch

from histozoom.data.io import read_rgb
from histozoom.geometry import (
    Placement,
    cell_to_tissue,
    cell_to_tissue_np,
    tissue_to_cell,
    tissue_to_cell_np,
    window_tensor,
)


def corr(a, b):
    return float(np.corrcoef(np.asarray(a, float).ravel(), np.asarray(b, float).ravel())[0, 1])


def test_sample_004_placement_and_content(sample_004):
    entry = json.loads((sample_004 / "metadata.json").read_text())[0]
    cell = read_rgb(sample_004 / "images/cell_patches/000.tif")
    tissue = read_rgb(sample_004 / "images/tissue_patches/000.tif")
    p = Placement.from_ocelot_metadata(entry, (1024, 1024), (1024, 1024))
    assert p.window_int() == (512, 0, 768, 256)
    assert p.centre_frac == pytest.approx((0.625, 0.125))
    assert p.scale[0] == pytest.approx(0.7777900241489988 / 0.19426718377508223)
    # the cell view shrunk into the tissue frame matches the tissue crop
    down = cell_to_tissue_np(cell, p)[0:256, 512:768]
    assert corr(down, tissue[0:256, 512:768]) > 0.95
    # and the tissue crop enlarged matches the cell view
    assert corr(tissue_to_cell_np(tissue, p), cell) > 0.95
    # a window shifted by 32 tissue px no longer matches: the test has teeth
    shifted = Placement(p.x0 - 32, p.y0, p.width, p.height, p.cell_size, p.tissue_size)
    assert corr(tissue_to_cell_np(tissue, shifted), cell) < 0.8


def test_window_from_mpp_not_hardcoded():
    # TIGER-like: 128 px cell view at 0.5 µm/px inside a 512 px tissue view at 0.5 µm/px
    p = Placement.from_centre((0.5, 0.5), (128, 128), (512, 512), 0.5, 0.5)
    assert (p.x0, p.y0, p.width, p.height) == (192, 192, 128, 128)
    p = Placement.from_centre((0.25, 0.75), (100, 60), (90, 70), 0.3, 0.9)
    assert p.width == pytest.approx(100 / 3) and p.height == pytest.approx(20)
    assert p.centre == pytest.approx((22.5, 52.5))


def test_points_round_trip_and_known_values():
    p = Placement(10.0, 20.0, 16.0, 8.0, (64, 32), (100, 50))
    assert p.scale == (4.0, 4.0)
    # the corner pixel (0,0) of the cell frame covers tissue [10, 10.25): centre 10.125
    assert p.cell_to_tissue_points([[0, 0]])[0] == pytest.approx([10.125 - 0.5, 20.125 - 0.5])
    # the last cell pixel (63, 31) covers tissue [25.75, 26): centre 25.875
    assert p.cell_to_tissue_points([[63, 31]])[0] == pytest.approx([25.875 - 0.5, 27.875 - 0.5])
    rng = np.random.default_rng(0)
    xy = rng.uniform(-5, 70, (50, 2))
    back = p.tissue_to_cell_points(p.cell_to_tissue_points(xy))
    np.testing.assert_allclose(back, xy, atol=1e-9)


def test_fractions_and_resize_invariance():
    p = Placement.from_centre((0.3, 0.6), (256, 256), (256, 256), 0.2, 0.8)
    q = p.resized((64, 64), (64, 64))
    assert q.fractions() == pytest.approx(p.fractions())
    assert q.width == pytest.approx(16)


def test_tissue_to_cell_crop_exact_for_integer_window():
    # integer window and integer scale: nearest resampling equals crop + np.repeat
    t = np.arange(40 * 30, dtype=np.int32).reshape(30, 40)
    p = Placement(8, 4, 10, 6, (40, 24), (40, 30))
    out = tissue_to_cell_np(t, p, mode="nearest")
    expected = np.repeat(np.repeat(t[4:10, 8:18], 4, axis=0), 4, axis=1)
    np.testing.assert_array_equal(out, expected)


def test_cell_to_tissue_area_downsample_and_zero_pad():
    c = np.random.default_rng(1).uniform(size=(24, 40)).astype(np.float32)
    p = Placement(8, 4, 10, 6, (40, 24), (40, 30))
    out = cell_to_tissue_np(c, p, mode="area")
    expected = c.reshape(6, 4, 10, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(out[4:10, 8:18], expected, atol=1e-5)
    outside = np.ones_like(out, bool)
    outside[4:10, 8:18] = False
    assert np.abs(out[outside]).max() < 1e-5


def test_round_trip_tissue_cell_tissue_smooth_map():
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    smooth = np.sin(xx / 9) + np.cos(yy / 7)
    p = Placement.from_centre((0.45, 0.5), (128, 128), (64, 64), 0.2, 0.8)
    back = cell_to_tissue_np(tissue_to_cell_np(smooth, p), p)
    x0, y0, x1, y1 = p.window_int()
    inner = (slice(y0 + 1, y1 - 1), slice(x0 + 1, x1 - 1))
    np.testing.assert_allclose(back[inner], smooth[inner], atol=0.05)


def test_window_crossing_border_gets_fill():
    t = np.full((20, 20), 2, np.uint8)
    p = Placement(-5, -5, 10, 10, (20, 20), (20, 20))  # top-left quarter is outside
    out = tissue_to_cell_np(t, p, mode="nearest", fill=255)
    assert np.all(out[:10, :10] == 255) and np.all(out[10:, 10:] == 2)


def test_batched_per_sample_windows_match_single_calls():
    rng = np.random.default_rng(3)
    maps = torch.from_numpy(rng.uniform(size=(3, 5, 16, 16)).astype(np.float32))
    ps = [Placement.from_centre(c, (32, 32), (64, 64), 0.2, 0.8) for c in [(0.2, 0.3), (0.5, 0.5), (0.8, 0.7)]]
    batched = tissue_to_cell(maps, ps, (8, 8))
    for i, p in enumerate(ps):
        single = tissue_to_cell(maps[i:i + 1], window_tensor([p]), (8, 8))
        torch.testing.assert_close(batched[i:i + 1], single)
    down = cell_to_tissue(batched, ps, (16, 16))
    assert down.shape == (3, 5, 16, 16)
    # feature maps at any stride: same fractions, smaller maps
    assert tissue_to_cell(maps[:, :, ::2, ::2], ps, (4, 4)).shape == (3, 5, 4, 4)


def test_flip_and_rotate_placement_follow_content():
    rng = np.random.default_rng(5)
    tissue = rng.uniform(size=(60, 80)).astype(np.float32)
    p = Placement(13.0, 7.0, 20.0, 12.0, (40, 24), (80, 60))
    crop = tissue_to_cell_np(tissue, p, mode="nearest")
    f = p.flipped_lr()
    np.testing.assert_array_equal(tissue_to_cell_np(tissue[:, ::-1].copy(), f, mode="nearest"), crop[:, ::-1])
    for k in range(1, 4):
        r = p.rot90(k)
        got = tissue_to_cell_np(np.rot90(tissue, k).copy(), r, mode="nearest")
        np.testing.assert_array_equal(got, np.rot90(crop, k))


def test_placement_dict_round_trip():
    p = Placement(1.5, 2.5, 3.0, 4.0, (12, 16), (30, 40))
    assert Placement.from_dict(json.loads(json.dumps(p.to_dict()))) == p
