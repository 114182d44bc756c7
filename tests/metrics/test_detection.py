"""The OCELOT 2023 detection metric: official numbers, and agreement with a plain loop."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from histozoom.data.challenge_json import read_challenge_json
from histozoom.metrics.detection import (
    DetectionCounts,
    candidate_pairs,
    challenge_scores,
    count_detections,
    greedy_match,
    match_image,
    match_points,
    per_image_f1,
    prediction_order,
    radius_px,
    scores_from_counts,
)
from histozoom.pair import OCELOT_CELL_CLASSES, ClassSet, Points


# ---------------------------------------------------------------------- the plain loop
def plain_counts(gt_rows, pred_rows, radius, class_ids):
    """Obviously-correct reference: per class, visit predictions by descending float32
    probability (ties: input order), scan every unmatched GT cell of the class, take the
    nearest within the radius (ties: lowest GT index)."""
    out = []
    for c in class_ids:
        gts = [(x, y) for x, y, cc in gt_rows if cc == c]
        preds = [(x, y, p) for x, y, cc, p in pred_rows if cc == c]
        order = sorted(range(len(preds)), key=lambda i: -float(np.float32(preds[i][2])))  # sorted() is stable
        used = [False] * len(gts)
        tp = fp = 0
        for i in order:
            px, py, _ = preds[i]
            best, best_d2 = None, None
            for j, (gx, gy) in enumerate(gts):
                if used[j]:
                    continue
                d2 = (px - gx) ** 2 + (py - gy) ** 2
                if d2 <= radius * radius and (best is None or d2 < best_d2):
                    best, best_d2 = j, d2
            if best is None:
                fp += 1
            else:
                used[best] = True
                tp += 1
        out.append((tp, fp, len(gts)))
    return np.array(out, dtype=np.int64).reshape(len(class_ids), 3)


def to_points(rows, with_prob: bool) -> Points:
    if not rows:
        return Points.empty()
    a = np.array(rows, dtype=np.float64)
    return Points(a[:, :2], a[:, 2].astype(np.int64), a[:, 3] if with_prob else np.ones(len(a)))


def _random_image(rng, grid, n_gt_max, n_pred_max, class_ids, float_coords=False):
    def coords(n):
        if float_coords:
            return rng.uniform(0, grid, (n, 2)).round(2)
        return rng.integers(0, grid, (n, 2)).astype(float)

    n_gt = int(rng.integers(0, n_gt_max + 1))
    n_pred = int(rng.integers(0, n_pred_max + 1))
    g = coords(n_gt)
    gt_rows = [(float(x), float(y), int(rng.choice(class_ids))) for x, y in g]
    p = coords(n_pred)
    tie_probs = rng.random() < 0.5
    probs = rng.choice([0.2, 0.5, 0.9, 1.0], n_pred) if tie_probs else rng.random(n_pred)
    pred_rows = [(float(x), float(y), int(rng.choice(class_ids)), float(q)) for (x, y), q in zip(p, probs)]
    return gt_rows, pred_rows


def test_random_cases_agree_with_plain_loop():
    rng = np.random.default_rng(2023)
    n_cases = 0
    for case in range(2500):
        class_ids = [1, 2] if case % 3 else [1, 2, 5]
        classes = ClassSet(tuple(f"c{c}" for c in class_ids), tuple(class_ids))
        radius = float(rng.choice([1.0, 2.5, 3.0, 5.0, 7.5, 15.0]))
        grid = int(rng.choice([6, 12, 30, 60]))
        n_img = int(rng.integers(0, 5))
        gt, pred, expect = {}, {}, []
        images = list(range(n_img))
        for k in images:
            gt_rows, pred_rows = _random_image(rng, grid, 25, 25, class_ids, float_coords=case % 7 == 0)
            if rng.random() < 0.15:
                gt_rows = []  # image with no ground truth
            if rng.random() < 0.15:
                pred_rows = []  # empty image
            if gt_rows or rng.random() < 0.5:
                gt[k] = to_points(gt_rows, False)  # else: no GT entry at all
            pred[k] = to_points(pred_rows, True)
            expect.append(plain_counts(gt_rows, pred_rows, radius, class_ids))
            got = match_image(gt.get(k), pred[k], radius, classes)
            np.testing.assert_array_equal(got, expect[-1], err_msg=f"case {case}, image {k}")
            n_cases += 1
        # Predictions for an image that has no ground-truth entry: all false positives.
        extra = n_img + 3
        _, pred_rows = _random_image(rng, grid, 0, 10, class_ids)
        pred[extra] = to_points(pred_rows, True)
        expect.append(plain_counts([], pred_rows, radius, class_ids))
        dc = count_detections(gt, pred, images + [extra], radius, classes)
        np.testing.assert_array_equal(dc.counts, np.stack(expect), err_msg=f"case {case}")
        np.testing.assert_array_equal(dc.totals, np.stack(expect).sum(0))
    assert n_cases > 4000


def test_exact_radius_is_a_hit_and_just_beyond_is_not():
    gt = Points.from_array([[100, 100, 1]])
    r = radius_px(3.0, 0.2)
    assert r == 15.0
    for dx, dy, hit in [(15, 0, 1), (0, -15, 1), (9, 12, 1), (12, -9, 1), (11, 11, 0), (15, 1, 0), (16, 0, 0)]:
        pred = Points(np.array([[100 + dx, 100 + dy]]), np.array([1]), np.array([0.5]))
        assert match_image(gt, pred, r)[0].tolist() == [hit, 1 - hit, 1], (dx, dy)


def test_radius_from_microns_rounds_float_noise():
    assert radius_px(1.4, 0.2) == 7.0  # 1.4 / 0.2 = 6.999999999999999 in floating point
    assert radius_px(3.0, 0.25) == 12.0
    gt = Points.from_array([[0, 0, 1]])
    pred = Points(np.array([[7.0, 0.0]]), np.array([1]), np.array([1.0]))
    assert match_image(gt, pred, radius_px(1.4, 0.2))[0, 0] == 1
    with pytest.raises(ValueError):
        radius_px(0, 0.2)


def test_class_wise_matching():
    gt = Points.from_array([[10, 10, 1]])
    pred = Points(np.array([[10, 10], [11, 10]]), np.array([2, 1]), np.array([0.9, 0.1]))
    # The closer, more confident prediction is of the other class: it cannot take the BC cell.
    assert match_image(gt, pred, 15).tolist() == [[1, 0, 1], [0, 1, 0]]


def test_ties_in_probability_keep_input_order():
    gt = Points.from_array([[10, 10, 1]])
    pred = Points(np.array([[14, 10], [11, 10]]), np.array([1, 1]), np.array([0.5, 0.5]))
    # Equal probability: the first listed prediction goes first and takes the only GT cell,
    # even though the second is closer.
    assert match_points(gt, pred, 15).tolist() == [0, -1]
    # Probabilities equal in float32 count as ties (the official code uses float32).
    pred2 = Points(pred.xy, pred.cls, np.array([0.5, 0.5 + 1e-12]))
    assert match_points(gt, pred2, 15).tolist() == [0, -1]
    pred3 = Points(pred.xy, pred.cls, np.array([0.5, 0.51]))
    assert match_points(gt, pred3, 15).tolist() == [-1, 0]
    assert prediction_order(np.array([0.1, 0.9, 0.9, 0.5])).tolist() == [1, 2, 3, 0]


def test_ties_in_distance_take_the_lowest_gt_index():
    gt = Points.from_array([[20, 10, 1], [0, 10, 1], [10, 0, 1]])
    pred = Points(np.array([[10, 10]]), np.array([1]), np.array([0.9]))
    assert match_points(gt, pred, 15).tolist() == [0]
    gt2 = gt.subset(np.array([1, 0, 2]))
    assert match_points(gt2, pred, 15).tolist() == [0]  # now (0, 10) is listed first


def test_greedy_is_not_optimal_and_hungarian_is_labelled_as_such():
    # Greedy: the confident prediction takes the nearest GT, leaving the other prediction
    # with nothing in reach. The optimal matching hits both.
    gt = Points.from_array([[0, 0, 1], [10, 0, 1]])
    pred = Points(np.array([[4, 0], [-2, 0]]), np.array([1, 1]), np.array([0.9, 0.8]))
    assert match_image(gt, pred, 6).tolist()[0] == [1, 1, 2]
    assert match_image(gt, pred, 6, mode="hungarian").tolist()[0] == [2, 0, 2]
    with pytest.raises(ValueError):
        match_image(gt, pred, 6, mode="nearest")


def _max_matching_brute(gt_rows, pred_rows, radius):
    """Largest number of one-to-one same-class pairs within the radius (tiny inputs)."""
    best = 0
    gts = list(range(len(gt_rows)))
    for perm in itertools.permutations(gts + [None] * len(pred_rows), len(pred_rows)):
        n = 0
        for (px, py, pc, _), g in zip(pred_rows, perm):
            if g is None:
                continue
            gx, gy, gc = gt_rows[g]
            if gc == pc and (px - gx) ** 2 + (py - gy) ** 2 <= radius * radius:
                n += 1
        best = max(best, n)
    return best


def test_hungarian_finds_the_maximum_matching():
    rng = np.random.default_rng(7)
    for _ in range(150):
        gt_rows, pred_rows = _random_image(rng, 10, 4, 4, [1, 2])
        gt, pred = to_points(gt_rows, False), to_points(pred_rows, True)
        got = match_image(gt, pred, 4.0, mode="hungarian")
        assert got[:, 0].sum() == _max_matching_brute(gt_rows, pred_rows, 4.0)
        assert (got[:, 0] >= match_image(gt, pred, 4.0)[:, 0]).all()


def test_candidate_pairs_match_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(50):
        g = rng.integers(0, 50, (int(rng.integers(0, 60)), 2)).astype(float)
        p = rng.integers(0, 50, (int(rng.integers(0, 60)), 2)).astype(float)
        pi, gj, d2 = candidate_pairs(g, p, 5.0)
        got = sorted(zip(pi.tolist(), gj.tolist()))
        want = sorted((i, j) for i in range(len(p)) for j in range(len(g)) if ((p[i] - g[j]) ** 2).sum() <= 25)
        assert got == want


def test_scores_and_zero_division():
    counts = np.array([[3, 1, 6], [0, 0, 0], [0, 4, 0], [0, 0, 5]])
    s = scores_from_counts(counts)
    np.testing.assert_allclose(s["precision"], [0.75, 0, 0, 0])
    np.testing.assert_allclose(s["recall"], [0.5, 0, 0, 0])
    np.testing.assert_allclose(s["f1"], [2 * 0.75 * 0.5 / 1.25, 0, 0, 0])
    assert s["mf1"] == pytest.approx(0.6 / 4)
    # Vectorised over leading axes (bootstrap resamples).
    stacked = scores_from_counts(np.stack([counts, counts]))
    assert stacked["f1"].shape == (2, 4) and stacked["mf1"].shape == (2,)
    # The official formula: 1e-7 terms, rounding, mF1 = mean of rounded F1.
    official = challenge_scores(np.array([[3, 1, 6], [0, 0, 0]]), OCELOT_CELL_CLASSES)
    assert official == {"Pre/BC": 0.75, "Rec/BC": 0.5, "F1/BC": 0.6, "Pre/TC": 0.0, "Rec/TC": 0.0, "F1/TC": 0.0, "mF1": 0.3}
    f = per_image_f1(np.array([[[0, 0, 0], [1, 1, 2]]]))
    assert np.isnan(f[0, 0]) and f[0, 1] == pytest.approx(0.5)


def test_detection_counts_grouping():
    dc = DetectionCounts(np.arange(24).reshape(4, 2, 3), OCELOT_CELL_CLASSES, [0, 1, 2, 3])
    groups = dc.grouped(["lung", None, "lung", "kidney"])
    assert list(groups) == ["kidney", "lung"]
    np.testing.assert_array_equal(groups["lung"].totals, dc.counts[[0, 2]].sum(0))
    assert groups["lung"].names == ["image_0", "image_2"]


# ---------------------------------------------------------------------- real data
OFFICIAL = {
    "r12_e30k": {"Pre/BC": 0.6620, "Rec/BC": 0.5673, "F1/BC": 0.6110,
                 "Pre/TC": 0.7066, "Rec/TC": 0.7143, "F1/TC": 0.7104, "mF1": 0.6607},
    "r14_e21k": {"Pre/BC": 0.6595, "Rec/BC": 0.5296, "F1/BC": 0.5875,
                 "Pre/TC": 0.7180, "Rec/TC": 0.7122, "F1/TC": 0.7151, "mF1": 0.6513},
}


@pytest.fixture(scope="module")
def test_gt(shared_data):
    path = shared_data / "ocelot" / "points" / "official_test_126_cell_gt.json"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return read_challenge_json(path, strict=True)


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_scores_reproduced(shared_data, test_gt, name):
    pred = read_challenge_json(shared_data / "ocelot" / "predictions" / f"{name}.json", strict=True)
    dc = count_detections(test_gt.points, pred.points, test_gt.image_indices, radius_px(3.0, 0.2))
    assert len(dc.images) == 126
    official = dc.scores().challenge
    for key, want in OFFICIAL[name].items():
        assert round(official[key], 4) == want, key
    # mF1 is the mean of the rounded per-class F1, exactly as the official code has it.
    assert official["mF1"] == (official["F1/BC"] + official["F1/TC"]) / 2
    # The exact values round to the same table.
    s = dc.scores()
    for j, c in enumerate(("BC", "TC")):
        assert round(float(s.precision[j]), 4) == OFFICIAL[name][f"Pre/{c}"]
        assert round(float(s.recall[j]), 4) == OFFICIAL[name][f"Rec/{c}"]
        assert round(float(s.f1[j]), 4) == OFFICIAL[name][f"F1/{c}"]


def test_real_predictions_agree_with_plain_loop_on_some_images(shared_data, test_gt):
    pred = read_challenge_json(shared_data / "ocelot" / "predictions" / "r12_e30k.json")
    for k in range(0, 126, 25):
        g = test_gt.points.get(k, Points.empty())
        p = pred.points.get(k, Points.empty())
        gt_rows = [(x, y, c) for (x, y), c in zip(g.xy.tolist(), g.cls.tolist())]
        pred_rows = [(x, y, c, q) for (x, y), c, q in zip(p.xy.tolist(), p.cls.tolist(), p.prob.tolist())]
        np.testing.assert_array_equal(match_image(g, p, 15.0), plain_counts(gt_rows, pred_rows, 15.0, [1, 2]))


def test_ground_truth_against_itself_scores_one(test_gt):
    dc = count_detections(test_gt.points, test_gt.points, test_gt.image_indices, 15.0)
    s = dc.scores()
    assert s.mf1 == 1.0 and s.challenge["mF1"] == 1.0
    assert (dc.counts[..., 1] == 0).all()


# ---------------------------------------------------------------------- visiting order
def _counts_in_order(gt: Points, pred: Points, cid: int, rule: str) -> tuple[int, int, int]:
    """Counts of one class when predictions are visited by ``rule``: "probability"
    (histozoom, the report), "input" (list order) or "class_key" (the public eval.py:
    numpy's default argsort of the negated class id, a constant key)."""
    g, p = gt.xy[gt.cls == cid], pred.xy[pred.cls == cid]
    prob = pred.prob[pred.cls == cid]
    order = {
        "probability": prediction_order(prob),
        "input": np.arange(len(p)),
        "class_key": np.argsort(-np.full(len(p), cid, np.float32)),
    }[rule]
    pi, gj, d2 = candidate_pairs(g, p, 15.0)
    tp = int((greedy_match(len(p), len(g), pi, gj, d2, order) >= 0).sum())
    return tp, len(p) - tp, len(g)


def test_probability_order_differs_from_input_order():
    # GT cells at x = 0 and x = 20. Prediction A (listed first, p = 0.2) at x = 9 is 9 px
    # from GT0 and 11 px from GT1; prediction B (p = 0.9) at x = 2 reaches only GT0 (GT1
    # is 18 px away, beyond 15 px).
    gt = Points(np.array([[0.0, 0.0], [20.0, 0.0]]), np.array([1, 1]), np.ones(2))
    pred = Points(np.array([[9.0, 0.0], [2.0, 0.0]]), np.array([1, 1]), np.array([0.2, 0.9]))
    # By probability: B takes GT0, then A takes GT1 (11 px): 2 TP, 0 FP.
    assert _counts_in_order(gt, pred, 1, "probability") == (2, 0, 2)
    np.testing.assert_array_equal(match_image(gt, pred, 15.0, [1]), [[2, 0, 2]])
    # In input order: A takes its nearest, GT0; B then finds nothing in reach: 1 TP, 1 FP.
    assert _counts_in_order(gt, pred, 1, "input") == (1, 1, 2)


def test_real_submissions_agree_under_all_three_orders(shared_data, test_gt):
    for name in sorted(OFFICIAL):
        pred = read_challenge_json(shared_data / "ocelot" / "predictions" / f"{name}.json").points
        totals = {rule: np.zeros((2, 3), np.int64) for rule in ("probability", "input", "class_key")}
        for k in test_gt.image_indices:
            g, p = test_gt.points.get(k, Points.empty()), pred.get(k, Points.empty())
            for rule, tot in totals.items():
                for j, cid in enumerate((1, 2)):
                    tot[j] += _counts_in_order(g, p, cid, rule)
        np.testing.assert_array_equal(totals["input"], totals["probability"])
        np.testing.assert_array_equal(totals["class_key"], totals["probability"])
        assert challenge_scores(totals["probability"]) == pytest.approx(OFFICIAL[name])
