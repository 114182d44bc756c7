"""ONNX Runtime and OpenVINO engines: the same probabilities as PyTorch (1e-4) for every
variant, the same detections through the predictors, and ``histozoom export``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import write_tiny_synthetic
from histozoom.data.open import open_dataset
from histozoom.inference.engines import EngineModel, engine_model
from histozoom.inference.predictor import Predictor
from histozoom.models.checkpoint import save_pretrained
from histozoom.models.registry import build_model, list_models

pytest.importorskip("onnxruntime")

TINY = {"encoder_name": "tu-test_resnet", "decoder_channels": 16, "cell_dropout": 0.0, "tissue_dropout": 0.0}
TOL = 1e-4


def _inputs(batch: int, seed: int = 0, size: int = 64):
    g = torch.Generator().manual_seed(seed)
    cell = torch.rand(batch, 3, size, size, generator=g)
    tissue = torch.rand(batch, 3, size, size, generator=g)
    win = torch.tensor([[0.375, 0.375, 0.25, 0.25], [0.1, 0.55, 0.25, 0.25], [0.6, 0.2, 0.25, 0.25]][:batch])
    mask = torch.randint(0, 3, (batch, size, size), generator=g)
    return cell, tissue, win, mask


def _args(model, cell, tissue, win, mask):
    if model.tissue is None and not model.config.leak_tissue_labels:
        return (cell,)
    return (cell, tissue, win, mask if model.config.leak_tissue_labels else None)


def _softmax_close(got: dict, ref: dict) -> float:
    assert set(got) == {k for k, v in ref.items() if isinstance(v, torch.Tensor)}
    worst = 0.0
    for k, v in got.items():
        assert v.shape == ref[k].shape, k
        worst = max(worst, float((v.softmax(1) - ref[k].softmax(1)).abs().max()))
    return worst


def _seeded(name: str, **kw):
    torch.manual_seed(0)
    model = build_model(name, **TINY, **kw).eval()
    for m in model.modules():  # BatchNorm statistics that are not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("name", list_models())
def test_onnxruntime_equals_torch_for_every_cell_tissue_variant(name):
    model = _seeded(name)
    eng = engine_model(model, "onnxruntime")
    assert isinstance(eng, EngineModel) and eng.config is model.config
    for batch, seed in ((2, 0), (3, 1)):  # the second batch size runs the same graph (dynamic batch)
        args = _args(model, *_inputs(batch, seed))
        with torch.inference_mode():
            ref = model(*args)
            got = eng(*args)
        assert _softmax_close(got, ref) < TOL
    assert eng.graphs == 1


def test_openvino_equals_torch_and_slide_entry_points():
    pytest.importorskip("openvino")
    model = _seeded("pred-to-inter-2")
    cell, tissue, win, _ = _inputs(2)
    for engine in ("openvino", "onnxruntime"):
        eng = engine_model(model, engine)
        with torch.inference_mode():
            assert _softmax_close(eng(cell, tissue, win), model(cell, tissue, win)) < TOL
            tp = model.tissue_probabilities(tissue)
            assert float((eng.tissue_probabilities(tissue) - tp).abs().max()) < TOL
            got = eng.cell_logits_given_tissue(cell, tp, win)
            ref = model.cell_logits_given_tissue(cell, tp, win)
            assert float((got.softmax(1) - ref.softmax(1)).abs().max()) < TOL
        assert eng.graphs == 3


def test_chrnet_engines_equal_torch():
    from histozoom.data.nuclei.records import CCRCC_CLASSES
    from histozoom.inference.nuclei_predictor import NucleiPredictor

    torch.manual_seed(0)
    model = build_model("chrnet", encoder_name="resnet18", decoder_channels=(32, 16, 16, 8, 8), lunet_channels=(8, 8, 8),
                        hrfe_channels=(8, 16, 16), hrfe_blocks=1).eval()
    x = torch.rand(2, 3, 64, 64)
    ref = NucleiPredictor(model, CCRCC_CLASSES).batch_maps(x)
    for engine in ("onnxruntime", "openvino"):
        pytest.importorskip(engine)
        got = NucleiPredictor(model, CCRCC_CLASSES, engine=engine).batch_maps(x)
        assert set(got) == set(ref) == {"class_prob", "foreground", "distance"}
        for k in ref:
            assert float((got[k] - ref[k]).abs().max()) < TOL, (engine, k)


def test_predictor_gives_identical_detections_with_onnxruntime(tmp_path):
    root = write_tiny_synthetic(tmp_path / "d")
    split = open_dataset(root).split("test")
    model = _seeded("pred-to-inter-2")
    ref = Predictor(model, batch_size=2).predict_split(split)
    got = Predictor(model, batch_size=2, engine="onnxruntime").predict_split(split)
    for k in ref.points:
        np.testing.assert_array_equal(got.points[k].cls, ref.points[k].cls)
        np.testing.assert_allclose(got.points[k].xy, ref.points[k].xy, atol=1e-6)
        np.testing.assert_allclose(got.points[k].prob, ref.points[k].prob, atol=TOL)


def test_engine_refuses_a_gpu_and_unknown_names():
    model = _seeded("cell-only")
    with pytest.raises(ValueError, match="CPU"):
        engine_model(model, "onnxruntime").to("cuda")
    with pytest.raises(ValueError, match="unknown engine"):
        engine_model(model, "tensorrt")
    assert engine_model(model, "torch") is model


def test_export_cli_writes_a_self_describing_graph(tmp_path, capsys):
    import onnxruntime as ort

    from histozoom.cli import main

    model = _seeded("feature-sharing")
    run = save_pretrained(model, tmp_path / "run", extra={"size": 64})
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(run), "--onnx", str(out), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["inputs"] == {"cell": ["batch", 3, 64, 64], "tissue": ["batch", 3, 64, 64], "windows": ["batch", 4]}
    assert d["outputs"] == ["cell_logits", "tissue_logits"] and d["max_abs_prob_difference"] < TOL
    s = ort.InferenceSession(str(out))
    meta = s.get_modelmeta().custom_metadata_map
    assert json.loads(meta["histozoom.config"])["name"] == "feature-sharing"
    cell, tissue, win, _ = _inputs(3)
    got = s.run(None, {"cell": cell.numpy(), "tissue": tissue.numpy(), "windows": win.numpy()})
    with torch.inference_mode():
        ref = model(cell, tissue, win)
    assert float(np.abs(torch.from_numpy(got[0]).softmax(1).numpy() - ref["cell_logits"].softmax(1).numpy()).max()) < TOL
    # a bad destination is refused before anything is exported, naming it
    assert main(["export", "--checkpoint", str(run), "--onnx", str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err
    # a nuclei model has one entry point
    chr_run = save_pretrained(build_model("chrnet", encoder_name="resnet18"), tmp_path / "chr")
    assert main(["export", "--checkpoint", str(chr_run), "--onnx", str(out), "--entry", "tissue_probabilities"]) == 2
    assert "only the forward entry point" in capsys.readouterr().err


def test_auto_engine_is_the_cpu_default_and_torch_elsewhere():
    from histozoom.errors import InputError
    from histozoom.inference.engines import CPU_DEFAULT, resolve_engine

    assert resolve_engine("auto", "cpu") == CPU_DEFAULT != "torch"
    assert resolve_engine("auto", "cuda:0") == "torch"
    assert resolve_engine("onnxruntime", "cpu") == "onnxruntime"
    with pytest.raises(InputError, match="runs on the CPU"):
        resolve_engine("openvino", "cuda")
