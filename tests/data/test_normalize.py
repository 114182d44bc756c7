"""Input normalisation: percentile scaling and Macenko stains fitted on the tissue view."""

from __future__ import annotations

import numpy as np
import pytest
from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

from conftest import make_pair
from histozoom.data.normalize import normalize_image, normalize_pair, percentile_scale
from histozoom.data.synthetic import SynthConfig, generate_pair


def test_percentile_scaling_maps_1st_and_99th_percentiles_to_0_and_255():
    rng = np.random.default_rng(0)
    img = np.stack([rng.integers(40, 90, (50, 60)), rng.integers(100, 200, (50, 60)),
                    np.full((50, 60), 7)], axis=-1).astype(np.uint8)
    out = percentile_scale(img)
    for c in range(2):
        lo, hi = np.percentile(img[..., c], [1, 99])
        want = np.clip(np.rint((img[..., c].astype(np.float64) - lo) / (hi - lo) * 255), 0, 255)
        assert np.abs(out[..., c].astype(int) - want).max() <= 1
        assert out[..., c].min() == 0 and out[..., c].max() == 255
    assert np.array_equal(out[..., 2], img[..., 2])  # a constant channel is left alone
    assert np.array_equal(normalize_image(img, "percentile"), out)
    with pytest.raises(ValueError, match="one view alone"):
        normalize_image(img, "macenko")


def test_macenko_uses_the_tissue_views_stains_for_both_views():
    pair = generate_pair(SynthConfig(preset="context", cell_size=128, tissue_size=128, cell_mpp=0.4, tissue_mpp=1.6),
                         np.random.default_rng(3), "000")
    out = normalize_pair(pair, "macenko")
    # the tissue view alone: exactly what torchstain's own normalize gives it
    ref = NumpyMacenkoNormalizer().normalize(pair.tissue_image, Io=240, alpha=1, beta=0.15, stains=False)[0]
    assert np.abs(out.tissue_image.astype(int) - ref.astype(int)).max() <= 1
    # the cell view with the tissue view's stain estimate, not its own
    own = NumpyMacenkoNormalizer().normalize(pair.cell_image, Io=240, alpha=1, beta=0.15, stains=False)[0]
    assert not np.array_equal(out.cell_image, own)
    assert out.cell_image.shape == pair.cell_image.shape and out.cell_image.dtype == np.uint8
    assert out.placement == pair.placement and out.cell_points is pair.cell_points


def test_macenko_leaves_blank_pairs_unchanged():
    pair = make_pair(np.random.default_rng(0))
    blank = pair.replace(tissue_image=np.full_like(pair.tissue_image, 250))
    assert normalize_pair(blank, "macenko") is blank
    assert normalize_pair(pair, "none") is pair
