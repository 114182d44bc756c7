"""Scoring: cell detection as the OCELOT 2023 challenge scored it, and the report's statistics.

* :func:`evaluate` scores one or several prediction sets against one ground truth:
  per-image counts, pooled scores (exact and as the challenge rounded them), per-organ
  scores, tissue-region subgroups, tissue segmentation, and a paired bootstrap
  (:func:`bootstrap_report`: CIs, ranking uncertainty, pairwise wins via
  :func:`compare_methods`). The result is an :class:`EvaluationReport`.
* :func:`score_split`: the challenge mF1 of predictions for a dataset split, without
  files (the trainer's validation and test scores).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.base import PairSplit
from ..data.challenge_json import (
    CHALLENGE_IMAGE_SIZE,
    ChallengePoints,
    ImageSize,
    image_name,
)
from ..errors import InputError
from ..geometry import Placement
from ..jsonio import nan_to_none
from ..metrics.detection import (
    CHALLENGE_MPP,
    CHALLENGE_RADIUS_UM,
    MATCH_MODES,
    DetectionCounts,
    count_detections,
    radius_px,
    scores_from_counts,
)
from ..metrics.segmentation import (
    SegmentationCounts,
    count_segmentation,
    segmentation_scores,
)
from ..metrics.stats import (
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    observed_ranks,
    pairwise_win_probabilities,
    percentile_ci,
    rank_probabilities,
    resample_sums,
    resample_weights,
)
from ..metrics.subgroups import SubgroupCounts, subgroup_counts
from ..pair import OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES, ClassSet, Points
from . import render
from .sources import (
    PointSet,
    Source,
    ground_truth_warnings,
    load_ground_truth,
    load_points,
    read_mask_folder,
    split_ground_truth,
)

if TYPE_CHECKING:
    from ..inference.predictor import Predictions


# ====================================================================== results
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

    # ------------------------------------------------------------------ outputs (see render.py)
    def to_dict(self, per_image: bool = True) -> dict:
        """The JSON document (:func:`~histozoom.evaluation.render.report_document`)."""
        return render.report_document(self, per_image)

    def tables(self) -> str:
        """The text tables (:func:`~histozoom.evaluation.render.report_tables`)."""
        return render.report_tables(self)

    def per_image_f1(self) -> dict[str, np.ndarray]:
        """Per method, the ``(n_images, n_classes)`` F1 of each image."""
        return {m.name: m.counts.per_image_f1() for m in self.methods}

    def write(self, out_dir: str | Path, plots: bool = False) -> list[Path]:
        """Write ``evaluation.json`` (and PNG plots when asked) into ``out_dir``
        (:func:`~histozoom.evaluation.render.write_report`)."""
        return render.write_report(self, out_dir, plots)


# ====================================================================== scoring
# ---------------------------------------------------------------------- bootstrap helpers
def _ci_pair(samples: np.ndarray, level: float) -> list[float | None]:
    """``[low, high]`` percentile interval of bootstrap samples (``None`` for NaN)."""
    lo, hi = percentile_ci(samples, level)
    return [nan_to_none(lo), nan_to_none(hi)]


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
    allow_outside_paths: bool = False,
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
    ``allow_outside_paths``: a dataset folder ``gt`` may name files outside itself.
    """
    if mode not in MATCH_MODES:
        raise ValueError(f"mode must be one of {MATCH_MODES}, got {mode!r}")
    say = progress or (lambda msg: None)
    if not isinstance(gt, PointSet):
        gt = load_ground_truth(gt, split=split, classes=classes, image_size=image_size,
                               strict=strict, metadata=metadata, tissue_masks=tissue_masks,
                               tissue_classes=tissue_classes, placements=placements, with_pairs=bool(subgroups),
                               allow_outside_paths=allow_outside_paths)
    classes = classes or gt.classes or OCELOT_CELL_CLASSES
    sizes: ImageSize = image_size or gt.image_sizes or CHALLENGE_IMAGE_SIZE
    warnings = list(gt.warnings) + ground_truth_warnings(gt)
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
        raise InputError(None, "subgroup analysis needs tissue masks "
                               "(a dataset with tissue annotations, or tissue_masks= with metadata)")
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
        for m, src in zip(methods, _per_method(tissue_preds, [m.name for m in methods]), strict=True):
            if src is None:
                continue
            masks = read_mask_folder(src, gt, tcls, warnings) if isinstance(src, (str, Path)) else {
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
    for organ, g in zip(organs, rng_org, strict=True):
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
    out: dict[str, Any] = {
        "methods": names, "metrics": metrics, "observed_rank": {}, "rank_probabilities": {}, "pairwise_win": {},
    }
    for metric in metrics:
        samples = np.stack([m.samples[metric] for m in methods], axis=1)
        observed = np.array([m.scores().mf1 if metric == "mF1" else
                             float(m.scores().f1[list(classes.names).index(metric[3:])]) for m in methods])
        out["observed_rank"][metric] = observed_ranks(observed).tolist()
        out["rank_probabilities"][metric] = rank_probabilities(samples).tolist()
        out["pairwise_win"][metric] = pairwise_win_probabilities(samples).tolist()
    return out


# ====================================================================== dataset splits
def score_split(pred: Predictions, split: PairSplit, gt: Mapping[int, Points] | None = None,
                radius_um: float = CHALLENGE_RADIUS_UM) -> dict[str, Any]:
    """Challenge mF1 of predictions for a dataset split with ground truth, without files.

    ``pred``: :class:`~histozoom.inference.predictor.Predictions` of ``split`` (matched
    with the rounded points it writes); ``gt``: the split's
    :func:`~histozoom.evaluation.sources.split_ground_truth` (read when not given). The hit
    radius is ``radius_um`` (3 µm) at the split's nominal cell mpp (15 px on OCELOT).
    Returns ``{"mF1", "f1": {class: F1}, "counts": DetectionCounts, "organs": {organ: mF1}}``.
    """
    gt = split_ground_truth(split) if gt is None else gt
    counts = count_detections(gt, pred.rounded(), list(range(len(pred.ids))), radius_px(radius_um, split.spec.cell_mpp),
                              split.spec.cell_classes, names=list(pred.ids))
    s = counts.scores()
    labels = [pred.organs.get(k) for k in range(len(pred.ids))]
    organs = {o: c.scores().mf1 for o, c in counts.grouped(labels).items()} if any(labels) else {}
    return {"mF1": s.mf1, "f1": {n: float(f) for n, f in zip(counts.classes.names, s.f1, strict=True)},
            "counts": counts, "organs": organs}
