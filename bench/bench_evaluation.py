"""Evaluation speed, measured in one run: histozoom vs the plain loop, and the bootstrap.

Baselines:

* **plain loop** -- the obviously-correct reference of ``tests/metrics/test_detection.py``
  (per prediction, scan every unmatched GT cell of its class in Python);
* **official-style** -- what ``ocelot23algo/evaluation/eval.py`` does: a full
  prediction x GT distance matrix per image and class (numpy), then a Python loop over
  predictions.

Data: the real OCELOT 2023 test set (126 images, 22,477 GT cells, r12_e30k's 21,244
predictions) when ``../shared/data`` (or ``$HISTOZOOM_SHARED_DATA``) is there, and a
synthetic set of 100,000 points (100 images of 1024 x 1024 px, 500 GT + 500 predictions
each), and the same density in one large image (10,000 points with the baselines; 100,000
points with histozoom alone, where the baselines would need 2.5e9 distance checks).
Bootstrap: 10,000 resamples of the 126 test images (2 methods), histozoom's
count-resampling vs re-summing the per-image counts of each resample by fancy indexing.

Run: ``python bench/bench_evaluation.py [--repeat N]``. Prints one table of timings and
the ratios (baseline time / histozoom time).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "metrics"))

from test_detection import plain_counts

from histozoom.data.challenge_json import read_challenge_json
from histozoom.evaluation import EvaluationReport, MethodResult, bootstrap_report
from histozoom.metrics.detection import count_detections, scores_from_counts
from histozoom.metrics.stats import percentile_ci, resample_weights
from histozoom.pair import OCELOT_CELL_CLASSES, Points


def shared_data() -> Path:
    env = os.environ.get("HISTOZOOM_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def _rows(p: Points | None, with_prob: bool):
    if p is None:
        return []
    if with_prob:
        return [(x, y, c, q) for (x, y), c, q in zip(p.xy.tolist(), p.cls.tolist(), p.prob.tolist(), strict=True)]
    return [(x, y, c) for (x, y), c in zip(p.xy.tolist(), p.cls.tolist(), strict=True)]


def plain_loop(gt, pred, images, radius):
    out = np.zeros((len(images), 2, 3), np.int64)
    for row, k in enumerate(images):
        out[row] = plain_counts(_rows(gt.get(k), False), _rows(pred.get(k), True), radius, [1, 2])
    return out


def official_style(gt, pred, images, radius):
    """Dense distance matrix per image and class, as the official scorer does."""
    out = np.zeros((len(images), 2, 3), np.int64)
    for row, k in enumerate(images):
        g = gt.get(k) or Points.empty()
        p = pred.get(k) or Points.empty()
        for ci, c in enumerate((1, 2)):
            gx = g.xy[g.cls == c].astype(np.float32)
            pm = p.cls == c
            px = p.xy[pm].astype(np.float32)
            conf = p.prob[pm].astype(np.float32)
            dist = np.linalg.norm(px[:, None, :] - gx[None, :, :], axis=2)
            mask = dist <= radius
            tp = fp = 0
            for i in np.argsort(-conf, kind="stable"):
                nb = mask[i].nonzero()[0]
                if len(nb) == 0:
                    fp += 1
                else:
                    j = nb[np.argmin(dist[i, nb])]
                    tp += 1
                    mask[:, j] = False
            out[row, ci] = (tp, fp, len(gx))
    return out


def best_of(fn, repeat):
    best, result = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def synthetic(n_images=100, n_gt=500, n_pred=500, size=1024, seed=0):
    rng = np.random.default_rng(seed)
    gt, pred = {}, {}
    for k in range(n_images):
        g = rng.integers(0, size, (n_gt, 2)).astype(float)
        gt[k] = Points(g, rng.integers(1, 3, n_gt), np.ones(n_gt))
        n_near = int(n_pred * 0.8)
        near = np.clip(g[rng.choice(n_gt, n_near, replace=False)] + rng.integers(-12, 13, (n_near, 2)), 0, size - 1)
        far = rng.integers(0, size, (n_pred - n_near, 2)).astype(float)
        pred[k] = Points(np.vstack([near, far]), rng.integers(1, 3, n_pred), rng.random(n_pred).round(3))
    return gt, pred


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs for the fast paths (default 3)")
    args = ap.parse_args()
    rows = []

    def compare(label, gt, pred, images, n_points, baselines=True):
        t_ours, ours = best_of(lambda: count_detections(gt, pred, images, 15.0).counts, args.repeat)
        if not baselines:
            rows.append((label, n_points, t_ours, None, None))
            return
        t_plain, plain = best_of(lambda: plain_loop(gt, pred, images, 15.0), 1)
        t_off, off = best_of(lambda: official_style(gt, pred, images, 15.0), 1)
        assert np.array_equal(ours, plain) and np.array_equal(ours, off), f"{label}: counts differ"
        rows.append((label, n_points, t_ours, t_plain, t_off))

    data = shared_data() / "ocelot"
    gt_path = data / "points" / "official_test_126_cell_gt.json"
    if gt_path.is_file():
        gt = read_challenge_json(gt_path)
        pred = read_challenge_json(data / "predictions" / "r12_e30k.json")
        compare("real test set (126 images)", gt.points, pred.points, gt.image_indices, len(gt) + len(pred))
    else:
        print(f"(real data not found at {data}; skipping the real test set)", file=sys.stderr)
        gt = None
    sg, sp = synthetic()
    compare("synthetic, 100 images", sg, sp, list(range(100)), 100_000)
    # The same density in one large image: the baselines' cost grows with the product.
    sg, sp = synthetic(n_images=1, n_gt=5_000, n_pred=5_000, size=3238)
    compare("synthetic, 1 image 3238 px", sg, sp, [0], 10_000)
    sg, sp = synthetic(n_images=1, n_gt=50_000, n_pred=50_000, size=10240)
    compare("synthetic, 1 image 10240 px", sg, sp, [0], 100_000, baselines=False)

    print(f"{'data':<28} {'points':>8} {'histozoom':>10} {'plain loop':>11} {'ratio':>7} {'official':>9} {'ratio':>7}")
    for label, n, t_o, t_p, t_f in rows:
        if t_p is None:
            print(f"{label:<28} {n:>8} {t_o:>9.3f}s {'(skipped: 2.5e9 distance checks)':>36}")
            continue
        print(f"{label:<28} {n:>8} {t_o:>9.3f}s {t_p:>10.3f}s {t_p / t_o:>6.0f}x {t_f:>8.3f}s {t_f / t_o:>6.1f}x")

    # Bootstrap: 10,000 resamples of 126 images, 2 methods.
    if gt is not None:
        preds = [read_challenge_json(data / "predictions" / f"{n}.json") for n in ("r12_e30k", "r14_e21k")]
        counts = [count_detections(gt.points, p.points, gt.image_indices, 15.0) for p in preds]
    else:
        rng = np.random.default_rng(0)
        from histozoom.metrics.detection import DetectionCounts

        counts = [DetectionCounts(rng.integers(0, 100, (126, 2, 3)), OCELOT_CELL_CLASSES, list(range(126))) for _ in range(2)]
    n_img = len(counts[0].images)

    def ours():
        rep = EvaluationReport([MethodResult(f"m{i}", "", c) for i, c in enumerate(counts)], "", counts[0].images,
                               counts[0].names, OCELOT_CELL_CLASSES, 3.0, 0.2, 15.0, "challenge", [None] * n_img)
        bootstrap_report(rep, 10_000, 0, 0.95)  # CIs of every score + rank and pairwise probabilities
        return rep

    def fancy_index():
        idx = np.random.default_rng(0).integers(0, n_img, (10_000, n_img))
        out = []
        for c in counts:
            tot = np.stack([c.counts[i].sum(axis=0) for i in idx])  # one resample at a time
            out.append(percentile_ci(scores_from_counts(tot)["mf1"]))
        return out

    t_boot, _ = best_of(ours, args.repeat)
    t_naive, _ = best_of(fancy_index, 1)
    t_w, _ = best_of(lambda: resample_weights(n_img, 10_000, 0), args.repeat)
    print(f"\nbootstrap, 10,000 resamples x {n_img} images, 2 methods (all CIs, ranks, pairwise wins): {t_boot:.3f}s "
          f"(drawing the resamples: {t_w:.3f}s); per-resample loop: {t_naive:.3f}s, ratio {t_naive / t_boot:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
