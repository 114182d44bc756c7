"""The README's main job, at a tiny size: every step runs, re-runs reuse, the table is
built, and the tissue view reaches the cell predictions of the context model (and only
of it) through the whole demo pipeline: dataset on disk, training, checkpoint, predictor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from histozoom.data.open import open_dataset
from histozoom.demo import DemoConfig, ordering_check, run_demo
from histozoom.inference.predictor import Predictor


def test_tiny_demo_runs_and_reuses(tmp_path):
    out = tmp_path / "demo"
    cfg = DemoConfig.quick(out, tmp_path / "no_shared_data", size=64, n_train=4, n_val=2, n_test=3, epochs=1,
                           model_overrides={"encoder_name": "resnet18", "decoder_channels": 16},
                           train={"batch_size": 2, "lr": 1e-3}, bootstrap=50, progress=False, slide_mm=0.15, jobs=1)
    lines: list[str] = []
    report = run_demo(cfg, lines.append)
    text = "\n".join(lines)
    assert [m.name for m in report.methods] == list(cfg.models)
    for model in cfg.models:
        assert (out / "runs" / model / "done.json").is_file()
    assert any((out / "table5").iterdir())
    assert "Table 5 analogue" in text and "skipped: real challenge files not found" in text
    ok, msg = ordering_check(report)
    assert ok == ("ordering holds" in msg) and "pred-to-inter-2 - cell-only" in msg
    assert report.radius == 3.0 / cfg.cell_mpp  # 3 µm at the dataset's own mpp, not the challenge's 0.2
    assert "Whole slide:" in text and "slide mF1" in text  # step 5: the trained Pred-to-inter-2 over a synthetic slide
    summary = json.loads((out / "slide" / "predictions" / "synthetic_slide" / "summary.json").read_text())
    assert summary["status"] == "done" and summary["context"] == "shared" and summary["mpp"] == cfg.cell_mpp
    assert (out / "slide" / "predictions" / "synthetic_slide" / "cells.geojson").is_file()
    lines.clear()
    run_demo(cfg, lines.append)  # second run: everything reused
    assert sum("reusing finished run" in line for line in lines) == len(cfg.models)
    assert any("reusing synthetic slide" in line for line in lines)
    _check_context_reaches_cell_branch(out, cfg.models)


def _check_context_reaches_cell_branch(out: Path, models) -> None:
    """Swap the tissue views of two test pairs: the cell probabilities of Pred-to-inter-2
    and of the leaking model must change, those of Cell-only must not."""
    test = open_dataset(out / "synth_context").split("test")
    a, b = test[0], test[1]
    swapped = a.replace(tissue_image=b.tissue_image, tissue_mask=b.tissue_mask)
    for model in models:
        pred = Predictor.from_checkpoint(out / "runs" / model)
        own, other = pred.probabilities([a, swapped])
        change = float(np.abs(own - other).max())
        if model == "cell-only":
            assert change == 0.0, model
        else:
            assert change > 1e-4, f"{model}: the tissue view does not reach the cell output ({change})"


def test_long_config_is_closer_to_the_paper():
    cfg = DemoConfig.long(Path("x"), Path("y"))
    assert cfg.size == 256 and cfg.model_overrides == {} and cfg.epochs > DemoConfig.quick(Path("x"), Path("y")).epochs


def test_off_gland_score_leaves_out_only_cells_near_glands(tmp_path):
    """Perfect predictions plus false ones on gland pixels: the full slide score drops,
    the off-gland score stays 1."""
    import numpy as np
    from PIL import Image

    from histozoom.data.synthetic_slide import SlideSynthConfig, slide_outputs, write_synthetic_slide
    from histozoom.demo import off_gland_mf1
    from histozoom.evaluation.scoring import evaluate

    out = tmp_path / "s.tiff"
    truth = write_synthetic_slide(out, SlideSynthConfig(width_mm=0.3, height_mm=0.3, mpp=0.4, seed=2))
    paths = slide_outputs(out)
    cells = np.loadtxt(paths["cells"], delimiter=",", skiprows=1, dtype=np.int64)
    glands = np.asarray(Image.open(paths["glands"])) > 0
    gr, gc = np.nonzero(glands)
    assert len(gr) > 50
    pick = np.random.default_rng(0).choice(len(gr), 40, replace=False)
    fake = np.column_stack([gc[pick] * 4 + 2, gr[pick] * 4 + 2, np.full(40, 2), np.full(40, 2)])
    pred = tmp_path / "pred.csv"
    np.savetxt(pred, np.vstack([cells, fake]), fmt="%d", delimiter=",", header="x,y,class,tissue", comments="")
    full = evaluate({"p": str(pred)}, str(paths["cells"]), mpp=0.4, bootstrap=0).methods[0].scores().mf1
    assert full < 1.0
    assert off_gland_mf1(pred, paths["cells"], paths["glands"], truth) == 1.0
