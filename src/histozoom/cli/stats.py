"""``histozoom stats DATASET``: the paper's dataset tables (``--json`` for one JSON document)."""

from __future__ import annotations

import argparse

from ._common import print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stats", help="dataset tables: cells and tissue pixels per class, split, organ")
    p.add_argument("dataset", help="dataset folder (OCELOT release, container or own layout)")
    p.add_argument("--split", action="append", help="only these splits (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    p.add_argument("--allow-outside-paths", action="store_true",
                   help="read files that the dataset's own files name outside its folder (../, absolute paths, symlinks)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.open import open_dataset
    from ..data.stats import dataset_stats, stats_tables
    from ..reports.tables import format_table

    ds = open_dataset(args.dataset, allow_outside_paths=args.allow_outside_paths)
    stats = dataset_stats(ds, args.split, progress=not args.json)
    if args.json:
        print_json(stats.to_dict())
        return 0
    for title, headers, rows in stats_tables(stats):
        print(format_table(rows, headers, title=title, digits=2))
        print()
    return 0
