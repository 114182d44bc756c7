"""What every whole-slide pass shares, whatever the model: where to look, reading ahead,
the resume journal, timing, and the loop over many slides.

A slide predictor (cells: :class:`~.runner.SlidePredictor`; nuclei:
:class:`~.nuclei.NucleiSlidePredictor`) runs one slide as

1. :func:`find_region`: the tissue mask on a thumbnail (∩ ``roi``) and the tiles of a
   :class:`~.tiling.TileGrid` whose core meets it;
2. :func:`start_work`: ``OUT/<slide>/.work/`` with ``plan.json``; a folder started with
   the same plan is kept, which is how an interrupted slide resumes;
3. passes over batches of tiles (:func:`batches`, fixed boundaries, so resumed results are
   identical), reading ahead with :func:`prefetch`, timing the model with :class:`ModelClock`;
   each batch's results go to ``.work/parts/bNNNNNN.parquet`` (atomic) — the journal;
4. the predictor's own outputs, ``summary.json`` written last (a slide with it is done).

:func:`predict_slides` runs many slides through any such predictor, skipping finished ones.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from ..atomic import atomic_open, write_json
from ..errors import InputError
from .reader import Slide
from .tiling import TileGrid
from .tissue import roi_mask, thumbnail_mpp, tissue_mask

__all__ = ["FORMATS", "UPSAMPLE_LIMIT", "ModelClock", "Prepared", "Region", "SlideOptions", "SlidePass", "SlideRunner",
           "TilePass", "batches", "finish_prepared", "pass_jobs", "run_pass", "run_slide", "slide_pass", "tile_batch_size",
           "check_resolution", "find_region", "predict_slides", "prefetch", "progress", "shard_of", "slide_inputs",
           "start_work"]

AUTO_CPU_BATCH = 8
"""``batch_size=0`` (auto) on a CPU, and for the tissue pass."""
UPSAMPLE_LIMIT = 1.5
"""A slide whose level 0 is coarser than the model's finest view by more than this factor
is refused unless ``allow_upsample``."""
FORMATS = ("parquet", "geojson", "csv")
Context = Literal["auto", "shared", "per-tile"]


@dataclass(frozen=True)
class SlideOptions:
    """How to run one slide. ``mpp``: level-0 µm/px (overrides or supplies the file's);
    ``roi``: GeoJSON or mask image limiting the region; ``formats``: of :data:`FORMATS`
    (``summary.json`` is always written); ``images``: the PNG figures; ``context`` (cell
    models only): ``"auto"`` (the model's kind decides) or ``"per-tile"`` to force per-pair
    context reading."""

    mpp: float | None = None
    allow_upsample: bool = False
    roi: str | Path | None = None
    batch_size: int = 8
    """Tiles per batch; 0: sized from the free GPU memory (:func:`tile_batch_size`), :data:`AUTO_CPU_BATCH` on a CPU."""
    workers: int = 2
    formats: tuple[str, ...] = ("parquet", "geojson")
    progress: bool = True
    context: Context = "auto"
    images: bool = True
    run_key: dict | None = field(default=None, compare=False)
    """Recorded in ``summary.json``; :func:`predict_slides` compares it to skip finished slides."""

    def __post_init__(self):
        bad = [f for f in self.formats if f not in FORMATS]
        if bad:
            raise ValueError(f"unknown output formats {bad}; choose from {list(FORMATS)}")
        if self.batch_size < 0 or self.workers < 0:
            raise ValueError("batch_size must be ≥ 1 (or 0: auto) and workers ≥ 0")

    @property
    def fixed_batch_size(self) -> int:
        """The batch size where one must be fixed before the model is measured (the tissue pass)."""
        return self.batch_size or AUTO_CPU_BATCH


def check_resolution(slide: Slide, model_mpp: float, options: SlideOptions, what: str = "the model's view") -> None:
    """Refuse a slide more than :data:`UPSAMPLE_LIMIT` times coarser than ``model_mpp``
    unless ``options.allow_upsample``."""
    ratio = slide.mpp / model_mpp
    if ratio > UPSAMPLE_LIMIT and not options.allow_upsample:
        raise InputError(slide.path, f"the slide's {slide.mpp:g} µm/px is {ratio:.2f}× coarser than {what} "
                                     f"({model_mpp:g} µm/px); pass --allow-upsample to run it anyway")


# ---------------------------------------------------------------------- where
@dataclass
class Region:
    """Where a slide run looks: the thumbnail (``thumb_mpp`` µm/px, ``thumb_scale`` level-0
    px per thumbnail px), its tissue (∩ ROI) ``mask``, the tile ``grid`` and the chosen ``tiles``."""

    thumb: np.ndarray
    thumb_mpp: float
    thumb_scale: float
    mask: np.ndarray
    grid: TileGrid | None
    tiles: list[int] = field(default_factory=list)

    @property
    def tissue_mm2(self) -> float:
        return float(self.mask.sum()) * (self.thumb_mpp / 1000) ** 2


def find_region(slide: Slide, options: SlideOptions, tile_mpp: float, tile: int, margin: int) -> Region:
    """Tissue on the thumbnail (∩ ``options.roi``) and the tiles of ``tile`` px at
    ``tile_mpp`` with ``margin`` whose core meets it."""
    tmpp = thumbnail_mpp(slide.mpp, slide.dimensions)
    thumb = slide.thumbnail(tmpp)
    scale = tmpp / slide.mpp
    mask = tissue_mask(thumb, tmpp)
    if options.roi is not None:
        mask &= roi_mask(options.roi, slide.dimensions, scale, mask.shape)
    region = Region(thumb, tmpp, scale, mask, None)
    if not mask.any():
        return region
    rows, cols = np.nonzero(mask)
    w0, h0 = slide.dimensions
    # the thumbnail's size is floored: its last row and column reach the slide's edge
    right = w0 if cols.max() == mask.shape[1] - 1 else min(w0, (cols.max() + 1) * scale)
    bottom = h0 if rows.max() == mask.shape[0] - 1 else min(h0, (rows.max() + 1) * scale)
    box = (cols.min() * scale, rows.min() * scale, right, bottom)
    region.grid = TileGrid.covering(box, tile_mpp / slide.mpp, tile, margin)
    region.tiles = region.grid.select(mask, scale)
    return region


def in_region(region: Region, x: np.ndarray, y: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Which level-0 pixel centres ``(x, y)`` lie on the slide (``size`` = (width, height))
    and on the region's mask (tissue ∩ ROI, thumbnail resolution): tiles reach past the
    region and the slide, and what is found there (on glass, outside the ROI) is dropped."""
    from .tiling import mask_index

    on_slide = (x >= 0) & (y >= 0) & (x <= size[0] - 1) & (y <= size[1] - 1)
    h, w = region.mask.shape
    c, r = mask_index(x + 0.5, region.thumb_scale, w), mask_index(y + 0.5, region.thumb_scale, h)
    keep = np.zeros(len(x), bool)
    keep[on_slide] = region.mask[r[on_slide], c[on_slide]]
    return keep


# ---------------------------------------------------------------------- the journal
def start_work(work: Path, plan: dict) -> None:
    """Keep ``work`` when it was started with the same plan (resume), else start afresh."""
    plan_file = work / "plan.json"
    if plan_file.is_file():
        try:
            same = json.loads(plan_file.read_text()) == json.loads(json.dumps(plan))
        except (OSError, json.JSONDecodeError):
            same = False
        if same:
            return
    shutil.rmtree(work, ignore_errors=True)
    (work / "parts").mkdir(parents=True, exist_ok=True)
    write_json(plan_file, plan)


def batches(items: Sequence[int], size: int) -> list[list[int]]:
    """``items`` cut into consecutive batches of ``size`` (the last may be shorter)."""
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def part_path(work: Path, b: int) -> Path:
    return work / "parts" / f"b{b:06d}.parquet"


def parts(work: Path) -> list[Path]:
    """The finished batch parts, in batch order."""
    return sorted((work / "parts").glob("b*.parquet"))


# ---------------------------------------------------------------------- reading ahead, progress, timing
def prefetch(jobs: list, read: Callable[[Any], Any], workers: int) -> Iterator[tuple[Any, Any]]:
    """``(job, read(job))`` in order, with up to ``2·workers`` reads in flight (``workers``
    threads; 0 reads in the calling thread)."""
    if workers == 0:
        for job in jobs:
            yield job, read(job)
        return
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="histozoom-read") as pool:
        pending: list = []
        it = iter(jobs)
        for job in it:
            pending.append((job, pool.submit(read, job)))
            if len(pending) >= 2 * workers:
                break
        while pending:
            job, fut = pending.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(read, nxt)))
            yield job, fut.result()


def progress(items, options: SlideOptions, desc: str, total: int):
    """``items`` with a tqdm bar unless ``options.progress`` is off."""
    if not options.progress:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True)


class ModelClock:
    """Runs model calls under ``torch.inference_mode`` (and ``autocast``, a context-manager
    factory) and adds their wall time to ``seconds`` (synchronising CUDA first)."""

    def __init__(self, device, autocast: Callable[[], Any] | None = None):
        from contextlib import nullcontext

        self.device = device
        self.autocast = autocast or nullcontext
        self.seconds = 0.0

    def __call__(self, fn: Callable, *args):
        import torch

        t0 = time.perf_counter()
        with torch.inference_mode(), self.autocast():
            out = fn(*args)
        if getattr(self.device, "type", str(self.device)) == "cuda":
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - t0
        return out


def decode_behind(jobs: Iterator[tuple[Any, Any]], forward: Callable[[Any, Any], Any],
                  decode: Callable[[Any, Any], None]) -> None:
    """For each ``(job, inputs)``: ``forward(job, inputs)`` in this thread, then
    ``decode(job, result)`` in one background thread while the next forward runs (at most
    one decode in flight, so results are written in order)."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="histozoom-decode") as decoder:
        pending = None
        for job, inputs in jobs:
            result = forward(job, inputs)
            if pending is not None:
                pending.result()
            pending = decoder.submit(decode, job, result)
        if pending is not None:
            pending.result()


# ---------------------------------------------------------------------- one slide's tile pass
@dataclass
class SlidePass:
    """A slide prepared for its pass over tiles, picklable so that batches can run in
    other processes (:mod:`.ray_run`): the slide file and the level-0 µm/px it was opened
    with, the ``work`` folder (journal), the tile ``grid``, the fixed batches of tile
    indices (``groups``) and those not yet written (``todo``), the runner's ``context``
    (cells: "none", "shared", "per-tile") and the stitched tissue map's
    :meth:`~.tissue_map.TissueMap.spec` (``None``: no map)."""

    slide: str
    mpp: float
    work: Path
    grid: TileGrid
    groups: list[list[int]]
    todo: list[int]
    context: str = ""
    tissue_map: dict | None = None

    def open_tissue_map(self):
        from .tissue_map import TissueMap

        return None if self.tissue_map is None else TissueMap(**self.tissue_map)


@dataclass
class Prepared:
    """What a runner's ``prepare`` leaves for the pass and for ``finish``: the
    :class:`SlidePass`, the :class:`Region`, the journal's ``plan``, the open tissue map
    (or ``None``) and the model clock (seconds so far, the tissue pass's included)."""

    job: SlidePass
    region: Region
    plan: dict
    tmap: Any
    clock: ModelClock

    def close(self) -> None:
        if self.tmap is not None:
            self.tmap.close()
            self.tmap = None


class TilePass(Protocol):
    """A runner's three steps for one batch of tiles (``tiles``: indices into the grid):
    reading (``batch_reader()``: a picklable function of ``(slide, job, tmap, tiles)``
    without the model, run in reader threads or Ray tasks), ``forward_batch`` (the model,
    timed by ``clock``; ``new_clock()`` makes one) and ``write_batch`` (decode and write the
    journal part ``path``, atomically)."""

    def batch_reader(self) -> Callable[[Slide, SlidePass, Any, list[int]], Any]: ...

    def new_clock(self) -> ModelClock: ...

    def forward_batch(self, inputs: Any, job: SlidePass, clock: ModelClock) -> Any: ...

    def write_batch(self, path: Path, job: SlidePass, tmap: Any, tiles: list[int], result: Any) -> None: ...


def tile_batch_size(runner: TilePass, slide: Slide, job: SlidePass, tmap: Any, options: SlideOptions,
                    sample: Sequence[int]) -> int:
    """``options.batch_size``, or for 0 (auto) the largest batch of ``sample`` tiles (this
    slide's first ones) whose forward fits the free GPU memory (:func:`~histozoom.inference.device.fit_batch_size`;
    :data:`AUTO_CPU_BATCH` on a CPU). Kept in ``work/batch_size.json``, so a resumed slide
    keeps its batch boundaries whatever memory is free then."""
    if options.batch_size:
        return options.batch_size
    path = job.work / "batch_size.json"
    try:
        return int(json.loads(path.read_text())["batch_size"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    from ..inference.device import fit_batch_size

    read, sample = runner.batch_reader(), list(sample)
    size = AUTO_CPU_BATCH
    if sample:
        def run(n: int) -> None:
            runner.forward_batch(read(slide, job, tmap, [sample[i % len(sample)] for i in range(n)]), job, runner.new_clock())

        size = fit_batch_size(run, runner.new_clock().device, AUTO_CPU_BATCH)
    write_json(path, {"batch_size": size})
    return size


def slide_pass(runner: TilePass, slide: Slide, region: Region, work: Path, context: str, tmap: Any,
               options: SlideOptions) -> SlidePass:
    """The :class:`SlidePass` of a prepared slide: its batches (:func:`tile_batch_size`) and
    those still to do."""
    job = SlidePass(str(slide.path), slide.mpp, work, region.grid, [], [], context, None if tmap is None else tmap.spec())
    job.groups, job.todo = pass_jobs(work, region.tiles, tile_batch_size(runner, slide, job, tmap, options, region.tiles[:2]))
    return job


def pass_jobs(work: Path, tiles: Sequence[int], batch_size: int) -> tuple[list[list[int]], list[int]]:
    """The fixed batches of ``tiles`` and the indices of those without a journal part."""
    groups = batches(tiles, batch_size)
    return groups, [b for b in range(len(groups)) if not part_path(work, b).is_file()]


def run_slide(runner, slide: Slide, out_dir: Path, options: SlideOptions, desc: str) -> dict:
    """One open slide through a runner: ``prepare``, :func:`run_pass` here, then
    :func:`finish_prepared`. Returns the summary."""
    t_start = time.perf_counter()
    prep = runner.prepare(slide, out_dir, options)
    try:
        run_pass(runner, slide, prep, options, desc)
    except BaseException:
        prep.close()
        raise
    return finish_prepared(runner, slide, prep, out_dir, options, t_start)


def finish_prepared(runner, slide: Slide, prep: Prepared, out_dir: Path, options: SlideOptions, t_start: float) -> dict:
    """The runner's ``finish`` of a slide whose batches are all written (``t_start``: when
    the slide began, for its seconds); then the tissue map is closed and the journal removed."""
    try:
        summary = runner.finish(slide, prep, out_dir, options, time.perf_counter() - t_start)
    finally:
        prep.close()
    shutil.rmtree(prep.job.work, ignore_errors=True)
    return summary


def run_pass(runner: TilePass, slide: Slide, prep: Prepared, options: SlideOptions, desc: str) -> None:
    """The batches still to do, here: read ahead by ``options.workers`` threads, the model in
    this thread, decoding and writing in one thread beside it."""
    job, tmap, read = prep.job, prep.tmap, runner.batch_reader()
    reads = prefetch(job.todo, lambda b: read(slide, job, tmap, job.groups[b]), options.workers)
    decode_behind(progress(reads, options, desc, len(job.todo)),
                  lambda b, inputs: runner.forward_batch(inputs, job, prep.clock),
                  lambda b, result: runner.write_batch(part_path(job.work, b), job, tmap, job.groups[b], result))


# ---------------------------------------------------------------------- many slides
SLIDE_EXTS = (".svs", ".ndpi", ".mrxs", ".scn", ".tif", ".tiff", ".vms", ".vmu", ".bif", ".svslide", ".dcm",
              ".png", ".jpg", ".jpeg")
"""Files taken from a folder given as input (slides OpenSlide reads, and plain images)."""
LIST_EXTS = (".txt", ".lst")


def slide_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Slides from files, folders (their files with :data:`SLIDE_EXTS`, sorted) and list
    files (``.txt``/``.lst``: one path per line, relative to the list; ``#`` comments)."""
    out: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir() and item.suffix.lower() != ".mrxs":
            out += sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in SLIDE_EXTS)
        elif item.suffix.lower() in LIST_EXTS and item.is_file():
            for line in item.read_text(encoding="utf-8").splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    p = Path(line)
                    out.append(p if p.is_absolute() else item.parent / p)
        else:
            out.append(item)
    stems: dict[str, Path] = {}
    for p in out:
        if p.stem in stems:
            raise InputError(p, f"two slides named {p.stem!r} ({stems[p.stem]} and {p}); outputs go to OUT/<name>/")
        stems[p.stem] = p
    return out


class SlideRunner(Protocol):
    """What :func:`predict_slides` needs of a slide predictor."""

    TABLE_COLUMNS: tuple[str, ...]

    def run_key(self, slide: Path, options: SlideOptions) -> dict: ...

    def predict_slide(self, slide: Any, out_dir: str | Path, options: SlideOptions = ...) -> dict: ...

    def table_row(self, summary: dict) -> dict: ...

    def describe(self, summary: dict) -> str: ...


def shard_of(items: Sequence, shard: tuple[int, int] | None) -> list:
    """Shard ``(i, n)`` of ``items``: every ``n``-th item from the ``i``-th (``0 ≤ i < n``),
    so shards ``0 … n−1`` partition them; ``None``: all of them."""
    if shard is None:
        return list(items)
    i, n = shard
    if not 0 <= i < n:
        raise ValueError(f"shard {i}/{n}: the index must be in [0, {n})")
    return list(items[i::n])


ERROR_FILE = "error.json"
"""Written into a slide's folder when it fails under ``skip_errors`` (removed when it succeeds)."""


def _finished(folder: Path, key: dict) -> dict | None:
    """The slide's summary when it finished with ``key``, its error record when it failed, else None."""
    for name in ("summary.json", ERROR_FILE):
        try:
            old = json.loads((folder / name).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if old.get("run_key") == key:
            return old
    return None


def predict_slides(sp: SlideRunner, inputs: Sequence[str | Path], out: str | Path, options: SlideOptions = SlideOptions(),
                   skip_errors: bool = False, log=None, shard: tuple[int, int] | None = None, ray=None) -> list[dict]:
    """Run every slide of ``inputs`` (or of its ``shard``, :func:`shard_of`) into
    ``out/<stem>/``; slides finished with the same settings are skipped. A bad slide stops
    the run (its error names it) unless ``skip_errors``: then it is listed with status
    ``"error"`` (and ``out/<stem>/error.json``). ``out/slides.csv`` (the predictor's
    ``TABLE_COLUMNS``, one row per input slide: done, error, or ``pending`` when another
    shard has not finished it yet) is rewritten after each slide, so the shard that
    finishes last leaves the table of the whole run. ``ray``: a
    :class:`~.ray_run.RayOptions` to run the tiles of all slides on Ray (same outputs).
    Returns this run's summaries (errors as ``{slide, name, status, error}``)."""
    out = Path(out)
    every = slide_inputs(inputs)
    mine = shard_of(every, shard)
    keys = {p: sp.run_key(p, options) for p in every}
    results: dict[Path, dict] = {}

    def record(path: Path, summary: dict) -> None:
        results[path] = summary
        rows = []
        for p in every:
            s = results.get(p) or _finished(out / p.stem, keys[p]) or {"slide": str(p), "name": p.stem, "status": "pending"}
            rows.append(_row(sp, s))
        write_slides_table(out / "slides.csv", sp.TABLE_COLUMNS, rows)

    pending = []
    for path in mine:
        summary = _finished(out / path.stem, keys[path])
        if summary is not None and summary.get("status") == "done":
            if log:
                log(f"{path.name}: already done, skipped")
            record(path, {**summary, "skipped": True})
        else:
            pending.append((path, out / path.stem, replace(options, run_key=keys[path])))
    if ray is None:
        runs = ((path, functools.partial(sp.predict_slide, path, folder, opts)) for path, folder, opts in pending)
    else:
        from .ray_run import run_on_ray

        runs = run_on_ray(sp, pending, options, ray)
    for path, run in runs:
        folder = out / path.stem
        try:
            summary = run()
            (folder / ERROR_FILE).unlink(missing_ok=True)
        except InputError as e:
            if not skip_errors:
                raise
            summary = {"slide": str(path), "name": path.stem, "status": "error", "error": str(e), "run_key": keys[path]}
            folder.mkdir(parents=True, exist_ok=True)
            write_json(folder / ERROR_FILE, summary)
        if log:
            log(f"{path.name}: " + (sp.describe(summary) if summary.get("status") == "done"
                                    else f"{summary.get('status')}: {summary.get('error')}"))
        record(path, summary)
    return [results[p] for p in mine]


def _row(sp: SlideRunner, summary: dict) -> dict:
    base = {"slide": summary.get("name", summary.get("slide")), "status": summary.get("status"),
            "seconds": summary.get("seconds", ""), "error": summary.get("error", "")}
    return {**base, **(sp.table_row(summary) if summary.get("status") == "done" else {})}


def write_slides_table(path: Path, columns: Sequence[str], rows: list[dict]) -> None:
    """``slides.csv``: one row per slide, ``columns`` in order (missing values empty), atomically."""
    import csv

    with atomic_open(path, newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        for r in rows:
            w.writerow([_cell(r.get(c, "")) for c in columns])


def _cell(v: Any) -> Any:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else v
