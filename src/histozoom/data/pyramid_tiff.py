"""Pyramidal tiled TIFF writer for synthetic whole-slide images (what OpenSlide reads).

:func:`write_pyramid_tiff` draws level 0 strip by strip through a ``render_block(r0, r1,
c0, c1)`` callback and writes one tiled page per level:

* **Level 0**: ``width × height`` px at ``mpp`` µm/px; pixel ``(row, col)`` spans ``[col,
  col + 1) × [row, row + 1)``. Blocks are ``strip_rows × block_cols`` (multiples of
  :data:`TILE`), so every block starts on a TIFF tile corner; the last row / column of
  blocks is cut at the slide edge.
* **Lower levels**: 2×2 means (rounded) of the level above, odd sides repeating their last
  row / column, ×2 down to the first level whose longest side is under
  :data:`MIN_LEVEL_SIDE`; they go through memory-mapped scratch files next to the output.
* **Format**: :data:`TILE` px tiles, deflate (level 1) with a horizontal predictor, an
  Aperio-style ImageDescription (``MPP`` and ``AppMag = 10 / mpp``) so that OpenSlide's
  Aperio reader reports ``openslide.mpp-x`` / ``-y``; BigTIFF when the pyramid exceeds 2 GiB.

Memory: one strip of uint8 RGB plus whatever ``render_block`` needs for one block.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..errors import ConfigError, InputError

__all__ = ["DESCRIPTION_HEAD", "IMAGE_SUFFIXES", "MIN_LEVEL_SIDE", "TILE", "aperio_description", "check_blocks",
           "level_sizes", "slide_stem", "write_pyramid_tiff"]

TILE = 256
"""TIFF tile side (px); drawing blocks are multiples of it."""
MIN_LEVEL_SIDE = 1024
"""The pyramid stops at the first level whose longest side is under this."""
DESCRIPTION_HEAD = "Aperio Image Library histozoom"
"""First line of the ImageDescription (OpenSlide's Aperio reader keys on ``Aperio``)."""

IMAGE_SUFFIXES = (".tif", ".tiff", ".svs")
"""Names a synthetic slide may have."""

RenderBlock = Callable[[int, int, int, int], np.ndarray]
"""``render_block(r0, r1, c0, c1)``: the ``(r1 - r0, c1 - c0, 3)`` uint8 RGB of level-0 rows
``[r0, r1)`` and columns ``[c0, c1)``."""


def check_blocks(strip_rows: int, block_cols: int, who: str = "write_pyramid_tiff") -> None:
    """Raise :class:`ConfigError` unless both drawing-block sides are positive multiples of :data:`TILE`."""
    for name, v in (("strip_rows", strip_rows), ("block_cols", block_cols)):
        if not (isinstance(v, int) and v > 0 and v % TILE == 0):
            raise ConfigError(f"{who}: {name} must be a positive multiple of {TILE}, got {v!r}")


def slide_stem(out_path: str | Path) -> Path:
    """``OUT`` of a slide named ``OUT.tiff`` (or ``.tif`` / ``.svs``; anything else is an
    :class:`InputError`): the ground truth written next to it is named ``OUT.*``."""
    p = Path(out_path)
    if p.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputError(p, f"the slide must be named *{' / *'.join(IMAGE_SUFFIXES)}")
    return p.with_suffix("")


def level_sizes(width: int, height: int) -> list[tuple[int, int]]:
    """``(width, height)`` of every pyramid level, level 0 first."""
    sizes = [(width, height)]
    while max(sizes[-1]) >= MIN_LEVEL_SIDE:
        sizes.append((-(-sizes[-1][0] // 2), -(-sizes[-1][1] // 2)))
    return sizes


def aperio_description(width: int, height: int, mpp: float, size: tuple[int, int] | None = None,
                       head: str = DESCRIPTION_HEAD) -> str:
    """Aperio-style ImageDescription of a ``width × height`` level-0 slide (``size``: this page's
    size when it is a lower level): OpenSlide's Aperio reader takes ``MPP`` and ``AppMag`` from it."""
    text = f"{head}\r\n{width}x{height} [0,0 {width}x{height}] ({TILE}x{TILE})"
    if size is not None:
        text += f" -> {size[0]}x{size[1]}"
    return f"{text} Deflate/RGB|AppMag = {10.0 / mpp:g}|MPP = {float(mpp)!r}"


def _halve(a: np.ndarray) -> np.ndarray:
    """2×2 block mean (rounded) of an ``(H, W, 3)`` uint8 image; odd sides repeat their last row/column."""
    h, w = a.shape[:2]
    a = np.pad(a, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge").astype(np.uint16)
    s = a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]
    return ((s + 2) // 4).astype(np.uint8)


def _halve_into(src: np.ndarray, dst: np.ndarray, rows: int = 8 * TILE) -> None:
    for r in range(0, src.shape[0], rows):
        half = _halve(src[r:r + rows])
        dst[r // 2:r // 2 + len(half)] = half


def _level0_tiles(width: int, height: int, render_block: RenderBlock, strip_rows: int, block_cols: int,
                  level1: np.ndarray | None) -> Iterator[np.ndarray]:
    """Level-0 tiles in TIFF order, drawn strip by strip (blocks of ``block_cols``); each
    strip's 2×2 reduction goes into ``level1``."""
    for r0 in range(0, height, strip_rows):
        r1 = min(r0 + strip_rows, height)
        strip = np.empty((r1 - r0, width, 3), np.uint8)
        for c0 in range(0, width, block_cols):
            c1 = min(c0 + block_cols, width)
            strip[:, c0:c1] = render_block(r0, r1, c0, c1)
        if level1 is not None:
            half = _halve(strip)
            level1[r0 // 2:r0 // 2 + len(half)] = half
        for y in range(0, r1 - r0, TILE):
            for x in range(0, width, TILE):
                yield strip[y:y + TILE, x:x + TILE]


def write_pyramid_tiff(path: str | Path, width: int, height: int, mpp: float, render_block: RenderBlock, *,
                       strip_rows: int = 2 * TILE, block_cols: int = 8 * TILE,
                       description_head: str = DESCRIPTION_HEAD) -> list[tuple[int, int]]:
    """Write the pyramid of a ``width × height`` level-0 image drawn by ``render_block`` to
    ``path`` (atomically: a temporary name, renamed when complete) and return the level
    sizes ``[(width, height), ...]``; see the module docstring for the format."""
    import tifffile

    check_blocks(strip_rows, block_cols)
    sizes = level_sizes(width, height)
    bigtiff = 3 * sum(a * b for a, b in sizes) > 2**31
    opts = {"tile": (TILE, TILE), "photometric": "rgb", "compression": "zlib", "compressionargs": {"level": 1},
            "predictor": 2, "metadata": None, "software": "histozoom"}
    with atomic_path(Path(path)) as tmp, \
            tempfile.TemporaryDirectory(dir=tmp.parent, prefix=f".{tmp.name}.") as scratch, \
            tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tif:
        levels = [np.lib.format.open_memmap(Path(scratch) / f"level{k}.npy", mode="w+", dtype=np.uint8,
                                            shape=(hk, wk, 3)) for k, (wk, hk) in enumerate(sizes) if k]
        tiles = _level0_tiles(width, height, render_block, strip_rows, block_cols, levels[0] if levels else None)
        tif.write(tiles, shape=(height, width, 3), dtype=np.uint8,
                  description=aperio_description(width, height, mpp, head=description_head), **opts)
        for k, arr in enumerate(levels):
            if k + 1 < len(levels):
                _halve_into(arr, levels[k + 1])
            tif.write(arr, subfiletype=1, description=aperio_description(width, height, mpp, sizes[k + 1],
                                                                         description_head), **opts)
    return sizes
