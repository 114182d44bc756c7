"""Where to look on a slide: tissue found on a thumbnail, or a region of interest.

Masks here are boolean arrays on a *thumbnail grid*: pixel ``(r, c)`` covers level-0
``[c·s, (c+1)·s) × [r·s, (r+1)·s)`` with ``s`` = level-0 px per thumbnail px.

Tissue (:func:`tissue_mask`): H&E tissue is coloured or dark, glass is bright and grey.
A thumbnail pixel is tissue when its chroma (max − min of R, G, B) exceeds 15 or its
grey level is below 200 (of 255); then a closing (≈ 30 µm), objects under 0.01 mm² (or
under 5 % of a small image) removed and enclosed holes of that size filled. Fixed thresholds, not
Otsu: a slide that is all tissue must not be split in two.

Regions of interest (:func:`roi_mask`): a QuPath GeoJSON export (Feature, FeatureCollection
or bare geometry; polygons and multipolygons in level-0 px) or a mask image (any size,
stretched over the slide; non-zero = inside).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import InputError

__all__ = ["THUMBNAIL_MPP", "roi_mask", "thumbnail_mpp", "tissue_mask"]

THUMBNAIL_MPP = 8.0
"""µm/px of the thumbnail tissue detection runs on (coarser for very large slides)."""
MAX_THUMBNAIL_SIDE = 4096


def thumbnail_mpp(slide_mpp: float, dimensions: tuple[int, int]) -> float:
    """:data:`THUMBNAIL_MPP`, or coarser so the thumbnail's longer side stays ≤ 4096 px
    (and never finer than the slide)."""
    longest_um = max(dimensions) * slide_mpp
    return max(THUMBNAIL_MPP, longest_um / MAX_THUMBNAIL_SIDE, slide_mpp)


def tissue_mask(thumb: np.ndarray, mpp: float) -> np.ndarray:
    """Boolean tissue mask of an ``(H, W, 3)`` uint8 thumbnail at ``mpp`` µm/px."""
    from scipy import ndimage
    from skimage import morphology

    rgb = thumb.astype(np.int16)
    chroma = rgb.max(axis=2) - rgb.min(axis=2)
    grey = rgb.mean(axis=2)
    mask = (chroma > 15) | (grey < 200)
    radius = max(1, round(15.0 / mpp))
    mask = morphology.closing(mask, morphology.disk(radius))
    min_px = max(1, min(round(0.01e6 / mpp**2), mask.size // 20))  # 0.01 mm² (5 % of a small image) in pixels
    mask = morphology.remove_small_objects(mask, max_size=min_px)
    holes = ndimage.binary_fill_holes(mask) & ~mask  # background not connected to the border
    small = morphology.remove_small_objects(holes, max_size=min_px)
    return mask | (holes & ~small)


def _polygons_from_geojson(path: Path):
    from shapely.geometry import shape

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(path, f"cannot read the region of interest as GeoJSON ({e})") from None
    items = doc if isinstance(doc, list) else doc.get("features", [doc]) if isinstance(doc, dict) else []
    polys = []
    for item in items:
        geom = item.get("geometry", item) if isinstance(item, dict) else None
        if not isinstance(geom, dict) or geom.get("type") not in ("Polygon", "MultiPolygon"):
            continue
        try:
            g = shape(geom)
        except Exception as e:  # shapely raises several types on malformed coordinates
            raise InputError(path, f"malformed polygon ({type(e).__name__}: {e})") from None
        if not g.is_empty:
            polys.append(g if g.is_valid else g.buffer(0))
    if not polys:
        raise InputError(path, "the region of interest holds no polygon")
    return polys


def roi_mask(path: str | Path, dimensions: tuple[int, int], scale: float, shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask on the thumbnail grid (``shape``, ``scale`` level-0 px per pixel) of the
    region of interest in ``path``; an ROI wholly outside the slide is an error."""
    from shapely import contains_xy
    from shapely.geometry import box
    from shapely.ops import unary_union

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "region of interest not found")
    h, w = shape
    if path.suffix.lower() in (".json", ".geojson"):
        region = unary_union(_polygons_from_geojson(path))
        if not region.intersects(box(0, 0, *dimensions)):
            raise InputError(path, f"the region of interest {tuple(round(v) for v in region.bounds)} lies outside "
                                   f"the slide (0, 0, {dimensions[0]}, {dimensions[1]})")
        cc, rr = np.meshgrid((np.arange(w) + 0.5) * scale, (np.arange(h) + 0.5) * scale)
        return contains_xy(region, cc, rr)
    from PIL import Image

    from ..data.io import read_image

    m = read_image(path)
    m = m if m.ndim == 2 else m[..., 0]
    return np.asarray(Image.fromarray((m > 0).astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)) > 0
