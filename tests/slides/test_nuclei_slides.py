"""Whole-slide nuclei grading: the seam rule, the cancer-area join, outputs, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy import ndimage
from shapely.geometry import shape

from histozoom.data.nuclei.instance_table import decode_mask, instance_rows, paste, read_table, write_table
from histozoom.data.nuclei.records import CCRCC_CLASSES
from histozoom.evaluation.slide_nuclei import evaluate_slide_nuclei
from histozoom.inference.nuclei_predictor import NucleiPredictor
from histozoom.inference.watershed import WatershedConfig
from histozoom.pair import OCELOT_TISSUE_CLASSES
from histozoom.slides import nuclei_outputs
from histozoom.slides.job import ModelClock, SlideOptions
from histozoom.slides.nuclei import NucleiSlidePredictor, NucleiSlideSettings, TissueModel
from histozoom.slides.reader import ArraySlide
from histozoom.slides.tissue_pass import TissueView

BG = np.array([235, 200, 220], np.float32)
RED = {1: 120, 2: 90, 3: 60, 4: 150}  # class id -> red level of its nuclei (green 40, blue 130)
OPTS = SlideOptions(progress=False, batch_size=2, workers=1, formats=("parquet", "geojson", "csv"))
SETTINGS = NucleiSlideSettings(0.25, tile=128, margin=32)  # cores of 64 px: many seams


class BlobModel(nn.Module):
    """A nuclei model of local operations only (translation-equivariant up to 4 px from the
    input's border): foreground = dark pixels, distance = a blur of the foreground, class =
    the nucleus colour (independent of how much it is blended with the background).
    ``bowl`` > 0 lowers the foreground logit towards the input's border (Chebyshev), so a
    nucleus on a seam is segmented a little differently by the two tiles: not equivariant."""

    size_multiple = 32

    def __init__(self, bowl: float = 0.0):
        super().__init__()
        self.bowl = bowl
        self.q = torch.tensor([(BG[0] - RED[k]) / (BG[1] - 40) for k in (1, 2, 3, 4)])

    def forward(self, x):
        r, g = x[:, :1] * 255, x[:, 1:2] * 255
        fg = (150 - x.mean(1, keepdim=True) * 255) / 8
        if self.bowl:
            h, w = x.shape[-2:]
            u = torch.linspace(-1, 1, w).abs()[None, :]
            v = torch.linspace(-1, 1, h).abs()[:, None]
            fg = fg - self.bowl * torch.maximum(u, v)
        p = torch.sigmoid(fg)
        dist = F.avg_pool2d(F.avg_pool2d(p, 5, 1, 2), 5, 1, 2)
        q = (BG[0] - r) / torch.clamp(BG[1] - g, min=5.0)
        cls = -((q - self.q.view(1, -1, 1, 1)) ** 2) * 500
        return {"class_logits": torch.cat([-fg, cls], 1), "binary_logits": fg, "distance": dist}


def _predictor(bowl: float = 0.0) -> NucleiPredictor:
    return NucleiPredictor(BlobModel(bowl), CCRCC_CLASSES, WatershedConfig(min_size=5))


def _disk_slide(seed: int = 0, size=(416, 448), n: int = 60, on_seams: int = 8, background=None):
    """Pink slide with well-separated soft disks (radius 6–10 px) of the four classes; some
    centred exactly on the tile seams of :data:`SETTINGS`. Returns ``(image, gt_inst, gt_class)``."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    inst = np.zeros(size, np.int32)
    classes: dict[int, int] = {}
    placed: list[tuple[float, float, float]] = []
    seams = np.arange(64, max(size), 64) - 0.5  # core borders of a grid whose origin is the slide's corner
    tries = 0
    while len(placed) < n and tries < 5000:
        tries += 1
        r = rng.uniform(6, 10)
        cx, cy = rng.uniform(24, w - 24), rng.uniform(24, h - 24)
        if len(placed) < on_seams:
            cx = float(rng.choice(seams[(seams > 24) & (seams < w - 24)]))
        if any(np.hypot(cx - a, cy - b) < r + c + 8 for a, b, c in placed):
            continue
        placed.append((cx, cy, r))
        k = len(placed)
        inst[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = k
        classes[k] = int(rng.integers(1, 5))
    img = np.empty(size + (3,), np.float32)
    img[:] = BG if background is None else background
    for k, c in classes.items():
        img[inst == k] = (RED[c], 40, 130)
    img = ndimage.gaussian_filter(img, (1.2, 1.2, 0))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), inst, classes


def _run(tmp_path, name, image, predictor=None, tissue=None, options=OPTS, settings=SETTINGS):
    sp = NucleiSlidePredictor(predictor or _predictor(), settings, "test", tissue)
    out = tmp_path / name
    summary = sp.predict_slide(ArraySlide(image, 0.25, tmp_path / f"{name}.png"), out, options)
    return summary, read_table(out / "nuclei.parquet"), out


def _canvas(cols, shape) -> np.ndarray:
    """The predicted masks painted into one map; -1 where two overlap."""
    out = np.zeros(shape, np.int64)
    for i in range(len(cols["x"])):
        one = np.zeros(shape, np.int64)
        paste(one, 1, cols["bbox_x0"][i], cols["bbox_y0"][i], cols["bbox_w"][i], cols["bbox_h"][i], cols["mask"][i])
        out[(one > 0) & (out != 0)] = -1
        out[(one > 0) & (out == 0)] = int(cols["id"][i])
    return out


def _partition(inst: np.ndarray, classes: dict[int, int]) -> set:
    return {(classes[int(i)], tuple(np.flatnonzero(inst.ravel() == i))) for i in np.unique(inst) if i > 0}


def test_tiled_instances_equal_one_pass_over_the_whole_region_for_an_equivariant_model(tmp_path):
    image, gt, _ = _disk_slide()
    summary, cols, _ = _run(tmp_path, "tiled", image)
    assert summary["tiles"] >= 30 and summary["seams"]["overlapping_pairs"] == 0 and summary["seams"]["truncated"] == 0
    whole = _predictor().predict(image)
    tiled = _canvas(cols, image.shape[:2])
    assert (tiled >= 0).all()  # no pixel claimed twice
    ids = {int(i): int(c) for i, c in zip(cols["id"], cols["class_id"])}
    assert _partition(tiled, ids) == _partition(whole.inst_map, whole.inst_class)
    # the seam rule was exercised: nuclei cut by a core border, each reported once, whole
    ox = summary["plan"]["grid"]["origin"][0]
    cols_of = {int(i): np.nonzero(gt == i)[1] for i in np.unique(gt) if i}
    cut = [i for i, c in cols_of.items() if np.floor((c.min() - ox) / 64) != np.floor((c.max() - ox) / 64)]
    assert len(cut) >= 8
    assert len(cols["x"]) == len(np.unique(gt)) - 1


def test_seam_overlaps_are_resolved_so_no_true_nucleus_is_matched_twice(tmp_path, monkeypatch):
    image, gt, gt_classes = _disk_slide(seed=1, on_seams=14)
    truth = tmp_path / "truth.parquet"
    rows = instance_rows(gt)
    rows["class_id"] = np.array([gt_classes[int(i)] for i in rows["id"]])
    rows["tissue_class"] = np.full(len(rows["id"]), 2)
    rows["x_um"], rows["y_um"] = rows["x"] * 0.25, rows["y"] * 0.25
    write_table(truth, rows)

    def matched_twice(out):
        return evaluate_slide_nuclei(out, truth).to_dict()

    summary, cols, out = _run(tmp_path, "fixed", image, _predictor(bowl=3.0))
    scores = matched_twice(out)
    assert summary["seams"]["duplicates_dropped"] >= 1
    assert scores["gt_matched_twice"] == 0 and scores["pred_overlap_px"] == 0
    assert (_canvas(cols, image.shape[:2]) >= 0).all()
    # without the last step the same run reports seam nuclei twice
    monkeypatch.setattr(nuclei_outputs, "resolve_seams", lambda num, keep, *a, **k: (keep, {}, {
        "overlapping_pairs": 0, "duplicates_dropped": 0, "trimmed": 0}))
    _, _, raw = _run(tmp_path, "raw", image, _predictor(bowl=3.0))
    assert matched_twice(raw)["gt_matched_twice"] >= 1


def test_cancer_area_join_and_grading_inside_it(tmp_path):
    """A stand-in tissue model calls the left half (its redder background) cancer: every
    nucleus takes the class of the map under its centroid, and grading counts only those."""
    image, gt, gt_classes = _disk_slide(seed=2, on_seams=0, size=(384, 448))
    left = np.zeros(image.shape[:2], bool)
    left[:, :224] = True
    image[left & (gt == 0)] = np.clip(image[left & (gt == 0)].astype(int) + (10, -15, -10), 0, 255).astype(np.uint8)

    def probabilities(x):  # x: the tissue view at 1 µm/px
        ca = torch.sigmoid((x[:, :1] * 255 - 240) * 2)  # background red: 245 (left), 235 (right); nuclei darker
        ca = F.max_pool2d(ca, 9, 1, 4)  # nuclei (5 tissue px across) do not break the area
        return torch.cat([1 - ca, ca], 1)

    classes = OCELOT_TISSUE_CLASSES
    assert classes.ids[:2] == (1, 2)
    tissue = TissueModel(probabilities, TissueView(1.0, 64, 16, 2), classes, "stand-in", lambda: ModelClock("cpu"))
    summary, cols, _ = _run(tmp_path, "ca", image, tissue=tissue)
    x = cols["x"]
    far = np.abs(x - 223.5) > 24
    assert (cols["tissue_class"][far & (x < 223.5)] == 2).all() and (cols["tissue_class"][far & (x > 223.5)] == 1).all()
    assert set(cols["tissue_name"][far]) <= {"BG", "CA"}
    inside = cols["tissue_class"] == 2
    assert summary["cancer_area"]["nuclei_inside"] == int(inside.sum()) > 0
    assert summary["cancer_area"]["nuclei_outside"] == int((~inside).sum()) > 0
    shares = summary["grading"]["shares"]["cancer_area"]
    tumour = np.isin(cols["class_id"], (1, 2, 3)) & inside
    assert shares["tumour_nuclei"] == int(tumour.sum())
    assert shares["counts"]["G3"] == int((cols["class_id"][tumour] == 3).sum())
    doc = json.loads((tmp_path / "ca" / "nuclei.geojson").read_text())
    assert any(f["properties"]["objectType"] == "annotation" for f in doc["features"])  # the cancer area


def test_outputs_parse_back(tmp_path):
    image, _, _ = _disk_slide(seed=3)
    summary, cols, out = _run(tmp_path, "out", image)
    n = summary["nuclei"]
    assert n == len(cols["x"]) > 20 and sum(summary["nuclei_per_class"].values()) == n
    np.testing.assert_allclose(cols["area_um2"], cols["area_px"] * 0.25**2, rtol=1e-6)
    np.testing.assert_allclose(cols["x_um"], cols["x"] * 0.25)
    for i in range(n):  # centroids and areas agree with the masks
        m = decode_mask(cols["mask"][i], cols["bbox_h"][i], cols["bbox_w"][i])
        rr, cc = np.nonzero(m)
        assert m.sum() == cols["area_px"][i]
        assert cols["x"][i] == pytest.approx(cols["bbox_x0"][i] + cc.mean())
    doc = json.loads((out / "nuclei.geojson").read_text())
    dets = [f for f in doc["features"] if f["properties"]["objectType"] == "detection"]
    assert len(dets) == n
    for f, area in zip(dets, cols["area_px"]):
        poly = shape(f["geometry"])
        assert f["geometry"]["type"] == "Polygon" and poly.is_valid
        assert poly.area == pytest.approx(area, rel=0.2)
        c = f["properties"]["classification"]
        assert c["name"] in CCRCC_CLASSES.names and len(c["color"]) == 3
        assert set(f["properties"]["measurements"]) == {"area_um2", "probability"}
    lines = (out / "nuclei.csv").read_text().splitlines()
    assert len(lines) == n + 1 and lines[0].startswith("id,x,y")
    assert (out / "grades.png").is_file() and summary["grading"]["slide_grade"]["rule"]["field_mm2"] == 0.237


class Killed(Exception):
    pass


@pytest.mark.parametrize("after", [0, 2, 5])
def test_resume_after_a_kill_gives_identical_output(tmp_path, monkeypatch, after):
    image, _, _ = _disk_slide(seed=4)
    _, ref, _ = _run(tmp_path, "ref", image)
    real, calls = nuclei_outputs.write_nuclei_part, [0]

    def dies(*a, **k):
        if calls[0] >= after:
            raise Killed
        calls[0] += 1
        return real(*a, **k)

    monkeypatch.setattr(nuclei_outputs, "write_nuclei_part", dies)
    with pytest.raises(Killed):
        _run(tmp_path, "run", image)
    assert len(list((tmp_path / "run" / ".work" / "parts").glob("*.parquet"))) == after
    monkeypatch.setattr(nuclei_outputs, "write_nuclei_part", real)
    _, got, _ = _run(tmp_path, "run", image)
    for c in ("x", "y", "class_id", "area_px", "tile", "bbox_x0", "bbox_y0"):
        np.testing.assert_array_equal(got[c], ref[c], err_msg=c)
    assert list(got["mask"]) == list(ref["mask"])


def test_synthetic_slide_chain_is_scored_by_nuclei_evaluate(tmp_path, capsys):
    """``nuclei synth slide`` → slide prediction → ``nuclei evaluate`` on the slide output."""
    from histozoom.cli import main

    slide = tmp_path / "s.tiff"
    assert main(["nuclei", "synth", "slide", str(slide), "--width-mm", "0.2", "--height-mm", "0.2", "--seed", "3"]) == 0
    capsys.readouterr()
    sp = NucleiSlidePredictor(_predictor(), NucleiSlideSettings(0.25, tile=256, margin=32), "blobs")
    sp.predict_slide(slide, tmp_path / "out", OPTS)
    assert main(["nuclei", "evaluate", "--pred", str(tmp_path / "out"), "--gt", str(slide), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    truth = read_table(tmp_path / "s.nuclei.parquet")
    assert d["n_gt"] == len(truth["x"]) > 50 and d["n_pred"] == len(read_table(tmp_path / "out" / "nuclei.parquet")["x"])
    assert d["pq"] > 0.3 and d["gt_matched_twice"] == 0 and d["pred_overlap_px"] == 0
    assert set(d["pq_per_class"]) <= set(CCRCC_CLASSES.names)
    true = d["grades"]["true"]["cancer_area"]
    assert true["tumour_nuclei"] == int((np.isin(truth["class_id"], (1, 2, 3)) & (truth["tissue_class"] == 2)).sum())
    assert sum(true["shares"].values()) == pytest.approx(1.0)
    assert d["grades"]["slide_grade"]["true"] in (1, 2, 3, None)
