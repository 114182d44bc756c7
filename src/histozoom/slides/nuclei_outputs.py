"""What a nuclei slide run writes, in ``OUT/<slide stem>/``, and the seam rule's last step.

* ``nuclei.parquet``: one row per nucleus (an instance table,
  :mod:`histozoom.data.nuclei.instance_table`, with exact masks at the model's µm/px):
  ``id`` (1..n), ``x``, ``y`` (centroid, level-0 pixel centres), ``x_um``, ``y_um``,
  ``area_px`` (mask px), ``area_um2``, ``class_id``, ``class_name``, ``probability`` (the
  vote share of the class), ``tissue_class`` / ``tissue_name`` (under the centroid, from
  the tissue model; 0 / "" without one), ``tile`` (the owner), ``truncated`` (the mask
  touches its tile's border: a nucleus larger than the margin), ``bbox_x0``, ``bbox_y0``,
  ``bbox_w``, ``bbox_h``, ``mask``.
* ``nuclei.csv`` (on request): the same without the mask columns.
* ``nuclei.geojson``: QuPath detections, one Polygon per nucleus (its pixel outline,
  simplified with shapely by half a mask pixel, level-0 px), ``classification`` {name,
  color}, ``measurements`` {area_um2, probability}; the cancer area as annotations.
* ``summary.json``: nuclei per class, inside and outside the cancer area, the grade
  shares, the slide grade (:func:`histozoom.evaluation.grading.slide_grade`) and its field,
  the seam statistics, seconds, versions; ``grades.png``.

**Seams.** Every nucleus is owned by one tile (its centroid in the tile's core). Two
tiles whose views differ near a seam may still segment one nucleus differently, so owned
masks of neighbouring tiles can overlap. Such pairs are found among the nuclei that reach
out of their core (only those can meet another tile's nuclei) and resolved: an overlap of
at least half the smaller mask is one nucleus seen twice, and the copy whose centroid is
farther from its tile's border (more context) is kept; a smaller overlap is two touching
nuclei, and the overlap is taken from the one with less context. The result is a
partition: no pixel belongs to two nuclei.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..atomic import atomic_open, atomic_path, write_json
from ..data.nuclei.instance_table import decode_mask, encode_mask, instance_rows
from .job import in_region, parts
from .outputs import CA_ID, cancer_polygons, class_colors

if TYPE_CHECKING:
    from ..inference.nuclei_predictor import NucleiPrediction
    from .job import Region, SlideOptions
    from .nuclei import NucleiSlidePredictor
    from .reader import Slide
    from .tiling import TileGrid
    from .tissue_map import TissueMap

__all__ = ["finish_nuclei_slide", "resolve_seams", "tile_nuclei", "write_nuclei_part"]

DUPLICATE_OVERLAP = 0.5
"""Two masks of different tiles sharing at least this share of the smaller one are one nucleus."""
NUMERIC = ("tile", "x", "y", "area_px", "class_id", "probability", "tissue_class", "bbox_x0", "bbox_y0", "bbox_w",
           "bbox_h", "edge")


# ---------------------------------------------------------------------- per tile (decode thread)
def _ring(mask: np.ndarray, x0: float, y0: float, scale: float) -> np.ndarray:
    """The outline of the largest piece of ``mask`` (pixel edges, simplified by half a mask
    pixel), level-0 ``(x, y)`` in the pixel-centre frame, flattened."""
    import shapely

    from ..reports.slide_reports import mask_polygons

    poly = mask_polygons(mask, origin=(x0 - 0.5, y0 - 0.5), scale=scale, simplify=True)
    pieces = shapely.get_parts(poly)
    if len(pieces) == 0:
        return np.zeros(0)
    best = max(pieces, key=lambda p: p.area)
    return np.asarray(best.exterior.coords, np.float64)[:, :2].ravel()


def tile_nuclei(pred: NucleiPrediction, grid: TileGrid, k: int) -> dict[str, np.ndarray]:
    """The nuclei tile ``k`` owns (centroid in its core) from its prediction, as part
    columns: the instance-table columns (level-0, masks at the tile's px), ``class_id``,
    ``probability``, ``tile``, ``edge`` (mask touches the tile border) and ``ring``."""
    from scipy import ndimage

    inst = pred.inst_map
    ids = np.array(sorted(pred.inst_class), np.int64)
    if len(ids):
        com = np.asarray(ndimage.center_of_mass(np.ones(inst.shape), inst, ids), np.float64).reshape(-1, 2)
        ids = ids[grid.owns(com[:, ::-1])]
    ox, oy = grid.read_origin(k)
    s = grid.scale
    rows = instance_rows(inst, (ox, oy), s, ids)
    n = len(ids)
    rows["class_id"] = np.array([pred.inst_class[int(i)] for i in ids], np.int64)
    rows["probability"] = np.array([pred.probability.get(int(i), 1.0) for i in ids], np.float64)
    rows["tile"] = np.full(n, k, np.int64)
    c0 = np.rint((rows["bbox_x0"] - ox) / s).astype(np.int64)
    r0 = np.rint((rows["bbox_y0"] - oy) / s).astype(np.int64)
    t = grid.tile
    rows["edge"] = (c0 <= 0) | (r0 <= 0) | (c0 + rows["bbox_w"] >= t) | (r0 + rows["bbox_h"] >= t)
    rows["ring"] = np.empty(n, object)
    for j in range(n):
        m = decode_mask(rows["mask"][j], rows["bbox_h"][j], rows["bbox_w"][j])
        rows["ring"][j] = _ring(m, rows["bbox_x0"][j], rows["bbox_y0"][j], s)
    return rows


def _part_types():
    import pyarrow as pa

    return {"tile": pa.int32(), "id": pa.int64(), "x": pa.float64(), "y": pa.float64(), "area_px": pa.int64(),
            "class_id": pa.int16(), "probability": pa.float32(), "tissue_class": pa.int16(), "bbox_x0": pa.float64(),
            "bbox_y0": pa.float64(), "bbox_w": pa.int32(), "bbox_h": pa.int32(), "edge": pa.bool_(),
            "ring": pa.list_(pa.float64())}


def write_nuclei_part(path: Path, found: list[dict[str, np.ndarray]], tmap: TissueMap | None, tissue_ids: np.ndarray) -> None:
    """One batch's nuclei (:func:`tile_nuclei` of its tiles) with the tissue class under
    each centroid (0 when unknown), atomically."""
    from ..data.nuclei.instance_table import write_table

    names = ("tile", "id", "x", "y", "area_px", "class_id", "probability", "bbox_x0", "bbox_y0", "bbox_w", "bbox_h",
             "edge", "mask", "ring")
    cols = {c: np.concatenate([f[c] for f in found]) if found else np.zeros(0) for c in names}
    n = len(cols["x"])
    tissue = np.zeros(n, np.int64)
    if tmap is not None and n and len(tissue_ids):
        ch = tmap.argmax_at(np.column_stack([cols["x"], cols["y"]]))
        tissue[ch >= 0] = tissue_ids[ch[ch >= 0]]
    cols["tissue_class"] = tissue
    for c in ("mask", "ring"):
        cols[c] = list(cols[c])
    write_table(path, cols, types=_part_types())


# ---------------------------------------------------------------------- the parts
def _read_parts(work: Path, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """``columns`` of all parts, in batch order, plus ``part`` and ``row`` (where each row is)."""
    import pyarrow.parquet as pq

    out: dict[str, list] = {c: [] for c in (*columns, "part", "row")}
    for p, path in enumerate(parts(work)):
        t = pq.read_table(path, columns=list(columns))
        for c in columns:
            out[c].append(t.column(c).to_numpy(zero_copy_only=False))
        out["part"].append(np.full(t.num_rows, p, np.int64))
        out["row"].append(np.arange(t.num_rows, dtype=np.int64))
    return {c: np.concatenate(v) if v else np.zeros(0) for c, v in out.items()}


def _masks(work: Path, where: dict[str, np.ndarray], index: np.ndarray) -> dict[int, np.ndarray]:
    """The boolean masks of the nuclei ``index`` (global row numbers of ``where``)."""
    import pyarrow.parquet as pq

    files = parts(work)
    out: dict[int, np.ndarray] = {}
    for p in np.unique(where["part"][index]):
        mine = index[where["part"][index] == p]
        col = pq.read_table(files[int(p)], columns=["mask"]).column("mask")
        for g in mine:
            out[int(g)] = decode_mask(col[int(where["row"][g])].as_py(), where["bbox_h"][g], where["bbox_w"][g])
    return out


# ---------------------------------------------------------------------- seams
def _context(num: dict[str, np.ndarray], grid: TileGrid) -> np.ndarray:
    """Level-0 distance from each centroid to its own tile's outer border."""
    i, j = num["tile"] % grid.cols, num["tile"] // grid.cols
    side = grid.tile * grid.scale
    ox = grid.origin[0] + (i * grid.core - grid.margin) * grid.scale
    oy = grid.origin[1] + (j * grid.core - grid.margin) * grid.scale
    x, y = num["x"] + 0.5, num["y"] + 0.5
    return np.minimum.reduce([x - ox, ox + side - x, y - oy, oy + side - y])


def _shifted_overlap(a: np.ndarray, ax: int, ay: int, b: np.ndarray, bx: int, by: int) -> tuple[slice, ...] | None:
    """Slices of ``a`` and ``b`` (placed at mask-grid ``(ax, ay)`` and ``(bx, by)``) over their common box."""
    x0, y0 = max(ax, bx), max(ay, by)
    x1, y1 = min(ax + a.shape[1], bx + b.shape[1]), min(ay + a.shape[0], by + b.shape[0])
    if x1 <= x0 or y1 <= y0:
        return None
    return (slice(y0 - ay, y1 - ay), slice(x0 - ax, x1 - ax), slice(y0 - by, y1 - by), slice(x0 - bx, x1 - bx))


def resolve_seams(num: dict[str, np.ndarray], keep: np.ndarray, grid: TileGrid, work: Path,
                  min_size: int = 1) -> tuple[np.ndarray, dict[int, np.ndarray], dict[str, int]]:
    """Resolve overlapping masks of different tiles (module docstring). ``num``: the parts'
    numeric columns (:func:`_read_parts`); ``keep``: rows still in play. Returns the new
    ``keep``, the trimmed masks ``{row: mask}`` (same box) and counts."""
    from scipy.spatial import cKDTree

    keep = keep.copy()
    stats = {"overlapping_pairs": 0, "duplicates_dropped": 0, "trimmed": 0}
    s = grid.scale
    x0, y0 = num["bbox_x0"], num["bbox_y0"]
    x1, y1 = x0 + num["bbox_w"] * s, y0 + num["bbox_h"] * s
    cores = np.array([grid.core_box(int(t)) for t in num["tile"]]).reshape(-1, 4)
    out_by = np.maximum.reduce([cores[:, 0] - x0, cores[:, 1] - y0, x1 - cores[:, 2], y1 - cores[:, 3],
                                np.zeros(len(x0))]) if len(x0) else np.zeros(0)
    reach = keep & (out_by > 0)
    if not reach.any():
        return keep, {}, stats
    p = float(out_by[reach].max())
    near = keep & ((x0 < cores[:, 0] + p) | (y0 < cores[:, 1] + p) | (x1 > cores[:, 2] - p) | (y1 > cores[:, 3] - p))
    cand = np.flatnonzero(near | reach)
    centre = np.column_stack([(x0 + x1) / 2, (y0 + y1) / 2])[cand]
    half = np.hypot(x1 - x0, y1 - y0)[cand] / 2
    pairs = cKDTree(centre).query_pairs(2 * float(half.max()) + 1e-6, output_type="ndarray")
    a, b = cand[pairs[:, 0]], cand[pairs[:, 1]]
    sel = ((num["tile"][a] != num["tile"][b]) & (reach[a] | reach[b])
           & (np.minimum(x1[a], x1[b]) > np.maximum(x0[a], x0[b])) & (np.minimum(y1[a], y1[b]) > np.maximum(y0[a], y0[b])))
    a, b = np.minimum(a[sel], b[sel]), np.maximum(a[sel], b[sel])
    if not len(a):
        return keep, {}, stats
    order = np.lexsort((b, a))
    a, b = a[order], b[order]
    masks = _masks(work, num, np.unique(np.concatenate([a, b])))
    gx, gy = np.rint(x0 / s).astype(np.int64), np.rint(y0 / s).astype(np.int64)  # on the tiles' common mask grid
    context = _context(num, grid)

    def weaker(i: int, j: int) -> tuple[int, int]:
        """(the one with less context, the other); ties: lower probability, then later row."""
        ki = (context[i], num["probability"][i], -i)
        kj = (context[j], num["probability"][j], -j)
        return (i, j) if ki < kj else (j, i)

    overlaps = []
    for i, j in zip(a.tolist(), b.tolist()):
        sl = _shifted_overlap(masks[i], gx[i], gy[i], masks[j], gx[j], gy[j])
        if sl is None:
            continue
        ov = int(np.count_nonzero(masks[i][sl[0], sl[1]] & masks[j][sl[2], sl[3]]))
        if ov:
            overlaps.append((i, j, ov))
    stats["overlapping_pairs"] = len(overlaps)
    for i, j, ov in overlaps:  # one nucleus seen twice
        if keep[i] and keep[j] and ov >= DUPLICATE_OVERLAP * min(masks[i].sum(), masks[j].sum()):
            keep[weaker(i, j)[0]] = False
            stats["duplicates_dropped"] += 1
    trimmed: dict[int, np.ndarray] = {}
    for i, j, _ in overlaps:  # touching nuclei: the overlap goes to the one with more context
        if not (keep[i] and keep[j]):
            continue
        lose, win = weaker(i, j)
        sl = _shifted_overlap(masks[lose], gx[lose], gy[lose], masks[win], gx[win], gy[win])
        if sl is None:
            continue
        m = masks[lose].copy()
        m[sl[0], sl[1]] &= ~masks[win][sl[2], sl[3]]
        if m.sum() == masks[lose].sum():
            continue
        masks[lose] = m
        if m.sum() < max(1, min_size):
            keep[lose] = False
            trimmed.pop(lose, None)
        else:
            trimmed[lose] = m
        stats["trimmed"] += 1
    return keep, trimmed, stats


# ---------------------------------------------------------------------- outputs
def _final_types():
    import pyarrow as pa

    return {**_part_types(), "x_um": pa.float64(), "y_um": pa.float64(), "area_um2": pa.float32(),
            "truncated": pa.bool_(), "class_name": pa.string(), "tissue_name": pa.string()}


FINAL_COLUMNS = ("id", "x", "y", "x_um", "y_um", "area_px", "area_um2", "class_id", "class_name", "probability",
                 "tissue_class", "tissue_name", "tile", "truncated", "bbox_x0", "bbox_y0", "bbox_w", "bbox_h", "mask")


def _objects(values) -> np.ndarray:
    """A 1-D object array of ``values`` (masks, outlines): built element by element, since
    ``np.array`` would make a 2-D array of outlines that happen to have one length."""
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def _apply_trims(cols: dict[str, np.ndarray], rows: np.ndarray, trimmed: dict[int, np.ndarray], scale: float) -> None:
    """Replace the masks (and their box, centroid, area, outline) of trimmed nuclei in ``cols``."""
    for local, g in enumerate(rows.tolist()):
        m = trimmed.get(g)
        if m is None:
            continue
        rr, cc = np.nonzero(m)
        r0, c0 = rr.min(), cc.min()
        sub = m[r0:rr.max() + 1, c0:cc.max() + 1]
        bx, by = cols["bbox_x0"][local] + c0 * scale, cols["bbox_y0"][local] + r0 * scale
        cols["bbox_x0"][local], cols["bbox_y0"][local] = bx, by
        cols["bbox_h"][local], cols["bbox_w"][local] = sub.shape
        cols["mask"][local] = encode_mask(sub)
        cols["area_px"][local] = len(rr)
        cols["x"][local] = bx + ((cc - c0).mean() + 0.5) * scale - 0.5
        cols["y"][local] = by + ((rr - r0).mean() + 0.5) * scale - 0.5
        cols["ring"][local] = _ring(sub, bx, by, scale)


class _Writers:
    """The streamed outputs: Parquet (row groups per part), GeoJSON, CSV."""

    def __init__(self, out: Path, formats, classes, colors, scale: float, stack):
        import pyarrow as pa
        import pyarrow.parquet as pq

        from ..data.nuclei.instance_table import SCALE_KEY
        from ..reports.slide_reports import GeoJSONPointWriter

        types = _final_types()
        self.schema = pa.schema([(c, pa.binary() if c == "mask" else types[c]) for c in FINAL_COLUMNS],
                                metadata={SCALE_KEY: repr(float(scale)).encode()})
        self.parquet = self.geojson = self.csv = None
        if "parquet" in formats:
            tmp = stack.enter_context(atomic_path(out / "nuclei.parquet"))
            self.parquet = stack.enter_context(pq.ParquetWriter(tmp, self.schema))
        if "geojson" in formats:
            self.geojson = stack.enter_context(GeoJSONPointWriter(out / "nuclei.geojson", classes, colors))
        if "csv" in formats:
            fh = stack.enter_context(atomic_open(out / "nuclei.csv", newline=""))
            self.csv = csv.writer(fh)
            self.csv.writerow([c for c in FINAL_COLUMNS if c not in ("mask",) and not c.startswith("bbox")])

    def write(self, cols: dict[str, Any]) -> None:
        import pyarrow as pa

        if self.parquet is not None:
            arrays = [pa.array(list(cols[c]) if c == "mask" else cols[c], self.schema.field(c).type) for c in FINAL_COLUMNS]
            self.parquet.write_table(pa.Table.from_arrays(arrays, schema=self.schema))
        if self.geojson is not None and len(cols["id"]):
            rings = [np.asarray(r, np.float64).reshape(-1, 2) for r in cols["ring"]]
            self.geojson.write_detection_polygons(rings, cols["class_id"], {"area_um2": cols["area_um2"],
                                                                            "probability": cols["probability"]})
        if self.csv is not None:
            names = [c for c in FINAL_COLUMNS if c not in ("mask",) and not c.startswith("bbox")]
            digits = {"x": 2, "y": 2, "x_um": 3, "y_um": 3, "probability": 4, "area_um2": 3}
            for row in zip(*(cols[c] for c in names)):
                self.csv.writerow([f"{v:.{digits[c]}f}" if c in digits else v for c, v in zip(names, row)])


def _names(ids: np.ndarray, classes) -> np.ndarray:
    lookup = {} if classes is None else dict(zip(classes.ids, classes.names))
    return np.array([lookup.get(int(i), "") for i in ids], dtype=object)


def finish_nuclei_slide(sp: NucleiSlidePredictor, slide: Slide, region: Region, work: Path, out: Path,
                        options: SlideOptions, tmap: TissueMap | None, plan: dict, model_seconds: float,
                        seconds: float) -> dict[str, Any]:
    """Resolve the seams, stream the parts into the outputs, grade, write ``summary.json`` last."""
    import contextlib

    import pyarrow.parquet as pq

    from .. import __version__

    grid = region.grid
    classes = sp.nuclei.classes
    tissue_classes = None if sp.tissue is None else sp.tissue.classes
    scale = grid.scale if grid is not None else 1.0
    um_per_px = scale * slide.mpp
    num = _read_parts(work, NUMERIC)
    keep = in_region(region, num["x"], num["y"], slide.dimensions) if len(num["x"]) else np.zeros(0, bool)
    if grid is not None and len(keep):
        keep, trimmed, seam = resolve_seams(num, keep, grid, work, sp.nuclei.watershed.min_size)
    else:
        trimmed, seam = {}, {"overlapping_pairs": 0, "duplicates_dropped": 0, "trimmed": 0}
    out.mkdir(parents=True, exist_ok=True)
    colors = class_colors(classes)
    cancer = cancer_polygons(tmap, tissue_classes, region.thumb_mpp, sp.tissue.view.mpp if sp.tissue else 1.0)
    kept: dict[str, list] = {"x": [], "y": [], "class_id": [], "tissue_class": [], "bbox_w": [], "bbox_h": [],
                             "truncated": []}
    next_id = 1
    with contextlib.ExitStack() as stack:
        writers = _Writers(out, options.formats, classes, colors, scale, stack)
        for p, path in enumerate(parts(work)):
            rows_here = np.flatnonzero(num["part"] == p)
            sel = rows_here[keep[rows_here]]
            t = pq.read_table(path)
            local = num["row"][sel]
            cols = {c: t.column(c).to_numpy(zero_copy_only=False)[local] for c in t.column_names}
            cols = {c: (v.copy() if c not in ("mask", "ring") else _objects(v)) for c, v in cols.items()}
            _apply_trims(cols, sel, trimmed, scale)
            n = len(sel)
            cols["id"] = np.arange(next_id, next_id + n, dtype=np.int64)
            next_id += n
            cols["x_um"], cols["y_um"] = cols["x"] * slide.mpp, cols["y"] * slide.mpp
            cols["area_um2"] = cols["area_px"] * um_per_px**2
            cols["truncated"] = cols["edge"].astype(bool)
            cols["class_name"] = _names(cols["class_id"], classes)
            cols["tissue_name"] = _names(cols["tissue_class"], tissue_classes)
            writers.write(cols)
            for c in kept:
                kept[c].append(cols[c])
        if cancer is not None and not cancer.is_empty and writers.geojson is not None:
            writers.geojson.write_annotation(cancer, "Tumor", (200, 0, 0))
    k = {c: np.concatenate(v) if v else np.zeros(0) for c, v in kept.items()}
    grading, warnings = _grading(sp, slide, region, k, tmap is not None, out, options)
    if not region.mask.any():
        warnings.append("no tissue found on the slide (or in the region of interest)")
    n_trunc = int(np.count_nonzero(k["truncated"]))
    if n_trunc:
        warnings.append(f"{n_trunc} nuclei touch their tile's border (larger than the {sp.settings.margin} px margin); "
                        f"their masks may be cut")
    inside = k["tissue_class"] == CA_ID if tmap is not None else np.ones(len(k["x"]), bool)
    per_class = {name: int(np.sum(k["class_id"] == i)) for name, i in zip(classes.names, classes.ids)}
    summary = {
        "slide": str(slide.path), "name": out.name, "status": "done", "mpp": slide.mpp,
        "mpp_source": "--mpp" if options.mpp is not None else "file", "model_mpp": sp.settings.mpp,
        "model_mpp_source": sp.mpp_source, "level0_size": list(slide.dimensions),
        "tissue_area_mm2": round(region.tissue_mm2, 4), "tiles": len(region.tiles), "nuclei": int(len(k["x"])),
        "nuclei_per_class": per_class,
        "cancer_area": {"source": "tissue model" if tmap is not None else ("roi" if options.roi is not None else "tissue mask"),
                        "nuclei_inside": int(inside.sum()), "nuclei_outside": int((~inside).sum()),
                        "per_class_inside": {name: int(np.sum((k["class_id"] == i) & inside))
                                             for name, i in zip(classes.names, classes.ids)}},
        "grading": grading,
        "seams": {**seam, "truncated": n_trunc, "overlap_px": 2 * sp.settings.margin,
                  "largest_nucleus_px": int(max(k["bbox_w"].max(), k["bbox_h"].max())) if len(k["x"]) else None},
        "seconds": round(seconds, 2), "model_seconds": round(model_seconds, 2), "checkpoint": sp.checkpoint,
        "tissue_checkpoint": None if sp.tissue is None else sp.tissue.checkpoint, "settings": sp.settings.to_dict(),
        "engine": sp.nuclei.engine, "histozoom_version": __version__,
        "outputs": sorted(p.name for p in out.iterdir() if p.is_file()) + ["summary.json"],
        "warnings": warnings, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "plan": plan, "run_key": options.run_key,
    }
    write_json(out / "summary.json", summary)
    return summary


def _grading(sp: NucleiSlidePredictor, slide: Slide, region: Region, k: dict, with_tissue: bool, out: Path,
             options: SlideOptions) -> tuple[dict | None, list[str]]:
    """Grade shares, the slide grade and ``grades.png`` (``None`` when the class set has no G1–G3)."""
    from ..evaluation.grading import grade_of, grade_shares, slide_grade
    from ..reports import slide_reports as rep

    names = set(sp.nuclei.classes.names)
    if not {"G1", "G2", "G3"} <= names:
        return None, [f"no grading: the classes {sorted(names)} are not the ccRCC grades G1, G2, G3"]
    grades = grade_of(k["class_id"], sp.nuclei.classes)
    inside = k["tissue_class"] == CA_ID if with_tissue else np.ones(len(grades), bool)
    x_um, y_um = k["x"] * slide.mpp, k["y"] * slide.mpp
    result = {"inside_means": "the tissue model's cancer area (CA)" if with_tissue else "the tissue mask / ROI",
              "shares": grade_shares(grades, inside), "slide_grade": slide_grade(x_um, y_um, grades, inside, sp.grading,
                                                                                 mpp=slide.mpp)}
    if options.images:
        w, h = slide.dimensions
        counted = (grades > 0) & inside
        g3, _ = rep.share_grid(k["x"], k["y"], grades == 3, counted, w, h, cell_um=250.0, mpp=slide.mpp)
        g23, _ = rep.share_grid(k["x"], k["y"], grades >= 2, counted, w, h, cell_um=250.0, mpp=slide.mpp)
        grade = result["slide_grade"]["grade"]
        rep.write_grades_png(out / "grades.png", region.thumb, (0, w, h, 0),
                             [(g3, "share of G3 among tumour nuclei"), (g23, "share of G2 + G3 among tumour nuclei")],
                             square_px=250.0 / slide.mpp,
                             title=f"Nuclear grade per 250 µm square; slide grade: {'none' if grade is None else f'G{grade}'}")
    return result, []
