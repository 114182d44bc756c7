"""save_pretrained / from_pretrained: config.json + model.safetensors, atomic, exact reload."""

from __future__ import annotations

import json

import pytest
import torch

from histozoom.errors import InputError
from histozoom.models import checkpoint
from histozoom.models.cell_tissue import CellTissueConfig
from histozoom.models.checkpoint import from_pretrained, load_config, save_pretrained
from histozoom.models.registry import build_model, get_config

WINDOWS = torch.tensor([[0.375, 0.375, 0.25, 0.25], [0.1, 0.5, 0.3, 0.3]])
SMALL = dict(encoder_name="resnet18", decoder_channels=16)


def _inputs():
    g = torch.Generator().manual_seed(1)
    cell = torch.randn(2, 3, 64, 64, generator=g)
    tissue = torch.randn(2, 3, 64, 64, generator=g)
    mask = torch.randint(0, 3, (2, 64, 64), generator=g)
    return cell, tissue, mask


def _trained_a_bit(model):
    """One train-mode forward so BatchNorm running stats differ from their init."""
    cell, tissue, mask = _inputs()
    model.train()
    with torch.no_grad():
        model(cell, tissue, WINDOWS, mask)
    return model.eval()


@pytest.mark.parametrize("name, overrides", [
    ("pred-to-inter-2", {}),
    ("feature-sharing", dict(sharing=("c2t", "t2c", "both"), share_channels=8, n_tissue_classes=3, **SMALL)),
    ("unet-cell-only", dict(n_cell_classes=4)),
    ("tissue-label-leaking", dict(cell_dropout=0.5, **SMALL)),
])
def test_reload_gives_identical_outputs(tmp_path, name, overrides):
    model = _trained_a_bit(build_model(name, **overrides))
    save_pretrained(model, tmp_path / "ckpt", extra={"epoch": 3, "val_mf1": 0.71})
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["config.json", "model.safetensors"]  # no temporary files left
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert meta["model_name"] == name
    assert meta["config_type"] == "histozoom.models.cell_tissue.CellTissueConfig"
    assert meta["extra"] == {"epoch": 3, "val_mf1": 0.71}

    again = from_pretrained(tmp_path / "ckpt")
    assert not again.training
    assert again.config == model.config
    cell, tissue, mask = _inputs()
    with torch.no_grad():
        a = model(cell, tissue, WINDOWS, mask)
        b = again(cell, tissue, WINDOWS, mask)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_config_json_roundtrip():
    cfg = get_config("feature-sharing", sharing=("t2c", "none", "c2t"), encoder_weights="/some/file.pth")
    again = CellTissueConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and isinstance(again.sharing, tuple)
    with pytest.raises(ValueError, match="unknown CellTissueConfig fields"):
        CellTissueConfig.from_dict({**cfg.to_dict(), "colour": "blue"})


def test_reload_does_not_need_the_imagenet_file(tmp_path):
    import torchvision

    weights = tmp_path / "imagenet.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    model = build_model("cell-only", encoder_weights=str(weights), **SMALL).eval()
    save_pretrained(model, tmp_path / "ckpt")
    weights.unlink()
    again = from_pretrained(tmp_path / "ckpt")
    assert again.config.encoder_weights == str(weights)  # kept for the record
    x = _inputs()[0]
    with torch.no_grad():
        assert torch.equal(model(x)["cell_logits"], again(x)["cell_logits"])


def test_failed_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    model = build_model("cell-only", **SMALL)
    save_pretrained(model, tmp_path, extra={"v": 1})
    before = (tmp_path / "model.safetensors").read_bytes()

    def broken(state, path, metadata=None):
        with open(path, "wb") as fh:
            fh.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(build_model("cell-only", **SMALL), tmp_path, extra={"v": 2})
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert load_config(tmp_path)[1]["extra"] == {"v": 1}


def test_bad_checkpoints_name_the_file(tmp_path):
    with pytest.raises(InputError, match=r"config\.json.*not found"):
        from_pretrained(tmp_path)
    save_pretrained(build_model("cell-only", **SMALL), tmp_path)
    cfg_path = tmp_path / "config.json"
    meta = json.loads(cfg_path.read_text())

    cfg_path.write_text(json.dumps({**meta, "config": {**meta["config"], "n_cell_classes": 5}}))
    with pytest.raises(InputError, match=r"model\.safetensors.*do not fit"):
        from_pretrained(tmp_path)

    cfg_path.write_text(json.dumps({**meta, "config_type": "os.system"}))
    with pytest.raises(InputError, match=r"config\.json.*not a histozoom config"):
        from_pretrained(tmp_path)

    cfg_path.write_text(json.dumps({**meta, "config": {**meta["config"], "inject": "nowhere"}}))
    with pytest.raises(InputError, match=r"config\.json.*bad config"):
        from_pretrained(tmp_path)

    cfg_path.write_text("{not json")
    with pytest.raises(InputError, match=r"config\.json.*invalid checkpoint config \(line 1"):
        from_pretrained(tmp_path)

    cfg_path.write_text(json.dumps(meta))
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"model\.safetensors"):
        from_pretrained(tmp_path)


def test_model_without_config_cannot_be_saved(tmp_path):
    with pytest.raises(TypeError, match="config"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path)
    assert checkpoint.CONFIG_FILE == "config.json" and checkpoint.WEIGHTS_FILE == "model.safetensors"
