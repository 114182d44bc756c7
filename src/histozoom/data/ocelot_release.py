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
    Pair,
    Points,
)
from .base import DatasetSpec, PairSplit, slide_name
from .checks import check_mpp, class_set, excerpt
from .io import read_image_size, read_label_map, read_points_csv, read_rgb, write_image, write_points_csv

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


def _spec_from_metadata(meta: Mapping, name: str, path: Path | None = None) -> DatasetSpec:
    classes = meta.get("classes")
    if not classes:
        return DatasetSpec(OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES, name=name or "ocelot")
    if not isinstance(classes, Mapping):
        raise InputError(path, f"classes must be an object, got {excerpt(classes)}")
    tissue = classes.get("tissue")
    return DatasetSpec(
        class_set(classes.get("cell"), path, "classes.cell"),
        None if not tissue else class_set(tissue, path, "classes.tissue", classes.get("tissue_ignore", UNKNOWN),
                                          "classes.tissue_ignore"),
        check_mpp(classes.get("cell_mpp", 0.2), path, "classes.cell_mpp"),
        check_mpp(classes.get("tissue_mpp", 0.8), path, "classes.tissue_mpp"),
        name,
    )


def _mpp(entry: Mapping, view: str, path: Path, sample_id: str) -> tuple[float, float]:
    try:
        box = entry[view]
        raw = box["resized_mpp_x"], box["resized_mpp_y"]
    except (KeyError, TypeError):
        raise InputError(path, f"sample {sample_id}: missing {view}.resized_mpp_x/y") from None
    mx = check_mpp(raw[0], path, f"sample {sample_id}: {view}.resized_mpp_x")
    my = check_mpp(raw[1], path, f"sample {sample_id}: {view}.resized_mpp_y")
    return mx, my


def placement_from_entry(entry: Mapping, cell_size, tissue_size, path: Path, sample_id: str) -> Placement:
    """Validated placement of one metadata entry.

    ``patch_x_offset``/``patch_y_offset`` (the window centre as fractions of the tissue
    image) must be finite numbers in [0, 1]: the centre lies inside the tissue image,
    while the window itself may touch or cross the image's border (the part outside
    reads as padding). Anything else raises :class:`InputError` naming the file and sample.
    """
    try:
        offsets = float(entry["patch_x_offset"]), float(entry["patch_y_offset"])
    except (KeyError, TypeError, ValueError):
        raise InputError(path, f"sample {sample_id}: missing or invalid patch_x_offset/patch_y_offset") from None
    for name, v in zip(("patch_x_offset", "patch_y_offset"), offsets):
        if not (0.0 <= v <= 1.0):  # also False for NaN
            raise InputError(path, f"sample {sample_id}: {name} {v!r} must be a number in [0, 1] "
                                   "(the cell window's centre as a fraction of the tissue image)")
    _mpp(entry, "cell", path, sample_id)
    _mpp(entry, "tissue", path, sample_id)
    return Placement.from_ocelot_metadata(entry, cell_size, tissue_size)


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

    def slide_and_organ(self, sample_id: str) -> tuple[str, str | None]:
        entry = self.entry(sample_id)
        return slide_name(entry.get("slide_name"), sample_id), entry.get("organ")

    def cell_csv(self, sample_id: str) -> Path:
        return self.release.root / "annotations" / self.name / "cell" / f"{sample_id}.csv"

    def tissue_png(self, sample_id: str) -> Path:
        return self.release.root / "annotations" / self.name / "tissue" / f"{sample_id}.png"

    def points(self, sample_id: str, size: tuple[int, int] | None = None) -> Points | None:
        """Ground-truth cells of a sample (cell frame).

        ``None`` for an unlabelled split (no ``annotations/{split}/cell/`` folder); in a
        labelled split every sample needs its CSV (an empty file for an image without
        cells), so a lost file is an error, never an image scored as having no cells.
        """
        path = self.cell_csv(sample_id)
        if path.is_file():
            return read_points_csv(path, self.spec.cell_classes, size)
        if path.parent.is_dir():
            raise InputError(path, f"ground-truth CSV missing: split {self.name!r} is annotated "
                                   f"({path.parent} exists) but has no file for sample {sample_id!r} "
                                   "(an image without cells needs an empty CSV)")
        return None

    def load(self, sample_id: str) -> Pair:
        entry = self.entry(sample_id)
        meta_path = self.release.metadata_path
        cell_mpp = _mpp(entry, "cell", meta_path, sample_id)
        tissue_mpp = _mpp(entry, "tissue", meta_path, sample_id)
        cell_path, tissue_path = self._image("cell", sample_id), self._image("tissue", sample_id)
        # the metadata box says how large each image should be: check the headers before decoding
        cell_size, tissue_size = read_image_size(cell_path), read_image_size(tissue_path)
        check_box_size(entry, "cell", cell_size, meta_path, sample_id)
        check_box_size(entry, "tissue", tissue_size, meta_path, sample_id)
        cell = read_rgb(cell_path, size=cell_size)
        tissue = read_rgb(tissue_path, size=tissue_size)
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
    for axis, m0 in zip("xy", mpp0, strict=True):
        check_mpp(m0, path, f"sample {sample_id}: mpp_{axis}")
    for axis, (s, m0, rm) in enumerate(zip(span, mpp0, _mpp(entry, view, path, sample_id), strict=True)):
        expected = s * m0 / rm
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
        self.spec = _spec_from_metadata(self.metadata, self.metadata.get("dataset_name", self.root.name), self.metadata_path)

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
