"""QuPath GeoJSON of nucleus instances: polygons, classes, measurements, atomic writes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from shapely.geometry import Point, shape
from skimage.draw import disk

from histozoom.errors import InputError
from histozoom.inference.watershed import classify_instances, nucleus_table
from histozoom.pair import ClassSet
from histozoom.reports.geojson import instances_to_geojson, write_geojson


def _two_nuclei() -> np.ndarray:
    """Two touching disks of radius 12 px (ids 1 and 2) in a 64×80 map."""
    inst = np.zeros((64, 80), np.int32)
    for k, centre in enumerate(((32, 28), (32, 48)), start=1):
        inst[disk(centre, 12, shape=inst.shape)] = k
    return inst


def test_geojson_polygons(tmp_path):
    out = _two_nuclei()
    cs = ClassSet(("tumour", "stroma"), (1, 2))
    cmap = np.where(out == 1, 1, np.where(out == 2, 2, 0))
    res = classify_instances(out, cmap, cs)
    doc = instances_to_geojson(out, res, cs, colors={1: (255, 0, 0), 2: (0, 0, 255)})
    assert doc["type"] == "FeatureCollection"
    feats = doc["features"]
    assert len(feats) == out.max() == 2
    rows = {r["id"]: r for r in nucleus_table(out, res)}
    for f in feats:
        assert f["type"] == "Feature" and f["geometry"]["type"] == "Polygon"
        ring = f["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1] and len(ring) >= 4
        props = f["properties"]
        assert props["objectType"] == "detection"
        iid = props["measurements"]["instance_id"]
        poly = shape(f["geometry"])
        assert poly.is_valid
        assert abs(poly.area - rows[iid]["area"]) / rows[iid]["area"] < 0.15
        assert poly.contains(Point(rows[iid]["centroid_x"], rows[iid]["centroid_y"]))
        name = props["classification"]["name"]
        assert name == ("tumour" if iid == 1 else "stroma")
        assert props["classification"]["color"] == ([255, 0, 0] if iid == 1 else [0, 0, 255])
        assert props["measurements"]["probability"] == pytest.approx(1.0)

    # offset / scale
    doc2 = instances_to_geojson(out, res, cs, offset=(1000, 2000), scale=2.0)
    p1, p2 = shape(doc["features"][0]["geometry"]), shape(doc2["features"][0]["geometry"])
    assert p2.area == pytest.approx(4 * p1.area)
    assert p2.centroid.x == pytest.approx(2 * p1.centroid.x + 1000)
    assert p2.centroid.y == pytest.approx(2 * p1.centroid.y + 2000)
    assert len(doc2["features"][0]["properties"]["classification"]["color"]) == 3

    # JSON round trip through the atomic writer
    path = tmp_path / "sub" / "nuclei.geojson"
    write_geojson(path, doc)
    assert json.loads(path.read_text()) == json.loads(json.dumps(doc))
    assert [p for p in os.listdir(path.parent)] == ["nuclei.geojson"]


def test_write_geojson_atomic(tmp_path):
    path = tmp_path / "out.geojson"
    path.write_text("old")
    bad = {"type": "FeatureCollection", "features": [{"x": object()}]}
    with pytest.raises(TypeError):
        write_geojson(path, bad)
    assert path.read_text() == "old"  # the old file is untouched, no temp file left
    assert os.listdir(tmp_path) == ["out.geojson"]
    with pytest.raises(InputError):
        write_geojson(path, {"type": "Feature"})
