"""``histozoom report``: one self-contained HTML file summarising evaluation folders.

Examples::

    histozoom report --eval results --out report.html
    histozoom report --eval run_a/eval --eval run_b/eval --out compare.html --overlays 6
    histozoom report --eval results --out report.html --tissue-pred Pred-to-inter-2=masks/ --json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._common import MAX_BOOTSTRAP, MAX_COUNT, nonnegative_int, print_json, seed


def _tissue_pred(text: str) -> tuple[str | None, str]:
    """``METHOD=DIR`` or ``DIR`` (then taken in method order)."""
    if "=" in text and not Path(text).exists():
        name, folder = text.split("=", 1)
        return name.strip(), folder
    return None, text


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="one self-contained HTML report (scores, CIs, violins, rankings, subgroups, overlays) of evaluations",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--eval", action="append", required=True, metavar="DIR",
                   help="folder written by 'histozoom evaluate --out' (or its evaluation.json); repeat to merge "
                        "methods of several evaluations of the same ground truth")
    p.add_argument("--out", required=True, metavar="HTML", help="the HTML file to write")
    p.add_argument("--overlays", type=nonnegative_int(MAX_COUNT), default=4, metavar="N",
                   help="images drawn with ground truth and predictions: the lowest and highest per-image mF1 of "
                        "the first method (default %(default)s; 0 = none; needs a dataset ground truth)")
    p.add_argument("--gt", metavar="DATASET",
                   help="dataset folder with the images, instead of the recorded ground truth (must hold the same "
                        "ground truth)")
    p.add_argument("--split", help="split of --gt (default: the recorded one)")
    p.add_argument("--tissue-pred", action="append", type=_tissue_pred, metavar="[METHOD=]DIR",
                   help="predicted tissue masks to draw (named like the ground truth's); bare DIRs go to the "
                        "methods in order")
    p.add_argument("--bootstrap", type=nonnegative_int(MAX_BOOTSTRAP), metavar="N",
                   help="bootstrap resamples for the ranking and pairwise wins (default: the first evaluation's)")
    p.add_argument("--seed", type=seed, help="bootstrap seed (default: the first evaluation's)")
    p.add_argument("--allow-outside-paths", action="store_true",
                   help="a dataset ground truth may name files outside its folder")
    p.add_argument("--json", action="store_true",
                   help='print one JSON document {"out", "methods", "sections", "overlay_images", "notes"}')
    p.set_defaults(func=run)


def _tissue_preds(values: list[tuple[str | None, str]] | None) -> dict[str, str] | list[str] | None:
    if not values:
        return None
    named = [v for v in values if v[0] is not None]
    if named and len(named) != len(values):
        raise argparse.ArgumentTypeError("give --tissue-pred either all as METHOD=DIR or all as DIR")
    return {n: d for n, d in values} if named else [d for _, d in values]  # type: ignore[misc]


def run(args: argparse.Namespace) -> int:
    from ..atomic import check_output
    from ..reports.html_report import render_html_report

    try:
        tissue = _tissue_preds(args.tissue_pred)
    except argparse.ArgumentTypeError as e:
        print(f"histozoom report: error: {e}", file=sys.stderr)
        return 2
    check_output(args.out, "file")
    log = lambda msg: print(f"[report] {msg}", file=sys.stderr)  # noqa: E731
    rep = render_html_report(args.eval, overlays=args.overlays, gt=args.gt, split=args.split, tissue_preds=tissue,
                             bootstrap=args.bootstrap, seed=args.seed, allow_outside_paths=args.allow_outside_paths,
                             progress=log)
    out = rep.write(args.out)
    for n in rep.notes:
        log(f"note: {n}")
    if args.json:
        print_json({"out": str(out), "methods": rep.methods, "sections": rep.sections,
                    "overlay_images": rep.overlay_images, "notes": rep.notes})
    else:
        print(f"wrote {out} ({len(rep.methods)} methods; sections: {', '.join(rep.sections)})")
    return 0
