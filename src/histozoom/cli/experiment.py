"""``histozoom experiment``: the OCELOT paper's experiments — grids, seeds, Tables 5–7, sharing search.

Examples::

    # the paper's recipe (unattended on a GPU; resumable: run the same command again after a stop)
    histozoom experiment --data OCELOT --out EXP --device cuda --num-workers 8
    # a quick look: two models, fixed hyper-parameters, 3 seeds
    histozoom experiment --data DATA --out EXP --models cell-only pred-to-inter-2 --no-tune --lr 1e-3 --seeds 3 --epochs 20
    # Table 7 (dataset ablation)
    histozoom experiment --data OCELOT --out EXP7 \\
        --models cell-only pred-to-inter-2 pred-to-inter-2-no-large-fov pred-to-inter-2-no-tissue-labels
    # the feature-sharing search only, successive halving over 27 of the 64 configurations
    histozoom experiment --data OCELOT --out EXPS --stage search --search halving --search-budget 27
    histozoom experiment ... --dry-run --json      # list the runs that would be trained
    histozoom experiment ... --ray auto --ray-gpus-per-run 1 --device cuda   # every stage's runs at once on a Ray cluster

Every run is a training run folder under EXP (see ``histozoom train``); finished runs
(``done.json``) are reused, unfinished ones resumed. Results: ``EXP/results.json`` and
``EXP/tables.txt``.
"""

from __future__ import annotations

import argparse
import sys

from ..constants import PAPER_CELL_LR_RATIOS, PAPER_MODELS, SEARCH_MODES
from ..training.recipe import RECIPES
from ._common import (
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    MAX_LR,
    MAX_SIDE,
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

MAX_SEEDS = 1000


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="paper experiments: LR/dropout grids, seeds with 95%% CIs, Tables 5-7, sharing search",
                       description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, metavar="DIR")
    p.add_argument("--out", required=True, metavar="EXP")
    p.add_argument("--models", nargs="+", default=list(PAPER_MODELS), metavar="NAME", help="default: Table 5's seven models")
    p.add_argument("--seeds", type=positive_int(MAX_SEEDS), default=5, help="seeds per model (default 5)")
    p.add_argument("--stage", nargs="+", default=["tune", "seeds", "search", "report"],
                   choices=["tune", "seeds", "search", "report"], help="stages to run (default: all)")
    p.add_argument("--no-tune", action="store_true", help="no grid: use --lr / --cell-lr-ratio / --cell-dropout")
    p.add_argument("--lr-grid", type=positive_float(MAX_LR), nargs="+", metavar="LR",
                   help="default: 3e-4 1e-3 3e-3 (default recipe), the paper's 5e-5 ... 2e-3 (--recipe paper)")
    p.add_argument("--cell-dropout-grid", type=probability, nargs="+", metavar="P",
                   help="default: 0 0.1 0.3 (default recipe), the paper's 0.1 0.3 0.5 (--recipe paper)")
    p.add_argument("--cell-lr-ratios", type=positive_float(100.0), nargs="+", default=list(PAPER_CELL_LR_RATIOS), metavar="R")
    p.add_argument("--grid-seeds", type=positive_int(MAX_SEEDS), default=1, help="seeds per grid point (default 1)")
    p.add_argument("--search", choices=SEARCH_MODES, default="none", help="feature-sharing search (default none)")
    p.add_argument("--search-budget", type=positive_int(MAX_SEEDS), default=16, help="configurations to try (of 64)")
    p.add_argument("--search-eta", type=bounded_int(2, 64), default=3, help="successive halving: keep 1/eta per rung")
    p.add_argument("--search-seed", type=seed, default=0)
    # the base training config
    p.add_argument("--epochs", type=positive_int(MAX_EPOCHS), default=300)
    p.add_argument("--size", type=positive_int(MAX_SIDE))
    p.add_argument("--batch-size", type=positive_int(MAX_BATCH_SIZE), default=8)
    p.add_argument("--recipe", choices=RECIPES, default="default", help="training recipe of every run (see train --help)")
    p.add_argument("--lr", type=positive_float(MAX_LR), help="with --no-tune (default: the recipe's)")
    p.add_argument("--cell-lr-ratio", type=positive_float(100.0), default=1.0, help="with --no-tune")
    p.add_argument("--cell-dropout", type=probability, help="with --no-tune (default: the recipe's: 0, paper 0.1)")
    p.add_argument("--tissue-dropout", type=probability)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--model-arg", type=key_value, action="append", metavar="KEY=VALUE",
                   help="model config override for every run")
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-workers", type=nonnegative_int(MAX_WORKERS))
    p.add_argument("--no-progress", action="store_true")
    ray = p.add_argument_group("Ray (pip install 'histozoom[ray]')")
    ray.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                     help="train each stage's runs at once as Ray tasks: no value starts a local Ray, 'auto' joins "
                          "the running cluster, or give its address; EXP must be shared by the nodes")
    ray.add_argument("--ray-cpus-per-run", type=positive_int(MAX_WORKERS), default=1, metavar="C",
                     help="CPUs (and torch threads) of each training task (default 1)")
    ray.add_argument("--ray-gpus-per-run", type=nonnegative_float(64), default=0.0, metavar="G",
                     help="GPUs of each training task (default 0; 1 with --device cuda)")
    p.add_argument("--dry-run", action="store_true", help="list the runs still to train; train nothing")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training.config import TrainConfig
    from ..training.experiment import ExperimentConfig, render_tables, run_experiment

    base = TrainConfig(data=args.data, recipe=args.recipe, epochs=args.epochs, size=args.size, batch_size=args.batch_size,
                       lr=args.lr,
                       cell_lr_ratio=args.cell_lr_ratio, cell_dropout=args.cell_dropout,
                       tissue_dropout=args.tissue_dropout, augment=not args.no_augment,
                       model_overrides=dict(args.model_arg or []), device=args.device, num_workers=args.num_workers,
                       progress=not args.no_progress)
    cfg = ExperimentConfig(base=base, models=args.models, seeds=args.seeds, tune=not args.no_tune, lr_grid=args.lr_grid,
                           cell_dropout_grid=args.cell_dropout_grid, cell_lr_ratios=args.cell_lr_ratios,
                           grid_seeds=args.grid_seeds, search=args.search, search_budget=args.search_budget,
                           search_eta=args.search_eta, search_seed=args.search_seed)
    log = lambda msg: print(f"[experiment] {msg}", file=sys.stderr)  # noqa: E731
    parallel = None
    if args.ray:
        from ..training.ray_runs import RayTraining, ray_parallel

        parallel = ray_parallel(RayTraining(args.ray, args.ray_cpus_per_run, args.ray_gpus_per_run))
    results = run_experiment(cfg, args.out, stages=args.stage, dry_run=args.dry_run, log=log, parallel=parallel)
    if args.json:
        print_json(results)
    elif args.dry_run:
        print(f"{len(results['planned_runs'])} runs to train:")
        for r in results["planned_runs"]:
            print(f"  {r}")
    else:
        print(render_tables(results))
    return 0
