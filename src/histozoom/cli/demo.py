"""``histozoom demo``: the README's main job on built-in data."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import MAX_BOOTSTRAP, MAX_EPOCHS, MAX_WORKERS, nonnegative_int, seed


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="synthetic dataset + tables + three trained models (Table 5 analogue) "
                                    "+ scoring of real challenge submissions")
    p.add_argument("--out", default="demo_out", help="output folder (reused on re-runs; training resumes)")
    p.add_argument("--shared-data", default=None, help="folder with the real data (default ../shared/data)")
    p.add_argument("--long", action="store_true",
                   help="train longer and closer to the paper (ResNet-34, 256 px, 4x data, 150 epochs; hours on a CPU)")
    p.add_argument("--epochs", type=nonnegative_int(MAX_EPOCHS), default=None, help="override the epochs (0 skips training)")
    p.add_argument("--bootstrap", type=nonnegative_int(MAX_BOOTSTRAP), default=10_000)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--threads", type=nonnegative_int(MAX_WORKERS), default=1,
                   help="torch threads while training (default 1: the numbers repeat bit for bit; 0 = torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import DemoConfig, default_shared_data, run_demo

    shared = Path(args.shared_data) if args.shared_data else default_shared_data()
    make = DemoConfig.long if args.long else DemoConfig.quick
    kw = {"bootstrap": args.bootstrap, "seed": args.seed, "progress": not args.no_progress,
          "threads": args.threads or None}
    if args.epochs is not None:
        kw["epochs"] = args.epochs
    run_demo(make(Path(args.out), shared, **kw))
    return 0
