"""Training targets made from labels.

* Cell label maps (supplement B): a filled disk of radius 1.4 µm (7 px at 0.2 µm/px)
  around each cell point, carrying the cell's class id; 0 elsewhere. Where disks
  overlap, each pixel goes to the nearest cell centre.
* Cell heatmaps (the challenge's top teams): one channel per cell class with a Gaussian of
  σ = 1.14 µm (≈ 5.7 px at 0.2 µm/px) at each cell of that class, peak 1, max-combined.
* Tissue targets: the tissue mask as it is (class ids; ``ignore`` kept as an ignore value),
  or cropped to the cell window (tissue→cell, nearest).
"""

from __future__ import annotations

import numpy as np

from ..geometry import Placement, tissue_to_cell_np
from ..pair import UNKNOWN, ClassSet, Points

DISK_RADIUS_UM = 1.4
GAUSSIAN_SIGMA_UM = 1.14


def um_to_px(um: float, mpp: float) -> float:
    """Microns to pixels at ``mpp`` µm/px."""
    return um / mpp


def cell_disk_map(points: Points, size: tuple[int, int], radius_px: float) -> np.ndarray:
    """``(H, W)`` uint8 map: class id within ``radius_px`` of a cell (nearest cell wins), else 0.

    ``size = (width, height)``; points are cell-frame pixel positions, rounded to their
    pixel; distances are measured between pixel centres; ties go to the lower point index.
    Cost grows with the number of points times the disk area, not with the image size.
    """
    w, h = size
    out = np.zeros((h, w), np.uint8)
    if len(points) == 0:
        return out
    r = int(np.floor(radius_px + 1e-6))
    oy, ox = np.mgrid[-r:r + 1, -r:r + 1]
    d2 = (ox**2 + oy**2).ravel()
    # 1.4 µm / 0.2 µm/px is 6.999... in floating point: allow a hair of tolerance
    keep = d2 <= radius_px**2 + 1e-6
    ox, oy, d2 = ox.ravel()[keep], oy.ravel()[keep], d2[keep]
    c = np.rint(points.xy).astype(np.int64)
    px = (c[:, 0:1] + ox[None]).ravel()
    py = (c[:, 1:2] + oy[None]).ravel()
    dist = np.broadcast_to(d2[None], (len(c), len(d2))).ravel()
    owner = np.repeat(np.arange(len(c)), len(d2))
    ok = (px >= 0) & (px < w) & (py >= 0) & (py < h)
    flat, dist, owner = (py * w + px)[ok], dist[ok], owner[ok]
    # nearest centre per pixel: sort by pixel, then distance, then point index
    order = np.lexsort((owner, dist, flat))
    first = np.unique(flat[order], return_index=True)[1]
    win = order[first]
    out.ravel()[flat[win]] = points.cls[owner[win]]
    return out


def cell_gaussian_heatmaps(points: Points, size: tuple[int, int], sigma_px: float, classes: ClassSet) -> np.ndarray:
    """``(C, H, W)`` float32: channel ``k`` is ``max_i exp(-d_i² / 2σ²)`` over cells of class
    ``classes.ids[k]`` (sub-pixel centres), truncated at 4σ.
    """
    w, h = size
    out = np.zeros((len(classes), h, w), np.float32)
    r = int(np.ceil(4 * sigma_px))
    offs = np.arange(-r, r + 1)
    for (x, y), c in zip(points.xy, points.cls):
        k = classes.ids.index(int(c))
        cx, cy = int(round(x)), int(round(y))
        xs, ys = cx + offs, cy + offs
        kx = np.exp(-((xs - x) ** 2) / (2 * sigma_px**2))
        ky = np.exp(-((ys - y) ** 2) / (2 * sigma_px**2))
        vx, vy = (xs >= 0) & (xs < w), (ys >= 0) & (ys < h)
        if not vx.any() or not vy.any():
            continue
        patch = np.outer(ky[vy], kx[vx]).astype(np.float32)
        sl = (k, slice(ys[vy][0], ys[vy][-1] + 1), slice(xs[vx][0], xs[vx][-1] + 1))
        np.maximum(out[sl], patch, out=out[sl])
    return out


def tissue_mask_in_cell_frame(mask: np.ndarray, placement: Placement, ignore: int = UNKNOWN) -> np.ndarray:
    """The tissue mask cropped to the cell window and resized to the cell size (nearest).

    Window parts outside the tissue image become ``ignore``.
    """
    return tissue_to_cell_np(mask, placement, mode="nearest", fill=ignore)
