"""``patch_x_offset/patch_y_offset`` (the cell window's centre as fractions of the tissue
image) are accepted in [0, 1] — the window may touch or cross the border, as the README
says — and rejected (naming the file and sample) when NaN, infinite or outside."""

import json

import numpy as np
import pytest

from conftest import make_pair
from histozoom.data.gc_container import GrandChallengeContainer, write_container
from histozoom.data.ocelot_release import OcelotRelease, OcelotReleaseWriter
from histozoom.errors import InputError


@pytest.fixture
def pairs():
    return [make_pair(np.random.default_rng(0))]


def _release(tmp_path, pair, **offsets):
    with OcelotReleaseWriter(tmp_path) as w:
        w.add(pair, "train", image_ext=".png")
    meta = json.loads((tmp_path / "metadata.json").read_text())
    meta["sample_pairs"]["000"].update(offsets)
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    return OcelotRelease(tmp_path)


def _container(tmp_path, pair, **offsets):
    write_container(tmp_path, [pair])
    meta = json.loads((tmp_path / "metadata.json").read_text())
    meta[0].update(offsets)
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    return GrandChallengeContainer(tmp_path)


def _load(kind, tmp_path, pair, **offsets):
    if kind == "release":
        return _release(tmp_path, pair, **offsets).split("train")[0]
    return _container(tmp_path, pair, **offsets)[0]


@pytest.mark.parametrize("kind", ["release", "container"])
@pytest.mark.parametrize(("ox", "oy"), [(0.0, 0.0), (1.0, 1.0), (1.0, 0.5), (0.0, 1.0), (0.98, 0.02)])
def test_offsets_at_and_near_the_border_are_accepted(tmp_path, pairs, kind, ox, oy):
    pair = _load(kind, tmp_path, pairs[0], patch_x_offset=ox, patch_y_offset=oy)
    assert pair.placement.centre_frac == pytest.approx((ox, oy))
    x0, y0, x1, y1 = pair.placement.window_int()
    tw, th = pair.placement.tissue_size
    if ox in (0.0, 1.0):  # the window crosses the border
        assert x0 < 0 or x1 > tw
    assert pair.cell_image.shape[:2] == pairs[0].cell_image.shape[:2] and th > 0


@pytest.mark.parametrize("kind", ["release", "container"])
@pytest.mark.parametrize(("key", "value"), [("patch_x_offset", 1.0001), ("patch_y_offset", -0.01), ("patch_x_offset", "nan"),
                                            ("patch_y_offset", "inf"), ("patch_x_offset", "-inf"), ("patch_y_offset", 5)])
def test_offsets_outside_or_not_finite_are_rejected(tmp_path, pairs, kind, key, value):
    with pytest.raises(InputError, match=rf"metadata\.json: sample 000: {key} .* must be a number in \[0, 1\]"):
        _load(kind, tmp_path, pairs[0], **{key: value})
