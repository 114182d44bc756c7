"""``histozoom challenge run``: the OCELOT 2023 Grand-Challenge algorithm container's job.

Examples::

    histozoom challenge run --input /input --output /output --checkpoint /opt/model
    histozoom challenge run --input sample_004 --output out --checkpoint RUN_A --checkpoint RUN_B --tta

Reads the container input layout (``images/cell_patches/*.tif``,
``images/tissue_patches/*.tif``, ``metadata.json``) and writes
``OUTPUT/cell_classification.json`` ("Multiple points", checked with the official rules
before it is put in place). The ``Dockerfile`` at the repository root builds an image that
runs exactly this, offline.
"""

from __future__ import annotations

import argparse
import sys

from ._common import MAX_BATCH_SIZE, add_engine_argument, positive_int, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("challenge", help="the OCELOT 2023 Grand-Challenge container: input folder in, "
                                         "cell_classification.json out", description=__doc__.splitlines()[0])
    inner = p.add_subparsers(dest="challenge_command", required=True, metavar="SUBCOMMAND")
    q = inner.add_parser("run", help="detect cells in a container input folder", description=__doc__.splitlines()[0])
    q.add_argument("--input", required=True, metavar="DIR", help="the container input folder (/input on the platform)")
    q.add_argument("--output", required=True, metavar="DIR", help="where cell_classification.json goes (/output)")
    q.add_argument("--checkpoint", required=True, action="append", metavar="RUN",
                   help="training run or save_pretrained folder; repeat for an ensemble")
    q.add_argument("--tta", action="store_true", help="average over the 8 flips/rotations")
    q.add_argument("--fusion", choices=("adaptive", "extreme"), help="post-hoc tissue->cell fusion (the model's tissue branch)")
    q.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    add_engine_argument(q)
    q.add_argument("--batch-size", type=positive_int(MAX_BATCH_SIZE), default=2)
    q.add_argument("--no-progress", action="store_true")
    q.add_argument("--json", action="store_true", help="print the summary as JSON")
    q.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..inference.challenge import run_container
    from ..inference.engines import resolve_engine
    from ..training.loop import resolve_device

    device = resolve_device(args.device)
    try:
        summary = run_container(args.input, args.output, args.checkpoint, device=device,
                                engine=resolve_engine(args.engine, device), tta=args.tta, fusion=args.fusion,
                                batch_size=args.batch_size, progress=not args.no_progress)
    except ValueError as e:
        raise InputError(args.checkpoint[0], str(e)) from e
    if args.json:
        print_json(summary)
    else:
        print(f"[challenge] wrote {summary['output']}", file=sys.stderr)
        print(f"{summary['pairs']} pairs, {summary['detections']} detections ({summary['per_class']}) "
              f"in {summary['seconds']:.1f} s")
    return 0
