"""Training: resume is exact, a tiny model learns, ablation switches, LR schedule, experiments."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from conftest import write_tiny_synthetic
from histozoom.errors import InputError
from histozoom.training.cell_tissue_trainer import Trainer, param_groups, train
from histozoom.training.config import TrainConfig
from histozoom.training.experiment import (
    Experiment,
    ExperimentConfig,
    format_ci,
    mean_ci,
)
from histozoom.training.loop import derive_seed

TINY = {"encoder_name": "tu-test_resnet", "decoder_channels": 16}
"""A ~0.4 M parameter branch (timm's test ResNet); its blocks take no dropout."""


@pytest.fixture(scope="module")
def data64(tmp_path_factory):
    """The brief's tiny dataset, at 0.4 µm/px so that each 64 px image holds a few cells."""
    root = tmp_path_factory.mktemp("data") / "simple64"
    return write_tiny_synthetic(root, cell_mpp=0.4, tissue_mpp=1.6, seed=3)


def tiny_cfg(data, **kw) -> TrainConfig:
    base = dict(data=str(data), model="pred-to-inter-2", model_overrides=dict(TINY), cell_dropout=0.0,
                tissue_dropout=0.0, epochs=4, batch_size=2, lr=1e-3, recipe="paper", progress=False, tensorboard=False)
    base.update(kw)
    return TrainConfig(**base)


def read_log(run):
    with open(run / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


# ---------------------------------------------------------------------- config
def test_config_roundtrip_and_validation(tmp_path):
    cfg = tiny_cfg("/x", size=32, no_large_fov=True, milestones=(0.5, 0.75))
    cfg.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == cfg
    assert cfg.milestone_epochs() == [2, 3]
    assert TrainConfig(epochs=300).milestone_epochs() == [180, 240]
    with pytest.raises(ValueError, match="multiple of 16"):
        TrainConfig(size=40)
    # the multiple is the model's: 48 suits DeepLabV3+ (16) but not the U-Net (32)
    assert TrainConfig(model="cell-only", size=48).size == 48
    msg = r"size must be a multiple of 32 \(the input size multiple of model 'unet-cell-only'\), got 48"
    with pytest.raises(ValueError, match=msg):
        TrainConfig(model="unet-cell-only", size=48)
    with pytest.raises(ValueError, match="multiple of 32"):
        TrainConfig(model="cell-only", model_overrides={"architecture": "unet"}, size=48)
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({"nope": 1})
    kw = cfg.model_kwargs(2, 2)
    assert kw["tissue_input"] == "cell" and kw["cell_dropout"] == 0.0 and kw["encoder_name"] == "tu-test_resnet"
    assert TrainConfig(no_tissue_loss=True).model_kwargs()["tissue_supervised"] is False


def test_ablation_switches_reach_model_and_loss(data64, tmp_path):
    t = Trainer(tiny_cfg(data64, no_large_fov=True), tmp_path / "a")
    assert t.model_config.tissue_input == "cell" and t.loss_fn.tissue_key == "tissue_target_cell"
    t = Trainer(tiny_cfg(data64, no_tissue_loss=True), tmp_path / "b")
    assert t.model_config.tissue_supervised is False and t.loss_fn.tissue_weight == 0
    t = Trainer(tiny_cfg(data64, model="tissue-label-leaking"), tmp_path / "c")
    assert t.mask_key == "tissue_target" and t.loss_fn.tissue_weight == 0
    t = Trainer(tiny_cfg(data64, model="cell-only", cell_dropout=None, tissue_dropout=None,
                         model_overrides={"encoder_name": "resnet18", "decoder_channels": 16}, cell_lr_ratio=0.5),
                tmp_path / "d")
    assert t.model_config.cell_dropout == 0.1  # the variant's default when not given


def test_trainer_asks_the_model_for_the_size_multiple(data64, tmp_path):
    cfg = tiny_cfg(data64, model="unet-cell-only", size=64)
    cfg.size = 48  # past the config's own check: the trainer asks the resolved model config again
    with pytest.raises(InputError, match="size must be a multiple of 32 .*'unet-cell-only'.*got 48"):
        Trainer(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_param_groups_split_branches():
    from histozoom.models.registry import build_model

    model = build_model("feature-sharing", sharing=("both", "none", "t2c"), cell_dropout=0.0, tissue_dropout=0.0, **TINY)
    groups = {g["name"]: g for g in param_groups(model, 1e-3, 0.5, 1e-5)}
    assert groups["cell"]["lr"] == pytest.approx(5e-4) and groups["tissue"]["lr"] == pytest.approx(1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].startswith(("cell.", "t2c.")) for p in groups["cell"]["params"])
    assert all(names[id(p)].startswith(("tissue.", "c2t.")) for p in groups["tissue"]["params"])
    assert sum(len(g["params"]) for g in groups.values()) == len(names)
    assert derive_seed(1, 2) == derive_seed(1, 2) != derive_seed(1, 3)


# ---------------------------------------------------------------------- runs
def test_resume_reproduces_uninterrupted_run(data64, tmp_path):
    cfg = tiny_cfg(data64, epochs=4, milestones=(0.5,), test_split=None, bn_recalibration=1)
    full = train(cfg, tmp_path / "full")
    part = train(cfg.replace(stop_after=2), tmp_path / "part")
    assert part["finished"] is False and part["epochs_done"] == 2
    assert not (tmp_path / "part" / "done.json").exists()
    resumed = train(cfg, tmp_path / "part", resume=True)
    assert resumed["finished"] and resumed["epochs_done"] == 4
    for sub in ("last", "best.ckpt"):
        a = (tmp_path / "full" / sub / "model.safetensors").read_bytes()
        b = (tmp_path / "part" / sub / "model.safetensors").read_bytes()
        assert a == b, f"{sub} weights differ after resume"
    la, lb = read_log(tmp_path / "full"), read_log(tmp_path / "part")
    drop = ("train_time_s", "val_time_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in la] == \
           [{k: v for k, v in r.items() if k not in drop} for r in lb]
    # the LR schedule: x0.3 after half of the epochs
    assert [float(r["lr_cell"]) for r in la] == pytest.approx([1e-3, 1e-3, 3e-4, 3e-4])
    assert full["best_epoch"] == resumed["best_epoch"]
    # a finished run is not trained again; a new run cannot overwrite an old one
    assert train(cfg, tmp_path / "full", resume=True)["epochs_done"] == 4
    with pytest.raises(InputError, match="resume"):
        train(cfg, tmp_path / "full")
    with pytest.raises(InputError, match="different settings"):
        train(cfg.replace(lr=5e-4), tmp_path / "part", resume=True)


def test_tiny_model_overfits_tiny_dataset(data64, tmp_path):
    """120 steps of a 0.4 M parameter cell-only model reach mF1 ~1 on its 4 training pairs (~10 s)."""
    cfg = tiny_cfg(data64, model="cell-only", epochs=60, lr=3e-3, batch_size=2, augment=False,
                   val_split="train", test_split=None, milestones=(0.9,), peak_threshold=0.3)
    summary = train(cfg, tmp_path / "learn")
    scores = [float(r["val_mF1"]) for r in read_log(tmp_path / "learn")]
    assert scores[0] < 0.3 and summary["val"]["mF1"] > 0.9, scores
    assert summary["val"]["mF1"] == max(scores)
    assert summary["best_epoch"] == 1 + int(np.argmax(scores))  # the first best epoch is kept


def test_run_writes_checkpoint_log_and_test_scores(data64, tmp_path):
    cfg = tiny_cfg(data64, epochs=1, size=32)
    s = train(cfg, tmp_path / "r")
    run = tmp_path / "r"
    for f in ("train_config.json", "log.csv", "done.json", "test_predictions.json", "best.ckpt/config.json",
              "best.ckpt/model.safetensors", "last/state.json", "last/state.safetensors"):
        assert (run / f).is_file(), f
    meta = json.loads((run / "best.ckpt" / "config.json").read_text())
    assert meta["extra"]["size"] == 32 and meta["extra"]["spec"]["cell_classes"]["ids"] == [1, 2]
    assert set(s["test"]) >= {"mF1", "f1", "organs", "organ_images", "counts"}
    assert sum(s["test"]["organ_images"].values()) == 2
    row = read_log(run)[0]
    assert {"epoch", "lr_cell", "lr_tissue", "train_loss", "train_cell_dice_loss", "train_tissue_dice_loss",
            "val_mF1", "val_f1_BC", "val_f1_TC", "train_time_s"} <= set(row)


# ---------------------------------------------------------------------- experiments
def test_mean_ci_matches_scipy():
    from scipy import stats

    v = [0.61, 0.66, 0.64, 0.70, 0.59]
    ci = mean_ci(v)
    lo, hi = stats.t.interval(0.95, len(v) - 1, loc=np.mean(v), scale=stats.sem(v))
    assert ci["low"] == pytest.approx(lo) and ci["high"] == pytest.approx(hi)
    assert ci["half_width"] == pytest.approx(stats.t.ppf(0.975, 4) * np.std(v, ddof=1) / math.sqrt(5))
    assert mean_ci([0.5])["half_width"] is None and mean_ci([])["mean"] is None
    assert format_ci(ci) == f"{np.mean(v) * 100:.2f}±{ci['half_width'] * 100:.2f}"
    assert mean_ci(v, level=0.9)["half_width"] < ci["half_width"]


def _fake_train(calls: list, cfg, run_dir, resume):
    """A trainer stand-in: val prefers lr 1e-3 and dropout 0.3; test adds noise per seed;
    pred-to-inter-2 is better; the search prefers exchanges in both directions."""
    calls.append(run_dir)
    val = 0.6 + (0.05 if cfg.lr == 1e-3 else 0) + (0.02 if cfg.cell_dropout == 0.3 else 0) \
        + (0.1 if cfg.model == "pred-to-inter-2" else 0) + 0.01 * cfg.seed
    if cfg.model == "feature-sharing":
        val = 0.5 + 0.1 * cfg.model_overrides["sharing"].count("both") + 0.001 * cfg.epochs
    test = val - 0.03 + 0.005 * cfg.seed
    summary = {"finished": True, "best_epoch": 1, "val": {"mF1": val},
               "test": {"mF1": test, "organs": {"kidney": test + 0.01, "bladder": test - 0.01},
                        "organ_images": {"kidney": 3, "bladder": 2}}}
    run_dir.mkdir(parents=True)
    cfg.save(run_dir / "train_config.json")
    (run_dir / "done.json").write_text(json.dumps(summary))
    return summary


FAKE_EXPERIMENT = ExperimentConfig(base=TrainConfig(data="D", epochs=27, progress=False), models=["cell-only", "pred-to-inter-2"],
                                   seeds=3, lr_grid=[1e-4, 1e-3], cell_dropout_grid=[0.1, 0.3], cell_lr_ratios=[1.0],
                                   search="halving", search_budget=9, search_eta=3)


def test_experiment_aggregation_tables_and_resume(tmp_path):
    """The experiment logic with a fake trainer: grid selection on val, seeds, CIs,
    tables, skipping finished runs, the halving search's budget."""
    calls = []

    def fake_runner(cfg, run_dir, resume):
        return _fake_train(calls, cfg, run_dir, resume)

    cfg = FAKE_EXPERIMENT
    base = cfg.base
    exp = Experiment(cfg, tmp_path / "exp", runner=fake_runner)
    res = exp.run_all()
    assert res["tune"]["cell-only"]["selected"] == {"lr": 1e-3, "cell_lr_ratio": 1.0, "cell_dropout": 0.3}
    m = res["models"]["pred-to-inter-2"]
    assert [r["seed"] for r in m["runs"]] == [0, 1, 2]
    tests = [r["test_mF1"] for r in m["runs"]]
    assert m["test"]["mean"] == pytest.approx(np.mean(tests))
    assert m["test"]["half_width"] == pytest.approx(mean_ci(tests)["half_width"])
    assert m["organs"]["kidney"]["mean"] == pytest.approx(np.mean(tests) + 0.01)
    # 2 models x 4 grid points, + 2 more seeds each for the selected point; search 9 + 3 + 1
    assert len(calls) == 2 * 4 + 2 * 2 + 9 + 3 + 1
    s = res["search"]
    assert s["rungs"] == [3, 9, 27] and [len(h["results"]) for h in s["history"]] == [9, 3, 1]
    most = max(r["sharing"].count("both") for r in s["history"][0]["results"])
    assert s["best"]["sharing"].count("both") == most
    assert s["epochs_trained"] == 9 * 3 + 3 * 9 + 27
    t5 = res["tables"]["table5"]
    assert t5["headers"][:3] == ["Method", "Val", "Test"] and t5["rows"][1][0] == "pred-to-inter-2"
    t6 = res["tables"]["table6"]
    assert t6["headers"] == ["Method", "population (5)", "kidney (3)", "bladder (2)"]
    text = (tmp_path / "exp" / "tables.txt").read_text()
    assert "Table 5" in text and "Table 6" in text and "-".join(s["best"]["sharing"]) in text
    # everything is finished: a second invocation trains nothing
    n = len(calls)
    again = Experiment(cfg, tmp_path / "exp", runner=fake_runner).run_all()
    assert len(calls) == n and again["models"]["cell-only"]["val"] == res["models"]["cell-only"]["val"]
    report = Experiment(cfg, tmp_path / "exp", runner=fake_runner).run_all(stages=("report",))
    assert len(calls) == n and report["tables"] == res["tables"]
    # a stage not asked for trains nothing: tuning only leaves the extra seeds pending
    fresh = Experiment(cfg, tmp_path / "exp2", runner=fake_runner)
    fresh.run_all(stages=("tune",))
    assert len(calls) == n + 2 * 4 and len(fresh.pending) == 2 * 2 + 9
    # changed settings are refused instead of silently mixed
    with pytest.raises(InputError, match="other settings"):
        Experiment(ExperimentConfig(base=base.replace(epochs=5), models=["cell-only"], seeds=1, lr_grid=[1e-4],
                                    cell_dropout_grid=[0.1], cell_lr_ratios=[1.0]),
                   tmp_path / "exp", runner=fake_runner).run_all()


def test_runs_trained_together_give_the_sequential_results(tmp_path):
    """With ``parallel`` each stage's pending runs go out at once (the grid, then the extra
    seeds, then each rung of the search) and the results equal the sequential runner's."""
    calls, groups = [], []

    def parallel(runs):
        groups.append(len(runs))
        return [_fake_train(calls, *r) for r in runs]

    seq = Experiment(FAKE_EXPERIMENT, tmp_path / "seq", runner=lambda *a: _fake_train([], *a)).run_all()
    par = Experiment(FAKE_EXPERIMENT, tmp_path / "par", runner=lambda *a: pytest.fail("trained one by one"),
                     parallel=parallel).run_all()
    assert groups == [2 * 4, 2 * 2, 9, 3, 1]
    assert par["tables"] == seq["tables"] and par["search"]["best"]["sharing"] == seq["search"]["best"]["sharing"]
    again = Experiment(FAKE_EXPERIMENT, tmp_path / "par", parallel=parallel).run_all()
    assert groups == [2 * 4, 2 * 2, 9, 3, 1] and again["tables"] == seq["tables"]  # nothing left to train

    def failing(runs):
        return [RuntimeError("node lost") for _ in runs]

    res = Experiment(ExperimentConfig(base=TrainConfig(data="D", epochs=2), models=["cell-only"], seeds=2, tune=False),
                     tmp_path / "fail", parallel=failing).run_all(stages=("tune", "seeds"))
    assert res["models"]["cell-only"]["runs"] == []
    assert "node lost" in json.loads(next((tmp_path / "fail").rglob("failed.json")).read_text())["error"]


def test_experiment_failed_run_is_recorded_and_skipped(tmp_path):
    def failing(cfg, run_dir, resume):
        raise RuntimeError("out of memory")

    cfg = ExperimentConfig(base=TrainConfig(data="D", epochs=2), models=["cell-only"], seeds=2, tune=False)
    res = Experiment(cfg, tmp_path / "e", runner=failing).run_all(stages=("tune", "seeds"))
    assert res["models"]["cell-only"]["runs"] == []
    assert len(list((tmp_path / "e" / "runs" / "cell-only").rglob("failed.json"))) == 2


def test_experiment_dry_run_lists_runs(tmp_path):
    cfg = ExperimentConfig(base=TrainConfig(data="D", epochs=2), models=["cell-only", "pred-to-inter-2"], seeds=3,
                           tune=False, search="random", search_budget=4)
    res = Experiment(cfg, tmp_path / "e").run_all(dry_run=True)
    assert len(res["planned_runs"]) == 2 * 3 + 4
    assert not (tmp_path / "e" / "runs").exists()


def test_tiny_experiment_end_to_end(data64, tmp_path):
    base = tiny_cfg(data64, epochs=1, size=32, max_train_batches=1)
    cfg = ExperimentConfig(base=base, models=["cell-only"], seeds=2, tune=False)
    res = Experiment(cfg, tmp_path / "e").run_all(stages=("tune", "seeds", "report"))
    m = res["models"]["cell-only"]
    assert len(m["runs"]) == 2 and m["test"]["n"] == 2
    assert (tmp_path / "e" / "results.json").is_file()


def test_label_leaking_refuses_non_contiguous_tissue_ids(tmp_path):
    """Leaked labels are one-hot as id k+1 -> channel k; other id sets get a clear error."""
    from conftest import make_pair
    from histozoom.data.base import DatasetSpec
    from histozoom.data.own_layout import write_own_dataset
    from histozoom.pair import OCELOT_CELL_CLASSES, ClassSet

    rng = np.random.default_rng(0)
    pairs = [make_pair(rng, cell_size=(64, 64), tissue_size=(64, 64), pid=f"p{i}") for i in range(2)]
    for p in pairs:
        p.tissue_mask[p.tissue_mask == 2] = 3
    spec = DatasetSpec(OCELOT_CELL_CLASSES, ClassSet(("BG", "CA"), (1, 3), ignore=255))
    write_own_dataset(tmp_path / "d", spec, {"train": pairs[:1], "val": pairs[1:]})
    cfg = tiny_cfg(tmp_path / "d", model="tissue-label-leaking", epochs=1, test_split=None)
    with pytest.raises(InputError, match=r"label leaking needs tissue class ids 1\.\.2, got \[1, 3\]"):
        train(cfg, tmp_path / "run")
