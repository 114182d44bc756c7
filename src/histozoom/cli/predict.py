"""``histozoom predict``: cell detections from a trained model, in original pixel coordinates.

Examples::

    histozoom predict --checkpoint RUN --data DATA --split test --out P.json
    histozoom predict --checkpoint RUN --data CONTAINER_DIR --out cell_classification.json --tta
    histozoom predict --checkpoint RUN --data DATA --split val --csv P_csv/ --table detections.csv --size 512
    histozoom predict --checkpoint RUN --cell-image c.jpg --tissue-image t.jpg --offset 0.4 0.6 --out P.json

``--checkpoint``: a training run folder (its ``best.ckpt``) or a ``save_pretrained``
folder. ``--out`` writes the OCELOT challenge JSON (``image_K`` = K-th sample in sorted id
order, integer pixels), ``--csv`` one ``SAMPLE_ID.csv`` per image (x,y,class,prob),
``--table`` all detections in one CSV. ``--size``: the model's input size (default: the
size it was trained at; ``native`` = as stored); detections are always written in the
original image's pixels.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ._common import (
    MAX_BATCH_SIZE,
    MAX_SIDE,
    MAX_UM,
    MAX_WORKERS,
    add_engine_argument,
    mpp,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    print_json,
    probability,
)
from ._static import SIZE_MULTIPLES_TEXT


def _size(text: str):
    if text.lower() in ("native", "none", "stored"):
        return "native"
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a pixel size (a multiple of the model's size multiple) "
                                         f"or 'native', got {text!r}") from None
    if not 1 <= v <= MAX_SIDE:
        raise argparse.ArgumentTypeError(f"size must be a number of pixels in [1, {MAX_SIDE}], got {v}")
    return v  # the model's size multiple is checked once the checkpoint is loaded


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="detect cells with a trained model (challenge JSON, CSV folder, detections table)",
                       description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, action="append", metavar="RUN",
                   help="training run folder or save_pretrained folder; repeat for an ensemble (probability maps "
                        "averaged before decoding; members share classes, views and normalisation)")
    src = p.add_argument_group("input: a dataset split, or one pair of images")
    src.add_argument("--data", metavar="DIR", help="dataset folder (OCELOT release, Grand-Challenge container, own layout)")
    src.add_argument("--split", help="split of --data (default: its only split, else 'test'; a container's is 'container')")
    src.add_argument("--allow-outside-paths", action="store_true",
                     help="read files that the dataset's own files name outside its folder (../, absolute paths, symlinks)")
    src.add_argument("--cell-image", metavar="IMG", help="cell view image (with --tissue-image)")
    src.add_argument("--tissue-image", metavar="IMG", help="tissue view image")
    src.add_argument("--tissue-mask", metavar="IMG", help="tissue label map (tissue-label leaking models only)")
    src.add_argument("--offset", type=probability, nargs=2, default=(0.5, 0.5), metavar=("X", "Y"),
                     help="cell view centre as fractions of the tissue image (default 0.5 0.5)")
    src.add_argument("--cell-mpp", type=mpp, default=0.2, help="µm/px of the cell image (default 0.2)")
    src.add_argument("--tissue-mpp", type=mpp, default=0.8, help="µm/px of the tissue image (default 0.8)")
    out = p.add_argument_group("outputs (at least one)")
    out.add_argument("--out", metavar="P.json", help="challenge JSON (Multiple points)")
    out.add_argument("--csv", metavar="DIR", help="folder of per-image CSVs named by sample id")
    out.add_argument("--table", metavar="T.csv", help="one CSV of all detections")
    p.add_argument("--size", type=_size, metavar="PX|native",
                   help="model input size, a multiple of the model's size multiple "
                        f"({SIZE_MULTIPLES_TEXT['cell-tissue']}; default: the training size)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: average over 8 flips/rotations")
    p.add_argument("--threshold", type=probability, help="foreground probability threshold (default: the training run's, 0.5)")
    p.add_argument("--min-distance-um", type=positive_float(MAX_UM),
                   help="peak neighbourhood half-size in µm (default: the run's, 2.0)")
    p.add_argument("--nms-radius-um", type=nonnegative_float(MAX_UM),
                   help="point NMS radius per class after decoding, in um (default: the run's, 0 = off)")
    p.add_argument("--fusion", choices=("adaptive", "extreme"),
                   help="post-hoc tissue->cell fusion (Ji et al.): revise cell classes with the tissue prediction "
                        "(the model's own tissue branch, or --tissue-checkpoint)")
    p.add_argument("--tissue-checkpoint", metavar="RUN2",
                   help="with --fusion: a checkpoint whose tissue branch gives the tissue prediction")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    add_engine_argument(p)
    p.add_argument("--batch-size", type=positive_int(MAX_BATCH_SIZE), default=4)
    p.add_argument("--num-workers", type=nonnegative_int(MAX_WORKERS), default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.set_defaults(func=run)


def load_tissue_model(path: str, device: str):
    """The model of checkpoint ``path`` for its tissue branch (an error names the file when
    it has none that predicts from the tissue view alone)."""
    from ..errors import InputError
    from ..models.checkpoint import from_pretrained, resolve_checkpoint

    ckpt = resolve_checkpoint(path)
    model = from_pretrained(ckpt, map_location=device)
    if not getattr(model, "tissue_standalone", False):
        raise InputError(ckpt, "this checkpoint has no tissue branch that predicts from the tissue view alone")
    return model


def run(args: argparse.Namespace) -> int:
    from ..atomic import check_output
    from ..data.open import open_dataset, pick_split
    from ..errors import InputError
    from ..inference.engines import resolve_engine
    from ..inference.predictor import Predictor, pair_from_images
    from ..training.loop import resolve_device

    if not (args.out or args.csv or args.table):
        raise InputError(None, "give at least one output: --out P.json, --csv DIR or --table T.csv")
    if bool(args.data) == bool(args.cell_image):
        raise InputError(None, "give either --data DIR or --cell-image with --tissue-image")
    if args.cell_image and not args.tissue_image:
        raise InputError(None, "--cell-image needs --tissue-image")
    for path, kind in ((args.out, "file"), (args.csv, "folder"), (args.table, "file")):
        if path:
            check_output(path, kind)  # before the model runs
    device = resolve_device(args.device)
    size = "train" if args.size is None else (None if args.size == "native" else args.size)
    if args.tissue_checkpoint and not args.fusion:
        raise InputError(args.tissue_checkpoint, "--tissue-checkpoint is used by --fusion only")
    tissue_model = load_tissue_model(args.tissue_checkpoint, device) if args.tissue_checkpoint else None
    try:  # Predictor asks the model whether --size fits it
        pred = Predictor.from_checkpoints(args.checkpoint, device=device, size=size, tta=args.tta,
                                          batch_size=args.batch_size, num_workers=args.num_workers,
                                          engine=resolve_engine(args.engine, device), compile=args.compile,
                                          fusion=args.fusion, tissue_model=tissue_model)
    except InputError:
        raise
    except ValueError as e:
        raise InputError(args.checkpoint[0], str(e)) from e
    changes = {k: v for k, v in (("min_distance_um", args.min_distance_um), ("threshold", args.threshold),
                                 ("nms_radius_um", args.nms_radius_um)) if v is not None}
    pred.peak_cfg = dataclasses.replace(pred.peak_cfg, **changes)
    if args.data:
        ds = open_dataset(args.data, allow_outside_paths=args.allow_outside_paths)
        split = ds.split(pick_split(ds, args.split, Path(args.data)))
        result = pred.predict_split(split, progress=not args.no_progress)
    else:
        pair = pair_from_images(args.cell_image, args.tissue_image, tuple(args.offset), args.cell_mpp, args.tissue_mpp,
                                pair_id=Path(args.cell_image).stem, tissue_mask=args.tissue_mask)
        result = pred.predict_split([pair])
    if len(result) == 0:
        print(f"[predict] warning: {args.data or args.cell_image}: no pairs to predict (an empty split?); "
              "the outputs hold no images", file=sys.stderr)
    written = {}
    if args.out:
        written["challenge_json"] = str(result.write_challenge_json(args.out))
    if args.csv:
        written["csv_folder"] = str(result.write_csv_folder(args.csv))
    if args.table:
        written["table"] = str(result.write_table(args.table))
    per_class = {name: 0 for name in result.classes.names}
    for pts in result.points.values():
        for c in pts.cls.tolist():
            per_class[result.classes.name(c)] += 1
    summary = {"images": len(result), "detections": sum(per_class.values()), "per_class": per_class,
               "size": pred.size, "tta": len(pred.transforms) > 1, "engine": pred.engine,
               "checkpoints": len(args.checkpoint), "fusion": args.fusion, "outputs": written}
    if args.json:
        print_json(summary)
    else:
        for v in written.values():
            print(f"[predict] wrote {v}", file=sys.stderr)
        print(f"{summary['images']} images, {summary['detections']} detections ({per_class})")
    return 0
