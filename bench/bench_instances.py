"""Benchmark: histozoom.metrics.instances vs. brute force on a 1000×1000 map with ~2000 nuclei.

Run:  python bench/bench_instances.py [--size 1000] [--nuclei 2000] [--seed 0]

Everything is measured in this one run on this machine, and the ratios printed are of
timings taken here. The brute force (one full-image mask per instance, every
(gt, pred) pair scored with full-image logical_and / logical_or, Hungarian on the dense
IoU matrix) would take on the order of an hour at this size, so it is run on a subset
of GT instances against all predictions and extrapolated (said so in the output). A
middle baseline in the style of HoVer-Net's stats_utils (a full mask per GT, full masks
only for the predictions it overlaps) is also timed on a subset and extrapolated.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from histozoom.metrics.instances import overlaps, score_instances

# ---------------------------------------------------------------------- synthetic data


def paint_ellipse(lab, cy, cx, ry, rx, val):
    h, w = lab.shape
    y0, y1 = max(int(cy - ry), 0), min(int(cy + ry) + 2, h)
    x0, x1 = max(int(cx - rx), 0), min(int(cx + rx) + 2, w)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.mgrid[y0:y1, x0:x1]
    m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    lab[y0:y1, x0:x1][m] = val


def synthetic_pair(size: int, n: int, seed: int):
    """GT with ~n nuclei and a perturbed prediction, both with random non-contiguous ids."""
    rng = np.random.default_rng(seed)
    gt = np.zeros((size, size), np.int64)
    pred = np.zeros((size, size), np.int64)
    gt_cls, pred_cls = {}, {}
    next_pred = 1
    for i in range(1, n + 1):
        cy, cx = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(4, 9, 2)
        paint_ellipse(gt, cy, cx, ry, rx, i)
        c = int(rng.integers(1, 5))
        gt_cls[i] = c
        u = rng.random()
        if u < 0.05:  # missed
            continue
        pc = c if rng.random() < 0.8 else int(rng.integers(1, 5))
        dy, dx = rng.normal(0, 1.0, 2)
        sy, sx = rng.uniform(0.8, 1.2, 2)
        paint_ellipse(pred, cy + dy, cx + dx, ry * sy, rx * sx, next_pred)
        pred_cls[next_pred] = pc
        next_pred += 1
        if u < 0.10:  # split: the right half gets its own id
            sl = pred[max(int(cy - ry) - 2, 0) : int(cy + ry) + 3, int(cx + dx) : int(cx + rx) + 3]
            sl[sl == next_pred - 1] = next_pred
            pred_cls[next_pred] = pc
            next_pred += 1
    for _ in range(n // 30):  # false positives
        paint_ellipse(pred, *rng.uniform(0, size, 2), *rng.uniform(3, 7, 2), next_pred)
        pred_cls[next_pred] = int(rng.integers(1, 5))
        next_pred += 1

    def rename(lab, cls):
        ids = np.unique(lab)
        ids = ids[ids > 0]
        new = rng.choice(np.arange(1, 50 * len(ids) + 2), size=len(ids), replace=False)
        lut = np.zeros(lab.max() + 1, np.int64)
        lut[ids] = new
        return lut[lab], {int(lut[i]): cls[int(i)] for i in ids}

    gt, gt_cls = rename(gt, gt_cls)
    pred, pred_cls = rename(pred, pred_cls)
    return gt, pred, gt_cls, pred_cls


# ---------------------------------------------------------------------- timing helpers


def timed(fn, repeat: int) -> float:
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def brute_force_costs(gt, pred, n_sub: int, rng):
    """Per-mask and per-pair cost of the all-pairs brute force, measured on a subset."""
    g_ids = np.unique(gt)[1:]
    p_ids = np.unique(pred)[1:]
    sub = rng.choice(g_ids, size=min(n_sub, len(g_ids)), replace=False)
    iou = np.zeros((len(sub), len(p_ids)))
    t_masks = t_pairs = 0.0
    t0 = time.perf_counter()
    g_masks = [gt == g for g in sub]
    t_masks += time.perf_counter() - t0
    for j, p in enumerate(p_ids):  # one prediction mask at a time (a brute force keeping all
        t0 = time.perf_counter()  # of them would need n_pred full-size masks in memory)
        pm = pred == p
        t1 = time.perf_counter()
        for i, gm in enumerate(g_masks):
            inter = np.logical_and(gm, pm).sum()
            iou[i, j] = inter / np.logical_or(gm, pm).sum()
        t2 = time.perf_counter()
        t_masks += t1 - t0
        t_pairs += t2 - t1
    per_mask = t_masks / (len(sub) + len(p_ids))
    per_pair = t_pairs / (len(sub) * len(p_ids))
    return sub, p_ids, iou, per_mask, per_pair, t_masks + t_pairs


def hovernet_style_cost(gt, pred, n_sub: int, rng):
    """Per-GT cost of 'full mask per GT, full masks of the overlapping predictions'."""
    g_ids = np.unique(gt)[1:]
    sub = rng.choice(g_ids, size=min(n_sub, len(g_ids)), replace=False)
    t0 = time.perf_counter()
    for g in sub:
        gm = gt == g
        for p in np.unique(pred[gm]):
            if p == 0:
                continue
            pm = pred == p
            inter = np.logical_and(gm, pm).sum()
            _ = inter / np.logical_or(gm, pm).sum()
    return (time.perf_counter() - t0) / len(sub)


# ---------------------------------------------------------------------- main


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1000)
    ap.add_argument("--nuclei", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--bf-gt", type=int, default=2, help="GT instances in the brute-force subset")
    ap.add_argument("--hv-gt", type=int, default=100, help="GT instances in the HoVer-Net-style subset")
    args = ap.parse_args(argv)

    gt, pred, gc, pc = synthetic_pair(args.size, args.nuclei, args.seed)
    n_g, n_p = len(gc), len(pc)
    print(f"map {gt.shape[0]}x{gt.shape[1]}: {n_g} GT nuclei, {n_p} predicted, "
          f"foreground {np.mean(gt > 0):.1%} / {np.mean(pred > 0):.1%}, ids up to {gt.max()} / {pred.max()}")

    classes = [1, 2, 3, 4]
    score_instances(gt, pred)  # warm-up
    t_ov = timed(lambda: overlaps(gt, pred), args.repeat)
    t_all = timed(lambda: score_instances(gt, pred), args.repeat)
    t_cls = timed(lambda: score_instances(gt, pred, gc, pc, classes), args.repeat)
    s = score_instances(gt, pred, gc, pc, classes)
    print(f"scores: Dice {s.dice:.4f}  AJI {s.aji:.4f}  AJI+ {s.aji_plus:.4f}  DQ {s.dq:.4f}  "
          f"SQ {s.sq:.4f}  PQ {s.pq:.4f}  aPQ {s.apq:.4f}  (TP {s.counts.tp}, FP {s.counts.fp}, FN {s.counts.fn})")
    print(f"histozoom (median of {args.repeat}): overlaps table {t_ov * 1e3:.1f} ms, "
          f"all metrics {t_all * 1e3:.1f} ms, all metrics + per-class PQ {t_cls * 1e3:.1f} ms")

    rng = np.random.default_rng(args.seed + 1)
    sub, p_ids, iou_sub, per_mask, per_pair, t_bf_sub = brute_force_costs(gt, pred, args.bf_gt, rng)
    # the brute force's IoUs on the subset agree with the sparse table
    ov = overlaps(gt, pred)
    col = {int(p): j for j, p in enumerate(p_ids)}
    g_index = {int(g): i for i, g in enumerate(ov.gt_ids)}
    for r, g in enumerate(sub):
        dense = np.zeros(len(p_ids))
        sel = ov.pair_gt == g_index[int(g)]
        for p, v in zip(ov.pred_ids[ov.pair_pred[sel]], ov.pair_iou[sel]):
            dense[col[int(p)]] = v
        assert np.allclose(dense, iou_sub[r]), "brute force and sparse table disagree"
    # Hungarian on the dense IoU matrix is part of the brute force: timed in full
    full_iou = np.zeros((ov.n_gt, ov.n_pred))
    full_iou[ov.pair_gt, ov.pair_pred] = ov.pair_iou
    t_lsa = timed(lambda: linear_sum_assignment(full_iou, maximize=True), 1)
    t_bf = per_mask * (n_g + n_p) + per_pair * n_g * n_p + t_lsa
    print(f"brute force, all pairs with full-image masks: measured on {len(sub)} GT x {len(p_ids)} predictions "
          f"({t_bf_sub:.2f} s; {per_pair * 1e3:.3f} ms/pair, {per_mask * 1e3:.3f} ms/mask) + dense Hungarian "
          f"{t_lsa:.2f} s measured in full -> EXTRAPOLATED to {n_g} x {n_p} pairs: {t_bf:.0f} s")
    t_hv = hovernet_style_cost(gt, pred, args.hv_gt, rng) * n_g + t_lsa
    print(f"HoVer-Net-style baseline (full mask per GT + its overlapping predictions): measured on "
          f"{min(args.hv_gt, n_g)} GT, EXTRAPOLATED to {n_g} GT + dense Hungarian: {t_hv:.1f} s")
    print(f"ratio brute force / histozoom (all metrics): {t_bf / t_all:,.0f}x")
    print(f"ratio HoVer-Net-style / histozoom (all metrics): {t_hv / t_all:,.0f}x")


if __name__ == "__main__":
    main()
