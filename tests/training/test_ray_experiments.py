"""An experiment's runs as Ray tasks on a local Ray (2 CPUs): the same results as the
sequential runner for the same seeds."""

from __future__ import annotations

import pytest

from conftest import write_tiny_synthetic
from histozoom.training.config import TrainConfig
from histozoom.training.experiment import Experiment, ExperimentConfig

ray = pytest.importorskip("ray")


def test_a_tiny_grid_on_ray_equals_the_sequential_run(tmp_path):
    from histozoom.training.ray_runs import RayTraining, ray_parallel

    data = write_tiny_synthetic(tmp_path / "d", cell_mpp=0.4, tissue_mpp=1.6, seed=3)
    base = TrainConfig(data=str(data), model="cell-only", model_overrides={"encoder_name": "tu-test_resnet",
                                                                         "decoder_channels": 16},
                       epochs=1, size=32, batch_size=2, max_train_batches=2, recipe="paper", progress=False,
                       tensorboard=False)
    cfg = ExperimentConfig(base=base, models=["cell-only"], seeds=2, lr_grid=[1e-3, 3e-3], cell_dropout_grid=[0.0],
                           cell_lr_ratios=[1.0])
    seq = Experiment(cfg, tmp_path / "seq").run_all(stages=("tune", "seeds", "report"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        par = Experiment(cfg, tmp_path / "ray", parallel=ray_parallel(RayTraining(cpus_per_run=1))).run_all(
            stages=("tune", "seeds", "report"))
    finally:
        ray.shutdown()
    for stage in ("tune", "models"):
        for model in ("cell-only",):
            a, b = seq[stage][model], par[stage][model]
            if stage == "tune":
                assert [r["val_mF1"] for r in a["grid"]] == [r["val_mF1"] for r in b["grid"]]
                assert a["selected"] == b["selected"]
            else:
                strip = lambda runs: [{k: v for k, v in r.items() if k != "run"} for r in runs]  # noqa: E731
                assert strip(a["runs"]) == strip(b["runs"]) and len(a["runs"]) == 2
    assert seq["tables"] == par["tables"]
