"""Where cell points come from: every source the evaluation reads, as a :class:`PointSet`.

* :func:`load_points`: a challenge JSON file, a folder of per-image CSVs
  (``x,y,class[,prob]``), a dataset folder (read as ground truth), a Grand-Challenge
  container, or Python objects (``{K: Points}``, ``{name: Points}``, ``[Points, ...]``,
  :class:`ChallengePoints`, a :class:`PointSet`).
* :func:`load_ground_truth`: the same plus what the analyses need -- organs,
  placements and tissue masks from a dataset, or from a metadata file and a mask folder.
* :func:`split_ground_truth`: the one way from a dataset split to its ground-truth
  points (``image_K`` = the K-th sample in sorted id order); the evaluation, the
  trainer's validation/test scoring and :func:`~histozoom.evaluation.scoring.score_split`
  all use it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..data.base import PairSplit
from ..data.challenge_json import (
    CHALLENGE_IMAGE_SIZE,
    ChallengePoints,
    ImageSize,
    check_num_images_claim,
    image_name,
    image_size_of,
    parse_image_name,
    read_challenge_json,
)
from ..data.io import read_label_map, read_points_csv
from ..data.ocelot_release import placement_from_entry
from ..data.open import is_dataset, open_dataset, pick_split
from ..errors import InputError
from ..geometry import Placement
from ..jsonio import read_json
from ..pair import OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES, ClassSet, Pair, Points
from .slide_points import SLIDE_TABLE_EXTS, read_slide_table

MASK_EXTS = (".png", ".tif", ".tiff", ".bmp")
"""File extensions of tissue mask images in a mask folder."""

Source = Union[str, Path, ChallengePoints, "PointSet", Mapping[Any, Any], Sequence[Any]]


# ====================================================================== point sets
@dataclass
class PointSet:
    """Cell points per image index (cell frame), with what is known about the images.

    ``names``: image index → display name (``image_K``, or the sample id / file stem);
    ``num_images``: the declared number of images (ground truth), if any.
    Ground truth may carry ``organs``, ``placements`` (cell window in the tissue image),
    ``tissue_masks`` (tissue-frame label maps), ``image_sizes`` (cell image
    ``(width, height)``) and metadata ``entries``, all keyed by image index.
    """

    points: dict[int, Points]
    num_images: int | None = None
    names: dict[int, str] = field(default_factory=dict)
    source: str = "<memory>"
    first_entry: dict[int, int] = field(default_factory=dict)
    classes: ClassSet | None = None
    organs: dict[int, str] = field(default_factory=dict)
    placements: dict[int, Placement] = field(default_factory=dict)
    tissue_masks: dict[int, np.ndarray] = field(default_factory=dict)
    tissue_classes: ClassSet | None = None
    image_sizes: dict[int, tuple[int, int]] = field(default_factory=dict)
    entries: dict[int, dict] = field(default_factory=dict)
    metadata_path: str | None = None
    warnings: list[str] = field(default_factory=list)
    cell_mpp: float | None = None

    @property
    def image_indices(self) -> list[int]:
        """``range(num_images)`` plus every index with points, sorted."""
        keys = set(self.points) | set(self.names)
        if self.num_images is not None:
            keys |= set(range(self.num_images))
        return sorted(keys)

    def name(self, k: int) -> str:
        return self.names.get(k, image_name(k))

    def index_of_name(self) -> dict[str, int]:
        return {n: k for k, n in self.names.items()}

    def entry_ref(self, k: int) -> str:
        """Where image ``k``'s points come from, for messages."""
        if k in self.first_entry:
            return f"points[{self.first_entry[k]}] ({image_name(k)})"
        return self.name(k)


def ground_truth_warnings(gt: PointSet) -> list[str]:
    """What is worth a warning but still scores: no images, no cells, duplicate points
    (same image, class and position within 1e-3 px; each copy counts as its own cell)."""
    if not gt.image_indices:
        return [f"{gt.source}: the ground truth has no images (an empty split?); nothing was scored"]
    out = []
    if not any(len(p) for p in gt.points.values()):
        out.append(f"{gt.source}: the ground truth holds no cells; F1 is undefined for every class")
    dup_total, first = 0, None
    for k in sorted(gt.points):
        pts = gt.points[k]
        if len(pts) < 2:
            continue
        rows = np.column_stack([np.round(pts.xy, 3), pts.cls])
        uniq, counts = np.unique(rows, axis=0, return_counts=True)
        extra = int((counts - 1).sum())
        if extra:
            dup_total += extra
            if first is None:
                r = uniq[np.argmax(counts > 1)]
                first = f"{gt.name(k)} at ({r[0]:g}, {r[1]:g}) class {int(r[2])}"
    if dup_total:
        out.append(f"{gt.source}: {dup_total} duplicate ground-truth point(s) (first {first}); "
                   "each copy counts as a separate cell")
    return out


# ---------------------------------------------------------------------- name alignment
def _natural_order(stems: Sequence[str]) -> list[str]:
    """Sort names: ``image_K`` by K, all-digit names numerically, others as strings."""
    if stems and all(parse_image_name(s) is not None for s in stems):
        return sorted(stems, key=parse_image_name)
    if stems and all(s.isdigit() for s in stems):
        return sorted(stems, key=lambda s: (int(s), s))
    return sorted(stems)


def _align_names(
    stems: Sequence[str], ref: PointSet | None, path: Path, what: str, warnings: list[str]
) -> dict[str, int]:
    """Image index for each name.

    With a reference (the ground truth): its image name (sample id), else ``image_K``; a
    folder whose names match none of these but holds one file per reference image is
    taken in sorted order (numeric for numbers), with a warning. Without a reference
    (a ground-truth folder): ``image_K`` gives K, otherwise names are numbered in sorted
    order.
    """
    if ref is None:
        ks = [parse_image_name(s) for s in stems]
        if all(k is not None for k in ks):
            return dict(zip(stems, ks, strict=True))  # type: ignore[arg-type]
        if any(k is not None for k in ks):
            raise InputError(path, f"{what} names mix image_K and other names ({stems[ks.index(None)]!r})")
        return {s: k for k, s in enumerate(_natural_order(list(stems)))}
    by_name = ref.index_of_name()
    out: dict[str, int] = {}
    for s in stems:
        k = by_name.get(s, parse_image_name(s))
        if k is not None:
            out[s] = k
    if len(out) == len(stems):
        return out
    if not out and len(stems) == len(ref.image_indices):
        order = _natural_order(list(stems))
        warnings.append(f"{path}: {what} names match no image name; taken in sorted order as image_0..image_{len(order) - 1}")
        return dict(zip(order, ref.image_indices, strict=True))
    missing = next(s for s in stems if s not in out)
    raise InputError(path, f"{what} {missing!r} matches no ground-truth image (expected a sample id or image_K)")


# ---------------------------------------------------------------------- CSV folders
def _read_csv_folder(folder: Path, classes: ClassSet | None, image_size: ImageSize, ref: PointSet | None) -> PointSet:
    files = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() == ".csv" and p.is_file()}
    if not files:
        raise InputError(folder, "no .csv files in the folder")
    warnings: list[str] = []
    index = _align_names(list(files), ref, folder, "CSV file", warnings)
    points, names = {}, {}
    for stem, k in index.items():
        if k in points:
            raise InputError(files[stem], f"a second file for image {image_name(k)} ({names[k]!r} came first)")
        points[k] = read_points_csv(files[stem], classes, image_size_of(image_size, k))
        names[k] = stem
    if ref is None and all(parse_image_name(s) is not None for s in index):
        gaps = sorted(set(range(max(points) + 1)) - set(points))
        if gaps:
            raise InputError(folder / f"{image_name(gaps[0])}.csv",
                             f"ground-truth CSV missing ({len(gaps)} of image_0..image_{max(points)} absent); "
                             "an image without cells needs an empty CSV")
    if ref is not None:
        absent = [ref.name(k) for k in ref.image_indices if k not in points]
        if absent:
            warnings.append(f"{folder}: no CSV for {len(absent)} ground-truth image(s) (first {absent[0]!r}); "
                            "scored as no detections")
    num = None if ref is not None else len(points)
    return PointSet(points, num, names if ref is None else {}, str(folder), classes=classes, warnings=warnings)


# ---------------------------------------------------------------------- in-memory objects
def _check_points(pts: Points, k: int, classes: ClassSet | None, size: tuple[int, int] | None, label: str) -> Points:
    if not isinstance(pts, Points):
        raise InputError(None, f"{label} image {k}: expected Points, got {type(pts).__name__}")
    if len(pts) == 0:
        return pts
    if not np.isfinite(pts.xy).all():
        raise InputError(None, f"{label} image {k}: non-finite coordinates")
    if classes is not None and not np.isin(pts.cls, classes.ids).all():
        bad = int(pts.cls[~np.isin(pts.cls, classes.ids)][0])
        raise InputError(None, f"{label} image {k}: class {bad} is not in the class set {list(classes.ids)}")
    if not ((pts.prob >= 0) & (pts.prob <= 1)).all():
        raise InputError(None, f"{label} image {k}: probabilities must lie in [0, 1]")
    if size is not None:
        x, y = pts.xy[:, 0], pts.xy[:, 1]
        out = ~((x >= 0) & (y >= 0) & (x <= size[0] - 1) & (y <= size[1] - 1))
        if out.any():
            i = int(np.flatnonzero(out)[0])
            raise InputError(None, f"{label} image {k}: point ({x[i]:g}, {y[i]:g}) lies outside the {size[0]}x{size[1]} image")
    return pts


def _from_objects(obj: Any, classes: ClassSet | None, image_size: ImageSize, ref: PointSet | None, label: str) -> PointSet:
    warnings: list[str] = []
    names: dict[int, str] = {}
    if isinstance(obj, Mapping):
        keys = list(obj)
        if all(isinstance(k, (int, np.integer)) for k in keys):
            index = {k: int(k) for k in keys}
        else:
            by_str = _align_names([str(k) for k in keys], ref, Path(label), "image", warnings)
            index = {k: by_str[str(k)] for k in keys}
            if ref is None:
                names = {i: str(k) for k, i in index.items()}
        items = [(index[k], v) for k, v in obj.items()]
    else:
        items = list(enumerate(obj))
    points = {}
    for k, v in items:
        if v is None:
            continue
        points[k] = _check_points(v, k, classes, image_size_of(image_size, k), label)
    num = None if isinstance(obj, Mapping) and not names else len(items)
    return PointSet(points, num, names, label, classes=classes, warnings=warnings)


# ---------------------------------------------------------------------- dataset splits
def split_ground_truth(split: PairSplit, visit: Callable[[int, Pair], None] | None = None) -> dict[int, Points]:
    """Ground-truth cell points of a dataset split, per image index.

    Image ``K`` is the ``K``-th sample of ``split.ids`` (sorted ids: the challenge's
    ``image_K``); samples without points are left out. Points are read without decoding
    images (:meth:`PairSplit.points`) unless ``visit`` is given: then each pair is loaded
    once, passed to ``visit(K, pair)`` (for whatever else the caller takes from it) and
    its points are used.
    """
    out: dict[int, Points] = {}
    for k, sid in enumerate(split.ids):
        if visit is None:
            pts = split.points(sid)
        else:
            pair = split.load(sid)
            visit(k, pair)
            pts = pair.cell_points
        if pts is not None:
            out[k] = pts
    return out


_DATASET_LABEL = re.compile(r"(?P<path>.*) \(split (?P<split>[^()]*)\)")


def dataset_label(path: str | Path, split: str) -> str:
    """How a dataset ground truth names itself (``PointSet.source``, ``evaluation.json``'s
    ``ground_truth``): ``"PATH (split S)"``; :func:`parse_dataset_label` reads it back."""
    return f"{path} (split {split})"


def parse_dataset_label(label: str) -> tuple[Path, str | None]:
    """Dataset folder and split of a :func:`dataset_label`; any other label is just a path."""
    m = _DATASET_LABEL.fullmatch(label)
    return (Path(m["path"]), m["split"]) if m else (Path(label), None)


def _load_dataset(path: Path, split: str | None, classes: ClassSet | None, image_size: ImageSize, with_pairs: bool,
                  allow_outside_paths: bool = False) -> PointSet:
    """Ground truth of one split of the dataset at ``path`` (see :func:`load_ground_truth`)."""
    ds = open_dataset(path, allow_outside_paths=allow_outside_paths)
    name = pick_split(ds, split, path)
    sp = ds.split(name)
    spec = sp.spec
    classes = classes or spec.cell_classes
    ids = list(sp.ids)
    names = dict(enumerate(ids))
    organs: dict[int, str] = {}
    placements: dict[int, Placement] = {}
    masks: dict[int, np.ndarray] = {}
    sizes: dict[int, tuple[int, int]] = {}

    def take(k: int, pair: Pair) -> None:
        if pair.organ:
            organs[k] = pair.organ
        placements[k] = pair.placement
        sizes[k] = pair.cell_size
        if pair.tissue_mask is not None:
            masks[k] = pair.tissue_mask

    points = split_ground_truth(sp, take if with_pairs else None)
    unlabelled = [sid for k, sid in names.items() if k not in points]
    if unlabelled:
        raise InputError(path, f"split {name!r}: {len(unlabelled)} of {len(ids)} samples have no ground-truth cells "
                               f"(first {unlabelled[0]!r}); only a fully annotated split can be scored")
    if not with_pairs:
        entry_of = getattr(sp, "entry", None)
        if callable(entry_of):
            for k, sid in names.items():
                organ = entry_of(sid).get("organ")
                if organ:
                    organs[k] = organ
        if ids and image_size is None:
            sizes = dict.fromkeys(range(len(ids)), sp.load(ids[0]).cell_size)
    ps = PointSet(points, len(ids), names, dataset_label(path, name), classes=classes, organs=organs,
                  placements=placements, tissue_masks=masks, tissue_classes=spec.tissue_classes, image_sizes=sizes,
                  cell_mpp=spec.cell_mpp)
    for k, pts in points.items():
        _check_points(pts, k, classes, sizes.get(k) or image_size_of(image_size, k), f"{path}: sample {names[k]}")
    return ps


def _is_dataset_folder(source: Any) -> bool:
    return isinstance(source, (str, Path)) and Path(source).is_dir() and is_dataset(source)


# ---------------------------------------------------------------------- public loaders
def load_points(
    source: Source,
    *,
    classes: ClassSet | None = OCELOT_CELL_CLASSES,
    image_size: ImageSize = CHALLENGE_IMAGE_SIZE,
    strict: bool = False,
    align_to: PointSet | None = None,
    split: str | None = None,
    label: str = "<memory>",
) -> PointSet:
    """Cell points from a file, folder or Python objects.

    ``classes``/``image_size`` are validated (``None`` skips a check); ``strict`` applies
    the official checker's exact rules to challenge JSON. ``align_to`` (the ground truth)
    maps names (CSV stems, string keys) to image indices. A dataset folder is read as
    ground truth of ``split`` (see :func:`load_ground_truth`).
    """
    if isinstance(source, PointSet):
        return source
    if isinstance(source, ChallengePoints):
        return PointSet(dict(source.points), source.num_images, {}, source.path or label, dict(source.first_entry), classes)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            if is_dataset(path):
                return load_ground_truth(path, split=split, classes=classes, image_size=image_size)
            return _read_csv_folder(path, classes, image_size, align_to)
        if not path.exists():
            raise InputError(path, "file not found")
        if path.suffix.lower() in SLIDE_TABLE_EXTS:
            pts, side = read_slide_table(path, classes)
            size = side.get("size") or tuple(int(np.ceil(v)) + 1 for v in pts.xy.max(axis=0, initial=0))
            ps = PointSet({0: pts}, 1, {0: path.stem}, str(path), classes=classes, image_sizes={0: tuple(size)},
                          cell_mpp=side.get("mpp"))
            _check_points(pts, 0, classes, ps.image_sizes[0] if side.get("size") else None, str(path))
            return ps
        cp = read_challenge_json(path, classes=classes, image_size=image_size, strict=strict)
        return PointSet(cp.points, cp.num_images, {}, str(path), cp.first_entry, classes)
    if isinstance(source, (Mapping, list, tuple)):
        return _from_objects(source, classes, image_size, align_to, label)
    raise TypeError(f"cannot read points from {type(source).__name__}")


def _read_metadata(path: Path, gt: PointSet) -> dict[int, dict]:
    """Metadata entries per image index: a JSON list (entry K = image_K) or a release
    ``metadata.json`` (``sample_pairs`` matched by sample id, else in sorted id order)."""
    meta = read_json(path, "metadata")
    if isinstance(meta, list):
        entries = dict(enumerate(meta))
    elif isinstance(meta, dict) and isinstance(meta.get("sample_pairs"), dict):
        pairs = meta["sample_pairs"]
        by_name = gt.index_of_name()
        if by_name and all(s in pairs for s in by_name):
            entries = {k: pairs[s] for s, k in by_name.items()}
        else:
            entries = {k: pairs[s] for k, s in enumerate(_natural_order(list(pairs)))}
    else:
        raise InputError(path, 'expected a JSON list of entries (entry K = image_K) or {"sample_pairs": {...}}')
    for k, e in entries.items():
        if not isinstance(e, dict):
            raise InputError(path, f"entry {k} is not an object")
    return entries


def read_mask_folder(folder: str | Path, gt: PointSet, classes: ClassSet, warnings: list[str]) -> dict[int, np.ndarray]:
    """Tissue masks per image index from a folder of label images (:data:`MASK_EXTS`)
    named like ``gt``'s images (sample id or ``image_K``); alignment warnings go to
    ``warnings``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "tissue mask folder not found")
    files = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in MASK_EXTS and p.is_file()}
    if not files:
        raise InputError(folder, f"no mask files ({', '.join(MASK_EXTS)}) in the folder")
    index = _align_names(list(files), gt, folder, "mask file", warnings)
    return {k: read_label_map(files[s], classes) for s, k in index.items()}


def load_ground_truth(
    source: Source,
    *,
    split: str | None = None,
    classes: ClassSet | None = None,
    image_size: ImageSize = None,
    strict: bool = False,
    metadata: str | Path | Mapping[int, Mapping] | Sequence[Mapping] | None = None,
    tissue_masks: str | Path | Mapping[int, np.ndarray] | None = None,
    tissue_classes: ClassSet | None = None,
    placements: Mapping[int, Placement] | None = None,
    with_pairs: bool = False,
    allow_outside_paths: bool = False,
) -> PointSet:
    """Ground truth with what the analyses need.

    ``classes``: the cell classes (default: the dataset's, else OCELOT's BC/TC).
    ``image_size``: cell image ``(width, height)`` for coordinate checks (default: the
    dataset's image size, else 1024 x 1024, the challenge's).
    A dataset folder gives points in sorted sample-id order (``image_K`` = K-th sample of
    ``split``, :func:`split_ground_truth`), organs, and -- with ``with_pairs=True`` (all
    pairs are loaded) -- placements and tissue masks. For other sources: ``metadata`` (a
    file or entries per image) gives organs and placements, ``tissue_masks`` (a folder
    named by image, or a mapping) the tissue-frame masks; ``placements`` may also be
    given directly. ``allow_outside_paths``: a dataset folder may name files outside
    itself (:func:`~histozoom.data.open.open_dataset`).
    """
    if _is_dataset_folder(source):
        gt = _load_dataset(Path(source), split, classes, image_size,  # type: ignore[arg-type]
                           with_pairs or tissue_masks is not None, allow_outside_paths)
    else:
        gt = load_points(source, classes=classes or OCELOT_CELL_CLASSES, image_size=image_size or CHALLENGE_IMAGE_SIZE,
                         strict=strict, split=split, label="<ground truth>")
        gt.classes = gt.classes or classes or OCELOT_CELL_CLASSES
        check_num_images_claim(gt.num_images, set(gt.points) | set(gt.names), gt.source)
        beyond = sorted(k for k in gt.points if gt.num_images is not None and k >= gt.num_images)
        if beyond:
            problem = f"{gt.entry_ref(beyond[0])}: image index {beyond[0]} >= num_images {gt.num_images}"
            if strict:
                raise InputError(gt.source, problem + " (the official scorer cannot score it)")
            gt.warnings.append(f"{gt.source}: {problem}; {len(beyond)} such image(s) evaluated as well")
        if gt.num_images is None:
            gt.num_images = (max(gt.points) + 1) if gt.points else 0
    gt.tissue_classes = tissue_classes or gt.tissue_classes or OCELOT_TISSUE_CLASSES
    if metadata is not None:
        entries = _read_metadata(Path(metadata), gt) if isinstance(metadata, (str, Path)) else (
            dict(metadata) if isinstance(metadata, Mapping) else dict(enumerate(metadata)))
        meta_path = Path(metadata) if isinstance(metadata, (str, Path)) else Path("<metadata>")
        gt.entries = {int(k): e for k, e in entries.items()}
        gt.metadata_path = str(meta_path)
        for k, e in gt.entries.items():
            if e.get("organ"):
                gt.organs[k] = str(e["organ"])
    if tissue_masks is not None:
        if isinstance(tissue_masks, (str, Path)):
            gt.tissue_masks = read_mask_folder(tissue_masks, gt, gt.tissue_classes, gt.warnings)
        else:
            gt.tissue_masks = {int(k): np.asarray(v) for k, v in tissue_masks.items()}
    if placements is not None:
        gt.placements.update({int(k): v for k, v in placements.items()})
    if gt.tissue_masks and gt.entries:
        for k, mask in gt.tissue_masks.items():
            if k in gt.placements or k not in gt.entries:
                continue
            cell_size = gt.image_sizes.get(k) or image_size_of(image_size, k) or CHALLENGE_IMAGE_SIZE
            gt.placements[k] = placement_from_entry(gt.entries[k], cell_size, (mask.shape[1], mask.shape[0]),
                                                    Path(gt.metadata_path or "<metadata>"), gt.name(k))
    if gt.tissue_masks:
        missing = [k for k in gt.tissue_masks if k not in gt.placements]
        if missing:
            raise InputError(None, f"tissue masks need the cell window's placement: no metadata entry for "
                                   f"{gt.name(missing[0])} (give metadata with patch_x_offset/patch_y_offset and mpp)")
    return gt
