"""Training options of the challenge toolkit: Gaussian targets, folds, retrain on train+val,
normalisation, class-balanced sampling, other encoders (local weights only), MFoVCE-Net."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import write_tiny_synthetic
from histozoom.cli import main
from histozoom.inference.predictor import Predictor
from histozoom.models.checkpoint import load_config
from histozoom.models.registry import build_model, get_config
from histozoom.training.cell_tissue_trainer import Trainer, train
from histozoom.training.config import TrainConfig

TINY = {"encoder_name": "tu-test_resnet", "decoder_channels": 16}


@pytest.fixture(scope="module")
def data64(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "simple64"
    return write_tiny_synthetic(root, cell_mpp=0.4, tissue_mpp=1.6, seed=3, n_train=6)


def cfg(data, **kw) -> TrainConfig:
    base = dict(data=str(data), model="pred-to-inter-2", model_overrides=dict(TINY), cell_dropout=0.0,
                tissue_dropout=0.0, epochs=2, batch_size=2, lr=1e-3, recipe="paper", progress=False, tensorboard=False)
    return TrainConfig(**(base | kw))


def test_gaussian_target_trains_a_heatmap_model(data64, tmp_path):
    summary = train(cfg(data64, target="gaussian", model="cell-only"), tmp_path / "g")
    assert summary["test"] is not None
    config, meta = load_config(tmp_path / "g" / "best.ckpt")
    assert config.cell_output == "heatmap"
    assert meta["extra"]["peak"] == {"min_distance_um": 2.0, "threshold": 0.3, "smooth_um": 0.57, "nms_radius_um": 0.0}
    log = (tmp_path / "g" / "log.csv").read_text().splitlines()[0]
    assert "cell_mse_loss" in log
    pred = Predictor.from_checkpoint(tmp_path / "g")
    assert pred.cell_output == "heatmap" and pred.peak_cfg.smooth_um == 0.57
    model = pred.model
    x = torch.rand(1, 3, 64, 64)
    assert model(x)["cell_logits"].shape == (1, 2, 64, 64)  # one heatmap per class, no background


def test_folds_train_on_the_rest_and_validate_on_the_fold(data64, tmp_path):
    t = Trainer(cfg(data64, folds=3, fold=1), tmp_path / "f")
    t.setup()
    from histozoom.data.open import open_dataset
    from histozoom.data.splits import fold_splits

    train_ids = open_dataset(data64).split("train").ids
    _, val = fold_splits(open_dataset(data64).split("train"), 3, 1)
    assert t.val_split.ids == val.ids and len(t.train_split) == len(train_ids) - len(val)
    assert set(t.train_split.ids).isdisjoint(t.val_split.ids)
    with pytest.raises(ValueError, match="fold in 0..folds-1"):
        cfg(data64, folds=3, fold=3)
    with pytest.raises(ValueError, match="takes no folds"):
        cfg(data64, folds=3, retrain_all=True)


def test_retrain_all_uses_train_and_val_without_validation(data64, tmp_path):
    summary = train(cfg(data64, retrain_all=True, epochs=1), tmp_path / "r")
    t = Trainer(cfg(data64, retrain_all=True, epochs=1), tmp_path / "r2")
    t.setup()
    assert len(t.train_split) == 6 + 2 and t.val_split is None
    assert summary["best_epoch"] == 1


def test_normalisation_and_sampling_are_recorded_and_repeated(data64, tmp_path):
    train(cfg(data64, normalize="percentile", sampling="class-balanced"), tmp_path / "n")
    extra = load_config(tmp_path / "n" / "best.ckpt")[1]["extra"]
    assert extra["normalize"] == "percentile"
    pred = Predictor.from_checkpoint(tmp_path / "n")
    assert pred.normalize == "percentile"
    from histozoom.data.normalize import normalize_pair
    from histozoom.data.open import open_dataset

    pair = open_dataset(data64).split("test")[0]
    plain = Predictor(pred.model, pred.spec, size=pred.size, peak_cfg=pred.peak_cfg)
    assert np.allclose(pred.probabilities([pair])[0], plain.probabilities([normalize_pair(pair, "percentile")])[0])
    t = Trainer(cfg(data64, sampling="class-balanced"), tmp_path / "s")
    t.setup()
    w = t.sample_weights()
    assert len(w) == 6 and min(w) > 0


def test_mix_transformer_encoder_with_local_weights(data64, tmp_path):
    from segmentation_models_pytorch.encoders import get_encoder

    enc = get_encoder("mit_b0", in_channels=3, depth=5, weights=None, output_stride=16)
    torch.manual_seed(1)
    for p in enc.parameters():
        p.data.normal_()
    weights = tmp_path / "mit_b0.pth"
    torch.save(enc.state_dict(), weights)
    model = build_model("pred-to-inter-2", encoder_name="mit_b0", encoder_weights=str(weights), decoder_channels=16,
                        cell_dropout=0.0, tissue_dropout=0.0)
    for branch in (model.cell, model.tissue):
        got = branch.encoder.state_dict()
        assert all(torch.equal(got[k], v) for k, v in enc.state_dict().items())
    out = model.eval()(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64), torch.tensor([[0.25, 0.25, 0.5, 0.5]]))
    assert out["cell_logits"].shape == (1, 3, 64, 64)
    rc = main(["train", "--data", str(data64), "--model", "cell-only", "--out", str(tmp_path / "m"), "--epochs", "1",
               "--recipe", "paper", "--lr", "1e-3", "--batch-size", "2", "--model-arg", "encoder_name=mit_b0",
               "--model-arg", "decoder_channels=16", "--cell-dropout", "0", "--no-progress", "--no-tensorboard",
               "--target", "gaussian", "--sampling", "class-balanced", "--normalize", "macenko", "--json"])
    assert rc == 0
    saved = json.loads((tmp_path / "m" / "train_config.json").read_text())
    assert (saved["target"], saved["sampling"], saved["normalize"]) == ("gaussian", "class-balanced", "macenko")


def test_mfovce_net_reads_the_large_fov_without_tissue_labels():
    c = get_config("mfovce-net")
    assert c.tissue_branch and not c.tissue_supervised and c.inject is None
    assert c.t2c_positions == ("encoder", "aspp") and not c.c2t_positions
    m = build_model("mfovce-net", **TINY, cell_dropout=0.0, tissue_dropout=0.0).eval()
    cell = torch.rand(1, 3, 64, 64)
    win = torch.tensor([[0.25, 0.25, 0.5, 0.5]])
    a = m(cell, torch.rand(1, 3, 64, 64), win)["cell_logits"]
    b = m(cell, torch.rand(1, 3, 64, 64), win)["cell_logits"]
    assert not torch.allclose(a, b)  # the cell output depends on the large-FoV image
