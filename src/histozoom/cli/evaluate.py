"""``histozoom evaluate``: score cell predictions as the OCELOT 2023 challenge did.

Examples::

    histozoom evaluate --pred r12.json --gt cell_gt.json
    histozoom evaluate --pred a.json --pred b.json --gt DATASET --split test --bootstrap 10000 --out results --plots
    histozoom evaluate --pred P.json --gt GT.json --metadata metadata.json --tissue-masks masks/ --json
"""

from __future__ import annotations

import argparse
import sys

from ..constants import CHALLENGE_MPP, CHALLENGE_RADIUS_UM, MATCH_MODES
from ..metrics.stats import DEFAULT_RESAMPLES, DEFAULT_SEED  # numpy only
from ._common import MAX_BOOTSTRAP, MAX_UM, mpp, nonnegative_int, positive_float, print_json, seed, size_pair

_size = size_pair()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score cell detections (OCELOT 2023 mF1), with bootstrap CIs, rankings, organs, tissue subgroups",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--pred", action="append", required=True, metavar="P",
                   help="predictions: challenge JSON or a folder of per-image CSVs (x,y,class[,prob]); "
                        "repeat to compare methods")
    p.add_argument("--name", action="append", metavar="NAME",
                   help="display name for each --pred, in order (default: file name)")
    p.add_argument("--gt", required=True, metavar="GT",
                   help="ground truth: challenge JSON, a CSV folder, or a dataset folder")
    p.add_argument("--split",
                   help="split of a dataset --gt (default: its only split, else 'test'); "
                        "image_K = K-th sample in sorted id order")
    p.add_argument("--allow-outside-paths", action="store_true",
                   help="a dataset --gt may name files outside its folder (../, absolute paths, symlinks)")
    p.add_argument("--metadata", metavar="M",
                   help="metadata JSON (list indexed by image, or a release metadata.json): organs, placements")
    p.add_argument("--tissue-masks", metavar="DIR",
                   help="ground-truth tissue masks (tissue frame) for the subgroup analysis; "
                        "needs --metadata unless --gt is a dataset")
    p.add_argument("--tissue-pred", action="append", metavar="DIR",
                   help="predicted tissue masks to score (IoU, Dice); one per --pred")
    p.add_argument("--subgroups", action="store_true",
                   help="tissue-region subgroups from a dataset --gt's tissue annotations (loads all pairs)")
    p.add_argument("--bootstrap", type=nonnegative_int(MAX_BOOTSTRAP), default=DEFAULT_RESAMPLES, metavar="N",
                   help="bootstrap resamples of images for 95%% CIs, rank and pairwise-win probabilities "
                        "(default %(default)s as in the report; 0 = off)")
    p.add_argument("--seed", type=seed, default=DEFAULT_SEED, help="bootstrap seed (default %(default)s)")
    p.add_argument("--radius-um", type=positive_float(MAX_UM), default=CHALLENGE_RADIUS_UM,
                   help="hit radius in µm (default %(default)s)")
    p.add_argument("--mpp", type=mpp, default=None,
                   help=f"µm per pixel of the cell images (default: a dataset's own, else {CHALLENGE_MPP})")
    p.add_argument("--matching", choices=MATCH_MODES, default="challenge",
                   help="challenge = the official greedy rule (default); "
                        "hungarian = optimal matching, NOT the challenge's metric")
    p.add_argument("--image-size", type=_size, metavar="N|WxH",
                   help="cell image size for coordinate checks (default 1024, or the dataset's)")
    p.add_argument("--strict", action="store_true",
                   help="reject exactly what the official checker rejects (exact JSON types, 1024 px, classes 1/2)")
    p.add_argument("--out", metavar="DIR", help="write evaluation.json (and plots with --plots) here")
    p.add_argument("--plots", action="store_true",
                   help="with --out: PNG violin plot of per-image F1, rank-probability and pairwise heat maps")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of tables")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..atomic import check_output
    from ..evaluation import evaluate

    if args.plots and not args.out:
        print("histozoom evaluate: error: --plots needs --out DIR", file=sys.stderr)
        return 2
    if args.name and len(args.name) != len(args.pred):
        print("histozoom evaluate: error: give one --name per --pred", file=sys.stderr)
        return 2
    if args.out:
        check_output(args.out, "folder")  # before the scoring
    log = lambda msg: print(f"[evaluate] {msg}", file=sys.stderr)  # noqa: E731
    report = evaluate(
        args.pred,
        args.gt,
        names=args.name,
        split=args.split,
        radius_um=args.radius_um,
        mpp=args.mpp,
        mode=args.matching,
        image_size=args.image_size,
        strict=args.strict,
        metadata=args.metadata,
        tissue_masks=args.tissue_masks,
        subgroups=True if args.subgroups else None,
        tissue_preds=args.tissue_pred,
        bootstrap=args.bootstrap,
        seed=args.seed,
        progress=log,
        allow_outside_paths=args.allow_outside_paths,
    )
    if args.out:
        for path in report.write(args.out, plots=args.plots):
            log(f"wrote {path}")
    if args.json:
        print_json(report.to_dict())
    else:
        print(report.tables())
    for w in report.warnings:
        log(f"warning: {w}")
    return 0
