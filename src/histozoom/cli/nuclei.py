"""``histozoom nuclei``: nuclei instance segmentation and classification (CHR-Net tasks).

Examples::

    histozoom nuclei synth TILES --n 100
    histozoom nuclei synth slide S.tiff --width-mm 1 --height-mm 1 --seed 0
    histozoom nuclei train --data TILES --model chrnet --out RUN --epochs 50
    histozoom nuclei predict --checkpoint RUN --input TILES --split test --out PRED
    histozoom nuclei evaluate --pred PRED_DIR --gt GT_DIR
    histozoom nuclei evaluate --pred PRED_DIR --gt CoNSeP/Test --classes consep --json
    histozoom nuclei evaluate --pred P --gt G --classes classes.json --missing empty --out results

Sub-subcommands are registered by the functions in :data:`REGISTRARS`: each takes the
``nuclei`` sub-parsers action, adds one parser and sets ``func(args) -> int``. To add a
sub-subcommand (e.g. ``train``, ``predict``), write ``_register_NAME(nsub)`` and a
``_run_NAME(args)`` and append the registrar to :data:`REGISTRARS`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from ..constants import MISSING_MODES, OUTPUT_FORMATS
from ._common import (
    MAX_BATCH_SIZE,
    MAX_COUNT,
    MAX_EPOCHS,
    MAX_LR,
    MAX_SIDE,
    MAX_SYNTH,
    MAX_WORKERS,
    add_engine_argument,
    key_value,
    mpp,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    print_json,
    seed,
)
from ._static import MODEL_NAMES, SIZE_MULTIPLES_TEXT


def _log(cmd: str, msg: str) -> None:
    print(f"[nuclei {cmd}] {msg}", file=sys.stderr)


# ====================================================================== evaluate
def _match_iou(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (0.5 <= v < 1.0):
        raise argparse.ArgumentTypeError(f"must be in [0.5, 1) so that matches are unique, got {v}")
    return v


def _register_evaluate(nsub: argparse._SubParsersAction) -> None:
    p = nsub.add_parser(
        "evaluate",
        help="score nuclei instance maps: Dice, AJI, AJI+, DQ/SQ/PQ, per-class PQ and aPQ",
        description=(
            "Score predicted nuclei label files against ground-truth files of the same names: "
            "CoNSeP-style .mat with inst_map and type_map and/or inst_type (a CoNSeP root with masks/ works too; "
            ".npy instance maps, optionally (H, W, 2) with a type map, are accepted). Overall scores are given "
            "as the mean over images (HoVer-Net convention) and pooled over the dataset."
        ),
    )
    p.add_argument("--pred", required=True, metavar="DIR",
                   help="folder of predicted label files (.mat), or a slide's output (OUT/<slide>/ or its nuclei.parquet)")
    p.add_argument("--gt", required=True, metavar="DIR",
                   help="folder of ground-truth label files (.mat) of the same names; for a slide, its ground truth "
                        "(OUT.nuclei.parquet, or the synthetic OUT.tiff next to it)")
    p.add_argument("--classes", metavar="FILE",
                   help="class names file (a list of names, {id: name}, or {'classes': ...}; JSON or YAML) or 'consep'; "
                        "fixes the scored classes. Default: every class id found in the data, named by its id")
    p.add_argument("--match-iou", type=_match_iou, default=0.5, metavar="T",
                   help="PQ true positives need IoU > T (default %(default)s; in [0.5, 1))")
    p.add_argument("--missing", choices=MISSING_MODES, default="error",
                   help="a ground-truth file without a prediction: error (default) or score it as an empty prediction")
    p.add_argument("--out", metavar="DIR", help="write scores.json and per_image.csv here")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of tables")
    p.set_defaults(func=_run_evaluate)


def _is_slide_output(path: str) -> bool:
    from pathlib import Path

    p = Path(path)
    return p.suffix == ".parquet" or (p / "nuclei.parquet").is_file()


def _run_slide_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..atomic import write_json
    from ..evaluation.slide_nuclei import evaluate_slide_nuclei

    scores = evaluate_slide_nuclei(args.pred, args.gt, match_iou=args.match_iou)
    if args.out:
        path = Path(args.out) / "scores.json"
        write_json(path, scores.to_dict())
        _log("evaluate", f"wrote {path}")
    if args.json:
        print_json(scores.to_dict())
    else:
        print(scores.table())
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from ..atomic import check_output
    from ..evaluation.nuclei import evaluate_nuclei

    if args.out:
        check_output(args.out, "folder")  # before the scoring
    if _is_slide_output(args.pred):
        return _run_slide_evaluate(args)
    ev = evaluate_nuclei(args.pred, args.gt, classes=args.classes, match_iou=args.match_iou, missing=args.missing)
    if args.out:
        for path in ev.write(args.out):
            _log("evaluate", f"wrote {path}")
    if args.json:
        print_json(ev.to_dict())
        for w in ev.warnings:
            _log("evaluate", f"warning: {w}")
    else:
        print(ev.tables())
    return 0


# ====================================================================== synth
MAX_NUCLEI_SLIDE_MM = 20.0  # histozoom.data.nuclei.synthetic_slide.MAX_SIDE_MM (not imported: register must stay cheap)


def _register_synth(nsub: argparse._SubParsersAction) -> None:
    from .synth import SLIDE_MODE, _route_first_argument

    p = nsub.add_parser(
        "synth", help="write a synthetic ccRCC grading set (ISUP nucleoli rule; train/val/test 70/10/20)",
        description=("Write synthetic ccRCC nuclei grading tiles (ISUP nucleoli rule) in the plain folder layout, "
                     f"split train/val/test 70/10/20. '... nuclei synth {SLIDE_MODE} OUT.tiff ...' writes a synthetic "
                     f"whole slide with ground-truth nuclei instead (see '... nuclei synth {SLIDE_MODE} --help')."),
    )
    p.add_argument("out", metavar="OUT", help="output folder (plain layout with classes.json)")
    p.add_argument("--n", type=positive_int(MAX_SYNTH), default=100, help="number of tiles (default %(default)s)")
    p.add_argument("--size", type=positive_int(MAX_SIDE), default=256, help="tile side in px at 0.25 um/px (default %(default)s)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_run_synth)
    _route_first_argument(p, SLIDE_MODE, _synth_slide_parser(p.prog))


def _synth_slide_parser(prog: str) -> argparse.ArgumentParser:
    from .synth import SLIDE_MODE

    p = argparse.ArgumentParser(
        prog=f"{prog} {SLIDE_MODE}",
        description=("Write a synthetic ccRCC whole-slide image drawn with the grading tiles' nucleus model: cancer "
                     "regions (clear-cell tumour, G1/G2/G3 and endothelial nuclei, high-grade foci) and stroma "
                     "(sparse endothelial nuclei). Outputs: OUT.tiff (pyramidal TIFF that OpenSlide reads, with "
                     "the mpp), OUT.nuclei.parquet (one row per visible nucleus with its exact level-0 mask, class "
                     "1 G1, 2 G2, 3 G3, 4 endothelial, tissue 1 stroma, 2 cancer), OUT.nuclei.geojson (QuPath), "
                     "OUT.regions.png (tissue labels on the region grid) and OUT.slide.json (summary)."),
    )
    p.add_argument("out", metavar="OUT.tiff", help="output slide (.tif, .tiff or .svs); the ground truth goes next to it")
    p.add_argument("--width-mm", type=positive_float(MAX_NUCLEI_SLIDE_MM), default=1.0, metavar="MM",
                   help="slide width in mm (default %(default)s)")
    p.add_argument("--height-mm", type=positive_float(MAX_NUCLEI_SLIDE_MM), default=1.0, metavar="MM",
                   help="slide height in mm (default %(default)s)")
    p.add_argument("--mpp", type=mpp, default=0.25, metavar="UM", help="level-0 µm/px, 0.1-1 (default %(default)s)")
    p.add_argument("--seed", type=seed, default=0, help="random seed (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    p.set_defaults(func=_run_synth_slide)
    return p


def _run_synth(args: argparse.Namespace) -> int:
    from ..data.nuclei.synthetic import NucleiSynthConfig, write_synthetic_nuclei

    root = write_synthetic_nuclei(args.out, args.n, args.seed, NucleiSynthConfig(size=args.size),
                                  overwrite=args.overwrite)
    _log("synth", f"wrote {args.n} tiles to {root}")
    return 0


def _run_synth_slide(args: argparse.Namespace) -> int:
    import time

    from ..data.nuclei.synthetic_slide import NucleiSlideSynthConfig, write_synthetic_nuclei_slide

    cfg = NucleiSlideSynthConfig(width_mm=args.width_mm, height_mm=args.height_mm, mpp=args.mpp, seed=args.seed)
    t0 = time.perf_counter()
    summary = write_synthetic_nuclei_slide(args.out, cfg, overwrite=args.overwrite)
    seconds = time.perf_counter() - t0
    if args.json:
        print_json({"out": str(args.out), "seconds": seconds, **summary})
        return 0
    counts = ", ".join(f"{k} {v}" for k, v in summary["nuclei_per_class"].items())
    print(f"wrote {summary['width_px']}x{summary['height_px']} px nuclei slide ({summary['width_mm']:g} x "
          f"{summary['height_mm']:g} mm at {cfg.mpp:g} µm/px, {len(summary['levels'])} levels) to {args.out} in "
          f"{seconds:.1f} s: {summary['n_nuclei']} nuclei ({counts}), cancer {summary['cancer_fraction']:.2f}")
    return 0


# ====================================================================== train
_TRAIN_FIELDS = ("data", "model", "epochs", "stop_after", "crop", "batch_size", "lr", "weight_decay", "seed", "device",
                 "num_workers", "bn_recalibration", "freeze_encoder_epochs", "max_train_batches")


def _register_train(nsub: argparse._SubParsersAction) -> None:
    p = nsub.add_parser("train", help="train CHR-Net or a baseline (resumable; best epoch by validation aPQ)")
    p.add_argument("--data", metavar="DIR", help="nuclei dataset with train/val/test splits (e.g. from nuclei synth)")
    p.add_argument("--model", metavar="NAME",
                   help="chrnet (default), chrnet-shr, chrnet-mhr, chrnet-mhr-udist, chrnet-mhr-wdist, unet-nuclei "
                        f"(registered: {', '.join(MODEL_NAMES['nuclei'])})")
    p.add_argument("--out", required=True, metavar="RUN", help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN from its last finished epoch")
    p.add_argument("--epochs", type=positive_int(MAX_EPOCHS), help="epochs (default 50)")
    p.add_argument("--stop-after", type=positive_int(MAX_EPOCHS), metavar="E",
                   help="stop after epoch E (continue later with --resume)")
    p.add_argument("--crop", type=positive_int(MAX_SIDE), metavar="PX",
                   help="random training crops of PX px (a multiple of the model's size multiple: "
                        f"{SIZE_MULTIPLES_TEXT['nuclei']}; default 256)")
    p.add_argument("--batch-size", type=positive_int(MAX_BATCH_SIZE), help="batch size (default 4)")
    p.add_argument("--lr", type=positive_float(MAX_LR), help="Adam learning rate (default 1e-4, x0.1 half way)")
    p.add_argument("--weight-decay", type=nonnegative_float(1.0))
    p.add_argument("--freeze-encoder-epochs", type=nonnegative_int(MAX_EPOCHS), metavar="E",
                   help="keep the encoder frozen for E epochs")
    p.add_argument("--bn-recalibration", type=nonnegative_int(MAX_COUNT), metavar="B",
                   help="re-estimate BatchNorm statistics before validation")
    p.add_argument("--model-arg", type=key_value, action="append", metavar="KEY=VALUE",
                   help="model config override, e.g. encoder_name=resnet18")
    p.add_argument("--loss-weight", type=key_value, action="append", metavar="TERM=W",
                   help="loss weight: bc, dist, mc1, mc2, mcf")
    p.add_argument("--seed", type=seed)
    p.add_argument("--device", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--num-workers", type=nonnegative_int(MAX_WORKERS))
    p.add_argument("--max-train-batches", type=positive_int(MAX_COUNT), help="at most this many batches per epoch (smoke tests)")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-tensorboard", action="store_true")
    p.add_argument("--json", action="store_true", help="print the final summary as JSON on stdout")
    p.set_defaults(func=_run_train)


def _train_config(args: argparse.Namespace):
    from pathlib import Path

    from ..training.nuclei_trainer import NUCLEI_CONFIG_FILE, NucleiTrainConfig

    saved = Path(args.out) / NUCLEI_CONFIG_FILE
    cfg = NucleiTrainConfig.load(saved) if (args.resume and saved.is_file()) else NucleiTrainConfig()
    changes = {f: getattr(args, f) for f in _TRAIN_FIELDS if getattr(args, f) is not None}
    for flag, name in (("no_augment", "augment"), ("no_progress", "progress"), ("no_tensorboard", "tensorboard")):
        if getattr(args, flag):
            changes[name] = False
    if args.model_arg:
        changes["model_overrides"] = {**cfg.model_overrides, **dict(args.model_arg)}
    if args.loss_weight:
        changes["loss_weights"] = {**cfg.loss_weights, **{k: float(v) for k, v in args.loss_weight}}
    return cfg.replace(**changes)


def _run_train(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..training.nuclei_trainer import train_nuclei

    try:
        cfg = _train_config(args)
    except ValueError as e:
        raise InputError(None, str(e)) from e
    if not cfg.data:
        raise InputError(None, "--data is required (or a saved run that names it)")
    summary = train_nuclei(cfg, args.out, resume=args.resume, log=lambda msg: _log("train", msg))
    if args.json:
        print_json(summary)
    else:
        val, test = summary.get("val") or {}, summary.get("test") or {}
        print(f"{summary['run']}: epochs {summary['epochs_done']}/{summary['epochs']}, best epoch {summary['best_epoch']}"
              + (f", val aPQ {val['aPQ']:.4f}" if val.get("aPQ") is not None else "")
              + (f", test aPQ {test['aPQ']:.4f} PQ {test['PQ']:.4f}" if test.get("aPQ") is not None else ""))
    return 0


# ====================================================================== predict
def _register_predict(nsub: argparse._SubParsersAction) -> None:
    p = nsub.add_parser("predict", help="nuclei instances + classes of images: instance maps, tables, QuPath GeoJSON")
    p.add_argument("--checkpoint", required=True, metavar="RUN", help="training run folder or checkpoint folder")
    p.add_argument("--input", required=True, metavar="PATH",
                   help="an image file, a folder of images, or a nuclei dataset (with --split)")
    p.add_argument("--split", help="split of a nuclei dataset (e.g. test)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (one file per image and format)")
    p.add_argument("--formats", default="npy,csv,geojson,mat",
                   help=f"comma-separated, from {','.join(OUTPUT_FORMATS)} (default %(default)s)")
    p.add_argument("--tta", action="store_true", help="average the maps over the 8 flips/rotations")
    p.add_argument("--device", default="cpu")
    add_engine_argument(p)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print a JSON summary (nuclei per image and class)")
    p.set_defaults(func=_run_predict)


def _images(path: str, split: str | None):
    """``(id, image)`` pairs of an image file, a folder of images, or a nuclei dataset split."""
    from pathlib import Path

    from ..data.io import read_rgb
    from ..data.nuclei.dataset import open_nuclei
    from ..data.nuclei.records import IMAGE_EXTS
    from ..errors import InputError

    p = Path(path)
    if p.is_file():
        return [(p.stem, lambda: read_rgb(p))]
    if not p.is_dir():
        raise InputError(p, "not found")
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS)
    if split is None and files:
        return [(f.stem, (lambda f=f: read_rgb(f))) for f in files]
    ds = open_nuclei(p, split)
    return [(i, (lambda i=i: ds[i].image)) for i in ds.ids]


def _run_predict(args: argparse.Namespace) -> int:
    from ..atomic import check_output
    from ..errors import InputError
    from ..inference.nuclei_predictor import OUTPUT_FORMATS, NucleiPredictor

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in OUTPUT_FORMATS]
    if bad:
        raise InputError(None, f"unknown --formats {bad}; choose from {list(OUTPUT_FORMATS)}")
    check_output(args.out, "folder")  # before the model runs
    from ..inference.engines import resolve_engine

    predictor = NucleiPredictor.from_checkpoint(args.checkpoint, device=args.device, tta=args.tta,
                                                engine=resolve_engine(args.engine, args.device), compile=args.compile)
    items = _images(args.input, args.split)
    if not items:
        raise InputError(args.input, "no images found")
    it = items
    if not args.no_progress:
        from tqdm.auto import tqdm

        it = tqdm(items, desc="predict")
    rows = []
    names = predictor.classes
    for sample_id, load in it:
        image = load()
        pred = predictor.predict(image, sample_id)
        pred.write(args.out, formats, image=image)
        counts = {n: 0 for n in names.names}
        for c in pred.inst_class.values():
            counts[names.name(c)] += 1
        rows.append({"id": sample_id, "n_nuclei": pred.n_instances, "per_class": counts})
    summary = {"checkpoint": str(args.checkpoint), "out": str(args.out), "formats": formats, "images": rows}
    if args.json:
        print_json(summary)
    else:
        for r in rows:
            print(f"{r['id']}: {r['n_nuclei']} nuclei " + ", ".join(f"{k} {v}" for k, v in r["per_class"].items()))
    return 0


# ====================================================================== slide predict
def _register_slide(nsub: argparse._SubParsersAction) -> None:
    from .slide import add_slide_arguments

    p = nsub.add_parser("slide", help="whole-slide nuclei grading (CHR-Net inside the cancer area)")
    ssub = p.add_subparsers(dest="nuclei_slide_command", required=True, metavar="SLIDE_COMMAND")
    q = ssub.add_parser(
        "predict", help="segment and grade every nucleus of whole slides",
        description=("Nuclei instances and grades over whole slides, at the checkpoint's µm/px (400x); with "
                     "--tissue-checkpoint (an OCELOT model with a tissue branch) the cancer area comes from its "
                     "tissue branch and grading statistics are given inside it. Per slide OUT/<stem>/ gets "
                     "nuclei.parquet, nuclei.geojson (QuPath), nuclei.csv on request, summary.json (grade shares, "
                     "the slide grade by the highest grade in N nuclei of one high-power field) and grades.png. "
                     "A run started again resumes."))
    add_slide_arguments(q, "nucleus")
    q.add_argument("--tissue-checkpoint", metavar="RUN2", help="OCELOT checkpoint whose tissue branch finds the cancer area")
    q.add_argument("--tile", type=positive_int(MAX_SIDE), metavar="PX", help="tile side in px (default 512)")
    q.add_argument("--margin", type=nonnegative_int(MAX_SIDE), metavar="PX",
                   help="px of each tile's border owned by its neighbours (default 64; tiles overlap by twice this)")
    q.add_argument("--grade-min-nuclei", type=positive_int(MAX_COUNT), default=10, metavar="N",
                   help="nuclei of a grade one high-power field needs for the slide grade (default %(default)s)")
    q.add_argument("--hpf-mm2", type=positive_float(100.0), default=0.237, metavar="A",
                   help="area of one high-power field in mm² (default %(default)s)")
    q.set_defaults(func=_run_slide)


def _run_slide(args: argparse.Namespace) -> int:
    from ..atomic import check_output
    from ..evaluation.grading import GradingRule
    from ..inference.engines import resolve_engine
    from ..slides.nuclei import NucleiSlidePredictor
    from .slide import run_slides, slide_options

    check_output(args.out, "folder")
    rule = GradingRule(field_mm2=args.hpf_mm2, min_nuclei=args.grade_min_nuclei)
    sp = NucleiSlidePredictor.from_checkpoint(args.checkpoint, tissue_checkpoint=args.tissue_checkpoint,
                                              device=args.device, tile=args.tile, margin=args.margin, grading=rule,
                                              engine=resolve_engine(args.engine, args.device), compile=args.compile)
    return run_slides(sp, args, slide_options(args), "nuclei slide")


# ====================================================================== registration
REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = [
    _register_synth,
    _register_train,
    _register_predict,
    _register_evaluate,
    _register_slide,
]
"""One function per sub-subcommand of ``histozoom nuclei``, called in this order."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "nuclei",
        help="nuclei instance segmentation and grading (CHR-Net): synth, train, predict, evaluate",
        description=__doc__.splitlines()[0],
    )
    nsub = p.add_subparsers(dest="nuclei_command", required=True, metavar="SUBCOMMAND")
    for registrar in REGISTRARS:
        registrar(nsub)
