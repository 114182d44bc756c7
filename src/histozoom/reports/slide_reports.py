"""Whole-slide cell reports: QuPath GeoJSON (streamed), cancer-area polygons, tumour purity, grade maps.

Pure functions of a cell table; no model. Frames and units:

* **Cells** ``x``, ``y``: level-0 pixel positions of the slide, pixel centres at integer
  coordinates (level-0 pixel ``k`` spans ``[k - 0.5, k + 0.5)``), as in
  :mod:`histozoom.reports.geojson`. ``cls``: cell class ids (OCELOT 1 = BC, 2 = TC),
  ``prob``: confidences in [0, 1], ``tissue``: the tissue class under the cell (OCELOT
  1 = BG, 2 = CA; 0 where unknown).
* **Masks**: boolean grids with an ``origin = (x0, y0)`` and a ``scale = s`` (level-0 px per
  mask px); mask pixel ``(r, c)`` covers ``[x0 + c·s, x0 + (c+1)·s) × [y0 + r·s, y0 + (r+1)·s)``
  in the frame of ``origin`` (the polygons come out in that frame).
* **Squares** (purity and grade maps): square ``(i, j)`` of side ``q = cell_um / mpp`` level-0 px holds the
  cells with ``x + 0.5`` in ``[j·q, (j+1)·q)`` and ``y + 0.5`` in ``[i·q, (i+1)·q)``, i.e. the
  level-0 pixels it covers (the convention of :meth:`histozoom.slides.tissue_map.TissueMap.argmax_at`).

Tumour purity = TC / (TC + BC); ``None`` (or NaN in a grid) where there is neither. Grade maps:
the share of G3 (or of G2+G3) among the tumour nuclei per square (:func:`share_grid`).
Every file is written to a temporary name and renamed (:mod:`histozoom.atomic`).
"""

from __future__ import annotations

import contextlib
import json
import math
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from ..atomic import atomic_open, atomic_path
from ..pair import OCELOT_CELL_CLASSES, ClassSet
from .geojson import DEFAULT_COLORS

__all__ = [
    "GeoJSONPointWriter",
    "mask_polygons",
    "purity_grid",
    "purity_summary",
    "share_grid",
    "write_grades_png",
    "write_overlay_png",
    "write_purity_png",
]

RGB = tuple[int, int, int]
Colors = Mapping[int, Sequence[int]] | Sequence[Sequence[int]] | None

TUMOUR_ID, BACKGROUND_ID, CA_ID = 2, 1, 2
"""OCELOT ids: TC and BC cells, the cancer-area tissue class."""

_MASK48 = (1 << 48) - 1


def _color_map(classes: ClassSet, colors: Colors) -> dict[int, RGB]:
    """``{class_id: (r, g, b)}`` from a mapping, a sequence in ``classes`` order, or
    :data:`DEFAULT_COLORS` (the convention of :func:`histozoom.reports.geojson.instances_to_geojson`)."""
    if colors is None:
        out = {cid: DEFAULT_COLORS[k % len(DEFAULT_COLORS)] for k, cid in enumerate(classes.ids)}
    elif isinstance(colors, Mapping):
        out = {int(k): v for k, v in colors.items()}
    else:
        out = dict(zip(classes.ids, colors))
    for k, cid in enumerate(classes.ids):
        out.setdefault(cid, DEFAULT_COLORS[k % len(DEFAULT_COLORS)])
    return {k: (int(v[0]), int(v[1]), int(v[2])) for k, v in out.items()}


def _column(a: Any, dtype: Any) -> np.ndarray:
    """A 1-D NumPy column from a NumPy array, list or pyarrow (Chunked)Array."""
    return np.asarray(a, dtype=dtype).reshape(-1)


def _purity(tc: int, bc: int) -> float | None:
    return None if tc + bc == 0 else tc / (tc + bc)


# ---------------------------------------------------------------------- GeoJSON
class GeoJSONPointWriter:
    """A QuPath-compatible GeoJSON ``FeatureCollection`` streamed to ``path``.

    Use as a context manager. Features are written as they come (one per line, compact
    JSON, in chunks of ``chunk`` cells), so memory does not grow with the number of cells;
    the file is written under a temporary name and renamed onto ``path`` only when the
    ``with`` block ends cleanly. On an exception ``path`` is left as it was.

    Detections (:meth:`write_cells`): ``Point`` geometries at the cells' level-0 ``(x, y)``
    (rounded to 2 decimals), ``properties = {"objectType": "detection", "classification":
    {"name", "color"}, "measurements": {"probability"}}`` (4 decimals); or outlines
    (:meth:`write_detection_polygons`, nuclei): ``Polygon`` detections. Annotations
    (:meth:`write_annotation`): a (Multi)Polygon with ``objectType: "annotation"``.

    Feature ids are version-4-shaped UUID strings, deterministic: a 128-bit base drawn
    from ``seed`` (default: the absolute target path, so reruns give the same ids and
    different slides different ones) plus the feature's index in the file.
    ``colors``: ``{class_id: (r, g, b)}`` or a sequence in ``classes`` order (default
    :data:`~histozoom.reports.geojson.DEFAULT_COLORS`).
    """

    def __init__(self, path: str | Path, classes: ClassSet = OCELOT_CELL_CLASSES, colors: Colors = None,
                 seed: int | str | None = None, chunk: int = 65536):
        self.path = Path(path)
        self.classes = classes
        self.colors = _color_map(classes, colors)
        self.chunk = max(1, int(chunk))
        self._class_props = {cid: {"name": name, "color": list(self.colors[cid])}
                             for cid, name in zip(classes.ids, classes.names)}
        self._classification = {cid: json.dumps(c, separators=(",", ":")) for cid, c in self._class_props.items()}
        if seed is None:
            seed = str(self.path.absolute())
        base = uuid.uuid5(uuid.NAMESPACE_URL, f"histozoom:geojson:{seed}").int
        base = (base & ~(0xF << 76)) | (4 << 76)  # version 4
        base = (base & ~(0x3 << 62)) | (0x2 << 62)  # RFC 4122 variant
        text = f"{base >> 48:020x}"
        self._id_prefix = f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}"
        self._id_low = base & _MASK48
        self._n = 0
        self._detections = 0
        self._annotations = 0
        self._stack: contextlib.ExitStack | None = None
        self._fh: IO[str] | None = None

    # -- context manager
    def __enter__(self) -> GeoJSONPointWriter:
        if self._stack is not None:
            raise RuntimeError("GeoJSONPointWriter is already open")
        self._n = self._detections = self._annotations = 0  # a writer may be used again: a fresh file
        stack = contextlib.ExitStack()
        self._fh = stack.enter_context(atomic_open(self.path, "w", encoding="utf-8", buffering=1 << 20))
        self._stack = stack
        self._fh.write('{"type":"FeatureCollection","features":[\n')
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self._stack is not None and self._fh is not None
        stack, self._stack = self._stack, None
        fh, self._fh = self._fh, None
        if exc_type is None:
            try:
                fh.write("\n]}\n" if self._n else "]}\n")
            except BaseException as e:  # a failed final write must not leave a file either
                stack.__exit__(type(e), e, e.__traceback__)
                raise
        return bool(stack.__exit__(exc_type, exc, tb))

    # -- counts
    @property
    def count(self) -> int:
        """Features written so far (detections and annotations)."""
        return self._n

    @property
    def detections(self) -> int:
        return self._detections

    @property
    def annotations(self) -> int:
        return self._annotations

    # -- writing
    def _id_counters(self, n: int) -> list[int]:
        """The last 48 bits of the next ``n`` feature ids: the seed's plus the feature index."""
        start = self._id_low + self._n
        return [(start + k) & _MASK48 for k in range(n)]

    def _ids(self, n: int) -> list[str]:
        """The next ``n`` feature ids: a prefix fixed by the seed, then a 48-bit counter."""
        p = self._id_prefix
        return [f"{p}-{lo:012x}" for lo in self._id_counters(n)]

    def _write(self, features: list[str]) -> None:
        if self._fh is None:
            raise RuntimeError("use GeoJSONPointWriter inside a `with` block")
        if not features:
            return
        self._fh.write((",\n" if self._n else "") + ",\n".join(features))
        self._n += len(features)

    def write_cells(self, x: Any, y: Any, cls: Any, prob: Any) -> int:
        """Append one detection per cell: ``x``, ``y`` level-0 px (pixel centres at integers),
        ``cls`` class ids of ``classes``, ``prob`` in [0, 1] (NaN or inf is written as ``null``).
        NumPy arrays, sequences or pyarrow arrays. Returns the number written."""
        x, y = _column(x, np.float64), _column(y, np.float64)
        cls, prob = _column(cls, np.int64), _column(prob, np.float64)
        n = len(x)
        if not (len(y) == len(cls) == len(prob) == n):
            raise ValueError(f"write_cells: x, y, cls, prob differ in length ({n}, {len(y)}, {len(cls)}, {len(prob)})")
        tpl = ('{"type":"Feature","id":"' + self._id_prefix + '-%012x","geometry":{"type":"Point","coordinates":[%r,%r]},'
               '"properties":{"objectType":"detection","classification":%s,"measurements":{"probability":%s}}}')
        lookup = self._classification
        for s in range(0, n, self.chunk):
            sl = slice(s, s + self.chunk)
            xs, ys, cs, ps = x[sl], y[sl], cls[sl], prob[sl]
            if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
                raise ValueError("write_cells: non-finite cell coordinates")
            try:
                names = [lookup[c] for c in cs.tolist()]
            except KeyError:
                unknown = np.setdiff1d(cs, self.classes.ids).tolist()
                raise ValueError(f"write_cells: class ids {unknown} are not in the class set {self.classes.ids}") from None
            pv = np.round(ps, 4)
            if np.isfinite(pv).all():
                pr = list(map(repr, pv.tolist()))
            else:
                pr = [repr(v) if math.isfinite(v) else "null" for v in pv.tolist()]
            ids = self._id_counters(len(xs))
            self._write([tpl % row for row in zip(ids, np.round(xs, 2).tolist(), np.round(ys, 2).tolist(), names, pr)])
            self._detections += len(xs)
        return n

    def write_detection_polygons(self, rings: Sequence[Any], cls: Any, measurements: Mapping[str, Any] | None = None) -> int:
        """Append one detection per outline (nuclei): ``rings[i]`` an ``(N, 2)`` array of
        level-0 ``(x, y)`` vertices (closed here if it is not; at least 3 distinct
        vertices; oriented counter-clockwise in x/y as GeoJSON asks), ``cls[i]`` a class id
        of ``classes``, ``measurements`` ``{name: values}`` with one value per outline
        (rounded to 4 decimals; NaN/inf as ``null``). Returns the number written."""
        cls = _column(cls, np.int64)
        n = len(cls)
        if len(rings) != n:
            raise ValueError(f"write_detection_polygons: {len(rings)} outlines for {n} class ids")
        meas = {str(k): _column(v, np.float64) for k, v in (measurements or {}).items()}
        for k, v in meas.items():
            if len(v) != n:
                raise ValueError(f"write_detection_polygons: measurement {k!r} has {len(v)} values for {n} outlines")
        unknown = np.setdiff1d(cls, self.classes.ids).tolist()
        if unknown:
            raise ValueError(f"write_detection_polygons: class ids {unknown} are not in the class set {self.classes.ids}")
        for s in range(0, n, self.chunk):
            e = min(n, s + self.chunk)
            ids = self._ids(e - s)
            out = []
            for k in range(s, e):
                ring = np.asarray(rings[k], dtype=np.float64).reshape(-1, 2)
                if not np.isfinite(ring).all():
                    raise ValueError(f"write_detection_polygons: outline {k} has non-finite vertices")
                if len(ring) and (ring[0] != ring[-1]).any():
                    ring = np.vstack([ring, ring[:1]])
                if len(np.unique(ring, axis=0)) < 3:
                    raise ValueError(f"write_detection_polygons: outline {k} has fewer than 3 distinct vertices")
                x, y = ring[:, 0], ring[:, 1]
                if np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]) < 0:  # clockwise in x/y: reverse
                    ring = ring[::-1]
                vals = {name: (round(float(v[k]), 4) if math.isfinite(v[k]) else None) for name, v in meas.items()}
                props = {"objectType": "detection", "classification": self._class_props[int(cls[k])]}
                if vals:
                    props["measurements"] = vals
                doc = {"type": "Feature", "id": ids[k - s],
                       "geometry": {"type": "Polygon", "coordinates": [np.round(ring, 2).tolist()]}, "properties": props}
                out.append(json.dumps(doc, separators=(",", ":"), allow_nan=False))
            self._write(out)
            self._detections += len(out)
        return n

    def write_annotation(self, polygon: Any, name: str = "Tumor", color: Sequence[int] = (200, 0, 0),
                         measurements: Mapping[str, float] | None = None) -> bool:
        """Append an annotation: a shapely ``Polygon`` or ``MultiPolygon`` in level-0 px
        (holes kept, exteriors counter-clockwise in x/y, coordinates rounded to 2 decimals)
        classified as ``name`` with ``color``. An empty geometry writes nothing (returns False)."""
        import shapely
        from shapely.geometry.polygon import orient

        if polygon is None or polygon.is_empty:
            return False
        parts = [g for g in shapely.get_parts(polygon) if g.geom_type == "Polygon" and not g.is_empty]
        if not parts:
            raise ValueError(f"write_annotation: expected a Polygon or MultiPolygon, got {polygon.geom_type}")

        def rings(p) -> list:
            p = orient(p, sign=1.0)
            return [np.round(np.asarray(r.coords)[:, :2], 2).tolist() for r in (p.exterior, *p.interiors)]

        if len(parts) == 1:
            geom = {"type": "Polygon", "coordinates": rings(parts[0])}
        else:
            geom = {"type": "MultiPolygon", "coordinates": [rings(p) for p in parts]}
        props: dict[str, Any] = {"objectType": "annotation",
                                 "classification": {"name": str(name), "color": [int(c) for c in color[:3]]}}
        if measurements:
            props["measurements"] = {str(k): float(v) for k, v in measurements.items()}
        doc = {"type": "Feature", "id": self._ids(1)[0], "geometry": geom, "properties": props}
        self._write([json.dumps(doc, separators=(",", ":"), allow_nan=False)])
        self._annotations += 1
        return True


# ---------------------------------------------------------------------- polygons
def _boundary_segments(m: np.ndarray) -> np.ndarray:
    """Maximal straight pieces of the boundary between True and False pixels of ``m``
    (outside counts as False), ``(K, 2, 2)`` end points ``(x, y)`` in mask pixel units.

    Runs of unit edges are broken at the vertices where four edges meet (diagonal
    "checkerboard" corners), so that the pieces meet only at their end points, as
    :func:`shapely.polygonize` needs.
    """
    h, w = m.shape
    p = np.zeros((h + 2, w + 2), bool)
    p[1:-1, 1:-1] = m
    # vertex (i, j) = mask corner (x = j, y = i); its four pixels are p[i:i+2, j:j+2]
    tl, tr, bl, br = p[:-1, :-1], p[:-1, 1:], p[1:, :-1], p[1:, 1:]
    cross = (tl == br) & (tr == bl) & (tl != tr)  # (h+1, w+1)
    vert = p[1:-1, :-1] != p[1:-1, 1:]  # (h, w+1): edge x = j, y in [i, i+1)
    horz = p[:-1, 1:-1] != p[1:, 1:-1]  # (h+1, w): edge y = i, x in [j, j+1)

    def runs(e: np.ndarray, cuts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Runs along axis 1 of ``e`` that do not pass a cut vertex: (line, first, last)."""
        joined = e[:, :-1] & e[:, 1:] & ~cuts[:, 1:-1]  # unit edges k and k+1 continue each other
        start = e.copy()
        start[:, 1:] &= ~joined
        end = e.copy()
        end[:, :-1] &= ~joined
        line, first = np.nonzero(start)
        _, last = np.nonzero(end)  # row-major order pairs every start with its end
        return line, first, last

    xv, y0, y1 = runs(vert.T, cross.T)
    yh, x0, x1 = runs(horz, cross)
    seg = np.empty((len(xv) + len(yh), 2, 2), np.float64)
    seg[: len(xv), :, 0] = xv[:, None]
    seg[: len(xv), 0, 1], seg[: len(xv), 1, 1] = y0, y1 + 1
    seg[len(xv):, :, 1] = yh[:, None]
    seg[len(xv):, 0, 0], seg[len(xv):, 1, 0] = x0, x1 + 1
    return seg


def _drop_small(m: np.ndarray, min_area_px: float, min_hole_px: float) -> np.ndarray:
    """Remove True pieces of fewer than ``min_area_px`` pixels, then fill holes of fewer than
    ``min_hole_px`` (4-connected, as the polygons' faces are)."""
    from scipy import ndimage as ndi

    m = m.copy()
    if min_area_px > 0:
        lab, n = ndi.label(m)
        if n:
            size = np.bincount(lab.ravel())
            small = size < min_area_px
            small[0] = False
            m[small[lab]] = False
    if min_hole_px > 0:
        lab, n = ndi.label(np.pad(~m, 1))  # the padded frame joins everything outside into one region
        if n > 1:
            size = np.bincount(lab.ravel())
            fill = size < min_hole_px
            fill[0] = False
            fill[lab[0, 0]] = False
            m[fill[lab[1:-1, 1:-1]]] = True
    return m


def mask_polygons(mask: np.ndarray, origin: tuple[float, float] = (0.0, 0.0), scale: float = 1.0,
                  min_area_px: float = 0, min_hole_px: float = 0, simplify: bool | float = False):
    """The True region of a boolean ``mask`` as a shapely ``MultiPolygon`` in level-0 px.

    Mask pixel ``(r, c)`` covers ``[x0 + c·s, x0 + (c+1)·s) × [y0 + r·s, y0 + (r+1)·s)``
    with ``origin = (x0, y0)``, ``scale = s`` (level-0 px per mask px). Boundaries follow
    the pixel edges exactly and holes are kept, so the area is ``mask.sum() · s²``; pixels
    that touch only at a corner belong to different polygons (4-connectivity). Pieces of
    fewer than ``min_area_px`` mask pixels are dropped and holes of fewer than
    ``min_hole_px`` filled first. ``simplify``: ``True`` (half a mask pixel) or a tolerance
    in mask px, topology-preserving Douglas-Peucker. An all-False mask gives an empty
    ``MultiPolygon``.

    Built from the boundary edges (NumPy), merged into maximal straight pieces and
    assembled into faces by :func:`shapely.polygonize`; a face is kept when the pixel
    under its interior point is True.
    """
    import shapely
    from shapely.geometry import MultiPolygon

    m = np.asarray(mask).astype(bool, copy=False)
    if m.ndim != 2:
        raise ValueError(f"mask_polygons: mask must be 2-D, got shape {m.shape}")
    if scale <= 0:
        raise ValueError(f"mask_polygons: scale must be > 0, got {scale}")
    if min_area_px > 0 or min_hole_px > 0:
        m = _drop_small(m, min_area_px, min_hole_px)
    if not m.any():
        return MultiPolygon()
    faces = shapely.get_parts(shapely.polygonize(shapely.linestrings(_boundary_segments(m))))
    pt = shapely.get_coordinates(shapely.point_on_surface(faces))
    r = np.clip(np.floor(pt[:, 1]).astype(np.int64), 0, m.shape[0] - 1)
    c = np.clip(np.floor(pt[:, 0]).astype(np.int64), 0, m.shape[1] - 1)
    region = MultiPolygon(list(faces[m[r, c]]))
    if simplify is not False and simplify is not None:
        tol = 0.5 if simplify is True else float(simplify)
        if tol > 0:
            region = shapely.simplify(region, tol, preserve_topology=True)
            if region.geom_type == "Polygon":
                region = MultiPolygon([region])
    off = np.array([float(origin[0]), float(origin[1])])
    return shapely.transform(region, lambda xy: xy * float(scale) + off)


# ---------------------------------------------------------------------- purity
def share_grid(x: Any, y: Any, positive: Any, counted: Any, width: int, height: int, cell_um: float = 250.0,
               mpp: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Share of ``positive`` among the ``counted`` cells per square of ``cell_um`` µm over the
    slide's level-0 extent.

    ``x``, ``y``: level-0 pixel centres; ``positive``, ``counted``: one bool per cell (a positive
    cell counts only when it is also counted). ``width``, ``height``: level-0 size in px; ``mpp``:
    µm per level-0 px; squares have side ``q = cell_um / mpp`` level-0 px (the last row and column
    may be partial): square ``(i, j)`` holds the cells with ``x + 0.5`` in ``[j·q, (j+1)·q)`` and
    ``y + 0.5`` in ``[i·q, (i+1)·q)``; cells outside the extent are ignored. Returns ``(fraction,
    counts)``, both ``(ceil(height / q), ceil(width / q))``: ``fraction`` = positive / counted
    (float64, NaN where the square holds no counted cell) and ``counts`` = counted cells (int64).
    """
    if cell_um <= 0 or mpp <= 0:
        raise ValueError(f"share_grid: cell_um and mpp must be > 0, got {cell_um}, {mpp}")
    x, y = _column(x, np.float64), _column(y, np.float64)
    pos, cnt = _column(positive, bool), _column(counted, bool)
    if not (len(y) == len(pos) == len(cnt) == len(x)):
        raise ValueError(f"share_grid: x, y, positive, counted differ in length ({len(x)}, {len(y)}, {len(pos)}, {len(cnt)})")
    q = float(cell_um) / float(mpp)
    rows, cols = max(1, math.ceil(height / q)), max(1, math.ceil(width / q))
    u, v = x + 0.5, y + 0.5
    sel = (u >= 0) & (u < width) & (v >= 0) & (v < height) & cnt
    c = np.minimum(np.floor(u[sel] / q).astype(np.int64), cols - 1)
    r = np.minimum(np.floor(v[sel] / q).astype(np.int64), rows - 1)
    flat = r * cols + c
    counts = np.bincount(flat, minlength=rows * cols).reshape(rows, cols)
    hits = np.bincount(flat[pos[sel]], minlength=rows * cols).reshape(rows, cols)
    frac = np.full((rows, cols), np.nan)
    np.divide(hits, counts, out=frac, where=counts > 0)
    return frac, counts


def purity_grid(x: Any, y: Any, cls: Any, width: int, height: int, cell_um: float = 250.0, mpp: float = 0.25,
                tumour_id: int = TUMOUR_ID, background_id: int = BACKGROUND_ID) -> tuple[np.ndarray, np.ndarray]:
    """Tumour purity per square of ``cell_um`` µm over the slide's level-0 extent: :func:`share_grid`
    of TC among TC + BC (``cls``: cell class ids). Returns ``(fraction, counts)``: TC / (TC + BC)
    (NaN where the square holds neither) and TC + BC per square."""
    cls = _column(cls, np.int64)
    is_tc = cls == tumour_id
    return share_grid(x, y, is_tc, is_tc | (cls == background_id), width, height, cell_um, mpp)


def purity_summary(cls: Any, tissue: Any, tumour_id: int = TUMOUR_ID, background_id: int = BACKGROUND_ID,
                   ca_id: int = CA_ID, classes: ClassSet | None = OCELOT_CELL_CLASSES,
                   unknown_tissue: Sequence[int] = (0, 255)) -> dict[str, Any]:
    """Cell counts and tumour purity TC / (TC + BC) of a slide, overall and per region.

    ``cls``: cell class ids; ``tissue``: the tissue class under each cell. Regions:
    ``cancer_area`` (``tissue == ca_id``), ``outside_cancer_area`` (a known tissue class
    other than ``ca_id``) and ``unknown_tissue`` (``tissue`` in ``unknown_tissue``, e.g. no
    tissue branch). Returns ``{"cells", "cells_per_class": {name: n}, "TC", "BC", "overall",
    "cancer_area": {"cells", "TC", "BC", "purity"}, "outside_cancer_area": {…},
    "unknown_tissue": {…}}``; purities are ``None`` without TC and BC. Class names come from
    ``classes`` (ids not in it are named by their id).
    """
    cls, tissue = _column(cls, np.int64), _column(tissue, np.int64)
    if len(cls) != len(tissue):
        raise ValueError(f"purity_summary: cls and tissue differ in length ({len(cls)}, {len(tissue)})")
    is_tc, is_bc = cls == tumour_id, cls == background_id

    def block(sel: np.ndarray) -> dict[str, Any]:
        tc, bc = int(np.count_nonzero(is_tc & sel)), int(np.count_nonzero(is_bc & sel))
        return {"cells": int(np.count_nonzero(sel)), "TC": tc, "BC": bc, "purity": _purity(tc, bc)}

    names = {} if classes is None else dict(zip(classes.ids, classes.names))
    ids, n = np.unique(cls, return_counts=True)
    per_class = {name: 0 for name in names.values()}
    per_class.update({names.get(int(i), str(int(i))): int(k) for i, k in zip(ids, n)})
    inside = tissue == ca_id
    unknown = np.isin(tissue, list(unknown_tissue)) & ~inside
    tc, bc = int(np.count_nonzero(is_tc)), int(np.count_nonzero(is_bc))
    return {
        "cells": len(cls),
        "cells_per_class": per_class,
        "TC": tc,
        "BC": bc,
        "overall": _purity(tc, bc),
        "cancer_area": block(inside),
        "outside_cancer_area": block(~inside & ~unknown),
        "unknown_tissue": block(unknown),
    }


# ---------------------------------------------------------------------- figures
def _save(fig, path: str | Path, dpi: int) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return path


def _rgb_image(thumbnail: np.ndarray) -> np.ndarray:
    t = np.asarray(thumbnail)
    if t.ndim == 2:
        t = np.repeat(t[..., None], 3, axis=2)
    if t.ndim != 3 or t.shape[2] not in (3, 4) or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"expected an (H, W, 3) thumbnail, got shape {t.shape}")
    return t


def _write_grid_png(path: str | Path, thumbnail: np.ndarray, extent: Sequence[float],
                    panels: Sequence[tuple[np.ndarray, str]], square_px: float | None, title: str, width_px: int,
                    cmap: str, alpha: float, dpi: int) -> Path:
    """Grids of shares in [0, 1] over the slide ``thumbnail``, side by side, each with a colour bar, as a PNG.

    ``panels``: ``(grid, colour-bar label)`` pairs; ``extent``: the thumbnail's level-0 ``(left, right,
    bottom, top)``; ``square_px``: a grid square's side in level-0 px (grids start at ``(left, top)``) or
    ``None`` (stretched over ``extent``). NaN squares are transparent. Each of the ``n`` panels is
    ``width_px // n`` wide, a map ``width_px // n - 160`` px wide (at most 1600 px high) at the
    thumbnail's aspect ratio plus its colour bar; the PNG is ``width_px`` wide and ``img_h + 60`` px high.
    """
    from matplotlib.figure import Figure

    thumb = _rgb_image(thumbnail)
    n = len(panels)
    left, right, bottom, top = (float(v) for v in extent)
    aspect = abs(bottom - top) / max(abs(right - left), 1e-9)
    img_w = max(40, int(width_px) // n - 160)
    img_h = max(1, round(img_w * aspect))
    if img_h > 1600:
        img_h = 1600
        img_w = max(1, round(img_h / aspect))
    fw, fh = max(int(width_px), n * (img_w + 160)), img_h + 60
    col_w = fw // n
    fig = Figure(figsize=(fw / dpi, fh / dpi), dpi=dpi)
    for k, (grid, label) in enumerate(panels):
        grid = np.asarray(grid, dtype=np.float64)
        x0 = k * col_w
        ax = fig.add_axes(((x0 + 10) / fw, 10 / fh, img_w / fw, img_h / fh))
        ax.imshow(thumb, extent=(left, right, bottom, top), interpolation="antialiased")
        if square_px is None:
            gext = (left, right, bottom, top)
        else:
            sx = math.copysign(square_px, right - left)
            sy = math.copysign(square_px, bottom - top)
            gext = (left, left + grid.shape[1] * sx, top + grid.shape[0] * sy, top)
        im = ax.imshow(np.ma.masked_invalid(grid), extent=gext, cmap=cmap, vmin=0.0, vmax=1.0, alpha=alpha,
                       interpolation="nearest")
        ax.set_xlim(left, right)
        ax.set_ylim(bottom, top)
        ax.set_axis_off()
        cax = fig.add_axes(((x0 + img_w + 30) / fw, 10 / fh, 18 / fw, img_h / fh))
        cb = fig.colorbar(im, cax=cax)
        cb.solids.set_alpha(1.0)
        cb.set_label(label)
    fig.text(10 / fw, 1 - 12 / fh, title, ha="left", va="top", fontsize=12)
    return _save(fig, path, dpi)


def _squares_with_cells(grid: np.ndarray) -> tuple[int, float]:
    """Squares with a share (finite) and their mean share (NaN when none)."""
    grid = np.asarray(grid, dtype=np.float64)
    k = int(np.isfinite(grid).sum())
    return k, (float(np.nanmean(grid)) if k else float("nan"))


def write_purity_png(path: str | Path, grid: np.ndarray, thumbnail: np.ndarray, extent: Sequence[float],
                     square_px: float | None = None, title: str | None = None, width_px: int = 1000,
                     cmap: str = "viridis", alpha: float = 0.6, dpi: int = 100) -> Path:
    """The purity ``grid`` (from :func:`purity_grid`) over the slide ``thumbnail``, as a PNG.

    ``extent``: the thumbnail's level-0 ``(left, right, bottom, top)`` (matplotlib's order;
    e.g. ``(0, width, height, 0)``). ``square_px``: the grid's square side in level-0 px
    (``cell_um / mpp``), so that the grid starts at ``(left, top)`` and its partial last
    squares overhang the thumbnail; ``None`` stretches the grid over ``extent``. Squares
    without cells are transparent; colour bar "tumour purity TC / (TC + BC)" from 0 to 1.
    The PNG is ``width_px`` wide and ``img_h + 60`` px high, where the map is
    ``width_px - 160`` px wide (at most 1600 px high) at the thumbnail's aspect ratio.
    """
    if title is None:
        k, mean = _squares_with_cells(grid)
        title = f"Tumour purity per square: {k} squares with cells, mean {mean:.2f}" if k else "Tumour purity: no cells"
    return _write_grid_png(path, thumbnail, extent, [(grid, "tumour purity TC / (TC + BC)")], square_px, title,
                           width_px, cmap, alpha, dpi)


def write_grades_png(path: str | Path, thumbnail: np.ndarray, extent: Sequence[float],
                     grids: Sequence[tuple[np.ndarray, str]], square_px: float | None = None, title: str | None = None,
                     width_px: int = 2000, cmap: str = "magma", alpha: float = 0.6, dpi: int = 100) -> Path:
    """Grade shares per square over the slide ``thumbnail``, side by side, as a PNG (``grades.png``).

    ``grids``: ``(grid, label)`` pairs, e.g. the share of G3 and of G2+G3 among the tumour nuclei
    per square (:func:`share_grid` with ``positive`` = grade 3, resp. grade >= 2, and ``counted`` =
    grade > 0); each is drawn with a colour bar from 0 to 1 labelled ``label``. ``extent``,
    ``square_px``: as in :func:`write_purity_png`. Each panel is ``width_px // len(grids)`` wide
    (a map 160 px narrower plus its colour bar); the PNG is ``width_px`` wide and ``img_h + 60`` high.
    """
    if not grids:
        raise ValueError("write_grades_png: no grids to draw")
    if title is None:
        k, _ = _squares_with_cells(grids[0][0])
        title = f"Nuclear grade per square: {k} squares with tumour nuclei" if k else "Nuclear grade: no tumour nuclei"
    return _write_grid_png(path, thumbnail, extent, grids, square_px, title, width_px, cmap, alpha, dpi)


def write_overlay_png(path: str | Path, thumbnail: np.ndarray, thumb_scale: float, x: Any, y: Any, cls: Any,
                      colors: Mapping[int, Sequence[int]], cancer: Any = None, max_cells: int = 200_000,
                      names: Mapping[int, str] | None = None, dot_px: float = 2.0,
                      outline: Sequence[int] = (0, 90, 255), seed: int = 0, dpi: int = 100) -> Path:
    """The slide ``thumbnail`` with the cells as dots coloured by class and the cancer-area
    outline, as a PNG of exactly the thumbnail's size (pixel-aligned with it).

    ``thumb_scale``: level-0 px per thumbnail px (thumbnail pixel ``(i, j)`` shows level-0
    pixels ``j·t … (j+1)·t - 1``); ``x``, ``y``: level-0 pixel centres; ``colors``:
    ``{class_id: (r, g, b)}`` (cells of other classes are not drawn); ``cancer``: a shapely
    (Multi)Polygon in level-0 px (e.g. from :func:`mask_polygons`) or ``None``. At most
    ``max_cells`` cells are drawn, a uniform random subsample fixed by ``seed``, in random
    order so no class hides another. ``names``: ``{class_id: name}`` adds a legend.
    """
    import shapely
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    thumb = _rgb_image(thumbnail)
    if thumb_scale <= 0:
        raise ValueError(f"write_overlay_png: thumb_scale must be > 0, got {thumb_scale}")
    h, w = thumb.shape[:2]
    fig = Figure(figsize=(w / dpi, h / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    t = float(thumb_scale)
    ext = (-0.5, w * t - 0.5, h * t - 0.5, -0.5)  # level-0 pixel-centre frame
    ax.imshow(thumb, extent=ext, interpolation="nearest")

    x, y, cls = _column(x, np.float64), _column(y, np.float64), _column(cls, np.int64)
    cids = np.array(sorted(colors), dtype=np.int64)
    idx = np.flatnonzero(np.isin(cls, cids))
    rng = np.random.default_rng(seed)
    if len(idx) > max_cells:
        idx = idx[rng.choice(len(idx), size=max(0, int(max_cells)), replace=False)]
    else:
        idx = idx[rng.permutation(len(idx))]
    if len(idx):
        palette = np.array([[colors[int(k)][i] / 255 for i in range(3)] for k in cids])
        rgb = palette[np.searchsorted(cids, cls[idx])]
        size = (dot_px * 72 / dpi) ** 2
        ax.scatter(x[idx], y[idx], s=size, c=rgb, marker="o", linewidths=0, rasterized=True)
    out_rgb = tuple(v / 255 for v in outline[:3])
    has_outline = cancer is not None and not cancer.is_empty
    if has_outline:
        rings = shapely.get_rings(shapely.get_parts(cancer))
        segs = [np.asarray(r.coords)[:, :2] for r in rings]
        ax.add_collection(LineCollection(segs, colors=[out_rgb], linewidths=1.2))
    if names:
        handles = [Line2D([], [], ls="", marker="o", markersize=5, markeredgewidth=0,
                          color=tuple(c / 255 for c in colors[k][:3]), label=str(names[k])) for k in cids.tolist() if k in names]
        if has_outline:
            handles.append(Line2D([], [], color=out_rgb, lw=1.2, label="cancer area"))
        if handles:
            ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.8)
    ax.set_xlim(ext[0], ext[1])
    ax.set_ylim(ext[2], ext[3])
    ax.set_axis_off()
    return _save(fig, path, dpi)
