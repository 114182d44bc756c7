"""The tissue branch once over a slide: tiles at the tissue view's µm/px whose central
parts are stitched into an on-disk :class:`~.tissue_map.TissueMap`.

Used by cell models whose cell branch takes only the tissue prediction (each cell tile
then takes its window of the map) and by nuclei grading (each nucleus takes the tissue
class under its centroid). Resumable: ``.work/tissue_done.json`` counts the finished
batches, and the map file is kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic import write_json
from ..data.normalize import normalize_image
from ..data.samples import image_tensor
from ..inference.device import to_device
from .job import ModelClock, SlideOptions, batches, prefetch, progress
from .reader import Slide
from .tiling import TileGrid
from .tissue_map import TissueMap

__all__ = ["TissueView", "stitch_tissue_map"]


@dataclass(frozen=True)
class TissueView:
    """How the tissue branch reads: ``tile`` px at ``mpp`` µm/px, of which ``margin`` px on
    each side are not kept; ``channels``: its softmax channels (tissue classes);
    ``normalize``: the input normalisation of each tile (:func:`~histozoom.data.normalize.normalize_image`)."""

    mpp: float
    tile: int
    margin: int
    channels: int
    normalize: str = "none"

    @property
    def core(self) -> int:
        return self.tile - 2 * self.margin


def _needed(targets: TileGrid, tiles: list[int], tg: TileGrid, pad: float) -> list[int]:
    """Tissue tiles whose cores meet the core of any target tile grown by ``pad`` level-0 px."""
    need = np.zeros((tg.rows, tg.cols), bool)
    span = tg.core * tg.scale
    for k in tiles:
        bx0, by0, bx1, by1 = targets.core_box(k)
        i0, j0 = math.floor((bx0 - pad - tg.origin[0]) / span), math.floor((by0 - pad - tg.origin[1]) / span)
        i1, j1 = math.ceil((bx1 + pad - tg.origin[0]) / span), math.ceil((by1 + pad - tg.origin[1]) / span)
        need[max(j0, 0):max(j1, 0), max(i0, 0):max(i1, 0)] = True
    return [int(k) for k in np.flatnonzero(need.reshape(-1))]


def stitch_tissue_map(probabilities: Callable[[torch.Tensor], torch.Tensor], view: TissueView, slide: Slide,
                      targets: TileGrid, tiles: list[int], pad: float, work: Path, options: SlideOptions,
                      clock: ModelClock) -> TissueMap:
    """Run ``probabilities`` (``(B, 3, T, T)`` image batch → ``(B, C, T, T)`` softmax) over
    the tissue tiles covering the cores of ``targets`` tiles ``tiles`` grown by ``pad``
    level-0 px, and return the stitched map (``work/tissue.f16``)."""
    ts = view.mpp / slide.mpp
    x0, y0, _, _ = targets.core_box(0)
    _, _, x1, y1 = targets.core_box(len(targets) - 1)
    tg = TileGrid.covering((x0 - pad, y0 - pad, x1 + pad, y1 + pad), ts, view.tile, view.margin)
    todo = _needed(targets, tiles, tg, pad)
    tmap = TissueMap(work / "tissue.f16", view.channels, tg.rows * tg.core, tg.cols * tg.core, tg.origin, ts)
    done_file = work / "tissue_done.json"
    done = _read_done(done_file)
    groups = batches(todo, options.fixed_batch_size)
    device = clock.device

    def read(b: int) -> torch.Tensor:
        return torch.stack([image_tensor(normalize_image(slide.read(*tg.read_origin(k), view.tile, view.tile, view.mpp),
                                                         view.normalize)) for k in groups[b]])

    jobs = list(range(done, len(groups)))
    m, c = view.margin, tg.core
    for b, imgs in progress(prefetch(jobs, read, options.workers), options, "tissue", len(jobs)):
        probs = clock(probabilities, to_device(imgs, device)).float().cpu().numpy()
        for k, p in zip(groups[b], probs):
            i, j = tg.index(k)
            tmap.write_core(j * c, i * c, p[:, m:m + c, m:m + c].astype(np.float16))
        tmap.flush()
        write_json(done_file, {"batches": b + 1})
    return tmap


def _read_done(path: Path) -> int:
    import json

    if not path.is_file():
        return 0
    try:
        return int(json.loads(path.read_text())["batches"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0
