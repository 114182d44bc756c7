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


# ---------------------------------------------------------------------- absurd configs are data errors
CELL_TISSUE_TYPE = "histozoom.models.cell_tissue.CellTissueConfig"
CHRNET_TYPE = "histozoom.models.chrnet.ChrNetConfig"


@pytest.fixture
def no_build(monkeypatch):
    """Building any model fails the test: a bad config must be refused before allocation."""
    from histozoom.models import cell_tissue, chrnet

    def built(*args, **kwargs):
        raise AssertionError("the model was built from a bad config")

    monkeypatch.setattr(cell_tissue.CellTissueModel, "__init__", built)
    monkeypatch.setattr(chrnet.ChrNet, "__init__", built)


@pytest.mark.parametrize("config_type, field, value, problem", [
    (CELL_TISSUE_TYPE, "decoder_channels", -5, r"decoder_channels must be in \[1, 4096\], got -5"),
    (CELL_TISSUE_TYPE, "decoder_channels", 60000, r"decoder_channels must be in \[1, 4096\], got 60000"),
    (CELL_TISSUE_TYPE, "decoder_channels", "256", r"decoder_channels must be an integer"),
    (CELL_TISSUE_TYPE, "decoder_channels", True, r"decoder_channels must be an integer"),
    (CELL_TISSUE_TYPE, "encoder_name", "resnet9000", r"unknown encoder_name 'resnet9000'"),
    (CELL_TISSUE_TYPE, "encoder_name", 34, r"encoder_name must be a string"),
    (CELL_TISSUE_TYPE, "n_cell_classes", 10**9, r"n_cell_classes must be in \[1, 254\]"),
    (CELL_TISSUE_TYPE, "in_channels", 0, r"in_channels must be in \[1, 64\]"),
    (CELL_TISSUE_TYPE, "atrous_rates", [12, 24], r"atrous_rates needs 3 entries"),
    (CELL_TISSUE_TYPE, "atrous_rates", "abc", r"atrous_rates must be a list of integers"),
    (CELL_TISSUE_TYPE, "atrous_rates", [12, 24, 10**6], r"atrous_rates must be in \[1, 256\]"),
    (CELL_TISSUE_TYPE, "aspp_dropout", 1.5, r"aspp_dropout must be in \[0, 1\)"),
    (CELL_TISSUE_TYPE, "cell_dropout", "0.1", r"cell_dropout must be a number"),
    (CELL_TISSUE_TYPE, "tissue_branch", "yes", r"tissue_branch must be true or false"),
    (CELL_TISSUE_TYPE, "share_channels", 10**6, r"share_channels must be in \[1, 4096\]"),
    (CELL_TISSUE_TYPE, "sharing", "both", r"sharing must be a list of 3 strings"),
    (CELL_TISSUE_TYPE, "encoder_weights", 7, r"encoder_weights must be a string or null"),
    (CHRNET_TYPE, "decoder_channels", [60000, 128, 64, 32, 16], r"decoder_channels must be in \[1, 4096\], got 60000"),
    (CHRNET_TYPE, "hrfe_channels", [-1, 64], r"hrfe_channels must be in \[1, 4096\], got -1"),
    (CHRNET_TYPE, "lunet_channels", 16, r"lunet_channels must be a list of integers"),
    (CHRNET_TYPE, "encoder_name", "nope", r"unknown encoder_name 'nope'"),
    (CHRNET_TYPE, "hrfe_blocks", 10**6, r"hrfe_blocks must be in \[1, 64\]"),
    (CHRNET_TYPE, "gc_reduction", 0.5, r"gc_reduction must be an integer"),
    (CHRNET_TYPE, "head_dropout", -0.1, r"head_dropout must be in \[0, 1\)"),
    (CHRNET_TYPE, "global_context", 1, r"global_context must be true or false"),
    (CHRNET_TYPE, "task_groups", [[["a"]], [[1]]], r"task_groups must be nested sequences of ints"),
    (CHRNET_TYPE, "n_classes", -3, r"n_classes must be in \[1, 254\]"),
])
def test_absurd_config_is_a_named_error_before_building(tmp_path, no_build, config_type, field, value, problem):
    import time
    import tracemalloc

    (tmp_path / "config.json").write_text(json.dumps({
        "format": checkpoint.FORMAT, "config_type": config_type, "model_name": None,
        "config": {field: value}, "extra": None}))
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(InputError, match=problem) as exc:
            from_pretrained(tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert exc.value.path == str(tmp_path / "config.json")
    assert time.perf_counter() - t0 < 5 and peak < 50 * 2**20


def test_config_that_is_not_an_object(tmp_path, no_build):
    for config in ([1, 2], 5, "cell-only"):
        (tmp_path / "config.json").write_text(json.dumps({"config_type": CELL_TISSUE_TYPE, "config": config}))
        with pytest.raises(InputError, match=r"config\.json.*bad config"):
            load_config(tmp_path)


@pytest.mark.parametrize("name, overrides, problem", [
    ("cell-only", {"decoder_channels": 60000}, r"decoder_channels must be in \[1, 4096\]"),
    ("feature-sharing", {"encoder_name": "resnet9000"}, r"unknown encoder_name"),
    ("chrnet", {"hrfe_channels": [32, 64, 10**5]}, r"hrfe_channels must be in \[1, 4096\]"),
])
def test_overrides_get_the_same_validation(no_build, name, overrides, problem):
    # --model-arg values reach the config through get_config(name, **overrides)
    from histozoom.errors import ConfigError

    with pytest.raises(ConfigError, match=problem):
        get_config(name, **overrides)


def test_model_arg_on_train_is_a_named_error(tmp_path, capsys, no_build):
    from conftest import write_tiny_synthetic
    from histozoom.cli import main

    data = write_tiny_synthetic(tmp_path / "data")
    rc = main(["train", "--data", str(data), "--model", "cell-only", "--out", str(tmp_path / "run"),
               "--size", "64", "--epochs", "1", "--model-arg", "decoder_channels=60000"])
    err = capsys.readouterr().err
    assert rc == 2 and "decoder_channels must be in [1, 4096], got 60000" in err and "Traceback" not in err


def test_sane_configs_still_load(tmp_path):
    cfg = CellTissueConfig(**SMALL, atrous_rates=[6, 12, 18], share_channels=None)
    assert cfg.atrous_rates == (6, 12, 18)
    assert CellTissueConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert get_config("chrnet", encoder_name="resnet18", hrfe_channels=[16, 32, 64]).hrfe_channels == (16, 32, 64)
