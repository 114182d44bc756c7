"""The README's main job, at a tiny size: every step runs, re-runs reuse, the table is built."""

from __future__ import annotations

from pathlib import Path

from histozoom.demo import DemoConfig, ordering_check, run_demo


def test_tiny_demo_runs_and_reuses(tmp_path):
    out = tmp_path / "demo"
    cfg = DemoConfig.quick(out, tmp_path / "no_shared_data", size=64, n_train=4, n_val=2, n_test=3, epochs=1,
                           model_overrides={"encoder_name": "resnet18", "decoder_channels": 16},
                           train={"batch_size": 2, "lr": 1e-3}, bootstrap=50, progress=False)
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
    lines.clear()
    run_demo(cfg, lines.append)  # second run: everything reused
    assert sum("reusing finished run" in line for line in lines) == len(cfg.models)


def test_long_config_is_closer_to_the_paper():
    cfg = DemoConfig.long(Path("x"), Path("y"))
    assert cfg.size == 256 and cfg.model_overrides == {} and cfg.epochs > DemoConfig.quick(Path("x"), Path("y")).epochs
