"""The OCELOT paper's dataset tables, for any paired dataset.

* Table 2: pairs per organ and split.
* Table A.1: cells per class and split; tissue pixels per class (and unknown) and split.
* Table 3: cells per tissue class — each cell point is mapped into the tissue frame
  (``Placement.cell_to_tissue_points``) and takes the tissue label under it.
* Table 4: tissue pixel ratios per class (unknown counted separately).
* Per organ: cells per class.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from ..pair import Pair
from .base import DatasetSpec, PairSource

OUTSIDE = "outside"
UNKNOWN_NAME = "unknown"


@dataclass
class DatasetStats:
    """Counts keyed by split (and ``"total"``). Tissue columns are class names plus
    ``"unknown"``; the cell-on-tissue table also has ``"outside"`` (no mask or off the mask).
    """

    spec: DatasetSpec
    pairs: dict[str, dict[str, int]] = field(default_factory=dict)          # split -> organ -> pairs
    cells: dict[str, dict[str, int]] = field(default_factory=dict)          # split -> cell class -> count
    tissue_pixels: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> tissue class -> px
    cells_on_tissue: dict[str, dict[str, int]] = field(default_factory=dict)  # cell class -> tissue class -> count
    cells_per_organ: dict[str, dict[str, int]] = field(default_factory=dict)  # organ -> cell class -> count

    def tissue_ratios(self) -> dict[str, float]:
        """Fraction of all labelled tissue pixels (unknown included) per tissue class."""
        tot = self.tissue_pixels.get("total", {})
        n = sum(tot.values())
        return {k: (v / n if n else 0.0) for k, v in tot.items()}

    def cell_tissue_fractions(self) -> dict[str, dict[str, float]]:
        """Per cell class, the fraction of its cells on each tissue class (among cells on a mask)."""
        out = {}
        for c, row in self.cells_on_tissue.items():
            n = sum(v for k, v in row.items() if k != OUTSIDE)
            out[c] = {k: (v / n if n else 0.0) for k, v in row.items() if k != OUTSIDE}
        return out

    def to_dict(self) -> dict:
        return {
            "dataset": self.spec.to_dict(),
            "pairs_per_organ": self.pairs,
            "cells_per_class": self.cells,
            "tissue_pixels_per_class": self.tissue_pixels,
            "tissue_pixel_ratios": self.tissue_ratios(),
            "cells_per_tissue_class": self.cells_on_tissue,
            "cell_tissue_fractions": self.cell_tissue_fractions(),
            "cells_per_organ": self.cells_per_organ,
        }


def _add(d: dict, key: str, sub: str, n: int) -> None:
    d.setdefault(key, {}).setdefault(sub, 0)
    d[key][sub] += int(n)


def tissue_class_names(spec: DatasetSpec) -> dict[int, str]:
    """Label value → column name for tissue tables (class names, and ``unknown``)."""
    names = {} if spec.tissue_classes is None else dict(zip(spec.tissue_classes.ids, spec.tissue_classes.names, strict=True))
    if spec.tissue_classes is not None and spec.tissue_classes.ignore is not None:
        names[spec.tissue_classes.ignore] = UNKNOWN_NAME
    return names


def accumulate_pair(stats: DatasetStats, pair: Pair, split: str) -> None:
    """Add one pair's counts to ``stats``."""
    spec = stats.spec
    cell_names = dict(zip(spec.cell_classes.ids, spec.cell_classes.names, strict=True))
    tnames = tissue_class_names(spec)
    organ = pair.organ or "unknown"
    for s in (split, "total"):
        _add(stats.pairs, s, organ, 1)
    pts = pair.cell_points
    if pts is not None:
        for cid, name in cell_names.items():
            n = int((pts.cls == cid).sum())
            for s in (split, "total"):
                _add(stats.cells, s, name, n)
            _add(stats.cells_per_organ, organ, name, n)
    mask = pair.tissue_mask
    if mask is not None:
        values, counts = np.unique(mask, return_counts=True)
        for v, n in zip(values.tolist(), counts.tolist(), strict=True):
            if v in tnames:
                for s in (split, "total"):
                    _add(stats.tissue_pixels, s, tnames[v], n)
    if pts is not None and len(pts):
        if mask is None:
            under = [OUTSIDE] * len(pts)
        else:
            txy = np.rint(pair.placement.cell_to_tissue_points(pts.xy)).astype(np.int64)
            h, w = mask.shape
            ok = (txy[:, 0] >= 0) & (txy[:, 0] < w) & (txy[:, 1] >= 0) & (txy[:, 1] < h)
            under = [
                tnames.get(int(mask[y, x]), OUTSIDE) if good else OUTSIDE
                for (x, y), good in zip(txy, ok, strict=True)
            ]
        for c, t in zip(pts.cls.tolist(), under, strict=True):
            _add(stats.cells_on_tissue, cell_names[c], t, 1)


def dataset_stats(dataset: PairSource, splits: list[str] | None = None, progress: bool = True) -> DatasetStats:
    """Compute all tables over ``splits`` (default: every split of the dataset)."""
    stats = DatasetStats(dataset.spec)
    for split_name in splits or dataset.splits:
        split = dataset.split(split_name)
        for pair in tqdm(split, desc=f"stats {split_name}", disable=not progress, leave=False):
            accumulate_pair(stats, pair, split_name)
    return stats


def stats_tables(stats: DatasetStats) -> list[tuple[str, list[str], list[list]]]:
    """The tables as ``(title, headers, rows)`` for printing."""
    splits = [s for s in stats.pairs if s != "total"] + ["total"]
    cell_cols = list(stats.spec.cell_classes.names)
    tissue_cols = list(dict.fromkeys(tissue_class_names(stats.spec).values()))
    organs = sorted({o for d in stats.pairs.values() for o in d})
    tables = [
        ("Pairs per organ and split (Table 2)", ["organ"] + splits,
         [[o] + [stats.pairs.get(s, {}).get(o, 0) for s in splits] for o in organs]),
        ("Cells per class and split (Table A.1b)", ["cell class"] + splits,
         [[c] + [stats.cells.get(s, {}).get(c, 0) for s in splits] for c in cell_cols]),
    ]
    if tissue_cols:
        tables.append(("Tissue pixels per class and split (Table A.1a)", ["tissue class"] + splits,
                       [[t] + [stats.tissue_pixels.get(s, {}).get(t, 0) for s in splits] for t in tissue_cols]))
        ratios = stats.tissue_ratios()
        tables.append(("Tissue pixel ratios (Table 4)", ["tissue class", "ratio"],
                       [[t, ratios.get(t, 0.0)] for t in tissue_cols]))
    on_cols = tissue_cols + [OUTSIDE]
    fr = stats.cell_tissue_fractions()
    tables.append(("Cells per tissue class (Table 3)", ["cell class"] + on_cols + [f"% on {t}" for t in tissue_cols],
                   [[c] + [stats.cells_on_tissue.get(c, {}).get(t, 0) for t in on_cols]
                    + [100.0 * fr.get(c, {}).get(t, 0.0) for t in tissue_cols] for c in cell_cols]))
    tables.append(("Cells per organ", ["organ"] + cell_cols,
                   [[o] + [stats.cells_per_organ.get(o, {}).get(c, 0) for c in cell_cols] for o in organs]))
    return tables
