"""Nucleus instances as a GeoJSON FeatureCollection that QuPath imports as detections.

Each instance becomes one ``Feature`` with a ``Polygon`` (its outer contour, from
``skimage.measure.find_contours`` at level 0.5 on the zero-padded instance mask, i.e. a
ring through the midpoints between inside and outside pixel centres; closed and
counter-clockwise). Coordinates are ``pixel * scale + offset`` with x = column, y = row
(pixel centres at integer coordinates), so ``offset`` places a tile in its slide.
Properties follow QuPath's GeoJSON: ``objectType: "detection"``, ``classification:
{"name", "color": [r, g, b]}`` and ``measurements`` (``probability``, ``instance_id``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..atomic import write_json
from ..errors import InputError
from ..pair import ClassSet

__all__ = ["DEFAULT_COLORS", "instances_to_geojson", "write_geojson"]

DEFAULT_COLORS: tuple[tuple[int, int, int], ...] = (
    (0, 200, 0),
    (255, 200, 0),
    (230, 0, 0),
    (0, 120, 255),
    (180, 0, 200),
    (0, 200, 200),
    (255, 120, 0),
    (120, 120, 120),
)
"""Colours given to the classes in ``class_set`` order when ``colors`` is not passed."""


def _ring(mask: np.ndarray):
    """Outer contour of a boolean mask (local coordinates) as a shapely Polygon, or None."""
    from shapely.geometry import Polygon
    from shapely.geometry.polygon import orient
    from skimage.measure import find_contours

    padded = np.pad(mask.astype(np.float32), 1)
    contours = find_contours(padded, 0.5)
    if not contours:
        return None
    best = None
    for c in contours:
        if len(c) < 4:
            continue
        poly = Polygon(np.column_stack([c[:, 1] - 1.0, c[:, 0] - 1.0]))
        if not poly.is_valid:
            poly = poly.buffer(0)
            if poly.geom_type == "MultiPolygon":
                poly = max(poly.geoms, key=lambda g: g.area)
        if poly.is_empty or poly.geom_type != "Polygon":
            continue
        if best is None or poly.area > best.area:
            best = poly
    if best is None:
        return None
    return orient(Polygon(best.exterior), sign=1.0)


def instances_to_geojson(
    inst_map,
    classes_dict: Mapping[int, tuple[int, float]] | None,
    class_set: ClassSet,
    colors: Mapping[int, Sequence[int]] | Sequence[Sequence[int]] | None = None,
    offset: tuple[float, float] = (0.0, 0.0),
    scale: float = 1.0,
) -> dict:
    """FeatureCollection with one detection per instance of ``inst_map`` (ascending id).

    ``classes_dict``: ``{id: (class_id, probability)}`` (from
    :func:`histozoom.inference.watershed.classify_instances`); an instance missing from it,
    or of class 0, is written without ``classification``. ``colors``: ``{class_id: (r, g,
    b)}`` or a sequence in ``class_set`` order (default :data:`DEFAULT_COLORS`).
    ``offset``: ``(x, y)`` added after scaling. Instances too small to give a polygon
    (fewer than 4 contour points) are skipped.
    """
    from skimage.measure import regionprops

    inst = np.asarray(inst_map)
    if inst.ndim != 2 or not np.issubdtype(inst.dtype, np.integer):
        raise InputError(None, f"inst_map must be a 2-D integer map, got shape {inst.shape} dtype {inst.dtype}")
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if colors is None:
        color_of = {cid: DEFAULT_COLORS[k % len(DEFAULT_COLORS)] for k, cid in enumerate(class_set.ids)}
    elif isinstance(colors, Mapping):
        color_of = {int(k): v for k, v in colors.items()}
    else:
        color_of = dict(zip(class_set.ids, colors))
    classes_dict = classes_dict or {}
    ox, oy = float(offset[0]), float(offset[1])

    features = []
    for r in regionprops(inst.astype(np.int32)):
        y0, x0, _, _ = r.bbox
        poly = _ring(r.image)
        if poly is None:
            continue
        xy = np.asarray(poly.exterior.coords)
        xs = (xy[:, 0] + x0) * scale + ox
        ys = (xy[:, 1] + y0) * scale + oy
        ring = [[float(x), float(y)] for x, y in zip(xs, ys)]
        if ring[0] != ring[-1]:
            ring.append(list(ring[0]))
        iid = int(r.label)
        props: dict = {"objectType": "detection", "measurements": {"instance_id": iid}}
        cls, prob = classes_dict.get(iid, (None, None))
        if prob is not None:
            props["measurements"]["probability"] = float(prob)
        if cls is not None and int(cls) != 0:
            cls = int(cls)
            if cls not in class_set.ids:
                raise InputError(None, f"instance {iid}: class {cls} is not in the class set {class_set.ids}")
            rgb = color_of.get(cls, DEFAULT_COLORS[class_set.ids.index(cls) % len(DEFAULT_COLORS)])
            props["classification"] = {"name": class_set.name(cls), "color": [int(v) for v in rgb]}
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": props})
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | Path, doc: Mapping) -> None:
    """Write a GeoJSON document atomically (compact JSON)."""
    if doc.get("type") != "FeatureCollection":
        raise InputError(path, "not a GeoJSON FeatureCollection")
    write_json(path, doc, indent=None)
