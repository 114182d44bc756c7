"""Readers on the real files and on generated datasets in each layout, and bad input."""

import json

import numpy as np
import pytest

from conftest import make_pair
from histozoom.data.base import DatasetSpec
from histozoom.data.gc_container import GrandChallengeContainer, write_container
from histozoom.data.io import read_points_csv, read_rgb
from histozoom.data.ocelot_release import OcelotRelease, OcelotReleaseWriter
from histozoom.data.open import detect_format, is_dataset, open_dataset, pick_split
from histozoom.data.own_layout import OwnDataset, write_own_dataset
from histozoom.errors import InputError
from histozoom.pair import OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES, ClassSet


def pairs_equal(a, b, jpeg=False):
    assert a.id == b.id
    assert a.placement.fractions() == pytest.approx(b.placement.fractions(), abs=1e-9)
    if jpeg:
        assert np.abs(a.cell_image.astype(int) - b.cell_image).mean() < 20
    else:
        np.testing.assert_array_equal(a.cell_image, b.cell_image)
        np.testing.assert_array_equal(a.tissue_image, b.tissue_image)
    if a.cell_points is not None:
        np.testing.assert_array_equal(a.cell_points.xy, b.cell_points.xy)
        np.testing.assert_array_equal(a.cell_points.cls, b.cell_points.cls)
    if a.tissue_mask is not None:
        np.testing.assert_array_equal(a.tissue_mask, b.tissue_mask)


# ---------------------------------------------------------------- real files
def test_real_container_sample_004(sample_004):
    c = GrandChallengeContainer(sample_004)
    assert c.ids == ["000"] and len(c) == 1
    pair = c[0]
    assert pair.cell_image.shape == (1024, 1024, 3) and pair.tissue_image.shape == (1024, 1024, 3)
    assert pair.placement.window_int() == (512, 0, 768, 256)
    assert pair.organ == "kidney"
    pts = read_points_csv(sample_004 / "cell_gt_004.csv", OCELOT_CELL_CLASSES, pair.cell_size)
    assert len(pts) == 177 and set(pts.cls.tolist()) == {2}


def test_real_challenge_points_load(shared_data):
    from histozoom.data.challenge_json import read_challenge_points

    res = read_challenge_points(shared_data / "ocelot/points/official_test_126_cell_gt.json")
    per_image = getattr(res, "per_image", res)
    assert sum(len(p) for p in per_image.values()) > 1000
    assert max(per_image) < 126


# ---------------------------------------------------------------- generated datasets
@pytest.fixture
def pairs():
    rng = np.random.default_rng(0)
    return [make_pair(rng, pid=f"{i:03d}", centre=(0.3 + 0.1 * i, 0.5)) for i in range(3)]


def test_release_round_trip(tmp_path, pairs):
    with OcelotReleaseWriter(tmp_path, DatasetSpec(OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES)) as w:
        for p in pairs[:2]:
            w.add(p, "train", image_ext=".png")
        w.add(pairs[2], "test", image_ext=".png")
    ds = open_dataset(tmp_path)
    assert isinstance(ds, OcelotRelease) and ds.splits == ["train", "test"]
    train = ds.split("train")
    assert train.ids == ["000", "001"]
    for a, b in zip(pairs[:2], train, strict=True):
        pairs_equal(a, b)
    assert train[0].organ == "kidney"


def test_release_jpeg_images(tmp_path, pairs):
    yy, xx = np.mgrid[0:48, 0:64]
    smooth = np.stack([xx * 3, yy * 4, (xx + yy) * 2], -1).astype(np.uint8)
    pair = pairs[0].replace(cell_image=smooth)
    with OcelotReleaseWriter(tmp_path) as w:
        w.add(pair, "val")
    got = OcelotRelease(tmp_path).split("val")[0]
    assert (tmp_path / "images/val/cell/000.jpg").is_file()
    assert np.abs(got.cell_image.astype(int) - smooth).mean() < 3
    np.testing.assert_array_equal(got.tissue_mask, pair.tissue_mask)


def test_container_round_trip(tmp_path, pairs):
    write_container(tmp_path, pairs)
    c = open_dataset(tmp_path).split("container")
    assert c.ids == ["000", "001", "002"]
    for a, b in zip(pairs, c, strict=True):
        np.testing.assert_array_equal(a.cell_image, b.cell_image)
        assert a.placement.fractions() == pytest.approx(b.placement.fractions())


def test_own_layout_any_classes(tmp_path):
    rng = np.random.default_rng(1)
    spec = DatasetSpec(ClassSet.from_names(["TC+", "TC-", "LC"]), ClassSet.from_names(["BG", "CA", "ST"], ignore=255),
                       cell_mpp=0.25, tissue_mpp=1.0, name="carp-like")
    ps = [make_pair(rng, pid=f"p{i}", cell_mpp=0.25, tissue_mpp=1.0) for i in range(2)]
    ps[1].cell_points.cls[:] = 3
    write_own_dataset(tmp_path, spec, {"train": ps[:1], "test": ps[1:]})
    ds = open_dataset(tmp_path)
    assert isinstance(ds, OwnDataset)
    assert ds.spec.cell_classes.names == ("TC+", "TC-", "LC") and ds.spec.cell_mpp == 0.25
    assert ds.splits == ["test", "train"]
    pairs_equal(ps[1], ds.split("test")[0])


# ---------------------------------------------------------------- bad input
def _release(tmp_path, pairs):
    with OcelotReleaseWriter(tmp_path) as w:
        w.add(pairs[0], "train", image_ext=".png")
    return tmp_path


def test_bad_truncated_image(tmp_path, pairs):
    root = _release(tmp_path, pairs)
    f = root / "images/train/cell/000.png"
    f.write_bytes(f.read_bytes()[:200])
    with pytest.raises(InputError, match=r"000\.png.*cannot decode"):
        OcelotRelease(root).split("train")[0]


def test_bad_corrupt_image(tmp_path):
    f = tmp_path / "x.jpg"
    f.write_bytes(b"not an image at all")
    with pytest.raises(InputError, match=r"x\.jpg: cannot decode"):
        read_rgb(f)


def test_bad_image_size(tmp_path, pairs):
    root = _release(tmp_path, pairs)
    from histozoom.data.io import write_image
    write_image(root / "annotations/train/tissue/000.png", np.ones((10, 10), np.uint8))
    with pytest.raises(InputError, match=r"000\.png: image is 10x10 px, expected 80x96"):
        OcelotRelease(root).split("train")[0]


def test_bad_metadata_missing_entry(tmp_path, pairs):
    root = _release(tmp_path, pairs)
    meta = json.loads((root / "metadata.json").read_text())
    meta["sample_pairs"] = {}
    (root / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"metadata\.json: no metadata entry for sample '000'"):
        OcelotRelease(root).split("train")[0]


def test_bad_metadata_window_outside(tmp_path, pairs):
    root = _release(tmp_path, pairs)
    meta = json.loads((root / "metadata.json").read_text())
    meta["sample_pairs"]["000"]["patch_x_offset"] = 1.02  # the centre outside (0.98: the window crosses the border, allowed)
    (root / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"metadata\.json: sample 000: patch_x_offset 1\.02 must be a number in \[0, 1\]"):
        OcelotRelease(root).split("train")[0]


@pytest.mark.parametrize(
    "rows, problem",
    [
        ("1,2,1\n3,four,2\n", r":2: cannot parse"),
        ("1,2\n", r":1: expected columns x,y,class\[,prob\]"),
        ("1,2,1,1.5\n", r":1: probability 1.5 is outside"),
        ("1,2,7\n", r":1: class 7 is not in the class set"),
        ("1,2,1\n500,3,1\n", r":2: point \(500, 3\) lies outside"),
    ],
)
def test_bad_csv_rows(tmp_path, pairs, rows, problem):
    root = _release(tmp_path, pairs)
    (root / "annotations/train/cell/000.csv").write_text(rows)
    with pytest.raises(InputError, match=r"000\.csv" + problem):
        OcelotRelease(root).split("train")[0]


def test_bad_tissue_class(tmp_path, pairs):
    root = _release(tmp_path, pairs)
    from histozoom.data.io import write_image
    m = pairs[0].tissue_mask.copy()
    m[0, 0] = 9
    write_image(root / "annotations/train/tissue/000.png", m)
    with pytest.raises(InputError, match=r"000\.png: label values \[9\]"):
        OcelotRelease(root).split("train")[0]


def test_bad_container_pair_count(tmp_path, pairs):
    write_container(tmp_path, pairs)
    meta = json.loads((tmp_path / "metadata.json").read_text())
    (tmp_path / "metadata.json").write_text(json.dumps(meta[:3] + meta[:2]))  # 5 entries, 3 stacked pairs
    with pytest.raises(InputError, match=r"000\.tif: height 144 px is not a multiple of the 5 pairs"):
        GrandChallengeContainer(tmp_path)[0]
    # 4 entries divide the height, but each slice is then too small for its metadata box
    (tmp_path / "metadata.json").write_text(json.dumps(meta[:2] + meta[:2]))
    with pytest.raises(InputError, match=r"metadata\.json: sample 000: cell image is 64x36 px but its metadata box"):
        GrandChallengeContainer(tmp_path)[0]


def test_bad_own_layout_index(tmp_path):
    (tmp_path / "dataset.yaml").write_text("cell_classes: [A, B]\n")
    (tmp_path / "pairs.csv").write_text("split,id,cell_image,tissue_image,centre_x,centre_y\ntrain,a,c.png,t.png,0.5,half\n")
    ds = OwnDataset(tmp_path)
    with pytest.raises(InputError, match=r"c\.png: file not found"):
        ds.split("train")[0]
    (tmp_path / "pairs.csv").write_text("split,id,cell_image\n")
    with pytest.raises(InputError, match=r"pairs\.csv:1: missing columns"):
        OwnDataset(tmp_path)


def test_not_a_dataset(tmp_path):
    with pytest.raises(InputError, match="not a dataset"):
        open_dataset(tmp_path)


def test_detect_format_and_pick_split(tmp_path, pairs):
    release, container, own, plain = (tmp_path / n for n in ("release", "container", "own", "plain"))
    with OcelotReleaseWriter(release) as w:
        w.add(pairs[0], "train", image_ext=".png")
        w.add(pairs[1], "val", image_ext=".png")
    write_container(container, pairs)
    write_own_dataset(own, DatasetSpec(OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES), {"train": pairs[:1]})
    plain.mkdir()
    (plain / "000.csv").write_text("1,2,1\n")
    assert [detect_format(p) for p in (release, container, own, plain)] == ["release", "container", "own", None]
    assert [is_dataset(p) for p in (release, container, own, plain, tmp_path / "missing")] == [True] * 3 + [False] * 2
    two = open_dataset(release)
    assert pick_split(two, "val") == "val"
    with pytest.raises(InputError, match=r"release: the dataset has several splits \(train, val\)"):
        pick_split(two, None, release)
    with pytest.raises(InputError, match=r"split 'test' not found \(available: train, val\)"):
        pick_split(two, "test", release)
    assert pick_split(open_dataset(container)) == "container"
    assert pick_split(open_dataset(own)) == "train"


def test_bad_json_names_the_file(tmp_path, pairs):
    write_container(tmp_path, pairs)
    (tmp_path / "metadata.json").write_text("[{")
    with pytest.raises(InputError, match=r"metadata\.json: invalid metadata \(line 1, column 3"):
        GrandChallengeContainer(tmp_path)


def test_writer_leaves_no_partial_files(tmp_path, pairs, monkeypatch):
    """A crash while writing keeps the old file and leaves no temporary behind."""
    from histozoom import atomic

    target = tmp_path / "x.json"
    atomic.write_json(target, {"old": True})

    class Boom(Exception):
        pass

    with pytest.raises(Boom), atomic.atomic_open(target) as fh:
        fh.write('{"new": ')
        raise Boom
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_image_reader_refuses_formats_that_run_external_programs(tmp_path, monkeypatch):
    """An EPS file named .png is never handed to Pillow's EPS plugin (which runs
    Ghostscript); it is a named decode error. Real PNG/JPEG/BMP still read."""
    from PIL import EpsImagePlugin, Image

    from histozoom.data.io import read_image

    opened = []
    original = EpsImagePlugin.EpsImageFile._open
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: (opened.append(1), original(self))[1])
    eps = tmp_path / "cell.png"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n")
    with pytest.raises(InputError, match=r"cell\.png.*cannot decode image"):
        read_image(eps)
    assert not opened  # the EPS plugin never saw the file
    rgb = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    for ext in ("png", "jpg", "bmp"):
        Image.fromarray(rgb).save(tmp_path / f"ok.{ext}")
        assert read_image(tmp_path / f"ok.{ext}").shape == (8, 8, 3)
