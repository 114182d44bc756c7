"""``histozoom tiger convert``: the TIGER (WSIROIS) release as histozoom cell/tissue pairs.

Example::

    histozoom tiger convert --input tiger-training/wsirois --out data/tiger --json

Implements the OCELOT supplement's TIGER pre-processing (Algorithm 1 for TCGA cell ROIs
inside their large tissue-bcss ROIs, Algorithm 2 for the other ROIs, tiled): 128 px cell
patches at --mpp (0.5 µm/px) paired with 512 px tissue patches resized to 128 px (4x the
mpp); one cell class LC (lymphocytes and plasma cells), tissue BG/ST (TIGER stroma classes
2 and 6 are ST, excluded pixels 255). The output is the own-data layout (dataset.yaml +
pairs.csv, one split) that every other command reads; see histozoom.data.tiger for the
input layout and the exact definitions.
"""

from __future__ import annotations

import argparse
import sys

from ._common import mpp, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tiger", help="TIGER challenge data: convert the WSIROIS release to cell/tissue pairs",
                       description=__doc__.splitlines()[0])
    tsub = p.add_subparsers(dest="tiger_command", required=True, metavar="SUBCOMMAND")
    c = tsub.add_parser("convert", help="write TIGER WSIROIS ROIs as paired views (OCELOT supplement F)",
                        description=__doc__.splitlines()[0], epilog="\n".join(__doc__.splitlines()[2:]),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--input", required=True, metavar="DIR",
                   help="the TIGER wsirois folder (or the folder holding it, or its roi-level-annotations)")
    c.add_argument("--out", required=True, metavar="DIR", help="output dataset folder (new or empty)")
    c.add_argument("--mpp", type=mpp, default=0.5, metavar="UM", help="µm/px of the TIGER ROIs (default: 0.5)")
    c.add_argument("--split", default="train", metavar="NAME", help="split name of every pair (default: train)")
    c.add_argument("--overwrite", action="store_true", help="replace an earlier dataset in --out")
    c.add_argument("--json", action="store_true", help="print the summary as one JSON document")
    c.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..atomic import check_output
    from ..data.tiger import convert_tiger

    check_output(args.out, "folder")

    def log(name: str) -> None:
        print(f"[tiger convert] {name}", file=sys.stderr)

    summary = convert_tiger(args.input, args.out, mpp=args.mpp, split=args.split, overwrite=args.overwrite,
                            progress=None if args.json else log)
    if args.json:
        print_json(summary.to_dict())
        return 0
    s = summary
    print(f"[tiger convert] wrote {s.pairs} pairs to {s.out} (split {s.split!r}): {s.pairs_tcga} from "
          f"{s.cell_rois_tcga} TCGA cell ROIs, {s.pairs_non_tcga} from {s.images_non_tcga} other images; "
          f"{s.cells_written} cells. Skipped: {s.rois_too_small} ROIs too small, {s.rois_without_tissue} without a "
          f"tissue ROI, {s.tissue_patches_at_border} tissue patches at the border, {s.images_too_small} images too small")
    return 0
