"""Tests for histozoom.metrics.instances against a plain brute force written here.

The brute force builds a full boolean mask for every instance and loops over all
(gt, pred) pairs; it follows the definitions in the module docstring word for word,
including the raster-order tie-breaking.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from histozoom.data.nuclei.records import instance_classes
from histozoom.errors import InputError
from histozoom.metrics.instances import (
    InstanceScores,
    aggregate,
    match_instances,
    overlaps,
    relabel_instances,
    score_instances,
)

NAN = float("nan")


# ---------------------------------------------------------------------- brute force


def bf_ids_in_raster_order(lab):
    ids, seen = [], set()
    for v in lab.ravel().tolist():
        if v != 0 and v not in seen:
            seen.add(v)
            ids.append(v)
    return ids


def bf_pq(gt, pred, gt_ids, pred_ids):
    """TP, FP, FN, IoU sum with IoU > 0.5, nested loops over full masks."""
    tp, iou_sum = 0, 0.0
    matched_g, matched_p = set(), set()
    for g in gt_ids:
        gm = gt == g
        for p in pred_ids:
            pm = pred == p
            inter = int(np.logical_and(gm, pm).sum())
            union = int(np.logical_or(gm, pm).sum())
            if inter / union > 0.5:
                assert g not in matched_g and p not in matched_p  # uniqueness
                matched_g.add(g)
                matched_p.add(p)
                tp += 1
                iou_sum += inter / union
    return tp, len(pred_ids) - tp, len(gt_ids) - tp, iou_sum


def bf_pq_value(tp, fp, fn, iou_sum):
    if tp + fp + fn == 0:
        return NAN, NAN, NAN
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = iou_sum / tp if tp else 0.0
    return dq, sq, dq * sq


def brute_force(gt, pred, gt_cls=None, pred_cls=None, classes=None):
    """Reference scores; gt_cls / pred_cls are dicts id -> class."""
    out = {}
    gfg, pfg = gt > 0, pred > 0
    total = int(gfg.sum()) + int(pfg.sum())
    out["dice"] = 2 * int((gfg & pfg).sum()) / total if total else NAN

    g_ids = bf_ids_in_raster_order(gt)
    p_ids = bf_ids_in_raster_order(pred)
    g_masks = [gt == g for g in g_ids]
    p_masks = [pred == p for p in p_ids]
    inter = np.zeros((len(g_ids), len(p_ids)), int)
    union = np.zeros((len(g_ids), len(p_ids)), int)
    for i, gm in enumerate(g_masks):
        for j, pm in enumerate(p_masks):
            inter[i, j] = np.logical_and(gm, pm).sum()
            union[i, j] = np.logical_or(gm, pm).sum()
    iou = np.zeros(inter.shape)
    for i in range(len(g_ids)):
        for j in range(len(p_ids)):
            iou[i, j] = int(inter[i, j]) / int(union[i, j])

    # AJI: each GT -> prediction of max IoU (first in raster order on ties), IoU > 0 only
    C, U, used = 0, 0, set()
    for i, gm in enumerate(g_masks):
        best, best_j = 0.0, None
        for j in range(len(p_ids)):
            if iou[i, j] > best:
                best, best_j = iou[i, j], j
        if best_j is None:
            U += int(gm.sum())
        else:
            C += int(inter[i, best_j])
            U += int(union[i, best_j])
            used.add(best_j)
    for j, pm in enumerate(p_masks):
        if j not in used:
            U += int(pm.sum())
    out["aji"] = C / U if U else NAN
    out["aji_inter"], out["aji_union"] = C, U

    # AJI+: Hungarian on the full IoU matrix
    C, U, used_g, used_p = 0, 0, set(), set()
    if iou.size:
        rows, cols = linear_sum_assignment(iou, maximize=True)
        for i, j in zip(rows, cols):
            if iou[i, j] > 0:
                C += int(inter[i, j])
                U += int(union[i, j])
                used_g.add(i)
                used_p.add(j)
    for i, gm in enumerate(g_masks):
        if i not in used_g:
            U += int(gm.sum())
    for j, pm in enumerate(p_masks):
        if j not in used_p:
            U += int(pm.sum())
    out["aji_plus"] = C / U if U else NAN

    tp, fp, fn, s = bf_pq(gt, pred, g_ids, p_ids)
    out["counts"] = (tp, fp, fn, s)
    out["dq"], out["sq"], out["pq"] = bf_pq_value(tp, fp, fn, s)

    if gt_cls is not None:
        pq_c = {}
        for c in classes:
            gt_c = np.where(np.isin(gt, [g for g in g_ids if gt_cls[g] == c]), gt, 0)
            pred_c = np.where(np.isin(pred, [p for p in p_ids if pred_cls[p] == c]), pred, 0)
            counts = bf_pq(gt_c, pred_c, bf_ids_in_raster_order(gt_c), bf_ids_in_raster_order(pred_c))
            pq_c[c] = bf_pq_value(*counts)[2]
        out["pq_per_class"] = pq_c
        defined = [v for v in pq_c.values() if not math.isnan(v)]
        out["apq"] = sum(defined) / len(defined) if defined else NAN
    return out


def bf_max_total_iou(gt, pred):
    """Optimal total IoU of a one-to-one pairing (for checking AJI+ optimality)."""
    g_ids, p_ids = bf_ids_in_raster_order(gt), bf_ids_in_raster_order(pred)
    if not g_ids or not p_ids:
        return 0.0
    iou = np.zeros((len(g_ids), len(p_ids)))
    for i, g in enumerate(g_ids):
        for j, p in enumerate(p_ids):
            a, b = gt == g, pred == p
            iou[i, j] = np.logical_and(a, b).sum() / np.logical_or(a, b).sum()
    r, c = linear_sum_assignment(iou, maximize=True)
    return float(iou[r, c].sum())


# ---------------------------------------------------------------------- random maps


def random_ids(rng, n, big=False):
    hi = 2**40 if big else 10_000
    return rng.choice(np.arange(1, hi) if not big else rng.integers(1, hi, size=4 * n + 8), size=n, replace=False)


def random_map(rng, h=24, w=24, n=None, big_ids=False):
    lab = np.zeros((h, w), np.int64)
    n = int(rng.integers(0, 12)) if n is None else n
    ids = random_ids(rng, max(n, 1), big_ids)[:n]
    yy, xx = np.mgrid[:h, :w]
    for i in ids:
        kind = rng.integers(0, 3)
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        if kind == 0:  # one-pixel instance
            lab[cy, cx] = i
        elif kind == 1:  # rectangle
            lab[cy : cy + rng.integers(1, 8), cx : cx + rng.integers(1, 8)] = i
        else:  # blob (ellipse), may be partly hidden by later instances
            ry, rx = rng.uniform(1, 5, size=2)
            lab[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = i
    return lab


def perturb(rng, gt, big_ids=False):
    """A plausible prediction: shifted, some ids dropped / merged / split, extra FPs, new ids."""
    pred = np.zeros_like(gt)
    dy, dx = rng.integers(-1, 2, size=2) * (rng.random(2) < 0.4)
    h, w = gt.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    pred[yd, xd] = gt[ys, xs]
    ids = [i for i in np.unique(pred) if i]
    for i in ids:
        u = rng.random()
        m = pred == i
        if u < 0.1:
            pred[m] = 0  # missed
        elif u < 0.2 and len(ids) > 1:
            pred[m] = rng.choice(ids)  # merged into another
        elif u < 0.35:
            cols = np.flatnonzero(m.any(axis=0))
            cut = cols[len(cols) // 2] if rng.random() < 0.5 else rng.integers(0, w)  # often an even split
            pred[m & (np.arange(w)[None, :] >= cut)] = 10**6 + i  # split by a vertical line
        elif u < 0.45:
            pred[m & (rng.random(m.shape) < 0.3)] = 0  # ragged outline
    extra = random_map(rng, h, w, n=int(rng.integers(0, 3)))
    pred = np.where(extra > 0, extra + 2 * 10**6, pred)
    # rename everything with fresh random ids
    old = np.unique(pred)
    old = old[old > 0]
    new = random_ids(rng, max(len(old), 1), big_ids)[: len(old)]
    lut = dict(zip(old.tolist(), new.tolist()))
    return np.vectorize(lambda v: lut.get(v, 0), otypes=[np.int64])(pred)


def random_classes(rng, lab, classes):
    return {int(i): int(rng.choice(classes)) for i in np.unique(lab) if i}


def assert_close(a, b, what):
    if isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), f"{what}: {a} vs {b}"
    else:
        assert a == pytest.approx(b, rel=1e-12, abs=1e-12), f"{what}: {a} vs {b}"


def compare(s: InstanceScores, ref: dict, gt, pred):
    for k in ("dice", "aji", "dq", "sq", "pq"):
        assert_close(getattr(s, k), ref[k], k)
    assert (s.aji_inter, s.aji_union) == (ref["aji_inter"], ref["aji_union"])
    tp, fp, fn, iou_sum = ref["counts"]
    assert (s.counts.tp, s.counts.fp, s.counts.fn) == (tp, fp, fn)
    assert s.counts.iou_sum == pytest.approx(iou_sum, abs=1e-12)
    # AJI+: the pairing must be optimal; on exact ties in the optimum the Hungarian
    # solution is not unique, so values are compared when the optimum is unique only.
    m = match_instances(gt, pred, method="aji_plus")
    assert float(m.ious.sum()) == pytest.approx(bf_max_total_iou(gt, pred), abs=1e-9)
    assert_close(s.aji_plus, ref["aji_plus"], "aji_plus")
    if "pq_per_class" in ref:
        assert set(s.pq_per_class) == set(ref["pq_per_class"])
        for c, v in ref["pq_per_class"].items():
            assert_close(s.pq_per_class[c], v, f"pq class {c}")
        assert_close(s.apq, ref["apq"], "apq")


# ---------------------------------------------------------------------- vs brute force


@pytest.mark.parametrize("seed", range(6))
def test_random_maps_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        gt = random_map(rng, big_ids=bool(rng.random() < 0.3))
        pred = perturb(rng, gt, big_ids=bool(rng.random() < 0.3)) if rng.random() < 0.8 else random_map(rng)
        if rng.random() < 0.1:
            gt, pred = pred, gt
        compare(score_instances(gt, pred), brute_force(gt, pred), gt, pred)


@pytest.mark.parametrize("seed", range(4))
def test_random_classified_maps_match_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    classes = [1, 2, 3, 4]
    for _ in range(30):
        gt = random_map(rng)
        pred = perturb(rng, gt)
        # classes drawn from a random subset, so some classes are absent from an image
        sub = rng.choice(classes, size=int(rng.integers(1, 4)), replace=False)
        gc, pc = random_classes(rng, gt, sub), random_classes(rng, pred, classes[:3])
        ref = brute_force(gt, pred, gc, pc, classes)
        compare(score_instances(gt, pred, gc, pc, classes), ref, gt, pred)
        # the same classes given as type maps
        gt_type = np.vectorize(lambda v, gc=gc: gc.get(v, 0), otypes=[np.int64])(gt)
        pred_type = np.vectorize(lambda v, pc=pc: pc.get(v, 0), otypes=[np.int64])(pred)
        compare(score_instances(gt, pred, gt_type, pred_type, classes), ref, gt, pred)


def test_larger_map_matches_brute_force():
    rng = np.random.default_rng(7)
    gt = random_map(rng, 96, 96, n=80)
    pred = perturb(rng, gt)
    compare(score_instances(gt, pred), brute_force(gt, pred), gt, pred)


def test_empty_and_edge_maps_match_brute_force():
    rng = np.random.default_rng(3)
    z = np.zeros((9, 11), np.int64)
    one = z.copy()
    one[4, 5] = 77
    full = np.full_like(z, 5)
    some = random_map(rng, 9, 11, n=5)
    for gt, pred in [(z, z), (z, one), (one, z), (one, one), (full, full), (full, one), (some, z), (z, some)]:
        compare(score_instances(gt, pred), brute_force(gt, pred), gt, pred)


# ---------------------------------------------------------------------- hand-made cases


def square(shape, y, x, size, val, out=None):
    out = np.zeros(shape, np.int64) if out is None else out
    out[y : y + size, x : x + size] = val
    return out


def test_identical_maps_score_one():
    rng = np.random.default_rng(11)
    gt = random_map(rng, 40, 40, n=15, big_ids=True)
    s = score_instances(gt, gt)
    for k in ("dice", "aji", "aji_plus", "dq", "sq", "pq"):
        assert getattr(s, k) == 1.0, k
    assert s.counts.fp == s.counts.fn == 0


def test_one_gt_split_into_two_predictions():
    gt = square((20, 20), 2, 2, 10, 9)
    pred = np.zeros_like(gt)
    pred[2:12, 2:8] = 4  # 60 px, IoU 0.6
    pred[2:12, 8:12] = 3  # 40 px, IoU 0.4
    s = score_instances(gt, pred)
    assert s.dice == 1.0
    assert (s.counts.tp, s.counts.fp, s.counts.fn) == (1, 1, 0)
    assert s.dq == pytest.approx(2 / 3)
    assert s.sq == pytest.approx(0.6)
    assert s.pq == pytest.approx(0.4)
    assert s.aji == pytest.approx(60 / 140)
    assert s.aji_plus == pytest.approx(60 / 140)
    # an even split: IoU 0.5 is not > 0.5, so no TP
    pred[2:12, 7:12] = 3
    s = score_instances(gt, pred)
    assert (s.counts.tp, s.counts.fp, s.counts.fn) == (0, 2, 1)
    assert s.pq == 0.0 and s.sq == 0.0
    # tie: both halves have IoU 0.5 -> the one first in raster order (left) is taken
    assert s.aji == pytest.approx(50 / 150)
    m = match_instances(gt, pred, method="aji")
    assert m.pred_ids.tolist() == [4] and m.unmatched_pred.tolist() == [3]


def test_shifted_square():
    gt = square((30, 30), 5, 5, 10, 2)
    pred = square((30, 30), 5, 7, 10, 8)  # 2 px to the right: inter 80, union 120
    s = score_instances(gt, pred)
    assert s.dice == pytest.approx(0.8)
    assert s.aji == pytest.approx(2 / 3)
    assert s.aji_plus == pytest.approx(2 / 3)
    assert s.dq == 1.0
    assert s.sq == pytest.approx(2 / 3)
    assert s.pq == pytest.approx(2 / 3)
    m = match_instances(gt, pred)
    assert m.gt_ids.tolist() == [2] and m.pred_ids.tolist() == [8]
    assert m.ious.tolist() == pytest.approx([2 / 3])


def test_extra_false_positive():
    gt = square((40, 40), 0, 0, 5, 3)
    square((40, 40), 20, 20, 5, 1, out=gt)
    pred = gt.copy()
    square((40, 40), 10, 30, 3, 99, out=pred)  # extra 9-px instance
    s = score_instances(gt, pred)
    assert (s.counts.tp, s.counts.fp, s.counts.fn) == (2, 1, 0)
    assert s.dq == pytest.approx(2 / 2.5)
    assert s.sq == 1.0
    assert s.aji == pytest.approx(50 / 59)
    assert s.aji_plus == pytest.approx(50 / 59)
    assert s.dice == pytest.approx(100 / 109)


def test_merged_prediction_aji_vs_aji_plus():
    gt = np.zeros((10, 10), np.int64)
    gt[0:4, 0:4] = 1
    gt[0:4, 4:8] = 2
    pred = np.where(gt > 0, 5, 0)
    s = score_instances(gt, pred)
    assert s.aji == pytest.approx(32 / 64)  # the merged prediction serves both GTs
    assert s.aji_plus == pytest.approx(16 / 48)  # one-to-one: the second GT is unpaired
    assert s.pq == 0.0  # IoU 0.5 is not a match


def test_empty_conventions():
    z = np.zeros((8, 8), np.int64)
    sq = square((8, 8), 1, 1, 3, 4)
    both = score_instances(z, z)
    for k in ("dice", "aji", "aji_plus", "dq", "sq", "pq", "apq"):
        assert math.isnan(getattr(both, k)), k
    for gt, pred in [(z, sq), (sq, z)]:
        s = score_instances(gt, pred)
        for k in ("dice", "aji", "aji_plus", "dq", "sq", "pq"):
            assert getattr(s, k) == 0.0, k
    # JSON: NaN -> None
    d = json.loads(json.dumps(both.to_dict(), allow_nan=False))
    assert d["pq"] is None and d["n_images"] == 1
    # the empty image is left out of the per-image mean and adds nothing when pooled
    one = score_instances(sq, sq)
    assert aggregate([both, one]).pq == 1.0
    assert aggregate([both, one], mode="pooled").pq == 1.0
    assert math.isnan(aggregate([both, both]).pq)
    assert math.isnan(aggregate([]).dice)


def test_permuting_ids_changes_nothing():
    rng = np.random.default_rng(5)
    for _ in range(30):
        gt = random_map(rng, 30, 30)
        pred = perturb(rng, gt)
        gc, pc = random_classes(rng, gt, [1, 2, 3]), random_classes(rng, pred, [1, 2, 3])
        ref = score_instances(gt, pred, gc, pc, [1, 2, 3]).to_dict()

        def permute(lab, cls):
            old = np.unique(lab)
            old = old[old > 0]
            new = rng.permutation(np.arange(1, 3 * len(old) + 2))[: len(old)] * 7 + 1000
            lut = dict(zip(old.tolist(), new.tolist()))
            out = np.vectorize(lambda v: lut.get(v, 0), otypes=[np.int64])(lab)
            return out, {lut[k]: v for k, v in cls.items()}

        g2, gc2 = permute(gt, gc)
        p2, pc2 = permute(pred, pc)
        assert score_instances(g2, p2, gc2, pc2, [1, 2, 3]).to_dict() == ref
        # swapping the dtype and making ids contiguous changes nothing either
        g3 = relabel_instances(gt).astype(np.uint16)
        p3 = relabel_instances(pred).astype(np.int32)
        d3 = score_instances(g3, p3).to_dict()
        for k in ("dice", "aji", "aji_plus", "dq", "sq", "pq"):
            assert d3[k] == ref[k]


# ---------------------------------------------------------------------- classes


def classified_case():
    """GT: A(1) B(1) C(2); pred: A'(1) exact, B'(2) exact, C'(2) exact, D'(3) extra."""
    shape = (30, 30)
    gt = square(shape, 0, 0, 5, 10)
    square(shape, 0, 10, 5, 20, out=gt)
    square(shape, 10, 0, 5, 30, out=gt)
    pred = square(shape, 0, 0, 5, 1)
    square(shape, 0, 10, 5, 2, out=pred)
    square(shape, 10, 0, 5, 3, out=pred)
    square(shape, 20, 20, 4, 4, out=pred)
    gc = {10: 1, 20: 1, 30: 2}
    pc = {1: 1, 2: 2, 3: 2, 4: 3}
    return gt, pred, gc, pc


def test_per_class_pq_and_apq_hand_made():
    gt, pred, gc, pc = classified_case()
    s = score_instances(gt, pred, gc, pc, classes=[1, 2, 3, 4])
    assert s.pq_per_class[1] == pytest.approx(2 / 3)  # TP A, FN B
    assert s.pq_per_class[2] == pytest.approx(2 / 3)  # TP C, FP B'
    assert s.pq_per_class[3] == 0.0  # predicted, absent from GT
    assert math.isnan(s.pq_per_class[4])  # absent from both: excluded
    assert s.apq == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    # class-agnostic PQ ignores the classes: 3 TP at IoU 1, one FP
    assert s.pq == pytest.approx(3 / 3.5)
    # class-wise counts
    assert s.class_counts[1].to_dict() == {"tp": 1, "fp": 0, "fn": 1, "iou_sum": 1.0}
    # type maps give the same
    gt_type = np.vectorize(lambda v: gc.get(v, 0))(gt)
    pred_type = np.vectorize(lambda v: pc.get(v, 0))(pred)
    s2 = score_instances(gt, pred, gt_type, pred_type, classes=[1, 2, 3, 4])
    assert s2.to_dict() == s.to_dict()
    # classes inferred when not given: the non-zero classes seen (1, 2, 3)
    s3 = score_instances(gt, pred, gc, pc)
    assert sorted(s3.pq_per_class) == [1, 2, 3]
    assert s3.apq == pytest.approx(s.apq)


def test_aggregate_mean_and_pooled():
    gt, pred, gc, pc = classified_case()
    a = score_instances(gt, pred, gc, pc, classes=[1, 2, 3, 4])
    # second image: class 4 present and perfectly predicted, class 1 missed entirely
    gt2 = square((30, 30), 3, 3, 6, 7)
    square((30, 30), 15, 15, 4, 8, out=gt2)
    pred2 = square((30, 30), 3, 3, 6, 1)
    b = score_instances(gt2, pred2, {7: 4, 8: 1}, {1: 4}, classes=[1, 2, 3, 4])
    assert b.pq_per_class[4] == 1.0 and b.pq_per_class[1] == 0.0
    assert math.isnan(b.pq_per_class[2])

    m = aggregate([a, b], mode="mean")
    assert m.mode == "mean" and m.n_images == 2
    assert m.pq == pytest.approx((a.pq + b.pq) / 2)
    assert m.aji == pytest.approx((a.aji + b.aji) / 2)
    assert m.pq_per_class[1] == pytest.approx((2 / 3 + 0) / 2)
    assert m.pq_per_class[2] == pytest.approx(2 / 3)  # image b has no class 2: left out
    assert m.pq_per_class[4] == 1.0
    assert m.apq == pytest.approx((a.apq + b.apq) / 2)

    p = aggregate([a, b], mode="pooled")
    # class 1 pooled: TP 1, FP 0, FN 2 -> DQ 1/2, SQ 1
    assert p.pq_per_class[1] == pytest.approx(0.5)
    assert p.apq == pytest.approx((0.5 + 2 / 3 + 0 + 1) / 4)
    assert p.counts.tp == a.counts.tp + b.counts.tp

    # pooled == scoring the images side by side (ids made disjoint)
    big = np.hstack([gt, gt2 + np.where(gt2 > 0, 1000, 0)])
    bigp = np.hstack([pred, pred2 + np.where(pred2 > 0, 1000, 0)])
    bgc = {**gc, **{k + 1000: v for k, v in {7: 4, 8: 1}.items()}}
    bpc = {**pc, 1001: 4}
    whole = score_instances(big, bigp, bgc, bpc, classes=[1, 2, 3, 4])
    for k in ("dice", "aji", "aji_plus", "dq", "sq", "pq", "apq"):
        assert getattr(p, k) == pytest.approx(getattr(whole, k)), k
    json.dumps(p.to_dict(), allow_nan=False)


def test_pooled_equals_side_by_side_on_random_images():
    rng = np.random.default_rng(21)
    scores, gts, preds = [], [], []
    for k in range(8):
        gt = random_map(rng, 20, 20)
        pred = perturb(rng, gt)
        scores.append(score_instances(gt, pred))
        gts.append(np.where(gt > 0, gt + k * 10**7, 0))
        preds.append(np.where(pred > 0, pred + k * 10**7, 0))
    p = aggregate(scores, mode="pooled")
    whole = score_instances(np.hstack(gts), np.hstack(preds))
    for k in ("dice", "aji", "aji_plus", "dq", "sq", "pq"):
        assert getattr(p, k) == pytest.approx(getattr(whole, k)), k
    m = aggregate(scores)
    assert m.dice == pytest.approx(np.nanmean([s.dice for s in scores]))
    assert m.pq == pytest.approx(np.nanmean([s.pq for s in scores]))


def test_type_map_majority_vote():
    inst = np.zeros((4, 6), np.int64)
    inst[0, :5] = 3  # types 2, 2, 2, 1, 1 -> 2
    inst[2, :4] = 9  # types 0, 0, 0, 4 -> 4 (non-zero wins)
    inst[3, :2] = 5  # types 6, 1 -> 1 (tie -> smaller)
    types = np.zeros_like(inst)
    types[0, :5] = [2, 2, 2, 1, 1]
    types[2, :4] = [0, 0, 0, 4]
    types[3, :2] = [6, 1]
    assert instance_classes(inst, types) == {3: 2, 9: 4, 5: 1}


def test_type_map_vote_agrees_with_the_data_layer():
    """score_instances reduces a type map with its own vote; it must be the data layer's
    instance_classes (ties included), so type map and {id: class} score alike."""
    rng = np.random.default_rng(11)
    for _ in range(20):
        gt = rng.choice([0, 0, 2, 5, 9, 30], size=(12, 15))
        pred = rng.choice([0, 1, 4, 6], size=(12, 15))
        gt_types = rng.choice([0, 1, 2, 3], size=gt.shape)  # many exact ties at this size
        pred_types = rng.choice([0, 1, 2, 3], size=gt.shape)
        by_map = score_instances(gt, pred, gt_types, pred_types, [1, 2, 3])
        by_dict = score_instances(gt, pred, instance_classes(gt, gt_types), instance_classes(pred, pred_types), [1, 2, 3])
        assert by_map.to_dict() == by_dict.to_dict()


# ---------------------------------------------------------------------- helpers and errors


def test_overlaps_table():
    gt = np.array([[0, 5, 5], [2, 2, 0]])
    pred = np.array([[1, 1, 0], [1, 3, 3]])
    ov = overlaps(gt, pred)
    assert ov.gt_ids.tolist() == [5, 2]  # raster order of first pixel
    assert ov.gt_areas.tolist() == [2, 2]
    assert ov.pred_ids.tolist() == [1, 3]
    pairs = {(int(ov.gt_ids[g]), int(ov.pred_ids[p])): int(i) for g, p, i in zip(ov.pair_gt, ov.pair_pred, ov.pair_inter)}
    assert pairs == {(5, 1): 1, (2, 1): 1, (2, 3): 1}
    assert ov.fg_inter == 3


def test_relabel_instances():
    lab = np.array([[0, 9, 9, 0, 9], [4, 0, 0, 0, 0]])
    assert relabel_instances(lab).tolist() == [[0, 1, 1, 0, 1], [2, 0, 0, 0, 0]]
    assert relabel_instances(lab, split_disconnected=True).tolist() == [[0, 1, 1, 0, 2], [3, 0, 0, 0, 0]]


def test_match_instances_methods():
    gt = np.zeros((10, 10), np.int64)
    gt[0:4, 0:4] = 1
    gt[0:4, 4:8] = 2
    pred = np.where(gt > 0, 5, 0)
    assert match_instances(gt, pred, method="aji").pred_ids.tolist() == [5, 5]
    m = match_instances(gt, pred, method="aji_plus")
    assert m.gt_ids.tolist() == [1] and m.unmatched_gt.tolist() == [2]
    assert match_instances(gt, pred).gt_ids.size == 0
    with pytest.raises(ValueError):
        match_instances(gt, pred, method="nope")


def test_bad_inputs():
    a = np.zeros((5, 5), np.int64)
    with pytest.raises(InputError, match="shape"):
        score_instances(a, np.zeros((5, 6), np.int64))
    with pytest.raises(InputError, match="integer"):
        score_instances(a.astype(float), a)
    with pytest.raises(InputError, match=">= 0"):
        score_instances(a - 1, a)
    with pytest.raises(InputError, match="2-D"):
        score_instances(a[None], a[None])
    b = a.copy()
    b[1, 1] = 42
    with pytest.raises(InputError, match="42"):
        score_instances(b, b, {}, {42: 1})
    with pytest.raises(ValueError, match="both"):
        score_instances(b, b, {42: 1}, None)
    with pytest.raises(ValueError, match="match_iou"):
        score_instances(b, b, match_iou=0.3)
    with pytest.raises(ValueError, match="mode"):
        aggregate([], mode="median")
