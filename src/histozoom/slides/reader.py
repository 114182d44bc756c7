"""Whole-slide images read at a requested µm/px.

Frames: *level-0 pixels* are the slide's full-resolution grid, continuous coordinates
with ``(0, 0)`` the top-left corner of the top-left pixel (so pixel ``i`` spans
``[i, i + 1)``). A region read at ``mpp`` is an image whose pixel ``(r, c)`` covers
level-0 ``[x + c·s, x + (c + 1)·s) × [y + r·s, y + (r + 1)·s)`` with ``s = mpp / mpp0``
(``mpp0``: the slide's level-0 µm/px). Points handed out by the slide runner use pixel
*centres* (the centre of pixel ``i`` is ``i``), as everywhere in histozoom.

Readers:

* :class:`OpenSlideSlide` — SVS, NDPI, MRXS, SCN, Philips/generic tiled TIFF, DICOM, …
  through OpenSlide (thread-safe; it releases the GIL while decoding).
* :class:`ArraySlide` — a virtual slide over NumPy arrays (one per level), for tests and
  for plain images (:func:`open_slide` reads PNG/JPEG/small TIFF into one).

:meth:`Slide.read` picks the coarsest level that is at least as fine as ``mpp`` (within
0.1 %), reads the covering box there and resizes it (Pillow, antialiased bilinear) to the
exact output grid; outside the slide is white (glass).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError

__all__ = ["ArraySlide", "OpenSlideSlide", "Slide", "open_slide", "PLAIN_IMAGE_EXTS"]

PLAIN_IMAGE_EXTS = (".png", ".jpg", ".jpeg")
"""Plain images, read whole as one-level slides (they need ``mpp``)."""
LEVEL_TOLERANCE = 1e-3
MPP_RANGE = (0.01, 100.0)


def _check_mpp(path, mpp: float, what: str) -> float:
    if not (isinstance(mpp, (int, float)) and math.isfinite(mpp) and MPP_RANGE[0] <= mpp <= MPP_RANGE[1]):
        raise InputError(path, f"{what} {mpp!r} µm/px is not in [{MPP_RANGE[0]}, {MPP_RANGE[1]}]")
    return float(mpp)


class Slide(ABC):
    """A pyramid of levels; level 0 at :attr:`mpp` µm/px."""

    path: Path
    mpp: float
    level_dimensions: list[tuple[int, int]]
    """``(width, height)`` of each level, finest first."""

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_downsamples(self) -> list[float]:
        w0 = self.level_dimensions[0][0]
        return [w0 / w for w, _ in self.level_dimensions]

    def level_mpp(self, level: int) -> float:
        return self.mpp * self.level_downsamples[level]

    def best_level(self, mpp: float) -> int:
        """The coarsest level at least as fine as ``mpp`` (level 0 if none is)."""
        best = 0
        for k in range(len(self.level_dimensions)):
            if self.level_mpp(k) <= mpp * (1 + LEVEL_TOLERANCE):
                best = k
        return best

    @abstractmethod
    def read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """``(height, width, 3)`` uint8 RGB of a box of level ``level`` whose top-left
        corner is level-**0** pixel ``(x, y)``; white outside the slide."""

    def read(self, x: float, y: float, width: int, height: int, mpp: float) -> np.ndarray:
        """``(height, width, 3)`` uint8: the region at ``mpp`` µm/px whose top-left corner is
        level-0 ``(x, y)`` (see the module docstring for the frame)."""
        level = self.best_level(mpp)
        ds = self.level_downsamples[level]
        s = mpp / self.mpp  # level-0 px per output px
        # the box in level pixels (continuous), then the integer box that covers it (+1 px)
        lx0, ly0 = x / ds, y / ds
        lx1, ly1 = (x + width * s) / ds, (y + height * s) / ds
        ix0, iy0 = math.floor(lx0) - 1, math.floor(ly0) - 1
        ix1, iy1 = math.ceil(lx1) + 1, math.ceil(ly1) + 1
        if abs(s / ds - 1) < 1e-9 and float(lx0).is_integer() and float(ly0).is_integer():
            return self.read_level(level, round(lx0 * ds), round(ly0 * ds), width, height)  # exact crop
        box = self.read_level(level, round(ix0 * ds), round(iy0 * ds), ix1 - ix0, iy1 - iy0)
        img = Image.fromarray(box).resize((width, height), Image.Resampling.BILINEAR,
                                          box=(lx0 - ix0, ly0 - iy0, lx1 - ix0, ly1 - iy0))
        return np.asarray(img)

    def thumbnail(self, mpp: float) -> np.ndarray:
        """The whole slide at ``mpp`` (coarser than level 0 for a thumbnail)."""
        w0, h0 = self.dimensions
        s = mpp / self.mpp
        return self.read(0.0, 0.0, max(1, round(w0 / s)), max(1, round(h0 / s)), mpp)

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ArraySlide(Slide):
    """A virtual slide: ``levels`` are ``(H, W, 3)`` uint8 arrays, finest first, each a
    whole-number downsample of level 0 (``W0 / W``); ``mpp`` is level 0's µm/px."""

    def __init__(self, levels: list[np.ndarray] | np.ndarray, mpp: float, path: str | Path = "<array>"):
        levels = [levels] if isinstance(levels, np.ndarray) else list(levels)
        self.path = Path(path)
        self.mpp = _check_mpp(self.path, mpp, "mpp")
        for a in levels:
            if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
                raise InputError(self.path, f"slide levels must be (H, W, 3) uint8, got {a.shape} {a.dtype}")
        self.levels = levels
        self.level_dimensions = [(a.shape[1], a.shape[0]) for a in levels]

    def read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        a = self.levels[level]
        ds = self.level_downsamples[level]
        lx, ly = math.floor(x / ds), math.floor(y / ds)
        out = np.full((height, width, 3), 255, np.uint8)
        r0, c0 = max(ly, 0), max(lx, 0)
        r1, c1 = min(ly + height, a.shape[0]), min(lx + width, a.shape[1])
        if r1 > r0 and c1 > c0:
            out[r0 - ly:r1 - ly, c0 - lx:c1 - lx] = a[r0:r1, c0:c1]
        return out


class OpenSlideSlide(Slide):
    """A slide read by OpenSlide. ``mpp`` overrides (or supplies) the file's µm/px."""

    def __init__(self, path: str | Path, mpp: float | None = None):
        import openslide

        self.path = Path(path)
        try:
            self._osr = openslide.OpenSlide(str(self.path))
        except (openslide.OpenSlideError, OSError, ValueError) as e:
            raise InputError(self.path, f"cannot open as a slide ({type(e).__name__}: {e})") from None
        props = self._osr.properties
        file_mpp = props.get(openslide.PROPERTY_NAME_MPP_X)
        if mpp is None:
            if file_mpp is None:
                self.close()
                raise InputError(self.path, "the slide has no µm/px (MPP) metadata; give it with --mpp")
            try:
                mpp = float(file_mpp)
            except ValueError:
                self.close()
                raise InputError(self.path, f"unreadable MPP metadata {file_mpp!r}; give it with --mpp") from None
        self.mpp = _check_mpp(self.path, mpp, "mpp")
        self.file_mpp = None if file_mpp is None else float(file_mpp)
        self.vendor = props.get(openslide.PROPERTY_NAME_VENDOR)
        self.level_dimensions = [tuple(d) for d in self._osr.level_dimensions]
        self._exact_downsamples = list(self._osr.level_downsamples)

    @property
    def level_downsamples(self) -> list[float]:
        return self._exact_downsamples

    def read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        import openslide

        try:
            rgba = self._osr.read_region((int(x), int(y)), level, (int(width), int(height)))
        except openslide.OpenSlideError as e:
            raise InputError(self.path, f"cannot read the slide at level {level}, ({x}, {y}) "
                                        f"{width}x{height} ({e})") from None
        a = np.asarray(rgba)
        alpha = a[..., 3:4]
        if alpha.min() == 255:
            return np.ascontiguousarray(a[..., :3])
        # (non-premultiplied) RGBA over white: transparent (outside the scanned area) is glass
        rgb, al = a[..., :3].astype(np.uint32), alpha.astype(np.uint32)
        return ((rgb * al + 255 * (255 - al) + 127) // 255).astype(np.uint8)

    def close(self) -> None:
        osr = getattr(self, "_osr", None)
        if osr is not None:
            osr.close()
            self._osr = None


def open_slide(path: str | Path, mpp: float | None = None) -> Slide:
    """The slide at ``path``: a plain image (PNG/JPEG, needs ``mpp``) as a one-level
    :class:`ArraySlide`, anything else through OpenSlide. Errors name the file."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "slide not found")
    if path.is_dir() and path.suffix.lower() != ".mrxs":
        raise InputError(path, "is a folder, not a slide")
    if path.suffix.lower() in PLAIN_IMAGE_EXTS:
        from ..data.io import read_rgb

        if mpp is None:
            raise InputError(path, "a plain image has no µm/px metadata; give it with --mpp")
        return ArraySlide(read_rgb(path), mpp, path)
    return OpenSlideSlide(path, mpp)
