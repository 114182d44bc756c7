"""Synthetic ccRCC whole slides with ground-truth nuclei (histozoom.data.nuclei.synthetic_slide,
``histozoom nuclei synth slide``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from histozoom.cli import main
from histozoom.data.nuclei.instance_table import decode_mask, mask_scale_of, paste, read_table
from histozoom.data.nuclei.records import CCRCC, NucleiSample
from histozoom.data.nuclei.synthetic import NucleiSynthConfig, visibility_report
from histozoom.data.nuclei.synthetic_slide import (
    CANCER,
    STROMA,
    NucleiSlideSynthConfig,
    nuclei_slide_outputs,
    write_synthetic_nuclei_slide,
)
from histozoom.errors import ConfigError, InputError

SMALL = {"width_mm": 0.3, "height_mm": 0.22, "seed": 5, "hotspot_share": 0.5}  # 1200 x 880 px
TUMOUR = {CCRCC.classes.id(n) for n in ("G1", "G2", "G3")}
ENDOTHELIAL = CCRCC.classes.id("endothelial")


def _levels(path) -> list[np.ndarray]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return [p.asarray() for p in tif.pages]


def _instance_map(table: dict, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The ground truth painted into a canvas, and how many masks cover each pixel."""
    inst = np.zeros(shape, np.int64)
    count = np.zeros(shape, np.int64)
    for i, x0, y0, w, h, m in zip(table["id"], table["bbox_x0"], table["bbox_y0"], table["bbox_w"], table["bbox_h"],
                                  table["mask"]):
        paste(inst, int(i), x0, y0, w, h, m)
        one = np.zeros(shape, np.int64)
        paste(one, 1, x0, y0, w, h, m)
        count += one
    return inst, count


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("nslide") / "s.tiff"
    summary = write_synthetic_nuclei_slide(out, NucleiSlideSynthConfig(**SMALL), strip_rows=256, block_cols=256)
    return out, summary, read_table(nuclei_slide_outputs(out)["nuclei"])


def test_outputs_and_summary(small):
    out, summary, gt = small
    paths = nuclei_slide_outputs(out)
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(p.name for p in paths.values()) == [
        "s.nuclei.geojson", "s.nuclei.parquet", "s.regions.png", "s.slide.json", "s.tiff"]
    assert json.loads(paths["summary"].read_text(encoding="utf-8")) == summary
    assert (summary["width_px"], summary["height_px"]) == (1200, 880) and summary["levels"] == [[1200, 880], [600, 440]]
    assert summary["class_ids"] == {"G1": 1, "G2": 2, "G3": 3, "endothelial": 4}
    assert summary["n_nuclei"] == len(gt["id"]) > 100
    assert summary["nuclei_per_class"] == {n: int(np.sum(gt["class_name"] == n)) for n in CCRCC.classes.names}
    assert sum(summary["grade_shares_in_cancer"].values()) == pytest.approx(1.0)
    labels = np.asarray(Image.open(paths["regions"]))
    assert labels.dtype == np.uint8 and labels.shape == tuple(summary["region_shape"]) == (28, 38)
    assert set(np.unique(labels)) == {STROMA, CANCER} and summary["cancer_fraction"] == pytest.approx(np.mean(labels == 2))
    assert summary["region_grid_px"] == 32
    assert NucleiSlideSynthConfig.from_dict(summary["config"]) == NucleiSlideSynthConfig(**SMALL)


def test_image_and_ground_truth_do_not_depend_on_the_blocks(small, tmp_path):
    out, summary, gt = small
    other = tmp_path / "o.tiff"
    again = write_synthetic_nuclei_slide(other, NucleiSlideSynthConfig(**SMALL), strip_rows=768, block_cols=1024)
    assert {k: v for k, v in again.items() if k != "files"} == {k: v for k, v in summary.items() if k != "files"}
    for a, b in zip(_levels(out), _levels(other), strict=True):
        assert np.array_equal(a, b)
    for key in ("nuclei", "regions"):
        assert nuclei_slide_outputs(out)[key].read_bytes() == nuclei_slide_outputs(other)[key].read_bytes()
    geo = [json.loads(nuclei_slide_outputs(p)["geojson"].read_text(encoding="utf-8")) for p in (out, other)]
    assert [f["geometry"] for f in geo[0]["features"]] == [f["geometry"] for f in geo[1]["features"]]


def test_ground_truth_masks_are_the_drawn_nuclei(small):
    from histozoom.data.nuclei.synthetic import _paint_nuclei
    from histozoom.data.nuclei.synthetic_slide import _build_scene

    out, summary, gt = small
    shape = (summary["height_px"], summary["width_px"])
    inst, count = _instance_map(gt, shape)
    assert count.max() == 1 and gt["area_px"].min() > 0 and gt["area_px"].sum() == np.count_nonzero(inst)
    assert np.array_equal(gt["id"], np.arange(1, len(gt["id"]) + 1)) and mask_scale_of(nuclei_slide_outputs(out)["nuclei"]) == 1
    # the union is the instance map the slide was drawn from ("later nucleus wins"), one GT id per drawn nucleus
    scene = _build_scene(NucleiSlideSynthConfig(**SMALL))
    n = len(scene.nuc["cx"])
    drawn, _ = _paint_nuclei([scene.nucleus(k) for k in range(n)], shape, (0, 0), [scene.frame(k) for k in range(n)])
    assert np.array_equal(drawn > 0, inst > 0)
    pairs = np.unique(np.stack([drawn[inst > 0], inst[inst > 0]]), axis=1)
    assert pairs.shape[1] == len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == len(gt["id"])
    # columns agree with the masks
    for k in range(0, len(gt["id"]), 7):
        m = decode_mask(gt["mask"][k], gt["bbox_h"][k], gt["bbox_w"][k])
        rr, cc = np.nonzero(m)
        assert m.sum() == gt["area_px"][k] and m[0].any() and m[:, 0].any()
        assert gt["x"][k] == pytest.approx(gt["bbox_x0"][k] + cc.mean())
        assert gt["y"][k] == pytest.approx(gt["bbox_y0"][k] + rr.mean())
    assert np.allclose(gt["area_um2"], gt["area_px"] * 0.0625) and np.allclose(gt["x_um"], gt["x"] * 0.25)
    assert gt["class_id"].dtype == np.int16 and gt["tissue_class"].dtype == np.int16
    # the nuclei are what is dark and purple in the image
    rgb = _levels(out)[0].astype(np.float32)
    od = -np.log(np.maximum(rgb, 1) / 250.0)
    fg = inst > 0
    bg = ~ndimage.binary_dilation(fg, iterations=4)
    assert rgb[fg].mean() < rgb[bg].mean() - 60
    assert od[fg][:, 0].mean() > 2 * od[bg][:, 0].mean()  # red absorbed: hematoxylin


def test_regions_and_classes(small):
    out, summary, gt = small
    cls, tissue = gt["class_id"], gt["tissue_class"]
    assert set(tissue.tolist()) == {STROMA, CANCER}
    assert np.all(tissue[np.isin(cls, list(TUMOUR))] == CANCER)  # no tumour nuclei in stroma
    assert np.all(cls[tissue == STROMA] == ENDOTHELIAL)
    in_stroma, in_cancer = np.sum(tissue == STROMA), np.sum(tissue == CANCER)
    assert in_cancer > 3 * in_stroma  # sparse in stroma
    assert summary["nuclei_per_class_in_cancer"]["G1"] == int(np.sum((cls == 1) & (tissue == CANCER)))
    # the region grid agrees with the nuclei's regions (away from the boundary band)
    labels = np.asarray(Image.open(nuclei_slide_outputs(out)["regions"]))
    g = summary["region_grid_px"]
    lab = labels[np.rint((gt["y"] + 0.5) / g - 0.5).astype(int), np.rint((gt["x"] + 0.5) / g - 0.5).astype(int)]
    assert np.mean(lab == tissue) > 0.95
    # cancer looks clear (pale), stroma pink (dense eosin) away from the nuclei
    grey = _levels(out)[0].astype(np.float32).mean(axis=2)
    inst, _ = _instance_map(gt, grey.shape)
    big = np.kron(labels, np.ones((g, g), np.uint8))[: grey.shape[0], : grey.shape[1]]
    assert grey[(big == CANCER) & (inst == 0)].mean() > grey[(big == STROMA) & (inst == 0)].mean() + 20


def test_openslide_reads_the_pyramid_and_the_mpp(small):
    import openslide

    out, summary, _ = small
    levels = _levels(out)
    with openslide.OpenSlide(str(out)) as osl:
        assert float(osl.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        assert float(osl.properties["openslide.mpp-y"]) == pytest.approx(0.25)
        assert [list(d) for d in osl.level_dimensions] == summary["levels"]
        full = np.asarray(osl.read_region((0, 0), 0, (1200, 880)))[..., :3]
    assert np.array_equal(full, levels[0])


def test_geojson_has_one_polygon_per_nucleus(small):
    import shapely.geometry

    out, _, gt = small
    doc = json.loads(nuclei_slide_outputs(out)["geojson"].read_text(encoding="utf-8"))
    feats = doc["features"]
    assert doc["type"] == "FeatureCollection" and len(feats) == len(gt["id"])
    names = {f["properties"]["classification"]["name"] for f in feats}
    assert names == set(gt["class_name"].tolist())
    areas = []
    for f, i, name, area in zip(feats, gt["id"], gt["class_name"], gt["area_px"]):
        poly = shapely.geometry.shape(f["geometry"])
        assert f["properties"]["objectType"] == "detection" and f["properties"]["measurements"]["id"] == i
        assert f["properties"]["classification"]["name"] == name and poly.is_valid
        areas.append(poly.area / area)
    areas = np.array(areas)
    assert np.median(areas) == pytest.approx(1.0) and areas.min() > 0.9 and areas.max() < 1.1
    # polygons are in the pixel-centre frame of x, y
    c = shapely.geometry.shape(feats[0]["geometry"]).centroid
    assert (c.x, c.y) == pytest.approx((gt["x"][0], gt["y"][0]), abs=0.5)


def test_nucleoli_follow_the_isup_rule_on_slide_crops(tmp_path):
    out = tmp_path / "v.tiff"
    write_synthetic_nuclei_slide(out, NucleiSlideSynthConfig(width_mm=0.3, height_mm=0.3, seed=2, cancer_share=1.0,
                                                             hotspot_share=0.0))
    image, gt = _levels(out)[0], read_table(nuclei_slide_outputs(out)["nuclei"])
    inst, _ = _instance_map(gt, image.shape[:2])
    inst = inst.astype(np.int32)
    assert np.all(np.isnan(gt["nucleolus_r_px"][np.isin(gt["class_name"], ["G1", "endothelial"])]))
    has = np.isfinite(gt["nucleolus_r_px"])
    ny, nx = np.rint(gt["nucleolus_y"][has]).astype(int), np.rint(gt["nucleolus_x"][has]).astype(int)
    assert np.array_equal(inst[ny, nx], gt["id"][has])  # a nucleolus lies in its own nucleus
    s, samples = 400, []
    for y0 in range(0, image.shape[0], s):
        for x0 in range(0, image.shape[1], s):
            sub = inst[y0:y0 + s, x0:x0 + s]
            ids = np.isin(gt["id"], np.unique(sub))
            inner = has & ids & (gt["nucleolus_x"] >= x0) & (gt["nucleolus_x"] < x0 + s - 0.5) \
                & (gt["nucleolus_y"] >= y0) & (gt["nucleolus_y"] < y0 + s - 0.5)
            nucleoli = [{"id": int(i), "class": int(c), "x": float(x - x0), "y": float(y - y0), "r_px": float(r)}
                        for i, c, x, y, r in zip(gt["id"][inner], gt["class_id"][inner], gt["nucleolus_x"][inner],
                                                 gt["nucleolus_y"][inner], gt["nucleolus_r_px"][inner])]
            classes = {int(i): int(c) for i, c in zip(gt["id"][ids], gt["class_id"][ids])}
            samples.append(NucleiSample(f"{y0}_{x0}", image[y0:y0 + s, x0:x0 + s], sub, classes, CCRCC.classes, 0.25,
                                        None, {"nucleoli": nucleoli}))
    rep = visibility_report(samples, factor=4)
    assert rep["G2"]["n"] > 40 and rep["G3"]["n"] > 30
    assert rep["G2"]["400x"] > 0.9 and rep["G2"]["100x"] < 0.25
    assert rep["G3"]["400x"] > 0.9 and rep["G3"]["100x"] > 0.9


def test_grade_mix_rises_in_hot_spots():
    from histozoom.data.nuclei.synthetic_slide import _class_weights

    model = NucleiSynthConfig()
    base = _class_weights(model, 0.0, 0.7)
    assert base == pytest.approx(np.array([0.30, 0.25, 0.20, 0.25]) / 1.0)
    hot = _class_weights(model, 1.0, 0.7)
    assert hot[2] / hot[:3].sum() == pytest.approx(0.7) and hot[3] == pytest.approx(0.25)
    assert hot[0] / hot[1] == pytest.approx(0.30 / 0.25)
    half = _class_weights(model, 0.5, 0.7)
    assert base[2] < half[2] < hot[2]


def test_cli_writes_the_files_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "cli.tiff"
    args = ["nuclei", "synth", "slide", str(out), "--width-mm", "0.1", "--height-mm", "0.08", "--seed", "1"]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["width_px"], report["height_px"]) == (400, 320) and report["out"] == str(out)
    assert all(p.is_file() for p in nuclei_slide_outputs(out).values())
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--mpp", "0.5"]) == 0
    assert "wrote 200x160 px nuclei slide" in capsys.readouterr().out
    assert main([*args, "--overwrite", "--mpp", "5"]) == 2
    assert "mpp" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["nuclei", "synth", "slide", str(out), "--width-mm", "-1"])
    assert e.value.code == 2
    capsys.readouterr()
    assert main(["nuclei", "synth", str(tmp_path / "tiles"), "--n", "2", "--size", "64"]) == 0  # the tile mode still works
    assert (tmp_path / "tiles" / "classes.json").is_file()


@pytest.mark.parametrize("kwargs, word", [
    ({"width_mm": 0}, "width_mm"), ({"height_mm": 25}, "height_mm"), ({"width_mm": float("nan")}, "width_mm"),
    ({"mpp": 0.05}, "mpp"), ({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"), ({"cancer_share": 1.5}, "cancer_share"),
    ({"region_um": 1}, "region_um"), ({"hotspot_g3": -0.1}, "hotspot_g3"), ({"width_mm": 0.002}, "at least 16 px"),
    ({"nuclei": {"size": 256, "colour": 1}}, "unknown NucleiSynthConfig fields"),
    ({"nuclei": NucleiSynthConfig(size=32)}, "too large for placement bins"),
])
def test_bad_config_values(kwargs, word):
    with pytest.raises(ConfigError, match=word):
        NucleiSlideSynthConfig(**kwargs)


def test_config_round_trip_and_bad_calls(tmp_path):
    cfg = NucleiSlideSynthConfig(width_mm=0.1, height_mm=0.1, nuclei={"n_nuclei": [10, 12]})
    assert cfg.nuclei == NucleiSynthConfig(n_nuclei=(10, 12))
    assert NucleiSlideSynthConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(InputError, match="named"):
        nuclei_slide_outputs(tmp_path / "s.png")
    with pytest.raises(ConfigError, match="multiple of 256"):
        write_synthetic_nuclei_slide(tmp_path / "s.tiff", cfg, strip_rows=100)
    assert not list(tmp_path.iterdir())
