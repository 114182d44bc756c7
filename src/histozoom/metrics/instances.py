"""Nuclei instance-segmentation metrics: Dice, AJI, AJI+, DQ/SQ/PQ, per-class PQ and aPQ.

Inputs are integer instance maps ``(H, W)``: ``0`` is background, every other value is
one instance. Ids may be any non-negative integers (non-contiguous, unsorted); an id may
cover several disconnected pieces (use :func:`relabel_instances` with
``split_disconnected=True`` to split them). Only the partition of the pixels matters: all
metrics are invariant to renaming ids.

Definitions (G = ground-truth instances, P = predicted instances)
----------------------------------------------------------------
* **Dice** (pixel level, "Dice 1" of HoVer-Net): ``2|G_fg ∩ P_fg| / (|G_fg| + |P_fg|)``
  on the binary foreground maps.
* **AJI** (Kumar et al. 2017): every GT instance ``g`` is paired with the prediction of
  maximal IoU with it (one prediction may serve several GTs). ``C = Σ |g ∩ p(g)|``,
  ``U = Σ |g ∪ p(g)| + Σ |g| (GTs overlapping no prediction) + Σ |p| (predictions
  paired with no GT)``; ``AJI = C / U``. As in HoVer-Net's ``get_fast_aji``, a GT that
  overlaps no prediction is left unpaired (the original MoNuSeg script instead "pairs" it
  with an arbitrary prediction of IoU 0).
* **AJI+** (Graham et al. 2019, HoVer-Net ``get_fast_aji_plus``): as AJI, but the pairing
  is one-to-one and maximises the total IoU (Hungarian algorithm, scipy
  ``linear_sum_assignment`` on ``-IoU``); pairs of IoU 0 are dropped. Unpaired GTs and
  predictions go into the union.
* **DQ / SQ / PQ** (Kirillov et al. 2019): a GT and a prediction are a true positive
  pair when ``IoU > match_iou`` (0.5 by default; any threshold >= 0.5 makes the pairing
  unique). ``DQ = TP / (TP + FP/2 + FN/2)``, ``SQ = Σ IoU(TP) / TP``, ``PQ = DQ · SQ``.
* **Per-class PQ** (MoNuSAC / HoVer-Net type-wise PQ): for class ``c`` the matching
  above is done between GT instances of class ``c`` and predictions of class ``c`` only.
  Because IoU > 0.5 pairs are unique, this equals keeping the global TP pairs whose two
  members both have class ``c``. **aPQ** is the mean of the per-class PQs over the classes.

Classes are per *instance*. They come either as a dict ``id -> class`` or as a type map
``(H, W)``; a type map is reduced to one class per instance by majority vote over the
instance's pixels (non-zero types win over 0; ties go to the smaller class id), the rule
of :func:`histozoom.data.nuclei.records.instance_classes`, which gives that ``{id: class}``.
Instances whose class is not in ``classes`` take part in the class-agnostic metrics only.

Conventions for empty cases (one rule throughout: ``0/0`` is undefined → ``NaN``)
---------------------------------------------------------------------------------
* GT and prediction both empty: Dice, AJI, AJI+, DQ, SQ, PQ are ``NaN`` ("nothing to
  score"), and such images are left out of per-image means (:func:`aggregate` with
  ``mode="mean"`` is a NaN-ignoring mean). They add nothing to pooled sums either.
* Only one side empty: every metric is ``0`` (the denominators are positive).
* ``TP = 0`` with a non-empty side: ``SQ = 0`` (HoVer-Net's convention), so ``PQ = 0``.
* Per class: a class absent from both GT and prediction of an image has PQ ``NaN`` and is
  excluded from that image's aPQ; absent from GT but predicted → PQ 0 (all FP); present
  in GT but never predicted → PQ 0 (all FN). An image with no class defined has aPQ NaN.
* ``to_dict`` writes ``NaN`` as ``None`` (valid JSON).

Tie-breaking (exact ties in IoU)
--------------------------------
Instances are ordered by their first pixel in raster (row-major) order, never by id, so
results do not depend on the ids. AJI: among predictions of equal maximal IoU with a GT,
the one coming first in raster order is taken. AJI+: the optimal pairing decomposes over
the connected blocks of the overlap graph; a block where one GT (or one prediction)
overlaps several instances keeps its single pair of maximal IoU (ties: first GT, then
first prediction in raster order), any other block is solved by scipy's Hungarian
algorithm with rows/columns in raster order. On maps labelled in raster order
(``skimage.measure.label``, ``scipy.ndimage.label``, :func:`relabel_instances`) this is
HoVer-Net's "first index wins". (Exact ties in the optimal total IoU can make AJI+
differ from another Hungarian implementation; the total IoU is optimal either way.)

Speed: all pairwise overlaps come from one ``np.unique`` over the pixels where both maps
are foreground (a sparse contingency table); no per-pair masks are built. The Hungarian
step runs per connected block of overlapping instances, which are small.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from histozoom.data.nuclei.records import majority_types
from histozoom.errors import InputError
from histozoom.jsonio import nan_to_none

__all__ = [
    "Overlaps",
    "InstanceMatches",
    "PQCounts",
    "InstanceScores",
    "overlaps",
    "match_instances",
    "relabel_instances",
    "score_instances",
    "aggregate",
]

NAN = float("nan")


# ---------------------------------------------------------------------- validation


def _as_instance_map(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2:
        raise InputError(None, f"{name}: instance map must be 2-D (H, W), got shape {a.shape}")
    if a.dtype == bool:
        return a.astype(np.int64)
    if not np.issubdtype(a.dtype, np.integer):
        raise InputError(None, f"{name}: instance map must have an integer dtype, got {a.dtype}")
    if a.size and np.issubdtype(a.dtype, np.signedinteger) and a.min() < 0:
        raise InputError(None, f"{name}: instance ids must be >= 0 (0 = background), found {a.min()}")
    return a


def _safe_div(num: float, den: float) -> float:
    return float(num) / float(den) if den else NAN


# ---------------------------------------------------------------------- overlaps


def _instances_raster(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ids and areas in raster order of first pixel; foreground positions and their dense index."""
    pos = np.flatnonzero(flat)
    vals = flat[pos]
    if vals.size == 0:
        e = np.zeros(0, np.int64)
        return e, e.copy(), pos, np.zeros(0, np.intp)
    ids, first, inv, areas = np.unique(vals, return_index=True, return_inverse=True, return_counts=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(ids.size, np.intp)
    rank[order] = np.arange(ids.size)
    return ids[order], areas[order].astype(np.int64), pos, rank[inv.ravel()]


@dataclass(frozen=True)
class Overlaps:
    """Sparse contingency table of two instance maps.

    Instances are indexed densely ``0..n-1`` in raster order of their first pixel;
    ``gt_ids[i]`` / ``pred_ids[j]`` give the original ids. ``pair_gt[k], pair_pred[k]``
    are the indices of the k-th overlapping pair and ``pair_inter[k]`` its intersection
    in pixels (pairs sorted by ``(pair_gt, pair_pred)``; pairs that do not overlap are absent).
    """

    gt_ids: np.ndarray
    gt_areas: np.ndarray
    pred_ids: np.ndarray
    pred_areas: np.ndarray
    pair_gt: np.ndarray
    pair_pred: np.ndarray
    pair_inter: np.ndarray
    fg_inter: int  # |G_fg ∩ P_fg| in pixels
    # dense index of every foreground pixel (for class look-ups); internal
    _gt_pos: np.ndarray = field(repr=False, compare=False, default=None)
    _gt_dense: np.ndarray = field(repr=False, compare=False, default=None)
    _pred_pos: np.ndarray = field(repr=False, compare=False, default=None)
    _pred_dense: np.ndarray = field(repr=False, compare=False, default=None)

    @property
    def n_gt(self) -> int:
        return int(self.gt_ids.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_ids.size)

    @property
    def pair_union(self) -> np.ndarray:
        """``|g ∪ p|`` of each overlapping pair."""
        return self.gt_areas[self.pair_gt] + self.pred_areas[self.pair_pred] - self.pair_inter

    @property
    def pair_iou(self) -> np.ndarray:
        """IoU of each overlapping pair (float64, all > 0)."""
        return self.pair_inter / self.pair_union


def overlaps(gt_inst: np.ndarray, pred_inst: np.ndarray) -> Overlaps:
    """Areas of all instances and the intersections of all overlapping (gt, pred) pairs.

    One pass over the pixels: a ``np.unique`` over the combined dense labels where both
    maps are foreground.
    """
    g = _as_instance_map(gt_inst, "gt_inst")
    p = _as_instance_map(pred_inst, "pred_inst")
    if g.shape != p.shape:
        raise InputError(None, f"gt_inst {g.shape} and pred_inst {p.shape} differ in shape")
    gf, pf = g.ravel(), p.ravel()
    g_ids, g_areas, g_pos, g_dense = _instances_raster(gf)
    p_ids, p_areas, p_pos, p_dense = _instances_raster(pf)

    # dense pred index at the GT foreground pixels (-1 = background)
    p_at = np.full(gf.size, -1, np.int64)
    p_at[p_pos] = p_dense
    p_at_g = p_at[g_pos]
    both = p_at_g >= 0
    n_p = max(p_ids.size, 1)
    key = g_dense[both].astype(np.int64) * n_p + p_at_g[both]
    uk, inter = np.unique(key, return_counts=True)
    return Overlaps(
        gt_ids=g_ids,
        gt_areas=g_areas,
        pred_ids=p_ids,
        pred_areas=p_areas,
        pair_gt=(uk // n_p).astype(np.intp),
        pair_pred=(uk % n_p).astype(np.intp),
        pair_inter=inter.astype(np.int64),
        fg_inter=int(both.sum()),
        _gt_pos=g_pos,
        _gt_dense=g_dense,
        _pred_pos=p_pos,
        _pred_dense=p_dense,
    )


# ---------------------------------------------------------------------- pairings


def _first_per_group(group: np.ndarray) -> np.ndarray:
    """Mask of the first element of each run in a sorted array."""
    m = np.ones(group.size, bool)
    m[1:] = group[1:] != group[:-1]
    return m


def _aji_pairs(ov: Overlaps, iou: np.ndarray) -> np.ndarray:
    """Edge indices of the AJI pairing: per GT, the prediction of max IoU (ties: raster order)."""
    if iou.size == 0:
        return np.zeros(0, np.intp)
    order = np.lexsort((ov.pair_pred, -iou, ov.pair_gt))
    return order[_first_per_group(ov.pair_gt[order])]


def _max_iou_pairs(ov: Overlaps, iou: np.ndarray) -> np.ndarray:
    """Edge indices of a one-to-one pairing of maximal total IoU (Hungarian per block)."""
    n_e = iou.size
    if n_e == 0:
        return np.zeros(0, np.intp)
    ng, npr = ov.n_gt, ov.n_pred
    gi, pj = ov.pair_gt, ov.pair_pred
    graph = coo_matrix((np.ones(n_e, np.int8), (gi, ng + pj)), shape=(ng + npr, ng + npr))
    n_comp, comp = connected_components(graph, directed=False)
    ecomp = comp[gi]
    g_nodes = np.unique(gi)
    p_nodes = np.unique(pj)
    n_g_in = np.bincount(comp[g_nodes], minlength=n_comp)
    n_p_in = np.bincount(comp[ng + p_nodes], minlength=n_comp)
    star = (n_g_in == 1) | (n_p_in == 1)  # optimum = single best edge

    chosen = []
    es = np.flatnonzero(star[ecomp])
    if es.size:
        o = np.lexsort((pj[es], gi[es], -iou[es], ecomp[es]))
        es = es[o]
        chosen.append(es[_first_per_group(ecomp[es])])

    eb = np.flatnonzero(~star[ecomp])
    if eb.size:
        eb = eb[np.argsort(ecomp[eb], kind="stable")]  # keeps (gi, pj) order inside a block
        starts = np.flatnonzero(_first_per_group(ecomp[eb]))
        for blk in np.split(eb, starts[1:]):
            rows, r_inv = np.unique(gi[blk], return_inverse=True)
            cols, c_inv = np.unique(pj[blk], return_inverse=True)
            m = np.zeros((rows.size, cols.size))
            m[r_inv, c_inv] = iou[blk]
            r, c = linear_sum_assignment(m, maximize=True)
            keep = m[r, c] > 0
            lut = np.full((rows.size, cols.size), -1, np.intp)
            lut[r_inv, c_inv] = blk
            chosen.append(lut[r[keep], c[keep]])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.intp)


def _pq_pairs(iou: np.ndarray, match_iou: float) -> np.ndarray:
    return np.flatnonzero(iou > match_iou)


def _check_match_iou(match_iou: float) -> None:
    if not (0.5 <= match_iou < 1.0):
        raise ValueError(f"match_iou must be in [0.5, 1) so that IoU > match_iou pairs are unique, got {match_iou}")


@dataclass(frozen=True)
class InstanceMatches:
    """Matched pairs (original ids) and the unmatched instances of both maps.

    ``gt_ids[k]`` is paired with ``pred_ids[k]`` at IoU ``ious[k]`` (pairs in raster
    order of the GT instance).
    """

    gt_ids: np.ndarray
    pred_ids: np.ndarray
    ious: np.ndarray
    unmatched_gt: np.ndarray
    unmatched_pred: np.ndarray


def match_instances(
    gt_inst: np.ndarray,
    pred_inst: np.ndarray,
    *,
    method: Literal["pq", "aji", "aji_plus"] = "pq",
    match_iou: float = 0.5,
) -> InstanceMatches:
    """Pair GT and predicted instances.

    ``method="pq"``: pairs with ``IoU > match_iou`` (unique for ``match_iou >= 0.5``);
    ``"aji"``: each GT with its max-IoU prediction (a prediction may repeat);
    ``"aji_plus"``: one-to-one pairing of maximal total IoU (pairs of IoU > 0 only).
    """
    ov = overlaps(gt_inst, pred_inst)
    return _matches(ov, ov.pair_iou, method, match_iou)


def _matches(ov: Overlaps, iou: np.ndarray, method: str, match_iou: float) -> InstanceMatches:
    if method == "pq":
        _check_match_iou(match_iou)
        e = _pq_pairs(iou, match_iou)
    elif method == "aji":
        e = _aji_pairs(ov, iou)
    elif method == "aji_plus":
        e = _max_iou_pairs(ov, iou)
    else:
        raise ValueError(f"unknown method {method!r}; expected 'pq', 'aji' or 'aji_plus'")
    g_used = np.zeros(ov.n_gt, bool)
    g_used[ov.pair_gt[e]] = True
    p_used = np.zeros(ov.n_pred, bool)
    p_used[ov.pair_pred[e]] = True
    return InstanceMatches(
        gt_ids=ov.gt_ids[ov.pair_gt[e]],
        pred_ids=ov.pred_ids[ov.pair_pred[e]],
        ious=iou[e],
        unmatched_gt=ov.gt_ids[~g_used],
        unmatched_pred=ov.pred_ids[~p_used],
    )


# ---------------------------------------------------------------------- relabel


def relabel_instances(
    inst: np.ndarray, *, split_disconnected: bool = False, connectivity: int = 1
) -> np.ndarray:
    """Ids ``1..n`` numbered in raster order of each instance's first pixel (``int32``).

    With ``split_disconnected=True`` every connected piece of an id becomes its own
    instance (``skimage.measure.label``; ``connectivity`` 1 = 4-neighbours, 2 = 8);
    touching instances with different ids stay separate.
    """
    a = _as_instance_map(inst, "inst")
    if split_disconnected:
        from skimage.measure import label

        return label(a, background=0, connectivity=connectivity).astype(np.int32)
    flat = a.ravel()
    ids, _, pos, dense = _instances_raster(flat)
    out = np.zeros(flat.size, np.int32)
    out[pos] = dense + 1
    return out.reshape(a.shape)


# ---------------------------------------------------------------------- classes


def _classes_from_map(
    type_map: np.ndarray, shape: tuple[int, ...], pos: np.ndarray, dense: np.ndarray, n: int, name: str
) -> np.ndarray:
    t_all = np.asarray(type_map)
    if t_all.shape != shape:
        raise InputError(None, f"{name}: type map shape {t_all.shape} differs from the instance map {shape}")
    if not (np.issubdtype(t_all.dtype, np.integer) or t_all.dtype == bool):
        raise InputError(None, f"{name}: type map must have an integer dtype, got {t_all.dtype}")
    if n == 0:
        return np.zeros(0, np.int64)
    return majority_types(dense, t_all.ravel()[pos].astype(np.int64), n)


def _classes_from_dict(mapping: Mapping[int, int], ids: np.ndarray, name: str) -> np.ndarray:
    missing = [int(i) for i in ids if int(i) not in mapping]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise InputError(None, f"{name}: no class for instance id(s) {shown}")
    return np.array([int(mapping[int(i)]) for i in ids], np.int64)


def _instance_classes(cls_input, ids, shape, pos, dense, name) -> np.ndarray:
    if isinstance(cls_input, Mapping):
        return _classes_from_dict(cls_input, ids, name)
    return _classes_from_map(cls_input, shape, pos, dense, ids.size, name)


# ---------------------------------------------------------------------- scores


@dataclass(frozen=True)
class PQCounts:
    """Detection counts and the IoU sum of the true positives; adds up over images."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou_sum: float = 0.0

    def __add__(self, other: PQCounts) -> PQCounts:
        return PQCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.iou_sum + other.iou_sum)

    @property
    def empty(self) -> bool:
        """No instance on either side (all metrics undefined)."""
        return self.tp + self.fp + self.fn == 0

    @property
    def dq(self) -> float:
        """``TP / (TP + FP/2 + FN/2)``; NaN when there is nothing on either side."""
        return _safe_div(self.tp, self.tp + 0.5 * self.fp + 0.5 * self.fn)

    @property
    def sq(self) -> float:
        """``Σ IoU / TP``; 0 when TP = 0 but something exists, NaN when empty."""
        if self.empty:
            return NAN
        return self.iou_sum / self.tp if self.tp else 0.0

    @property
    def pq(self) -> float:
        """``DQ · SQ``."""
        return self.dq * self.sq

    def to_dict(self) -> dict:
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "iou_sum": self.iou_sum}


@dataclass(frozen=True)
class InstanceScores:
    """Scores of one image (``mode="image"``) or of a set of images (:func:`aggregate`).

    Metric values: ``dice, aji, aji_plus, dq, sq, pq`` (class-agnostic), ``pq_per_class``
    and ``apq`` (NaN/empty when no classes were given). The remaining fields are the sums
    that pooled aggregation adds up: foreground intersection and ``|G_fg| + |P_fg|``
    (Dice), AJI and AJI+ intersection/union, PQ counts overall and per class. They are
    always sums over the ``n_images`` images, whatever the ``mode``.
    """

    dice: float
    aji: float
    aji_plus: float
    dq: float
    sq: float
    pq: float
    apq: float
    pq_per_class: dict[int, float]
    fg_inter: int
    fg_total: int
    aji_inter: int
    aji_union: int
    aji_plus_inter: int
    aji_plus_union: int
    counts: PQCounts
    class_counts: dict[int, PQCounts]
    n_images: int = 1
    mode: Literal["image", "mean", "pooled"] = "image"

    def to_dict(self) -> dict:
        """JSON-ready dict (NaN → None, class ids as strings)."""
        return {
            "mode": self.mode,
            "n_images": self.n_images,
            "dice": nan_to_none(self.dice),
            "aji": nan_to_none(self.aji),
            "aji_plus": nan_to_none(self.aji_plus),
            "dq": nan_to_none(self.dq),
            "sq": nan_to_none(self.sq),
            "pq": nan_to_none(self.pq),
            "apq": nan_to_none(self.apq),
            "pq_per_class": {str(c): nan_to_none(v) for c, v in self.pq_per_class.items()},
            "sums": {
                "fg_inter": self.fg_inter,
                "fg_total": self.fg_total,
                "aji_inter": self.aji_inter,
                "aji_union": self.aji_union,
                "aji_plus_inter": self.aji_plus_inter,
                "aji_plus_union": self.aji_plus_union,
                "counts": self.counts.to_dict(),
                "class_counts": {str(c): v.to_dict() for c, v in self.class_counts.items()},
            },
        }


def _mean_of_defined(values: Iterable[float]) -> float:
    v = [x for x in values if not math.isnan(x)]
    return sum(v) / len(v) if v else NAN


def _from_sums(
    fg_inter, fg_total, aji_inter, aji_union, ajp_inter, ajp_union, counts, class_counts, n_images, mode
) -> InstanceScores:
    pq_c = {c: class_counts[c].pq for c in sorted(class_counts)}
    return InstanceScores(
        dice=_safe_div(2 * fg_inter, fg_total),
        aji=_safe_div(aji_inter, aji_union),
        aji_plus=_safe_div(ajp_inter, ajp_union),
        dq=counts.dq,
        sq=counts.sq,
        pq=counts.pq,
        apq=_mean_of_defined(pq_c.values()),
        pq_per_class=pq_c,
        fg_inter=int(fg_inter),
        fg_total=int(fg_total),
        aji_inter=int(aji_inter),
        aji_union=int(aji_union),
        aji_plus_inter=int(ajp_inter),
        aji_plus_union=int(ajp_union),
        counts=counts,
        class_counts=class_counts,
        n_images=n_images,
        mode=mode,
    )


def score_instances(
    gt_inst: np.ndarray,
    pred_inst: np.ndarray,
    gt_class: np.ndarray | Mapping[int, int] | None = None,
    pred_class: np.ndarray | Mapping[int, int] | None = None,
    classes: Sequence[int] | None = None,
    *,
    match_iou: float = 0.5,
) -> InstanceScores:
    """All metrics of one image (definitions and empty-case conventions: module docstring).

    ``gt_class`` / ``pred_class``: a type map ``(H, W)`` or a dict ``id -> class`` (give
    both or neither). ``classes``: the classes to score (pass them explicitly when scoring a
    dataset); ``None`` → every non-zero class seen in either map of this image.
    """
    _check_match_iou(match_iou)
    if (gt_class is None) != (pred_class is None):
        raise ValueError("give both gt_class and pred_class, or neither")
    ov = overlaps(gt_inst, pred_inst)
    iou = ov.pair_iou
    union = ov.pair_union

    # Dice on the binary foreground
    fg_total = int(ov.gt_areas.sum() + ov.pred_areas.sum())

    # AJI
    e = _aji_pairs(ov, iou)
    g_used = np.zeros(ov.n_gt, bool)
    g_used[ov.pair_gt[e]] = True
    p_used = np.zeros(ov.n_pred, bool)
    p_used[ov.pair_pred[e]] = True
    aji_inter = int(ov.pair_inter[e].sum())
    aji_union = int(union[e].sum() + ov.gt_areas[~g_used].sum() + ov.pred_areas[~p_used].sum())

    # AJI+
    e = _max_iou_pairs(ov, iou)
    g_used[:] = False
    g_used[ov.pair_gt[e]] = True
    p_used[:] = False
    p_used[ov.pair_pred[e]] = True
    ajp_inter = int(ov.pair_inter[e].sum())
    ajp_union = int(union[e].sum() + ov.gt_areas[~g_used].sum() + ov.pred_areas[~p_used].sum())

    # PQ
    e = _pq_pairs(iou, match_iou)
    tp = int(e.size)
    counts = PQCounts(tp=tp, fp=ov.n_pred - tp, fn=ov.n_gt - tp, iou_sum=float(iou[e].sum()))

    class_counts: dict[int, PQCounts] = {}
    if gt_class is not None:
        shape = np.shape(gt_inst)
        gc = _instance_classes(gt_class, ov.gt_ids, shape, ov._gt_pos, ov._gt_dense, "gt_class")
        pc = _instance_classes(pred_class, ov.pred_ids, shape, ov._pred_pos, ov._pred_dense, "pred_class")
        if classes is None:
            classes = sorted((set(gc.tolist()) | set(pc.tolist())) - {0})
        eg, ep = gc[ov.pair_gt[e]], pc[ov.pair_pred[e]]
        e_iou = iou[e]
        for c in classes:
            c = int(c)
            hit = (eg == c) & (ep == c)
            tp_c = int(hit.sum())
            class_counts[c] = PQCounts(
                tp=tp_c,
                fp=int((pc == c).sum()) - tp_c,
                fn=int((gc == c).sum()) - tp_c,
                iou_sum=float(e_iou[hit].sum()),
            )
    elif classes is not None:
        raise ValueError("classes given without gt_class/pred_class")

    return _from_sums(
        ov.fg_inter, fg_total, aji_inter, aji_union, ajp_inter, ajp_union, counts, class_counts, 1, "image"
    )


def aggregate(scores: Sequence[InstanceScores], mode: Literal["mean", "pooled"] = "mean") -> InstanceScores:
    """Combine per-image scores.

    ``"mean"``: every metric (including each class's PQ and aPQ) is the mean over the
    images where it is defined (NaN images left out); note aPQ is then the image-mean of
    per-image aPQ. ``"pooled"``: metrics recomputed from the summed counts — Dice
    ``2ΣI/Σ(|G|+|P|)``, AJI/AJI+ ``ΣC/ΣU``, PQ from ΣTP, ΣFP, ΣFN, ΣIoU, per-class PQ
    likewise and aPQ the mean over classes of the pooled per-class PQ (as CoNIC's mPQ+).
    The sums fields of the result are always the totals.
    """
    if mode not in ("mean", "pooled"):
        raise ValueError(f"mode must be 'mean' or 'pooled', got {mode!r}")
    scores = list(scores)
    classes = sorted({c for s in scores for c in s.class_counts})
    tot = PQCounts()
    for s in scores:
        tot = tot + s.counts
    cls_tot = {}
    for c in classes:
        acc = PQCounts()
        for s in scores:
            acc = acc + s.class_counts.get(c, PQCounts())
        cls_tot[c] = acc
    n = sum(s.n_images for s in scores)
    pooled = _from_sums(
        sum(s.fg_inter for s in scores),
        sum(s.fg_total for s in scores),
        sum(s.aji_inter for s in scores),
        sum(s.aji_union for s in scores),
        sum(s.aji_plus_inter for s in scores),
        sum(s.aji_plus_union for s in scores),
        tot,
        cls_tot,
        n,
        mode,
    )
    if mode == "pooled":
        return pooled

    def m(attr: str) -> float:
        return _mean_of_defined(getattr(s, attr) for s in scores)

    pq_c = {c: _mean_of_defined(s.pq_per_class.get(c, NAN) for s in scores) for c in classes}
    return InstanceScores(
        dice=m("dice"),
        aji=m("aji"),
        aji_plus=m("aji_plus"),
        dq=m("dq"),
        sq=m("sq"),
        pq=m("pq"),
        apq=m("apq"),
        pq_per_class=pq_c,
        fg_inter=pooled.fg_inter,
        fg_total=pooled.fg_total,
        aji_inter=pooled.aji_inter,
        aji_union=pooled.aji_union,
        aji_plus_inter=pooled.aji_plus_inter,
        aji_plus_union=pooled.aji_plus_union,
        counts=tot,
        class_counts=cls_tot,
        n_images=n,
        mode="mean",
    )
