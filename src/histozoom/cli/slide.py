"""``histozoom slide predict``: cell detection over whole slides (QuPath-ready outputs).

Examples::

    histozoom slide predict --checkpoint RUN --out OUT slide.svs
    histozoom slide predict --checkpoint RUN --out OUT slides/ --skip-errors --formats parquet,geojson,csv
    histozoom slide predict --checkpoint RUN --out OUT scan.png --mpp 0.25 --roi region.geojson --json

Per slide, ``OUT/<slide stem>/`` gets ``cells.parquet`` (x, y in level-0 pixels, µm,
class, probability, tissue class under the cell), ``cells.geojson`` (QuPath detections and
the predicted cancer area), ``cells.csv`` on request, ``summary.json`` (cells per class,
tumour purity overall and inside/outside the cancer area, tissue mm², seconds),
``purity.png`` and ``overlay.png``; ``OUT/slides.csv`` has one row per slide. A run
started again with the same command resumes: finished slides are skipped and a slide
cut off mid-way continues from its last finished batch of tiles.
"""

from __future__ import annotations

import argparse
import sys

from ._common import (
    MAX_BATCH_SIZE,
    MAX_WORKERS,
    add_engine_argument,
    mpp,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    print_json,
)

FORMATS = ("parquet", "geojson", "csv")


def _formats(text: str) -> tuple[str, ...]:
    items = tuple(f.strip().lower() for f in text.split(",") if f.strip())
    bad = [f for f in items if f not in FORMATS]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"formats are a comma-separated list of {', '.join(FORMATS)}; got {text!r}")
    return items


def _batch_size(text: str) -> int:
    """``auto`` → 0 (sized from the free GPU memory), else a positive count."""
    if text.strip().lower() == "auto":
        return 0
    return positive_int(MAX_BATCH_SIZE)(text)


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N (shard I of N, 0 <= I < N), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N, got {text!r}")
    return i, n


def add_slide_arguments(q: argparse.ArgumentParser, what: str, ensemble: bool = False) -> None:
    """The flags every slide command shares (``what``: what it finds, for the help texts;
    ``ensemble``: ``--checkpoint`` may be repeated)."""
    q.add_argument("inputs", nargs="+", metavar="SLIDE_OR_DIR_OR_LIST",
                   help="slide files, folders of slides, or .txt lists of slide paths")
    if ensemble:
        q.add_argument("--checkpoint", required=True, action="append", metavar="RUN",
                       help="training run folder or save_pretrained folder; repeat for an ensemble "
                            "(probability maps averaged before decoding)")
    else:
        q.add_argument("--checkpoint", required=True, metavar="RUN", help="training run folder or save_pretrained folder")
    q.add_argument("--out", required=True, metavar="DIR", help="output folder (one subfolder per slide)")
    q.add_argument("--mpp", type=mpp, metavar="UM", help="level-0 µm/px (for slides without it, or to override it)")
    q.add_argument("--allow-upsample", action="store_true",
                   help="run slides more than 1.5x coarser than the model's view (upsampled)")
    q.add_argument("--roi", metavar="FILE", help="region of interest: QuPath GeoJSON polygons or a mask image")
    q.add_argument("--batch-size", type=_batch_size, default=8, metavar="N|auto",
                   help="tiles per batch (default: 8; auto: as many as fit the free GPU memory, 8 on a CPU)")
    q.add_argument("--workers", type=nonnegative_int(MAX_WORKERS), default=2, metavar="N",
                   help="threads reading tiles ahead of the model (default: 2; 0 reads in the main thread)")
    q.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    add_engine_argument(q)
    q.add_argument("--skip-errors", action="store_true", help="go on past a broken slide; it is listed with its error")
    ray = q.add_argument_group("Ray (pip install 'histozoom[ray]')")
    ray.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                     help="run the tiles of all slides on Ray: no value starts a local Ray, 'auto' joins the running "
                          "cluster, or give its address; the output folder must be shared by the nodes")
    ray.add_argument("--ray-actors", type=positive_int(MAX_WORKERS), metavar="N",
                     help="model actors (default: one per GPU with --ray-gpus-per-actor, else per CPU of the cluster)")
    ray.add_argument("--ray-cpus-per-actor", type=positive_float(MAX_WORKERS), default=1.0, metavar="C",
                     help="CPUs of each model actor, rounded for its torch threads (default 1)")
    ray.add_argument("--ray-gpus-per-actor", type=nonnegative_float(64), default=0.0, metavar="G",
                     help="GPUs of each model actor (default 0; 1 with --device cuda, or 0.5 to share one)")
    q.add_argument("--shard", type=_shard, metavar="I/N",
                   help="run only every N-th slide from the I-th (0 <= I < N), e.g. I=$SLURM_ARRAY_TASK_ID: "
                        "N jobs with the same --out together run every slide once")
    q.add_argument("--formats", type=_formats, default=("parquet", "geojson"), metavar="LIST",
                   help=f"{what} outputs, comma-separated of parquet, geojson, csv (default: parquet,geojson)")
    q.add_argument("--no-images", action="store_true", help="skip the PNG figures")
    q.add_argument("--no-progress", action="store_true", help="no progress bars")
    q.add_argument("--json", action="store_true", help="print the per-slide summaries as one JSON document")


def slide_options(args: argparse.Namespace, **extra):
    """The :class:`~histozoom.slides.job.SlideOptions` of the shared flags."""
    from ..slides.job import SlideOptions

    return SlideOptions(mpp=args.mpp, allow_upsample=args.allow_upsample, roi=args.roi, batch_size=args.batch_size,
                        workers=args.workers, formats=args.formats, progress=not args.no_progress,
                        images=not args.no_images, **extra)


def run_slides(sp, args: argparse.Namespace, options, tag: str) -> int:
    """Run ``sp`` over the inputs; JSON or log lines; exit 2 when a slide failed."""
    from ..slides.job import predict_slides

    log = None if args.json else (lambda msg: print(f"[{tag}] {msg}", file=sys.stderr))
    ray = None
    if args.ray:
        from ..slides.ray_run import RayOptions

        ray = RayOptions(args.ray, args.ray_actors, args.ray_cpus_per_actor, args.ray_gpus_per_actor)
    results = predict_slides(sp, args.inputs, args.out, options, skip_errors=args.skip_errors, log=log, shard=args.shard,
                             ray=ray)
    if args.json:
        print_json({"slides": results})
    return 2 if any(r.get("status") == "error" for r in results) else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("slide", help="whole-slide inference (cell detection, QuPath GeoJSON, tumour purity)",
                       description=__doc__.splitlines()[0])
    slide_sub = p.add_subparsers(dest="slide_command", required=True, metavar="SLIDE_COMMAND")
    q = slide_sub.add_parser("predict", help="detect cells over whole slides", description=__doc__.splitlines()[0],
                             epilog="\n".join(__doc__.splitlines()[2:]), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_slide_arguments(q, "cell", ensemble=True)
    q.add_argument("--per-tile-context", action="store_true",
                   help="read each cell tile's tissue view from the pyramid instead of one shared tissue map")
    q.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    from ..atomic import check_output
    from ..inference.engines import resolve_engine
    from ..slides.runner import SlidePredictor

    check_output(args.out, "folder")
    sp = SlidePredictor.from_checkpoint(args.checkpoint, device=args.device, engine=resolve_engine(args.engine, args.device),
                                        compile=args.compile)
    return run_slides(sp, args, slide_options(args, context="per-tile" if args.per_tile_context else "auto"), "slide")
