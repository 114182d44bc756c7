"""Ensembles: the mean of the members' probability maps, decoded once."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import write_tiny_synthetic
from histozoom.cli import main
from histozoom.data.open import open_dataset
from histozoom.errors import InputError
from histozoom.inference.ensemble import EnsembleNet
from histozoom.inference.predictor import Predictor
from histozoom.models.cell_tissue import cell_probability_map
from histozoom.training.cell_tissue_trainer import train
from histozoom.training.config import TrainConfig

TINY = {"encoder_name": "tu-test_resnet", "decoder_channels": 16}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ens")
    data = write_tiny_synthetic(root / "data", cell_mpp=0.4, tissue_mpp=1.6, seed=5)
    out = {}
    for name, kw in (("a", {"seed": 0}), ("b", {"seed": 1}), ("h", {"seed": 2, "target": "gaussian"}),
                     ("c", {"seed": 0, "model": "cell-only"})):
        cfg = TrainConfig(data=str(data), model=kw.pop("model", "pred-to-inter-2"), model_overrides=dict(TINY),
                          cell_dropout=0.0, tissue_dropout=0.0, epochs=1, batch_size=2, lr=1e-3, recipe="paper",
                          progress=False, tensorboard=False, test_split=None, **kw)
        train(cfg, root / name)
        out[name] = root / name
    out["data"] = data
    return out


def test_an_ensemble_of_one_is_that_checkpoint(runs):
    split = open_dataset(runs["data"]).split("test")
    single = Predictor.from_checkpoint(runs["a"])
    one = Predictor(EnsembleNet([single.model]), single.spec, size=single.size, peak_cfg=single.peak_cfg)
    for p, q in zip(single.probabilities(list(split)), one.probabilities(list(split))):
        assert np.allclose(p, q, atol=1e-6)
    a, b = single.predict_split(split), one.predict_split(split)
    for k in a.points:
        assert np.array_equal(a.points[k].xy, b.points[k].xy) and np.allclose(a.points[k].prob, b.points[k].prob)
    assert Predictor.from_checkpoints([runs["a"]]).model.__class__ is single.model.__class__


def test_members_maps_are_averaged_before_decoding(runs):
    split = open_dataset(runs["data"]).split("test")
    pairs = list(split)
    members = [Predictor.from_checkpoint(runs[k]) for k in ("a", "b", "h")]
    ens = Predictor.from_checkpoints([runs[k] for k in ("a", "b", "h")])
    assert isinstance(ens.model, EnsembleNet)
    want = [np.mean([m.probabilities([p])[0] for m in members], axis=0) for p in pairs]
    got = ens.probabilities(pairs)
    for w, g in zip(want, got):
        assert np.allclose(w, g, atol=1e-5)
    out = ens.model(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64), torch.tensor([[0.3, 0.3, 0.4, 0.4]]))
    assert torch.allclose(torch.exp(out["tissue_logits"]).sum(1), torch.ones(1, 64, 64), atol=1e-5)
    assert cell_probability_map(out["cell_logits"], "probabilities") is not None


def test_cli_ensemble_and_mismatched_members(runs, tmp_path, capsys):
    rc = main(["predict", "--checkpoint", str(runs["a"]), "--checkpoint", str(runs["b"]), "--data", str(runs["data"]),
               "--split", "test", "--out", str(tmp_path / "p.json"), "--no-progress", "--engine", "torch", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["checkpoints"] == 2 and summary["images"] == 2
    from histozoom.models.checkpoint import load_config, save_pretrained

    model = Predictor.from_checkpoint(runs["a"]).model
    _, meta = load_config(runs["a"] / "best.ckpt")
    extra = dict(meta["extra"], normalize="percentile")
    save_pretrained(model, tmp_path / "other", extra=extra)
    with pytest.raises(InputError, match="normalize differs"):
        Predictor.from_checkpoints([runs["a"], tmp_path / "other"])
