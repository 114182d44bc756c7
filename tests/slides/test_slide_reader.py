"""Slide reading at a requested µm/px: the best level, then an exact resize."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from histozoom.errors import InputError
from histozoom.slides.reader import ArraySlide, open_slide

MPP0 = 0.25


def _pyramid(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    base = np.asarray(Image.fromarray(rng.integers(0, 255, (50, 60, 3), dtype=np.uint8)).resize((480, 400), Image.BILINEAR))
    levels = [base]
    for _ in range(2):
        h, w = levels[-1].shape[:2]
        levels.append(levels[-1].reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3)).round().astype(np.uint8))
    return levels


def test_best_level_is_the_coarsest_at_least_as_fine():
    s = ArraySlide(_pyramid(), MPP0)
    assert s.level_downsamples == [1.0, 2.0, 4.0]
    assert [s.best_level(m) for m in (0.1, 0.25, 0.4, 0.5, 0.8, 1.0, 5.0)] == [0, 0, 0, 1, 1, 2, 2]


def test_read_at_a_level_mpp_is_a_crop_of_that_level():
    levels = _pyramid()
    s = ArraySlide(levels, MPP0)
    np.testing.assert_array_equal(s.read(40, 80, 50, 30, 0.5), levels[1][40:70, 20:70])
    np.testing.assert_array_equal(s.read(0, 0, 480, 400, MPP0), levels[0])


@pytest.mark.parametrize(("x", "y", "mpp"), [(40.0, 80.0, 0.75), (13.0, 7.0, 0.4), (100.0, 60.0, 1.5)])
def test_read_between_levels_equals_a_direct_read_and_resize(x, y, mpp):
    """Against reading the chosen level directly and resizing with Pillow over the same box."""
    levels = _pyramid()
    s = ArraySlide(levels, MPP0)
    w, h = 40, 30
    level = s.best_level(mpp)
    ds = 2**level
    box = (x / ds, y / ds, (x + w * mpp / MPP0) / ds, (y + h * mpp / MPP0) / ds)
    expected = np.asarray(Image.fromarray(levels[level]).resize((w, h), Image.BILINEAR, box=box))
    got = s.read(x, y, w, h, mpp)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1  # the same pixels, up to rounding
    # and close to a resize of the full-resolution level (the pyramid is a block mean)
    full_box = (x, y, x + w * mpp / MPP0, y + h * mpp / MPP0)
    ref = np.asarray(Image.fromarray(levels[0]).resize((w, h), Image.BILINEAR, box=full_box))
    assert np.abs(got.astype(float) - ref).mean() < 4


def test_outside_the_slide_is_white():
    s = ArraySlide(_pyramid(), MPP0)
    a = s.read(-20, -10, 40, 30, MPP0)
    assert (a[:10] == 255).all() and (a[:, :20] == 255).all()
    np.testing.assert_array_equal(a[10:, 20:], s.levels[0][:20, :20])


def test_real_svs_opens_with_its_mpp(shared_data):
    path = shared_data / "wsi" / "CMU-1-Small-Region.svs"
    if not path.is_file():
        pytest.skip("no CMU-1-Small-Region.svs")
    with open_slide(path) as s:
        assert s.mpp == pytest.approx(0.499)
        assert s.dimensions == (2220, 2967)
        a = s.read(500, 500, 64, 48, 1.0)
        assert a.shape == (48, 64, 3) and a.dtype == np.uint8
        b = s.read_level(0, 500, 500, 128, 96)
        ref = np.asarray(Image.fromarray(b).resize((64, 48), Image.BILINEAR, box=(0, 0, 128, 96)))
        assert np.abs(a.astype(int) - ref.astype(int)).max() <= 1


def test_bad_slides_are_named_errors(tmp_path, shared_data):
    (tmp_path / "not_a_slide.svs").write_bytes(b"hello" * 100)
    with pytest.raises(InputError, match=r"not_a_slide\.svs.*cannot open as a slide"):
        open_slide(tmp_path / "not_a_slide.svs")
    with pytest.raises(InputError, match=r"missing\.svs.*not found"):
        open_slide(tmp_path / "missing.svs")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "plain.png")
    with pytest.raises(InputError, match=r"plain\.png.*--mpp"):
        open_slide(tmp_path / "plain.png")
    assert open_slide(tmp_path / "plain.png", mpp=0.5).dimensions == (8, 8)
    svs = shared_data / "wsi" / "CMU-1-Small-Region.svs"
    if svs.is_file():
        cut = tmp_path / "truncated.svs"
        cut.write_bytes(svs.read_bytes()[:20000])
        with pytest.raises(InputError, match=r"truncated\.svs"), open_slide(cut) as s:
            s.read(0, 0, 2000, 2000, 0.5)
    dcm = shared_data / "wsi" / "small_dicom_pathml.dcm"
    if dcm.is_file():  # opens, or a clear error naming it
        try:
            with open_slide(dcm, mpp=0.5) as s:
                assert s.dimensions[0] > 0
        except InputError as e:
            assert "small_dicom_pathml.dcm" in str(e)
