"""CoNSeP / HoVer-Net style ``.mat`` label files: reading (with or without the image) and writing.

Variables: ``inst_map`` (ids as in the file), ``type_map`` (per-pixel class),
``inst_type`` (``(N, 1)``, one class per instance *in increasing id order*),
``inst_centroid`` (``(N, 2)``, ``(x, y)`` per instance in the same order), ``inst_bbox``
(``(N, 4)``: ``row0, row1, col0, col1`` with exclusive ends). ``inst_type`` is the class
of record; without it classes come from a majority vote of ``type_map``
(:func:`~.records.instance_classes`); with neither the file has no classes
(``inst_class`` is ``None``). The image is the file of the same stem in a sibling
``imgs/`` (or ``images/``, ``Images/``) folder.

:func:`read_consep_labels` is the one reader of these files: :func:`read_consep_mat`
(datasets, training) adds the image to it, and ``histozoom nuclei evaluate``
(:func:`histozoom.evaluation.nuclei.read_nuclei_labels`) uses it as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ...atomic import atomic_open
from ...errors import InputError
from ...pair import ClassSet
from ..io import read_rgb, write_image
from ..matfile import read_mat_arrays
from .records import (
    CONSEP_CLASSES,
    IMAGE_EXTS,
    NucleiSample,
    check_instance_map,
    check_label_values,
    class_map,
    format_wh,
    instance_classes,
    relabel_dense,
)

__all__ = ["ConsepLabels", "consep_classes", "read_consep_labels", "read_consep_mat", "write_consep_mat", "write_consep_folder"]


class ConsepLabels(NamedTuple):
    """What :func:`read_consep_labels` reads: the instance map, its classes (or ``None``),
    and ``meta`` (``keys``: the file's variables; ``type_map_disagrees`` when the file has
    both ``inst_type`` and ``type_map``: ids whose ``type_map`` majority differs;
    ``inst_centroid``: the file's array as stored, if present, checked by
    :func:`read_consep_mat`)."""

    inst_map: np.ndarray
    inst_class: dict[int, int] | None
    meta: dict[str, Any]


CONSEP_VARIABLES = ("inst_map", "type_map", "inst_type", "inst_centroid")
"""The variables read from a CoNSeP-style file; any others are skipped unread."""


def consep_classes(
    inst: np.ndarray, type_map: Any | None, inst_type: Any | None, path: Path | str | None
) -> tuple[dict[int, int] | None, list[int] | None]:
    """Classes of the instances of ``inst`` (a checked instance map) from CoNSeP arrays.

    ``inst_type`` (one class per id, ids in increasing order) is the class of record;
    without it, the majority vote of ``type_map``; with neither, ``None`` -- also for an
    empty ``inst`` (the file holds no classes). An empty ``inst`` with either array gives
    ``{}``. Returns the classes and, when both arrays are given, the ids whose
    ``type_map`` vote differs from ``inst_type`` (else ``None``). Bad shapes or values are
    an :class:`InputError` naming ``path``.
    """
    ids = np.unique(inst)
    ids = ids[ids != 0].astype(np.int64)
    if type_map is not None:
        type_map = np.asarray(type_map)
        if type_map.shape != inst.shape:
            raise InputError(path, f"type_map is {format_wh(type_map.shape)} px but inst_map is {format_wh(inst.shape)} px")
        type_map = check_instance_map(type_map, path, "type_map")
    if inst_type is None:
        return (None if type_map is None else instance_classes(inst, type_map)), None
    it = np.asarray(inst_type).reshape(-1)
    if it.size != ids.size:
        raise InputError(path, f"inst_type has {it.size} entries but inst_map has {ids.size} instances")
    it = check_label_values(it, path, "inst_type")
    inst_class = {int(i): int(t) for i, t in zip(ids, it)}
    disagrees = None
    if type_map is not None:
        vote = instance_classes(inst, type_map)
        disagrees = [i for i in inst_class if vote.get(i) != inst_class[i]]
    return inst_class, disagrees


def read_consep_labels(mat_path: str | Path) -> ConsepLabels:
    """The instance map and classes of a CoNSeP-style ``.mat`` file (no image needed).

    Instance ids are kept as stored. Classes follow :func:`consep_classes`:
    ``inst_type`` first, else the ``type_map`` vote, else ``None``. In particular an
    empty ``inst_map`` gives ``{}`` when the file has ``inst_type`` or ``type_map`` (as
    :func:`write_consep_mat` writes for a sample with classes) and ``None`` when it has
    neither. Errors (unreadable file, no ``inst_map``, bad arrays) name the file.
    """
    mat_path = Path(mat_path)
    m, names = read_mat_arrays(mat_path, CONSEP_VARIABLES)
    keys = sorted(set(names))
    if "inst_map" not in m:
        raise InputError(mat_path, f"no 'inst_map' variable (has {keys})")
    inst = check_instance_map(m["inst_map"], mat_path)
    inst_class, disagrees = consep_classes(inst, m.get("type_map"), m.get("inst_type"), mat_path)
    meta: dict[str, Any] = {"keys": keys}
    if disagrees is not None:
        meta["type_map_disagrees"] = disagrees
    if "inst_centroid" in m:
        meta["inst_centroid"] = m["inst_centroid"]
    return ConsepLabels(inst, inst_class, meta)


def _find_image(stem: str, dirs: Sequence[Path], source: Path) -> Path:
    for d in dirs:
        for ext in IMAGE_EXTS:
            p = d / f"{stem}{ext}"
            if p.is_file():
                return p
    raise InputError(source, f"no image found for {stem!r}; looked in {sorted({str(d) for d in dirs})}")


def read_consep_mat(
    mat_path: str | Path,
    image_path: str | Path | None = None,
    *,
    classes: ClassSet | None = CONSEP_CLASSES,
    sample_id: str | None = None,
) -> NucleiSample:
    """A CoNSeP/HoVer-Net style ``.mat`` label file with its image.

    Labels as :func:`read_consep_labels` reads them (``inst_type[k]`` belongs to the k-th
    id in increasing order; checked on the real files against the per-instance majority
    of ``type_map``). ``classes=None`` skips the class-id check. ``meta`` holds
    ``centroids_xy`` (the file's ``inst_centroid`` in that id order, if present),
    ``type_map_disagrees`` (ids whose ``type_map`` majority differs from ``inst_type``),
    ``keys`` (all variables of the file) and ``image_path``.
    """
    mat_path = Path(mat_path)
    inst, inst_class, meta = read_consep_labels(mat_path)
    n = int(np.count_nonzero(np.unique(inst)))
    centroids = meta.pop("inst_centroid", None)
    if centroids is not None:
        c = np.asarray(centroids, dtype=np.float64)
        if c.size == 0 and n == 0:
            c = c.reshape(0, 2)
        if c.shape != (n, 2):
            raise InputError(mat_path, f"inst_centroid has shape {c.shape}, expected ({n}, 2)")
        meta["centroids_xy"] = c
    if image_path is None:
        d = mat_path.parent
        image_path = _find_image(mat_path.stem, [d.parent / "imgs", d.parent / "images", d.parent / "Images", d], mat_path)
    image_path = Path(image_path)
    image = read_rgb(image_path)
    if image.shape[:2] != inst.shape:
        raise InputError(
            mat_path, f"inst_map is {format_wh(inst.shape)} px but its image {image_path} is {format_wh(image.shape)} px"
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
    ``inst_centroid`` and ``inst_bbox`` are written (read back: ``inst_class`` ``None``);
    a sample with classes but no instances gets an all-zero ``type_map`` (read back: ``{}``).
    """
    import scipy.io
    from scipy import ndimage

    inst = sample.inst_map
    ids, dense = relabel_dense(inst)
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
