"""Nuclei instance/class data: the record, class schemes, readers and writers.

Every reader returns a :class:`NucleiSample`: an RGB image, an instance map and
(optionally) one class per instance.

Conventions
-----------
* ``inst_map`` is ``(H, W)`` int32; ``0`` is background, every other value is one
  nucleus. Readers keep the ids the file uses (CoNSeP ids are often non-contiguous; the
  MICCAI 2015 masks number 1..N; GBM40 shape ``k`` of the XML in document order gets
  id ``k``). Use :func:`histozoom.metrics.instances.relabel_instances` for ids 1..n.
* ``inst_class`` is ``{id: class id}`` for every id in the map, or ``None`` (instances
  only). Class ids come from a :class:`~histozoom.pair.ClassSet`; 0 is never a
  nucleus class. A class id outside the sample's class set is an :class:`InputError`
  naming the file it came from.
* Class schemes are data (:class:`NucleiClassScheme`): the ccRCC grading scheme of
  CHR-Net is ``G1=1, G2=2, G3=3, endothelial=4`` with its two cross-category tasks
  (task 1 merges G1+G2, task 2 merges G2+G3) as :class:`ClassMerge` entries. Nothing
  downstream hard-codes those ids.

Formats
-------
* **CoNSeP / HoVer-Net ``.mat``** (:func:`read_consep_mat`): ``inst_map`` (ids as in the
  file), ``type_map`` (per-pixel class), ``inst_type`` (``(N, 1)``, one class per
  instance *in increasing id order*), ``inst_centroid`` (``(N, 2)``, ``(x, y)`` per
  instance in the same order), ``inst_bbox`` (``(N, 4)``: ``row0, row1, col0, col1``
  with exclusive ends). ``inst_type`` is the class of record; without it classes come
  from a majority vote of ``type_map``. The image is the file of the same stem in a
  sibling ``imgs/`` (or ``images/``, ``Images/``) folder.
* **MICCAI 2015** text masks (:func:`read_miccai_mask`): first line ``width height``,
  then ``width * height`` labels, one per line, in row-major order (x fastest:
  pixel (0,0), (1,0), ... (width-1, height-1)). In the released training set the masks
  of ``image04`` and ``image05`` are swapped (see :data:`MICCAI2015_SWAPPED`).
* **Contour XML** of GBM40 (:func:`read_contour_xml`): ``<Shape Type="Polygon">`` /
  ``"SmoothPolygon"`` with ``<Point X= Y=>`` vertices, and ``<Shape Type="Oval">`` with
  ``<Data Rotation=deg><Extent X Y Width Height>``.
* **Plain folder** (:class:`NucleiDataset.folder`, :func:`write_nuclei_folder`)::

      ROOT/classes.json | classes.yaml   class names (+ optional merges and mpp)
      ROOT/images/NAME.png               RGB image (png/tif/jpg)
      ROOT/labels/NAME.npy|png|tif       instance map
      ROOT/classes/NAME.json             optional {"id": class}
      ROOT/types/NAME.png|tif|npy        optional per-pixel type map (majority vote per
                                         instance); give a class JSON or a type map, not both

  ``ROOT`` may hold split folders (``ROOT/train/images/...``); the class file is then
  looked up in the split folder first and in ``ROOT``.
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from ...atomic import atomic_open, write_json
from ...errors import InputError
from ...metrics.instances import instance_classes
from ...pair import ClassSet
from ..io import read_image, read_npy, read_rgb, write_image

__all__ = [
    "CCRCC",
    "CCRCC_CLASSES",
    "CONSEP_CLASSES",
    "MICCAI2015_SWAPPED",
    "ClassMerge",
    "NucleiClassScheme",
    "NucleiSample",
    "NucleiDataset",
    "open_nuclei",
    "read_instance_map",
    "read_consep_mat",
    "read_miccai_mask",
    "read_miccai2015",
    "read_contour_xml",
    "read_gbm40",
    "read_class_file",
    "read_folder_sample",
    "write_class_file",
    "write_nuclei_sample",
    "write_nuclei_folder",
    "write_consep_mat",
    "write_consep_folder",
]

IMAGE_EXTS = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
LABEL_EXTS = (".npy", ".png", ".tif", ".tiff")
CLASS_FILES = ("classes.json", "classes.yaml", "classes.yml")


# ====================================================================== class schemes
@dataclass(frozen=True)
class ClassMerge:
    """A coarser class set made by merging groups of classes.

    ``groups[k]`` lists the original class ids that become class ``k + 1``, named
    ``names[k]``. Background (0) always stays 0.
    """

    name: str
    groups: tuple[tuple[int, ...], ...]
    names: tuple[str, ...]

    def __post_init__(self):
        object.__setattr__(self, "groups", tuple(tuple(int(c) for c in g) for g in self.groups))
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        if len(self.groups) != len(self.names):
            raise ValueError(f"ClassMerge {self.name!r}: {len(self.groups)} groups but {len(self.names)} names")
        flat = [c for g in self.groups for c in g]
        if len(flat) != len(set(flat)) or any(not g for g in self.groups):
            raise ValueError(f"ClassMerge {self.name!r}: groups must be non-empty and disjoint, got {self.groups}")

    @property
    def mapping(self) -> dict[int, int]:
        """``{original class id: merged class id}``."""
        return {c: k + 1 for k, g in enumerate(self.groups) for c in g}

    @property
    def classes(self) -> ClassSet:
        """The merged class set (ids ``1..len(groups)``)."""
        return ClassSet.from_names(self.names)

    def to_dict(self) -> dict:
        return {"name": self.name, "groups": [list(g) for g in self.groups], "names": list(self.names)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "ClassMerge":
        return cls(str(d["name"]), tuple(tuple(g) for g in d["groups"]), tuple(d["names"]))


@dataclass(frozen=True)
class NucleiClassScheme:
    """Nucleus classes of a dataset, plus named merges (cross-category tasks).

    Every merge must cover every class exactly once.
    """

    name: str
    classes: ClassSet
    merges: tuple[ClassMerge, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "merges", tuple(self.merges))
        for m in self.merges:
            got = sorted(m.mapping)
            if got != sorted(self.classes.ids):
                raise ValueError(
                    f"scheme {self.name!r}: merge {m.name!r} covers classes {got}, expected {sorted(self.classes.ids)}"
                )
        names = [m.name for m in self.merges]
        if len(set(names)) != len(names):
            raise ValueError(f"scheme {self.name!r}: duplicate merge names {names}")

    def merge(self, name: str) -> ClassMerge:
        for m in self.merges:
            if m.name == name:
                return m
        raise KeyError(f"scheme {self.name!r} has no merge {name!r}; it has {[m.name for m in self.merges]}")

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "classes": {str(i): n for i, n in zip(self.classes.ids, self.classes.names)},
            "merges": [m.to_dict() for m in self.merges],
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "NucleiClassScheme":
        c = d["classes"]
        classes = ClassSet.from_mapping(c) if isinstance(c, Mapping) else ClassSet.from_names([str(n) for n in c])
        return cls(str(d.get("name", "")), classes, tuple(ClassMerge.from_dict(m) for m in d.get("merges", ())))


CCRCC_CLASSES = ClassSet(("G1", "G2", "G3", "endothelial"), (1, 2, 3, 4))
"""ccRCC nuclei grading (CHR-Net): ISUP grades 1-3 of tumour nuclei and endothelial nuclei."""

CCRCC = NucleiClassScheme(
    "ccrcc",
    CCRCC_CLASSES,
    (
        ClassMerge("task1", ((1, 2), (3,), (4,)), ("G1+G2", "G3", "endothelial")),
        ClassMerge("task2", ((1,), (2, 3), (4,)), ("G1", "G2+G3", "endothelial")),
    ),
)
"""The CHR-Net scheme: task 1 merges G1+G2 (seen at 100x), task 2 merges G2+G3 (seen at 400x)."""

CONSEP_CLASSES = ClassSet(
    (
        "other",
        "inflammatory",
        "healthy epithelial",
        "dysplastic/malignant epithelial",
        "fibroblast",
        "muscle",
        "endothelial",
    ),
    (1, 2, 3, 4, 5, 6, 7),
)
"""CoNSeP's seven original type ids (HoVer-Net); the default class set of CoNSeP-style files.

The ids are what the files store; the names only hold for real CoNSeP. Pass your own
``classes`` for files from other datasets saved in this format (e.g. PanNuke types).
"""


# ====================================================================== the record
@dataclass
class NucleiSample:
    """One image with its nucleus instances and (optionally) their classes.

    ``image``: ``(H, W, 3)`` uint8 RGB. ``inst_map``: ``(H, W)`` int32, 0 = background.
    ``inst_class``: ``{id: class}`` covering every id in ``inst_map`` (extra keys are
    dropped), or ``None``. ``classes``: the class set the ids come from. ``mpp``: microns
    per pixel if known. ``source``: the file the labels came from (named in errors).
    """

    id: str
    image: np.ndarray
    inst_map: np.ndarray
    inst_class: dict[int, int] | None = None
    classes: ClassSet | None = None
    mpp: float | None = None
    source: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        src = self.source
        img = np.asarray(self.image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise InputError(src, f"image must be (H, W, 3) uint8, got shape {img.shape} dtype {img.dtype}")
        self.image = img
        self.inst_map = _check_instance_map(self.inst_map, src)
        if self.inst_map.shape != img.shape[:2]:
            raise InputError(
                src, f"instance map is {_wh(self.inst_map.shape)} px but the image is {_wh(img.shape)} px"
            )
        if self.inst_class is not None:
            self.inst_class = _check_inst_class(self.inst_class, self.instance_ids, self.classes, src)

    @property
    def instance_ids(self) -> np.ndarray:
        """Sorted ids present in ``inst_map`` (int64)."""
        ids = np.unique(self.inst_map)
        return ids[ids != 0].astype(np.int64)

    @property
    def n_instances(self) -> int:
        return int(self.instance_ids.size)

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``."""
        return (self.image.shape[1], self.image.shape[0])


def _wh(shape: tuple[int, ...]) -> str:
    """``WxH`` of an array shape ``(H, W, ...)`` (the shape itself if it has fewer axes)."""
    return f"{shape[1]}x{shape[0]}" if len(shape) >= 2 else str(tuple(shape))


def _check_instance_map(a: Any, path: Path | str | None) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] in (3, 4) and all(np.array_equal(a[..., 0], a[..., k]) for k in (1, 2)):
        a = a[..., 0]
    if a.ndim != 2:
        raise InputError(path, f"instance map must be 2-D (H, W), got shape {a.shape}")
    if a.dtype == bool:
        a = a.astype(np.int32)
    elif np.issubdtype(a.dtype, np.floating):
        if a.size and not (np.isfinite(a).all() and np.array_equal(a, np.round(a))):
            raise InputError(path, f"instance map has non-integer values (dtype {a.dtype})")
    elif not np.issubdtype(a.dtype, np.integer):
        raise InputError(path, f"instance map must hold integers, got dtype {a.dtype}")
    if a.size:
        lo, hi = a.min(), a.max()
        if lo < 0:
            raise InputError(path, f"instance ids must be >= 0 (0 = background), found {lo}")
        if hi > np.iinfo(np.int32).max:
            raise InputError(path, f"instance id {hi} does not fit in int32")
    return np.ascontiguousarray(a, dtype=np.int32)


def _check_inst_class(
    inst_class: Mapping, ids: np.ndarray, classes: ClassSet | None, path: Path | str | None
) -> dict[int, int]:
    try:
        d = {int(k): int(v) for k, v in inst_class.items()}
    except (TypeError, ValueError) as e:
        raise InputError(path, f"instance classes must map integer ids to integer classes ({e})") from None
    missing = [int(i) for i in ids if int(i) not in d]
    if missing:
        raise InputError(path, f"no class for instance id(s) {_short(missing)}")
    out = {int(i): d[int(i)] for i in ids}
    if classes is not None:
        bad = sorted({c for c in out.values() if c not in classes.ids})
        if bad:
            raise InputError(
                path, f"class id(s) {_short(bad)} not in the class set {dict(zip(classes.ids, classes.names))}"
            )
    return out


def _short(values: Sequence, n: int = 10) -> str:
    s = ", ".join(map(str, list(values)[:n]))
    return s + (" ..." if len(values) > n else "")


# ====================================================================== instance maps
def read_instance_map(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """An instance map from ``.npy`` / PNG / TIFF as ``(H, W)`` int32 (0 = background).

    ``shape = (H, W)`` is checked if given. 16-bit PNG and int32 TIFF keep their ids;
    an RGB file is accepted only when its three channels are equal.
    """
    path = Path(path)
    if path.suffix.lower() == ".npy":
        arr = read_npy(path)
    else:
        arr = read_image(path)
    arr = _check_instance_map(arr, path)
    if shape is not None and arr.shape != tuple(shape):
        raise InputError(path, f"instance map is {_wh(arr.shape)} px, expected {_wh(shape)}")
    return arr


def _dense(inst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ids and the map relabelled to ``1..n`` in sorted-id order."""
    ids, inv = np.unique(inst, return_inverse=True)
    inv = inv.reshape(inst.shape)
    if ids.size and ids[0] == 0:
        return ids[1:], inv.astype(np.int32)
    return ids, (inv + 1).astype(np.int32)


# ====================================================================== CoNSeP .mat
def _find_image(stem: str, dirs: Sequence[Path], source: Path) -> Path:
    for d in dirs:
        for ext in IMAGE_EXTS:
            p = d / f"{stem}{ext}"
            if p.is_file():
                return p
    raise InputError(source, f"no image found for {stem!r}; looked in {sorted({str(d) for d in dirs})}")


def _loadmat(path: Path) -> dict:
    import scipy.io

    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        return scipy.io.loadmat(path)
    except NotImplementedError as e:  # v7.3 (HDF5) files
        raise InputError(path, f"cannot read MATLAB file ({e}); save it as -v7") from e
    except Exception as e:  # scipy raises a zoo of types on corrupt files
        raise InputError(path, f"cannot read MATLAB file ({type(e).__name__}: {e})") from e


def read_consep_mat(
    mat_path: str | Path,
    image_path: str | Path | None = None,
    *,
    classes: ClassSet | None = CONSEP_CLASSES,
    sample_id: str | None = None,
) -> NucleiSample:
    """A CoNSeP/HoVer-Net style ``.mat`` label file with its image.

    Instance ids are kept as stored. Classes: ``inst_type[k]`` belongs to the k-th id in
    increasing order (checked on the real files against the per-instance majority of
    ``type_map``); without ``inst_type`` the majority of ``type_map`` is used; with
    neither the sample has no classes. ``classes=None`` skips the class-id check.
    ``meta`` holds ``centroids_xy`` (the file's ``inst_centroid`` in that id order, if
    present), ``type_map_disagrees`` (ids whose ``type_map`` majority differs from
    ``inst_type``) and ``keys`` (all variables of the file).
    """
    mat_path = Path(mat_path)
    m = _loadmat(mat_path)
    if "inst_map" not in m:
        raise InputError(mat_path, f"no 'inst_map' variable (has {sorted(k for k in m if not k.startswith('__'))})")
    inst = _check_instance_map(m["inst_map"], mat_path)
    ids = np.unique(inst)
    ids = ids[ids != 0].astype(np.int64)
    meta: dict[str, Any] = {"keys": sorted(k for k in m if not k.startswith("__"))}

    type_map = None
    if "type_map" in m:
        type_map = np.asarray(m["type_map"])
        if type_map.shape != inst.shape:
            raise InputError(mat_path, f"type_map is {_wh(type_map.shape)} px but inst_map is {_wh(inst.shape)} px")
        if not np.issubdtype(type_map.dtype, np.integer):
            if not np.array_equal(type_map, np.round(type_map)):
                raise InputError(mat_path, f"type_map holds non-integer values (dtype {type_map.dtype})")
            type_map = type_map.astype(np.int64)
    inst_class = None
    if "inst_type" in m:
        it = np.asarray(m["inst_type"]).reshape(-1)
        if it.size != ids.size:
            raise InputError(mat_path, f"inst_type has {it.size} entries but inst_map has {ids.size} instances")
        if it.size and not np.array_equal(it, np.round(it)):
            raise InputError(mat_path, "inst_type holds non-integer values")
        inst_class = {int(i): int(t) for i, t in zip(ids, it)}
        if type_map is not None:
            vote = instance_classes(inst, type_map)
            meta["type_map_disagrees"] = [i for i in inst_class if vote.get(i) != inst_class[i]]
    elif type_map is not None:
        inst_class = instance_classes(inst, type_map)
    if "inst_centroid" in m:
        c = np.asarray(m["inst_centroid"], dtype=np.float64)
        if c.size == 0 and ids.size == 0:
            c = c.reshape(0, 2)
        if c.shape != (ids.size, 2):
            raise InputError(mat_path, f"inst_centroid has shape {c.shape}, expected ({ids.size}, 2)")
        meta["centroids_xy"] = c
    if image_path is None:
        d = mat_path.parent
        image_path = _find_image(mat_path.stem, [d.parent / "imgs", d.parent / "images", d.parent / "Images", d], mat_path)
    image_path = Path(image_path)
    image = read_rgb(image_path)
    if image.shape[:2] != inst.shape:
        raise InputError(
            mat_path, f"inst_map is {_wh(inst.shape)} px but its image {image_path} is {_wh(image.shape)} px"
        )
    if inst_class is not None and classes is not None:
        bad = sorted({c for c in inst_class.values() if c not in classes.ids})
        if bad:
            raise InputError(mat_path, f"class id(s) {bad} not in the class set {dict(zip(classes.ids, classes.names))}")
    meta["image_path"] = str(image_path)
    return NucleiSample(sample_id or mat_path.stem, image, inst, inst_class, classes, None, mat_path, meta)


def write_consep_mat(path: str | Path, sample: NucleiSample) -> None:
    """Write ``inst_map``, ``type_map``, ``inst_type``, ``inst_centroid``, ``inst_bbox`` (atomic).

    Rows of ``inst_type``/``inst_centroid``/``inst_bbox`` follow increasing instance id,
    as :func:`read_consep_mat` expects. Without classes only ``inst_map``,
    ``inst_centroid`` and ``inst_bbox`` are written.
    """
    import scipy.io
    from scipy import ndimage

    inst = sample.inst_map
    ids, dense = _dense(inst)
    n = ids.size
    if n:
        idx = np.arange(1, n + 1)
        cen = np.asarray(ndimage.center_of_mass(np.ones(inst.shape), dense, idx), dtype=np.float64).reshape(n, 2)
        sl = ndimage.find_objects(dense, max_label=n)
        bbox = np.array([[s[0].start, s[0].stop, s[1].start, s[1].stop] for s in sl], np.int64)
    else:
        cen, bbox = np.zeros((0, 2)), np.zeros((0, 4), np.int64)
    out: dict[str, np.ndarray] = {
        "inst_map": inst.astype(np.int32),
        "inst_centroid": cen[:, ::-1].copy(),
        "inst_bbox": bbox,
    }
    if sample.inst_class is not None:
        from .targets import class_map

        out["type_map"] = class_map(inst, sample.inst_class).astype(np.int32)
        out["inst_type"] = np.array([sample.inst_class[int(i)] for i in ids], np.int32).reshape(n, 1)
    with atomic_open(path, "wb") as fh:
        scipy.io.savemat(fh, out, do_compression=True)


def write_consep_folder(root: str | Path, samples: Sequence[NucleiSample]) -> Path:
    """``ROOT/imgs/ID.png`` and ``ROOT/masks/ID.mat`` per sample (the layout of the real files)."""
    root = Path(root)
    for s in samples:
        write_image(root / "imgs" / f"{s.id}.png", s.image)
        write_consep_mat(root / "masks" / f"{s.id}.mat", s)
    return root


# ====================================================================== MICCAI 2015
MICCAI2015_SWAPPED: dict[str, str] = {"image04": "image05", "image05": "image04"}
"""Known swap in the MICCAI 2015 training release: image04's mask is ``image05_mask.txt`` and
vice versa (only their shapes match crosswise, and the nuclei then lie on dark pixels)."""


def read_miccai_mask(path: str | Path) -> np.ndarray:
    """A MICCAI 2015 text mask as ``(H, W)`` int32.

    Layout: first line ``width height``; then exactly ``width * height`` integer labels
    (whitespace separated, one per line in the release) in row-major order, x fastest.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        with open(path, "rb") as fh:
            header = fh.readline().split()
            body = fh.read()
    except OSError as e:
        raise InputError(path, f"cannot read ({e})") from e
    try:
        w, h = (int(t) for t in header)
    except ValueError:
        raise InputError(path, f"first line must be 'width height', got {b' '.join(header)[:60]!r}", row=1) from None
    if w <= 0 or h <= 0:
        raise InputError(path, f"bad size {w}x{h} in the header", row=1)
    tokens = body.split()
    if len(tokens) != w * h:
        raise InputError(path, f"header says {w}x{h} = {w * h} pixels but the file holds {len(tokens)} labels")
    try:
        labels = np.array(tokens, dtype=np.int64)
    except ValueError:
        raise InputError(path, "labels must be integers") from None
    return _check_instance_map(labels.reshape(h, w), path)


def read_miccai2015(
    image_path: str | Path,
    mask_path: str | Path | None = None,
    *,
    fix_swapped: bool = False,
    swapped: Mapping[str, str] = MICCAI2015_SWAPPED,
) -> NucleiSample:
    """A MICCAI 2015 image (``imageXX.png``) with its text mask (``imageXX_mask.txt`` beside it).

    The mask's shape must match the image, else :class:`InputError` naming both files.
    ``fix_swapped=True`` handles the release's 04/05 swap: when the image's stem is in
    ``swapped`` and its own mask does not fit but the partner's mask
    (``swapped[stem] + "_mask.txt"``) does, the partner's mask is used; a copy that was
    already corrected (own mask fits) is read as it is. ``meta["mask_path"]`` names the
    mask actually used. Instances only (no classes).
    """
    image_path = Path(image_path)
    stem = image_path.stem
    image = read_rgb(image_path)
    own = Path(mask_path) if mask_path is not None else image_path.with_name(f"{stem}_mask.txt")
    inst = read_miccai_mask(own)
    used = own
    if inst.shape != image.shape[:2] and fix_swapped and stem in swapped:
        partner = own.with_name(f"{swapped[stem]}_mask.txt")
        if partner.is_file():
            alt = read_miccai_mask(partner)
            if alt.shape == image.shape[:2]:
                inst, used = alt, partner
    if inst.shape != image.shape[:2]:
        hint = ""
        if stem in swapped and not fix_swapped:
            hint = (f" (known swap in the MICCAI 2015 release: {stem}'s mask is "
                    f"{swapped[stem]}_mask.txt; pass fix_swapped=True)")
        elif stem in swapped:
            hint = f" (nor does {swapped[stem]}_mask.txt)"
        raise InputError(
            used, f"mask is {_wh(inst.shape)} px but its image {image_path} is {_wh(image.shape)} px{hint}"
        )
    return NucleiSample(stem, image, inst, None, None, None, used,
                        {"image_path": str(image_path), "mask_path": str(used), "swap_fixed": used != own})


# ====================================================================== contour XML (GBM40)
def _shape_points(shape: ET.Element) -> np.ndarray:
    pts = []
    for p in shape.iter("Point"):
        pts.append((float(p.get("X")), float(p.get("Y"))))
    return np.array(pts, np.float64).reshape(-1, 2)


def read_contour_xml(path: str | Path, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, dict]:
    """Rasterise the nucleus contours of a GBM40-style XML to an ``(H, W)`` int32 instance map.

    Shape ``k`` (1-based, document order over all layers) becomes instance ``k``.
    ``Polygon`` and ``SmoothPolygon`` are filled as the straight polygon through their
    vertices (``skimage.draw.polygon``); the smoothing the drawing program applies is
    not reproduced (vertices are 1-3 px apart, so it matters at most at the outline).
    ``Oval`` is the ellipse inscribed in its ``Extent`` box, rotated clockwise on screen
    by ``Rotation`` degrees about the box centre. Vertex coordinates are pixel indices:
    a pixel belongs to a shape when its centre ``(x, y)`` lies inside (on GBM40 this
    fits the dark nuclei better than a half-pixel shift either way). Where shapes
    overlap the **later shape wins**; a shape fully covered by later ones (or with fewer
    than 3 vertices, or no pixel centre inside) leaves no id in the map.

    ``shape = (H, W)`` defaults to the XML's ``Canvas/Box``; if both are present they must
    agree. Returns the map and ``info``: ``n_shapes``, ``types`` (count per shape type),
    ``empty`` (ids with no pixel), ``degenerate`` (ids with < 3 vertices),
    ``overdrawn_px`` (pixels covered by more than one shape) and ``split`` (ids cut into
    several 8-connected pieces by later shapes; they stay one id — use
    ``relabel_instances(..., split_disconnected=True)`` to separate them).
    """
    from skimage.draw import ellipse, polygon

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
        raise InputError(path, f"cannot parse XML ({e})") from e
    box = root.find(".//Canvas/Box")
    canvas = None
    if box is not None:
        try:
            canvas = (int(float(box.get("Height"))), int(float(box.get("Width"))))
        except (TypeError, ValueError):
            raise InputError(path, "Canvas/Box has no valid Width/Height") from None
    if shape is None:
        if canvas is None:
            raise InputError(path, "no Canvas/Box size in the XML; pass the image shape")
        shape = canvas
    elif canvas is not None and tuple(shape) != canvas:
        raise InputError(path, f"XML canvas is {_wh(canvas)} px but the image is {_wh(shape)} px")
    h, w = shape
    out = np.zeros((h, w), np.int32)
    hits = np.zeros((h, w), np.uint8)
    types: dict[str, int] = {}
    degenerate = []
    shapes = list(root.iter("Shape"))
    for k, s in enumerate(shapes, start=1):
        t = s.get("Type", "")
        types[t] = types.get(t, 0) + 1
        try:
            if t in ("Polygon", "SmoothPolygon"):
                p = _shape_points(s)
                if len(p) < 3:
                    degenerate.append(k)
                    continue
                rr, cc = polygon(p[:, 1], p[:, 0], (h, w))
            elif t in ("Oval", "Ellipse"):
                data = s.find("Data")
                ext = data.find("Extent") if data is not None else None
                if ext is None:
                    raise InputError(path, f"shape {k} ({t}) has no Data/Extent")
                x, y = float(ext.get("X")), float(ext.get("Y"))
                bw, bh = float(ext.get("Width")), float(ext.get("Height"))
                rot = float(data.get("Rotation", "0") or 0)
                rr, cc = ellipse(y + bh / 2, x + bw / 2, bh / 2, bw / 2, (h, w), rotation=-math.radians(rot))
            else:
                raise InputError(path, f"shape {k} has unsupported type {t!r} (Polygon, SmoothPolygon, Oval)")
        except (TypeError, ValueError) as e:
            raise InputError(path, f"shape {k} ({t}): bad coordinates ({e})") from None
        out[rr, cc] = k
        hits[rr, cc] = np.minimum(hits[rr, cc], 254) + 1
    present = set(np.unique(out).tolist()) - {0}
    info = {
        "split": _split_ids(out),
        "n_shapes": len(shapes),
        "types": types,
        "empty": [k for k in range(1, len(shapes) + 1) if k not in present and k not in degenerate],
        "degenerate": degenerate,
        "overdrawn_px": int((hits > 1).sum()),
    }
    return out, info


def _split_ids(inst: np.ndarray) -> list[int]:
    """Ids of ``inst`` whose pixels form more than one 8-connected piece."""
    from scipy import ndimage

    ids, dense = _dense(inst)
    out = []
    for k, sl in enumerate(ndimage.find_objects(dense, max_label=ids.size), start=1):
        if sl is not None and ndimage.label(dense[sl] == k, structure=np.ones((3, 3)))[1] > 1:
            out.append(int(ids[k - 1]))
    return out


def read_gbm40(image_path: str | Path, xml_path: str | Path | None = None) -> NucleiSample:
    """A GBM40 tile (``raw_image/NN.tif``) with its contours (``contour_annotation_xml/NN_data.xml``).

    Instances only; ``meta`` holds the rasterisation ``info`` of :func:`read_contour_xml`.
    """
    image_path = Path(image_path)
    if xml_path is None:
        xml_path = image_path.parent.parent / "contour_annotation_xml" / f"{image_path.stem}_data.xml"
    xml_path = Path(xml_path)
    image = read_rgb(image_path)
    try:
        inst, info = read_contour_xml(xml_path, image.shape[:2])
    except InputError as e:
        if "canvas" in e.problem:
            raise InputError(xml_path, f"{e.problem} ({image_path})") from None
        raise
    return NucleiSample(image_path.stem, image, inst, None, None, None, xml_path,
                        {"image_path": str(image_path), "contours": info})


# ====================================================================== plain folder layout
def read_class_file(path: str | Path) -> tuple[NucleiClassScheme, float | None]:
    """A ``classes.json`` / ``classes.yaml``: the scheme and the dataset's mpp (or ``None``).

    Accepted: a list of names (ids 1..n), a mapping ``{id: name}``, or an object
    ``{"name": ..., "classes": list-or-mapping, "merges": [{"name", "groups", "names"}],
    "mpp": float}``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            d = json.loads(text)
        else:
            import yaml

            d = yaml.safe_load(text)
    except Exception as e:
        raise InputError(path, f"cannot parse ({type(e).__name__}: {e})") from e
    mpp = None
    try:
        if isinstance(d, list):
            scheme = NucleiClassScheme(path.parent.name, ClassSet.from_names([str(n) for n in d]))
        elif isinstance(d, Mapping) and "classes" in d:
            scheme = NucleiClassScheme.from_dict({"name": d.get("name", path.parent.name), **d})
            if d.get("mpp") is not None:
                mpp = float(d["mpp"])
                if not mpp > 0:
                    raise ValueError(f"mpp must be > 0, got {mpp}")
        elif isinstance(d, Mapping) and d:
            scheme = NucleiClassScheme(path.parent.name, ClassSet.from_mapping(d))
        else:
            raise ValueError("expected a list of class names, a mapping id -> name, or {'classes': ...}")
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(path, f"bad class file ({e})") from e
    return scheme, mpp


def write_class_file(path: str | Path, scheme: NucleiClassScheme | ClassSet, mpp: float | None = None) -> None:
    """Write a class file (JSON or YAML by suffix) that :func:`read_class_file` reads back; atomic."""
    from ...atomic import write_text

    if isinstance(scheme, ClassSet):
        scheme = NucleiClassScheme(Path(path).parent.name, scheme)
    d = scheme.to_dict()
    if mpp is not None:
        d["mpp"] = float(mpp)
    path = Path(path)
    if path.suffix.lower() == ".json":
        write_json(path, d)
    else:
        import yaml

        write_text(path, yaml.safe_dump(d, sort_keys=False))


def _find_file(folder: Path, stem: str, exts: Sequence[str]) -> Path | None:
    for ext in exts:
        p = folder / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


def _find_class_file(root: Path) -> Path | None:
    for d in (root, root.parent):
        for n in CLASS_FILES:
            if (d / n).is_file():
                return d / n
    return None


def read_folder_sample(
    root: str | Path, name: str, classes: ClassSet | None = None, mpp: float | None = None
) -> NucleiSample:
    """Sample ``name`` of a plain folder: ``images/``, ``labels/``, optional ``classes/`` or ``types/``."""
    root = Path(root)
    img_p = _find_file(root / "images", name, IMAGE_EXTS)
    if img_p is None:
        raise InputError(root / "images" / f"{name}.png", "image not found")
    lab_p = _find_file(root / "labels", name, LABEL_EXTS)
    if lab_p is None:
        raise InputError(root / "labels" / f"{name}.npy", f"instance map not found (tried {', '.join(LABEL_EXTS)})")
    image = read_rgb(img_p)
    inst = read_instance_map(lab_p)
    if inst.shape != image.shape[:2]:
        raise InputError(lab_p, f"instance map is {_wh(inst.shape)} px but its image {img_p} is {_wh(image.shape)} px")
    cls_p = root / "classes" / f"{name}.json"
    typ_p = _find_file(root / "types", name, LABEL_EXTS)
    inst_class = None
    source = lab_p
    ids = np.unique(inst)
    ids = ids[ids != 0]
    if cls_p.is_file() and typ_p is not None:
        raise InputError(cls_p, f"both a class file and a type map ({typ_p}) given; keep one")
    if cls_p.is_file():
        try:
            raw = json.loads(cls_p.read_text(encoding="utf-8"))
            if not isinstance(raw, Mapping):
                raise ValueError("expected an object {id: class}")
            d = {int(k): int(v) for k, v in raw.items()}
        except (ValueError, TypeError) as e:
            raise InputError(cls_p, f"cannot parse instance classes ({e})") from None
        extra = sorted(set(d) - set(ids.tolist()))
        if extra:
            raise InputError(cls_p, f"class(es) given for id(s) {_short(extra)} that are not in {lab_p}")
        inst_class, source = _check_inst_class(d, ids, classes, cls_p), cls_p
    elif typ_p is not None:
        tm = read_instance_map(typ_p)
        if tm.shape != inst.shape:
            raise InputError(typ_p, f"type map is {_wh(tm.shape)} px but the instance map {lab_p} is {_wh(inst.shape)} px")
        vote = instance_classes(inst, tm)
        zero = [i for i, c in vote.items() if c == 0]
        if zero:
            raise InputError(typ_p, f"instance(s) {_short(zero)} of {lab_p} have type 0 on every pixel")
        inst_class, source = _check_inst_class(vote, ids, classes, typ_p), typ_p
    return NucleiSample(name, image, inst, inst_class, classes, mpp, source, {"image_path": str(img_p)})


def write_nuclei_sample(
    root: str | Path,
    sample: NucleiSample,
    *,
    label_format: str = "npy",
    class_format: str = "json",
) -> None:
    """Write one sample into the plain folder layout (atomic per file).

    ``label_format``: ``npy`` (int32), ``png`` (16-bit; ids must be < 65536) or ``tif``
    (int32). ``class_format``: ``json`` (``classes/NAME.json``) or ``types`` (a uint8/16
    PNG type map in ``types/NAME.png``); ignored for samples without classes.
    """
    root = Path(root)
    name = sample.id
    write_image(root / "images" / f"{name}.png", sample.image)
    _write_label(root / "labels", name, sample.inst_map, label_format)
    if sample.inst_class is not None:
        if class_format == "json":
            write_json(root / "classes" / f"{name}.json", {str(k): int(v) for k, v in sorted(sample.inst_class.items())})
        elif class_format == "types":
            from .targets import class_map

            _write_label(root / "types", name, class_map(sample.inst_map, sample.inst_class), "png")
        else:
            raise ValueError(f"class_format must be 'json' or 'types', got {class_format!r}")


def _write_label(folder: Path, name: str, a: np.ndarray, fmt: str) -> None:
    if fmt == "npy":
        with atomic_open(folder / f"{name}.npy", "wb") as fh:
            np.save(fh, a.astype(np.int32), allow_pickle=False)
    elif fmt == "png":
        hi = int(a.max()) if a.size else 0
        if hi >= 65536:
            raise ValueError(f"{name}: id {hi} does not fit in a 16-bit PNG; use label_format='npy' or 'tif'")
        write_image(folder / f"{name}.png", a.astype(np.uint8 if hi < 256 else np.uint16))
    elif fmt in ("tif", "tiff"):
        write_image(folder / f"{name}.{fmt}", a.astype(np.int32))
    else:
        raise ValueError(f"label_format must be 'npy', 'png' or 'tif', got {fmt!r}")


def write_nuclei_folder(
    root: str | Path,
    samples: Sequence[NucleiSample],
    scheme: NucleiClassScheme | ClassSet | None = None,
    *,
    mpp: float | None = None,
    label_format: str = "npy",
    class_format: str = "json",
) -> Path:
    """Write samples and ``classes.json`` (when a scheme is given) in the plain layout; returns ``root``."""
    root = Path(root)
    if scheme is not None:
        write_class_file(root / "classes.json", scheme, mpp)
    for s in samples:
        write_nuclei_sample(root, s, label_format=label_format, class_format=class_format)
    return root


# ====================================================================== datasets
@dataclass(frozen=True)
class NucleiEntry:
    """One lazily loaded sample of a :class:`NucleiDataset`."""

    id: str
    source: Path
    load: Callable[[], NucleiSample]


class NucleiDataset(Sequence[NucleiSample]):
    """Lazily loaded samples in sorted id order; ``ds[k]`` or ``ds["id"]``.

    Build it with :meth:`folder`, :meth:`consep`, :meth:`miccai2015`, :meth:`gbm40`, or
    let :func:`open_nuclei` tell the layout.
    """

    def __init__(self, entries: Sequence[NucleiEntry], scheme: NucleiClassScheme | None = None,
                 name: str = "", mpp: float | None = None):
        self.entries = sorted(entries, key=lambda e: e.id)
        self.scheme = scheme
        self.name = name
        self.mpp = mpp
        self._index = {e.id: k for k, e in enumerate(self.entries)}

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            if key not in self._index:
                raise KeyError(f"{self.name}: no sample {key!r}")
            key = self._index[key]
        if isinstance(key, slice):
            return [self[k] for k in range(*key.indices(len(self)))]
        return self.entries[key].load()

    def __iter__(self) -> Iterator[NucleiSample]:
        for e in self.entries:
            yield e.load()

    # ------------------------------------------------------------ layouts
    @classmethod
    def folder(cls, root: str | Path, split: str | None = None,
               scheme: NucleiClassScheme | None = None) -> "NucleiDataset":
        """The plain layout at ``root`` (or ``root/split``); the class file may sit in ``root``."""
        root = Path(root)
        base = root / split if split else root
        if not (base / "images").is_dir():
            subs = sorted(p.name for p in root.iterdir() if (p / "images").is_dir()) if root.is_dir() else []
            hint = f"; splits here: {subs}" if subs else ""
            raise InputError(base / "images", f"folder not found{hint}")
        mpp = None
        cf = _find_class_file(base)
        if scheme is None and cf is not None:
            scheme, mpp = read_class_file(cf)
        classes = scheme.classes if scheme is not None else None
        names = sorted({p.stem for p in (base / "images").iterdir() if p.suffix.lower() in IMAGE_EXTS})

        def loader(n: str) -> Callable[[], NucleiSample]:
            return lambda: read_folder_sample(base, n, classes, mpp)

        return cls([NucleiEntry(n, base / "images" / n, loader(n)) for n in names], scheme, base.name, mpp)

    @classmethod
    def consep(cls, root: str | Path, classes: ClassSet | None = CONSEP_CLASSES) -> "NucleiDataset":
        """CoNSeP-style ``ROOT/masks/*.mat`` (or ``ROOT/Labels``) with ``ROOT/imgs`` (or ``images``, ``Images``)."""
        root = Path(root)
        mdir = next((root / d for d in ("masks", "Labels", "labels") if (root / d).is_dir()), None)
        if mdir is None:
            raise InputError(root / "masks", "folder of .mat files not found")
        mats = sorted(mdir.glob("*.mat"))

        def loader(p: Path) -> Callable[[], NucleiSample]:
            return lambda: read_consep_mat(p, classes=classes)

        scheme = NucleiClassScheme("consep", classes) if classes is not None else None
        return cls([NucleiEntry(p.stem, p, loader(p)) for p in mats], scheme, root.name)

    @classmethod
    def miccai2015(cls, root: str | Path, fix_swapped: bool = True) -> "NucleiDataset":
        """``ROOT/imageXX.png`` with ``imageXX_mask.txt``; the release's 04/05 swap is fixed by default."""
        root = Path(root)
        imgs = sorted(p for p in root.glob("image*.png") if re.fullmatch(r"image\d+", p.stem))
        if not imgs:
            raise InputError(root, "no imageXX.png files")

        def loader(p: Path) -> Callable[[], NucleiSample]:
            return lambda: read_miccai2015(p, fix_swapped=fix_swapped)

        return cls([NucleiEntry(p.stem, p, loader(p)) for p in imgs], None, root.name)

    @classmethod
    def gbm40(cls, root: str | Path) -> "NucleiDataset":
        """``ROOT/raw_image/NN.tif`` with ``ROOT/contour_annotation_xml/NN_data.xml``."""
        root = Path(root)
        if not (root / "raw_image").is_dir():
            raise InputError(root / "raw_image", "folder not found")
        imgs = sorted(p for p in (root / "raw_image").iterdir() if p.suffix.lower() in IMAGE_EXTS)

        def loader(p: Path) -> Callable[[], NucleiSample]:
            return lambda: read_gbm40(p)

        return cls([NucleiEntry(p.stem, p, loader(p)) for p in imgs], None, root.name)


def open_nuclei(root: str | Path, split: str | None = None, **kwargs: Any) -> NucleiDataset:
    """Open a nuclei dataset, telling the layout from the folder's contents.

    plain (``images/`` + ``labels/``, or ``SPLIT/images``), CoNSeP-style (``masks/*.mat``),
    MICCAI 2015 (``imageXX_mask.txt``), GBM40 (``raw_image/`` + ``contour_annotation_xml/``).
    ``kwargs`` go to the layout's constructor.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "not a folder")
    if split is not None or ((root / "images").is_dir() and (root / "labels").is_dir()):
        return NucleiDataset.folder(root, split, **kwargs)
    if (root / "raw_image").is_dir() and (root / "contour_annotation_xml").is_dir():
        return NucleiDataset.gbm40(root, **kwargs)
    if any((root / d).is_dir() and any((root / d).glob("*.mat")) for d in ("masks", "Labels", "labels")):
        return NucleiDataset.consep(root, **kwargs)
    if any(root.glob("image*_mask.txt")):
        return NucleiDataset.miccai2015(root, **kwargs)
    subs = sorted(p.name for p in root.iterdir() if (p / "images").is_dir())
    if subs:
        raise InputError(root, f"holds splits {subs}; pass split=")
    raise InputError(root, "unknown nuclei layout (plain images/+labels/, CoNSeP masks/*.mat, MICCAI 2015, GBM40)")
