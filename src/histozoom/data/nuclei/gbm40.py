"""GBM40 contour annotations: ``raw_image/NN.tif`` with ``contour_annotation_xml/NN_data.xml``.

The XML holds ``<Shape Type="Polygon">`` / ``"SmoothPolygon"`` with ``<Point X= Y=>``
vertices, and ``<Shape Type="Oval">`` with ``<Data Rotation=deg><Extent X Y Width Height>``;
:func:`read_contour_xml` rasterises them to an instance map. Instances only (no classes).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ...errors import InputError
from ..io import read_rgb
from .records import NucleiSample, format_wh, relabel_dense

__all__ = ["read_contour_xml", "read_gbm40"]


def _shape_points(shape: ET.Element) -> np.ndarray:
    pts = []
    for p in shape.iter("Point"):
        pts.append((float(p.get("X")), float(p.get("Y"))))
    return np.array(pts, np.float64).reshape(-1, 2)


def read_contour_xml(path: str | Path, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, dict]:
    """Rasterise the nucleus contours of a GBM40-style XML to an ``(H, W)`` int32 instance map.

    Shape ``k`` (1-based, document order over all layers) becomes instance ``k``.
    ``Polygon`` and ``SmoothPolygon`` are filled as the straight polygon through their
    vertices (``skimage.draw.polygon``); the smoothing the drawing program applies is
    not reproduced (vertices are 1-3 px apart, so it matters at most at the outline).
    ``Oval`` is the ellipse inscribed in its ``Extent`` box, rotated clockwise on screen
    by ``Rotation`` degrees about the box centre. Vertex coordinates are pixel indices:
    a pixel belongs to a shape when its centre ``(x, y)`` lies inside (on GBM40 this
    fits the dark nuclei better than a half-pixel shift either way). Where shapes
    overlap the **later shape wins**; a shape fully covered by later ones (or with fewer
    than 3 vertices, or no pixel centre inside) leaves no id in the map.

    ``shape = (H, W)`` defaults to the XML's ``Canvas/Box``; if both are present they must
    agree. Returns the map and ``info``: ``n_shapes``, ``types`` (count per shape type),
    ``empty`` (ids with no pixel), ``degenerate`` (ids with < 3 vertices),
    ``overdrawn_px`` (pixels covered by more than one shape) and ``split`` (ids cut into
    several 8-connected pieces by later shapes; they stay one id -- label the connected
    pieces, e.g. ``skimage.measure.label``, to separate them).
    """
    from skimage.draw import ellipse, polygon

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise InputError(path, f"cannot parse XML ({e})") from e
    box = root.find(".//Canvas/Box")
    canvas = None
    if box is not None:
        try:
            canvas = (int(float(box.get("Height"))), int(float(box.get("Width"))))
        except (TypeError, ValueError):
            raise InputError(path, "Canvas/Box has no valid Width/Height") from None
    if shape is None:
        if canvas is None:
            raise InputError(path, "no Canvas/Box size in the XML; pass the image shape")
        shape = canvas
    elif canvas is not None and tuple(shape) != canvas:
        raise InputError(path, f"XML canvas is {format_wh(canvas)} px but the image is {format_wh(shape)} px")
    h, w = shape
    out = np.zeros((h, w), np.int32)
    hits = np.zeros((h, w), np.uint8)
    types: dict[str, int] = {}
    degenerate = []
    shapes = list(root.iter("Shape"))
    for k, s in enumerate(shapes, start=1):
        t = s.get("Type", "")
        types[t] = types.get(t, 0) + 1
        try:
            if t in ("Polygon", "SmoothPolygon"):
                p = _shape_points(s)
                if len(p) < 3:
                    degenerate.append(k)
                    continue
                rr, cc = polygon(p[:, 1], p[:, 0], (h, w))
            elif t in ("Oval", "Ellipse"):
                data = s.find("Data")
                ext = data.find("Extent") if data is not None else None
                if ext is None:
                    raise InputError(path, f"shape {k} ({t}) has no Data/Extent")
                x, y = float(ext.get("X")), float(ext.get("Y"))
                bw, bh = float(ext.get("Width")), float(ext.get("Height"))
                rot = float(data.get("Rotation", "0") or 0)
                rr, cc = ellipse(y + bh / 2, x + bw / 2, bh / 2, bw / 2, (h, w), rotation=-math.radians(rot))
            else:
                raise InputError(path, f"shape {k} has unsupported type {t!r} (Polygon, SmoothPolygon, Oval)")
        except (TypeError, ValueError) as e:
            raise InputError(path, f"shape {k} ({t}): bad coordinates ({e})") from None
        out[rr, cc] = k
        hits[rr, cc] = np.minimum(hits[rr, cc], 254) + 1
    present = set(np.unique(out).tolist()) - {0}
    info = {
        "split": _split_ids(out),
        "n_shapes": len(shapes),
        "types": types,
        "empty": [k for k in range(1, len(shapes) + 1) if k not in present and k not in degenerate],
        "degenerate": degenerate,
        "overdrawn_px": int((hits > 1).sum()),
    }
    return out, info


def _split_ids(inst: np.ndarray) -> list[int]:
    """Ids of ``inst`` whose pixels form more than one 8-connected piece."""
    from scipy import ndimage

    ids, dense = relabel_dense(inst)
    out = []
    for k, sl in enumerate(ndimage.find_objects(dense, max_label=ids.size), start=1):
        if sl is not None and ndimage.label(dense[sl] == k, structure=np.ones((3, 3)))[1] > 1:
            out.append(int(ids[k - 1]))
    return out


def read_gbm40(image_path: str | Path, xml_path: str | Path | None = None) -> NucleiSample:
    """A GBM40 tile (``raw_image/NN.tif``) with its contours (``contour_annotation_xml/NN_data.xml``).

    Instances only; ``meta`` holds the rasterisation ``info`` of :func:`read_contour_xml`.
    """
    image_path = Path(image_path)
    if xml_path is None:
        xml_path = image_path.parent.parent / "contour_annotation_xml" / f"{image_path.stem}_data.xml"
    xml_path = Path(xml_path)
    image = read_rgb(image_path)
    try:
        inst, info = read_contour_xml(xml_path, image.shape[:2])
    except InputError as e:
        if "canvas" in e.problem:
            raise InputError(xml_path, f"{e.problem} ({image_path})") from None
        raise
    return NucleiSample(image_path.stem, image, inst, None, None, None, xml_path,
                        {"image_path": str(image_path), "contours": info})
