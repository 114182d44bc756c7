"""``histozoom train``: train a cell–tissue model; the run folder holds everything.

Examples::

    histozoom train --data DATA --model pred-to-inter-2 --out RUN                  # paper recipe (300 epochs)
    histozoom train --data DATA --model cell-only --out RUN --epochs 20 --size 256 --json
    histozoom train --data DATA --model cell-only --out RUN --resume               # continue after a stop
    torchrun --nproc-per-node 4 -m histozoom.cli.train --data DATA --model pred-to-inter-2 --out RUN --device cuda

Output: ``RUN/best.ckpt/`` (a folder: config.json + model.safetensors, the best-validation
epoch; give ``RUN`` or ``RUN/best.ckpt`` to ``histozoom predict --checkpoint``),
``RUN/last/`` (resume state), ``RUN/log.csv``, ``RUN/train_config.json``,
``RUN/test_predictions.json`` and ``RUN/done.json`` (summary; ``--json`` prints it).
"""

from __future__ import annotations

import argparse
import sys

from ..training.recipe import LOSSES, RECIPES
from . import _static
from ._common import (
    MAX_BATCH_SIZE,
    MAX_COUNT,
    MAX_EPOCHS,
    MAX_LR,
    MAX_SIDE,
    MAX_UM,
    MAX_WORKERS,
    bounded_int,
    key_value,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    print_json,
    probability,
    seed,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a cell-tissue model (OCELOT recipe; resumable; DDP under torchrun)",
                       description=__doc__.splitlines()[0])
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    # every option defaults to None: only what is given overrides the config (or the saved one on --resume)
    p.add_argument("--data", metavar="DIR", help="dataset folder (OCELOT release, container, own layout)")
    p.add_argument("--allow-outside-paths", action="store_const", const=True,
                   help="the dataset's files may name files outside its folder (../, absolute paths, symlinks)")
    p.add_argument("--model", metavar="NAME", help=f"model variant: {', '.join(_static.MODEL_NAMES['cell-tissue'])}")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder")
    p.add_argument("--config", metavar="JSON", help="start from this TrainConfig JSON (options given here override it)")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN from its last finished epoch")
    p.add_argument("--recipe", choices=RECIPES,
                   help="default: LR from a range test, warm-up + cosine scaled to --epochs, Dice + cross-entropy, "
                        "BatchNorm recalibration when epochs are short; paper: the OCELOT paper / challenge baseline "
                        "exactly (LR 1e-4, x0.3 at 60%% and 80%% of the epochs, Dice)")
    p.add_argument("--epochs", type=positive_int(MAX_EPOCHS), help="epochs of the schedule (default 300, the paper's on OCELOT)")
    p.add_argument("--extend", type=positive_int(MAX_EPOCHS), metavar="N",
                   help="with --resume: train N more epochs after the run's schedule (a fresh schedule tail)")
    p.add_argument("--stop-after", type=positive_int(MAX_EPOCHS), metavar="E",
                   help="stop after epoch E (continue later with --resume)")
    p.add_argument("--size", type=positive_int(MAX_SIDE), metavar="PX",
                   help="resize both views to PX x PX (a multiple of the model's size multiple: "
                        f"{_static.SIZE_MULTIPLES_TEXT['cell-tissue']}; default: as stored)")
    p.add_argument("--batch-size", type=positive_int(MAX_BATCH_SIZE), help="batch size per process (default 8)")
    p.add_argument("--lr", type=positive_float(MAX_LR),
                   help="learning rate of the tissue branch (default: found by a range test with --recipe default, "
                        "1e-4 with --recipe paper; the CVPR paper tunes in [5e-5, 2e-3])")
    p.add_argument("--cell-lr-ratio", type=positive_float(100.0), help="cell-branch LR = lr x ratio (paper: 1 or 0.5; default 1)")
    p.add_argument("--weight-decay", type=nonnegative_float(1.0), help="Adam weight decay (default 1e-5)")
    p.add_argument("--cell-dropout", type=probability,
                   help="spatial dropout after each ResNet block of the cell branch (default: the recipe's: 0; paper: 0.1)")
    p.add_argument("--tissue-dropout", type=probability, help="same for the tissue branch (default 0; paper: 0.1)")
    p.add_argument("--cell-weight", type=nonnegative_float(1000.0), help="cell loss weight (default 1)")
    p.add_argument("--tissue-weight", type=nonnegative_float(1000.0), help="tissue loss weight (default 1)")
    p.add_argument("--no-tissue-loss", action="store_const", const=True, help="Table 7: large FoV without tissue labels")
    p.add_argument("--no-large-fov", action="store_const", const=True, help="Table 7: tissue labels without large FoV")
    p.add_argument("--no-augment", action="store_const", const=True, help="switch augmentation off")
    p.add_argument("--model-arg", type=key_value, action="append", metavar="KEY=VALUE",
                   help="model config override, e.g. encoder_name=resnet18 or sharing='[\"both\",\"none\",\"t2c\"]'")
    p.add_argument("--bn-recalibration", type=nonnegative_int(MAX_COUNT), metavar="B",
                   help="re-estimate BatchNorm statistics from B training batches before each validation "
                        "(0 = off; default: the recipe's, 16 when an epoch has under 100 steps with --recipe default)")
    p.add_argument("--loss", choices=LOSSES, help="dice (the paper's) or dice+ce (the default recipe's)")
    p.add_argument("--lr-finder-steps", type=bounded_int(10, MAX_COUNT), metavar="N",
                   help="steps of the LR range test (--recipe default without --lr; default 100)")
    p.add_argument("--warmup", type=probability, help="warm-up fraction of the steps (--recipe default; default 0.05)")
    tk = p.add_argument_group("challenge toolkit (the OCELOT 2023 top teams' options)")
    tk.add_argument("--target", choices=("disk", "gaussian"),
                    help="disk: class disks + the segmentation loss (default, the paper's); gaussian: heatmaps "
                         "(sigma 1.14 um) with sigmoid outputs and MSE, decoded on the smoothed heatmap")
    tk.add_argument("--normalize", choices=("none", "percentile", "macenko"),
                    help="input normalisation of both views: per-channel 1-99 percentile scaling, or Macenko stain "
                         "normalisation fitted on the tissue view (default none; prediction repeats it)")
    tk.add_argument("--sampling", choices=("uniform", "class-balanced"),
                    help="draw training pairs uniformly (default) or weighted towards rare cell classes")
    tk.add_argument("--folds", type=bounded_int(2, 100), metavar="K",
                    help="K slide-grouped, organ-stratified folds of the training split: train on K-1, validate on --fold")
    tk.add_argument("--fold", type=nonnegative_int(99), metavar="I", help="the validation fold, 0..K-1 (default 0)")
    tk.add_argument("--split-seed", type=seed, metavar="S", help="seed that deals the folds (default 0)")
    tk.add_argument("--retrain-all", action="store_const", const=True,
                    help="final retrain on the training and validation splits together (no validation; last epoch kept)")
    tk.add_argument("--peak-threshold", type=probability,
                    help="foreground threshold of the decoding (default: 0.5 for disks, 0.3 for heatmaps)")
    tk.add_argument("--nms-radius-um", type=nonnegative_float(MAX_UM),
                    help="point NMS radius per class after decoding, in um (default 0 = off)")
    p.add_argument("--seed", type=seed, help="seed (default 0)")
    p.add_argument("--device", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--num-workers", type=nonnegative_int(MAX_WORKERS),
                   help="data loader workers (default: 0 on CPU, up to 8 on CUDA)")
    p.add_argument("--val-split", help="validation split (default val; 'none' = no validation)")
    p.add_argument("--test-split", help="test split (default test; 'none' = no test pass)")
    p.add_argument("--max-train-batches", type=positive_int(MAX_COUNT), help="at most this many batches per epoch (smoke tests)")
    p.add_argument("--no-progress", action="store_const", const=True, help="no progress bars")
    p.add_argument("--no-tensorboard", action="store_const", const=True, help="no TensorBoard events")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON on stdout")


_FIELDS = {
    "data": "data", "model": "model", "recipe": "recipe", "loss": "loss", "warmup": "warmup",
    "lr_finder_steps": "lr_finder_steps",
    "epochs": "epochs", "stop_after": "stop_after", "size": "size",
    "batch_size": "batch_size", "lr": "lr", "cell_lr_ratio": "cell_lr_ratio", "weight_decay": "weight_decay",
    "cell_dropout": "cell_dropout", "tissue_dropout": "tissue_dropout", "cell_weight": "cell_weight",
    "tissue_weight": "tissue_weight", "no_tissue_loss": "no_tissue_loss", "no_large_fov": "no_large_fov",
    "seed": "seed", "device": "device", "bn_recalibration": "bn_recalibration", "num_workers": "num_workers",
    "max_train_batches": "max_train_batches", "allow_outside_paths": "allow_outside_paths",
    "target": "target", "normalize": "normalize", "sampling": "sampling", "folds": "folds", "fold": "fold",
    "split_seed": "split_seed", "retrain_all": "retrain_all", "peak_threshold": "peak_threshold",
    "nms_radius_um": "peak_nms_radius_um",
}


def config_from_args(args: argparse.Namespace):
    """The TrainConfig the options describe: ``--config`` or the saved one (``--resume``)
    or the defaults, with every given option applied."""
    from pathlib import Path

    from ..errors import InputError
    from ..training.config import TRAIN_CONFIG_FILE, TrainConfig

    saved = Path(args.out) / TRAIN_CONFIG_FILE
    if args.config:
        cfg = TrainConfig.load(args.config)
    elif args.resume and saved.is_file():
        cfg = TrainConfig.load(saved)
    else:
        cfg = TrainConfig()
    changes = {f: getattr(args, a) for a, f in _FIELDS.items() if getattr(args, a) is not None}
    if args.no_augment:
        changes["augment"] = False
    if args.no_progress:
        changes["progress"] = False
    if args.no_tensorboard:
        changes["tensorboard"] = False
    for name in ("val_split", "test_split"):
        v = getattr(args, name)
        if v is not None:
            changes[name] = None if v.lower() == "none" else v
    if args.model_arg:
        changes["model_overrides"] = {**cfg.model_overrides, **dict(args.model_arg)}
    if args.extend is not None:
        if not args.resume:
            raise InputError(args.out, "--extend continues a run: give it with --resume")
        changes["extend"] = (*cfg.extend, args.extend)
    return cfg.replace(**changes)


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..training.cell_tissue_trainer import train
    from ..training.distributed import cleanup, init_from_env

    cfg = config_from_args(args)
    if not cfg.data:
        raise InputError(None, "--data is required (or a --config / saved run that names it)")
    info, device = init_from_env(cfg.device)
    if info.enabled:
        cfg = cfg.replace(device=device)
    log = (lambda msg: print(f"[train] {msg}", file=sys.stderr)) if info.is_main else None
    try:
        summary = train(cfg, args.out, resume=args.resume, dist_info=info, log=log)
    finally:
        cleanup(info)
    if info.is_main:
        if args.json:
            print_json(summary)
        else:
            val = (summary.get("val") or {}).get("mF1")
            test = (summary.get("test") or {}).get("mF1")
            print(f"{summary['run']}: epochs {summary['epochs_done']}/{summary['epochs']}, best epoch {summary['best_epoch']}"
                  + (f", val mF1 {val:.4f}" if val is not None else "") + (f", test mF1 {test:.4f}" if test is not None else ""))
    return 0


if __name__ == "__main__":  # torchrun -m histozoom.cli.train ...
    from . import main

    sys.exit(main(["train", *sys.argv[1:]]))
