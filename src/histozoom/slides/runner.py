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
4. **Streams and resume** (:mod:`.job`): tiles are read ahead by ``workers`` threads while
   the model runs and decoding runs beside it; each batch's detections go to
   ``.work/parts/bNNNNNN.parquet`` (atomic), which is the journal: a run started again
   with the same settings skips finished batches (batch boundaries are fixed, so results
   are identical), and the tissue pass (:mod:`.tissue_pass`) resumes from
   ``.work/tissue_done.json``.
5. **Outputs** (:mod:`.outputs`): ``cells.parquet``, ``cells.geojson`` (QuPath),
   ``cells.csv`` on request, ``summary.json`` (written last: a slide with it is done),
   ``purity.png``, ``overlay.png``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..data.normalize import normalize_image
from ..data.samples import image_tensor
from ..errors import InputError
from ..inference.decode import decode_cells_torch
from ..inference.device import maybe_compile, to_device
from ..inference.predictor import Predictor
from ..models.cell_tissue import cell_probability_map
from .job import (
    UPSAMPLE_LIMIT,
    ModelClock,
    Prepared,
    Region,
    SlideOptions,
    SlidePass,
    check_resolution,
    find_region,
    predict_slides,
    run_slide,
    slide_inputs,
    slide_pass,
    start_work,
)
from .reader import Slide, open_slide
from .tiling import SlideSettings, TileGrid
from .tissue_map import TissueMap
from .tissue_pass import TissueView, stitch_tissue_map

__all__ = ["SlideOptions", "SlidePredictor", "UPSAMPLE_LIMIT", "predict_slides", "slide_inputs"]

PART_COLUMNS = ("tile", "x", "y", "class_id", "probability", "tissue_class")


class SlidePredictor:
    """Slide inference for a trained cell–tissue model (``predictor``: its
    :class:`~histozoom.inference.predictor.Predictor`, which holds the model, classes and
    peak settings; ``settings``: where and at which µm/px each branch reads)."""

    def __init__(self, predictor: Predictor, settings: SlideSettings, checkpoint: str = ""):
        self.predictor = predictor
        self.model = predictor.model
        if predictor.normalize not in ("none", "percentile"):
            raise InputError(checkpoint or None, f"the model was trained with {predictor.normalize!r} normalisation, "
                                                 "which needs each pair's tissue view; slides support 'none' and "
                                                 "'percentile' (each tile scaled on its own)")
        self.settings = settings = dataclasses.replace(settings, normalize=predictor.normalize)
        self.checkpoint = checkpoint
        compiled = predictor.compiled
        self._cell_given_tissue = maybe_compile(getattr(self.model, "cell_logits_given_tissue", None), compiled)
        self._tissue_probabilities = maybe_compile(getattr(self.model, "tissue_probabilities", None), compiled)
        self.factory: Callable[[], SlidePredictor] | None = None
        """Builds this runner again in another process (set by :meth:`from_checkpoint`)."""
        cfg = getattr(self.model, "config", None)
        if cfg is not None and getattr(cfg, "leak_tissue_labels", False):
            raise InputError(checkpoint or None, "a tissue-label-leaking model reads ground-truth tissue labels, "
                                                 "which a slide does not have; it cannot run on slides")

    @classmethod
    def from_checkpoint(cls, path: str | Path | Sequence[str | Path], device: str = "cpu", cell_margin: int | None = None,
                        tissue_margin: int | None = None, engine: str = "torch", compile: bool = False) -> SlidePredictor:
        """From a training run folder or a ``save_pretrained`` folder (or several: their
        ensemble, :mod:`~histozoom.inference.ensemble`). The views' sizes and µm/px come
        from the (first) checkpoint (older checkpoints: its dataset's nominal µm/px at the
        training size); ``engine``: what runs the network (:mod:`~histozoom.inference.engines`);
        ``compile``: ``torch.compile`` its entry points."""
        from ..inference.ensemble import member_extras
        from ..models.checkpoint import load_config

        paths = [path] if isinstance(path, (str, Path)) else list(path)
        members = member_extras(paths, "cell detection over slides needs an OCELOT model; "
                                       "for nuclei use 'histozoom nuclei slide predict'")
        for ckpt, _ in members:
            if (load_config(ckpt)[1].get("config") or {}).get("leak_tissue_labels"):
                raise InputError(ckpt, "a tissue-label-leaking model reads ground-truth tissue labels, "
                                       "which a slide does not have; it cannot run on slides")
        ckpt, extra = members[0]
        views = extra.get("views")
        if views is None:
            spec, size = extra.get("spec") or {}, extra.get("size")
            if not size:
                raise InputError(ckpt, "the checkpoint records neither its views' µm/px nor a training size; "
                                       "retrain with this version of histozoom")
            views = {"cell": {"size": size, "mpp": spec.get("cell_mpp", 0.2)},
                     "tissue": {"size": size, "mpp": spec.get("tissue_mpp", 0.8)}}
        predictor = Predictor.from_checkpoints([c for c, _ in members], device=device, size=None, engine=engine,
                                               compile=compile)
        sp = cls(predictor, SlideSettings.from_views(views, cell_margin, tissue_margin), str(ckpt))
        sp.factory = functools.partial(cls.from_checkpoint, [str(c) for c, _ in members], device, cell_margin,
                                       tissue_margin, engine, compile)
        return sp

    # ------------------------------------------------------------------ what the model needs
    def context(self, options: SlideOptions) -> str:
        """``"none"``, ``"shared"`` or ``"per-tile"`` (see the module docstring)."""
        if getattr(self.model, "tissue", None) is None:
            return "none"
        if options.context == "per-tile" or not getattr(self.model, "tissue_prediction_only", False):
            return "per-tile"
        return "shared"

    # ------------------------------------------------------------------ one slide
    def predict_slide(self, slide: str | Path | Slide, out_dir: str | Path, options: SlideOptions | None = None) -> dict:
        """Run one slide (a path, or an open :class:`~.reader.Slide`, which stays open) into
        ``out_dir``; returns its summary (also ``summary.json``)."""
        options = options or SlideOptions()
        owned = not isinstance(slide, Slide)
        with open_slide(slide, options.mpp) if owned else nullcontext(slide) as slide:
            return run_slide(self, slide, Path(out_dir), options, "cells")

    def prepare(self, slide: Slide, out_dir: Path, options: SlideOptions) -> Prepared:
        """Region, journal and (shared context) the tissue pass; the cell batches still to do."""
        check_resolution(slide, self.settings.cell_mpp, options, "the model's cell view")
        st = self.settings
        region = find_region(slide, options, st.cell_mpp, st.cell_tile, st.cell_margin)
        context = self.context(options)
        work = out_dir / ".work"
        plan = self._plan(slide, region, options, context)
        start_work(work, plan)
        clock = self.new_clock()
        tmap = None
        if context == "shared" and region.tiles:
            tmap = self._tissue_pass(slide, region, work, options, clock)
        return Prepared(slide_pass(self, slide, region, work, context, tmap, options), region, plan, tmap, clock)

    def finish(self, slide: Slide, prep: Prepared, out_dir: Path, options: SlideOptions, seconds: float) -> dict:
        """The slide's outputs from its journal (:func:`.outputs.finish_slide`)."""
        from .outputs import finish_slide

        return finish_slide(self, slide, prep.region, prep.job.work, out_dir, options, prep.job.context, prep.tmap,
                            prep.plan, prep.clock.seconds, seconds)

    def _plan(self, slide: Slide, region: Region, options: SlideOptions, context: str) -> dict:
        g = region.grid
        return {"slide": str(Path(slide.path).resolve()), "mpp": slide.mpp, "dimensions": list(slide.dimensions),
                "checkpoint": self.checkpoint, "settings": self.settings.to_dict(), "context": context,
                "batch_size": options.batch_size, "roi": None if options.roi is None else str(options.roi),
                "grid": None if g is None else asdict(g), "tiles": len(region.tiles)}

    # ------------------------------------------------------------------ many slides (job.predict_slides)
    TABLE_COLUMNS = ("slide", "status", "cells", "purity", "tissue_area_mm2", "seconds", "error")

    def run_key(self, slide: Path, options: SlideOptions) -> dict:
        """What makes a finished slide's outputs reusable."""
        return {"slide": str(slide.resolve()), "checkpoint": self.checkpoint, "settings": self.settings.to_dict(),
                "mpp": options.mpp, "roi": None if options.roi is None else str(options.roi), "context": options.context,
                "formats": sorted(options.formats)}

    def table_row(self, summary: dict) -> dict:
        purity = (summary.get("purity") or {}).get("overall")
        return {"cells": summary.get("cells"), "purity": None if purity is None else f"{purity:.4f}",
                "tissue_area_mm2": summary.get("tissue_area_mm2")}

    def describe(self, summary: dict) -> str:
        return f"done, {summary['cells']} cells in {summary['seconds']:.1f} s"

    # ------------------------------------------------------------------ the tissue pass
    def _tissue_pass(self, slide: Slide, region: Region, work: Path, options: SlideOptions, clock: ModelClock) -> TissueMap:
        st, cg = self.settings, region.grid
        assert cg is not None
        pad = (st.cell_margin + 4) * cg.scale + 4 * st.tissue_mpp / slide.mpp  # context a cell tile's window needs
        view = TissueView(st.tissue_mpp, st.tissue_tile, st.tissue_margin, len(self.predictor.spec.tissue_classes or ()),
                          st.normalize)
        return stitch_tissue_map(self._tissue_probabilities, view, slide, cg, region.tiles, pad, work, options, clock)

    # ------------------------------------------------------------------ the cell pass (job.TilePass)
    def batch_reader(self) -> Callable[[Slide, SlidePass, TissueMap | None, list[int]], list[dict]]:
        """Reads a batch's model inputs (:func:`read_cell_views`); picklable, no model."""
        return functools.partial(read_cell_views, self.settings)

    def new_clock(self) -> ModelClock:
        return ModelClock(self.predictor.device, self.predictor._autocast)

    def forward_batch(self, views: list[dict], job: SlidePass, clock: ModelClock):
        return self._forward_cells(views, job.context, clock)

    def write_batch(self, path: Path, job: SlidePass, tmap: TissueMap | None, tiles: list[int], result) -> None:
        from .outputs import write_part

        prob, t_cell = result
        write_part(path, self._decode_batch(job.grid, tiles, prob, t_cell, tmap))

    def _forward_cells(self, views: list[dict], context: str, clock: ModelClock) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Cell softmax ``(B, 1 + C, H, W)`` and, per tile, the tissue softmax in the cell
        frame ``(B, T, H, W)`` (per-tile context only; ``None`` otherwise)."""
        dev = self.predictor.device
        cell = to_device(torch.stack([v["cell"] for v in views]), dev)
        kind = self.predictor.cell_output
        if context == "none":
            logits = clock(lambda x: self.predictor.net(x)["cell_logits"], cell)
            return cell_probability_map(logits, kind), None
        win = torch.stack([v["window"] for v in views]).to(dev)
        if context == "shared":
            probs = to_device(torch.stack([v["tissue_probs"] for v in views]), dev)
            logits = clock(self._cell_given_tissue, cell, probs, win)
            return cell_probability_map(logits, kind), None
        tissue = to_device(torch.stack([v["tissue"] for v in views]), dev)
        out = clock(self.predictor.net, cell, tissue, win)
        from ..geometry import tissue_to_cell

        t_cell = tissue_to_cell(out["tissue_logits"].float().softmax(1), win, tuple(cell.shape[-2:]))
        return cell_probability_map(out["cell_logits"], kind), t_cell

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


def read_cell_views(settings: SlideSettings, slide: Slide, job: SlidePass, tmap: TissueMap | None,
                    tiles: list[int]) -> list[dict]:
    """Per tile of ``tiles``: ``cell`` (its cell view) and, by ``job.context``, its tissue
    context: ``tissue_probs`` + ``window`` (its window of the stitched map, "shared") or
    ``tissue`` + ``window`` (its centred tissue view, "per-tile")."""
    st, grid = settings, job.grid
    out = []
    for k in tiles:
        ox, oy = grid.read_origin(k)
        side = st.cell_tile * grid.scale  # level-0 px
        views = {"cell": image_tensor(normalize_image(slide.read(ox, oy, st.cell_tile, st.cell_tile, st.cell_mpp),
                                                      st.normalize))}
        if job.context == "shared":
            crop, win = tmap.window(ox, oy, side, side)
            views["tissue_probs"], views["window"] = torch.from_numpy(crop), torch.tensor(win)
        elif job.context == "per-tile":
            tside = st.tissue_tile * st.tissue_mpp / slide.mpp
            cx, cy = ox + side / 2, oy + side / 2
            views["tissue"] = image_tensor(normalize_image(
                slide.read(cx - tside / 2, cy - tside / 2, st.tissue_tile, st.tissue_tile, st.tissue_mpp), st.normalize))
            f = side / tside
            views["window"] = torch.tensor([(1 - f) / 2, (1 - f) / 2, f, f])
        out.append(views)
    return out
