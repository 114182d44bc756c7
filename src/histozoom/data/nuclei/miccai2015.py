"""MICCAI 2015 (CPM) nuclei segmentation release: ``imageXX.png`` with a text mask ``imageXX_mask.txt``.

A text mask has the first line ``width height``, then ``width * height`` labels, one per
line, in row-major order (x fastest: pixel (0,0), (1,0), ... (width-1, height-1)). In the
released training set the masks of ``image04`` and ``image05`` are swapped (see
:data:`MICCAI2015_SWAPPED`). Instances only (no classes).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ...errors import InputError
from ..checks import excerpt
from ..io import read_rgb
from .records import NucleiSample, check_instance_map, format_wh

__all__ = ["MICCAI2015_SWAPPED", "read_miccai_mask", "read_miccai2015"]

MICCAI2015_SWAPPED: dict[str, str] = {"image04": "image05", "image05": "image04"}
"""Known swap in the MICCAI 2015 training release: image04's mask is ``image05_mask.txt`` and
vice versa (only their shapes match crosswise, and the nuclei then lie on dark pixels)."""


def read_miccai_mask(path: str | Path) -> np.ndarray:
    """A MICCAI 2015 text mask as ``(H, W)`` int32.

    Layout: first line ``width height``; then exactly ``width * height`` integer labels
    (whitespace separated, one per line in the release) in row-major order, x fastest.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        with open(path, "rb") as fh:
            header = fh.readline().split()
            body = fh.read()
    except OSError as e:
        raise InputError(path, f"cannot read ({e})") from e
    try:
        w, h = (int(t) for t in header)
    except ValueError:
        raise InputError(path, f"first line must be 'width height', got {excerpt(b' '.join(header))}", row=1) from None
    if w <= 0 or h <= 0:
        raise InputError(path, f"bad size {w}x{h} in the header", row=1)
    tokens = body.split()
    if len(tokens) != w * h:
        raise InputError(path, f"header says {w}x{h} = {w * h} pixels but the file holds {len(tokens)} labels")
    try:
        labels = np.array(tokens, dtype=np.int64)
    except ValueError:
        raise InputError(path, "labels must be integers") from None
    return check_instance_map(labels.reshape(h, w), path)


def read_miccai2015(
    image_path: str | Path,
    mask_path: str | Path | None = None,
    *,
    fix_swapped: bool = False,
    swapped: Mapping[str, str] = MICCAI2015_SWAPPED,
) -> NucleiSample:
    """A MICCAI 2015 image (``imageXX.png``) with its text mask (``imageXX_mask.txt`` beside it).

    The mask's shape must match the image, else :class:`InputError` naming both files.
    ``fix_swapped=True`` handles the release's 04/05 swap: when the image's stem is in
    ``swapped`` and its own mask does not fit but the partner's mask
    (``swapped[stem] + "_mask.txt"``) does, the partner's mask is used; a copy that was
    already corrected (own mask fits) is read as it is. ``meta["mask_path"]`` names the
    mask actually used. Instances only (no classes).
    """
    image_path = Path(image_path)
    stem = image_path.stem
    image = read_rgb(image_path)
    own = Path(mask_path) if mask_path is not None else image_path.with_name(f"{stem}_mask.txt")
    inst = read_miccai_mask(own)
    used = own
    if inst.shape != image.shape[:2] and fix_swapped and stem in swapped:
        partner = own.with_name(f"{swapped[stem]}_mask.txt")
        if partner.is_file():
            alt = read_miccai_mask(partner)
            if alt.shape == image.shape[:2]:
                inst, used = alt, partner
    if inst.shape != image.shape[:2]:
        hint = ""
        if stem in swapped and not fix_swapped:
            hint = (f" (known swap in the MICCAI 2015 release: {stem}'s mask is "
                    f"{swapped[stem]}_mask.txt; pass fix_swapped=True)")
        elif stem in swapped:
            hint = f" (nor does {swapped[stem]}_mask.txt)"
        raise InputError(
            used, f"mask is {format_wh(inst.shape)} px but its image {image_path} is {format_wh(image.shape)} px{hint}"
        )
    return NucleiSample(stem, image, inst, None, None, None, used,
                        {"image_path": str(image_path), "mask_path": str(used), "swap_fixed": used != own})
