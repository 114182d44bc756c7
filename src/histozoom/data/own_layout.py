"""A plain layout for users' own paired patches, described by a small YAML (or JSON) file.

``ROOT/dataset.yaml``::

    name: carp-like
    cell_classes: ["TC+", "TC-"]        # ids 1..n in this order, or a mapping {1: "TC+", ...}
    tissue_classes: ["BG", "CA"]        # optional; omit for datasets without tissue labels
    tissue_ignore: 255                  # label value of unknown tissue pixels (optional)
    cell_mpp: 0.2                       # µm/px of the cell images
    tissue_mpp: 0.8                     # µm/px of the tissue images
    pairs: pairs.csv                    # the index below (default pairs.csv)

``ROOT/pairs.csv`` has a header and one row per pair; paths are relative to ROOT::

    split,id,cell_image,tissue_image,centre_x,centre_y[,cell_points][,tissue_mask][,organ][,slide][,cell_mpp][,tissue_mpp]

``centre_x/centre_y`` are the cell window's centre as fractions of the tissue image
(like OCELOT's ``patch_x_offset/patch_y_offset``). ``cell_points`` is a CSV of
``x,y,class`` in cell pixels; ``tissue_mask`` a label image in the tissue frame. Empty
optional cells mean "not available". ``slide`` names the slide a pair was cut from (pairs of
one slide are kept in one fold by :mod:`histozoom.data.splits`; default: the pair's own id).
Per-row mpp columns override the file's values.

Every path (``pairs:`` and the file columns) must resolve, symlinks followed, inside
ROOT; ``../``, absolute paths and symlinks out of ROOT are refused unless the dataset is
opened with ``allow_outside_paths=True``. Every mpp must lie in 0.01–100 µm/px
(:func:`~histozoom.data.checks.check_mpp`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import yaml

from ..errors import InputError
from ..geometry import Placement
from ..jsonio import read_json, read_text
from ..pair import UNKNOWN, Pair
from .base import DatasetSpec, PairSplit, slide_name
from .checks import check_mpp, class_set, excerpt, resolve_inside
from .io import read_label_map, read_points_csv, read_rgb

REQUIRED_COLUMNS = ("split", "id", "cell_image", "tissue_image", "centre_x", "centre_y")
PATH_COLUMNS = ("cell_image", "tissue_image", "cell_points", "tissue_mask")
"""Columns of ``pairs.csv`` that name files; each must resolve inside the dataset folder."""
DESCRIPTOR_NAMES = ("dataset.yaml", "dataset.yml", "dataset.json")


def find_descriptor(root: str | Path) -> Path | None:
    root = Path(root)
    if root.is_file():
        return root
    for n in DESCRIPTOR_NAMES:
        if (root / n).is_file():
            return root / n
    return None


@dataclass
class _Row:
    line: int
    split: str
    id: str
    fields: dict[str, str]
    paths: dict[str, Path]


class OwnDataset:
    """A dataset in the own-data layout; ``split(name)`` gives its pairs.

    Every path the descriptor and ``pairs.csv`` name must resolve (symlinks followed)
    inside the dataset folder; ``allow_outside_paths=True`` lifts that check.
    """

    def __init__(self, root: str | Path, allow_outside_paths: bool = False):
        desc = find_descriptor(root)
        if desc is None:
            raise InputError(Path(root) / "dataset.yaml", "dataset descriptor not found")
        self.descriptor = desc
        self.root = desc.parent
        self.allow_outside_paths = allow_outside_paths
        if desc.suffix == ".json":
            cfg = read_json(desc, "dataset descriptor")
        else:
            try:
                cfg = yaml.safe_load(read_text(desc, "dataset descriptor"))
            except yaml.YAMLError as e:
                mark = getattr(e, "problem_mark", None)
                where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
                raise InputError(desc, f"cannot parse YAML{where} ({getattr(e, 'problem', None) or type(e).__name__})") from None
        if not isinstance(cfg, dict) or "cell_classes" not in cfg:
            raise InputError(desc, "expected a mapping with at least 'cell_classes'")
        ignore = cfg.get("tissue_ignore", UNKNOWN)
        tissue = cfg.get("tissue_classes")
        cell_mpp = check_mpp(cfg.get("cell_mpp", 0.2), desc, "cell_mpp")
        tissue_mpp = check_mpp(cfg.get("tissue_mpp", 0.8), desc, "tissue_mpp")
        self.spec = DatasetSpec(
            class_set(cfg["cell_classes"], desc, "cell_classes", names_ok=True),
            None if tissue is None else class_set(tissue, desc, "tissue_classes", ignore, names_ok=True),
            cell_mpp,
            tissue_mpp,
            str(cfg.get("name", self.root.name)),
        )
        self.index_path = resolve_inside(self.root, str(cfg.get("pairs", "pairs.csv")), allow_outside=allow_outside_paths,
                                         source=desc, what="pairs")
        self.rows = self._read_index()

    def _read_index(self) -> list[_Row]:
        path = self.index_path
        text = read_text(path, "pairs index", encoding="utf-8-sig")  # utf-8-sig: a byte-order mark (Excel) is skipped
        try:
            return self._parse_index(path, csv.DictReader(io.StringIO(text, newline="")))
        except csv.Error as e:
            raise InputError(path, f"not a valid CSV ({e})") from None

    def _parse_index(self, path: Path, reader: csv.DictReader) -> list[_Row]:
        rows, seen = [], set()
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(path, f"missing columns {missing} (need {list(REQUIRED_COLUMNS)})", row=1)
        for line, rec in enumerate(reader, start=2):
            rec = {k: (v or "").strip() for k, v in rec.items() if k is not None}
            for c in REQUIRED_COLUMNS:
                if not rec.get(c):
                    raise InputError(path, f"empty {c!r}", row=line)
            key = (rec["split"], rec["id"])
            if key in seen:
                raise InputError(path, f"duplicate pair id {excerpt(rec['id'])} in split {excerpt(rec['split'])}",
                                 row=line)
            seen.add(key)
            paths = {c: resolve_inside(self.root, rec[c], allow_outside=self.allow_outside_paths, source=path, row=line,
                                       what=c)
                     for c in PATH_COLUMNS if rec.get(c)}
            for c in ("cell_mpp", "tissue_mpp"):
                if rec.get(c):
                    check_mpp(rec[c], path, c, row=line)
            rows.append(_Row(line, rec["split"], rec["id"], rec, paths))
        return rows

    @property
    def splits(self) -> list[str]:
        return sorted({r.split for r in self.rows})

    def split(self, name: str) -> OwnSplit:
        rows = [r for r in self.rows if r.split == name]
        if not rows:
            raise InputError(self.index_path, f"no pairs in split {name!r} (splits: {self.splits})")
        return OwnSplit(self, name, rows)


class OwnSplit(PairSplit):
    def __init__(self, dataset: OwnDataset, name: str, rows: list[_Row]):
        self.dataset = dataset
        self.spec = dataset.spec
        self.name = name
        self._rows = {r.id: r for r in rows}

    @cached_property
    def ids(self) -> list[str]:
        return sorted(self._rows)

    def slide_and_organ(self, sample_id: str) -> tuple[str, str | None]:
        row = self._rows.get(sample_id)
        if row is None:
            raise InputError(self.dataset.index_path, f"no pair {sample_id!r} in split {self.name!r}")
        return slide_name(row.fields.get("slide"), sample_id), row.fields.get("organ") or None

    def _float(self, row: _Row, key: str, default: float | None = None) -> float:
        value = row.fields.get(key, "")
        if value == "" and default is not None:
            return default
        try:
            return float(value)
        except ValueError:
            raise InputError(self.dataset.index_path, f"{key}={excerpt(value)} is not a number", row=row.line) from None


    def load(self, sample_id: str) -> Pair:
        row = self._rows.get(sample_id)
        if row is None:
            raise InputError(self.dataset.index_path, f"no pair {sample_id!r} in split {self.name!r}")
        spec, f = self.spec, row.fields
        cell_p, tissue_p = row.paths["cell_image"], row.paths["tissue_image"]
        points_p, mask_p = row.paths.get("cell_points"), row.paths.get("tissue_mask")
        index = self.dataset.index_path
        cell_mpp = check_mpp(f["cell_mpp"], index, "cell_mpp", row.line) if f.get("cell_mpp") else spec.cell_mpp
        tissue_mpp = check_mpp(f["tissue_mpp"], index, "tissue_mpp", row.line) if f.get("tissue_mpp") else spec.tissue_mpp
        cell = read_rgb(cell_p)
        tissue = read_rgb(tissue_p)
        cell_size, tissue_size = (cell.shape[1], cell.shape[0]), (tissue.shape[1], tissue.shape[0])
        centre = (self._float(row, "centre_x"), self._float(row, "centre_y"))
        placement = Placement.from_centre(centre, cell_size, tissue_size, cell_mpp, tissue_mpp)
        if not placement.inside_tissue(tol=1.0):
            raise InputError(self.dataset.index_path,
                             f"pair {sample_id}: cell window {placement.window_int()} lies outside the tissue image",
                             row=row.line)
        points = read_points_csv(points_p, spec.cell_classes, cell_size) if points_p is not None else None
        mask = None
        if mask_p is not None:
            if spec.tissue_classes is None:
                raise InputError(self.dataset.descriptor, "tissue masks given but no tissue_classes declared")
            mask = read_label_map(mask_p, spec.tissue_classes, tissue_size)
        return Pair(
            id=sample_id, cell_image=cell, tissue_image=tissue, placement=placement,
            cell_points=points, tissue_mask=mask, organ=f.get("organ") or None,
            cell_mpp=cell_mpp, tissue_mpp=tissue_mpp,
            meta={"split": self.name, **({"slide_name": f["slide"]} if f.get("slide") else {})},
        )


def write_own_dataset(root: str | Path, spec: DatasetSpec, pairs_by_split: dict[str, Iterable[Pair]]) -> Path:
    """Write pairs in the own-data layout (PNG images, CSV points); returns the descriptor path."""
    from ..atomic import atomic_open, write_text
    from .io import write_image, write_points_csv

    root = Path(root)
    header = list(REQUIRED_COLUMNS) + ["cell_points", "tissue_mask", "organ", "slide", "cell_mpp", "tissue_mpp"]
    lines = []
    for split, pairs in pairs_by_split.items():
        for p in pairs:
            base = f"{split}/{p.id}"
            write_image(root / f"{base}_cell.png", p.cell_image)
            write_image(root / f"{base}_tissue.png", p.tissue_image)
            pts = ""
            if p.cell_points is not None:
                pts = f"{base}_cells.csv"
                write_points_csv(root / pts, p.cell_points)
            mask = ""
            if p.tissue_mask is not None:
                mask = f"{base}_tissue_mask.png"
                write_image(root / mask, p.tissue_mask)
            cx, cy = p.placement.centre_frac
            lines.append([split, p.id, f"{base}_cell.png", f"{base}_tissue.png", repr(cx), repr(cy), pts, mask,
                          p.organ or "", p.meta.get("slide_name") or "", repr(p.cell_mpp), repr(p.tissue_mpp)])
    with atomic_open(root / "pairs.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(lines)
    desc = {
        "name": spec.name or root.name,
        "cell_classes": {i: n for i, n in zip(spec.cell_classes.ids, spec.cell_classes.names, strict=True)},
        "cell_mpp": spec.cell_mpp,
        "tissue_mpp": spec.tissue_mpp,
        "pairs": "pairs.csv",
    }
    if spec.tissue_classes is not None:
        desc["tissue_classes"] = {i: n for i, n in zip(spec.tissue_classes.ids, spec.tissue_classes.names, strict=True)}
        desc["tissue_ignore"] = spec.tissue_classes.ignore
    write_text(root / "dataset.yaml", yaml.safe_dump(desc, sort_keys=False))
    return root / "dataset.yaml"
