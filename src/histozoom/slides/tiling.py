"""Where a slide run reads: the views' resolutions and sizes, and tile grids with exact seams.

:class:`SlideSettings` says at which µm/px each branch reads, the tile sizes and margins
(one validated object, read from the checkpoint, so a slide run needs nothing else).

:class:`TileGrid`: tiles of ``tile`` px at ``mpp`` whose *cores* (the tile minus
``margin`` px on every side) partition the plane into squares of ``core = tile - 2·margin``
px, starting at level-0 ``origin``. A detection belongs to the tile whose core holds it
(:meth:`TileGrid.owns`), so none is reported twice and none is lost in a seam. All tiles
sample one global pixel grid (tile origins differ by whole output pixels), so a
translation-equivariant model gives exactly the single-pass result when the margin
covers its receptive field.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import ConfigError

__all__ = ["SlideSettings", "TileGrid", "mask_index"]


def mask_index(v, scale: float, n: int) -> np.ndarray:
    """Row or column of a mask of ``n`` rows or columns holding level-0 coordinate ``v``
    (scalar or array): a mask pixel covers ``scale`` level-0 px, and the last one also
    covers the remainder of the slide past ``n · scale``, as a floored thumbnail does."""
    return np.clip(np.floor(np.asarray(v, dtype=np.float64) / scale), 0, n - 1).astype(np.int64)


@dataclass(frozen=True)
class SlideSettings:
    """Model-side reading settings. ``cell_mpp``/``tissue_mpp``: µm/px of the views the
    model was trained on (after its resize); ``cell_tile``/``tissue_tile``: their sides in
    px; ``cell_margin``: px dropped on each side of a cell tile (its detections belong to
    the neighbour); ``tissue_margin``: px of each tissue tile not kept in the stitched map
    (its central part is kept); ``normalize``: the input normalisation of every tile read
    (:func:`~histozoom.data.normalize.normalize_image`, each tile on its own)."""

    cell_mpp: float
    tissue_mpp: float
    cell_tile: int
    tissue_tile: int
    cell_margin: int
    tissue_margin: int
    normalize: str = "none"

    def __post_init__(self):
        for name in ("cell_mpp", "tissue_mpp"):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0.01 <= v <= 100):
                raise ConfigError(f"{name} must be in [0.01, 100] µm/px, got {v}")
        for tile, margin, view in ((self.cell_tile, self.cell_margin, "cell"), (self.tissue_tile, self.tissue_margin, "tissue")):
            if tile < 8 or margin < 0 or tile - 2 * margin < 4:
                raise ConfigError(f"{view} tile {tile} px with margin {margin} px leaves no core")

    @property
    def cell_core(self) -> int:
        return self.cell_tile - 2 * self.cell_margin

    @property
    def tissue_core(self) -> int:
        return self.tissue_tile - 2 * self.tissue_margin

    @classmethod
    def from_views(cls, views: dict, cell_margin: int | None = None, tissue_margin: int | None = None) -> SlideSettings:
        """From a checkpoint's ``views`` record (``{"cell": {"size", "mpp"}, "tissue": …}``).
        Default margins: 1/8 of the cell tile (detections near a tile's border see less
        context), 1/4 of the tissue tile (its central half is kept)."""
        c, t = views["cell"], views["tissue"]
        ct, tt = int(c["size"]), int(t["size"])
        return cls(float(c["mpp"]), float(t["mpp"]), ct, tt,
                   ct // 8 if cell_margin is None else cell_margin, tt // 4 if tissue_margin is None else tissue_margin)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TileGrid:
    """Tiles over a level-0 box. ``scale``: level-0 px per tile px (``mpp / slide mpp``);
    ``origin``: level-0 top-left of core ``(0, 0)``; ``cols``×``rows`` cores."""

    origin: tuple[float, float]
    scale: float
    tile: int
    margin: int
    cols: int
    rows: int

    @classmethod
    def covering(cls, box: tuple[float, float, float, float], scale: float, tile: int, margin: int) -> TileGrid:
        """The grid whose cores cover level-0 ``box = (x0, y0, x1, y1)``."""
        core = (tile - 2 * margin) * scale
        x0, y0, x1, y1 = box
        return cls((float(x0), float(y0)), float(scale), int(tile), int(margin),
                   max(1, math.ceil((x1 - x0) / core - 1e-9)), max(1, math.ceil((y1 - y0) / core - 1e-9)))

    @property
    def core(self) -> int:
        return self.tile - 2 * self.margin

    def __len__(self) -> int:
        return self.cols * self.rows

    def index(self, k: int) -> tuple[int, int]:
        """``(col, row)`` of tile ``k`` (row-major)."""
        return k % self.cols, k // self.cols

    def read_origin(self, k: int) -> tuple[float, float]:
        """Level-0 top-left of tile ``k`` (its margin included)."""
        i, j = self.index(k)
        return (self.origin[0] + (i * self.core - self.margin) * self.scale,
                self.origin[1] + (j * self.core - self.margin) * self.scale)

    def core_box(self, k: int) -> tuple[float, float, float, float]:
        """Level-0 ``(x0, y0, x1, y1)`` of tile ``k``'s core."""
        i, j = self.index(k)
        c = self.core * self.scale
        return (self.origin[0] + i * c, self.origin[1] + j * c, self.origin[0] + (i + 1) * c, self.origin[1] + (j + 1) * c)

    def owns(self, xy: np.ndarray) -> np.ndarray:
        """Which of the tile-pixel positions ``xy`` ``(N, 2)`` (pixel centres) lie in the core."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        lo, hi = self.margin - 0.5, self.margin + self.core - 0.5
        return (xy[:, 0] >= lo) & (xy[:, 0] < hi) & (xy[:, 1] >= lo) & (xy[:, 1] < hi)

    def to_level0(self, k: int, xy: np.ndarray) -> np.ndarray:
        """Tile-pixel centres of tile ``k`` → level-0 pixel centres."""
        ox, oy = self.read_origin(k)
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        return np.column_stack([ox + (xy[:, 0] + 0.5) * self.scale - 0.5, oy + (xy[:, 1] + 0.5) * self.scale - 0.5])

    def select(self, mask: np.ndarray, mask_scale: float) -> list[int]:
        """Tiles whose core meets the True pixels of ``mask`` (level-0 px per mask px
        ``mask_scale``; mask pixel ``(r, c)`` covers level-0 ``[c·s, (c+1)·s)``, and the last
        row and column also cover the slide's remainder, as a floored thumbnail does)."""
        keep = []
        h, w = mask.shape
        for k in range(len(self)):
            x0, y0, x1, y1 = self.core_box(k)
            c0, r0 = int(mask_index(x0, mask_scale, w)), int(mask_index(y0, mask_scale, h))
            c1, r1 = min(w, math.ceil(x1 / mask_scale)), min(h, math.ceil(y1 / mask_scale))
            if c1 > c0 and r1 > r0 and mask[r0:r1, c0:c1].any():
                keep.append(k)
        return keep
