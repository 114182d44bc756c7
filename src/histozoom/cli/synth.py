"""``histozoom synth``: write a synthetic paired dataset in the OCELOT release layout."""

from __future__ import annotations

import argparse
import sys
import time

from ..constants import OCELOT_ORGANS, PRESETS
from ._common import MAX_SIDE, MAX_SYNTH, mpp, nonnegative_int, positive_int, print_json, seed


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synth",
        help="write a synthetic paired cell/tissue dataset (OCELOT release layout)",
        description=(
            "Write a synthetic dataset of cell/tissue pairs in the OCELOT release layout. "
            "'context': cell classes follow the tissue region, which only the tissue view "
            "shows; 'simple': classes are decidable from nucleus morphology alone. "
            "Statistics and oracle mF1 go to OUT_DIR/synthetic.json."
        ),
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder (must be empty or new unless --overwrite)")
    p.add_argument("--preset", choices=PRESETS, default="context", help="dataset flavour (default: context)")
    p.add_argument("--n-train", type=nonnegative_int(MAX_SYNTH), default=40, metavar="N", help="training pairs (default: 40)")
    p.add_argument("--n-val", type=nonnegative_int(MAX_SYNTH), default=10, metavar="N", help="validation pairs (default: 10)")
    p.add_argument("--n-test", type=nonnegative_int(MAX_SYNTH), default=10, metavar="N", help="test pairs (default: 10)")
    p.add_argument("--cell-size", type=positive_int(MAX_SIDE), default=1024, metavar="PX",
                   help="cell image side in pixels (default: 1024)")
    p.add_argument("--tissue-size", type=positive_int(MAX_SIDE), default=1024, metavar="PX",
                   help="tissue image side in pixels (default: 1024)")
    p.add_argument("--cell-mpp", type=mpp, default=0.2, metavar="UM", help="cell image µm/px (default: 0.2)")
    p.add_argument("--tissue-mpp", type=mpp, default=0.8, metavar="UM",
                   help="tissue image µm/px, a whole multiple of --cell-mpp (default: 0.8)")
    p.add_argument("--seed", type=seed, default=0, help="random seed (default: 0)")
    p.add_argument("--organs", nargs="+", default=list(OCELOT_ORGANS), metavar="ORGAN",
                   help="organs to draw from (default: the six OCELOT organs)")
    p.add_argument("--overwrite", action="store_true", help="replace the release files in a non-empty OUT_DIR")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.synthetic import SYNTHETIC_JSON, SynthConfig
    from ..evaluation.oracles import write_synthetic_dataset
    from ..jsonio import read_json

    try:
        cfg = SynthConfig(
            preset=args.preset, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test,
            cell_size=args.cell_size, tissue_size=args.tissue_size,
            cell_mpp=args.cell_mpp, tissue_mpp=args.tissue_mpp,
            seed=args.seed, organs=tuple(args.organs),
        )
    except ValueError as e:
        print(f"histozoom synth: error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    root = write_synthetic_dataset(args.out_dir, cfg, overwrite=args.overwrite)
    seconds = time.perf_counter() - t0
    report = read_json(root / SYNTHETIC_JSON, "synthetic dataset report")
    if args.json:
        print_json({"out_dir": str(root), "seconds": seconds, **report})
        return 0
    n = cfg.n_train + cfg.n_val + cfg.n_test
    print(f"wrote {n} pairs ({cfg.preset}, cell {cfg.cell_size} px, tissue {cfg.tissue_size} px) to {root} "
          f"in {seconds:.1f} s")
    allsplits = report["splits"].get("all")
    if allsplits:
        s, o = allsplits["stats"], allsplits["oracle_mf1"]
        print(f"  cells {s['n_cells']} ({s['cells_per_image']:.0f}/image, TC {s['tc_fraction']:.2f}); "
              f"TC in CA {s['tc_in_ca']:.2f}, BC outside CA {s['bc_outside_ca']:.2f}; "
              f"CA pixels {s['ca_pixel_fraction']:.2f}, unknown {s['unknown_pixel_fraction']:.3f}")
        parts = [f"{k} {o[k]['mf1']:.3f}" for k in ("region", "cell_view", "cell_view_pooled", "region_and_cell_view")
                 if k in o]
        if parts:
            print("  oracle mF1: " + ", ".join(parts))
    return 0
