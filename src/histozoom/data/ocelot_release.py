"""The official OCELOT release layout: reader and writer.

Layout::

    ROOT/metadata.json                          {"sample_pairs": {"001": {...}, ...}}
    ROOT/images/{split}/cell/NNN.jpg             cell view (1024 px at ~0.2 µm/px)
    ROOT/images/{split}/tissue/NNN.jpg           tissue view (1024 px at ~0.8 µm/px)
    ROOT/annotations/{split}/cell/NNN.csv        x,y,class in cell pixels (1 = BC, 2 = TC)
    ROOT/annotations/{split}/tissue/NNN.png      1 = BG, 2 = CA, 255 = unknown

Each metadata entry carries ``organ``, ``slide_name``, ``subset``, ``cell``/``tissue``
boxes in slide level-0 pixels with ``resized_mpp_x/y`` (the stored images' mpp), the
level-0 ``mpp_x/y``, and ``patch_x_offset/patch_y_offset``: the cell window's centre as a
fraction of the tissue image. histozoom also reads an optional top-level ``classes`` key
(``{"cell": {"1": "BC", ...}, "tissue": {...}, "tissue_ignore": 255}``) so the same layout
can hold other class sets; without it the OCELOT classes apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..errors import InputError
from ..geometry import Placement
from ..jsonio import read_json
from ..pair import (
    OCELOT_CELL_CLASSES,
    OCELOT_TISSUE_CLASSES,
    UNKNOWN,
    ClassSet,
    Pair,
    Points,
)
from .base import DatasetSpec, PairSplit
from .io import read_label_map, read_points_csv, read_rgb, write_image, write_points_csv

SPLITS = ("train", "val", "test")
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


def is_release_dir(root: str | Path) -> bool:
    root = Path(root)
    return (root / "metadata.json").is_file() and (root / "images").is_dir()


def _load_metadata(path: Path) -> dict:
    meta = read_json(path, "metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("sample_pairs"), dict):
        raise InputError(path, 'expected an object with a "sample_pairs" mapping of sample id to entry')
    return meta


def _spec_from_metadata(meta: Mapping, name: str) -> DatasetSpec:
    classes = meta.get("classes")
    if not classes:
        return DatasetSpec(OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES, name=name or "ocelot")
    tissue = classes.get("tissue")
    return DatasetSpec(
        ClassSet.from_mapping(classes["cell"]),
        None if not tissue else ClassSet.from_mapping(tissue, ignore=classes.get("tissue_ignore", UNKNOWN)),
        float(classes.get("cell_mpp", 0.2)),
        float(classes.get("tissue_mpp", 0.8)),
        name,
    )


def _mpp(entry: Mapping, view: str, path: Path, sample_id: str) -> tuple[float, float]:
    try:
        box = entry[view]
        mx, my = float(box["resized_mpp_x"]), float(box["resized_mpp_y"])
    except (KeyError, TypeError, ValueError):
        raise InputError(path, f"sample {sample_id}: missing or invalid {view}.resized_mpp_x/y") from None
    if not (mx > 0 and my > 0):
        raise InputError(path, f"sample {sample_id}: {view} mpp must be positive, got {mx}, {my}")
    return mx, my


def placement_from_entry(entry: Mapping, cell_size, tissue_size, path: Path, sample_id: str) -> Placement:
    """Validated placement of one metadata entry; the window must lie in the tissue image."""
    try:
        float(entry["patch_x_offset"]), float(entry["patch_y_offset"])
    except (KeyError, TypeError, ValueError):
        raise InputError(path, f"sample {sample_id}: missing or invalid patch_x_offset/patch_y_offset") from None
    _mpp(entry, "cell", path, sample_id)
    _mpp(entry, "tissue", path, sample_id)
    p = Placement.from_ocelot_metadata(entry, cell_size, tissue_size)
    if not p.inside_tissue(tol=1.0):
        x0, y0, x1, y1 = p.window_int()
        raise InputError(
            path,
            f"sample {sample_id}: the cell window (x {x0}..{x1}, y {y0}..{y1}) lies outside "
            f"the {tissue_size[0]}x{tissue_size[1]} tissue image",
        )
    return p


class OcelotReleaseSplit(PairSplit):
    """One split of a release directory; pairs load lazily, ids in sorted order."""

    def __init__(self, release: OcelotRelease, name: str):
        self.release = release
        self.name = name
        self.spec = release.spec

    def _image(self, view: str, sample_id: str) -> Path:
        folder = self.release.root / "images" / self.name / view
        for ext in _IMAGE_EXTS:
            p = folder / f"{sample_id}{ext}"
            if p.is_file():
                return p
        raise InputError(folder / f"{sample_id}.jpg", "image file not found")

    @cached_property
    def ids(self) -> list[str]:
        folder = self.release.root / "images" / self.name / "cell"
        if not folder.is_dir():
            raise InputError(folder, f"split {self.name!r} not found")
        return sorted(p.stem for p in folder.iterdir() if p.suffix.lower() in _IMAGE_EXTS)

    def entry(self, sample_id: str) -> dict:
        entry = self.release.sample_pairs.get(sample_id)
        if entry is None:
            raise InputError(self.release.metadata_path, f"no metadata entry for sample {sample_id!r}")
        return entry

    def cell_csv(self, sample_id: str) -> Path:
        return self.release.root / "annotations" / self.name / "cell" / f"{sample_id}.csv"

    def tissue_png(self, sample_id: str) -> Path:
        return self.release.root / "annotations" / self.name / "tissue" / f"{sample_id}.png"

    def points(self, sample_id: str, size: tuple[int, int] | None = None) -> Points | None:
        """Ground-truth cells of a sample (cell frame), ``None`` where no CSV exists."""
        path = self.cell_csv(sample_id)
        return read_points_csv(path, self.spec.cell_classes, size) if path.is_file() else None

    def load(self, sample_id: str) -> Pair:
        entry = self.entry(sample_id)
        meta_path = self.release.metadata_path
        cell_mpp = _mpp(entry, "cell", meta_path, sample_id)
        tissue_mpp = _mpp(entry, "tissue", meta_path, sample_id)
        cell = read_rgb(self._image("cell", sample_id))
        tissue = read_rgb(self._image("tissue", sample_id))
        cell_size = (cell.shape[1], cell.shape[0])
        tissue_size = (tissue.shape[1], tissue.shape[0])
        check_box_size(entry, "cell", cell_size, meta_path, sample_id)
        check_box_size(entry, "tissue", tissue_size, meta_path, sample_id)
        placement = placement_from_entry(entry, cell_size, tissue_size, meta_path, sample_id)
        mask_path = self.tissue_png(sample_id)
        mask = read_label_map(mask_path, self.spec.tissue_classes, tissue_size) if mask_path.is_file() else None
        return Pair(
            id=sample_id,
            cell_image=cell,
            tissue_image=tissue,
            placement=placement,
            cell_points=self.points(sample_id, cell_size),
            tissue_mask=mask,
            organ=entry.get("organ"),
            cell_mpp=cell_mpp[0],
            tissue_mpp=tissue_mpp[0],
            meta={"slide_name": entry.get("slide_name"), "split": self.name},
        )


def check_box_size(entry: Mapping, view: str, size: tuple[int, int], path: Path, sample_id: str) -> None:
    """The stored image must be as large as its level-0 box at the stored mpp (±2 %)."""
    box = entry.get(view, {})
    try:
        span = float(box["x_end"]) - float(box["x_start"]), float(box["y_end"]) - float(box["y_start"])
        mpp0 = float(entry["mpp_x"]), float(entry["mpp_y"])
    except (KeyError, TypeError, ValueError):
        return  # boxes are optional; the mpp alone defines the geometry
    for axis, (s, m0, rm) in enumerate(zip(span, mpp0, (box["resized_mpp_x"], box["resized_mpp_y"]), strict=True)):
        expected = s * m0 / float(rm)
        if abs(expected - size[axis]) > max(2.0, 0.02 * expected):
            raise InputError(
                path,
                f"sample {sample_id}: {view} image is {size[0]}x{size[1]} px but its metadata box "
                f"implies {expected:.0f} px along {'xy'[axis]}",
            )


class OcelotRelease:
    """A dataset in the official OCELOT release layout."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.metadata_path = self.root / "metadata.json"
        self.metadata = _load_metadata(self.metadata_path)
        self.sample_pairs: dict[str, dict] = self.metadata["sample_pairs"]
        self.spec = _spec_from_metadata(self.metadata, self.metadata.get("dataset_name", self.root.name))

    @property
    def splits(self) -> list[str]:
        return [s for s in SPLITS if (self.root / "images" / s / "cell").is_dir()]

    def split(self, name: str) -> OcelotReleaseSplit:
        return OcelotReleaseSplit(self, name)


# ---------------------------------------------------------------------- writer
def ocelot_entry(pair: Pair, split: str, slide_origin: tuple[int, int] = (0, 0)) -> dict:
    """A metadata entry describing ``pair`` as the release does.

    Level 0 is taken at the cell view's mpp; boxes are level-0 pixels of a virtual slide
    whose tissue view starts at ``slide_origin``.
    """
    p = pair.placement
    mpp0 = pair.cell_mpp
    t_scale = pair.tissue_mpp / mpp0  # level-0 px per tissue px
    tx0, ty0 = slide_origin
    tissue_box = {
        "x_start": tx0, "y_start": ty0,
        "x_end": tx0 + round(pair.tissue_size[0] * t_scale), "y_end": ty0 + round(pair.tissue_size[1] * t_scale),
        "resized_mpp_x": pair.tissue_mpp, "resized_mpp_y": pair.tissue_mpp,
    }
    cx0, cy0 = tx0 + round(p.x0 * t_scale), ty0 + round(p.y0 * t_scale)
    cell_box = {
        "x_start": cx0, "y_start": cy0,
        "x_end": cx0 + pair.cell_size[0], "y_end": cy0 + pair.cell_size[1],
        "resized_mpp_x": pair.cell_mpp, "resized_mpp_y": pair.cell_mpp,
    }
    ox, oy = p.centre_frac
    return {
        "slide_name": pair.meta.get("slide_name", f"slide_{pair.id}"),
        "cell": cell_box,
        "tissue": tissue_box,
        "patch_x_offset": ox,
        "patch_y_offset": oy,
        "mpp_x": mpp0,
        "mpp_y": mpp0,
        "organ": pair.organ or "unknown",
        "subset": split,
    }


class OcelotReleaseWriter:
    """Write pairs in the release layout; ``close()`` writes metadata.json (atomically).

    Use as a context manager. Image files are JPEG (quality 95) as in the release, masks PNG.
    """

    def __init__(self, root: str | Path, spec: DatasetSpec | None = None, dataset_name: str = "histozoom"):
        self.root = Path(root)
        self.spec = spec
        self.dataset_name = dataset_name
        self.entries: dict[str, dict] = {}

    def add(self, pair: Pair, split: str, entry: dict | None = None, image_ext: str = ".jpg") -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        r = self.root
        write_image(r / "images" / split / "cell" / f"{pair.id}{image_ext}", pair.cell_image)
        write_image(r / "images" / split / "tissue" / f"{pair.id}{image_ext}", pair.tissue_image)
        if pair.cell_points is not None:
            write_points_csv(r / "annotations" / split / "cell" / f"{pair.id}.csv", pair.cell_points)
        if pair.tissue_mask is not None:
            write_image(r / "annotations" / split / "tissue" / f"{pair.id}.png", pair.tissue_mask)
        self.entries[pair.id] = entry if entry is not None else ocelot_entry(pair, split)

    def close(self) -> None:
        meta: dict[str, Any] = {"dataset_name": self.dataset_name, "sample_pairs": dict(sorted(self.entries.items()))}
        if self.spec is not None:
            meta["classes"] = {
                "cell": {str(i): n for i, n in zip(self.spec.cell_classes.ids, self.spec.cell_classes.names, strict=True)},
                "tissue": None if self.spec.tissue_classes is None else {
                    str(i): n for i, n in zip(self.spec.tissue_classes.ids, self.spec.tissue_classes.names, strict=True)},
                "tissue_ignore": None if self.spec.tissue_classes is None else self.spec.tissue_classes.ignore,
                "cell_mpp": self.spec.cell_mpp,
                "tissue_mpp": self.spec.tissue_mpp,
            }
        write_json(self.root / "metadata.json", meta)

    def __enter__(self) -> OcelotReleaseWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
