"""The stitched tissue-probability map of a slide, on disk (a memory map, float16).

The map holds the tissue branch's softmax ``(C, H, W)`` at the tissue view's µm/px over a
level-0 box: map pixel ``(r, c)`` covers level-0 ``[x0 + c·s, x0 + (c+1)·s) × …`` with
``s`` = level-0 px per map px. Tissue tiles write their central parts
(:meth:`TissueMap.write_core`); each cell tile then takes its window
(:meth:`TissueMap.window`) and hands it to the model as the tissue prediction, located by
window fractions exactly as in training (:func:`histozoom.geometry.tissue_to_cell`).
Memory stays bounded: only the pages a tile touches are resident.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

__all__ = ["TissueMap"]


class TissueMap:
    """``channels``×``height``×``width`` float16 map in the file ``path`` (created zero-filled
    unless it exists with that size, as on resume)."""

    def __init__(self, path: str | Path, channels: int, height: int, width: int, origin: tuple[float, float],
                 scale: float):
        self.path = Path(path)
        self.origin, self.scale = (float(origin[0]), float(origin[1])), float(scale)
        shape = (int(channels), int(height), int(width))
        nbytes = int(np.prod(shape)) * 2
        mode = "r+" if self.path.is_file() and self.path.stat().st_size == nbytes else "w+"
        self.data = np.memmap(self.path, dtype=np.float16, mode=mode, shape=shape)

    def spec(self) -> dict:
        """The arguments that open this map again (``TissueMap(**spec)``), in any process."""
        c, h, w = self.shape
        return {"path": str(self.path), "channels": c, "height": h, "width": w, "origin": self.origin, "scale": self.scale}

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.data.shape  # type: ignore[return-value]

    def write_core(self, row: int, col: int, core: np.ndarray) -> None:
        """Put ``core`` ``(C, h, w)`` with its top-left at map pixel ``(row, col)`` (clipped)."""
        _, h, w = self.shape
        ch, cw = core.shape[1:]
        r1, c1 = min(h, row + ch), min(w, col + cw)
        if r1 > row and c1 > col:
            self.data[:, row:r1, col:c1] = core[:, : r1 - row, : c1 - col]

    def flush(self) -> None:
        self.data.flush()

    def window(self, x: float, y: float, width: float, height: float,
               pad: int = 2) -> tuple[np.ndarray, tuple[float, float, float, float]]:
        """The map around the level-0 box ``(x, y, width, height)``: a float32 crop
        ``(C, h, w)`` with at least ``pad`` map px of context on each side (zeros outside the
        map; boxes of one size give crops of one size)
        and the box's window fractions ``(x0, y0, w, h)`` in that crop."""
        c, mh, mw = self.shape
        u0, v0 = (x - self.origin[0]) / self.scale, (y - self.origin[1]) / self.scale
        u1, v1 = u0 + width / self.scale, v0 + height / self.scale
        a0, b0 = math.floor(u0) - pad, math.floor(v0) - pad
        a1 = a0 + math.ceil(width / self.scale) + 2 * pad + 1  # one crop size per box size
        b1 = b0 + math.ceil(height / self.scale) + 2 * pad + 1
        crop = np.zeros((c, b1 - b0, a1 - a0), np.float32)
        r0, q0 = max(b0, 0), max(a0, 0)
        r1, q1 = min(b1, mh), min(a1, mw)
        if r1 > r0 and q1 > q0:
            crop[:, r0 - b0:r1 - b0, q0 - a0:q1 - a0] = self.data[:, r0:r1, q0:q1]
        cw, chh = a1 - a0, b1 - b0
        return crop, ((u0 - a0) / cw, (v0 - b0) / chh, (u1 - u0) / cw, (v1 - v0) / chh)

    def argmax_at(self, xy: np.ndarray) -> np.ndarray:
        """Channel of the largest probability at level-0 pixel centres ``xy`` ``(N, 2)``;
        -1 outside the map or where it is empty (never written)."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        c, mh, mw = self.shape
        col = np.floor((xy[:, 0] + 0.5 - self.origin[0]) / self.scale).astype(np.int64)
        row = np.floor((xy[:, 1] + 0.5 - self.origin[1]) / self.scale).astype(np.int64)
        inside = (col >= 0) & (col < mw) & (row >= 0) & (row < mh)
        out = np.full(len(xy), -1, np.int64)
        if inside.any():
            v = np.asarray(self.data[:, row[inside], col[inside]], dtype=np.float32)  # (C, n)
            k = np.argmax(v, axis=0)
            k[v.max(axis=0) <= 0] = -1
            out[inside] = k
        return out

    def coarse_argmax(self, factor: int, strip: int = 64) -> np.ndarray:
        """Per block of ``factor``×``factor`` map px: the channel of the largest mean
        probability (-1 where the map was never written); read in strips of ``strip``
        block rows, so memory does not grow with the map."""
        c, mh, mw = self.shape
        f = max(1, int(factor))
        rows, cols = math.ceil(mh / f), math.ceil(mw / f)
        out = np.full((rows, cols), -1, np.int8)
        for r0 in range(0, rows, strip):
            r1 = min(rows, r0 + strip)
            block = np.zeros((c, (r1 - r0) * f, cols * f), np.float32)
            src = self.data[:, r0 * f:min(mh, r1 * f)]
            block[:, :src.shape[1], :mw] = src
            mean = block.reshape(c, r1 - r0, f, cols, f).mean(axis=(2, 4))
            k = mean.argmax(axis=0).astype(np.int8)
            k[mean.max(axis=0) <= 0] = -1
            out[r0:r1] = k
        return out

    def close(self) -> None:
        self.flush()
        del self.data
