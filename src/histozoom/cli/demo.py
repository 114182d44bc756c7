"""``histozoom demo``: the README's main job on built-in data."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..demo import DemoConfig, default_shared_data, run_demo


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="synthetic dataset + tables + scoring of real challenge submissions")
    p.add_argument("--out", default="demo_out", help="output folder (reused on re-runs)")
    p.add_argument("--shared-data", default=None, help="folder with the real data (default ../shared/data)")
    p.add_argument("--size", type=int, default=256, help="pixel size of the synthetic views")
    p.add_argument("--bootstrap", type=int, default=10_000)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    shared = Path(args.shared_data) if args.shared_data else default_shared_data()
    run_demo(DemoConfig(Path(args.out), shared, size=args.size, bootstrap=args.bootstrap))
    return 0
