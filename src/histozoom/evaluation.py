"""Evaluation as the OCELOT 2023 challenge scored it, and the report's analyses.

This is the API behind ``histozoom evaluate``:

* :func:`load_points` / :func:`load_ground_truth` read cell points from any source --
  a challenge JSON file, a folder of per-image CSVs (``x,y,class[,prob]``), a dataset
  folder (OCELOT release, Grand-Challenge container, own layout; ``image_K`` is the K-th
  sample of the split in sorted id order), or Python objects (``{K: Points}``,
  ``{name: Points}``, ``[Points, ...]``, :class:`ChallengePoints`).
* :func:`evaluate` scores one or several prediction sets against one ground truth:
  per-image counts, pooled scores (exact and as the challenge rounded them), per-organ
  scores, tissue-region subgroups, tissue segmentation, and a paired bootstrap (CIs,
  ranking uncertainty, pairwise wins). The result, :class:`EvaluationReport`, renders
  text tables, a JSON document and PNG plots.

Images: the evaluated images are ``range(num_images)`` of the ground truth plus every
image that has ground-truth points. Predictions for an image outside that set are
counted as false positives (an image without ground truth) and reported in
``warnings``; ``strict=True`` rejects them, as the official scorer cannot score them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np

from .atomic import write_json
from .data.challenge_json import (
    CHALLENGE_IMAGE_SIZE,
    ChallengePoints,
    ImageSize,
    image_name,
    image_size_of,
    parse_image_name,
    read_challenge_json,
)
from .data.io import read_points_csv
from .errors import InputError
from .geometry import Placement
from .metrics.detection import (
    CHALLENGE_MPP,
    CHALLENGE_RADIUS_UM,
    MATCH_MODES,
    MODE_LABELS,
    DetectionCounts,
    count_detections,
    radius_px,
    scores_from_counts,
)
from .metrics.segmentation import SegmentationCounts, count_segmentation, segmentation_scores
from .metrics.stats import (
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    observed_ranks,
    pairwise_win_probabilities,
    percentile_ci,
    rank_probabilities,
    resample_sums,
    resample_weights,
)
from .metrics.subgroups import SubgroupCounts, subgroup_counts
from .pair import OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES, ClassSet, Points
from .reports.tables import format_table

_MASK_EXTS = (".png", ".tif", ".tiff", ".bmp")
_IMAGE_K = re.compile(r"image_([0-9]+)")

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


# ---------------------------------------------------------------------- name alignment
def _natural_order(stems: Sequence[str]) -> list[str]:
    """Sort names: ``image_K`` by K, all-digit names numerically, others as strings."""
    if stems and all(_IMAGE_K.fullmatch(s) for s in stems):
        return sorted(stems, key=lambda s: int(s[6:]))
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
            return dict(zip(stems, ks))  # type: ignore[arg-type]
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
        return dict(zip(order, ref.image_indices))
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


# ---------------------------------------------------------------------- public loaders
def _is_dataset_dir(path: Path) -> bool:
    """A folder :func:`histozoom.data.open.open_dataset` reads (not a plain CSV folder)."""
    from .data.gc_container import is_container_dir
    from .data.ocelot_release import is_release_dir
    from .data.own_layout import find_descriptor

    return is_release_dir(path) or is_container_dir(path) or find_descriptor(path) is not None


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
            if _is_dataset_dir(path):
                return load_ground_truth(path, split=split, classes=classes, image_size=image_size)
            return _read_csv_folder(path, classes, image_size, align_to)
        if not path.exists():
            raise InputError(path, "file not found")
        cp = read_challenge_json(path, classes=classes, image_size=image_size, strict=strict)
        return PointSet(cp.points, cp.num_images, {}, str(path), cp.first_entry, classes)
    if isinstance(source, (Mapping, list, tuple)):
        return _from_objects(source, classes, image_size, align_to, label)
    raise TypeError(f"cannot read points from {type(source).__name__}")


def _pick_split(ds, split: str | None, path: Path) -> str:
    splits = list(ds.splits)
    if split is not None:
        if split not in splits:
            raise InputError(path, f"split {split!r} not found (available: {', '.join(splits) or 'none'})")
        return split
    if len(splits) == 1:
        return splits[0]
    if "test" in splits:
        return "test"
    raise InputError(path, f"the dataset has several splits ({', '.join(splits)}); choose one with split=/--split")


def _load_dataset(path: Path, split: str | None, classes: ClassSet | None, image_size: ImageSize, with_pairs: bool) -> PointSet:
    from .data.open import open_dataset

    ds = open_dataset(path)
    name = _pick_split(ds, split, path)
    sp = ds.split(name)
    spec = sp.spec
    classes = classes or spec.cell_classes
    ids = list(sp.ids)
    points, names, organs, placements, masks, sizes = {}, {}, {}, {}, {}, {}
    entry_of = getattr(sp, "entry", None)
    for k, sid in enumerate(ids):
        names[k] = sid
        if with_pairs:
            pair = sp.load(sid)
            pts = pair.cell_points
            if pair.organ:
                organs[k] = pair.organ
            placements[k] = pair.placement
            sizes[k] = pair.cell_size
            if pair.tissue_mask is not None:
                masks[k] = pair.tissue_mask
        else:
            pts = sp.points(sid)
            if callable(entry_of):
                organ = entry_of(sid).get("organ")
                if organ:
                    organs[k] = organ
        if pts is not None:
            points[k] = pts
    if not with_pairs and ids and image_size is None:
        sizes = dict.fromkeys(range(len(ids)), sp.load(ids[0]).cell_size)
    ps = PointSet(points, len(ids), names, f"{path} (split {name})", classes=classes, organs=organs,
                  placements=placements, tissue_masks=masks, tissue_classes=spec.tissue_classes, image_sizes=sizes,
                  cell_mpp=spec.cell_mpp)
    for k, pts in points.items():
        _check_points(pts, k, classes, sizes.get(k) or image_size_of(image_size, k), f"{path}: sample {names[k]}")
    return ps


def _read_metadata(path: Path, gt: PointSet) -> dict[int, dict]:
    """Metadata entries per image index: a JSON list (entry K = image_K) or a release
    ``metadata.json`` (``sample_pairs`` matched by sample id, else in sorted id order)."""
    try:
        with open(path, encoding="utf-8") as fh:
            meta = json.load(fh)
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    except json.JSONDecodeError as e:
        raise InputError(path, f"invalid JSON ({e})") from e
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


def _read_mask_folder(folder: Path, gt: PointSet, classes: ClassSet, warnings: list[str]) -> dict[int, np.ndarray]:
    from .data.io import read_label_map

    if not folder.is_dir():
        raise InputError(folder, "tissue mask folder not found")
    files = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in _MASK_EXTS and p.is_file()}
    if not files:
        raise InputError(folder, f"no mask files ({', '.join(_MASK_EXTS)}) in the folder")
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
) -> PointSet:
    """Ground truth with what the analyses need.

    ``classes``: the cell classes (default: the dataset's, else OCELOT's BC/TC).
    ``image_size``: cell image ``(width, height)`` for coordinate checks (default: the
    dataset's image size, else 1024 x 1024, the challenge's).
    A dataset folder gives points in sorted sample-id order (``image_K`` = K-th sample of
    ``split``), organs, and -- with ``with_pairs=True`` (all pairs are loaded) -- placements
    and tissue masks. For other sources: ``metadata`` (a file or entries per image) gives
    organs and placements, ``tissue_masks`` (a folder named by image, or a mapping) the
    tissue-frame masks; ``placements`` may also be given directly.
    """
    is_dataset = isinstance(source, (str, Path)) and Path(source).is_dir() and _is_dataset_dir(Path(source))
    if is_dataset:
        gt = _load_dataset(Path(source), split, classes, image_size, with_pairs or tissue_masks is not None)
    else:
        gt = load_points(source, classes=classes or OCELOT_CELL_CLASSES, image_size=image_size or CHALLENGE_IMAGE_SIZE,
                         strict=strict, split=split, label="<ground truth>")
        gt.classes = gt.classes or classes or OCELOT_CELL_CLASSES
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
            gt.tissue_masks = _read_mask_folder(Path(tissue_masks), gt, gt.tissue_classes, gt.warnings)
        else:
            gt.tissue_masks = {int(k): np.asarray(v) for k, v in tissue_masks.items()}
    if placements is not None:
        gt.placements.update({int(k): v for k, v in placements.items()})
    if gt.tissue_masks and gt.entries:
        from .data.ocelot_release import placement_from_entry

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


# ====================================================================== evaluation
@dataclass
class MethodResult:
    """Everything computed for one prediction set."""

    name: str
    source: str
    counts: DetectionCounts
    organs: dict[str, DetectionCounts] = field(default_factory=dict)
    subgroups: SubgroupCounts | None = None
    segmentation: SegmentationCounts | None = None
    ci: dict | None = None
    samples: dict[str, np.ndarray] = field(default_factory=dict)  # bootstrap score samples (B,)
    warnings: list[str] = field(default_factory=list)

    def scores(self):
        return self.counts.scores()


@dataclass
class EvaluationReport:
    """Results of :func:`evaluate`; ``to_dict()`` is the JSON document, ``tables()`` the text."""

    methods: list[MethodResult]
    gt_source: str
    images: list[int]
    image_names: list[str]
    classes: ClassSet
    radius_um: float
    mpp: float
    radius: float
    mode: str
    organs_of_images: list[str | None]
    n_resamples: int = 0
    seed: int | None = None
    level: float = 0.95
    comparison: dict | None = None
    warnings: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ JSON
    def to_dict(self, per_image: bool = True) -> dict:
        doc: dict[str, Any] = {
            "ground_truth": self.gt_source,
            "matching": self.mode,
            "matching_description": MODE_LABELS[self.mode],
            "radius_um": self.radius_um,
            "mpp": self.mpp,
            "radius_px": self.radius,
            "classes": self.classes.to_dict(),
            "num_images": len(self.images),
            "bootstrap": {"resamples": self.n_resamples, "seed": self.seed, "level": self.level} if self.n_resamples else None,
            "methods": {},
            "warnings": list(self.warnings),
        }
        for m in self.methods:
            s = m.scores()
            d = {"source": m.source, **s.to_dict()}
            if m.ci is not None:
                d["ci"] = m.ci.get("overall")
            if m.organs:
                d["per_organ"] = {
                    organ: {"n_images": len(c.images), **_short_scores(c.scores()),
                            **({"ci": m.ci["organs"].get(organ)} if m.ci and "organs" in m.ci else {})}
                    for organ, c in m.organs.items()
                }
            if m.subgroups is not None:
                rows = m.subgroups.scores()
                if m.ci and "subgroups" in m.ci:
                    for r in rows:
                        r["ci"] = m.ci["subgroups"].get(r["subgroup"])
                d["subgroups"] = {"n_images": len(m.subgroups.images), "rows": rows,
                                  "cell_distribution": m.subgroups.cell_distribution()}
            if m.segmentation is not None:
                d["segmentation"] = m.segmentation.scores()
                if m.ci and "segmentation" in m.ci:
                    d["segmentation"]["ci"] = m.ci["segmentation"]
            if per_image:
                f1 = m.counts.per_image_f1()
                d["per_image"] = [
                    {"image": k, "name": n, "organ": o,
                     **{c: {"tp": int(m.counts.counts[i, j, 0]), "fp": int(m.counts.counts[i, j, 1]),
                            "n_gt": int(m.counts.counts[i, j, 2]), "f1": _nan_none(f1[i, j])}
                        for j, c in enumerate(self.classes.names)}}
                    for i, (k, n, o) in enumerate(zip(self.images, self.image_names, self.organs_of_images))
                ]
            if m.warnings:
                d["warnings"] = list(m.warnings)
            doc["methods"][m.name] = d
        if self.comparison is not None:
            doc["comparison"] = self.comparison
        return _jsonable(doc)

    # ------------------------------------------------------------------ text
    def tables(self) -> str:
        """Readable tables: scores (with CIs), official rounding, organs, subgroups, ranking."""
        cl = self.classes.names
        out = []
        ci = self.n_resamples > 0
        title = (f"Cell detection, {MODE_LABELS[self.mode]}; hit radius {self.radius_um:g} µm = {self.radius:g} px "
                 f"at {self.mpp:g} µm/px; {len(self.images)} images")
        if ci:
            title += f"; {int(self.level * 100)}% CIs from {self.n_resamples} bootstrap resamples of images (seed {self.seed})"
        rows = []
        for m in self.methods:
            s = m.scores()
            for j, c in enumerate(cl):
                tp, fp, ngt = (int(v) for v in s.totals[j])
                r = [m.name, c]
                for key, v in (("precision", s.precision[j]), ("recall", s.recall[j]), ("f1", s.f1[j])):
                    r.append(_with_ci(float(v), m.ci["overall"]["classes"][c][key] if ci and m.ci else None))
                rows.append(r + [tp, fp, ngt - tp])
            rows.append([m.name, "mF1", "", "", _with_ci(s.mf1, m.ci["overall"]["mF1"] if ci and m.ci else None), "", "", ""])
        out.append(format_table(rows, ["method", "class", "precision", "recall", "F1", "TP", "FP", "FN"], title=title))
        if self.mode == "challenge":
            keys = [f"{k}/{c}" for c in cl for k in ("Pre", "Rec", "F1")] + ["mF1"]
            rows = [[m.name] + [f"{m.scores().challenge[k]:.4f}" for k in keys] for m in self.methods]
            out.append(format_table(rows, ["method"] + keys, title="As the challenge reports it (official formula, rounded to 4 decimals)"))
        organ_rows = []
        for m in self.methods:
            for organ, c in m.organs.items():
                s = c.scores()
                oci = m.ci["organs"].get(organ) if ci and m.ci and "organs" in m.ci else None
                organ_rows.append([m.name, organ, len(c.images), _with_ci(s.mf1, oci["mF1"] if oci else None)]
                                  + [_with_ci(float(v), oci["classes"][n]["f1"] if oci else None)
                                     for n, v in zip(cl, s.f1)])
        if organ_rows:
            out.append(format_table(organ_rows, ["method", "organ", "images", "mF1"] + [f"F1/{c}" for c in cl], title="Per organ"))
        sub_rows = []
        for m in self.methods:
            if m.subgroups is None:
                continue
            for r in m.subgroups.scores():
                cis = m.ci["subgroups"].get(r["subgroup"]) if ci and m.ci and "subgroups" in m.ci else None
                sub_rows.append([m.name, r["subgroup"]] + [_with_ci(r[k], cis[k] if cis else None) for k in ("precision", "recall", "f1")]
                                + [r["n_gt"], r["n_pred"]])
        if sub_rows:
            out.append(format_table(sub_rows, ["method", "subgroup", "precision", "recall", "F1", "GT", "pred"],
                                    title="Tissue-region subgroups (cells on unknown tissue left out)"))
        seg_rows = []
        for m in self.methods:
            if m.segmentation is None:
                continue
            s = m.segmentation.scores()
            seg_rows.append([m.name, _nan_dash(s["mIoU"]), _nan_dash(s["mDice"])]
                            + [_nan_dash(s["classes"][c]["iou"]) for c in m.segmentation.classes.names])
        if seg_rows:
            names = self.methods[0].segmentation.classes.names if self.methods[0].segmentation else ()
            out.append(format_table(seg_rows, ["method", "mIoU", "mDice"] + [f"IoU/{c}" for c in names],
                                    title="Tissue segmentation (unknown pixels ignored)"))
        if self.comparison is not None:
            names = self.comparison["methods"]
            for metric, probs in self.comparison["rank_probabilities"].items():
                rows = [[n] + [float(p) for p in probs[i]] for i, n in enumerate(names)]
                out.append(format_table(rows, ["method"] + [f"P(rank {r + 1})" for r in range(len(names))],
                                        title=f"Ranking uncertainty, {metric} (share of bootstrap resamples)", digits=3))
            w = self.comparison["pairwise_win"]["mF1"]
            rows = [[n] + [float(v) for v in w[i]] for i, n in enumerate(names)]
            out.append(format_table(rows, ["row beats column"] + list(names), title="Pairwise win probability, mF1", digits=3))
        if self.warnings:
            out.append("Warnings:\n" + "\n".join(f"  - {w}" for w in self.warnings))
        return "\n\n".join(out)

    # ------------------------------------------------------------------ files
    def per_image_f1(self) -> dict[str, np.ndarray]:
        return {m.name: m.counts.per_image_f1() for m in self.methods}

    def write(self, out_dir: str | Path, plots: bool = False) -> list[Path]:
        """Write ``evaluation.json`` (and PNG plots when asked) into ``out_dir``, atomically."""
        out_dir = Path(out_dir)
        written = [out_dir / "evaluation.json"]
        write_json(written[0], self.to_dict())
        if plots:
            from .reports.plots import plot_f1_violins, plot_pairwise_wins, plot_rank_probabilities

            written.append(plot_f1_violins(self.per_image_f1(), self.classes.names, out_dir / "f1_per_image_violins.png"))
            if self.comparison is not None:
                names = self.comparison["methods"]
                rp = {k: np.asarray(v) for k, v in self.comparison["rank_probabilities"].items()}
                written.append(plot_rank_probabilities(rp, names, out_dir / "rank_probabilities.png"))
                written.append(plot_pairwise_wins(np.asarray(self.comparison["pairwise_win"]["mF1"]), names,
                                                  out_dir / "pairwise_wins.png"))
        return written


def _nan_none(v) -> float | None:
    v = float(v)
    return None if math.isnan(v) else v


def _nan_dash(v) -> Any:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _with_ci(v: float, ci: Sequence[float] | None) -> str:
    if ci is None or ci[0] is None:
        return f"{v:.4f}"
    return f"{v:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"


def _short_scores(s) -> dict:
    return {"mF1": s.mf1, **{f"{k}/{c}": float(getattr(s, attr)[j]) for j, c in enumerate(s.classes.names)
                             for k, attr in (("Pre", "precision"), ("Rec", "recall"), ("F1", "f1"))}}


def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, (float, np.floating)):
        return None if math.isnan(float(o)) else float(o)
    return o


# ---------------------------------------------------------------------- bootstrap helpers
def _ci_pair(samples: np.ndarray, level: float) -> list[float | None]:
    lo, hi = percentile_ci(samples, level)
    return [_nan_none(lo), _nan_none(hi)]


def _detection_ci(totals: np.ndarray, classes: ClassSet, level: float) -> tuple[dict, dict[str, np.ndarray]]:
    """CIs of every detection score from resampled totals ``(B, C, 3)``; also the samples."""
    s = scores_from_counts(totals)
    ci = {"mF1": _ci_pair(s["mf1"], level), "classes": {}}
    samples = {"mF1": s["mf1"]}
    for j, c in enumerate(classes.names):
        ci["classes"][c] = {k: _ci_pair(s[k][:, j], level) for k in ("precision", "recall", "f1")}
        samples[f"F1/{c}"] = s["f1"][:, j]
        samples[f"Pre/{c}"] = s["precision"][:, j]
        samples[f"Rec/{c}"] = s["recall"][:, j]
    return ci, samples


def _seeds(seed: int | None, n: int) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]


def _as_method_sources(preds: Any, names: Sequence[str] | None) -> list[tuple[str, Source]]:
    if isinstance(preds, Mapping) and preds and all(isinstance(k, str) for k in preds) and not all(
            isinstance(v, Points) or v is None for v in preds.values()):
        items = list(preds.items())
    elif isinstance(preds, (list, tuple)) and preds and not all(isinstance(v, Points) or v is None for v in preds):
        items = [(None, p) for p in preds]
    else:
        items = [(None, preds)]
    out, used = [], set()
    for i, (name, src) in enumerate(items):
        if names is not None and i < len(names):
            name = names[i]
        if name is None:
            name = Path(src).stem if isinstance(src, (str, Path)) else (
                Path(src.path).stem if isinstance(src, ChallengePoints) and src.path else f"method_{i + 1}")
        base, n = name, 2
        while name in used:
            name, n = f"{base}_{n}", n + 1
        used.add(name)
        out.append((name, src))
    return out


def _per_method(value: Any, names: Sequence[str]) -> list[Any]:
    """Tissue predictions per method: ``{name: source}``, a list in method order, or one
    source when there is one method."""
    if isinstance(value, Mapping) and value and all(isinstance(k, str) and k in names for k in value):
        return [value.get(n) for n in names]
    if isinstance(value, (list, tuple)):
        if len(value) != len(names):
            raise InputError(None, f"{len(value)} tissue prediction sources for {len(names)} methods; give one per method")
        return list(value)
    if len(names) != 1:
        raise InputError(None, "with several methods, give tissue predictions per method ({name: source} or a list)")
    return [value]


def evaluate(
    preds: Any,
    gt: Source,
    *,
    names: Sequence[str] | None = None,
    split: str | None = None,
    classes: ClassSet | None = None,
    radius_um: float = CHALLENGE_RADIUS_UM,
    mpp: float | None = None,
    mode: str = "challenge",
    image_size: ImageSize = None,
    strict: bool = False,
    metadata: Any = None,
    tissue_masks: Any = None,
    tissue_classes: ClassSet | None = None,
    placements: Mapping[int, Placement] | None = None,
    subgroups: bool | None = None,
    tissue_preds: Mapping[str, Any] | Any = None,
    bootstrap: int = DEFAULT_RESAMPLES,
    seed: int | None = DEFAULT_SEED,
    level: float = 0.95,
    progress: Callable[[str], None] | None = None,
) -> EvaluationReport:
    """Score prediction set(s) against one ground truth.

    ``preds``: one source, a list of sources, or ``{name: source}`` (sources as
    :func:`load_points`). ``gt``: a source or a loaded :class:`PointSet`; a dataset folder
    uses ``split``. ``radius_um``/``mpp``: the hit radius (3 µm at 0.2 µm/px = 15 px); ``mpp=None`` takes a
    dataset folder's cell mpp, else the challenge's 0.2 µm/px.
    ``mode``: ``"challenge"`` (the official greedy rule) or ``"hungarian"`` (optimal
    matching, not the challenge's). ``subgroups``: tissue-region analysis (default: when
    the ground truth has tissue masks; for a dataset folder ``True`` loads the pairs).
    ``tissue_preds``: predicted tissue masks (a folder named like the ground-truth masks,
    or ``{K: mask}``) scored against the ground-truth masks; with several methods
    ``{name: source}`` or a list in method order. ``bootstrap``: number of
    image resamples (default 10,000 as in the report; 0 = none), ``seed`` for
    ``np.random.default_rng``; with several methods the same resamples serve all of them.
    """
    if mode not in MATCH_MODES:
        raise ValueError(f"mode must be one of {MATCH_MODES}, got {mode!r}")
    say = progress or (lambda msg: None)
    if not isinstance(gt, PointSet):
        gt = load_ground_truth(gt, split=split, classes=classes, image_size=image_size,
                               strict=strict, metadata=metadata, tissue_masks=tissue_masks,
                               tissue_classes=tissue_classes, placements=placements, with_pairs=bool(subgroups))
    classes = classes or gt.classes or OCELOT_CELL_CLASSES
    sizes: ImageSize = image_size or gt.image_sizes or CHALLENGE_IMAGE_SIZE
    warnings = list(gt.warnings)
    if mpp is None:
        mpp = gt.cell_mpp or CHALLENGE_MPP
    r = radius_px(radius_um, mpp)
    methods: list[MethodResult] = []
    loaded: list[tuple[str, PointSet]] = []
    for name, src in _as_method_sources(preds, names):
        say(f"reading {name}")
        ps = load_points(src, classes=classes, image_size=sizes, strict=strict, align_to=gt, split=split, label=name)
        warnings.extend(f"{name}: {w}" for w in ps.warnings)
        loaded.append((name, ps))
    images = gt.image_indices
    known = set(images)
    for name, ps in loaded:
        extra = sorted(set(ps.points) - known)
        if extra:
            if strict:
                raise InputError(ps.source, f"{ps.entry_ref(extra[0])}: no such image in the ground truth "
                                            f"({gt.num_images} images; the official scorer cannot score it)")
            warnings.append(f"{name}: predictions for {len(extra)} image(s) without ground truth "
                            f"(first {image_name(extra[0])}); counted as false positives")
            known |= set(extra)
    images = sorted(known)
    image_names = [gt.name(k) for k in images]
    organ_labels = [gt.organs.get(k) for k in images]
    do_sub = bool(gt.tissue_masks) if subgroups is None else bool(subgroups)
    if do_sub and not gt.tissue_masks:
        raise InputError(None, "subgroup analysis needs tissue masks (a dataset with tissue annotations, or tissue_masks= with metadata)")
    for name, ps in loaded:
        say(f"matching {name}")
        counts = count_detections(gt.points, ps.points, images, r, classes, mode, image_names)  # type: ignore[arg-type]
        m = MethodResult(name, ps.source, counts)
        if any(o is not None for o in organ_labels):
            m.organs = counts.grouped(organ_labels)
        if do_sub:
            m.subgroups = subgroup_counts(gt.points, ps.points, gt.tissue_masks, gt.placements, None, r, classes,
                                          gt.tissue_classes or OCELOT_TISSUE_CLASSES, mode,  # type: ignore[arg-type]
                                          None)
            m.subgroups.names = [gt.name(k) for k in m.subgroups.images]
        methods.append(m)
    if tissue_preds is not None:
        if not gt.tissue_masks:
            raise InputError(None, "tissue segmentation scores need ground-truth tissue masks")
        tcls = gt.tissue_classes or OCELOT_TISSUE_CLASSES
        for m, src in zip(methods, _per_method(tissue_preds, [m.name for m in methods])):
            if src is None:
                continue
            masks = _read_mask_folder(Path(src), gt, tcls, warnings) if isinstance(src, (str, Path)) else {
                int(k): np.asarray(v) for k, v in src.items()}
            common = sorted(set(masks) & set(gt.tissue_masks))
            m.segmentation = count_segmentation(gt.tissue_masks, masks, tcls, common, [gt.name(k) for k in common])
    report = EvaluationReport(methods, gt.source, images, image_names, classes, radius_um, mpp, r, mode,
                              organ_labels, bootstrap, seed, level, None, warnings)
    if bootstrap > 0:
        say(f"bootstrap: {bootstrap} resamples")
        bootstrap_report(report, bootstrap, seed, level)
    return report


def bootstrap_report(report: EvaluationReport, n: int, seed: int | None, level: float) -> None:
    """Paired bootstrap over images: CIs of every score of every method (overall, per organ,
    per subgroup, segmentation), then ranking and pairwise-win probabilities. Fills
    ``report`` in place."""
    report.n_resamples, report.seed, report.level = n, seed, level
    methods = report.methods
    organs = sorted({o for o in report.organs_of_images if o is not None})
    # The main resampling uses default_rng(seed) itself; the other analyses get their own
    # independent streams derived from the same seed.
    rng_sub, rng_seg, *rng_org = _seeds(seed, 2 + len(organs))
    w = resample_weights(len(report.images), n, np.random.default_rng(seed))
    for m in methods:
        ci, samples = _detection_ci(resample_sums(w, m.counts.counts), report.classes, level)
        m.ci = {"overall": ci}
        m.samples = samples
    # Per organ: resample within the organ's images (same draws for all methods).
    for organ, g in zip(organs, rng_org):
        rows = np.array([o == organ for o in report.organs_of_images])
        wo = resample_weights(int(rows.sum()), n, g)
        for m in methods:
            ci, _ = _detection_ci(resample_sums(wo, m.counts.counts[rows]), report.classes, level)
            m.ci.setdefault("organs", {})[organ] = ci
    # Subgroups: resample the images that have a tissue mask.
    sub = [m for m in methods if m.subgroups is not None]
    if sub:
        ws = resample_weights(len(sub[0].subgroups.images), n, rng_sub)
        for m in sub:
            s = scores_from_counts(resample_sums(ws, m.subgroups.flat_counts()))
            m.ci["subgroups"] = {
                f"{c} on {t}": {k: _ci_pair(s[k][:, j], level) for k in ("precision", "recall", "f1")}
                for j, (c, t) in enumerate(m.subgroups.labels())
            }
    # Segmentation: resample the images with both masks.
    seg_weights: dict[int, np.ndarray] = {}
    for m in methods:
        if m.segmentation is None or not len(m.segmentation.images):
            continue
        k = len(m.segmentation.images)
        wg = seg_weights.setdefault(k, resample_weights(k, n, rng_seg))
        s = segmentation_scores(resample_sums(wg, m.segmentation.counts))
        m.ci["segmentation"] = {"mIoU": _ci_pair(s["miou"], level), "mDice": _ci_pair(s["mdice"], level),
                                "classes": {c: {"iou": _ci_pair(s["iou"][:, j], level), "dice": _ci_pair(s["dice"][:, j], level)}
                                            for j, c in enumerate(m.segmentation.classes.names)}}
    if len(methods) >= 2:
        report.comparison = compare_methods(methods, report.classes)


def compare_methods(methods: Sequence[MethodResult], classes: ClassSet) -> dict:
    """Ranking uncertainty and pairwise wins from the methods' (paired) bootstrap samples.

    Metrics: mF1 and the F1 of each class. ``rank_probabilities[metric][m][r]`` is the
    share of resamples in which method ``m`` holds rank ``r + 1`` (report Fig. 5);
    ``pairwise_win[metric][i][j]`` the share in which method ``i`` beats ``j`` (Fig. 6).
    """
    metrics = ["mF1"] + [f"F1/{c}" for c in classes.names]
    names = [m.name for m in methods]
    out: dict[str, Any] = {"methods": names, "metrics": metrics, "observed_rank": {}, "rank_probabilities": {}, "pairwise_win": {}}
    for metric in metrics:
        samples = np.stack([m.samples[metric] for m in methods], axis=1)
        observed = np.array([m.scores().mf1 if metric == "mF1" else
                             float(m.scores().f1[list(classes.names).index(metric[3:])]) for m in methods])
        out["observed_rank"][metric] = observed_ranks(observed).tolist()
        out["rank_probabilities"][metric] = rank_probabilities(samples).tolist()
        out["pairwise_win"][metric] = pairwise_win_probabilities(samples).tolist()
    return out
