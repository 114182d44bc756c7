"""What a slide run writes, in ``OUT/<slide stem>/``.

* ``cells.parquet``: one row per cell — ``x``, ``y`` (level-0 pixel centres), ``x_um``,
  ``y_um`` (``x · mpp``), ``class_id``, ``class_name``, ``probability``, ``tissue_class``
  and ``tissue_name`` (the predicted tissue class under the cell; 0 / "" when the model
  has no tissue branch), ``tile`` (the tile that owns it); rows in tile order.
* ``cells.csv`` (on request): the same columns.
* ``cells.geojson``: QuPath detections (Points in level-0 px, classification name and
  colour, probability) and the predicted cancer area as annotation polygons.
* ``summary.json``, ``purity.png``, ``overlay.png``.

Per-batch parts (``.work/parts/bNNNNNN.parquet``) are the run's journal; they are merged
here in batch order. Every file is written to a temporary name and renamed.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..atomic import atomic_open, atomic_path, write_json
from ..reports.geojson import DEFAULT_COLORS
from .job import in_region, parts

if TYPE_CHECKING:
    from .job import Region, SlideOptions
    from .reader import Slide
    from .runner import SlidePredictor
    from .tissue_map import TissueMap

__all__ = ["finish_slide", "read_cells", "write_part"]

CA_ID = 2
"""Tissue class id of the cancer area (OCELOT)."""


def write_part(path: Path, cols: dict[str, np.ndarray]) -> None:
    """One batch's detections (``runner.PART_COLUMNS``) as a Parquet file, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"tile": pa.array(cols["tile"], pa.int32()), "x": pa.array(cols["x"], pa.float64()),
                      "y": pa.array(cols["y"], pa.float64()), "class_id": pa.array(cols["class_id"], pa.int16()),
                      "probability": pa.array(cols["probability"], pa.float32()),
                      "tissue_class": pa.array(cols["tissue_class"], pa.int16())})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _columns(work: Path) -> dict[str, np.ndarray]:
    """All parts' columns, concatenated in batch order (the compact per-cell columns only)."""
    import pyarrow.parquet as pq

    tables = [pq.read_table(p) for p in parts(work)]
    if not tables:
        return {"tile": np.zeros(0, np.int32), "x": np.zeros(0), "y": np.zeros(0), "class_id": np.zeros(0, np.int16),
                "probability": np.zeros(0, np.float32), "tissue_class": np.zeros(0, np.int16)}
    import pyarrow as pa

    t = pa.concat_tables(tables)
    return {name: t.column(name).to_numpy() for name in t.column_names}


def drop_seam_duplicates(cols: dict[str, np.ndarray], min_distance: float) -> tuple[dict[str, np.ndarray], int]:
    """The peak spacing rule across tile seams: visiting cells by decreasing probability,
    drop one that lies closer than ``min_distance`` level-0 px (Chebyshev) to a kept cell.
    Cells of one tile already satisfy the rule, so only pairs across a seam — a cell seen
    at slightly different places by two tiles whose contexts differ — lose a member.
    Returns the kept columns and the number dropped."""
    from ..inference.decode import keep_spaced

    n = len(cols["x"])
    if n < 2:
        return cols, 0
    order = np.argsort(-cols["probability"], kind="stable")
    keep = np.empty(n, bool)
    keep[order] = keep_spaced(np.column_stack([cols["x"], cols["y"]])[order], min_distance - 1e-6)
    return {k: v[keep] for k, v in cols.items()}, int(n - keep.sum())


def read_cells(path: str | Path) -> dict[str, np.ndarray]:
    """The columns of a ``cells.parquet`` file as NumPy arrays."""
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    return {name: t.column(name).to_numpy(zero_copy_only=False) for name in t.column_names}


def _names(ids: np.ndarray, classes) -> np.ndarray:
    lookup = {} if classes is None else dict(zip(classes.ids, classes.names))
    return np.array([lookup.get(int(i), "") for i in ids], dtype=object)


def _write_cells_table(out: Path, cols: dict, mpp: float, pred, formats) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cell_names = _names(cols["class_id"], pred.classes)
    tissue_names = _names(cols["tissue_class"], pred.spec.tissue_classes)
    table = pa.table({
        "x": pa.array(cols["x"], pa.float64()), "y": pa.array(cols["y"], pa.float64()),
        "x_um": pa.array(cols["x"] * mpp, pa.float64()), "y_um": pa.array(cols["y"] * mpp, pa.float64()),
        "class_id": pa.array(cols["class_id"], pa.int16()), "class_name": pa.array(cell_names, pa.string()).dictionary_encode(),
        "probability": pa.array(cols["probability"], pa.float32()),
        "tissue_class": pa.array(cols["tissue_class"], pa.int16()),
        "tissue_name": pa.array(tissue_names, pa.string()).dictionary_encode(),
        "tile": pa.array(cols["tile"], pa.int32()),
    })
    if "parquet" in formats:
        with atomic_path(out / "cells.parquet") as tmp:
            pq.write_table(table, tmp, row_group_size=1 << 20)
    if "csv" in formats:
        with atomic_open(out / "cells.csv", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(table.column_names)
            digits = {"x": 2, "y": 2, "x_um": 3, "y_um": 3, "probability": 4}
            for row in zip(*(table.column(c).to_pylist() for c in table.column_names)):
                w.writerow([f"{v:.{digits[c]}f}" if c in digits else v for c, v in zip(table.column_names, row)])


def cancer_polygons(tmap: TissueMap | None, tissue_classes, thumb_mpp: float, tissue_mpp: float):
    """The cancer area (tissue class :data:`CA_ID`) of a stitched tissue map as a shapely
    MultiPolygon in the level-0 pixel-centre frame, at about half the thumbnail's µm/px;
    ``None`` without a map or a CA class."""
    from ..reports import slide_reports as rep

    if tmap is None or tissue_classes is None or CA_ID not in tissue_classes.ids:
        return None
    ch = list(tissue_classes.ids).index(CA_ID)
    factor = max(1, round(thumb_mpp * 0.5 / tissue_mpp))
    ox, oy = tmap.origin  # pixel-edge frame; points are pixel centres (half a level-0 px apart)
    return rep.mask_polygons(tmap.coarse_argmax(factor) == ch, origin=(ox - 0.5, oy - 0.5), scale=tmap.scale * factor)


def class_colors(classes) -> dict[int, tuple[int, int, int]]:
    """A colour per class id, in class-set order (:data:`DEFAULT_COLORS`)."""
    return {int(i): DEFAULT_COLORS[k % len(DEFAULT_COLORS)] for k, i in enumerate(classes.ids)}


def finish_slide(sp: SlidePredictor, slide: Slide, region: Region, work: Path, out: Path, options: SlideOptions,
                 context: str, tmap: TissueMap | None, plan: dict, model_seconds: float, seconds: float) -> dict[str, Any]:
    """Merge the parts into the slide's outputs and write ``summary.json`` last."""
    from .. import __version__
    from ..reports import slide_reports as rep

    pred = sp.predictor
    cols = _columns(work)
    cols = {k: v[in_region(region, cols["x"], cols["y"], slide.dimensions)] for k, v in cols.items()}
    spacing = pred.peak_cfg.min_distance_px(sp.settings.cell_mpp) * sp.settings.cell_mpp / slide.mpp
    cols, n_dup = drop_seam_duplicates(cols, spacing)
    out.mkdir(parents=True, exist_ok=True)
    _write_cells_table(out, cols, slide.mpp, pred, options.formats)
    cancer = cancer_polygons(tmap, pred.spec.tissue_classes, region.thumb_mpp, sp.settings.tissue_mpp)
    colors = class_colors(pred.classes)
    if "geojson" in options.formats:
        with rep.GeoJSONPointWriter(out / "cells.geojson", pred.classes, colors) as gj:
            gj.write_cells(cols["x"], cols["y"], cols["class_id"], cols["probability"])
            if cancer is not None and not cancer.is_empty:
                gj.write_annotation(cancer, "Tumor", (200, 0, 0))
    tissue_mm2 = region.tissue_mm2
    purity = rep.purity_summary(cols["class_id"], cols["tissue_class"])
    warnings = []
    if not region.mask.any():
        warnings.append("no tissue found on the slide (or in the region of interest)")
    if options.images:
        grid, _ = rep.purity_grid(cols["x"], cols["y"], cols["class_id"], slide.dimensions[0], slide.dimensions[1],
                                  cell_um=250.0, mpp=slide.mpp)
        rep.write_purity_png(out / "purity.png", grid, region.thumb, (0, slide.dimensions[0], slide.dimensions[1], 0),
                             square_px=250.0 / slide.mpp)
        rep.write_overlay_png(out / "overlay.png", region.thumb, region.thumb_scale, cols["x"], cols["y"],
                              cols["class_id"], colors, cancer, names=dict(zip(pred.classes.ids, pred.classes.names)))
    summary = {
        "slide": str(slide.path), "name": out.name, "status": "done", "mpp": slide.mpp,
        "mpp_source": "--mpp" if options.mpp is not None else "file",
        "level0_size": list(slide.dimensions), "tissue_area_mm2": round(tissue_mm2, 4),
        "tiles": len(region.tiles), "context": context, "cells": int(len(cols["x"])), "seam_duplicates_dropped": n_dup,
        "cells_per_class": {name: int(np.sum(cols["class_id"] == i)) for name, i in zip(pred.classes.names, pred.classes.ids)},
        "purity": purity, "seconds": round(seconds, 2), "model_seconds": round(model_seconds, 2),
        "checkpoint": sp.checkpoint, "settings": sp.settings.to_dict(), "engine": sp.predictor.engine,
        "histozoom_version": __version__,
        "outputs": sorted(p.name for p in out.iterdir() if p.is_file()) + ["summary.json"],
        "warnings": warnings, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "plan": plan,
        "run_key": options.run_key,
    }
    write_json(out / "summary.json", summary)
    return summary
