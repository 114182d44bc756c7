"""A ground truth's ``num_images`` is a claim in the data: an absurd one is refused by name, fast,
instead of sizing per-image arrays by it (documented in ``check_num_images_claim``)."""

import json
import time
import tracemalloc

import numpy as np
import pytest

from histozoom.data.challenge_json import ChallengePoints, check_num_images_claim
from histozoom.errors import InputError
from histozoom.evaluation import evaluate
from histozoom.evaluation.sources import load_ground_truth
from histozoom.pair import Points


def _doc(num_images, points):
    return {
        "type": "Multiple points",
        "num_images": num_images,
        "points": [{"name": f"image_{k}", "point": [x, y, c], "probability": 1.0} for k, x, y, c in points],
        "version": {"major": 1, "minor": 0},
    }


POINTS = [(0, 10, 10, 1), (0, 50, 60, 2), (3, 100, 100, 1)]


def _bounded(fn, *args, **kwargs):
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(InputError) as exc:
            fn(*args, **kwargs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 5
    assert peak < 50 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    return exc.value


@pytest.mark.parametrize("num_images", [10**9, 100_001])
def test_absurd_num_images_in_gt_refused_by_name(tmp_path, num_images):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(_doc(num_images, POINTS)))
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps(_doc(4, POINTS)))
    err = _bounded(evaluate, str(pred), str(gt), bootstrap=0)
    assert err.path == str(gt)
    assert f"num_images {num_images:,}" in err.problem and "highest image index with points is 3" in err.problem


def test_absurd_num_images_in_prediction_refused(tmp_path):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(_doc(4, POINTS)))
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps(_doc(10**9, POINTS)))
    err = _bounded(evaluate, str(pred), str(gt), bootstrap=0)
    assert err.path == str(pred)


def test_absurd_num_images_in_memory_gt_refused():
    # in-memory ground truth is checked by load_ground_truth itself
    cp = ChallengePoints({5: Points(np.array([[1.0, 2.0]]), np.array([1]), np.array([1.0]))}, 10**9, "<mem>")
    err = _bounded(load_ground_truth, cp)
    assert "num_images 1,000,000,000" in err.problem and "highest image index with points is 5" in err.problem


def test_believable_num_images_kept(tmp_path):
    # a claim within the bound is believed: images without points are evaluated (and counted)
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(_doc(2000, POINTS)))
    rep = evaluate(str(gt), str(gt), bootstrap=0)
    assert len(rep.images) == 2000 and rep.methods[0].scores().mf1 == 1.0


def test_bound_is_documented_rule():
    check_num_images_claim(100_000, [], "f.json")  # the floor
    check_num_images_claim(200_000, [19_999], "f.json")  # 10 x (highest + 1)
    check_num_images_claim(None, [], "f.json")
    with pytest.raises(InputError, match="no image has points"):
        check_num_images_claim(100_001, [], "f.json")
    with pytest.raises(InputError, match="200,000"):
        check_num_images_claim(200_001, [19_999], "f.json")


def test_far_image_index_costs_by_points(tmp_path):
    # one point on image 10**9 (num_images 4): cost follows the points, not the index
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(_doc(4, POINTS)))
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps(_doc(None, [*POINTS, (10**9, 5, 5, 1)])))
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        rep = evaluate(str(pred), str(gt), bootstrap=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 10 and peak < 50 * 2**20
    assert rep.warnings
