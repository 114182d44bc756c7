"""Slides on a local Ray (2 CPUs): the same outputs as the single-process run, for cells
(with the shared tissue map read by the workers) and for nuclei with a tissue model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from histozoom.cli import main
from histozoom.data.base import DatasetSpec
from histozoom.data.nuclei.instance_table import read_table
from histozoom.models.checkpoint import save_pretrained
from histozoom.models.registry import build_model
from histozoom.pair import OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES
from histozoom.slides.outputs import read_cells

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _cells_ckpt(tmp_path):
    torch.manual_seed(0)
    extra = {"spec": DatasetSpec(OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES).to_dict(), "size": 64,
             "views": {"cell": {"size": 64, "mpp": 0.25}, "tissue": {"size": 64, "mpp": 1.0}},
             "peak": {"min_distance_um": 2.0, "threshold": 0.3}}
    return save_pretrained(build_model("pred-to-inter-2", encoder_name="resnet18", decoder_channels=16),
                           tmp_path / "p2i2", extra=extra)


def _nuclei_ckpt(tmp_path):
    import dataclasses

    from histozoom.data.nuclei.records import CCRCC
    from histozoom.inference.watershed import WatershedConfig

    torch.manual_seed(0)
    model = build_model("chrnet", n_classes=4, encoder_name="resnet18", hrfe_channels=(8, 16, 32),
                        decoder_channels=(64, 32, 16, 16, 8), lunet_channels=(8, 16, 32),
                        task_groups=tuple(m.groups for m in CCRCC.merges[:2]))
    extra = {"classes": CCRCC.classes.to_dict(), "mpp": 0.25, "size": 256, "watershed": dataclasses.asdict(WatershedConfig())}
    return save_pretrained(model, tmp_path / "chrnet", extra=extra)


def test_ray_slides_equal_the_single_process_run(tmp_path, local_ray, capsys, monkeypatch):
    from histozoom.slides import ray_run

    ray_runs = []
    real = ray_run.run_on_ray
    monkeypatch.setattr(ray_run, "run_on_ray", lambda *a: ray_runs.append(1) or real(*a))  # the --ray runs go through Ray
    slides = tmp_path / "slides"
    for i, seed in enumerate((1, 2)):
        assert main(["nuclei", "synth", "slide", str(slides / f"s{i}.tiff"), "--width-mm", "0.15", "--height-mm", "0.12",
                     "--seed", str(seed)]) == 0
    capsys.readouterr()
    for extra in (slides / "s0.nuclei.parquet", slides / "s1.nuclei.parquet"):  # keep only the slides in the folder
        extra.rename(tmp_path / extra.name)
    for p in slides.iterdir():
        if p.suffix != ".tiff":
            p.unlink()
    cells, nuclei = _cells_ckpt(tmp_path), _nuclei_ckpt(tmp_path)
    runs = {
        "cells": ["slide", "predict", "--checkpoint", str(cells), "--batch-size", "4"],
        "nuclei": ["nuclei", "slide", "predict", "--checkpoint", str(nuclei), "--tissue-checkpoint", str(cells),
                   "--tile", "256", "--margin", "32", "--batch-size", "2"],
    }
    for kind, cmd in runs.items():
        for mode in ("local", "ray"):
            flags = ["--ray"] if mode == "ray" else []
            assert main([*cmd, "--out", str(tmp_path / kind / mode), str(slides), "--engine", "torch", "--no-images",
                         "--no-progress", "--json", *flags]) == 0
            d = json.loads(capsys.readouterr().out)
            assert [s["status"] for s in d["slides"]] == ["done", "done"]
        for s in ("s0", "s1"):
            a, b = (tmp_path / kind / m / s for m in ("local", "ray"))
            if kind == "cells":
                x, y = read_cells(a / "cells.parquet"), read_cells(b / "cells.parquet")
                cols = ("x", "y", "class_id", "probability", "tissue_class")
            else:
                x, y = read_table(a / "nuclei.parquet"), read_table(b / "nuclei.parquet")
                cols = ("x", "y", "class_id", "tissue_class", "bbox_x0", "bbox_y0", "area_px")
                assert list(x["mask"]) == list(y["mask"])
            assert len(x["x"]) > 0
            for c in cols:
                np.testing.assert_array_equal(x[c], y[c], err_msg=f"{kind} {s} {c}")
            sa, sb = (json.loads((f / "summary.json").read_text()) for f in (a, b))
            drop = ("seconds", "model_seconds", "finished")
            assert {k: v for k, v in sa.items() if k not in drop} == {k: v for k, v in sb.items() if k not in drop}
        assert not any((tmp_path / kind / "ray" / s / ".work").exists() for s in ("s0", "s1"))
    assert len(ray_runs) == 2
