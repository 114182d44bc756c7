"""Watershed post-processing, per-nucleus classification, nucleus table and GeoJSON export."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import label, regionprops

from histozoom.data.nuclei.records import CCRCC_CLASSES
from histozoom.data.nuclei.synthetic import NucleiSynthConfig, generate_sample
from histozoom.errors import InputError
from histozoom.inference.watershed import (
    WatershedConfig,
    classify_instances,
    instances_from_maps,
    nucleus_table,
)
from histozoom.metrics.instances import score_instances
from histozoom.pair import ClassSet
from histozoom.reports.geojson import instances_to_geojson

H, W = 64, 80
CENTRES = [(32.0, 28.0), (32.0, 48.0)]  # (y, x); radius 12: the disks overlap by 4 px
R = 12.0


def _disks(centres=CENTRES, radius=R, shape=(H, W)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    inst = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate(centres, start=1):
        inst[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = k  # later disk wins the overlap
    return inst


def _maps_from_instances(inst):
    """Ideal network outputs: binary probability and a per-nucleus normalised distance map."""
    binary = (inst > 0).astype(np.float32)
    dist = np.zeros(inst.shape, np.float32)
    for r in regionprops(inst):
        sl = r.slice
        m = r.image
        d = ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
        d = d / max(d.max(), 1e-6)
        dist[sl][m] = d[m]
    return binary, dist


def _union_distance(inst):
    """Distance map of the union (what a plain EDT of the foreground would give)."""
    return ndimage.distance_transform_edt(inst > 0).astype(np.float32)


@pytest.fixture
def two_disks():
    inst = _disks()
    binary, dist = _maps_from_instances(inst)
    return inst, binary, dist


def test_threshold_merges_but_watershed_splits(two_disks):
    inst, binary, dist = two_disks
    assert label(binary > 0.5).max() == 1  # plain threshold + label: one merged object
    out = instances_from_maps(binary, dist, WatershedConfig())
    assert np.array_equal(out, instances_from_maps(binary, dist, WatershedConfig(marker_mode="local_max")))
    assert out.dtype == np.int32
    assert sorted(np.unique(out).tolist()) == [0, 1, 2]
    assert np.array_equal(out > 0, inst > 0)
    cents = [r.centroid for r in regionprops(out)]
    for cy, cx in CENTRES:
        assert min(np.hypot(cy - y, cx - x) for y, x in cents) < 2.0


def test_default_markers_are_h_maxima_and_ignore_shallow_noise_maxima(two_disks):
    """The paper's rule (h-maxima of the distance map) is the default. A predicted distance
    map with flat tops (clipped at 0.7) and noise far below ``h`` has many local maxima on
    each top, but only one h-maximum per nucleus."""
    inst, binary, dist = two_disks
    assert WatershedConfig().marker_mode == "h_maxima"
    noise = 0.01 * np.random.default_rng(0).random(dist.shape).astype(np.float32)
    noisy = np.minimum(dist, 0.7) + noise * (inst > 0)
    out = instances_from_maps(binary, noisy)
    assert out.max() == 2
    assert score_instances(inst, out).pq > 0.95
    oversplit = instances_from_maps(binary, noisy, WatershedConfig(marker_mode="local_max", min_marker_distance=1, min_size=0))
    assert oversplit.max() > 2  # plain local maxima of the same map split the nuclei


def test_h_maxima_markers_on_union_distance():
    inst = _disks()
    binary = (inst > 0).astype(np.float32)
    out = instances_from_maps(binary, _union_distance(inst), WatershedConfig(marker_mode="h_maxima", h=1.0))
    assert out.max() == 2
    cents = sorted(r.centroid[1] for r in regionprops(out))
    assert abs(cents[0] - 28) < 3 and abs(cents[1] - 48) < 3


def test_small_objects_removed_and_unmarked_component_kept(two_disks):
    inst, binary, dist = two_disks
    binary = binary.copy()
    dist = dist.copy()
    binary[2:4, 2:4] = 1.0  # 4 px speck
    dist[2:4, 2:4] = 1.0
    binary[50:58, 2:10] = 1.0  # 64 px square with a low distance: no marker above threshold
    dist[50:58, 2:10] = 0.2
    out = instances_from_maps(binary, dist, WatershedConfig(min_size=10))
    assert out.max() == 3
    assert (out[2:4, 2:4] == 0).all()
    assert len(np.unique(out[50:58, 2:10])) == 1 and out[54, 5] > 0
    assert instances_from_maps(binary, dist, WatershedConfig(min_size=100)).max() == 2
    assert instances_from_maps(np.zeros((8, 8)), np.zeros((8, 8))).max() == 0


def test_bad_inputs():
    with pytest.raises(InputError):
        instances_from_maps(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(InputError):
        instances_from_maps(np.zeros((4, 4, 2)), np.zeros((4, 4, 2)))
    with pytest.raises(ValueError):
        WatershedConfig(min_marker_distance=0)
    with pytest.raises(ValueError):
        WatershedConfig(marker_mode="peaks")


def test_classify_majority_vote_and_share(two_disks):
    inst, binary, dist = two_disks
    out = instances_from_maps(binary, dist)
    cs = ClassSet(("a", "b", "c"), (1, 2, 5))
    cmap = np.zeros(out.shape, np.int64)
    left = out == out[32, 28]
    right = out == out[32, 48]
    cmap[left] = 2
    cmap[right] = 5
    # corrupt: 10 % of the left nucleus votes 1, 30 % of the right votes background
    lpos = np.flatnonzero(left.ravel())
    rpos = np.flatnonzero(right.ravel())
    cmap.ravel()[lpos[: len(lpos) // 10]] = 1
    cmap.ravel()[rpos[: int(len(rpos) * 0.3)]] = 0
    res = classify_instances(out, cmap, cs)
    il, ir = int(out[32, 28]), int(out[32, 48])
    assert res[il][0] == 2 and res[il][1] == pytest.approx(1 - (len(lpos) // 10) / len(lpos))
    assert res[ir][0] == 5 and res[ir][1] == pytest.approx(1 - int(len(rpos) * 0.3) / len(rpos))

    # the same from (C+1, H, W) probabilities: channel k -> cs.ids[k-1]
    prob = np.zeros((4,) + out.shape, np.float32)
    lut = {0: 0, 1: 1, 2: 2, 5: 3}
    for cid, ch in lut.items():
        prob[ch][cmap == cid] = 0.9
    prob += 0.01
    assert classify_instances(out, prob, cs) == res
    with pytest.raises(InputError):
        classify_instances(out, prob[:3], cs)
    with pytest.raises(InputError):
        classify_instances(out, np.full(out.shape, 3), cs)  # 3 is not a class id
    # background loses to any class
    only_bg = cmap.copy()
    only_bg[left] = 0
    only_bg.ravel()[lpos[:3]] = 1
    c, p = classify_instances(out, only_bg, cs)[il]
    assert c == 1 and p == pytest.approx(3 / len(lpos))


def test_nucleus_table_matches_regionprops(two_disks):
    inst, binary, dist = two_disks
    out = instances_from_maps(binary, dist)
    res = classify_instances(out, np.where(out > 0, 1, 0), None)
    rows = nucleus_table(out, res)
    props = regionprops(out)
    assert [r["id"] for r in rows] == [p.label for p in props] == [1, 2]
    for row, p in zip(rows, props):
        assert row["centroid_y"] == pytest.approx(p.centroid[0])
        assert row["centroid_x"] == pytest.approx(p.centroid[1])
        y0, x0, y1, x1 = p.bbox
        assert row["bbox"] == (x0, y0, x1, y1)
        assert row["area"] == p.area
        assert row["class"] == 1 and row["probability"] == pytest.approx(1.0)
    json.dumps(rows)
    assert nucleus_table(out)[0]["class"] is None


def test_synthetic_tile_round_trip(tmp_path):
    s = generate_sample(NucleiSynthConfig(), np.random.default_rng(3), "t0")
    gt = s.inst_map
    binary, dist = _maps_from_instances(gt)
    out = instances_from_maps(binary, dist, WatershedConfig(min_size=5))
    sc = score_instances(gt, out)
    assert sc.pq > 0.85, sc
    type_map = np.zeros(gt.shape, np.int64)
    for i, c in s.inst_class.items():
        type_map[gt == i] = c
    res = classify_instances(out, type_map, CCRCC_CLASSES)
    doc = instances_to_geojson(out, res, CCRCC_CLASSES)
    assert len(doc["features"]) == out.max()
    names = {f["properties"]["classification"]["name"] for f in doc["features"]}
    assert names <= set(CCRCC_CLASSES.names)
