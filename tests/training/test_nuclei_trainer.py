"""Nuclei training samples, the nuclei trainer, the predictor and the ``nuclei`` CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from histozoom.cli import main
from histozoom.data.augment import AugmentConfig
from histozoom.data.nuclei.dataset import open_nuclei
from histozoom.data.nuclei.records import CCRCC, CCRCC_CLASSES, NucleiSample, class_map
from histozoom.data.nuclei.samples import NucleiAugment, NucleiTrainSet
from histozoom.data.nuclei.synthetic import NucleiSynthConfig, write_synthetic_nuclei
from histozoom.data.nuclei.targets import distance_map
from histozoom.data.samples import image_tensor
from histozoom.evaluation.nuclei import read_nuclei_labels
from histozoom.inference.nuclei_predictor import NucleiPredictor
from histozoom.inference.watershed import WatershedConfig
from histozoom.metrics.instances import score_instances
from histozoom.models.checkpoint import load_config, resolve_checkpoint
from histozoom.models.registry import build_model, list_models
from histozoom.training.nuclei_trainer import (
    NucleiTrainConfig,
    NucleiTrainer,
    train_nuclei,
)

TINY = {"encoder_name": "resnet18", "decoder_channels": [16, 16, 8, 8, 8], "lunet_channels": [4, 8],
        "hrfe_channels": [8, 8, 16], "hrfe_blocks": 1, "hrfe_stages": 2}


@pytest.fixture(scope="module")
def tiles(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nuclei") / "syn"
    return write_synthetic_nuclei(root, 10, seed=3, cfg=NucleiSynthConfig(size=64, n_nuclei=(4, 6)))


def _grid_sample(h: int = 48, w: int = 40) -> NucleiSample:
    """Instances on a grid; the image encodes the instance id in its red channel."""
    inst = np.zeros((h, w), np.int32)
    k = 0
    for y in range(2, h - 6, 9):
        for x in range(3, w - 6, 8):
            k += 1
            inst[y:y + 6, x:x + 5] = k
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = inst * 5
    classes = {i: 1 + (i % 4) for i in range(1, k + 1)}
    return NucleiSample("grid", image, inst, classes, CCRCC_CLASSES)


def test_train_set_moves_image_and_targets_together():
    s = _grid_sample()
    aug = NucleiAugment(AugmentConfig(p_flip=0.5, p_rot90=0.75, p_blur=0, p_noise=0, p_jitter=0))
    ds = NucleiTrainSet([s], crop=32, augment=aug)
    lut = np.zeros(256, np.int64)
    for i, c in s.inst_class.items():
        lut[i * 5] = c
    for seed in range(12):
        aug.rng = np.random.default_rng(seed)
        out = ds[0]
        red = (out["image"][0].numpy() * 255).round().astype(np.int64)
        assert out["image"].shape == (3, 32, 32) and out["classes"].dtype == torch.int64
        np.testing.assert_array_equal(out["binary"].numpy(), (red > 0).astype(np.float32))
        np.testing.assert_array_equal(out["classes"].numpy(), lut[red])
        assert ((out["distance"].numpy() > 0) == (red > 0)).all()


def test_targets_come_from_the_whole_tile_and_padding_is_background():
    s = _grid_sample(40, 40)
    ds = NucleiTrainSet([s], crop=None)
    out = ds[0]
    assert out["image"].shape == (3, 64, 64)  # padded to the next multiple of 32
    np.testing.assert_allclose(out["distance"].numpy()[:40, :40], distance_map(s.inst_map))
    np.testing.assert_array_equal(out["classes"].numpy()[:40, :40], class_map(s.inst_map, s.inst_class))
    assert out["binary"][40:].sum() == 0 and out["binary"][:, 40:].sum() == 0


class _OracleModel(torch.nn.Module):
    """Reads the instance ids that :func:`_grid_sample` encodes in the red channel and
    returns their true maps (logits of +-20): equivariant to flips and rotations, so TTA
    must give the same answer. Declares CHR-Net's size multiple, so tiles get padded."""

    size_multiple = 32

    def __init__(self, inst_class: dict[int, int], n_classes: int = 4, with_distance: bool = True):
        super().__init__()
        self.lut = np.zeros(256, np.int64)
        for i, c in inst_class.items():
            self.lut[i] = c
        self.n = n_classes
        self.with_distance = with_distance

    def forward(self, image):
        inst = (image[0, 0].numpy() * 255 / 5).round().astype(np.int32)
        cmap = torch.from_numpy(self.lut[inst])
        logits = torch.nn.functional.one_hot(cmap, self.n + 1).permute(2, 0, 1)[None].float() * 40 - 20
        out = {"class_logits": logits, "task_logits": []}
        if self.with_distance:
            out["distance"] = torch.from_numpy(distance_map(inst))[None, None].float()
            out["binary_logits"] = torch.from_numpy((inst > 0) * 40.0 - 20.0)[None, None].float()
        return out


@pytest.mark.parametrize("tta", [False, True])
def test_predictor_recovers_oracle_instances_and_classes(tta):
    s = _grid_sample(48, 40)  # not a multiple of 32: padded and cropped back
    pred = NucleiPredictor(_OracleModel(s.inst_class), CCRCC_CLASSES, tta=tta).predict(s.image, s.id)
    scores = score_instances(s.inst_map, pred.inst_map, s.inst_class, pred.inst_class, classes=list(CCRCC_CLASSES.ids))
    assert scores.pq == 1.0 and scores.apq == 1.0 and scores.dice == 1.0
    assert set(pred.probability.values()) == {1.0}


def test_predictor_without_distance_uses_components():
    s = _grid_sample()
    pred = NucleiPredictor(_OracleModel(s.inst_class, with_distance=False), CCRCC_CLASSES).predict(s.image)
    from scipy import ndimage

    assert pred.n_instances == ndimage.label(s.inst_map > 0)[1]


def _check_unaligned_tile(name: str, h: int, w: int, overrides: dict) -> None:
    """The predictor pads the tile to the model's multiple and crops every map back: the maps
    are the model's on the padded tile at the tile's own pixels, the instances lie inside."""
    torch.manual_seed(0)
    model = build_model(name, **overrides).eval()
    m = model.size_multiple
    assert h % m and w % m
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    pred = NucleiPredictor(model, CCRCC_CLASSES, keep_maps=True)
    assert pred.multiple == m
    out = pred.predict(image, "t")
    assert out.inst_map.shape == (h, w)
    for key, maps in out.maps.items():
        assert maps.shape[-2:] == (h, w), key
    x = torch.nn.functional.pad(image_tensor(image)[None], (0, -w % m, 0, -h % m), mode="reflect")
    with torch.no_grad():
        direct = torch.softmax(model(x)["class_logits"], dim=1)[0, :, :h, :w].numpy()
    np.testing.assert_allclose(out.maps["class_prob"], direct, atol=1e-6)
    for row in out.table():
        assert 0 <= row["centroid_x"] <= w - 1 and 0 <= row["centroid_y"] <= h - 1


@pytest.mark.parametrize("name", list_models("nuclei"))
def test_every_nuclei_model_predicts_an_unaligned_tile(name):
    _check_unaligned_tile(name, 72, 88, TINY)  # neither side a multiple of 32


def test_nuclei_predictor_on_a_1040_px_tile():
    _check_unaligned_tile("unet-nuclei", 1040, 1040, TINY)


def test_prediction_outputs(tmp_path):
    s = _grid_sample()
    pred = NucleiPredictor(_OracleModel(s.inst_class), CCRCC_CLASSES).predict(s.image, s.id)
    paths = pred.write(tmp_path, image=s.image)
    assert sorted(p.name for p in paths) == sorted(["grid.geojson", "grid.mat", "grid_instances.npy",
                                                    "grid_instances.tif", "grid_nuclei.csv"])
    np.testing.assert_array_equal(np.load(tmp_path / f"{s.id}_instances.npy"), pred.inst_map)
    import tifffile

    np.testing.assert_array_equal(tifffile.imread(tmp_path / f"{s.id}_instances.tif"), pred.inst_map)
    back = read_nuclei_labels(tmp_path / f"{s.id}.mat")
    np.testing.assert_array_equal(back.inst_map, pred.inst_map)
    assert back.inst_class == pred.inst_class
    rows = (tmp_path / f"{s.id}_nuclei.csv").read_text().splitlines()
    assert len(rows) == pred.n_instances + 1 and rows[0].startswith("id,centroid_x,centroid_y")
    doc = json.loads((tmp_path / f"{s.id}.geojson").read_text())
    names = {f["properties"]["classification"]["name"] for f in doc["features"]}
    assert names <= set(CCRCC_CLASSES.names) and doc["features"][0]["properties"]["objectType"] == "detection"


def _cfg(tiles, **kw) -> NucleiTrainConfig:
    base = dict(data=str(tiles), model="chrnet", model_overrides=TINY, crop=32, batch_size=3, epochs=2, lr=1e-3,
                progress=False, tensorboard=False)
    return NucleiTrainConfig(**{**base, **kw})


def _digest(model: torch.nn.Module) -> str:
    return hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()


def test_train_resume_reproduces_uninterrupted_run(tiles, tmp_path):
    full = NucleiTrainer(_cfg(tiles), tmp_path / "full")
    s_full = full.fit()
    part = NucleiTrainer(_cfg(tiles, stop_after=1), tmp_path / "part")
    assert part.fit()["finished"] is False
    resumed = NucleiTrainer(_cfg(tiles), tmp_path / "part", resume=True)
    s_res = resumed.fit()
    assert _digest(full.model) == _digest(resumed.model)
    assert s_full["val"] == s_res["val"] and s_full["best_epoch"] == s_res["best_epoch"]
    run = tmp_path / "full"
    assert {"best.ckpt", "last", "log.csv", "done.json", "nuclei_train_config.json", "test_predictions"} <= {
        p.name for p in run.iterdir()}
    assert set(s_full["test"]) >= {"aPQ", "PQ", "Dice", "AJI", "PQ_class"}
    assert len(list((run / "test_predictions").glob("*.mat"))) == len(open_nuclei(tiles, "test"))
    # the checkpoint carries what prediction needs
    pred = NucleiPredictor.from_checkpoint(run)
    assert pred.classes == CCRCC_CLASSES
    # ... including the resolved post-processing, so a later change of the defaults does not
    # change what an old checkpoint predicts
    assert pred.watershed == WatershedConfig() and pred.watershed.marker_mode == "h_maxima"
    _, meta = load_config(resolve_checkpoint(run))
    assert meta["extra"]["watershed"]["marker_mode"] == "h_maxima"


def test_trainer_rejects_wrong_family_and_bad_config(tiles, tmp_path):
    from histozoom.errors import InputError

    with pytest.raises(InputError, match="not a nuclei model"):
        NucleiTrainer(_cfg(tiles, model="cell-only"), tmp_path / "a")
    with pytest.raises(ValueError, match="crop must be a multiple of 32"):
        _cfg(tiles, crop=40)
    with pytest.raises(ValueError, match=r"crop must be a multiple of 32 \(the input size multiple of model 'unet-nuclei'\)"):
        _cfg(tiles, model="unet-nuclei", crop=48)
    cfg = _cfg(tiles)
    cfg.crop = 48  # past the config's own check: the trainer asks the resolved model config again
    with pytest.raises(InputError, match="crop must be a multiple of 32 .*'chrnet'.*got 48"):
        NucleiTrainer(cfg, tmp_path / "b")
    with pytest.raises(ValueError, match="watershed"):
        _cfg(tiles, watershed={"min_size": -1})


def test_frozen_encoder_body_does_not_move(tiles, tmp_path):
    t = NucleiTrainer(_cfg(tiles, epochs=1, freeze_encoder_epochs=1, val_split=None, test_split=None), tmp_path / "f")
    t.build()
    before = [p.detach().clone() for p in t.model.encoder.body.parameters()]
    t.epoch_hook(1)
    t.train_step(next(iter(t.loader)))
    assert all(torch.equal(a, b) for a, b in zip(before, t.model.encoder.body.parameters()))
    t.epoch_hook(2)
    assert all(p.requires_grad for p in t.model.encoder.body.parameters())


def test_cli_train_predict_evaluate(tiles, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["nuclei", "train", "--data", str(tiles), "--model", "chrnet-mhr", "--out", str(run), "--epochs", "1",
            "--crop", "32", "--batch-size", "4", "--no-progress", "--no-tensorboard", "--json"]
    for k, v in TINY.items():
        args += ["--model-arg", f"{k}={json.dumps(v)}"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["finished"] and summary["model"] == "chrnet-mhr"
    pred_dir = tmp_path / "pred"
    assert main(["nuclei", "predict", "--checkpoint", str(run), "--input", str(tiles), "--split", "test",
                 "--out", str(pred_dir), "--formats", "mat,geojson", "--no-progress", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["id"] for r in out["images"]] == open_nuclei(tiles, "test").ids
    gt_dir = tmp_path / "gt"
    from histozoom.data.nuclei.consep import write_consep_mat

    gt_dir.mkdir()
    for s in open_nuclei(tiles, "test"):
        write_consep_mat(gt_dir / f"{s.id}.mat", s)
    assert main(["nuclei", "evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["n_images"] == len(out["images"]) and "apq" in ev["overall"]["mean"]
    # the same scores the trainer computed on its test split
    np.testing.assert_allclose(ev["overall"]["mean"]["dice"], summary["test"]["Dice"], rtol=1e-9)


def test_cli_errors(tiles, tmp_path, capsys):
    assert main(["nuclei", "train", "--data", str(tiles), "--model", "pred-to-inter-2", "--out", str(tmp_path / "x"),
                 "--no-progress"]) == 2
    assert "not a nuclei model" in capsys.readouterr().err
    assert main(["nuclei", "predict", "--checkpoint", str(tmp_path / "none"), "--input", str(tiles),
                 "--out", str(tmp_path / "p")]) == 2
    assert "no checkpoint here" in capsys.readouterr().err
    assert main(["train", "--data", str(tiles), "--model", "chrnet", "--out", str(tmp_path / "y")]) == 2


def test_scheme_merges_become_task_groups(tiles, tmp_path):
    t = NucleiTrainer(_cfg(tiles), tmp_path / "t")
    assert t.model_config.task_groups == tuple(m.groups for m in CCRCC.merges)
    assert t.model_config.n_classes == 4


@pytest.mark.slow
def test_chrnet_beats_unet_baseline_on_synthetic_grading(tmp_path):
    """The paper's claim on our data (README: the measured recipe, 40 epochs at 2 threads,
    about 7 + 2 minutes): CHR-Net's test aPQ above the 5-class U-Net's trained the same way.
    This shorter version (20 epochs) keeps the comparison, not the exact numbers."""
    data = write_synthetic_nuclei(tmp_path / "syn", 60, seed=0, cfg=NucleiSynthConfig(size=256))
    common = dict(data=str(data), crop=128, batch_size=4, epochs=20, lr=1e-3, progress=False, tensorboard=False)
    small = {"encoder_name": "resnet18", "decoder_channels": [64, 32, 32, 16, 16]}
    chr_cfg = NucleiTrainConfig(model="chrnet", model_overrides={**small, "lunet_channels": [8, 16, 32],
                                                                  "hrfe_channels": [16, 32, 64], "hrfe_blocks": 1},
                                **common)
    unet_cfg = NucleiTrainConfig(model="unet-nuclei", model_overrides=small, **common)
    chr_test = train_nuclei(chr_cfg, tmp_path / "chrnet")["test"]
    unet_test = train_nuclei(unet_cfg, tmp_path / "unet")["test"]
    assert chr_test["aPQ"] > unet_test["aPQ"]
    assert chr_test["PQ"] > unet_test["PQ"]  # the watershed on the distance map splits touching nuclei
