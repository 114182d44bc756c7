"""Scoring nuclei instance segmentation and classification: the API behind ``histozoom nuclei evaluate``.

* :func:`evaluate_nuclei` scores a folder of predicted label files against a folder of
  ground-truth label files of the same names.
* :func:`evaluate_samples` does the same on samples in memory (:class:`NucleiSample`,
  :class:`NucleiLabels`, or anything with ``id``/``name``, ``inst_map``, ``inst_class``);
  the trainer calls this one.

Both return a :class:`NucleiEvaluation`: per-image scores and the overall scores in two
modes, ``mean`` (every metric averaged over the images where it is defined: the
HoVer-Net / paper convention) and ``pooled`` (recomputed from counts summed over the
dataset). Metrics and their conventions (Dice, AJI, AJI+, DQ, SQ, PQ, per-class PQ, aPQ;
``NaN`` for ``0/0``) are those of :mod:`histozoom.metrics.instances`.

Files
-----
* **CoNSeP / HoVer-Net ``.mat``** (the contract): ``inst_map`` (required) and the
  classes, read by :func:`~histozoom.data.nuclei.consep.read_consep_labels`, the reader
  behind the datasets training uses (:func:`~histozoom.data.nuclei.read_consep_mat`) --
  ``inst_type`` (one class per instance in increasing id order) is the class of record,
  else the per-instance majority of ``type_map`` (non-zero types win over 0;
  :func:`~histozoom.data.nuclei.records.instance_classes`), else the file has no classes
  (``inst_class`` ``None``, an empty ``inst_map`` included). No image is needed.
* **``.npy``** (optional): a 2-D instance map (no classes), or ``(H, W, 2)`` with the
  instance map in channel 0 and a per-pixel type map in channel 1 (CoNIC layout).

A folder is read as its ``.mat`` files; with none, as its ``.npy`` files; a CoNSeP root
(``masks/*.mat`` or ``Labels/*.mat``) is read from that sub-folder. Files pair by name
(stem). A ground-truth file without a prediction is an :class:`InputError` by default
(``missing="empty"`` scores it as an empty prediction: no detections); prediction files
without ground truth are listed in ``unmatched_predictions`` and ignored.

Classes
-------
``classes=None``: the scored classes are every non-zero class id found in the ground
truth or the predictions, named by their ids (``{"1": "1"}``) -- the ids are not
guessed to be CoNSeP's. Give names (and a fixed class list, so that a class nobody
predicted or annotated still shows up as ``NaN``) with a class file
(:func:`~histozoom.data.nuclei.read_class_file`: a list of names, ``{id: name}``, or
``{"classes": ...}``), a :class:`~histozoom.pair.ClassSet` /
:class:`~histozoom.data.nuclei.NucleiClassScheme`, a mapping ``{id: name}``, or the
string ``"consep"`` (:data:`~histozoom.data.nuclei.CONSEP_CLASSES`). Instances whose
class is outside the scored classes take part in the class-agnostic metrics only (a
warning says so). When no file carries classes the evaluation is class-agnostic
(``classes`` empty, aPQ ``NaN``); when only some do, that is a warning (class-agnostic)
with ``classes=None`` and an :class:`InputError` with explicit classes. A file (or
sample) without instances and without classes is scored as having classes (none of
them): an empty prediction saved without ``type_map`` neither makes the evaluation
class-agnostic nor fails explicit classes.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..atomic import atomic_open, write_json
from ..constants import MISSING_MODES
from ..data.io import read_npy
from ..data.nuclei.consep import consep_classes, read_consep_labels
from ..data.nuclei.folder import read_class_file
from ..data.nuclei.records import CONSEP_CLASSES, NucleiClassScheme, check_instance_map, format_wh
from ..errors import InputError
from ..jsonio import jsonable, nan_to_none
from ..metrics.instances import InstanceScores, PQCounts, aggregate, score_instances
from ..pair import ClassSet
from ..reports.tables import format_table

__all__ = [
    "MISSING_MODES",
    "NucleiLabels",
    "ImageResult",
    "NucleiEvaluation",
    "read_nuclei_labels",
    "list_label_files",
    "resolve_classes",
    "evaluate_nuclei",
    "evaluate_samples",
]

LABEL_SUFFIXES = (".mat", ".npy")
CONSEP_LABEL_DIRS = ("masks", "Labels", "labels")

ClassesArg = None | str | Path | ClassSet | NucleiClassScheme | Mapping[int, str] | Sequence[int]


# ====================================================================== label files
@dataclass
class NucleiLabels:
    """Instances (and their classes) of one image, without the image.

    ``inst_map``: ``(H, W)`` int32, 0 = background. ``inst_class``: ``{id: class}`` for
    every id, or ``None`` (no classes). ``source``: the file (named in errors).
    """

    name: str
    inst_map: np.ndarray
    inst_class: dict[int, int] | None = None
    source: Path | None = None

    @property
    def id(self) -> str:
        return self.name

    @property
    def n_instances(self) -> int:
        ids = np.unique(self.inst_map)
        return int((ids != 0).sum())


def read_nuclei_labels(path: str | Path, name: str | None = None) -> NucleiLabels:
    """Instances and classes of one label file (``.mat`` CoNSeP-style, or ``.npy``); no image needed.

    ``.mat``: :func:`~histozoom.data.nuclei.consep.read_consep_labels`, so the instances
    and classes are those of the training datasets' reader (``inst_class`` is ``None``
    when the file has neither ``inst_type`` nor ``type_map``, also for an empty map;
    ``{}`` for an empty map with either). ``.npy``: a 2-D instance map has no classes;
    ``(H, W, 2)`` takes the classes from the type map in channel 1 as a ``.mat``
    ``type_map`` (:func:`~histozoom.data.nuclei.consep.consep_classes`).
    """
    path = Path(path)
    name = name or path.stem
    suffix = path.suffix.lower()
    if suffix == ".mat":
        inst, inst_class, _ = read_consep_labels(path)
        return NucleiLabels(name, inst, inst_class, path)
    if suffix == ".npy":
        a = read_npy(path)
        if a.ndim == 3 and a.shape[2] == 2:
            inst = check_instance_map(a[..., 0], path)
            return NucleiLabels(name, inst, consep_classes(inst, a[..., 1], None, path)[0], path)
        return NucleiLabels(name, check_instance_map(a, path), None, path)
    raise InputError(path, f"unsupported label file type {path.suffix!r} (expected .mat or .npy)")


def list_label_files(folder: str | Path) -> tuple[Path, dict[str, Path]]:
    """The folder actually read and its label files by name (``.mat``; else ``.npy``; see module doc)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "not a folder" if not folder.exists() else "not a folder (expected a folder of .mat files)")

    def files(d: Path, suffix: str) -> dict[str, Path]:
        return {p.stem: p for p in sorted(d.iterdir()) if p.suffix.lower() == suffix and p.is_file()}

    mats = files(folder, ".mat")
    if mats:
        return folder, mats
    for sub in CONSEP_LABEL_DIRS:
        d = folder / sub
        if d.is_dir():
            mats = files(d, ".mat")
            if mats:
                return d, mats
    npys = files(folder, ".npy")
    if npys:
        return folder, npys
    raise InputError(folder, "no .mat label files in the folder (nor masks/*.mat or .npy instance maps)")


# ====================================================================== classes
def resolve_classes(classes: ClassesArg) -> ClassSet | None:
    """A :class:`ClassSet` from any accepted ``classes`` argument (``None`` stays ``None``)."""
    if classes is None:
        return None
    if isinstance(classes, ClassSet):
        return classes
    if isinstance(classes, NucleiClassScheme):
        return classes.classes
    if isinstance(classes, (str, Path)):
        p = Path(classes)
        if not p.exists() and str(classes).lower() == "consep":
            return CONSEP_CLASSES
        return read_class_file(p)[0].classes
    if isinstance(classes, Mapping):
        return ClassSet.from_mapping(classes)
    ids = sorted({int(c) for c in classes})
    return ClassSet(tuple(str(i) for i in ids), tuple(ids))


# ====================================================================== results
@dataclass(frozen=True)
class ImageResult:
    """Scores of one image; ``pred_source`` is ``None`` for a missing prediction scored as empty."""

    name: str
    scores: InstanceScores
    gt_source: str | None = None
    pred_source: str | None = None
    missing_prediction: bool = False

    @property
    def n_gt(self) -> int:
        return self.scores.counts.tp + self.scores.counts.fn

    @property
    def n_pred(self) -> int:
        return self.scores.counts.tp + self.scores.counts.fp

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "gt_file": self.gt_source,
            "pred_file": self.pred_source,
            "missing_prediction": self.missing_prediction,
            "n_gt": self.n_gt,
            "n_pred": self.n_pred,
            **self.scores.to_dict(),
        }


METRICS = (("dice", "Dice"), ("aji", "AJI"), ("aji_plus", "AJI+"), ("dq", "DQ"), ("sq", "SQ"), ("pq", "PQ"), ("apq", "aPQ"))


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return "" if nan_to_none(v) is None else repr(v)
    return v


@dataclass
class NucleiEvaluation:
    """Per-image and overall scores of a nuclei evaluation (see the module docstring).

    ``classes``: the scored classes (``None``: class-agnostic evaluation). ``mean`` /
    ``pooled``: :func:`~histozoom.metrics.instances.aggregate` of the per-image scores.
    """

    per_image: list[ImageResult]
    mean: InstanceScores
    pooled: InstanceScores
    classes: ClassSet | None
    match_iou: float = 0.5
    missing_predictions: list[str] = field(default_factory=list)
    unmatched_predictions: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    pred: str | None = None
    gt: str | None = None

    @property
    def n_images(self) -> int:
        return len(self.per_image)

    @property
    def class_names(self) -> dict[int, str]:
        if self.classes is None:
            return {}
        return {int(i): str(n) for i, n in zip(self.classes.ids, self.classes.names)}

    def to_dict(self) -> dict:
        """The JSON document of ``histozoom nuclei evaluate --json`` (NaN → ``null``)."""
        return {
            "n_images": self.n_images,
            "match_iou": self.match_iou,
            "pred": self.pred,
            "gt": self.gt,
            "classes": {str(i): n for i, n in self.class_names.items()},
            "overall": {"mean": self.mean.to_dict(), "pooled": self.pooled.to_dict()},
            "per_image": [r.to_dict() for r in self.per_image],
            "missing_predictions": list(self.missing_predictions),
            "unmatched_predictions": list(self.unmatched_predictions),
            "warnings": list(self.warnings),
        }

    # ------------------------------------------------------------------ text
    def _class_headers(self) -> list[str]:
        return [f"PQ/{n}" for n in self.class_names.values()]

    def _metric_cells(self, s: InstanceScores) -> list[Any]:
        return [getattr(s, k) for k, _ in METRICS] + [s.pq_per_class.get(c, math.nan) for c in self.class_names]

    def tables(self) -> str:
        """Readable tables: overall (mean over images, pooled), then per image."""
        heads = [h for _, h in METRICS] + self._class_headers()
        title = (f"Nuclei instance segmentation: {self.n_images} images; PQ pairs at IoU > {self.match_iou:g}; "
                 + ("class-agnostic" if self.classes is None else f"{len(self.class_names)} classes"))
        c = self.pooled.counts
        rows = [["mean over images"] + self._metric_cells(self.mean),
                ["pooled"] + self._metric_cells(self.pooled)]
        out = [format_table(rows, ["overall"] + heads, title=title)
               + f"\n(pooled counts: TP {c.tp}, FP {c.fp}, FN {c.fn})"]
        rows = [[r.name + (" (missing)" if r.missing_prediction else ""), r.n_gt, r.n_pred] + self._metric_cells(r.scores)
                for r in self.per_image]
        out.append(format_table(rows, ["image", "GT", "pred"] + heads, title="Per image"))
        if self.missing_predictions:
            out.append("Missing predictions (scored as empty): " + ", ".join(self.missing_predictions))
        if self.warnings:
            out.append("Warnings:\n" + "\n".join(f"  - {w}" for w in self.warnings))
        return "\n\n".join(out)

    def per_image_csv(self) -> str:
        """One row per image: counts, metrics and per-class PQ (``pq_<class id>``); NaN as empty cells."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        ids = list(self.class_names)
        w.writerow(["name", "missing_prediction", "n_gt", "n_pred", "tp", "fp", "fn"]
                   + [k for k, _ in METRICS] + [f"pq_{i}" for i in ids])
        for r in self.per_image:
            s = r.scores
            w.writerow([r.name, int(r.missing_prediction), r.n_gt, r.n_pred, s.counts.tp, s.counts.fp, s.counts.fn]
                       + [_csv_value(getattr(s, k)) for k, _ in METRICS]
                       + [_csv_value(s.pq_per_class.get(i, math.nan)) for i in ids])
        return buf.getvalue()

    # ------------------------------------------------------------------ files
    def write(self, out_dir: str | Path) -> list[Path]:
        """Write ``scores.json`` (:meth:`to_dict`) and ``per_image.csv`` into ``out_dir``, atomically."""
        out_dir = Path(out_dir)
        js, cs = out_dir / "scores.json", out_dir / "per_image.csv"
        write_json(js, jsonable(self.to_dict()))
        with atomic_open(cs, "w", encoding="utf-8", newline="") as fh:
            fh.write(self.per_image_csv())
        return [js, cs]


# ====================================================================== scoring
def _name_of(sample: Any) -> str:
    for attr in ("id", "name"):
        v = getattr(sample, attr, None)
        if isinstance(v, str):
            return v
    raise TypeError(f"sample {type(sample).__name__} has no string 'id' or 'name'")


def _source_of(sample: Any) -> str | None:
    s = getattr(sample, "source", None)
    return None if s is None else str(s)


def _by_name(samples: Iterable[Any] | Mapping[str, Any], side: str) -> dict[str, Any]:
    if isinstance(samples, Mapping):
        return dict(samples)
    out: dict[str, Any] = {}
    for s in samples:
        n = _name_of(s)
        if n in out:
            raise InputError(_source_of(s), f"two {side} samples named {n!r} (the other: {_source_of(out[n])})")
        out[n] = s
    return out


def _restrict_classes(s: InstanceScores, ids: Sequence[int]) -> InstanceScores:
    """Per-image scores with exactly the classes ``ids`` (a class absent from the image: empty counts, PQ NaN)."""
    cc = {c: s.class_counts.get(c, PQCounts()) for c in ids}
    pq = {c: cc[c].pq for c in ids}
    defined = [v for v in pq.values() if not math.isnan(v)]
    return replace(s, class_counts=cc, pq_per_class=pq, apq=sum(defined) / len(defined) if defined else math.nan)


def _scored_classes(inst: np.ndarray, inst_class: Mapping[int, int] | None) -> Mapping[int, int] | None:
    """``inst_class``, but ``{}`` for a map without instances that has no classes (module doc)."""
    if inst_class is None and not inst.any():
        return {}
    return inst_class


def _class_ids_of(inst_class: Mapping[int, int] | None) -> set[int]:
    return set() if not inst_class else {int(c) for c in inst_class.values()} - {0}


def _check_missing(missing: str) -> None:
    if missing not in MISSING_MODES:
        raise ValueError(f"missing must be one of {MISSING_MODES}, got {missing!r}")


def _check_match_iou(match_iou: float) -> float:
    match_iou = float(match_iou)
    if not (0.5 <= match_iou < 1.0):
        raise ValueError(f"match_iou must be in [0.5, 1) so that IoU > match_iou pairs are unique, got {match_iou}")
    return match_iou


def _score(
    names: Sequence[str],
    load_gt: Callable[[str], Any],
    gt_source: Callable[[str], str],
    load_pred: Callable[[str], Any],
    has_pred: Callable[[str], bool],
    *,
    classes: ClassSet | None,
    match_iou: float,
    missing: str,
    missing_path: Callable[[str], Any],
    unmatched: Sequence[str],
    pred_label: str | None,
    gt_label: str | None,
) -> NucleiEvaluation:
    """Shared core: score ``names`` one image at a time (only two images in memory at once)."""
    if not names:
        raise InputError(gt_label, "no ground-truth samples to score")
    absent = [n for n in names if not has_pred(n)]
    if absent and missing == "error":
        n = absent[0]
        more = ""
        if len(absent) > 1:
            more = f" (and {len(absent) - 1} more: {', '.join(absent[1:6])}{' ...' if len(absent) > 6 else ''})"
        raise InputError(missing_path(n), f"no prediction for ground truth {gt_source(n)}{more}; "
                         "missing='empty' (--missing empty) scores it as an empty prediction")
    explicit = None if classes is None else [int(c) for c in classes.ids]
    results: list[ImageResult] = []
    seen: set[int] = set()
    lacking: list[str] = []  # files without classes
    outside: dict[int, str] = {}  # class id outside explicit classes -> first file
    for n in names:
        gt = load_gt(n)
        gt_inst = np.asarray(gt.inst_map)
        gt_cls = _scored_classes(gt_inst, gt.inst_class)
        if has_pred(n):
            pred = load_pred(n)
            p_inst, p_src = np.asarray(pred.inst_map), _source_of(pred)
            p_cls = _scored_classes(p_inst, pred.inst_class)
            if p_inst.shape != gt_inst.shape:
                raise InputError(p_src or f"prediction {n!r}",
                                 f"inst_map is {format_wh(p_inst.shape)} px but the ground truth "
                                 f"{_source_of(gt) or n!r} is {format_wh(gt_inst.shape)} px")
        else:
            p_inst, p_cls, p_src = np.zeros(gt_inst.shape, np.int32), {}, None
        for cls, src in ((gt_cls, _source_of(gt) or f"ground truth {n!r}"), (p_cls, p_src or f"prediction {n!r}")):
            if cls is None:
                if explicit is not None:
                    raise InputError(src, "no classes (neither inst_type nor type_map) but classes were asked for")
                lacking.append(src)
            else:
                ids = _class_ids_of(cls)
                seen |= ids
                if explicit is not None:
                    for c in ids - set(explicit):
                        outside.setdefault(c, src)
        both = gt_cls is not None and p_cls is not None
        try:
            s = score_instances(gt_inst, p_inst, gt_cls if both else None, p_cls if both else None,
                                explicit if both else None, match_iou=match_iou)
        except InputError as e:
            if e.path is not None:
                raise
            raise InputError(_source_of(gt) or f"image {n!r}", f"{e.problem} (prediction: {p_src or n!r})") from None
        results.append(ImageResult(n, s, _source_of(gt), p_src, not has_pred(n)))

    warnings: list[str] = []
    if unmatched:
        shown = ", ".join(unmatched[:10]) + (" ..." if len(unmatched) > 10 else "")
        warnings.append(f"{len(unmatched)} prediction(s) without ground truth ignored: {shown}")
    if absent:
        warnings.append(f"{len(absent)} ground-truth image(s) without a prediction scored as empty: {', '.join(absent[:10])}"
                        + (" ..." if len(absent) > 10 else ""))
    scored: ClassSet | None = None
    if lacking:
        if seen:
            warnings.append(f"{len(lacking)} file(s) carry no classes (e.g. {lacking[0]}); scored class-agnostic only")
    elif classes is not None:
        scored = classes
    elif seen:
        scored = ClassSet(tuple(str(c) for c in sorted(seen)), tuple(sorted(seen)))
    if scored is not None and explicit is not None and outside:
        warnings.append("class id(s) outside the scored classes (counted in the class-agnostic metrics only): "
                        + ", ".join(f"{c} (e.g. {f})" for c, f in sorted(outside.items())))
    ids = [] if scored is None else [int(c) for c in scored.ids]
    results = [replace(r, scores=_restrict_classes(r.scores, ids)) for r in results]
    per = [r.scores for r in results]
    return NucleiEvaluation(
        per_image=results,
        mean=aggregate(per, "mean"),
        pooled=aggregate(per, "pooled"),
        classes=scored,
        match_iou=match_iou,
        missing_predictions=list(absent),
        unmatched_predictions=list(unmatched),
        warnings=warnings,
        pred=pred_label,
        gt=gt_label,
    )


def evaluate_samples(
    pred_samples: Iterable[Any] | Mapping[str, Any],
    gt_samples: Iterable[Any] | Mapping[str, Any],
    *,
    classes: ClassesArg = None,
    match_iou: float = 0.5,
    missing: Literal["error", "empty"] = "error",
) -> NucleiEvaluation:
    """Score predicted samples against ground-truth samples in memory, pairing them by id.

    Samples: :class:`~histozoom.data.nuclei.NucleiSample`, :class:`NucleiLabels`, or any
    object with ``id`` (or ``name``), ``inst_map`` and ``inst_class`` (``{id: class}`` or
    ``None``); or a mapping ``{name: sample}``. Images are scored in ground-truth order.
    ``classes``, ``match_iou``, ``missing``: as :func:`evaluate_nuclei`.
    """
    _check_missing(missing)
    match_iou = _check_match_iou(match_iou)
    gts = _by_name(gt_samples, "ground-truth")
    preds = _by_name(pred_samples, "predicted")
    names = list(gts)
    return _score(
        names,
        gts.__getitem__,
        lambda n: _source_of(gts[n]) or repr(n),
        preds.__getitem__,
        preds.__contains__,
        classes=resolve_classes(classes),
        match_iou=match_iou,
        missing=missing,
        missing_path=lambda n: f"prediction {n!r}",
        unmatched=[n for n in preds if n not in gts],
        pred_label=None,
        gt_label=None,
    )


def evaluate_nuclei(
    pred_dir: str | Path,
    gt_dir: str | Path,
    *,
    classes: ClassesArg = None,
    match_iou: float = 0.5,
    missing: Literal["error", "empty"] = "error",
) -> NucleiEvaluation:
    """Score a folder of predicted label files against a folder of ground-truth label files.

    Files pair by name (see the module docstring for the formats and folder rules).
    ``classes``: the classes to score and their names -- ``None`` (the class ids found
    in the data, named by id), a class-file path, ``"consep"``, a ``ClassSet`` /
    ``NucleiClassScheme``, ``{id: name}`` or a list of ids. ``match_iou``: PQ pairs need
    ``IoU > match_iou`` (in ``[0.5, 1)``). ``missing``: ``"error"`` (default) raises
    :class:`InputError` naming the first ground-truth file without a prediction;
    ``"empty"`` scores it as an empty prediction. Bad files (unreadable, no
    ``inst_map``, shapes that differ between a prediction and its ground truth) raise
    :class:`InputError` naming the file.
    """
    _check_missing(missing)
    match_iou = _check_match_iou(match_iou)
    cls = resolve_classes(classes)
    gt_folder, gt_files = list_label_files(gt_dir)
    pred_folder, pred_files = list_label_files(pred_dir)
    ext = next(iter(pred_files.values())).suffix
    return _score(
        list(gt_files),
        lambda n: read_nuclei_labels(gt_files[n]),
        lambda n: str(gt_files[n]),
        lambda n: read_nuclei_labels(pred_files[n]),
        pred_files.__contains__,
        classes=cls,
        match_iou=match_iou,
        missing=missing,
        missing_path=lambda n: pred_folder / f"{n}{ext}",
        unmatched=[n for n in pred_files if n not in gt_files],
        pred_label=str(pred_folder),
        gt_label=str(gt_folder),
    )
