"""Prediction: original coordinates at any size, TTA inversion, writers, the CLI contract."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import make_pair, write_tiny_synthetic
from histozoom.cli import main
from histozoom.data.challenge_json import read_challenge_json
from histozoom.data.gc_container import write_container
from histozoom.data.open import open_dataset
from histozoom.evaluation import evaluate
from histozoom.geometry import Placement, tissue_to_cell
from histozoom.inference import tta as tta_lib
from histozoom.inference.decode import PeakConfig
from histozoom.inference.predictor import (
    Predictions,
    Predictor,
    dihedral_pair,
    input_multiples,
    pad_pair,
    pair_from_images,
    to_original,
)
from histozoom.inference.tta import DIHEDRAL
from histozoom.inference.tta import invert as invert_dihedral
from histozoom.models.checkpoint import from_pretrained, save_pretrained
from histozoom.models.registry import build_model, get_config, list_models
from histozoom.pair import OCELOT_CELL_CLASSES, Pair, Points

TINY = {"encoder_name": "tu-test_resnet", "decoder_channels": 16, "cell_dropout": 0.0, "tissue_dropout": 0.0}


@pytest.fixture(scope="module")
def data64(tmp_path_factory):
    root = tmp_path_factory.mktemp("pdata") / "simple64"
    return write_tiny_synthetic(root)


class SpotModel(nn.Module):
    """Finds bright spots in the cell view; the class comes from the tissue view's red
    channel inside the window (TC where red) — geometry-sensitive in both views. It declares
    a size multiple so the predictor pads unaligned views for it."""

    size_multiple = 16

    def forward(self, cell_img, tissue_img, windows, tissue_mask=None):
        h, w = cell_img.shape[-2:]
        grey = cell_img.mean(1, keepdim=True)
        red = tissue_to_cell(tissue_img[:, :1], windows, (h, w))
        fg = 8 * (grey - 0.5)
        logits = torch.cat([torch.zeros_like(fg), fg + 3 * (1 - red), fg + 3 * red], dim=1)
        return {"cell_logits": logits}


def spot_pair(cell_size=(64, 64), tissue_size=(64, 64), spots=((20, 12, 1), (45, 50, 2)), centre=(0.5, 0.5), sigma=2.0):
    """Dark cell image with Gaussian bright spots at (x, y); the tissue image is red under
    the window's part where class-2 spots lie (right half of the window), green elsewhere."""
    cw, ch = cell_size
    yy, xx = np.mgrid[0:ch, 0:cw]
    img = np.zeros((ch, cw))
    for x, y, _ in spots:
        img = np.maximum(img, np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)))
    cell = np.repeat((img * 255).astype(np.uint8)[..., None], 3, axis=2)
    pl = Placement.from_centre(centre, cell_size, tissue_size, 0.2, 0.8)
    tw, th = tissue_size
    tissue = np.zeros((th, tw, 3), np.uint8)
    tissue[..., 1] = 255
    mid = int(round(pl.x0 + pl.width / 2))
    tissue[:, mid:, 0] = 255
    tissue[:, mid:, 1] = 0
    pts = Points.from_array(np.array(spots, dtype=float))
    return Pair("p", cell, tissue, pl, pts, np.ones((th, tw), np.uint8))


def _match(pred: Points, spots, tol):
    assert len(pred) == len(spots), pred.xy
    for x, y, c in spots:
        d = np.hypot(pred.xy[:, 0] - x, pred.xy[:, 1] - y)
        i = int(np.argmin(d))
        assert d[i] <= tol and pred.cls[i] == c, (pred.xy, pred.cls, (x, y, c))


# ---------------------------------------------------------------------- geometry
def test_dihedral_inversion_roundtrip():
    maps = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(1, 2, 3, 5)
    pair = spot_pair()
    for flip, k in DIHEDRAL:
        p = dihedral_pair(pair, flip, k)
        t = torch.from_numpy(p.cell_image[..., 0].astype(np.float32))
        assert torch.equal(invert_dihedral(t, flip, k), torch.from_numpy(pair.cell_image[..., 0].astype(np.float32)))
        fwd = torch.from_numpy(np.ascontiguousarray(np.rot90(maps.numpy()[..., ::-1] if flip else maps.numpy(), k, axes=(2, 3))))
        assert torch.equal(invert_dihedral(fwd, flip, k), maps)


def test_tta_transforms_are_the_dihedral_group_and_invert_exactly():
    x = torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    seen = set()
    for flip, k in DIHEDRAL:
        y = tta_lib.apply(x, flip, k)
        ref = np.rot90(x.numpy()[..., ::-1] if flip else x.numpy(), k, axes=(2, 3))
        assert torch.equal(y, torch.from_numpy(np.ascontiguousarray(ref)))  # flip, then rotate
        assert torch.equal(tta_lib.invert(y, flip, k), x)  # exact: only element order changes
        seen.add(y.numpy().tobytes())
    assert len(seen) == 8 and DIHEDRAL[0] == (False, 0)
    assert tta_lib.as_transforms(True) == list(DIHEDRAL) and tta_lib.as_transforms(False) == [(False, 0)]
    assert tta_lib.as_transforms([(1, 5)]) == [(True, 1)]


def test_tta_of_an_equivariant_function_equals_the_plain_output():
    """A symmetric 3×3 blur (zero padding) commutes with every flip/rotation; so does a
    pointwise map. Their TTA average is the plain output; a shift is not equivariant."""
    x = torch.randn(1, 2, 9, 12, generator=torch.Generator().manual_seed(1))
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16

    def fn(t):
        blur = torch.nn.functional.conv2d(t.reshape(-1, 1, *t.shape[-2:]), kernel[None, None], padding=1)
        return {"blur": blur.reshape(t.shape), "square": t ** 2}

    plain = fn(x)
    avg = tta_lib.average(fn, x, DIHEDRAL)
    assert set(avg) == {"blur", "square"}
    for name in plain:
        torch.testing.assert_close(avg[name], plain[name], rtol=0, atol=1e-6)
    shifted = tta_lib.average(lambda t: torch.roll(t, 1, dims=-1), x)
    assert not torch.allclose(shifted, torch.roll(x, 1, dims=-1))
    mean = tta_lib.MapMean()
    for t in DIHEDRAL:
        mean.add(tta_lib.apply(x, *t), t)
    torch.testing.assert_close(mean.mean(), x, rtol=0, atol=1e-6)


def test_to_original_pixel_centre_convention():
    xy = np.array([[0.0, 0.0], [31.0, 15.0]])
    out = to_original(xy, (32, 16), (64, 64))
    assert out.tolist() == [[0.5, 1.5], [62.5, 61.5]]
    assert to_original(np.array([[0.0, 0.0]]), (64, 64), (32, 32)).tolist() == [[0.0, 0.0]]  # clipped


def test_pad_pair_keeps_geometry():
    pair = spot_pair(cell_size=(72, 56), tissue_size=(70, 60), centre=(0.45, 0.5))
    padded, orig = pad_pair(pair, 16)
    assert orig == (72, 56) and padded.cell_size == (80, 64) and padded.tissue_size == (80, 64)
    a = pair.placement.cell_to_tissue_points(np.array([[10.0, 20.0]]))
    b = padded.placement.cell_to_tissue_points(np.array([[10.0, 20.0]]))
    np.testing.assert_allclose(a, b)


# ---------------------------------------------------------------------- predictor on a known model
@pytest.mark.parametrize("size", [None, 32, 128])
@pytest.mark.parametrize("tta", [False, True])
def test_predictions_in_original_coordinates_and_classes(size, tta):
    spots = ((20, 12, 1), (45, 50, 2), (10, 40, 1))
    pair = spot_pair(spots=spots, sigma=2.5)
    pred = Predictor(SpotModel(), size=size, tta=tta, peak_cfg=PeakConfig(2.0, 0.5)).predict_pair(pair)
    _match(pred, spots, tol=1.01 if size != 32 else 1.6)


def test_non_square_and_unaligned_sizes_with_tta():
    spots = ((20, 12, 1), (60, 40, 2))
    pair = spot_pair(cell_size=(72, 56), tissue_size=(70, 60), spots=spots, centre=(0.45, 0.5))
    for tta in (False, True):
        _match(Predictor(SpotModel(), tta=tta).predict_pair(pair), spots, tol=1.01)


def test_tta_average_is_invariant_for_a_real_model():
    model = build_model("pred-to-inter-2", **TINY).eval()
    pair = spot_pair()
    pr = Predictor(model, tta=True)
    prob = pr.probabilities([pair])[0]
    flipped = dihedral_pair(pair, True, 1)
    prob_f = pr.probabilities([flipped])[0]  # TTA of a transformed pair = the transformed TTA
    back = invert_dihedral(torch.from_numpy(prob_f), True, 1).numpy()
    np.testing.assert_allclose(back, prob, atol=2e-5)
    np.testing.assert_allclose(prob.sum(0), 1.0, atol=1e-5)


def test_label_leaking_needs_tissue_masks():
    model = build_model("tissue-label-leaking", **TINY).eval()
    pair = spot_pair()
    assert len(Predictor(model).probabilities([pair])) == 1
    with pytest.raises(Exception, match="tissue mask"):
        Predictor(model).predict_pair(pair.replace(tissue_mask=None))


# ---------------------------------------------------------------------- every model, unaligned sizes
def _tiny_cell_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = get_config(name, **TINY).build().eval()
    with torch.no_grad():  # foreground above the threshold on most pixels: many detections
        model.cell.head[0].bias[0] -= 2.0
    return model


def _check_in_original_frame(pred: Predictor, pair: Pair, threshold: float) -> Points:
    """Maps at the original cell size; every detection an integer pixel inside the image
    whose probability is the map's there (so it was not shifted, rescaled or taken from
    the padding and clipped back)."""
    w, h = pair.cell_size
    prob = pred.probabilities([pair])[0]
    assert prob.shape == (3, h, w)
    np.testing.assert_allclose(prob.sum(0), 1.0, atol=1e-5)
    pts = pred.predict_pair(pair)
    assert len(pts) > 0
    x, y = pts.xy[:, 0], pts.xy[:, 1]
    assert ((x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)).all()
    assert np.array_equal(pts.xy, np.rint(pts.xy))
    xi, yi = x.astype(int), y.astype(int)
    channel = np.searchsorted(np.asarray(OCELOT_CELL_CLASSES.ids), pts.cls) + 1
    np.testing.assert_allclose(pts.prob, prob[channel, yi, xi], rtol=1e-6)
    assert (1.0 - prob[0, yi, xi] > threshold).all()
    return pts


@pytest.mark.parametrize("name", list_models("cell-tissue"))
def test_every_model_predicts_unaligned_views_in_the_original_frame(name):
    """88×72 cell and 76×92 tissue views: no side is a multiple of any model's stride, so
    the predictor pads each view to what the model asks and maps everything back."""
    model = _tiny_cell_model(name)
    cfg = model.config
    assert input_multiples(model) == (cfg.cell_size_multiple, cfg.tissue_size_multiple, cfg.size_multiple)
    pair = make_pair(np.random.default_rng(0), cell_size=(88, 72), tissue_size=(76, 92))
    assert all(side % model.cell_size_multiple for side in pair.cell_size)
    _check_in_original_frame(Predictor(model, peak_cfg=PeakConfig(2.0, 0.3)), pair, 0.3)


def test_unet_predicts_a_1040_px_view():
    """1040 = 65 × 16: DeepLabV3+'s multiple but not the U-Net's (32), the case that used
    to pass every check and then fail inside the model."""
    model = _tiny_cell_model("unet-cell-only")
    assert model.size_multiple == 32 and 1040 % 32
    pair = make_pair(np.random.default_rng(1), cell_size=(1040, 1040), tissue_size=(300, 300), centre=(0.5, 0.5))
    pts = _check_in_original_frame(Predictor(model, peak_cfg=PeakConfig(2.0, 0.3)), pair, 0.3)
    assert pts.xy.max() > 1024  # detections in the last, padded, 32-px stripe are kept


def test_predictor_size_must_be_a_multiple_of_the_models():
    unet = build_model("unet-cell-only", **TINY)
    with pytest.raises(ValueError, match=r"multiple of 32 \(the input size multiple of model 'unet-cell-only'\), got 48"):
        Predictor(unet, size=48)
    assert Predictor(unet, size=64).size == 64
    assert Predictor(build_model("cell-only", **TINY), size=48).size == 48
    with pytest.raises(ValueError, match="multiple of 16"):
        Predictor(build_model("cell-only", **TINY), size=40)


# ---------------------------------------------------------------------- writers and checkpoints
def test_split_predictions_writers_and_scores(data64, tmp_path):
    split = open_dataset(data64).split("test")
    gt = {k: split[k].cell_points for k in range(len(split))}

    pred = Predictions({k: p for k, p in gt.items()}, list(split.ids), OCELOT_CELL_CLASSES,
                       organs={k: split[k].organ for k in gt})
    pred.write_challenge_json(tmp_path / "p.json")
    doc = read_challenge_json(tmp_path / "p.json", strict=True)
    assert doc.num_images == len(split)
    pred.write_csv_folder(tmp_path / "csv")
    assert sorted(p.stem for p in (tmp_path / "csv").iterdir()) == list(split.ids)
    pred.write_table(tmp_path / "t.csv")
    assert len(pred.rows()) == sum(len(p) for p in gt.values())
    for src in (tmp_path / "p.json", tmp_path / "csv"):
        totals = evaluate(src, data64, split="test", bootstrap=0).methods[0].scores().totals
        assert (totals[:, 0] == totals[:, 2]).all() and (totals[:, 1] == 0).all()  # every cell found, nothing else


def test_checkpoint_reload_gives_identical_predictions(data64, tmp_path):
    torch.manual_seed(0)
    model = build_model("pred-to-inter-2", **TINY)
    with torch.no_grad():  # a non-trivial output: shift the background logit down
        model.cell.head[0].bias[0] -= 2.0
    model.eval()
    split = open_dataset(data64).split("val")
    a = Predictor(model, size=32).predict_split(split)
    save_pretrained(model, tmp_path / "ck", extra={"spec": split.spec.to_dict(), "size": 32})
    b = Predictor.from_checkpoint(tmp_path / "ck").predict_split(split)
    assert b.ids == a.ids and a.points.keys() == b.points.keys()
    for k in a.points:
        np.testing.assert_array_equal(a.points[k].xy, b.points[k].xy)
        np.testing.assert_array_equal(a.points[k].prob, b.points[k].prob)
    pa = Predictor(model).probabilities([split[0]])[0]
    pb = Predictor(from_pretrained(tmp_path / "ck")).probabilities([split[0]])[0]
    assert np.array_equal(pa, pb)


def test_container_and_single_pair_inputs(data64, tmp_path):
    split = open_dataset(data64).split("test")
    pairs = [split[k] for k in range(len(split))]
    write_container(tmp_path / "box", pairs)
    model = build_model("cell-only", **TINY).eval()
    save_pretrained(model, tmp_path / "ck", extra={"spec": split.spec.to_dict()})
    assert main(["predict", "--checkpoint", str(tmp_path / "ck"), "--data", str(tmp_path / "box"),
                 "--out", str(tmp_path / "c.json"), "--threshold", "0.0", "--no-progress"]) == 0
    doc = read_challenge_json(tmp_path / "c.json", strict=True)
    assert doc.num_images == len(pairs)
    direct = Predictor(model, peak_cfg=PeakConfig(threshold=0.0)).predict_split(split)
    for k in range(len(pairs)):
        np.testing.assert_array_equal(doc.points.get(k, Points.empty()).xy, np.rint(direct.points[k].xy))
    # one pair from two image files
    from histozoom.data.io import write_image

    write_image(tmp_path / "c.png", pairs[0].cell_image)
    write_image(tmp_path / "t.png", pairs[0].tissue_image)
    off = pairs[0].placement.centre_frac
    p = pair_from_images(tmp_path / "c.png", tmp_path / "t.png", off, pairs[0].cell_mpp, pairs[0].tissue_mpp)
    np.testing.assert_allclose(p.placement.fractions(), pairs[0].placement.fractions())
    assert main(["predict", "--checkpoint", str(tmp_path / "ck"), "--cell-image", str(tmp_path / "c.png"),
                 "--tissue-image", str(tmp_path / "t.png"), "--offset", str(off[0]), str(off[1]),
                 "--table", str(tmp_path / "one.csv"), "--threshold", "0.0"]) == 0
    assert (tmp_path / "one.csv").read_text().startswith("image,image_name,sample_id")


# ---------------------------------------------------------------------- the CLI contract
def test_cli_predict_size_is_checked_against_the_model(data64, tmp_path, capsys):
    split = open_dataset(data64).split("test")
    save_pretrained(build_model("unet-cell-only", **TINY).eval(), tmp_path / "ck", extra={"spec": split.spec.to_dict()})
    base = ["predict", "--checkpoint", str(tmp_path / "ck"), "--data", str(data64), "--split", "test", "--no-progress"]
    assert main(base + ["--out", str(tmp_path / "a.json"), "--size", "48"]) == 2
    assert "multiple of 32 (the input size multiple of model 'unet-cell-only'), got 48" in capsys.readouterr().err
    assert not (tmp_path / "a.json").exists()
    assert main(base + ["--out", str(tmp_path / "b.json"), "--size", "64"]) == 0
    read_challenge_json(tmp_path / "b.json", strict=True)


def test_cli_train_predict_evaluate(data64, tmp_path, capsys):
    run, pj = tmp_path / "RUN", tmp_path / "P.json"
    args = ["train", "--data", str(data64), "--model", "pred-to-inter-2", "--out", str(run), "--epochs", "2",
            "--size", "32", "--seed", "1", "--device", "cpu", "--batch-size", "2", "--lr", "1e-3",
            "--cell-dropout", "0", "--tissue-dropout", "0", "--model-arg", "encoder_name=tu-test_resnet",
            "--model-arg", "decoder_channels=16", "--no-progress", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["finished"] and (run / "best.ckpt" / "model.safetensors").is_file() and (run / "log.csv").is_file()
    predict = ["predict", "--checkpoint", str(run), "--data", str(data64), "--split", "test", "--no-progress", "--json"]
    assert main([*predict, "--out", str(pj), "--engine", "torch"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["size"] == 32 and info["engine"] == "torch"  # the training size by default
    read_challenge_json(pj, strict=True)
    trained = json.loads((run / "test_predictions.json").read_text())
    assert json.loads(pj.read_text()) == trained  # the trainer's own test predictions, exactly
    # the default engine on the CPU: the same points, probabilities within 1e-4
    assert main([*predict, "--out", str(tmp_path / "auto.json")]) == 0
    assert json.loads(capsys.readouterr().out)["engine"] != "torch"
    auto = json.loads((tmp_path / "auto.json").read_text())["points"]
    assert [p["point"] for p in auto] == [p["point"] for p in trained["points"]]
    np.testing.assert_allclose([p["probability"] for p in auto], [p["probability"] for p in trained["points"]], atol=1e-4)
    assert main(["evaluate", "--pred", str(pj), "--gt", str(data64), "--split", "test", "--json", "--bootstrap", "0"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert next(iter(rep["methods"].values()))["mF1"] == pytest.approx(summary["test"]["mF1"])
    # a finished run resumes to nothing; without --resume the folder is refused
    assert main(args[:-1] + ["--resume"]) == 0
    assert main(args) == 2
