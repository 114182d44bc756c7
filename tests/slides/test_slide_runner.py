"""Slide inference: exact seams, resume after a kill, the shared tissue map, outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from histozoom.data.base import DatasetSpec
from histozoom.errors import InputError
from histozoom.inference.decode import PeakConfig, decode_cells_torch
from histozoom.inference.predictor import Predictor
from histozoom.models.checkpoint import save_pretrained
from histozoom.models.registry import build_model
from histozoom.pair import OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES
from histozoom.slides import outputs as slide_outputs
from histozoom.slides.job import find_region, in_region
from histozoom.slides.outputs import read_cells
from histozoom.slides.reader import ArraySlide
from histozoom.slides.runner import SlideOptions, SlidePredictor, predict_slides
from histozoom.slides.tiling import SlideSettings

SPEC = DatasetSpec(OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES)
OPTS = SlideOptions(progress=False, images=False, formats=("parquet",), workers=2, batch_size=3)


class EquivariantCells(nn.Module):
    """Three valid-size-preserving 3×3 convolutions (receptive field radius 3, no pooling):
    translation-equivariant away from the image border."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 8, 3, padding=1), nn.Tanh(),
                                 nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, cell_img, tissue_img=None, windows=None, tissue_mask=None):
        return {"cell_logits": 4 * self.net(cell_img)}


def _slide(h=700, w=900, mpp=0.2, seed=0) -> ArraySlide:
    rng = np.random.default_rng(seed)
    img = rng.integers(40, 200, (h, w, 3), dtype=np.uint8)
    return ArraySlide([img, img[::2, ::2].copy()], mpp, "virtual.png")


def _equivariant_predictor(margin=8) -> SlidePredictor:
    pred = Predictor(EquivariantCells(), SPEC, peak_cfg=PeakConfig(min_distance_um=0.6, threshold=0.3))
    return SlidePredictor(pred, SlideSettings(0.2, 0.8, 64, 64, margin, 16))


def test_tiled_result_equals_one_pass_for_an_equivariant_model(tmp_path):
    slide = _slide()
    sp = _equivariant_predictor()
    sp.predict_slide(slide, tmp_path / "s", OPTS)
    got = read_cells(tmp_path / "s" / "cells.parquet")
    plan = json.loads((tmp_path / "s" / "summary.json").read_text())["plan"]["grid"]
    ox, oy = plan["origin"]
    core = plan["tile"] - 2 * plan["margin"]
    w, h = plan["cols"] * core, plan["rows"] * core
    pad = 16  # context around the covered area, as the tiles see it
    region = slide.read(ox - pad, oy - pad, w + 2 * pad, h + 2 * pad, 0.2)
    with torch.no_grad():
        prob = sp.model(torch.from_numpy(region).permute(2, 0, 1)[None].float() / 255)["cell_logits"].softmax(1)
    pts = decode_cells_torch(prob, OCELOT_CELL_CLASSES, sp.predictor.peak_cfg, 0.2)[0]
    px, py = pts.xy[:, 0], pts.xy[:, 1]
    inside = (px >= pad - 0.5) & (px < pad + w - 0.5) & (py >= pad - 0.5) & (py < pad + h - 0.5)
    ref = pts.subset(inside)
    ref = ref.with_xy(ref.xy + [ox - pad, oy - pad])
    # beyond the slide is blank glass, whose flat probability plateaus have ties that the
    # peak rule settles by position in the map, and the output keeps only cells on the
    # slide; compare where the slide has texture
    (sw, sh), band = slide.dimensions, 8

    def textured(x, y):
        return (x >= 0) & (y >= 0) & (x < sw - band) & (y < sh - band)

    ref = ref.subset(textured(ref.xy[:, 0], ref.xy[:, 1]))
    ref_xy = ref.xy
    keep = textured(got["x"], got["y"])
    assert keep.sum() > len(got["x"]) - (band + 1) * (sw + sh)  # only the band is left out
    got = {k: v[keep] for k, v in got.items()}
    assert len(ref_xy) > 100
    order_got = np.lexsort((got["x"], got["y"]))
    order_ref = np.lexsort((ref_xy[:, 0], ref_xy[:, 1]))
    np.testing.assert_array_equal(np.column_stack([got["x"], got["y"]])[order_got], ref_xy[order_ref])
    np.testing.assert_array_equal(got["class_id"][order_got], ref.cls[order_ref])
    np.testing.assert_allclose(got["probability"][order_got], ref.prob[order_ref], atol=1e-5)


def _tiny_checkpoint(tmp_path, name="pred-to-inter-2"):
    torch.manual_seed(0)
    m = build_model(name, encoder_name="resnet18", decoder_channels=16)
    extra = {"spec": SPEC.to_dict(), "size": 64, "views": {"cell": {"size": 64, "mpp": 0.2}, "tissue": {"size": 64, "mpp": 0.8}},
             "peak": {"min_distance_um": 2.0, "threshold": 0.3}}
    return save_pretrained(m, tmp_path / f"ckpt_{name}", extra=extra)


def test_shared_tissue_map_equals_per_tile_context_where_the_tissue_tile_is_the_same(tmp_path):
    """With the tissue map built from tissue tiles centred like the per-pair views, the
    shared path gives the per-tile model's cells: checked through the model's own split
    (cell_logits_given_tissue equals forward) and by running both context modes."""
    ckpt = _tiny_checkpoint(tmp_path)
    sp = SlidePredictor.from_checkpoint(ckpt)
    assert sp.context(OPTS) == "shared"
    slide = _slide(400, 500)
    a = sp.predict_slide(slide, tmp_path / "shared", OPTS)
    b = sp.predict_slide(slide, tmp_path / "pertile", SlideOptions(**{**OPTS.__dict__, "context": "per-tile"}))
    assert a["context"] == "shared" and b["context"] == "per-tile" and a["tiles"] == b["tiles"] > 0
    ca, cb = read_cells(tmp_path / "shared" / "cells.parquet"), read_cells(tmp_path / "pertile" / "cells.parquet")
    assert set(np.unique(ca["tissue_class"])) <= {1, 2} and set(np.unique(cb["tissue_class"])) <= {1, 2}


def test_resume_after_a_kill_at_several_points_gives_identical_output(tmp_path, monkeypatch):
    ckpt = _tiny_checkpoint(tmp_path)
    sp = SlidePredictor.from_checkpoint(ckpt)
    slide = _slide(420, 520, seed=3)
    sp.predict_slide(slide, tmp_path / "ref", OPTS)
    ref = read_cells(tmp_path / "ref" / "cells.parquet")

    for where, after in (("part", 0), ("part", 2), ("tissue", 1), ("finish", 0)):
        out = tmp_path / f"killed_{where}_{after}"
        with monkeypatch.context() as mp:
            _kill_at(mp, where, after)
            with pytest.raises(Killed):
                sp.predict_slide(slide, out, OPTS)
        assert not (out / "summary.json").exists()
        if where == "part":  # the journal holds exactly the batches finished before the kill
            assert len(list((out / ".work" / "parts").glob("*.parquet"))) == after
        sp.predict_slide(slide, out, OPTS)
        got = read_cells(out / "cells.parquet")
        for col in ("x", "y", "class_id", "probability", "tissue_class", "tile"):
            np.testing.assert_array_equal(got[col], ref[col], err_msg=f"{where} {after} {col}")


class Killed(Exception):
    """Stands for a kill -9: raised between two writes, it leaves what a kill would."""


def _kill_at(mp, where: str, after: int) -> None:
    """Make the run die after ``after`` batch parts (``part``), after ``after`` tissue
    batches (``tissue``), or when it writes the summary (``finish``)."""
    import histozoom.slides.tissue_pass as tissue_pass

    if where == "part":
        real, calls = slide_outputs.write_part, [0]

        def part(*a, **k):
            if calls[0] >= after:
                raise Killed
            calls[0] += 1
            return real(*a, **k)

        mp.setattr(slide_outputs, "write_part", part)
    elif where == "tissue":
        real_json = tissue_pass.write_json

        def tissue(path, obj, *a, **k):
            if str(path).endswith("tissue_done.json") and obj["batches"] > after:
                raise Killed
            return real_json(path, obj, *a, **k)

        mp.setattr(tissue_pass, "write_json", tissue)
    else:
        def finish(*a, **k):
            raise Killed

        mp.setattr(slide_outputs, "write_json", finish)


def test_leaking_checkpoint_and_coarse_slide_are_refused(tmp_path):
    ckpt = _tiny_checkpoint(tmp_path, "tissue-label-leaking")
    with pytest.raises(InputError, match="leaking.*cannot run on slides"):
        SlidePredictor.from_checkpoint(ckpt)
    sp = _equivariant_predictor()
    coarse = _slide(200, 200, mpp=0.5)
    with pytest.raises(InputError, match=r"2\.50× coarser.*--allow-upsample"):
        sp.predict_slide(coarse, tmp_path / "c", OPTS)
    s = sp.predict_slide(coarse, tmp_path / "c", SlideOptions(**{**OPTS.__dict__, "allow_upsample": True}))
    assert s["cells"] > 0


@pytest.mark.parametrize("size", [(700, 900), (1013, 517)])
def test_tile_cores_cover_the_whole_slide_when_the_thumbnail_is_floored(size):
    """The thumbnail (8 µm/px, 40 level-0 px per thumbnail px here) floors the slide's
    size; the strip past its last column and row is still tiled and kept."""
    slide = _slide(*size)
    sp = _equivariant_predictor()
    region = find_region(slide, OPTS, sp.settings.cell_mpp, sp.settings.cell_tile, sp.settings.cell_margin)
    assert slide.dimensions[0] % region.thumb_scale != 0
    covered = np.zeros(size, bool)
    for k in region.tiles:
        x0, y0, x1, y1 = (int(round(v)) for v in region.grid.core_box(k))
        covered[max(0, y0):y1, max(0, x0):x1] = True
    assert covered.all()
    xs, ys = np.meshgrid(np.arange(size[1], dtype=float), np.arange(size[0], dtype=float))
    assert in_region(region, xs.ravel(), ys.ravel(), slide.dimensions).all()
    assert not in_region(region, np.array([-1.0, size[1]]), np.array([5.0, 5.0]), slide.dimensions).any()


def test_a_slide_without_tissue_gives_zeros_and_a_warning(tmp_path):
    blank = ArraySlide(np.full((300, 300, 3), 245, np.uint8), 0.2, "blank.png")
    s = _equivariant_predictor().predict_slide(blank, tmp_path / "b", OPTS)
    assert s["cells"] == 0 and s["tiles"] == 0 and s["tissue_area_mm2"] == 0
    assert any("no tissue" in w for w in s["warnings"])


def test_many_slides_skip_finished_and_errors(tmp_path):
    from PIL import Image

    sp = _equivariant_predictor()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(40, 200, (200, 260, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "broken.svs").write_bytes(b"nope" * 10)
    inputs, opts = [tmp_path / "a.png", tmp_path / "broken.svs"], SlideOptions(**{**OPTS.__dict__, "mpp": 0.2})
    with pytest.raises(InputError, match=r"broken\.svs"):
        predict_slides(sp, inputs, tmp_path / "out", opts)
    res = predict_slides(sp, inputs, tmp_path / "out", opts, skip_errors=True)
    assert [r["status"] for r in res] == ["done", "error"] and res[0].get("skipped") is True  # a.png was finished
    assert "broken.svs" in res[1]["error"]
    rows = (tmp_path / "out" / "slides.csv").read_text().splitlines()
    assert rows[0].startswith("slide,status,cells") and rows[1].startswith("a,done,") and rows[2].startswith("broken,error")


def test_shards_partition_the_slides_and_their_union_is_one_run(tmp_path):
    """Three shards into one folder give the outputs of one run, slides.csv included (the
    last shard to finish writes the whole table); an error is kept in error.json."""
    from PIL import Image

    sp = _equivariant_predictor()
    rng = np.random.default_rng(2)
    names = ["a", "b", "c", "d", "e"]
    for n in names:
        Image.fromarray(rng.integers(40, 200, (150, 180, 3), dtype=np.uint8)).save(tmp_path / f"{n}.png")
    (tmp_path / "f.svs").write_bytes(b"nope" * 10)
    inputs = [tmp_path / f"{n}.png" for n in names] + [tmp_path / "f.svs"]
    opts = SlideOptions(**{**OPTS.__dict__, "mpp": 0.2})
    whole = predict_slides(sp, inputs, tmp_path / "one", opts, skip_errors=True)
    ran = []
    for i in range(3):
        res = predict_slides(sp, inputs, tmp_path / "sharded", opts, skip_errors=True, shard=(i, 3))
        ran += [r["name"] for r in res]
        if i == 0:
            assert "pending" in (tmp_path / "sharded" / "slides.csv").read_text()
    assert sorted(ran) == sorted(names + ["f"]) and len(ran) == 6  # each slide in exactly one shard
    for n in names:
        a, b = (read_cells(tmp_path / d / n / "cells.parquet") for d in ("one", "sharded"))
        for c in ("x", "y", "class_id", "probability"):
            np.testing.assert_array_equal(a[c], b[c])
    drop = lambda t: [",".join(r.split(",")[:3]) for r in t.splitlines()]  # noqa: E731 - seconds differ
    assert drop((tmp_path / "one" / "slides.csv").read_text()) == drop((tmp_path / "sharded" / "slides.csv").read_text())
    assert json.loads((tmp_path / "sharded" / "f" / "error.json").read_text())["status"] == "error"
    assert [r["status"] for r in whole] == ["done"] * 5 + ["error"]
    with pytest.raises(ValueError, match="shard"):
        predict_slides(sp, inputs, tmp_path / "x", opts, shard=(3, 3))


@pytest.mark.parametrize("name", ["pred-to-inter-2", "cell-only", "feature-sharing"])
def test_no_duplicates_across_seams_for_real_models(tmp_path, name):
    """Same-class detections of different tiles closer than 1 µm would be one cell twice."""
    from scipy.spatial import cKDTree

    sp = SlidePredictor.from_checkpoint(_tiny_checkpoint(tmp_path, name))
    assert sp.context(OPTS) == {"pred-to-inter-2": "shared", "cell-only": "none", "feature-sharing": "per-tile"}[name]
    sp.predict_slide(_slide(360, 420, seed=5), tmp_path / "s", OPTS)
    c = read_cells(tmp_path / "s" / "cells.parquet")
    assert len(c["x"]) > 20
    pairs = cKDTree(np.column_stack([c["x"], c["y"]])).query_pairs(1.0 / 0.2, output_type="ndarray")
    a, b = pairs[:, 0], pairs[:, 1]
    across = pairs[(c["tile"][a] != c["tile"][b]) & (c["class_id"][a] == c["class_id"][b])]
    assert len(across) == 0


def test_cli_killed_with_sigkill_and_run_again_gives_the_same_cells(tmp_path):
    """``histozoom slide predict`` killed (SIGKILL) once its journal has a batch, then the
    same command again: the cells equal an uninterrupted run's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from PIL import Image

    ckpt = _tiny_checkpoint(tmp_path)
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(40, 200, (520, 600, 3), dtype=np.uint8)).save(tmp_path / "scan.png")

    def cmd(out):
        return [sys.executable, "-m", "histozoom", "slide", "predict", "--checkpoint", str(ckpt), "--out", str(out),
                str(tmp_path / "scan.png"), "--mpp", "0.2", "--batch-size", "2", "--no-progress", "--no-images", "--json"]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd(tmp_path / "ref"), check=True, capture_output=True, env=env)
    proc = subprocess.Popen(cmd(tmp_path / "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    parts = tmp_path / "killed" / "scan" / ".work" / "parts"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and len(list(parts.glob("*.parquet"))) < 2:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = subprocess.run(cmd(tmp_path / "killed"), check=True, capture_output=True, text=True, env=env)
    summary = json.loads(r.stdout)["slides"][0]
    assert summary["status"] == "done" and summary["cells"] > 0
    a, b = read_cells(tmp_path / "ref" / "scan" / "cells.parquet"), read_cells(tmp_path / "killed" / "scan" / "cells.parquet")
    for col in ("x", "y", "class_id", "probability", "tissue_class"):
        np.testing.assert_array_equal(a[col], b[col])
    assert not (tmp_path / "killed" / "scan" / ".work").exists()


def test_auto_batch_size_is_measured_once_and_kept_for_resume(tmp_path, monkeypatch):
    """``batch_size=0``: 8 on a CPU; with a measured size (a stand-in for the GPU
    measurement) the batches use it and a resumed slide keeps it whatever is free then."""
    from histozoom.inference import device
    from histozoom.inference.device import batch_size_for

    assert batch_size_for(10e9, 3e9, 4e9) == 6  # (0.8 · 10 GB − 2 GB fixed) / 1 GB per item
    assert batch_size_for(1e9, 3e9, 4e9) == 1 and batch_size_for(1e12, 1e6, 2e6, cap=64) == 64
    sp = _equivariant_predictor()
    slide = _slide(300, 340, seed=4)
    auto = SlideOptions(**{**OPTS.__dict__, "batch_size": 0})
    cpu = sp.predict_slide(slide, tmp_path / "cpu", auto)
    ref = sp.predict_slide(slide, tmp_path / "ref", SlideOptions(**{**OPTS.__dict__, "batch_size": 8}))
    assert cpu["cells"] == ref["cells"]
    sizes = []
    monkeypatch.setattr(device, "fit_batch_size", lambda run, dev, default, cap=256: sizes.append(run(2)) or 3)
    prep = sp.prepare(slide, tmp_path / "gpu", auto)
    assert sizes and all(len(g) == 3 for g in prep.job.groups[:-1])
    monkeypatch.setattr(device, "fit_batch_size", lambda *a, **k: 5)
    again = sp.prepare(slide, tmp_path / "gpu", auto)  # resumed: the recorded size
    assert again.job.groups == prep.job.groups
