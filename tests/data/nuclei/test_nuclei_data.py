"""Nuclei data for CHR-Net: readers on the real files, writers, targets, synthetic grading tiles."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import scipy.io
from scipy import ndimage

from histozoom.data.io import write_image
from histozoom.data.nuclei import (
    CCRCC,
    CONSEP_CLASSES,
    ClassMerge,
    NucleiClassScheme,
    NucleiDataset,
    NucleiSample,
    binary_map,
    check_instance_map,
    class_map,
    cross_category_maps,
    distance_map,
    instance_classes,
    merge_classes,
    nuclei_targets,
    open_nuclei,
    read_consep_mat,
    read_contour_xml,
    read_folder_sample,
    read_gbm40,
    read_instance_map,
    read_miccai2015,
    read_miccai_mask,
    relabel_dense,
    write_consep_folder,
    write_nuclei_folder,
)
from histozoom.data.nuclei.synthetic import (
    NucleiSynthConfig,
    downsample_mean,
    generate_sample,
    visibility_report,
    write_synthetic_nuclei,
)
from histozoom.errors import InputError
from histozoom.pair import ClassSet


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def nuclei_dir(shared_data):
    d = shared_data / "nuclei"
    if not d.is_dir():
        pytest.skip(f"{d} missing")
    return d


@pytest.fixture(scope="module")
def synth_tiles():
    cfg = NucleiSynthConfig()
    return [generate_sample(cfg, np.random.default_rng(np.random.SeedSequence([7, k])), f"{k:02d}") for k in range(20)]


def _sample(inst, classes=None, scheme_classes=CCRCC.classes, sid="s"):
    inst = np.asarray(inst, np.int32)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, inst.shape + (3,), dtype=np.uint8)
    return NucleiSample(sid, img, inst, classes, scheme_classes if classes is not None else None)


def _touching_ids(inst):
    ids = set()
    for x, y in ((inst[:, 1:], inst[:, :-1]), (inst[1:, :], inst[:-1, :])):
        m = (x > 0) & (y > 0) & (x != y)
        ids |= set(x[m].tolist()) | set(y[m].tolist())
    return ids


# ---------------------------------------------------------------- CoNSeP-style .mat (real)
def test_consep_real_files_match_their_contents(nuclei_dir):
    root = nuclei_dir / "consep_style"
    ds = open_nuclei(root)
    assert ds.ids == ["patch1", "patch2", "patch3"]
    for s in ds:
        m = scipy.io.loadmat(root / "masks" / f"{s.id}.mat")
        inst, tmap = m["inst_map"], m["type_map"]
        np.testing.assert_array_equal(s.inst_map, inst)  # ids kept as in the file
        assert s.image.shape == (256, 256, 3) and s.image.dtype == np.uint8
        ids = np.unique(inst)[1:]
        assert list(s.instance_ids) == ids.tolist() and s.n_instances == m["inst_type"].size
        # inst_type is by increasing id, and agrees with the majority of type_map
        vote = instance_classes(inst, tmap)
        it = m["inst_type"].ravel()
        assert [s.inst_class[int(i)] for i in ids] == it.tolist()
        assert [vote[int(i)] for i in ids] == it.tolist()
        assert s.meta["type_map_disagrees"] == []
        assert set(s.inst_class.values()) <= set(CONSEP_CLASSES.ids)
        # centroids (x, y) of the file lie on the region centroids
        com = np.array(ndimage.center_of_mass(np.ones(inst.shape), inst, ids))[:, ::-1]
        assert np.abs(com - m["inst_centroid"]).max() < 0.5
        np.testing.assert_allclose(s.meta["centroids_xy"], m["inst_centroid"])
        # class map reproduces the file's type map
        np.testing.assert_array_equal(class_map(s.inst_map, s.inst_class), tmap)


def test_consep_writer_reproduces_the_real_format(nuclei_dir, tmp_path):
    s = read_consep_mat(nuclei_dir / "consep_style" / "masks" / "patch3.mat")
    write_consep_folder(tmp_path, [s])
    back = read_consep_mat(tmp_path / "masks" / "patch3.mat")
    np.testing.assert_array_equal(back.image, s.image)
    np.testing.assert_array_equal(back.inst_map, s.inst_map)
    assert back.inst_class == s.inst_class
    orig = scipy.io.loadmat(nuclei_dir / "consep_style" / "masks" / "patch3.mat")
    mine = scipy.io.loadmat(tmp_path / "masks" / "patch3.mat")
    for key in ("inst_map", "type_map", "inst_type", "inst_bbox"):
        np.testing.assert_array_equal(mine[key], orig[key], err_msg=key)
    np.testing.assert_allclose(mine["inst_centroid"], orig["inst_centroid"], atol=1e-9)
    assert not list(tmp_path.rglob(".*"))  # no temporary files left behind


def test_consep_bad_input(tmp_path):
    inst = np.zeros((8, 8), np.int32)
    inst[1:3, 1:3], inst[5:7, 5:7] = 4, 9
    write_image(tmp_path / "imgs" / "a.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "masks").mkdir()
    scipy.io.savemat(tmp_path / "masks" / "a.mat", {"inst_map": inst, "inst_type": np.array([[1]])})
    with pytest.raises(InputError, match=r"a\.mat.*inst_type has 1 entries but inst_map has 2"):
        read_consep_mat(tmp_path / "masks" / "a.mat")
    scipy.io.savemat(tmp_path / "masks" / "a.mat", {"inst_map": inst, "inst_type": np.array([[1], [9]])})
    with pytest.raises(InputError, match=r"a\.mat.*class id\(s\) \[9\] not in the class set"):
        read_consep_mat(tmp_path / "masks" / "a.mat")
    s = read_consep_mat(tmp_path / "masks" / "a.mat", classes=None)  # no check without a class set
    assert s.inst_class == {4: 1, 9: 9}
    scipy.io.savemat(tmp_path / "masks" / "a.mat", {"inst_map": np.zeros((8, 9), np.int32)})
    with pytest.raises(InputError, match=r"a\.mat.*9x8 px but its image .*a\.png is 8x8"):
        read_consep_mat(tmp_path / "masks" / "a.mat")
    (tmp_path / "masks" / "b.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(InputError, match=r"b\.mat.*not a MATLAB v5"):
        read_consep_mat(tmp_path / "masks" / "b.mat")
    scipy.io.savemat(tmp_path / "masks" / "c.mat", {"inst_map": inst})
    with pytest.raises(InputError, match=r"c\.mat.*no image found"):
        read_consep_mat(tmp_path / "masks" / "c.mat")


# ---------------------------------------------------------------- MICCAI 2015 (real)
def test_miccai_all_15_with_swap_fixed(nuclei_dir):
    root = nuclei_dir / "miccai2015"
    ds = NucleiDataset.miccai2015(root)  # fix_swapped=True by default for the release
    assert len(ds) == 15
    for s in ds:
        assert s.inst_map.shape == s.image.shape[:2]
        assert s.inst_class is None and s.n_instances == s.inst_map.max()
        # row-major layout and correct pairing: the nuclei are the dark pixels
        g = s.image.mean(axis=2)
        assert g[s.inst_map > 0].mean() < g[s.inst_map == 0].mean() - 20, s.id
        assert s.meta["swap_fixed"] == (s.id in ("image04", "image05"))
    assert ds["image04"].source.name == "image05_mask.txt"
    assert ds["image05"].source.name == "image04_mask.txt"
    assert ds["image04"].inst_map.shape == (493, 623)


def test_miccai_swap_detected_and_named(nuclei_dir):
    root = nuclei_dir / "miccai2015"
    with pytest.raises(InputError) as e:
        read_miccai2015(root / "image04.png")
    msg = str(e.value)
    assert "image04_mask.txt" in msg and "image04.png" in msg and "fix_swapped=True" in msg
    assert "863x597" in msg and "623x493" in msg
    s = read_miccai2015(root / "image05.png", fix_swapped=True)
    assert s.inst_map.shape == s.image.shape[:2] == (597, 863)
    assert s.meta["mask_path"].endswith("image04_mask.txt")
    # a correctly paired image is untouched by the option
    a, b = read_miccai2015(root / "image01.png"), read_miccai2015(root / "image01.png", fix_swapped=True)
    np.testing.assert_array_equal(a.inst_map, b.inst_map)


def test_miccai_mask_layout_and_bad_input(tmp_path):
    p = tmp_path / "imageX_mask.txt"
    p.write_text("5 4\n" + "0 0 0 0 0 0 1 1 0 0 1 1 2 0 0 0 2 2 2 0".replace(" ", "\n") + "\n")
    np.testing.assert_array_equal(
        read_miccai_mask(p), [[0, 0, 0, 0, 0], [0, 1, 1, 0, 0], [1, 1, 2, 0, 0], [0, 2, 2, 2, 0]]
    )  # the README's example
    p.write_text("5 4\n" + "0\n" * 19)
    with pytest.raises(InputError, match=r"imageX_mask\.txt.*5x4 = 20 pixels but the file holds 19"):
        read_miccai_mask(p)
    p.write_text("five 4\n0\n")
    with pytest.raises(InputError, match=r"imageX_mask\.txt:1: first line"):
        read_miccai_mask(p)
    p.write_text("2 1\n0\nx\n")
    with pytest.raises(InputError, match="integers"):
        read_miccai_mask(p)
    p.write_text("2 1\n0\n-3\n")
    with pytest.raises(InputError, match=">= 0"):
        read_miccai_mask(p)


# ---------------------------------------------------------------- GBM40 contour XML (real)
def test_gbm40_xml_to_instances(nuclei_dir):
    root = nuclei_dir / "gbm40"
    ds = open_nuclei(root)
    assert len(ds) == 12
    total_lost = 0
    for s in ds:
        xml = root / "contour_annotation_xml" / f"{s.id}_data.xml"
        n_shapes = sum(1 for _ in ET.parse(xml).getroot().iter("Shape"))
        info = s.meta["contours"]
        assert info["n_shapes"] == n_shapes
        # one instance per shape, except shapes wholly covered by later ones
        assert s.n_instances == n_shapes - len(info["empty"]) - len(info["degenerate"])
        assert set(s.instance_ids.tolist()) <= set(range(1, n_shapes + 1))
        total_lost += len(info["empty"])
        assert s.inst_map.shape == (512, 512)
        g = s.image.mean(axis=2)
        assert g[s.inst_map > 0].mean() < g[s.inst_map == 0].mean() - 30
    assert total_lost == 0  # on the real files every contour keeps pixels
    assert ds["02"].meta["contours"]["types"] == {"Polygon": 103, "Oval": 1}


def _xml(shapes, w=20, h=16):
    body = []
    for t, data in shapes:
        if t == "Oval":
            x, y, ww, hh, rot = data
            body.append(f'<Shape Type="Oval"><Data Rotation="{rot}"><Extent X="{x}" Y="{y}" '
                        f'Width="{ww}" Height="{hh}" /></Data></Shape>')
        else:
            pts = "".join(f'<Point X="{x}" Y="{y}" />' for x, y in data)
            body.append(f'<Shape Type="{t}"><Data><Points>{pts}</Points></Data></Shape>')
    return (f'<Document><ImageOptions><Canvas><Box Left="0" Top="0" Width="{w}" Height="{h}" /></Canvas>'
            f'</ImageOptions><Layers><Layer><Shapes>{"".join(body)}</Shapes></Layer></Layers></Document>')


def test_contour_xml_overlaps_later_wins(tmp_path):
    p = tmp_path / "t.xml"
    sq = lambda x0, y0, x1, y1: [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]  # noqa: E731
    p.write_text(_xml([("Polygon", sq(1, 1, 8, 8)), ("SmoothPolygon", sq(5, 5, 12, 12)),
                       ("Polygon", sq(2, 2, 3, 3)), ("Polygon", [(0, 0), (1, 1)]),
                       ("Oval", (14, 2, 4, 12, 0))]))
    inst, info = read_contour_xml(p)
    assert inst.shape == (16, 20)
    assert inst[6, 6] == 2 and inst[1, 1] == 1 and inst[10, 10] == 2 and inst[2, 2] == 3
    assert info["degenerate"] == [4] and info["empty"] == [] and info["overdrawn_px"] > 0
    assert set(np.unique(inst)) == {0, 1, 2, 3, 5}
    ys, xs = np.nonzero(inst == 5)  # the oval: 4 wide, 12 high
    assert np.ptp(ys) > 2 * np.ptp(xs)
    with pytest.raises(InputError, match=r"t\.xml.*canvas is 20x16 px but the image is 10x10"):
        read_contour_xml(p, (10, 10))
    p.write_text(_xml([("Rectangle", sq(1, 1, 4, 4))]))
    with pytest.raises(InputError, match="unsupported type 'Rectangle'"):
        read_contour_xml(p)
    p.write_text("<Document><unclosed>")
    with pytest.raises(InputError, match=r"t\.xml.*cannot parse XML"):
        read_contour_xml(p)


def test_gbm40_image_xml_size_mismatch_names_both(tmp_path):
    (tmp_path / "raw_image").mkdir()
    (tmp_path / "contour_annotation_xml").mkdir()
    write_image(tmp_path / "raw_image" / "01.tif", np.zeros((10, 12, 3), np.uint8))
    (tmp_path / "contour_annotation_xml" / "01_data.xml").write_text(_xml([]))
    with pytest.raises(InputError) as e:
        read_gbm40(tmp_path / "raw_image" / "01.tif")
    assert "01_data.xml" in str(e.value) and "01.tif" in str(e.value)


# ---------------------------------------------------------------- plain folder layout
@pytest.mark.parametrize("label_format,class_format", [("npy", "json"), ("png", "types"), ("tif", "json")])
def test_folder_round_trip(tmp_path, synth_tiles, label_format, class_format):
    tiles = synth_tiles[:3]
    write_nuclei_folder(tmp_path, tiles, CCRCC, mpp=0.25, label_format=label_format, class_format=class_format)
    ds = open_nuclei(tmp_path)
    assert ds.ids == [t.id for t in tiles]
    assert ds.scheme == CCRCC and ds.mpp == 0.25
    for t, b in zip(tiles, ds):
        np.testing.assert_array_equal(b.image, t.image)
        np.testing.assert_array_equal(b.inst_map, t.inst_map)
        assert b.inst_class == t.inst_class and b.classes == CCRCC.classes and b.mpp == 0.25
    assert not list(tmp_path.rglob(".*"))


def test_folder_yaml_classes_and_splits(tmp_path):
    inst = np.zeros((6, 6), np.int32)
    inst[0:2, 0:2], inst[3:5, 3:5] = 3, 8
    s = _sample(inst, {3: 1, 8: 2}, ClassSet.from_names(["a", "b"]))
    write_nuclei_folder(tmp_path / "train", [s])
    (tmp_path / "classes.yaml").write_text("- a\n- b\n")
    with pytest.raises(InputError, match="pass split="):
        open_nuclei(tmp_path)
    ds = open_nuclei(tmp_path, split="train")
    assert ds.scheme.classes == ClassSet(("a", "b"), (1, 2))
    assert ds[0].inst_class == {3: 1, 8: 2}


def test_folder_bad_input(tmp_path):
    inst = np.zeros((6, 6), np.int32)
    inst[0:2, 0:2], inst[3:5, 3:5] = 1, 2
    s = _sample(inst, {1: 1, 2: 4})
    write_nuclei_folder(tmp_path, [s], CCRCC)
    classes = ClassSet.from_names(["G1", "G2"])
    with pytest.raises(InputError, match=r"classes/s\.json.*class id\(s\) 4 not in the class set"):
        read_folder_sample(tmp_path, "s", classes)
    (tmp_path / "classes" / "s.json").write_text(json.dumps({"1": 1}))
    with pytest.raises(InputError, match=r"classes/s\.json.*no class for instance id\(s\) 2"):
        read_folder_sample(tmp_path, "s", CCRCC.classes)
    (tmp_path / "classes" / "s.json").write_text(json.dumps({"1": 1, "2": 1, "7": 2}))
    with pytest.raises(InputError, match=r"classes/s\.json.*id\(s\) 7 that are not in"):
        read_folder_sample(tmp_path, "s", CCRCC.classes)
    (tmp_path / "classes" / "s.json").write_text("{broken")
    with pytest.raises(InputError, match=r"classes/s\.json.*invalid instance classes \(line 1, column 2"):
        read_folder_sample(tmp_path, "s", CCRCC.classes)
    (tmp_path / "classes" / "s.json").unlink()
    np.save(tmp_path / "labels" / "s.npy", np.zeros((5, 6), np.int32))
    with pytest.raises(InputError, match=r"labels/s\.npy.*6x5 px but its image"):
        read_folder_sample(tmp_path, "s")
    np.save(tmp_path / "labels" / "s.npy", np.full((6, 6), 0.5))
    with pytest.raises(InputError, match=r"labels/s\.npy.*non-integer"):
        read_folder_sample(tmp_path, "s")
    (tmp_path / "labels" / "s.npy").write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"labels/s\.npy.*cannot read"):
        read_folder_sample(tmp_path, "s")
    (tmp_path / "images" / "s.png").write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"images/s\.png.*cannot decode"):
        read_folder_sample(tmp_path, "s")
    (tmp_path / "classes.json").write_text(json.dumps({"classes": {"0": "bg"}}))
    with pytest.raises(InputError, match=r"classes\.json.*bad class file"):
        open_nuclei(tmp_path)


def test_instance_map_files(tmp_path):
    a = np.zeros((5, 7), np.int32)
    a[1:3, 1:3] = 300  # needs 16 bits in a PNG
    write_image(tmp_path / "a.png", a.astype(np.uint16))
    write_image(tmp_path / "a.tif", a)
    np.save(tmp_path / "a.npy", a)
    for ext in ("png", "tif", "npy"):
        np.testing.assert_array_equal(read_instance_map(tmp_path / f"a.{ext}", (5, 7)), a)
    with pytest.raises(InputError, match=r"a\.npy.*expected 8x5"):
        read_instance_map(tmp_path / "a.npy", (5, 8))
    with pytest.raises(InputError, match="file not found"):
        read_instance_map(tmp_path / "none.npy")


# ---------------------------------------------------------------- targets
def _disk(shape, cx, cy, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def test_distance_map_dist_definition():
    inst = np.zeros((40, 60), np.int32)
    inst[_disk(inst.shape, 20, 20, 10)] = 1
    inst[_disk(inst.shape, 37, 20, 10) & (inst == 0)] = 2  # touches/abuts nucleus 1
    inst[35, 5] = 3  # a one-pixel nucleus
    d = distance_map(inst)
    assert d.dtype == np.float32 and d.shape == inst.shape
    assert (d[inst == 0] == 0).all() and (d[inst > 0] > 0).all() and d.max() == 1.0
    for k in (1, 2, 3):
        assert d[inst == k].max() == 1.0
    assert d[35, 5] == 1.0
    # each nucleus peaks inside itself near its own centre; a global EDT of the union does not
    for k, cx in ((1, 20), (2, 37)):
        ys, xs = np.nonzero((d == 1.0) & (inst == k))
        assert np.abs(xs.mean() - cx) < 4 and np.abs(ys.mean() - 20) < 2
    glob = ndimage.distance_transform_edt(inst > 0)
    assert inst[20, 30] == 1 and inst[20, 31] == 2  # the contact line
    assert glob[20, 30] / glob.max() > 0.6  # the union's EDT stays high across the contact ...
    assert d[20, 30] < 0.2 and d[20, 31] < 0.2  # ... ours drops to each nucleus's border there
    # monotone toward the centre of nucleus 1, along the left radius
    prof = d[20, 10:21]
    assert (np.diff(prof) >= 0).all() and prof[0] == pytest.approx(0.1, abs=0.005)


def test_distance_map_equals_whole_image_transform(nuclei_dir):
    s = read_consep_mat(nuclei_dir / "consep_style" / "masks" / "patch3.mat")
    d = distance_map(s.inst_map)
    assert _touching_ids(s.inst_map)  # this tile has touching nuclei
    for k in s.instance_ids:
        m = s.inst_map == k
        e = ndimage.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
        np.testing.assert_allclose(d[m], e[m] / e[m].max(), rtol=1e-6)
        assert d[m].max() == 1.0
    assert (d[s.inst_map == 0] == 0).all()
    assert distance_map(np.zeros((4, 4), np.int32)).max() == 0


def test_class_and_cross_category_maps():
    inst = np.zeros((4, 10), np.int32)
    for k in range(1, 5):
        inst[1:3, 2 * k - 1:2 * k + 1] = 10 * k
    s = _sample(inst, {10: 1, 20: 2, 30: 3, 40: 4})
    t = nuclei_targets(s, CCRCC)
    np.testing.assert_array_equal(t.binary, inst > 0)
    row = t.classes[1]
    assert row.tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4, 0]
    # task 1: bg, G1+G2, G3, endothelial; task 2: bg, G1, G2+G3, endothelial
    assert t.tasks["task1"][1].tolist() == [0, 1, 1, 1, 1, 2, 2, 3, 3, 0]
    assert t.tasks["task2"][1].tolist() == [0, 1, 1, 2, 2, 2, 2, 3, 3, 0]
    assert CCRCC.merge("task1").classes.names == ("G1+G2", "G3", "endothelial")
    assert CCRCC.merge("task2").classes.names == ("G1", "G2+G3", "endothelial")
    # generic: CoNSeP's 7 types -> HoVer-Net's 4, on maps and on per-instance dicts
    consep4 = NucleiClassScheme("consep4", CONSEP_CLASSES, (
        ClassMerge("hovernet", ((1,), (2,), (3, 4), (5, 6, 7)), ("other", "inflammatory", "epithelial", "spindle")),
    ))
    cm = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 255]], np.uint8)
    out = merge_classes(cm, consep4.merge("hovernet").mapping, keep=(0, 255))
    assert out.tolist() == [[0, 1, 2, 3, 3, 4, 4, 4, 255]] and out.dtype == np.uint8
    assert cross_category_maps(cm[:, :8], consep4)["hovernet"].tolist() == [[0, 1, 2, 3, 3, 4, 4, 4]]
    assert merge_classes({5: 2, 6: 3}, CCRCC.merge("task2").mapping) == {5: 2, 6: 2}
    with pytest.raises(InputError, match=r"class\(es\) \[255\]"):
        merge_classes(cm, consep4.merge("hovernet").mapping)
    with pytest.raises(ValueError, match="covers classes"):
        NucleiClassScheme("x", CCRCC.classes, (ClassMerge("m", ((1, 2),), ("a",)),))
    with pytest.raises(ValueError, match="disjoint"):
        ClassMerge("m", ((1, 2), (2,)), ("a", "b"))
    # samples without classes: binary and distance only
    t = nuclei_targets(_sample(inst))
    assert t.classes is None and t.tasks == {}


def test_sample_record_checks():
    inst = np.zeros((4, 4), np.int32)
    inst[1, 1] = 2
    with pytest.raises(InputError, match="no class for instance"):
        _sample(inst, {3: 1})
    with pytest.raises(InputError, match=r"class id\(s\) 9 not in the class set"):
        _sample(inst, {2: 9})
    with pytest.raises(InputError, match="4x4 px but the image is 5x4"):
        NucleiSample("x", np.zeros((4, 5, 3), np.uint8), inst)
    s = _sample(inst, {2: 1, 5: 3})
    assert s.inst_class == {2: 1}  # extra ids dropped


def test_relabel_dense_is_sequential_in_id_order():
    inst = np.array([[0, 9, 9, 0], [40, 0, 7, 7], [40, 40, 0, 9]], np.int32)
    ids, dense = relabel_dense(inst)
    assert ids.tolist() == [7, 9, 40] and ids.dtype == np.int64
    assert dense.dtype == np.int32
    assert dense.tolist() == [[0, 2, 2, 0], [3, 0, 1, 1], [3, 3, 0, 2]]
    np.testing.assert_array_equal(np.concatenate([[0], ids])[dense], inst)
    ids, dense = relabel_dense(np.full((2, 3), 5, np.int32))  # no background
    assert ids.tolist() == [5] and dense.tolist() == [[1, 1, 1], [1, 1, 1]]
    for empty in (np.zeros((3, 4), np.int32), np.zeros((0, 4), np.int32)):
        ids, dense = relabel_dense(empty)
        assert ids.size == 0 and dense.shape == empty.shape and not dense.any()


def test_class_map_and_instance_classes_are_inverse():
    rng = np.random.default_rng(5)
    inst = rng.choice([0, 0, 3, 11, 12, 40], size=(30, 40)).astype(np.int32)
    cls = {3: 2, 11: 1, 12: 4, 40: 2}
    cmap = class_map(inst, cls)
    assert cmap.dtype == np.int32 and not cmap[inst == 0].any()
    assert instance_classes(inst, cmap) == cls
    assert list(instance_classes(inst, cmap)) == [3, 11, 12, 40]  # ids increasing
    assert instance_classes(np.zeros((4, 4), np.int32), np.zeros((4, 4), np.int32)) == {}
    # the vote: most pixels, a non-zero type beats 0, ties go to the smaller type
    inst = np.zeros((4, 6), np.int32)
    inst[0, :5], inst[2, :4], inst[3, :2] = 3, 9, 5
    types = np.zeros_like(inst)
    types[0, :5], types[2, :4], types[3, :2] = [2, 2, 2, 1, 1], [0, 0, 0, 4], [6, 1]
    assert instance_classes(inst, types) == {3: 2, 5: 1, 9: 4}
    assert instance_classes(inst, types.astype(float)) == {3: 2, 5: 1, 9: 4}  # .mat doubles
    with pytest.raises(InputError, match="type map is 5x4 px but the instance map is 6x4"):
        instance_classes(inst, types[:, :5])
    with pytest.raises(InputError, match="type map has non-integer values"):
        instance_classes(inst, types + 0.5)
    with pytest.raises(InputError, match="type map values must be >= 0"):
        instance_classes(inst, types - 1)
    with pytest.raises(InputError, match="no class for instance id 9"):
        class_map(inst, {3: 1, 5: 1})


def test_one_validator_for_instance_maps():
    a = np.zeros((3, 4), np.int64)
    a[1, 1] = 7
    out = check_instance_map(a, None)
    assert out.dtype == np.int32 and out.flags.c_contiguous and out[1, 1] == 7
    assert check_instance_map(a.astype(bool), None).max() == 1
    assert check_instance_map(a.astype(float), None).tolist() == a.tolist()
    assert check_instance_map(np.stack([a, a, a], -1), None).shape == (3, 4)  # grey saved as RGB
    with pytest.raises(InputError, match=r"f\.npy.*instance map must be 2-D"):
        check_instance_map(a[None], "f.npy")
    with pytest.raises(InputError, match="instance ids must be >= 0"):
        check_instance_map(a - 1, None)
    with pytest.raises(InputError, match="instance id 4294967296 does not fit in int32"):
        check_instance_map(a * 0 + 2**32, None)
    with pytest.raises(InputError, match="must hold integers"):
        check_instance_map(a.astype(complex), None)
    with pytest.raises(InputError, match="type_map has non-integer values"):
        check_instance_map(np.full((2, 2), np.nan), None, "type_map")


# ---------------------------------------------------------------- synthetic grading tiles
def test_synthetic_determinism(synth_tiles):
    tiles = synth_tiles
    cfg = NucleiSynthConfig()
    a = generate_sample(cfg, np.random.default_rng(np.random.SeedSequence([7, 3])), "03")
    b = tiles[3]
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.inst_map, b.inst_map)
    assert a.inst_class == b.inst_class and a.meta == b.meta
    c = generate_sample(cfg, np.random.default_rng(np.random.SeedSequence([8, 3])), "03")
    assert not np.array_equal(a.image, c.image)
    assert b.image.shape == (256, 256, 3) and b.mpp == 0.25 and b.classes == CCRCC.classes


def test_synthetic_class_mix_shapes_and_touching(synth_tiles):
    from skimage.measure import regionprops

    tiles = synth_tiles
    cfg = NucleiSynthConfig()
    counts = np.zeros(5)
    n_touch = n_all = n_merged = 0
    ecc = []
    for s in tiles:
        for c in s.inst_class.values():
            counts[c] += 1
        n_all += s.n_instances
        n_touch += len(_touching_ids(s.inst_map))
        n_merged += s.n_instances - ndimage.label(s.inst_map > 0)[1]
        ecc += [r.eccentricity for r in regionprops(s.inst_map) if s.inst_class[r.label] == CCRCC.classes.id("endothelial")]
        assert s.n_instances >= 10
    share = counts[1:] / counts.sum()
    weights = np.array([p.weight for p in cfg.classes])
    assert np.abs(share - weights / weights.sum()).max() < 0.1, share
    assert min(ecc) > 0.8 and len(ecc) > 20
    assert n_touch / n_all > 0.2  # a fair share of nuclei touch another one ...
    assert n_merged / n_all > 0.1  # ... so that a threshold merges them


def test_synthetic_nucleoli_follow_the_isup_rule(synth_tiles):
    tiles = synth_tiles
    rep = visibility_report(tiles, factor=4)
    assert set(rep) == {"G2", "G3"} and rep["G2"]["n"] > 40 and rep["G3"]["n"] > 30
    # G2: visible at 400x, gone at 100x (as often above G1's chromatin as chance allows)
    assert rep["G2"]["400x"] > 0.9
    assert rep["G2"]["100x"] < 0.25
    # G3: visible at both
    assert rep["G3"]["400x"] > 0.9 and rep["G3"]["100x"] > 0.9
    # G1 and endothelial nuclei have none
    g13 = {CCRCC.classes.id("G2"), CCRCC.classes.id("G3")}
    assert all(n["class"] in g13 for s in tiles for n in s.meta["nucleoli"])
    # a nucleolus lies in its own nucleus
    for s in tiles:
        for n in s.meta["nucleoli"]:
            assert s.inst_map[int(round(n["y"])), int(round(n["x"]))] == n["id"]
    lo = downsample_mean(tiles[0].image, 4)
    assert lo.shape == (64, 64, 3)


def test_synthetic_config_dict_round_trip():
    cfg = NucleiSynthConfig(size=64, n_nuclei=(4, 6), touching=0.2)
    d = cfg.to_dict()
    # the JSON form: DictConfig fields, tuples as lists once dumped, the scheme as in a class file
    assert d["scheme"] == CCRCC.to_dict() and d["n_nuclei"] == (4, 6)
    assert d["classes"][1] == {"name": "G2", "radius_um": (3.0, 3.7), "aspect": (1.0, 1.35), "darkness": (0.8, 1.0),
                               "nucleolus_um": (0.25, 0.31), "nucleolus_od": 0.3, "weight": 0.25, "irregularity": 0.05}
    assert set(d) == {"size", "mpp", "low_mag_factor", "n_nuclei", "touching", "chromatin", "chromatin_um", "noise",
                      "classes", "scheme"}
    back = NucleiSynthConfig.from_dict(json.loads(json.dumps(d)))
    assert back == cfg and isinstance(back.n_nuclei, tuple) and back.scheme == CCRCC
    assert back.classes[0].radius_um == (2.7, 3.3)
    assert cfg.replace(size=128).size == 128
    with pytest.raises(ValueError, match="unknown NucleiSynthConfig fields"):
        NucleiSynthConfig.from_dict({**d, "colour": 1})
    with pytest.raises(ValueError, match="unknown NucleusClassParams fields"):
        NucleiSynthConfig.from_dict({**d, "classes": [{**d["classes"][0], "size": 1}]})


def test_write_synthetic_nuclei(tmp_path):
    root = write_synthetic_nuclei(tmp_path / "syn", 10, seed=3)
    assert {p.name for p in root.iterdir()} == {"classes.json", "synthetic.json", "train", "val", "test"}
    sizes = {sp: len(open_nuclei(root, split=sp)) for sp in ("train", "val", "test")}
    assert sizes == {"train": 7, "val": 1, "test": 2}
    ds = open_nuclei(root, split="test")
    assert ds.scheme == CCRCC and ds.mpp == 0.25
    s = ds[0]
    ref = generate_sample(NucleiSynthConfig(), np.random.default_rng(np.random.SeedSequence([3, 8])), "0008")
    assert s.id == "0008"
    np.testing.assert_array_equal(s.image, ref.image)
    np.testing.assert_array_equal(s.inst_map, ref.inst_map)
    assert s.inst_class == ref.inst_class
    rep = json.loads((root / "synthetic.json").read_text())
    assert rep["splits"]["val"]["ids"] == ["0007"] and "G2" in rep["visibility"]
    assert NucleiSynthConfig.from_dict(rep["config"]) == NucleiSynthConfig()  # the file reads back
    with pytest.raises(InputError, match="not empty"):
        write_synthetic_nuclei(tmp_path / "syn", 2, seed=3)
    t = nuclei_targets(s, ds.scheme)
    assert set(np.unique(t.tasks["task1"])) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(binary_map(s.inst_map), t.binary)
