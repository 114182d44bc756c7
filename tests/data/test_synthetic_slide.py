"""Synthetic whole-slide images (histozoom.data.synthetic_slide, ``histozoom synth slide``)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image

from histozoom.cli import build_parser, main
from histozoom.data.synthetic import BC, BG, CA, TC, SynthConfig
from histozoom.data.synthetic_slide import SlideSynthConfig, slide_outputs, write_synthetic_slide
from histozoom.errors import ConfigError, InputError

SMALL = {"width_mm": 0.5, "height_mm": 0.4, "mpp": 0.25, "seed": 3}  # 2000 x 1600 px


def _levels(path) -> list[np.ndarray]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return [p.asarray() for p in tif.pages]


def _cells(path) -> np.ndarray:
    with open(path, encoding="utf-8") as fh:
        assert fh.readline().strip() == "x,y,class,tissue"
    return np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("slide") / "s.tiff"
    t0 = time.perf_counter()
    summary = write_synthetic_slide(out, SlideSynthConfig(**SMALL), strip_rows=256, block_cols=512)
    return out, summary, time.perf_counter() - t0


def test_small_slide_renders_in_seconds(small):
    out, summary, seconds = small
    assert seconds < 15  # ~1 s on an idle core
    assert (summary["width_px"], summary["height_px"]) == (2000, 1600)
    assert sorted(p.name for p in out.parent.iterdir()) == ["s.cells.csv", "s.glands.png", "s.slide.json", "s.tiff",
                                                                  "s.tissue.png"]
    assert json.loads(slide_outputs(out)["summary"].read_text(encoding="utf-8")) == summary


def test_openslide_reads_the_pyramid_and_the_mpp(small):
    import openslide

    out, summary, _ = small
    levels = _levels(out)
    with openslide.OpenSlide(str(out)) as osl:
        assert osl.properties["openslide.vendor"] == "aperio"
        assert float(osl.properties["openslide.mpp-x"]) == pytest.approx(0.25)
        assert float(osl.properties["openslide.mpp-y"]) == pytest.approx(0.25)
        assert osl.level_count == len(summary["levels"]) == len(levels) == 2
        assert [list(d) for d in osl.level_dimensions] == summary["levels"] == [[2000, 1600], [1000, 800]]
        full = np.asarray(osl.read_region((0, 0), 0, (2000, 1600)))[..., :3]  # partial edge tiles included
        assert np.array_equal(full, levels[0])
        low = np.asarray(osl.read_region((0, 0), 1, (1000, 800)))[..., :3]
    assert np.array_equal(low, levels[1])
    mean = levels[0][:1600, :2000].reshape(800, 2, 1000, 2, 3).mean(axis=(1, 3))
    assert np.abs(levels[1] - mean).max() <= 0.5 + 1e-9  # level 1 is the rounded 2x2 mean


def test_result_does_not_depend_on_strip_size(small, tmp_path):
    out, summary, _ = small
    other = tmp_path / "s.tiff"
    assert write_synthetic_slide(other, SlideSynthConfig(**SMALL), strip_rows=768, block_cols=2048) == summary
    for a, b in zip(_levels(out), _levels(other), strict=True):
        assert np.array_equal(a, b)
    for key in ("cells", "tissue"):
        assert slide_outputs(out)[key].read_bytes() == slide_outputs(other)[key].read_bytes()


def test_cells_tissue_and_summary_agree(small):
    out, summary, _ = small
    cells = _cells(slide_outputs(out)["cells"])
    x, y, cls, tissue = cells.T
    assert x.min() >= 0 and x.max() <= 1999 and y.min() >= 0 and y.max() <= 1599
    assert set(np.unique(cls)) == {BC, TC} and set(np.unique(tissue)) == {BG, CA}
    assert np.all(np.diff(y * 2000 + x) > 0)  # sorted by y, then x, no duplicates
    labels = np.asarray(Image.open(slide_outputs(out)["tissue"]))
    assert labels.dtype == np.uint8 and labels.shape == tuple(summary["tissue_shape"]) == (400, 500)
    assert np.array_equal(labels[np.rint((y + 0.5) / 4 - 0.5).astype(int), np.rint((x + 0.5) / 4 - 0.5).astype(int)],
                          tissue)
    assert summary["n_cells"] == {"BC": int(np.sum(cls == BC)), "TC": int(np.sum(cls == TC))}
    inside = tissue == CA
    assert summary["purity"]["overall"] == pytest.approx(np.mean(cls == TC))
    assert summary["purity"]["inside_ca"] == pytest.approx(np.mean(cls[inside] == TC))
    assert summary["purity"]["outside_ca"] == pytest.approx(np.mean(cls[~inside] == TC))
    assert summary["ca_fraction"] == pytest.approx(np.mean(labels == CA))


def test_same_class_region_rule_and_density_as_the_paired_data(small):
    out, summary, _ = small
    x, y, cls, tissue = _cells(slide_outputs(out)["cells"]).T
    p_ca, p_bg = SynthConfig(preset="context").class_probabilities()
    assert (summary["p_tc_given_ca"], summary["p_tc_given_bg"]) == pytest.approx((p_ca, p_bg))
    assert summary["purity"]["inside_ca"] == pytest.approx(p_ca, abs=0.06)  # ~0.85
    assert summary["purity"]["outside_ca"] == pytest.approx(p_bg, abs=0.04)  # ~0.07
    assert np.mean(tissue[cls == TC] == CA) > 0.8 and summary["tc_in_ca"] > 0.8  # ~0.9 in the preset
    assert np.mean(tissue[cls == BC] == BG) > 0.85
    labels = np.asarray(Image.open(slide_outputs(out)["tissue"]))
    bg_mm2 = np.sum(labels == BG) * 1e-6  # tissue px of 1 µm
    assert np.sum(tissue == BG) / bg_mm2 == pytest.approx(7000, rel=0.15)  # cells per mm² outside glands


def test_nuclei_at_the_cells_and_glands_in_the_cancer_area(small):
    out, _, _ = small
    x, y, _, _ = _cells(slide_outputs(out)["cells"]).T
    grey = _levels(out)[0].astype(np.float32).mean(axis=2)
    assert grey[y, x].mean() < grey.mean() - 40  # a dark nucleus at every cell centre
    labels = np.asarray(Image.open(slide_outputs(out)["tissue"]))
    region = np.kron(labels, np.ones((4, 4), np.uint8))
    pale = grey > 225  # gland lumina
    assert pale[region == CA].mean() > 0.08 > 0.01 > pale[region == BG].mean()
    glands = np.asarray(Image.open(slide_outputs(out)["glands"]))
    assert glands.shape == labels.shape and set(np.unique(glands)) == {0, 1}
    assert glands[labels == BG].mean() < 0.05 < glands[labels == CA].mean()
    on_gland = np.kron(glands, np.ones((4, 4), np.uint8)).astype(bool)
    assert pale[on_gland].mean() > 5 * pale[~on_gland].mean()  # the lumina lie on the marked glands
    assert glands[y // 4, x // 4].mean() < 0.02  # and no cell does (up to the rounding of the rule)


def test_simple_preset_classes_ignore_the_region(tmp_path):
    s = write_synthetic_slide(tmp_path / "s.tif", SlideSynthConfig(preset="simple", width_mm=0.4, height_mm=0.4, seed=1))
    assert s["purity"]["inside_ca"] == pytest.approx(0.4, abs=0.1)
    assert s["purity"]["outside_ca"] == pytest.approx(0.4, abs=0.1)


def test_config_defaults_and_validation():
    cfg = SlideSynthConfig(width_mm=1.0, height_mm=0.5, mpp=0.5)
    assert cfg.tissue_mpp == 2.0 and cfg.factor == 4 and (cfg.width_px, cfg.height_px) == (2000, 1000)
    assert cfg.tissue_shape == (250, 500) and cfg.window_px == pytest.approx(102.4)
    with pytest.raises(AttributeError):
        cfg.seed = 1  # frozen
    bad = [
        ({"width_mm": 0}, "width_mm"), ({"height_mm": -1}, "height_mm"), ({"width_mm": 51}, "width_mm"),
        ({"width_mm": float("nan")}, "width_mm"), ({"mpp": 0}, "mpp"), ({"mpp": 200}, "mpp"),
        ({"mpp": 0.25, "tissue_mpp": 0.6}, "whole number"), ({"mpp": 0.25, "tissue_mpp": 0.1}, "whole number"),
        ({"width_mm": 30, "height_mm": 30}, "over the limit"), ({"width_mm": 0.001}, "at least"),
        ({"preset": "nope"}, "preset"), ({"seed": -1}, "seed"),
        ({"width_mm": 12, "height_mm": 12, "mpp": 0.25, "tissue_mpp": 0.25}, "tissue grid"),
    ]
    for kwargs, word in bad:
        with pytest.raises(ConfigError, match=word):
            SlideSynthConfig(**kwargs)


def test_outputs_are_named_checked_and_not_overwritten(tmp_path):
    with pytest.raises(InputError, match="named"):
        slide_outputs(tmp_path / "s.png")
    cfg = SlideSynthConfig(width_mm=0.1, height_mm=0.1)
    out = tmp_path / "s.tiff"
    slide_outputs(out)["cells"].write_text("old", encoding="utf-8")
    with pytest.raises(InputError, match="exists"):
        write_synthetic_slide(out, cfg)
    assert not out.exists()
    write_synthetic_slide(out, cfg, overwrite=True)
    assert slide_outputs(out)["cells"].read_text(encoding="utf-8").startswith("x,y,class,tissue")
    with pytest.raises(ConfigError, match="multiple of 256"):
        write_synthetic_slide(out, cfg, overwrite=True, strip_rows=100)
    assert len(list(tmp_path.iterdir())) == 5  # no temporary files left


def test_cli_slide_mode(tmp_path, capsys):
    out = tmp_path / "cli.tiff"
    args = ["synth", "slide", str(out), "--preset", "context", "--width-mm", "0.2", "--height-mm", "0.15",
            "--mpp", "0.5", "--seed", "2"]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mpp"] == 0.5 and report["tissue_mpp"] == 2.0 and (report["width_px"], report["height_px"]) == (400, 300)
    assert report["levels"] == [[400, 300]] and report["out"] == str(out)
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--tissue-mpp", "1.0"]) == 0
    assert "wrote 400x300 px slide" in capsys.readouterr().out
    assert main([*args, "--overwrite", "--tissue-mpp", "0.7"]) == 2
    assert "whole number" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["synth", "slide", str(out), "--width-mm", "-1"])
    assert e.value.code == 2


def test_cli_dataset_mode_is_unchanged(capsys):
    parser = build_parser()
    a = parser.parse_args(["synth", "out_dir", "--n-train", "2", "--tissue-mpp", "0.8"])
    assert a.out_dir == "out_dir" and a.n_train == 2 and a.func.__name__ == "run"
    a = parser.parse_args(["synth", "slide", "s.tiff", "--width-mm", "1"])
    assert a.out == "s.tiff" and a.width_mm == 1.0 and a.tissue_mpp is None and a.func.__name__ == "run_slide"
    for argv in (["synth", "--help"], ["synth", "slide", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        assert "synth slide" in capsys.readouterr().out
