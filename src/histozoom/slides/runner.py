"""Cell detection over whole slides: both magnifications from one pyramid.

>>> sp = SlidePredictor.from_checkpoint("RUN")
>>> summary = sp.predict_slide("slide.svs", "OUT/slide")     # cells.parquet, cells.geojson, summary.json …

Per slide (:meth:`SlidePredictor.predict_slide`):

1. **Where**: tissue on a thumbnail (:mod:`.tissue`), intersected with ``roi`` if given;
   the cell tiles (:class:`~.tiling.TileGrid`, the model's cell view size at its µm/px,
   margin ``cell_margin``) whose core meets it.
2. **Tissue context**, by the model's kind (:attr:`SlidePredictor.context`):

   * ``"shared"`` (pred-to-input / inter-1 / inter-2 / output): the tissue branch runs
     once over the region at the tissue µm/px, on tiles of its training size whose
     central parts are stitched into an on-disk map (:class:`~.tissue_map.TissueMap`);
     each cell tile takes its window of that map (:meth:`CellTissueModel.cell_logits_given_tissue`).
   * ``"per-tile"`` (feature sharing, or on request): each cell tile is read with its
     centred tissue view, as a training pair, and the whole model runs.
   * ``"none"`` (cell-only): the cell branch alone.
   * tissue-label leaking needs ground truth at inference and is refused.
3. **Cells**: softmax → peaks (:func:`~histozoom.inference.decode.decode_cells_torch`) →
   the detections in each tile's core, in level-0 pixel centres, with the tissue class
   under each cell (from the map; 0 when there is none).
4. **Streams and resume**: tiles are read ahead by ``workers`` threads while the model
   runs and decoding runs beside it; each batch's detections go to
   ``.work/parts/bNNNNNN.parquet`` (atomic), which is the journal: a run started again
   with the same settings skips finished batches (batch boundaries are fixed, so results
   are identical), and the tissue pass resumes from ``.work/tissue_done.json``.
5. **Outputs** (:mod:`.outputs`): ``cells.parquet``, ``cells.geojson`` (QuPath),
   ``cells.csv`` on request, ``summary.json`` (written last: a slide with it is done),
   ``purity.png``, ``overlay.png``.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..atomic import write_json
from ..data.samples import image_tensor
from ..errors import InputError
from ..inference.decode import decode_cells_torch
from ..inference.predictor import Predictor
from .reader import Slide, open_slide
from .tiling import SlideSettings, TileGrid
from .tissue import roi_mask, thumbnail_mpp, tissue_mask
from .tissue_map import TissueMap

__all__ = ["SlideOptions", "SlidePredictor", "UPSAMPLE_LIMIT", "predict_slides", "slide_inputs"]

UPSAMPLE_LIMIT = 1.5
"""A slide whose level 0 is coarser than the cell view's µm/px by more than this factor
is refused unless ``allow_upsample``."""
Context = Literal["auto", "shared", "per-tile"]
FORMATS = ("parquet", "geojson", "csv")
PART_COLUMNS = ("tile", "x", "y", "class_id", "probability", "tissue_class")


@dataclass(frozen=True)
class SlideOptions:
    """How to run one slide. ``mpp``: level-0 µm/px (overrides or supplies the file's);
    ``roi``: GeoJSON or mask image limiting the region; ``context``: ``"auto"`` (the
    model's kind decides), or ``"per-tile"`` to force per-pair context reading;
    ``formats``: of :data:`FORMATS` (``summary.json`` is always written)."""

    mpp: float | None = None
    allow_upsample: bool = False
    roi: str | Path | None = None
    batch_size: int = 8
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
        if self.batch_size < 1 or self.workers < 0:
            raise ValueError("batch_size must be ≥ 1 and workers ≥ 0")


@dataclass
class _Region:
    """Where a slide run looks: thumbnail, its mask and the cell tiles chosen."""

    thumb: np.ndarray
    thumb_mpp: float
    thumb_scale: float
    mask: np.ndarray
    grid: TileGrid | None
    tiles: list[int] = field(default_factory=list)


def _batches(items: Sequence[int], size: int) -> list[list[int]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


class SlidePredictor:
    """Slide inference for a trained cell–tissue model (``predictor``: its
    :class:`~histozoom.inference.predictor.Predictor`, which holds the model, classes and
    peak settings; ``settings``: where and at which µm/px each branch reads)."""

    def __init__(self, predictor: Predictor, settings: SlideSettings, checkpoint: str = ""):
        self.predictor = predictor
        self.model = predictor.model
        self.settings = settings
        self.checkpoint = checkpoint
        cfg = getattr(self.model, "config", None)
        if cfg is not None and getattr(cfg, "leak_tissue_labels", False):
            raise InputError(checkpoint or None, "a tissue-label-leaking model reads ground-truth tissue labels, "
                                                 "which a slide does not have; it cannot run on slides")

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu", cell_margin: int | None = None,
                        tissue_margin: int | None = None) -> SlidePredictor:
        """From a training run folder or a ``save_pretrained`` folder. The views' sizes and
        µm/px come from the checkpoint (older checkpoints: its dataset's nominal µm/px at
        the training size)."""
        from ..models.checkpoint import load_config, resolve_checkpoint

        ckpt = resolve_checkpoint(path)
        _, meta = load_config(ckpt)
        extra = meta.get("extra") or {}
        cfg = meta.get("config") or {}
        if cfg.get("leak_tissue_labels"):
            raise InputError(ckpt, "a tissue-label-leaking model reads ground-truth tissue labels, "
                                   "which a slide does not have; it cannot run on slides")
        views = extra.get("views")
        if views is None:
            spec, size = extra.get("spec") or {}, extra.get("size")
            if not size:
                raise InputError(ckpt, "the checkpoint records neither its views' µm/px nor a training size; "
                                       "retrain with this version of histozoom")
            views = {"cell": {"size": size, "mpp": spec.get("cell_mpp", 0.2)},
                     "tissue": {"size": size, "mpp": spec.get("tissue_mpp", 0.8)}}
        predictor = Predictor.from_checkpoint(ckpt, device=device, size=None)
        return cls(predictor, SlideSettings.from_views(views, cell_margin, tissue_margin), str(ckpt))

    # ------------------------------------------------------------------ what the model needs
    def context(self, options: SlideOptions) -> str:
        """``"none"``, ``"shared"`` or ``"per-tile"`` (see the module docstring)."""
        if getattr(self.model, "tissue", None) is None:
            return "none"
        if options.context == "per-tile" or not getattr(self.model, "tissue_prediction_only", False):
            return "per-tile"
        return "shared"

    # ------------------------------------------------------------------ one slide
    def predict_slide(self, slide: str | Path | Slide, out_dir: str | Path, options: SlideOptions = SlideOptions()) -> dict:
        """Run one slide (a path, or an open :class:`~.reader.Slide`, which stays open) into
        ``out_dir``; returns its summary (also ``summary.json``)."""
        from .outputs import finish_slide

        t_start = time.perf_counter()
        out_dir = Path(out_dir)
        owned = not isinstance(slide, Slide)
        with open_slide(slide, options.mpp) if owned else nullcontext(slide) as slide:
            self._check_resolution(slide, options)
            region = self._region(slide, options)
            context = self.context(options)
            work = out_dir / ".work"
            plan = self._plan(slide, region, options, context)
            self._start_work(work, plan)
            timing = {"model_s": 0.0}
            tmap = None
            try:
                if context == "shared" and region.tiles:
                    tmap = self._tissue_pass(slide, region, work, options, timing)
                self._cell_pass(slide, region, work, options, context, tmap, timing)
                summary = finish_slide(self, slide, region, work, out_dir, options, context, tmap, plan,
                                       timing, time.perf_counter() - t_start)
            finally:
                if tmap is not None:
                    tmap.close()
        shutil.rmtree(work, ignore_errors=True)
        return summary

    def _check_resolution(self, slide: Slide, options: SlideOptions) -> None:
        ratio = slide.mpp / self.settings.cell_mpp
        if ratio > UPSAMPLE_LIMIT and not options.allow_upsample:
            raise InputError(slide.path, f"the slide's {slide.mpp:g} µm/px is {ratio:.2f}× coarser than the model's cell view "
                                         f"({self.settings.cell_mpp:g} µm/px); pass --allow-upsample to run it anyway")

    def _region(self, slide: Slide, options: SlideOptions) -> _Region:
        tmpp = thumbnail_mpp(slide.mpp, slide.dimensions)
        thumb = slide.thumbnail(tmpp)
        scale = tmpp / slide.mpp
        mask = tissue_mask(thumb, tmpp)
        if options.roi is not None:
            mask &= roi_mask(options.roi, slide.dimensions, scale, mask.shape)
        region = _Region(thumb, tmpp, scale, mask, None)
        if not mask.any():
            return region
        rows, cols = np.nonzero(mask)
        w0, h0 = slide.dimensions
        # the thumbnail's size is floored: its last row and column reach the slide's edge
        right = w0 if cols.max() == mask.shape[1] - 1 else min(w0, (cols.max() + 1) * scale)
        bottom = h0 if rows.max() == mask.shape[0] - 1 else min(h0, (rows.max() + 1) * scale)
        box = (cols.min() * scale, rows.min() * scale, right, bottom)
        st = self.settings
        region.grid = TileGrid.covering(box, st.cell_mpp / slide.mpp, st.cell_tile, st.cell_margin)
        region.tiles = region.grid.select(mask, scale)
        return region

    def _plan(self, slide: Slide, region: _Region, options: SlideOptions, context: str) -> dict:
        g = region.grid
        return {"slide": str(Path(slide.path).resolve()), "mpp": slide.mpp, "dimensions": list(slide.dimensions),
                "checkpoint": self.checkpoint, "settings": self.settings.to_dict(), "context": context,
                "batch_size": options.batch_size, "roi": None if options.roi is None else str(options.roi),
                "grid": None if g is None else asdict(g), "tiles": len(region.tiles)}

    @staticmethod
    def _start_work(work: Path, plan: dict) -> None:
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

    # ------------------------------------------------------------------ reading ahead
    def _prefetch(self, jobs: list, read, workers: int) -> Iterator[tuple[Any, Any]]:
        """``(job, read(job))`` in order, with up to ``2·workers`` reads in flight."""
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

    def _progress(self, items, options: SlideOptions, desc: str, total: int):
        if not options.progress:
            return items
        from tqdm.auto import tqdm

        return tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True)

    def _timed(self, timing: dict, fn, *args):
        t0 = time.perf_counter()
        with torch.inference_mode(), self.predictor._autocast():
            out = fn(*args)
        if self.predictor.device.type == "cuda":
            torch.cuda.synchronize()
        timing["model_s"] += time.perf_counter() - t0
        return out

    # ------------------------------------------------------------------ the tissue pass
    def _tissue_pass(self, slide: Slide, region: _Region, work: Path, options: SlideOptions, timing: dict) -> TissueMap:
        st, cg = self.settings, region.grid
        assert cg is not None
        ts = st.tissue_mpp / slide.mpp
        pad = (st.cell_margin + 4) * cg.scale + 4 * ts  # context a cell tile's window needs beyond the cores
        x0, y0, _, _ = cg.core_box(0)
        _, _, x1, y1 = cg.core_box(len(cg) - 1)
        tg = TileGrid.covering((x0 - pad, y0 - pad, x1 + pad, y1 + pad), ts, st.tissue_tile, st.tissue_margin)
        need = np.zeros((tg.rows, tg.cols), bool)
        span = tg.core * ts
        for k in region.tiles:  # tissue cores under each chosen cell tile's read box (+ pad)
            bx0, by0, bx1, by1 = cg.core_box(k)
            i0, j0 = math.floor((bx0 - pad - tg.origin[0]) / span), math.floor((by0 - pad - tg.origin[1]) / span)
            i1, j1 = math.ceil((bx1 + pad - tg.origin[0]) / span), math.ceil((by1 + pad - tg.origin[1]) / span)
            need[max(j0, 0):max(j1, 0), max(i0, 0):max(i1, 0)] = True
        tiles = [int(k) for k in np.flatnonzero(need.reshape(-1))]
        n_ch = len(self.predictor.spec.tissue_classes or ())
        tmap = TissueMap(work / "tissue.f16", n_ch, tg.rows * tg.core, tg.cols * tg.core, tg.origin, ts)
        done_file = work / "tissue_done.json"
        done = json.loads(done_file.read_text())["batches"] if done_file.is_file() else 0
        batches = _batches(tiles, options.batch_size)

        def read(batch):
            return torch.stack([image_tensor(slide.read(*tg.read_origin(k), st.tissue_tile, st.tissue_tile, st.tissue_mpp))
                                for k in batch])

        jobs = list(range(done, len(batches)))
        for b, imgs in self._progress(self._prefetch(jobs, lambda b: read(batches[b]), options.workers), options,
                                      "tissue", len(jobs)):
            probs = self._timed(timing, self.model.tissue_probabilities, imgs.to(self.predictor.device)).float().cpu().numpy()
            m, c = st.tissue_margin, tg.core
            for k, p in zip(batches[b], probs):
                i, j = tg.index(k)
                tmap.write_core(j * c, i * c, p[:, m:m + c, m:m + c].astype(np.float16))
            tmap.flush()
            write_json(done_file, {"batches": b + 1})
        return tmap

    # ------------------------------------------------------------------ the cell pass
    def _cell_views(self, slide: Slide, grid: TileGrid, k: int, context: str, tmap: TissueMap | None) -> dict:
        st = self.settings
        ox, oy = grid.read_origin(k)
        side = st.cell_tile * grid.scale  # level-0 px
        out = {"cell": image_tensor(slide.read(ox, oy, st.cell_tile, st.cell_tile, st.cell_mpp))}
        if context == "shared":
            crop, win = tmap.window(ox, oy, side, side)
            out["tissue_probs"], out["window"] = torch.from_numpy(crop), torch.tensor(win)
        elif context == "per-tile":
            ts = st.tissue_mpp / slide.mpp
            tside = st.tissue_tile * ts
            cx, cy = ox + side / 2, oy + side / 2
            view = slide.read(cx - tside / 2, cy - tside / 2, st.tissue_tile, st.tissue_tile, st.tissue_mpp)
            out["tissue"] = image_tensor(view)
            f = side / tside
            out["window"] = torch.tensor([(1 - f) / 2, (1 - f) / 2, f, f])
        return out

    def _forward_cells(self, views: list[dict], context: str, timing: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Cell softmax ``(B, 1 + C, H, W)`` and, per tile, the tissue softmax in the cell
        frame ``(B, T, H, W)`` (per-tile context only; ``None`` otherwise)."""
        dev = self.predictor.device
        cell = torch.stack([v["cell"] for v in views]).to(dev)
        if context == "none":
            logits = self._timed(timing, lambda x: self.model(x)["cell_logits"], cell)
            return logits.float().softmax(1), None
        win = torch.stack([v["window"] for v in views]).to(dev)
        if context == "shared":
            probs = torch.stack([v["tissue_probs"] for v in views]).to(dev)
            logits = self._timed(timing, self.model.cell_logits_given_tissue, cell, probs, win)
            return logits.float().softmax(1), None
        tissue = torch.stack([v["tissue"] for v in views]).to(dev)
        out = self._timed(timing, self.model, cell, tissue, win)
        from ..geometry import tissue_to_cell

        t_cell = tissue_to_cell(out["tissue_logits"].float().softmax(1), win, tuple(cell.shape[-2:]))
        return out["cell_logits"].float().softmax(1), t_cell

    def _decode_batch(self, grid: TileGrid, batch: list[int], prob: torch.Tensor, t_cell: torch.Tensor | None,
                      tmap: TissueMap | None) -> dict[str, np.ndarray]:
        pred = self.predictor
        tissue_ids = np.asarray((pred.spec.tissue_classes.ids if pred.spec.tissue_classes else ()), np.int64)
        cols: dict[str, list] = {c: [] for c in PART_COLUMNS}
        for b, (k, pts) in enumerate(zip(batch, decode_cells_torch(prob, pred.classes, pred.peak_cfg, self.settings.cell_mpp))):
            keep = grid.owns(pts.xy)
            xy_tile, cls, p = pts.xy[keep], pts.cls[keep], pts.prob[keep]
            xy = grid.to_level0(k, xy_tile)
            if tmap is not None:
                ch = tmap.argmax_at(xy)
            elif t_cell is not None and len(xy_tile):
                r, c = xy_tile[:, 1].astype(np.int64), xy_tile[:, 0].astype(np.int64)
                ch = t_cell[b][:, r, c].argmax(0).cpu().numpy()
            else:
                ch = np.full(len(xy), -1, np.int64)
            tissue = np.zeros(len(xy), np.int64)  # 0: no tissue class known
            if len(tissue_ids):
                tissue[ch >= 0] = tissue_ids[ch[ch >= 0]]
            for name, v in (("tile", np.full(len(xy), k)), ("x", xy[:, 0]), ("y", xy[:, 1]), ("class_id", cls),
                            ("probability", p), ("tissue_class", tissue)):
                cols[name].append(v)
        return {c: np.concatenate(v) if v else np.zeros(0) for c, v in cols.items()}

    def _cell_pass(self, slide: Slide, region: _Region, work: Path, options: SlideOptions, context: str,
                   tmap: TissueMap | None, timing: dict) -> None:
        from .outputs import write_part

        grid = region.grid
        batches = _batches(region.tiles, options.batch_size)
        parts = work / "parts"
        jobs = [b for b in range(len(batches)) if not (parts / f"b{b:06d}.parquet").is_file()]

        def read(b):
            return [self._cell_views(slide, grid, k, context, tmap) for k in batches[b]]

        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="histozoom-decode") as decoder:
            pending = None
            for b, views in self._progress(self._prefetch(jobs, read, options.workers), options, "cells", len(jobs)):
                prob, t_cell = self._forward_cells(views, context, timing)
                if pending is not None:
                    pending.result()
                pending = decoder.submit(lambda b=b, prob=prob, t_cell=t_cell: write_part(
                    parts / f"b{b:06d}.parquet", self._decode_batch(grid, batches[b], prob, t_cell, tmap)))
            if pending is not None:
                pending.result()


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


def _run_key(sp: SlidePredictor, slide: Path, options: SlideOptions) -> dict:
    """What makes a finished slide's outputs reusable."""
    return {"slide": str(slide.resolve()), "checkpoint": sp.checkpoint, "settings": sp.settings.to_dict(),
            "mpp": options.mpp, "roi": None if options.roi is None else str(options.roi), "context": options.context,
            "formats": sorted(options.formats)}


def predict_slides(sp: SlidePredictor, inputs: Sequence[str | Path], out: str | Path, options: SlideOptions = SlideOptions(),
                   skip_errors: bool = False, log=None) -> list[dict]:
    """Run every slide of ``inputs`` into ``out/<stem>/``; slides finished with the same
    settings are skipped. A bad slide stops the run (its error names it) unless
    ``skip_errors``: then it is listed with status ``"error"``. ``out/slides.csv`` is
    rewritten after each slide. Returns the summaries (errors as ``{slide, status, error}``)."""
    from .outputs import write_slides_table

    out = Path(out)
    slides = slide_inputs(inputs)
    results: list[dict] = []
    for path in slides:
        folder = out / path.stem
        key = _run_key(sp, path, options)
        done = folder / "summary.json"
        summary = None
        if done.is_file():
            try:
                old = json.loads(done.read_text())
                summary = old if old.get("run_key") == key else None
            except (OSError, json.JSONDecodeError):
                summary = None
        if summary is not None:
            summary = {**summary, "skipped": True}
            if log:
                log(f"{path.name}: already done, skipped")
        else:
            try:
                summary = sp.predict_slide(path, folder, replace_run_key(options, key))
            except InputError as e:
                if not skip_errors:
                    raise
                summary = {"slide": str(path), "name": path.stem, "status": "error", "error": str(e)}
            if log:
                log(f"{path.name}: {summary.get('status')}"
                    + (f", {summary['cells']} cells in {summary['seconds']:.1f} s" if summary.get("status") == "done" else
                       f": {summary.get('error')}"))
        results.append(summary)
        write_slides_table(out / "slides.csv", results)
    return results


def replace_run_key(options: SlideOptions, key: dict) -> SlideOptions:
    from dataclasses import replace

    return replace(options, run_key=key)
