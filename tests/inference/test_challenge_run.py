"""The Grand-Challenge container job, run exactly as the Dockerfile's entry point runs it."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from conftest import REPO, write_tiny_synthetic
from histozoom.cli import main
from histozoom.data.challenge_json import read_challenge_json
from histozoom.training.cell_tissue_trainer import train
from histozoom.training.config import TrainConfig

TINY = {"encoder_name": "tu-test_resnet", "decoder_channels": 16}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("challenge")
    data = write_tiny_synthetic(root / "data", cell_mpp=0.4, tissue_mpp=1.6, seed=2)
    cfg = TrainConfig(data=str(data), model="pred-to-inter-2", model_overrides=dict(TINY), cell_dropout=0.0,
                      tissue_dropout=0.0, epochs=1, batch_size=2, lr=1e-3, recipe="paper", progress=False,
                      tensorboard=False, test_split=None, size=64)
    train(cfg, root / "run")
    return root / "run" / "best.ckpt"


def entrypoint_args(input_dir, output_dir, model) -> list[str]:
    """The Dockerfile's ENTRYPOINT with its /input, /output and /opt/model mapped here."""
    line = next(ln for ln in (REPO / "Dockerfile").read_text().splitlines() if ln.startswith("ENTRYPOINT"))
    argv = json.loads(line[len("ENTRYPOINT"):])
    assert argv[:3] == ["histozoom", "challenge", "run"]
    mapping = {"/input": str(input_dir), "/output": str(output_dir), "/opt/model": str(model)}
    return [mapping.get(a, a) for a in argv[1:]]


def test_sample_004_gives_a_strict_valid_output(sample_004, model_dir, tmp_path):
    out = tmp_path / "output"
    assert main(entrypoint_args(sample_004, out, model_dir)) == 0
    doc = json.loads((out / "cell_classification.json").read_text())
    assert doc["type"] == "Multiple points" and doc["num_images"] == 1
    read_challenge_json(out / "cell_classification.json", strict=True)
    assert all(p["name"] == "image_0" and 0 <= p["point"][0] < 1024 and p["point"][2] in (1, 2) for p in doc["points"])
    # scored against the pair's real cells with the official checker's rules
    rows = list(csv.reader((sample_004 / "cell_gt_004.csv").open()))
    gt = {"type": "Multiple points", "num_images": 1, "version": {"major": 1, "minor": 0},
          "points": [{"name": "image_0", "point": [int(x), int(y), int(c)], "probability": 1.0} for x, y, c in rows]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    assert main(["evaluate", "--pred", str(out / "cell_classification.json"), "--gt", str(tmp_path / "gt.json"),
                 "--strict", "--bootstrap", "0", "--json"]) == 0


def test_uuid_named_stacks_and_bad_inputs(sample_004, model_dir, tmp_path, capsys):
    inp = tmp_path / "input"
    for view in ("cell_patches", "tissue_patches"):
        (inp / "images" / view).mkdir(parents=True)
        shutil.copy(sample_004 / "images" / view / "000.tif", inp / "images" / view / "1b9d6bcd-bbfd-4b2d.tif")
    shutil.copy(sample_004 / "metadata.json", inp / "metadata.json")
    assert main(["challenge", "run", "--input", str(inp), "--output", str(tmp_path / "o"), "--checkpoint",
                 str(model_dir), "--tta", "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["pairs"] == 1 and summary["tta"]
    shutil.copy(sample_004 / "images" / "cell_patches" / "000.tif", inp / "images" / "cell_patches" / "extra.tif")
    assert main(["challenge", "run", "--input", str(inp), "--output", str(tmp_path / "o2"), "--checkpoint",
                 str(model_dir)]) == 2
    assert "exactly one stacked TIFF" in capsys.readouterr().err
    assert main(["challenge", "run", "--input", str(tmp_path), "--output", str(tmp_path / "o3"), "--checkpoint",
                 str(model_dir)]) == 2
    assert "not a Grand-Challenge input folder" in capsys.readouterr().err
