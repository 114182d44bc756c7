"""Whole-slide report writers: streamed QuPath GeoJSON, mask polygons, purity grid/summary, PNGs."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pyarrow as pa
import pytest
import shapely
from PIL import Image
from shapely.geometry import MultiPolygon, Point, box, shape

from histozoom.pair import OCELOT_CELL_CLASSES, ClassSet
from histozoom.reports.geojson import DEFAULT_COLORS
from histozoom.reports.slide_reports import (
    GeoJSONPointWriter,
    mask_polygons,
    purity_grid,
    purity_summary,
    write_overlay_png,
    write_purity_png,
)


def _cells(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 5000, n).round(3)
    y = rng.uniform(0, 3000, n).round(3)
    cls = rng.integers(1, 3, n)
    prob = rng.random(n).astype(np.float32)
    return x, y, cls, prob


def _check_features(doc: dict) -> list[dict]:
    assert doc["type"] == "FeatureCollection"
    feats = doc["features"]
    ids = [f["id"] for f in feats]
    assert len(set(ids)) == len(ids)
    for f in feats:
        assert f["type"] == "Feature"
        assert uuid.UUID(f["id"]).version == 4
        assert f["geometry"]["type"] in ("Point", "Polygon", "MultiPolygon")
        props = f["properties"]
        assert props["objectType"] in ("detection", "annotation")
        cl = props["classification"]
        assert isinstance(cl["name"], str) and len(cl["color"]) == 3
        assert all(isinstance(v, int) and 0 <= v <= 255 for v in cl["color"])
    return feats


# ---------------------------------------------------------------------- GeoJSON
def test_geojson_points_round_trip(tmp_path):
    x, y, cls, prob = _cells(1000)
    path = tmp_path / "cells.geojson"
    ring = box(100, 200, 900, 700).difference(box(300, 300, 400, 400))
    with GeoJSONPointWriter(path, OCELOT_CELL_CLASSES) as gj:
        # in two calls, one with pyarrow columns (as read from cells.parquet)
        assert gj.write_cells(x[:600], y[:600], cls[:600], prob[:600]) == 600
        gj.write_cells(pa.array(x[600:]), pa.chunked_array([y[600:]]), pa.array(cls[600:], pa.int16()),
                       pa.array(prob[600:]))
        assert gj.write_annotation(MultiPolygon([ring]), "Tumor", (200, 0, 0))
        assert not gj.write_annotation(MultiPolygon(), "Tumor", (200, 0, 0))
        assert not path.exists()  # only the temporary file so far
    assert (gj.count, gj.detections, gj.annotations) == (1001, 1000, 1)
    with open(path, encoding="utf-8") as fh:
        doc = json.load(fh)
    feats = _check_features(doc)
    assert len(feats) == 1001
    det = [f for f in feats if f["properties"]["objectType"] == "detection"]
    xy = np.array([shape(f["geometry"]).coords[0] for f in det])
    assert all(shape(f["geometry"]).geom_type == "Point" for f in det)
    np.testing.assert_allclose(xy[:, 0], x, atol=0.005 + 1e-9)
    np.testing.assert_allclose(xy[:, 1], y, atol=0.005 + 1e-9)
    names = [f["properties"]["classification"]["name"] for f in det]
    assert names == [OCELOT_CELL_CLASSES.name(c) for c in cls]
    colors = {f["properties"]["classification"]["name"]: tuple(f["properties"]["classification"]["color"]) for f in det}
    assert colors == {"BC": DEFAULT_COLORS[0], "TC": DEFAULT_COLORS[1]}
    p = [f["properties"]["measurements"]["probability"] for f in det]
    np.testing.assert_allclose(p, prob.astype(np.float64), atol=5e-5 + 1e-9)
    assert all(len(repr(v).split(".")[-1]) <= 4 for v in p)  # rounded, not float32 noise
    ann = feats[-1]
    assert ann["properties"]["objectType"] == "annotation"
    assert ann["properties"]["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    g = shape(ann["geometry"])
    assert g.geom_type == "Polygon" and len(g.interiors) == 1 and g.equals(ring)


def test_geojson_detection_polygons_round_trip(tmp_path):
    """Nucleus outlines: QuPath's fields, areas and classes back through shapely; open or
    clockwise rings are closed and turned counter-clockwise; bad outlines are errors."""
    from shapely.geometry import Polygon

    from histozoom.data.nuclei.records import CCRCC_CLASSES as classes

    rng = np.random.default_rng(3)
    rings, areas = [], []
    for k in range(300):
        cx, cy, r = rng.uniform(0, 5000), rng.uniform(0, 5000), rng.uniform(3, 12)
        t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
        ring = np.column_stack([cx + r * np.cos(t), cy + r * np.sin(t)])
        if k % 2:
            ring = ring[::-1]  # clockwise
        rings.append(ring)
        areas.append(Polygon(ring).area)
    cls = rng.choice(np.asarray(classes.ids), 300)
    path = tmp_path / "nuclei.geojson"
    with GeoJSONPointWriter(path, classes, chunk=64) as gj:
        assert gj.write_detection_polygons(rings, cls, {"area_um2": np.asarray(areas) * 0.0625,
                                                         "probability": np.full(300, np.nan)}) == 300
    assert gj.detections == 300
    feats = _check_features(json.loads(path.read_text(encoding="utf-8")))
    assert len(feats) == 300
    for f, ring, a, c in zip(feats, rings, areas, cls, strict=True):
        g = shape(f["geometry"])
        coords = f["geometry"]["coordinates"][0]
        assert g.geom_type == "Polygon" and g.is_valid and coords[0] == coords[-1] and g.exterior.is_ccw
        assert g.area == pytest.approx(a, abs=0.01 * Polygon(ring).length)  # vertices rounded to 0.005 px
        assert f["properties"]["objectType"] == "detection"
        assert f["properties"]["classification"]["name"] == classes.name(int(c))
        assert f["properties"]["measurements"]["area_um2"] == pytest.approx(a * 0.0625, abs=1e-4)
        assert f["properties"]["measurements"]["probability"] is None
    with GeoJSONPointWriter(tmp_path / "bad.geojson", classes) as gj:
        with pytest.raises(ValueError, match="fewer than 3"):
            gj.write_detection_polygons([np.array([[0, 0], [1, 1], [0, 0]])], [classes.ids[0]])
        with pytest.raises(ValueError, match="not in the class set"):
            gj.write_detection_polygons([rings[0]], [99])
        with pytest.raises(ValueError, match="outlines for"):
            gj.write_detection_polygons(rings[:2], [classes.ids[0]])


def test_geojson_ids_deterministic_and_compact(tmp_path):
    x, y, cls, prob = _cells(50)
    docs, texts = [], []
    for k, seed in enumerate(("slide-a", "slide-a", "slide-b")):
        path = tmp_path / f"c{k}.geojson"
        with GeoJSONPointWriter(path, OCELOT_CELL_CLASSES, seed=seed, chunk=7) as gj:
            gj.write_cells(x, y, cls, prob)
        texts.append(path.read_text(encoding="utf-8"))
        docs.append(json.loads(texts[-1]))
    ids = [[f["id"] for f in d["features"]] for d in docs]
    assert ids[0] == ids[1] and not set(ids[0]) & set(ids[2])
    assert texts[0] == texts[1]
    again = GeoJSONPointWriter(tmp_path / "c0.geojson", OCELOT_CELL_CLASSES, seed="slide-a", chunk=7)
    for _ in range(2):  # a writer used twice writes the same, fresh file
        with again as gj:
            gj.write_cells(x, y, cls, prob)
        assert (tmp_path / "c0.geojson").read_text(encoding="utf-8") == texts[0]
    assert ": " not in texts[0] and ", " not in texts[0]
    assert texts[0].count("\n") == 50 + 2  # one feature per line


def test_geojson_empty_and_errors(tmp_path):
    path = tmp_path / "empty.geojson"
    with GeoJSONPointWriter(path) as gj:
        gj.write_cells([], [], [], [])
    assert json.loads(path.read_text()) == {"type": "FeatureCollection", "features": []}

    # NaN probability stays valid JSON
    with GeoJSONPointWriter(path) as gj:
        gj.write_cells([1.0, 2.0], [3.0, 4.0], [1, 2], [np.nan, 0.5])
    feats = json.loads(path.read_text())["features"]
    assert [f["properties"]["measurements"]["probability"] for f in feats] == [None, 0.5]

    # an exception inside the block: no target file, no temporary left behind
    target = tmp_path / "broken.geojson"
    with pytest.raises(RuntimeError, match="boom"), GeoJSONPointWriter(target) as gj:
        gj.write_cells([1.0], [2.0], [1], [0.9])
        raise RuntimeError("boom")
    assert not target.exists()
    # a bad class id fails the same way, and an existing file is kept as it was
    target.write_text("old")
    with pytest.raises(ValueError, match="not in the class set"), GeoJSONPointWriter(target) as gj:
        gj.write_cells([1.0, 2.0], [2.0, 3.0], [1, 7], [0.9, 0.8])
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.geojson", "empty.geojson"]

    with pytest.raises(RuntimeError, match="with"):
        GeoJSONPointWriter(target).write_cells([1.0], [2.0], [1], [0.9])


def test_geojson_custom_classes_and_colors(tmp_path):
    cs = ClassSet(("lymphocyte", "tumour", "stroma"), (1, 2, 5))
    path = tmp_path / "c.geojson"
    with GeoJSONPointWriter(path, cs, {5: (1, 2, 3)}) as gj:
        gj.write_cells([0, 1, 2], [0, 1, 2], [5, 1, 2], [1, 1, 1])
    feats = _check_features(json.loads(path.read_text()))
    cl = [f["properties"]["classification"] for f in feats]
    assert cl[0] == {"name": "stroma", "color": [1, 2, 3]}
    assert cl[1] == {"name": "lymphocyte", "color": list(DEFAULT_COLORS[0])}


# ---------------------------------------------------------------------- polygons
def test_mask_polygons_exact_area_and_frame():
    m = np.zeros((6, 9), bool)
    m[1:3, 2:5] = True
    poly = mask_polygons(m, origin=(100.0, 50.0), scale=4.0)
    assert isinstance(poly, MultiPolygon) and len(poly.geoms) == 1
    # pixel (r, c) covers [x0 + c·s, x0 + (c+1)·s) × [y0 + r·s, …)
    assert poly.equals(box(100 + 2 * 4, 50 + 1 * 4, 100 + 5 * 4, 50 + 3 * 4))


def test_mask_polygons_ring_blobs_empty():
    ring = np.zeros((20, 20), bool)
    ring[2:18, 2:18] = True
    ring[6:12, 5:14] = False
    ring[8:10, 8:10] = True  # an island in the hole
    p = mask_polygons(ring, scale=2.5)
    assert p.is_valid and p.area == ring.sum() * 2.5**2
    assert len(p.geoms) == 2
    outer = max(p.geoms, key=lambda g: g.area)
    assert len(outer.interiors) == 1 and shapely.Polygon(outer.interiors[0]).area == 6 * 9 * 2.5**2
    assert not p.contains(Point(6 * 2.5, 7 * 2.5)) and p.contains(Point(8.5 * 2.5, 8.5 * 2.5))

    two = np.zeros((10, 30), bool)
    two[2:8, 2:9] = True
    two[3:6, 15:28] = True
    assert len(mask_polygons(two).geoms) == 2

    empty = mask_polygons(np.zeros((5, 5), bool))
    assert isinstance(empty, MultiPolygon) and empty.is_empty
    # diagonal neighbours are separate pieces touching at a corner; the result stays valid
    diag = np.eye(4, dtype=bool)
    d = mask_polygons(diag)
    assert d.is_valid and len(d.geoms) == 4 and d.area == 4


def test_mask_polygons_random_masks_match_pixel_union():
    for seed in range(25):
        rng = np.random.default_rng(seed)
        h, w = rng.integers(1, 25, 2)
        m = rng.random((h, w)) < rng.uniform(0.2, 0.8)
        p = mask_polygons(m, origin=(-3.0, 7.0), scale=2.0)
        assert p.is_valid and p.area == m.sum() * 4.0
        r, c = np.nonzero(m)
        ref = shapely.unary_union(shapely.box(-3 + 2 * c, 7 + 2 * r, -3 + 2 * (c + 1), 7 + 2 * (r + 1)))
        assert p.symmetric_difference(ref).area == 0


def test_mask_polygons_small_pieces_holes_and_simplify():
    m = np.zeros((40, 40), bool)
    yy, xx = np.mgrid[:40, :40]
    m[(yy - 20) ** 2 + (xx - 20) ** 2 < 15**2] = True
    m[19:21, 19:21] = False  # a 4-px hole
    m[2, 2] = True  # a 1-px speck
    full = mask_polygons(m)
    assert len(full.geoms) == 2 and full.area == m.sum()
    clean = mask_polygons(m, min_area_px=5, min_hole_px=5)
    assert len(clean.geoms) == 1 and not clean.geoms[0].interiors
    assert clean.area == m.sum() - 1 + 4
    simple = mask_polygons(m, min_area_px=5, min_hole_px=5, simplify=True)
    assert simple.is_valid and isinstance(simple, MultiPolygon)
    assert len(shapely.get_coordinates(simple)) < len(shapely.get_coordinates(clean))
    assert abs(simple.area - clean.area) < 0.5 * clean.length  # within half a pixel along the boundary
    assert simple.hausdorff_distance(clean) <= 0.5 + 1e-9


# ---------------------------------------------------------------------- purity
def test_purity_grid_hand_count():
    # 100 × 60 level-0 px at 0.5 µm/px, 20 µm squares → side 40 px, 2 rows × 3 cols
    x = np.array([0.0, 10.0, 39.4, 39.5, 45.0, 99.0, 5.0, 5.0, 50.0, 120.0])
    y = np.array([0.0, 10.0, 5.0, 5.0, 5.0, 59.0, 45.0, 45.0, 45.0, 5.0])
    c = np.array([2, 1, 2, 2, 1, 2, 3, 1, 0, 2])
    frac, counts = purity_grid(x, y, c, width=100, height=60, cell_um=20, mpp=0.5)
    assert frac.shape == counts.shape == (2, 3)
    # square (0,0): x+0.5 in [0, 40): cells 0 (TC), 1 (BC), 2 (TC); 39.5 + 0.5 = 40 → square (0,1)
    # square (0,1): cells 3 (TC), 4 (BC); (1,2): cell 5 (TC); (1,0): cell 7 (BC) (class 3 ignored)
    # cell 8 (class 0) ignored; cell 9 outside the slide
    np.testing.assert_array_equal(counts, [[3, 2, 0], [1, 0, 1]])
    np.testing.assert_allclose(frac, [[2 / 3, 0.5, np.nan], [0.0, np.nan, 1.0]])
    assert counts.dtype == np.int64
    frac2, counts2 = purity_grid([], [], [], width=100, height=60, cell_um=20, mpp=0.5)
    assert np.isnan(frac2).all() and counts2.sum() == 0


def test_purity_summary_hand_example():
    cls = np.array([2, 2, 1, 2, 1, 1, 1, 2, 3])
    tissue = np.array([2, 2, 2, 1, 1, 1, 0, 0, 2])
    s = purity_summary(cls, tissue)
    assert s["cells"] == 9 and s["TC"] == 4 and s["BC"] == 4
    assert s["cells_per_class"] == {"BC": 4, "TC": 4, "3": 1}
    assert s["overall"] == 0.5
    assert s["cancer_area"] == {"cells": 4, "TC": 2, "BC": 1, "purity": 2 / 3}
    assert s["outside_cancer_area"] == {"cells": 3, "TC": 1, "BC": 2, "purity": 1 / 3}
    assert s["unknown_tissue"] == {"cells": 2, "TC": 1, "BC": 1, "purity": 0.5}
    json.dumps(s)  # plain Python types
    none = purity_summary(np.array([3, 3]), np.array([2, 1]))
    assert none["overall"] is None and none["cancer_area"]["purity"] is None
    assert none["cells_per_class"] == {"BC": 0, "TC": 0, "3": 2}
    only_tc = purity_summary(pa.array([2, 2], pa.int16()), pa.array([2, 2], pa.int16()))
    assert only_tc["overall"] == 1.0 and only_tc["outside_cancer_area"]["purity"] is None


# ---------------------------------------------------------------------- figures
def test_purity_png(tmp_path):
    rng = np.random.default_rng(0)
    thumb = rng.integers(0, 256, (90, 150, 3), dtype=np.uint8)
    x, y, cls, _ = _cells(3000)  # 5000 × 3000 level-0 px
    frac, _ = purity_grid(x, y, cls, 5000, 3000, cell_um=250, mpp=0.25)
    path = tmp_path / "purity.png"
    assert write_purity_png(path, frac, thumb, (0, 5000, 3000, 0), square_px=1000, width_px=800) == path
    with Image.open(path) as im:
        im.load()
        img_w = 800 - 160
        assert im.size == (800, round(img_w * 3000 / 5000) + 60)
    assert [p.name for p in tmp_path.iterdir()] == ["purity.png"]
    # all-NaN grid (no cells) still gives a figure
    write_purity_png(tmp_path / "none.png", np.full((2, 3), np.nan), thumb, (0, 5000, 3000, 0))
    assert Image.open(tmp_path / "none.png").size[0] == 1000


def test_overlay_png(tmp_path):
    thumb = np.full((60, 100, 3), 230, np.uint8)
    x, y, cls, _ = _cells(5000)  # thumb_scale 50 → 5000 × 3000 level-0 px
    cancer = mask_polygons(np.pad(np.ones((20, 30), bool), 10), scale=50.0)
    colors = {1: DEFAULT_COLORS[0], 2: DEFAULT_COLORS[1]}
    path = tmp_path / "overlay.png"
    write_overlay_png(path, thumb, 50.0, x, y, cls, colors, cancer, max_cells=1000, names={1: "BC", 2: "TC"})
    with Image.open(path) as im:
        assert im.size == (100, 60)
        a = np.asarray(im.convert("RGB")).astype(int)
    assert (np.abs(a - 230).sum(axis=2) > 60).mean() > 0.05  # dots and outline drawn
    # no cells, no polygon
    write_overlay_png(tmp_path / "bare.png", thumb, 50.0, [], [], [], colors, None)
    with Image.open(tmp_path / "bare.png") as im:
        assert im.size == (100, 60)
        assert np.abs(np.asarray(im.convert("RGB")).astype(int) - 230).max() <= 2


def test_overlay_subsample_is_deterministic(tmp_path):
    thumb = np.zeros((40, 40, 3), np.uint8)
    x, y, cls, _ = _cells(4000)
    colors = {1: (0, 255, 0), 2: (255, 0, 0)}
    for name in ("a.png", "b.png"):
        write_overlay_png(tmp_path / name, thumb, 125.0, x, y, cls, colors, max_cells=500)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    with Image.open(tmp_path / "a.png") as im:
        assert np.asarray(im.convert("RGB")).max() > 0  # some dots drawn
