"""Training recipes: the LR range test on an analytic problem, the default schedule, the
paper's schedule exactly, extending a finished run, and what the run config records."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from conftest import write_tiny_synthetic
from histozoom.cli import main
from histozoom.training.cell_tissue_trainer import train
from histozoom.training.config import TRAIN_CONFIG_FILE, TrainConfig
from histozoom.training.lr_finder import lr_range_test
from histozoom.training.recipe import FINAL_FRACTION, TAIL_START, auto_bn_batches, default_lr_factor

TINY = {"encoder_name": "tu-test_resnet", "decoder_channels": 16}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_synthetic(tmp_path_factory.mktemp("d") / "data", cell_mpp=0.4, tissue_mpp=1.6, seed=3)


def cfg(data, **kw) -> TrainConfig:
    base = dict(data=str(data), model="pred-to-inter-2", model_overrides=dict(TINY), cell_dropout=0.0,
                tissue_dropout=0.0, epochs=3, batch_size=2, progress=False, tensorboard=False, test_split=None)
    return TrainConfig(**(base | kw))


def lrs(run, key="lr_cell"):
    with open(run / "log.csv", newline="") as fh:
        return [float(r[key]) for r in csv.DictReader(fh)]


# ---------------------------------------------------------------------- the range test
@pytest.mark.parametrize("curvature", [0.5, 4.0, 50.0, 1000.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_range_test_picks_a_stable_lr_for_a_noisy_quadratic(curvature, seed):
    """SGD on f(w) = L/2 |w - xi|^2 with fresh noise xi ~ N(0, I) per step (a minibatch
    stand-in): the iteration w <- (1 - lr L) w + lr L xi is stable for lr < 2/L, and
    diverges above. The smoothed minimum must lie below 2/L and the suggestion well inside
    the stable range, at most 1/L, and not uselessly small (at least 0.01/L)."""
    rng = np.random.default_rng(seed)
    w = np.full(4, 3.0)

    def step(lr):
        nonlocal w
        xi = rng.normal(size=4)
        loss = 0.5 * curvature * float((w - xi) @ (w - xi))
        w = w - lr * curvature * (w - xi)
        return loss

    res = lr_range_test(step, steps=200, lr_min=1e-6, lr_max=10.0, clip_min=0, clip_max=1e9)
    assert res.minimum_lr < 2.0 / curvature, res.summary()
    assert 0.01 / curvature <= res.suggestion <= 1.0 / curvature, res.summary()
    assert res.stopped == "loss diverged"


def test_range_test_with_adam_on_least_squares_gives_a_working_lr():
    """The suggestion, used for training, must reduce a regression loss by 100x in 300 steps."""
    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = x @ torch.randn(8, 1)
    model = torch.nn.Linear(8, 1)
    opt = torch.optim.Adam(model.parameters())

    def step(lr):
        for g in opt.param_groups:
            g["lr"] = lr
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.detach())

    res = lr_range_test(step, steps=100)
    assert 1e-3 <= res.suggestion <= 1e-1
    model.reset_parameters()
    opt = torch.optim.Adam(model.parameters(), lr=res.suggestion)
    with torch.no_grad():
        start = float(torch.nn.functional.mse_loss(model(x), y))
    for _ in range(300):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < start / 100


# ---------------------------------------------------------------------- schedules
def test_default_schedule_warms_up_then_cosines_and_extensions_restart_lower():
    f = [default_lr_factor(s, 10, 20, (5,), 0.05) for s in range(250)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # 10 warm-up steps of 200
    assert max(f[:200]) == pytest.approx(1.0) and f[199] == pytest.approx(FINAL_FRACTION)
    assert all(a >= b for a, b in zip(f[9:199], f[10:200], strict=True))  # decreasing after warm-up
    assert f[200] == pytest.approx(TAIL_START) and f[249] == pytest.approx(FINAL_FRACTION)
    assert auto_bn_batches("default", 15) == 15 and auto_bn_batches("default", 500) == 0
    assert auto_bn_batches("paper", 15) == 0


def test_paper_recipe_reproduces_the_challenge_schedule_per_epoch(data, tmp_path):
    c = cfg(data, recipe="paper", epochs=5, milestones=(0.6, 0.8), max_train_batches=1)
    train(c, tmp_path / "run")
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    ref = torch.optim.lr_scheduler.MultiStepLR(opt, [3, 4], 0.3)
    expected = []
    for _ in range(5):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    assert lrs(tmp_path / "run") == pytest.approx(expected)  # 1e-4 x3, 3e-5, 9e-6
    saved = json.loads((tmp_path / "run" / TRAIN_CONFIG_FILE).read_text())
    assert saved["recipe"] == "paper"
    assert saved["resolved"]["lr"] == 1e-4 and saved["resolved"]["lr_source"] == "paper"
    assert saved["resolved"]["loss"] == "dice" and saved["resolved"]["bn_recalibration"] == 0
    assert saved["resolved"]["schedule"]["milestones"] == [3, 4]


def test_default_recipe_finds_its_lr_records_it_and_trains(data, tmp_path):
    run = tmp_path / "run"
    summary = train(cfg(data, lr_finder_steps=20), run)
    saved = json.loads((run / TRAIN_CONFIG_FILE).read_text())
    res = saved["resolved"]
    assert saved["recipe"] == "default" and saved["lr"] is None and res["lr_source"] == "lr_finder"
    assert 1e-5 <= res["lr"] <= 1e-2 and len(res["lr_finder"]["curve"]) >= 2
    assert res["loss"] == "dice+ce" and res["bn_recalibration"] == res["steps_per_epoch"] == 2
    assert res["schedule"]["kind"] == "warmup+cosine"
    first = lrs(run)[0]  # the first step's LR: the warm-up's start
    assert first == pytest.approx(res["lr"] / res["schedule"]["warmup_steps"])
    assert summary["finished"] and np.isfinite(summary["val"]["mF1"] if summary["val"]["mF1"] is not None else 0.0)


def test_range_test_leaves_the_run_as_without_it(data, tmp_path):
    """Weights, BN statistics and RNG are restored: a run whose LR was found equals a run
    given that LR."""
    a = train(cfg(data, lr_finder_steps=12, epochs=2), tmp_path / "a")
    lr = json.loads((tmp_path / "a" / TRAIN_CONFIG_FILE).read_text())["resolved"]["lr"]
    b = train(cfg(data, lr=lr, epochs=2), tmp_path / "b")
    assert lrs(tmp_path / "a") == lrs(tmp_path / "b")
    assert lrs(tmp_path / "a", "train_loss") == lrs(tmp_path / "b", "train_loss")
    assert a["val"] == b["val"]


# ---------------------------------------------------------------------- extending a run
def test_extend_continues_a_finished_run_with_a_fresh_tail(data, tmp_path, capsys):
    run = tmp_path / "run"
    base = ["train", "--data", str(data), "--model", "pred-to-inter-2", "--out", str(run), "--epochs", "2",
            "--batch-size", "2", "--lr", "1e-3", "--no-progress", "--no-tensorboard", "--test-split", "none",
            "--model-arg", "encoder_name=tu-test_resnet", "--model-arg", "decoder_channels=16", "--max-train-batches", "2"]
    assert main(base) == 0
    assert main(base + ["--resume", "--epochs", "4"]) == 2  # the schedule's length cannot change
    assert "--extend" in capsys.readouterr().err
    assert main(base + ["--extend", "2"]) == 2  # --extend needs --resume
    assert main(base + ["--resume", "--extend", "2"]) == 0
    log = lrs(run)
    assert len(log) == 4
    assert log[2] == pytest.approx(1e-3 * TAIL_START)  # the tail starts at 10 % of the LR
    saved = json.loads((run / TRAIN_CONFIG_FILE).read_text())
    assert saved["epochs"] == 2 and saved["extend"] == [2]
    done = json.loads((run / "done.json").read_text())
    assert done["epochs_done"] == 4 and done["epochs"] == 4
    assert main(base + ["--resume", "--extend", "2"]) == 0 and len(lrs(run)) == 6  # and again


def test_configs_saved_before_recipes_resume_as_paper(tmp_path):
    old = cfg("/x").to_dict()
    for k in ("recipe", "extend", "warmup", "lr_finder_steps", "resolved", "loss"):
        old.pop(k)
    old["lr"] = 1e-4
    (tmp_path / "c.json").write_text(json.dumps(old))
    loaded = TrainConfig.load(tmp_path / "c.json")
    assert loaded.recipe == "paper" and loaded.lr == 1e-4


def test_the_recipe_sets_the_dropout_unless_the_run_does():
    from histozoom.models.registry import get_config
    from histozoom.training.config import TrainConfig

    def drops(**kw):
        c = get_config("pred-to-inter-2", **TrainConfig(data="d", model="pred-to-inter-2", **kw).model_kwargs(2, 2))
        return c.cell_dropout, c.tissue_dropout

    assert drops() == (0.0, 0.0)  # default recipe: no dropout in short runs
    assert drops(recipe="paper") == (0.1, 0.1)  # the paper's
    assert drops(cell_dropout=0.3) == (0.3, 0.0)
    assert drops(recipe="paper", tissue_dropout=0.5) == (0.1, 0.5)
