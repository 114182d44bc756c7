"""The plain folder layout of nuclei data, its class file, and instance-map files.

Layout (:class:`~.dataset.NucleiDataset.folder`, :func:`write_nuclei_folder`)::

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

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ...atomic import atomic_open, write_json, write_text
from ...errors import InputError
from ...jsonio import read_json, read_text
from ...pair import ClassSet
from ..checks import check_mpp
from ..io import read_image, read_npy, read_rgb, write_image
from .records import (
    IMAGE_EXTS,
    NucleiClassScheme,
    NucleiSample,
    check_inst_class,
    check_instance_map,
    class_map,
    format_ids,
    format_wh,
    instance_classes,
)

__all__ = [
    "LABEL_EXTS",
    "CLASS_FILES",
    "read_instance_map",
    "read_class_file",
    "find_class_file",
    "read_folder_sample",
    "write_class_file",
    "write_nuclei_sample",
    "write_nuclei_folder",
]

LABEL_EXTS = (".npy", ".png", ".tif", ".tiff")
CLASS_FILES = ("classes.json", "classes.yaml", "classes.yml")


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
    arr = check_instance_map(arr, path)
    if shape is not None and arr.shape != tuple(shape):
        raise InputError(path, f"instance map is {format_wh(arr.shape)} px, expected {format_wh(shape)}")
    return arr


# ====================================================================== class file
def read_class_file(path: str | Path) -> tuple[NucleiClassScheme, float | None]:
    """A ``classes.json`` / ``classes.yaml``: the scheme and the dataset's mpp (or ``None``).

    Accepted: a list of names (ids 1..n), a mapping ``{id: name}``, or an object
    ``{"name": ..., "classes": list-or-mapping, "merges": [{"name", "groups", "names"}],
    "mpp": float}``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    if path.suffix.lower() == ".json":
        d = read_json(path, "class names")
    else:
        import yaml

        text = read_text(path, "class names")
        try:
            d = yaml.safe_load(text)
        except Exception as e:  # a YAMLError message quotes the offending line: give only where
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise InputError(path, f"cannot parse ({type(e).__name__}{where})") from None
    mpp = None
    try:
        if isinstance(d, list):
            scheme = NucleiClassScheme(path.parent.name, ClassSet.from_names([str(n) for n in d]))
        elif isinstance(d, Mapping) and "classes" in d:
            scheme = NucleiClassScheme.from_dict({"name": d.get("name", path.parent.name), **d})
            if d.get("mpp") is not None:
                mpp = check_mpp(d["mpp"], path, "mpp")
        elif isinstance(d, Mapping) and d:
            scheme = NucleiClassScheme(path.parent.name, ClassSet.from_mapping(d))
        else:
            raise ValueError("expected a list of class names, a mapping id -> name, or {'classes': ...}")
    except (ValueError, KeyError, TypeError, OverflowError) as e:  # OverflowError: int(Infinity)
        raise InputError(path, f"bad class file ({e})") from e
    return scheme, mpp


def write_class_file(path: str | Path, scheme: NucleiClassScheme | ClassSet, mpp: float | None = None) -> None:
    """Write a class file (JSON or YAML by suffix) that :func:`read_class_file` reads back; atomic."""
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


def find_class_file(root: str | Path) -> Path | None:
    """The class file of a (split) folder: one of :data:`CLASS_FILES` in ``root``, else in its parent."""
    root = Path(root)
    for d in (root, root.parent):
        for n in CLASS_FILES:
            if (d / n).is_file():
                return d / n
    return None


# ====================================================================== samples
def _find_file(folder: Path, stem: str, exts: Sequence[str]) -> Path | None:
    for ext in exts:
        p = folder / f"{stem}{ext}"
        if p.is_file():
            return p
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
        raise InputError(
            lab_p, f"instance map is {format_wh(inst.shape)} px but its image {img_p} is {format_wh(image.shape)} px"
        )
    cls_p = root / "classes" / f"{name}.json"
    typ_p = _find_file(root / "types", name, LABEL_EXTS)
    inst_class = None
    source = lab_p
    ids = np.unique(inst)
    ids = ids[ids != 0]
    if cls_p.is_file() and typ_p is not None:
        raise InputError(cls_p, f"both a class file and a type map ({typ_p}) given; keep one")
    if cls_p.is_file():
        raw = read_json(cls_p, "instance classes")
        try:
            if not isinstance(raw, Mapping):
                raise ValueError("expected an object {id: class}")
            d = {int(k): int(v) for k, v in raw.items()}
        except (ValueError, TypeError) as e:
            raise InputError(cls_p, f"cannot parse instance classes ({e})") from None
        extra = sorted(set(d) - set(ids.tolist()))
        if extra:
            raise InputError(cls_p, f"class(es) given for id(s) {format_ids(extra)} that are not in {lab_p}")
        inst_class, source = check_inst_class(d, ids, classes, cls_p), cls_p
    elif typ_p is not None:
        tm = read_instance_map(typ_p)
        if tm.shape != inst.shape:
            raise InputError(
                typ_p, f"type map is {format_wh(tm.shape)} px but the instance map {lab_p} is {format_wh(inst.shape)} px"
            )
        vote = instance_classes(inst, tm)
        zero = [i for i, c in vote.items() if c == 0]
        if zero:
            raise InputError(typ_p, f"instance(s) {format_ids(zero)} of {lab_p} have type 0 on every pixel")
        inst_class, source = check_inst_class(vote, ids, classes, typ_p), typ_p
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
