"""``histozoom synth``: write a synthetic paired dataset in the OCELOT release layout, or
(``histozoom synth slide OUT.tiff``) a synthetic whole-slide image with its ground truth."""

from __future__ import annotations

import argparse
import sys
import time

from ..constants import OCELOT_ORGANS, PRESETS
from ._common import MAX_SIDE, MAX_SYNTH, mpp, nonnegative_int, positive_float, positive_int, print_json, seed

SLIDE_MODE = "slide"
"""First argument of ``histozoom synth`` that selects the slide mode (a dataset folder of that name: ``./slide``)."""
MAX_SLIDE_MM = 50.0  # histozoom.data.synthetic_slide.MAX_SIDE_MM (not imported: register must stay cheap)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synth",
        help="write a synthetic paired cell/tissue dataset (OCELOT release layout)",
        description=(
            "Write a synthetic dataset of cell/tissue pairs in the OCELOT release layout. "
            "'context': cell classes follow the tissue region, which only the tissue view "
            "shows; 'simple': classes are decidable from nucleus morphology alone. "
            "Statistics and oracle mF1 go to OUT_DIR/synthetic.json. "
            "'histozoom synth slide OUT.tiff ...' writes a synthetic whole-slide image instead "
            "(see 'histozoom synth slide --help')."
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
    _route_first_argument(p, SLIDE_MODE, _slide_parser(p.prog))


def _slide_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"{prog} {SLIDE_MODE}",
        description=(
            "Write a synthetic whole-slide image drawn by the paired generator's scene model "
            "(same stain, nucleus morphology, class-region rule and glands as "
            "'histozoom synth --preset PRESET'): OUT.tiff (pyramidal tiled TIFF that OpenSlide "
            "reads, Aperio description with the mpp), OUT.cells.csv (x,y,class,tissue; level-0 "
            "pixel centres; class 1 = BC, 2 = TC; tissue 1 = BG, 2 = CA), OUT.tissue.png "
            "(tissue labels at --tissue-mpp), OUT.glands.png (1 on gland pixels of that grid) and "
            "OUT.slide.json (summary, true purity)."
        ),
    )
    p.add_argument("out", metavar="OUT.tiff", help="output slide (.tif, .tiff or .svs); the ground truth goes next to it")
    p.add_argument("--preset", choices=PRESETS, default="context", help="scene flavour (default: context)")
    p.add_argument("--width-mm", type=positive_float(MAX_SLIDE_MM), default=2.0, metavar="MM",
                   help="slide width in mm (default: 2)")
    p.add_argument("--height-mm", type=positive_float(MAX_SLIDE_MM), default=2.0, metavar="MM",
                   help="slide height in mm (default: 2)")
    p.add_argument("--mpp", type=mpp, default=0.25, metavar="UM", help="level-0 µm/px (default: 0.25)")
    p.add_argument("--tissue-mpp", type=mpp, default=None, metavar="UM",
                   help="µm/px of the tissue-scale fields and OUT.tissue.png, a whole multiple of --mpp "
                        "(default: 4 x --mpp)")
    p.add_argument("--window-um", type=positive_float(10_000), default=204.8, metavar="UM",
                   help="cell-view side of the paired dataset to match, the unit of tissue-scale structures "
                        "(default: 204.8 = 1024 px x 0.2 µm/px)")
    p.add_argument("--seed", type=seed, default=0, help="random seed (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.set_defaults(func=run_slide)
    return p


def _route_first_argument(parser: argparse.ArgumentParser, word: str, other: argparse.ArgumentParser) -> None:
    """Let ``other`` parse the arguments when the first one is ``word`` (a mode that
    leaves ``parser``'s own positional argument as it is)."""
    own = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        if args and args[0] == word:
            return other.parse_known_args(args[1:], namespace)
        return own(args, namespace)

    parser.parse_known_args = parse_known_args  # type: ignore[method-assign]


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


def run_slide(args: argparse.Namespace) -> int:
    from ..data.synthetic_slide import SlideSynthConfig, write_synthetic_slide

    cfg = SlideSynthConfig(preset=args.preset, width_mm=args.width_mm, height_mm=args.height_mm, mpp=args.mpp,
                           tissue_mpp=args.tissue_mpp, seed=args.seed, window_um=args.window_um)
    t0 = time.perf_counter()
    summary = write_synthetic_slide(args.out, cfg, overwrite=args.overwrite)
    seconds = time.perf_counter() - t0
    if args.json:
        print_json({"out": str(args.out), "seconds": seconds, **summary})
        return 0
    n, pur = summary["n_cells"], summary["purity"]
    print(f"wrote {summary['width_px']}x{summary['height_px']} px slide ({cfg.preset}, {summary['width_mm']:g} x "
          f"{summary['height_mm']:g} mm at {cfg.mpp:g} µm/px, {len(summary['levels'])} levels) to {args.out} "
          f"in {seconds:.1f} s")
    print(f"  cells {n['BC'] + n['TC']} (TC {n['TC']}, BC {n['BC']}); purity {_fmt(pur['overall'])} "
          f"(inside CA {_fmt(pur['inside_ca'])}, outside {_fmt(pur['outside_ca'])}); "
          f"CA {summary['ca_fraction']:.2f} of the tissue")
    return 0


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"
