"""The nuclei sample record, class schemes, and the label-map helpers every reader shares.

Conventions
-----------
* ``inst_map`` is ``(H, W)`` int32; ``0`` is background, every other value is one
  nucleus. Readers keep the ids the file uses (CoNSeP ids are often non-contiguous; the
  MICCAI 2015 masks number 1..N; GBM40 shape ``k`` of the XML in document order gets
  id ``k``). :func:`relabel_dense` gives ids 1..n in increasing-id order.
* ``inst_class`` is ``{id: class id}`` for every id in the map, or ``None`` (the source
  holds no classes). Class ids come from a :class:`~histozoom.pair.ClassSet`; 0 is never
  a nucleus class. A class id outside the sample's class set is an :class:`InputError`
  naming the file it came from.
* Class schemes are data (:class:`NucleiClassScheme`): the ccRCC grading scheme of
  CHR-Net is ``G1=1, G2=2, G3=3, endothelial=4`` with its two cross-category tasks
  (task 1 merges G1+G2, task 2 merges G2+G3) as :class:`ClassMerge` entries. Nothing
  downstream hard-codes those ids.

Between the two forms of classes: :func:`class_map` paints ``inst_class`` onto the
pixels; :func:`instance_classes` takes one class per instance from a per-pixel type map
(majority vote). :func:`check_instance_map` is the one validator of instance maps (and of
type maps, which follow the same rules).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputError
from ...pair import ClassSet

__all__ = [
    "CCRCC",
    "CCRCC_CLASSES",
    "CONSEP_CLASSES",
    "IMAGE_EXTS",
    "ClassMerge",
    "NucleiClassScheme",
    "NucleiSample",
    "check_instance_map",
    "check_label_values",
    "check_inst_class",
    "relabel_dense",
    "class_map",
    "instance_classes",
    "format_wh",
    "format_ids",
]

IMAGE_EXTS = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
"""Suffixes of the image files the layouts look for, in the order they are tried."""


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
    def from_dict(cls, d: Mapping) -> ClassMerge:
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
    def from_dict(cls, d: Mapping) -> NucleiClassScheme:
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
        self.inst_map = check_instance_map(self.inst_map, src)
        if self.inst_map.shape != img.shape[:2]:
            raise InputError(
                src, f"instance map is {format_wh(self.inst_map.shape)} px but the image is {format_wh(img.shape)} px"
            )
        if self.inst_class is not None:
            self.inst_class = check_inst_class(self.inst_class, self.instance_ids, self.classes, src)

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


# ====================================================================== message helpers
def format_wh(shape: tuple[int, ...]) -> str:
    """``WxH`` of an array shape ``(H, W, ...)`` for messages (the shape itself if it has fewer axes)."""
    return f"{shape[1]}x{shape[0]}" if len(shape) >= 2 else str(tuple(shape))


def format_ids(values: Sequence, n: int = 10) -> str:
    """The first ``n`` of ``values`` comma-separated for messages, with `` ...`` if there are more."""
    s = ", ".join(map(str, list(values)[:n]))
    return s + (" ..." if len(values) > n else "")


# ====================================================================== validation
def check_label_values(a: Any, path: Path | str | None, what: str = "instance map") -> np.ndarray:
    """``a`` (any shape) as int32 after checking that it holds non-negative integers.

    Integer and boolean arrays pass; a float array passes when every value is a finite
    whole number (``.mat`` files store labels as doubles). Negative values and values
    beyond int32 are an :class:`InputError` naming ``path``; ``what`` names the array in
    the messages (``"type_map"``, ``"inst_type"``, ...).
    """
    a = np.asarray(a)
    item = "instance id" if what == "instance map" else f"{what} value"
    if a.dtype == bool:
        a = a.astype(np.int32)
    elif np.issubdtype(a.dtype, np.floating):
        if a.size and not (np.isfinite(a).all() and np.array_equal(a, np.round(a))):
            raise InputError(path, f"{what} has non-integer values (dtype {a.dtype})")
    elif not np.issubdtype(a.dtype, np.integer):
        raise InputError(path, f"{what} must hold integers, got dtype {a.dtype}")
    if a.size:
        lo, hi = a.min(), a.max()
        if lo < 0:
            raise InputError(path, f"{item}s must be >= 0 (0 = background), found {lo}")
        if hi > np.iinfo(np.int32).max:
            raise InputError(path, f"{item} {hi} does not fit in int32")
    return np.ascontiguousarray(a, dtype=np.int32)


def check_instance_map(a: Any, path: Path | str | None, what: str = "instance map") -> np.ndarray:
    """``a`` as a valid ``(H, W)`` int32 label map, else :class:`InputError` naming ``path``.

    An ``(H, W, 3|4)`` array whose first three channels are equal (a grey label image
    saved as RGB) is reduced to one channel; anything else must be 2-D. Values: as
    :func:`check_label_values`. Used for instance maps and, with ``what``, type maps.
    """
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] in (3, 4) and all(np.array_equal(a[..., 0], a[..., k]) for k in (1, 2)):
        a = a[..., 0]
    if a.ndim != 2:
        raise InputError(path, f"{what} must be 2-D (H, W), got shape {a.shape}")
    return check_label_values(a, path, what)


def check_inst_class(
    inst_class: Mapping, ids: np.ndarray, classes: ClassSet | None, path: Path | str | None
) -> dict[int, int]:
    """``inst_class`` as ``{id: class}`` for exactly the instance ``ids`` (in their order).

    Every id needs a class; keys that are not in ``ids`` are dropped; with ``classes``
    every class must be one of its ids. Failures are an :class:`InputError` naming ``path``.
    """
    try:
        d = {int(k): int(v) for k, v in inst_class.items()}
    except (TypeError, ValueError) as e:
        raise InputError(path, f"instance classes must map integer ids to integer classes ({e})") from None
    missing = [int(i) for i in ids if int(i) not in d]
    if missing:
        raise InputError(path, f"no class for instance id(s) {format_ids(missing)}")
    out = {int(i): d[int(i)] for i in ids}
    if classes is not None:
        bad = sorted({c for c in out.values() if c not in classes.ids})
        if bad:
            raise InputError(
                path, f"class id(s) {format_ids(bad)} not in the class set {dict(zip(classes.ids, classes.names))}"
            )
    return out


# ====================================================================== label maps
def relabel_dense(inst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sorted non-zero ids of ``inst`` (int64) and the map relabelled to ``1..n`` in
    that order (int32, 0 stays 0): ``dense == k`` is instance ``ids[k - 1]``.

    ``inst`` must hold non-negative integers (:func:`check_instance_map`). This is
    ``skimage.segmentation.relabel_sequential``.
    """
    from skimage.segmentation import relabel_sequential

    inst = np.asarray(inst)
    if inst.size == 0:
        return np.zeros(0, np.int64), np.zeros(inst.shape, np.int32)
    dense, forward, _ = relabel_sequential(inst)
    ids = np.asarray(forward.in_values)
    return ids[ids != 0].astype(np.int64), dense.astype(np.int32, copy=False)


def class_map(inst: np.ndarray, inst_class: Mapping[int, int]) -> np.ndarray:
    """``(H, W)`` int32: every pixel of nucleus ``i`` carries ``inst_class[i]``; background 0.

    The inverse of :func:`instance_classes` (on maps where every instance has one class).
    """
    inst = check_instance_map(inst, None)
    ids, dense = relabel_dense(inst)
    lut = np.zeros(ids.size + 1, np.int32)
    try:
        lut[1:] = [int(inst_class[int(i)]) for i in ids]
    except KeyError as e:
        raise InputError(None, f"no class for instance id {e.args[0]}") from None
    return lut[dense]


def majority_types(index: np.ndarray, types: np.ndarray, n: int) -> np.ndarray:
    """Per instance ``0..n-1``, the type most of its pixels have: ``(n,)`` int64.

    ``index`` and ``types``: 1-D, one entry per foreground pixel (its instance index and
    its type). Any non-zero type wins over 0 (an instance is 0 only when all its pixels
    are 0) and ties go to the smaller type; an instance without pixels gets 0.
    """
    out = np.zeros(n, np.int64)
    if index.size == 0:
        return out
    tv, ti = np.unique(types, return_inverse=True)
    key = index.astype(np.int64) * tv.size + ti.ravel()
    pairs, counts = np.unique(key, return_counts=True)  # one entry per (instance, type) that occurs
    k, cls = pairs // tv.size, tv[pairs % tv.size]
    order = np.lexsort((cls, -counts, cls == 0, k))  # per instance: non-zero first, most pixels, smaller type
    ks = k[order]
    head = np.ones(ks.size, bool)
    head[1:] = ks[1:] != ks[:-1]
    out[ks[head]] = cls[order[head]]
    return out


def instance_classes(inst: np.ndarray, type_map: np.ndarray) -> dict[int, int]:
    """``{id: class}`` for every instance of ``inst`` (ids increasing) from a per-pixel type map.

    An instance takes the type most of its pixels have, where any non-zero type wins over
    0 (an instance is 0 only when all its pixels are 0) and ties go to the smaller type.
    ``type_map`` must have the shape of ``inst`` and hold non-negative integers. An
    empty ``inst`` gives ``{}``.
    """
    inst = check_instance_map(inst, None)
    types = np.asarray(type_map)
    if types.shape != inst.shape:
        raise InputError(None, f"type map is {format_wh(types.shape)} px but the instance map is {format_wh(inst.shape)} px")
    types = check_instance_map(types, None, "type map")
    ids, dense = relabel_dense(inst)
    if ids.size == 0:
        return {}
    d = dense.ravel()
    fg = d > 0
    winners = majority_types(d[fg] - 1, types.ravel()[fg], ids.size)
    return {int(i): int(c) for i, c in zip(ids, winners)}
