"""``histozoom slide predict`` end to end on the real CMU-1-Small-Region.svs, and its bad inputs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from shapely.geometry import Polygon, shape

from histozoom.cli import main
from histozoom.data.base import DatasetSpec
from histozoom.models.checkpoint import save_pretrained
from histozoom.models.registry import build_model
from histozoom.pair import OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES
from histozoom.slides.outputs import read_cells

SPEC = DatasetSpec(OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES)
ROI = Polygon([(600, 900), (1000, 880), (1050, 1300), (640, 1280)])  # level-0 px of CMU-1-Small-Region


def _ckpt(tmp_path, name="pred-to-inter-2", cell_mpp=0.5):
    torch.manual_seed(0)
    extra = {"spec": SPEC.to_dict(), "size": 64,
             "views": {"cell": {"size": 64, "mpp": cell_mpp}, "tissue": {"size": 64, "mpp": 4 * cell_mpp}},
             "peak": {"min_distance_um": 2.0, "threshold": 0.3}}
    return save_pretrained(build_model(name, encoder_name="resnet18", decoder_channels=16), tmp_path / name, extra=extra)


def _roi(tmp_path, geom=ROI):
    path = tmp_path / "roi.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": json.loads(json.dumps(geom.__geo_interface__)),
         "properties": {"objectType": "annotation"}}]}))
    return path


@pytest.fixture
def svs(shared_data):
    path = shared_data / "wsi" / "CMU-1-Small-Region.svs"
    if not path.is_file():
        pytest.skip("no CMU-1-Small-Region.svs")
    return path


def test_real_svs_end_to_end_with_an_roi(tmp_path, svs, capsys):
    out = tmp_path / "out"
    rc = main(["slide", "predict", "--checkpoint", str(_ckpt(tmp_path)), "--out", str(out), str(svs),
               "--roi", str(_roi(tmp_path)), "--formats", "parquet,geojson,csv", "--no-progress", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)["slides"][0]
    assert summary["mpp"] == pytest.approx(0.499) and summary["mpp_source"] == "file"
    assert summary["level0_size"] == [2220, 2967] and summary["context"] == "shared"
    folder = out / "CMU-1-Small-Region"
    for name in ("cells.parquet", "cells.csv", "cells.geojson", "summary.json", "purity.png", "overlay.png"):
        assert (folder / name).is_file(), name
    cells = read_cells(folder / "cells.parquet")
    n = summary["cells"]
    assert n == len(cells["x"]) > 0
    assert sum(summary["cells_per_class"].values()) == n
    np.testing.assert_allclose(cells["x_um"], cells["x"] * 0.499)
    # every cell inside the ROI (to the thumbnail's resolution, 8 µm = 16 px)
    assert all(ROI.buffer(17).contains(shape({"type": "Point", "coordinates": [x, y]})) for x, y in zip(cells["x"], cells["y"]))
    with open(folder / "cells.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == n and float(rows[0]["x"]) == pytest.approx(cells["x"][0], abs=0.01)
    doc = json.loads((folder / "cells.geojson").read_text())
    assert doc["type"] == "FeatureCollection"
    dets = [f for f in doc["features"] if f["properties"]["objectType"] == "detection"]
    assert len(dets) == n
    for f in doc["features"]:
        assert f["type"] == "Feature" and f["id"] and f["geometry"]
        assert set(f["properties"]["classification"]) >= {"name", "color"}
        assert shape(f["geometry"]).is_valid
    names = {f["properties"]["classification"]["name"] for f in dets}
    assert names <= set(OCELOT_CELL_CLASSES.names)
    p = summary["purity"]
    assert p["overall"] is None or 0 <= p["overall"] <= 1
    table = (out / "slides.csv").read_text().splitlines()
    assert table[1].startswith("CMU-1-Small-Region,done,")


def test_bad_inputs_are_one_line_errors_with_exit_2(tmp_path, svs, capsys):
    ckpt = _ckpt(tmp_path)
    out = tmp_path / "out"

    def run(*args):
        rc = main(["slide", "predict", "--checkpoint", str(ckpt), "--out", str(out), "--no-progress", *map(str, args)])
        err = capsys.readouterr().err.strip().splitlines()
        return rc, err[-1] if err else ""

    (tmp_path / "fake.svs").write_text("not a slide")
    rc, err = run(tmp_path / "fake.svs")
    assert rc == 2 and "fake.svs" in err and "cannot open as a slide" in err
    far = _roi(tmp_path, Polygon([(9e5, 9e5), (9.1e5, 9e5), (9.1e5, 9.1e5)]))
    rc, err = run(svs, "--roi", far)
    assert rc == 2 and "roi.geojson" in err and "outside the slide" in err
    (tmp_path / "empty.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    rc, err = run(svs, "--roi", tmp_path / "empty.geojson")
    assert rc == 2 and "empty.geojson" in err and "no polygon" in err
    rc, err = run(tmp_path / "missing.svs")
    assert rc == 2 and "missing.svs" in err
    coarse = _ckpt(tmp_path / "c", cell_mpp=0.2)
    rc = main(["slide", "predict", "--checkpoint", str(coarse), "--out", str(out), str(svs), "--no-progress"])
    assert rc == 2 and "--allow-upsample" in capsys.readouterr().err
    leak = _ckpt(tmp_path, "tissue-label-leaking")
    rc = main(["slide", "predict", "--checkpoint", str(leak), "--out", str(out), str(svs), "--no-progress"])
    assert rc == 2 and "leaking" in capsys.readouterr().err
    blocked = tmp_path / "file_not_folder"
    blocked.write_text("x")
    rc = main(["slide", "predict", "--checkpoint", str(ckpt), "--out", str(blocked), str(svs), "--no-progress"])
    assert rc == 2 and "file_not_folder" in capsys.readouterr().err


# ---------------------------------------------------------------------- nuclei slide predict
def _nuclei_ckpt(tmp_path, mpp=0.5):
    import dataclasses

    from histozoom.data.nuclei.records import CCRCC
    from histozoom.inference.watershed import WatershedConfig

    torch.manual_seed(0)
    model = build_model("chrnet", n_classes=4, encoder_name="resnet18", hrfe_channels=(8, 16, 32),
                        decoder_channels=(64, 32, 16, 16, 8), lunet_channels=(8, 16, 32),
                        task_groups=tuple(m.groups for m in CCRCC.merges[:2]))
    extra = {"classes": CCRCC.classes.to_dict(), "mpp": mpp, "size": 256,
             "watershed": dataclasses.asdict(WatershedConfig())}
    return save_pretrained(model, tmp_path / "chrnet", extra=extra)


def test_real_svs_nuclei_grading_end_to_end(tmp_path, svs, capsys):
    out = tmp_path / "out"
    roi = _roi(tmp_path, Polygon([(600, 900), (1000, 900), (1000, 1200), (600, 1200)]))
    rc = main(["nuclei", "slide", "predict", "--checkpoint", str(_nuclei_ckpt(tmp_path)), "--out", str(out), str(svs),
               "--tissue-checkpoint", str(_ckpt(tmp_path)), "--roi", str(roi), "--tile", "256", "--margin", "32",
               "--formats", "parquet,geojson,csv", "--grade-min-nuclei", "3", "--no-progress", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)["slides"][0]
    assert summary["status"] == "done" and summary["mpp"] == pytest.approx(0.499) and summary["model_mpp"] == 0.5
    assert summary["cancer_area"]["source"] == "tissue model" and summary["grading"]["slide_grade"]["rule"]["min_nuclei"] == 3
    folder = out / "CMU-1-Small-Region"
    for name in ("nuclei.parquet", "nuclei.csv", "nuclei.geojson", "summary.json", "grades.png"):
        assert (folder / name).is_file(), name
    from histozoom.data.nuclei.instance_table import read_table

    cols = read_table(folder / "nuclei.parquet")
    assert len(cols["x"]) == summary["nuclei"]
    assert set(np.unique(cols["tissue_class"])) <= set(OCELOT_TISSUE_CLASSES.ids)
    doc = json.loads((folder / "nuclei.geojson").read_text())
    dets = [f for f in doc["features"] if f["properties"]["objectType"] == "detection"]
    assert len(dets) == summary["nuclei"]
    assert all(shape(f["geometry"]).is_valid and f["properties"]["classification"]["name"] for f in dets)
    assert (out / "slides.csv").read_text().splitlines()[1].startswith("CMU-1-Small-Region,done,")


def test_nuclei_and_cell_checkpoints_are_not_mixed_up(tmp_path, svs, capsys):
    nuclei, cells = _nuclei_ckpt(tmp_path), _ckpt(tmp_path)
    out = tmp_path / "out"

    def run(*args):
        rc = main([*args, "--out", str(out), str(svs), "--no-progress"])
        return rc, capsys.readouterr().err.strip().splitlines()[-1]

    rc, err = run("slide", "predict", "--checkpoint", str(nuclei))
    assert rc == 2 and "chrnet" in err and "nuclei (CHR-Net) model" in err and "nuclei slide predict" in err
    rc, err = run("nuclei", "slide", "predict", "--checkpoint", str(cells))
    assert rc == 2 and "pred-to-inter-2" in err and "OCELOT cell–tissue model" in err and "histozoom slide predict" in err
    rc, err = run("nuclei", "slide", "predict", "--checkpoint", str(nuclei), "--tissue-checkpoint", str(nuclei))
    assert rc == 2 and "nuclei (CHR-Net) model" in err and "tissue branch" in err
    only = _ckpt(tmp_path, "cell-only")
    rc, err = run("nuclei", "slide", "predict", "--checkpoint", str(nuclei), "--tissue-checkpoint", str(only))
    assert rc == 2 and "cell-only" in err and "has no tissue branch" in err
    shared = save_pretrained(build_model("feature-sharing", sharing=("both", "both", "both"), encoder_name="resnet18",
                                         decoder_channels=16), tmp_path / "fs", extra=json.loads(
        (cells / "config.json").read_text())["extra"])
    rc, err = run("nuclei", "slide", "predict", "--checkpoint", str(nuclei), "--tissue-checkpoint", str(shared))
    assert rc == 2 and "needs the cell branch" in err
    rc, err = run("nuclei", "slide", "predict", "--checkpoint", str(_nuclei_ckpt(tmp_path / "fine", mpp=0.2)))
    assert rc == 2 and "--allow-upsample" in err


@pytest.mark.parametrize("engine", ["onnxruntime", "openvino"])
def test_engines_give_the_torch_detections_on_the_real_slide(tmp_path, svs, capsys, engine):
    """Cells (shared tissue map: both entry points) and nuclei (with a tissue model) over
    an ROI of CMU-1: the same detections with each engine as with PyTorch."""
    from histozoom.data.nuclei.instance_table import read_table

    pytest.importorskip(engine)
    roi = _roi(tmp_path, Polygon([(600, 900), (1000, 900), (1000, 1200), (600, 1200)]))
    cells, nuclei = _ckpt(tmp_path), _nuclei_ckpt(tmp_path)
    got = {}
    for e in ("torch", engine):
        out = tmp_path / e
        assert main(["slide", "predict", "--checkpoint", str(cells), "--out", str(out / "c"), str(svs), "--roi", str(roi),
                     "--engine", e, "--no-images", "--no-progress", "--json"]) == 0
        assert main(["nuclei", "slide", "predict", "--checkpoint", str(nuclei), "--tissue-checkpoint", str(cells),
                     "--out", str(out / "n"), str(svs), "--roi", str(roi), "--tile", "256", "--margin", "32",
                     "--engine", e, "--no-images", "--no-progress", "--json"]) == 0
        capsys.readouterr()
        got[e] = (read_cells(out / "c" / "CMU-1-Small-Region" / "cells.parquet"),
                  read_table(out / "n" / "CMU-1-Small-Region" / "nuclei.parquet"))
    (rc, rn), (ec, en) = got["torch"], got[engine]
    assert len(rc["x"]) > 0 and len(rn["x"]) > 0
    for c in ("x", "y", "class_id", "tissue_class"):
        np.testing.assert_array_equal(ec[c], rc[c], err_msg=c)
    np.testing.assert_allclose(ec["probability"], rc["probability"], atol=1e-4)
    for c in ("x", "y", "class_id", "tissue_class", "bbox_x0", "bbox_y0"):
        np.testing.assert_array_equal(en[c], rn[c], err_msg=c)
    assert list(en["mask"]) == list(rn["mask"])
