"""TIGER pre-processing (OCELOT supplement F, Algorithms 1 and 2) on a generated replica of
the WSIROIS layout; every expected count, id, point and window below is worked out by hand
from the replica's geometry, not by re-running the converter's code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histozoom.cli import main
from histozoom.data.open import open_dataset
from histozoom.data.tiger import convert_tiger
from histozoom.errors import ConfigError, InputError

TCGA = "TCGA-AA-0001-01Z-00-DX1.TEST"
TCGA_ORPHAN = "TCGA-BB-0002-01Z-00-DX1.TEST"  # a TCGA cell ROI whose slide has no tissue-bcss ROI
TISSUE_TL = (1000, 2000)  # the tissue ROI's top-left in slide pixels (x, y); it is 700 x 700
# TCGA cell ROIs: local top-left (x, y) in the tissue ROI, and (w, h)
ROI_A = ((400, 400), (200, 160))
ROI_B = ((40, 100), (130, 140))
ROI_SMALL = ((300, 300), (100, 150))  # 100 px wide: under 128, skipped
BIG = "100B_[5000, 6000, 6300, 7100].png"  # non-TCGA, 1300 x 1100: 2 x 2 whole 512 px tiles
SMALL = "101S_[0, 0, 1200, 1000].png"  # non-TCGA, H = 1000 <= 1024: skipped
LC, OTHER = 1, 2  # COCO category ids of the replica
BOX_TOL = 1.0  # PIL's box filter rounds in fixed point: within 1 grey level of the exact block mean
REMAP = {0: 255, 1: 1, 2: 2, 3: 1, 4: 1, 5: 1, 6: 2, 7: 1}  # supplement F: 2, 6 -> ST; others -> BG; 0 -> ignore


def _name(slide: str, x: int, y: int, w: int, h: int) -> str:
    return f"{slide}_[{x}, {y}, {x + w}, {y + h}].png"


def _roi_name(roi) -> str:
    (x, y), (w, h) = roi
    return _name(TCGA, TISSUE_TL[0] + x, TISSUE_TL[1] + y, w, h)


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _tag(name: str) -> str:
    """The pair-id prefix of a ROI file name, written out: slide, then x1_y1_x2_y2."""
    slide, box = name[:-4].split("_[")
    return slide + "_" + "_".join(v.strip() for v in box.rstrip("]").split(","))


def build_replica(root: Path) -> dict:
    """A small WSIROIS tree under ``root/wsirois``; returns the source arrays for the checks."""
    rng = np.random.default_rng(0)
    ann = root / "wsirois" / "roi-level-annotations"
    cells, bcss = ann / "tissue-cells", ann / "tissue-bcss"
    # TCGA tissue ROI: random pixels; mask = TIGER class (x // 28) % 8 in 28 px columns (4 px aligned)
    timg = rng.integers(0, 256, (700, 700, 3), dtype=np.uint8)
    tmask = np.tile(((np.arange(700) // 28) % 8).astype(np.uint8), (700, 1))
    tname = _name(TCGA, *TISSUE_TL, 700, 700)
    _png(bcss / "images" / tname, timg)
    _png(bcss / "masks" / tname, tmask)
    images, annotations = [], []

    def add(name: str, arr: np.ndarray, boxes: list[tuple[list[int], int]], file_name: str | None = None):
        _png(cells / "images" / name, arr)
        k = len(images) + 1
        images.append({"id": k, "file_name": file_name or name, "width": arr.shape[1], "height": arr.shape[0]})
        annotations.extend({"id": len(annotations) + 1, "image_id": k, "bbox": b, "category_id": c} for b, c in boxes)

    for roi, boxes in [
        (ROI_A, [([10, 20, 9, 9], LC), ([120, 5, 9, 9], LC), ([130, 50, 9, 9], LC), ([50, 140, 8, 8], LC),
                 ([30, 30, 9, 9], OTHER)]),
        (ROI_B, [([0, 0, 9, 9], LC), ([100, 120, 9, 9], LC)]),
        (ROI_SMALL, [([5, 5, 9, 9], LC)]),
    ]:
        (x, y), (w, h) = roi
        add(_roi_name(roi), timg[y:y + h, x:x + w], boxes)
    add(_name(TCGA_ORPHAN, 0, 0, 200, 200), rng.integers(0, 256, (200, 200, 3), dtype=np.uint8), [])
    # non-TCGA: cell and tissue ROI are one image; mask = TIGER class (y // 24) % 8 in 24 px rows
    big = rng.integers(0, 256, (1100, 1300, 3), dtype=np.uint8)
    big_mask = np.tile(((np.arange(1100) // 24) % 8).astype(np.uint8)[:, None], (1, 1300))
    add(BIG, big, [([600, 100, 9, 9], LC), ([1100, 50, 9, 9], LC), ([200, 1030, 9, 9], LC), ([300, 700, 9, 9], LC)],
        file_name=f"images/{BIG}")
    _png(cells / "masks" / BIG, big_mask)
    add(SMALL, rng.integers(0, 256, (1000, 1200, 3), dtype=np.uint8), [([10, 10, 9, 9], LC)])
    _png(cells / "masks" / SMALL, np.ones((1000, 1200), np.uint8))
    coco = {"images": images, "annotations": annotations,
            "categories": [{"id": LC, "name": "lymphocytes and plasma cells"}, {"id": OTHER, "name": "roi"}]}
    (cells / "tiger-coco.json").write_text(json.dumps(coco))
    return {"root": root, "wsirois": root / "wsirois", "timg": timg, "tmask": tmask, "big": big, "big_mask": big_mask}


# ---------------------------------------------------------------------- the expected answers, by hand
# Algorithm 1, ROI A at (400, 400) in a 700 px tissue ROI: tissue top-left y = 400 - 128 it in
# {400, 272, 144, 16}; a 512 px patch fits for y <= 188: it in {2, 3}; same for x: jt in {2, 3}.
# -> 4 pairs, 12 at the border. ROI B at (40, 100): only it = jt = 0 fits -> 1 pair, 15 at the border.
A_T = {(2, 2), (2, 3), (3, 2), (3, 3)}
EXPECTED_TCGA_IDS = {f"{_tag(_roi_name(ROI_A))}_t{i}_{j}" for i, j in A_T} | {f"{_tag(_roi_name(ROI_B))}_t0_0"}
# Algorithm 2, 1300 x 1100: 1100 // 512 = 2 rows, 1300 // 512 = 2 columns of tiles, 16 cell patches each.
EXPECTED_OTHER_IDS = {f"{_tag(BIG)}_p{i}_{j}_c{a}_{b}" for i in range(2) for j in range(2) for a in range(4)
                      for b in range(4)}
# Points are box centres x + (w - 1) / 2. A: (14, 24) and (124, 9) are in the 128 px crop; (134, 54) and
# (53.5, 143.5) are not; the category-2 box is no lymphocyte. B: (4, 4) and (104, 124).
POINTS_A = {(14, 24), (124, 9)}
POINTS_B = {(4, 4), (104, 124)}
# BIG: (604, 104) -> tile (0, 1) at (512, 0), cell (0, 0), at (92, 104); (304, 704) -> tile (1, 0) at (0, 512),
# in-tile (304, 192) -> cell (1, 2) at (256, 128), at (48, 64); (1104, 54) and (204, 1034) lie past the whole tiles.
POINTS_BIG = {f"{_tag(BIG)}_p0_1_c0_0": {(92, 104)}, f"{_tag(BIG)}_p1_0_c1_2": {(48, 64)}}
EXPECTED_COUNTS = {"pairs_tcga": 5, "pairs_non_tcga": 64, "pairs": 69, "cell_rois_tcga": 4, "images_non_tcga": 2,
                   "rois_too_small": 1, "rois_without_tissue": 1, "tissue_patches_at_border": 12 + 15,
                   "images_too_small": 1, "cells_written": 4 * 2 + 1 * 2 + 2}


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    return build_replica(tmp_path_factory.mktemp("tiger"))


@pytest.fixture(scope="module")
def converted(replica, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "tiger-pairs"
    seen: list[str] = []
    summary = convert_tiger(replica["wsirois"], out, progress=seen.append)
    return out, summary, seen


def _block_mean(a: np.ndarray, k: int) -> np.ndarray:
    h, w = a.shape[:2]
    return a.reshape(h // k, k, w // k, k, *a.shape[2:]).astype(np.float64).mean(axis=(1, 3))


def test_counts(converted):
    _, summary, seen = converted
    got = summary.to_dict()
    assert {k: got[k] for k in EXPECTED_COUNTS} == EXPECTED_COUNTS
    assert (summary.cell_mpp, summary.tissue_mpp) == (0.5, 2.0)
    assert BIG in seen and _roi_name(ROI_A) in seen


def test_dataset_opens_with_the_expected_pairs_and_spec(converted):
    out, _, _ = converted
    ds = open_dataset(out)
    assert ds.splits == ["train"]
    sp = ds.split("train")
    assert set(sp.ids) == EXPECTED_TCGA_IDS | EXPECTED_OTHER_IDS
    assert ds.spec.cell_classes.names == ("LC",)
    assert dict(zip(ds.spec.tissue_classes.ids, ds.spec.tissue_classes.names)) == {1: "BG", 2: "ST"}
    assert ds.spec.tissue_classes.ignore == 255
    pair = sp.load(f"{_tag(BIG)}_p0_0_c0_0")
    assert (pair.organ, pair.meta["slide_name"], pair.cell_mpp, pair.tissue_mpp) == ("breast", "100B", 0.5, 2.0)
    assert sp.load(next(iter(EXPECTED_TCGA_IDS))).meta["slide_name"] == TCGA


def test_points_lie_in_their_crop_with_the_right_shift(converted):
    sp = open_dataset(converted[0]).split("train")
    for pid in sp.ids:
        pts = sp.points(pid)
        got = {(int(x), int(y)) for x, y in pts.xy}
        assert np.all((pts.xy >= 0) & (pts.xy <= 127)), pid
        if pid.startswith(_tag(_roi_name(ROI_A))):
            assert got == POINTS_A, pid
        elif pid.startswith(_tag(_roi_name(ROI_B))):
            assert got == POINTS_B, pid
        else:
            assert got == POINTS_BIG.get(pid, set()), pid


def test_every_cell_view_is_where_its_window_says_in_the_tissue_view(converted):
    sp = open_dataset(converted[0]).split("train")
    for pair in sp:
        assert pair.cell_image.shape == pair.tissue_image.shape == (128, 128, 3)
        p = pair.placement
        assert (p.width, p.height) == (32, 32) and float(p.x0).is_integer() and float(p.y0).is_integer()
        x0, y0 = int(p.x0), int(p.y0)
        window = pair.tissue_image[y0:y0 + 32, x0:x0 + 32].astype(np.float64)
        assert np.abs(_block_mean(pair.cell_image, 4) - window).max() <= BOX_TOL, pair.id


def test_crops_come_from_the_right_source_places(converted, replica):
    sp = open_dataset(converted[0]).split("train")
    # A, (it, jt) = (2, 3): tissue top-left (x, y) = (400 - 384, 400 - 256) = (16, 144); cell at (384, 256) in it
    pair = sp.load(f"{_tag(_roi_name(ROI_A))}_t2_3")
    assert (pair.placement.x0, pair.placement.y0) == (384 / 4, 256 / 4)
    assert np.array_equal(pair.cell_image, replica["timg"][400:528, 400:528])
    assert np.abs(_block_mean(replica["timg"][144:656, 16:528], 4) - pair.tissue_image).max() <= BOX_TOL
    # BIG, tile (1, 0) at (x, y) = (0, 512), cell (1, 2) at (256, 128) in it
    pair = sp.load(f"{_tag(BIG)}_p1_0_c1_2")
    assert (pair.placement.x0, pair.placement.y0) == (64, 32)
    assert np.array_equal(pair.cell_image, replica["big"][640:768, 256:384])
    assert np.abs(_block_mean(replica["big"][512:1024, 0:512], 4) - pair.tissue_image).max() <= BOX_TOL


def test_tissue_classes_are_remapped(converted, replica):
    sp = open_dataset(converted[0]).split("train")
    remap = np.vectorize(REMAP.__getitem__)
    # A t2_3: the tissue crop is tmask[144:656, 16:528]; 4 px blocks are uniform (28 px columns from x = 0)
    mask = sp.load(f"{_tag(_roi_name(ROI_A))}_t2_3").tissue_mask
    src = replica["tmask"][144:656, 16:528][::4, ::4]
    assert np.array_equal(mask, remap(src))
    # BIG tile (0, 0): rows of class (y // 24) % 8; row 0 is class 0, row 3*24 class 3, row 6*24 class 6
    mask = sp.load(f"{_tag(BIG)}_p0_0_c0_0").tissue_mask
    assert replica["big_mask"][144, 0] == 6 and mask[144 // 4, 0] == 2  # inflamed stroma -> ST
    assert replica["big_mask"][72, 0] == 3 and mask[72 // 4, 0] == 1  # in-situ tumor -> BG
    assert replica["big_mask"][0, 0] == 0 and mask[0, 0] == 255  # excluded -> ignore
    assert replica["big_mask"][48, 0] == 2 and mask[48 // 4, 0] == 2  # tumor-associated stroma -> ST
    assert np.array_equal(mask, remap(replica["big_mask"][0:512, 0:512][::4, ::4]))


def test_cli_json(replica, tmp_path, capsys):
    out = tmp_path / "cli-out"
    rc = main(["tiger", "convert", "--input", str(replica["root"]), "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    doc = json.loads(captured.out)
    assert {k: doc[k] for k in EXPECTED_COUNTS} == EXPECTED_COUNTS
    assert doc["split"] == "train" and doc["tissue_mpp"] == 2.0
    assert len(open_dataset(out).split("train")) == 69
    rc = main(["tiger", "convert", "--input", str(replica["root"]), "--out", str(out), "--json"])
    assert rc == 2 and "not empty" in capsys.readouterr().err  # an existing dataset needs --overwrite
    rc = main(["tiger", "convert", "--input", str(replica["root"]), "--out", str(out), "--json", "--overwrite",
               "--mpp", "0.25", "--split", "all"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["tissue_mpp"] == 1.0
    assert open_dataset(out).splits == ["all"]


def test_corrupt_coco_is_a_named_error(replica, tmp_path, capsys):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(replica["wsirois"], src / "wsirois")
    coco = src / "wsirois" / "roi-level-annotations" / "tissue-cells" / "tiger-coco.json"
    coco.write_text('{"images": [')
    rc = main(["tiger", "convert", "--input", str(src), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and str(coco) in err and "invalid COCO annotations" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_missing_images_folder_and_bad_mask_values(replica, tmp_path):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(replica["wsirois"], src)
    cells = src / "roi-level-annotations" / "tissue-cells"
    _png(cells / "masks" / BIG, np.full((1100, 1300), 9, np.uint8))  # 9 is no TIGER class
    with pytest.raises(InputError, match="label values") as e:
        convert_tiger(src, tmp_path / "o1")
    assert e.value.path == str(cells / "masks" / BIG)
    assert not (tmp_path / "o1").exists()
    shutil.rmtree(cells / "images")
    with pytest.raises(InputError, match="images folder not found") as e:
        convert_tiger(src, tmp_path / "o2")
    assert e.value.path == str(cells / "images")
    with pytest.raises(ConfigError, match="whole multiple"):
        convert_tiger(src, tmp_path / "o3", cell_size=100)
