"""Slide-level ccRCC grading (:mod:`histozoom.evaluation.grading`) and the grade maps of ``grades.png``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from histozoom.data.nuclei.records import CCRCC_CLASSES
from histozoom.evaluation.grading import RULE_WORDING, GradingRule, grade_of, grade_shares, slide_grade
from histozoom.pair import ClassSet
from histozoom.reports.slide_reports import share_grid, write_grades_png

G = {name: CCRCC_CLASSES.id(name) for name in CCRCC_CLASSES.names}


def _packed(n: int, x0: float, y0: float, side: float = 200.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random centroids in the square ``[x0, x0 + side) × [y0, y0 + side)`` (µm)."""
    rng = np.random.default_rng(seed)
    return x0 + rng.uniform(0, side, n), y0 + rng.uniform(0, side, n)


def _grade(x, y, cls, inside=None, **kw):
    cls = np.asarray(cls)
    inside = np.ones(len(cls), bool) if inside is None else inside
    return slide_grade(x, y, grade_of(cls), inside, **kw)


def _in_box(x, y, box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return (x >= x0) & (x < x1) & (y >= y0) & (y < y1)


# ---------------------------------------------------------------------- per nucleus
def test_grade_of_by_name_and_errors():
    ids = [G["G1"], G["G2"], G["G3"], G["endothelial"], G["G3"]]
    np.testing.assert_array_equal(grade_of(ids), [1, 2, 3, 0, 3])
    other = ClassSet(("endothelial", "G3", "G1", "G2"), (5, 7, 2, 9))
    np.testing.assert_array_equal(grade_of([9, 5, 7, 2], other), [2, 0, 3, 1])
    assert grade_of([], other).shape == (0,)
    with pytest.raises(ValueError, match="no class named"):
        grade_of([1], ClassSet(("G1", "G2"), (1, 2)))
    with pytest.raises(ValueError, match="not in the class set"):
        grade_of([1, 8], CCRCC_CLASSES)


def test_grade_shares_hand_case():
    grades = np.array([3, 3, 2, 1, 0, 3, 1, 0])
    inside = np.array([1, 1, 1, 1, 1, 0, 0, 0], bool)
    s = grade_shares(grades, inside)
    assert s["cancer_area"] == {"tumour_nuclei": 4, "counts": {"G1": 1, "G2": 1, "G3": 2},
                                "shares": {"G1": 0.25, "G2": 0.25, "G3": 0.5}}
    assert s["outside_cancer_area"] == {"tumour_nuclei": 2, "counts": {"G1": 1, "G2": 0, "G3": 1},
                                        "shares": {"G1": 0.5, "G2": 0.0, "G3": 0.5}}
    none = grade_shares([0, 0], [True, False])
    assert none["cancer_area"]["shares"] == {"G1": None, "G2": None, "G3": None}
    json.dumps(s)
    with pytest.raises(ValueError, match="in 0..3"):
        grade_shares([4], [True])


# ---------------------------------------------------------------------- hand-built slides
def test_packed_g3_gives_grade_3_and_its_field():
    x, y = _packed(12, 3000.0, 5000.0)
    r = _grade(x, y, np.full(12, G["G3"]), mpp=0.25)
    assert r["grade"] == 3 and r["tumour_nuclei_inside"] == 12
    assert [r["per_grade"][k]["max_count"] for k in ("G3", "G2", "G1")] == [12, 12, 12]
    box = r["field_um"]
    assert box == r["per_grade"]["G3"]["field_um"] and _in_box(x, y, box).all()
    side = math.sqrt(0.237) * 1000
    assert box[2] - box[0] == pytest.approx(side) and box[3] - box[1] == pytest.approx(side)
    assert box[0] / (side / 8) == pytest.approx(round(box[0] / (side / 8)))  # on the grid from (0, 0)
    np.testing.assert_allclose(r["field_px"], np.asarray(box) / 0.25)
    assert r["rule"] == {"field_mm2": 0.237, "min_nuclei": 10, "stride": 8, "side_um": side, "step_um": side / 8,
                         "statement": RULE_WORDING}
    assert "grade >= g" in RULE_WORDING
    json.dumps(r)


def test_spread_g3_with_packed_g2_gives_grade_2():
    # 12 G3 1 mm apart (no field holds two); 15 G2 packed next to the first G3, which counts towards G2
    g3x, g3y = 1000.0 + 1000.0 * np.arange(12), np.full(12, 1000.0)
    g2x, g2y = _packed(15, 1050.0, 1050.0, seed=1)
    x, y = np.concatenate([g3x, g2x]), np.concatenate([g3y, g2y])
    cls = np.r_[np.full(12, G["G3"]), np.full(15, G["G2"])]
    r = _grade(x, y, cls)
    assert r["grade"] == 2
    assert r["per_grade"]["G3"]["max_count"] == 1
    assert r["per_grade"]["G2"]["max_count"] == 16 == r["per_grade"]["G1"]["max_count"]
    inside_field = _in_box(x, y, r["field_um"])
    assert inside_field[12:].all() and inside_field[:12].tolist() == [True] + [False] * 11
    # the G3 nucleus alone tips a field of 9 G2 over N = 10
    r9 = _grade(np.r_[g3x[:1], g2x[:9]], np.r_[g3y[:1], g2y[:9]], np.r_[G["G3"], np.full(9, G["G2"])])
    assert r9["grade"] == 2 and r9["per_grade"]["G2"]["max_count"] == 10


def test_nothing_reaches_n_gives_none():
    x3, y3 = _packed(9, 0.0, 0.0, seed=2)
    x1, y1 = _packed(9, 5000.0, 0.0, seed=3)
    xe, ye = _packed(20, 0.0, 0.0, seed=4)  # endothelial nuclei in the G3 field: grade 0, never counted
    x, y = np.concatenate([x3, x1, xe]), np.concatenate([y3, y1, ye])
    cls = np.r_[np.full(9, G["G3"]), np.full(9, G["G1"]), np.full(20, G["endothelial"])]
    r = _grade(x, y, cls, mpp=0.5)
    assert r["grade"] is None and r["field_um"] is None and r["field_px"] is None
    assert [r["per_grade"][k]["max_count"] for k in ("G3", "G2", "G1")] == [9, 9, 9]
    assert r["tumour_nuclei_inside"] == 18
    empty = slide_grade([], [], [], [])
    assert empty["grade"] is None and empty["per_grade"]["G1"] == {"max_count": 0, "field_um": None}


def test_nuclei_outside_the_cancer_area_never_count():
    x, y = _packed(50, 100.0, 100.0, seed=5)
    cls = np.full(50, G["G3"])
    r = _grade(x, y, cls, inside=np.zeros(50, bool))
    assert r["grade"] is None and r["tumour_nuclei_inside"] == 0
    assert all(r["per_grade"][k] == {"max_count": 0, "field_um": None} for k in ("G3", "G2", "G1"))
    inside = np.zeros(50, bool)
    inside[:9] = True
    assert _grade(x, y, cls, inside=inside)["per_grade"]["G3"]["max_count"] == 9
    inside[9] = True
    assert _grade(x, y, cls, inside=inside)["grade"] == 3


@pytest.mark.parametrize("n", [1, 5, 10, 23])
def test_exactly_n_versus_n_minus_1(n):
    rule = GradingRule(min_nuclei=n)
    x, y = _packed(n, 700.0, 300.0, seed=n)
    assert _grade(x, y, np.full(n, G["G3"]), rule=rule)["grade"] == 3
    assert _grade(x[1:], y[1:], np.full(n - 1, G["G3"]), rule=rule)["grade"] is None
    # N - 1 G2 plus one G1 in the same field: grade 1
    r = _grade(x, y, np.r_[G["G1"], np.full(n - 1, G["G2"])], rule=rule)
    assert r["grade"] == 1 and r["per_grade"]["G2"]["max_count"] == n - 1


# ---------------------------------------------------------------------- exactness
def _brute(x, y, g, inside, rule: GradingRule, origin) -> dict[str, tuple[int, list | None]]:
    """Max count and first field (raster order) per grade, enumerating every grid field near the points."""
    b, k, (ox, oy) = rule.step_um, rule.stride, origin
    sel = inside & (g > 0)
    x, y, g = x[sel], y[sel], g[sel]
    i = np.arange(math.floor((x.min() - ox) / b) - k - 1, math.floor((x.max() - ox) / b) + 2)
    j = np.arange(math.floor((y.min() - oy) / b) - k - 1, math.floor((y.max() - oy) / b) + 2)
    fx0, fx1 = ox + i * b, ox + (i + k) * b
    fy0, fy1 = oy + j * b, oy + (j + k) * b
    in_x = (x[None, :] >= fx0[:, None]) & (x[None, :] < fx1[:, None])  # (fields in x, points)
    in_y = (y[None, :] >= fy0[:, None]) & (y[None, :] < fy1[:, None])
    out = {}
    for level, name in ((3, "G3"), (2, "G2"), (1, "G1")):
        at = (g >= level).astype(np.int64)
        counts = (in_y * at) @ in_x.T.astype(np.int64)  # (fields in y, fields in x)
        jj, ii = np.unravel_index(int(np.argmax(counts)), counts.shape)
        c = int(counts[jj, ii])
        out[name] = (c, [fx0[ii], fy0[jj], fx1[ii], fy1[jj]] if c else None)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_matches_brute_force_on_random_points(seed):
    rng = np.random.default_rng(seed)
    rule = GradingRule(field_mm2=0.04, min_nuclei=int(rng.integers(3, 12)), stride=int(rng.integers(1, 6)))
    origin = (float(rng.uniform(-100, 100)), float(rng.uniform(-100, 100)))
    n = 400
    centres = rng.uniform(0, 1500, (4, 2))
    xy = np.concatenate([rng.uniform(0, 1500, (n // 2, 2)), centres[rng.integers(0, 4, n // 2)] + rng.normal(0, 60, (n // 2, 2))])
    m = rng.integers(-5, 40, (40, 2))  # centroids exactly on grid lines
    xy[:40] = np.column_stack([origin[0] + m[:, 0] * rule.step_um, origin[1] + m[:, 1] * rule.step_um])
    g = rng.integers(0, 4, n)
    inside = rng.random(n) < 0.8
    r = slide_grade(xy[:, 0], xy[:, 1], g, inside, rule, origin_um=origin)
    ref = _brute(xy[:, 0], xy[:, 1], g, inside, rule, origin)
    for name, (count, box) in ref.items():
        assert r["per_grade"][name]["max_count"] == count
        assert r["per_grade"][name]["field_um"] == box
    expect = next((lv for lv, name in ((3, "G3"), (2, "G2"), (1, "G1")) if ref[name][0] >= rule.min_nuclei), None)
    assert r["grade"] == expect


def test_grade_invariant_under_translation_by_the_step():
    rng = np.random.default_rng(11)
    rule = GradingRule(field_mm2=0.05, min_nuclei=8, stride=4)
    n = 300
    x, y = rng.uniform(0, 2000, n), rng.uniform(0, 2000, n)
    g, inside = rng.integers(0, 4, n), rng.random(n) < 0.9
    base = slide_grade(x, y, g, inside, rule, origin_um=(3.0, -7.0))
    counts = {k: v["max_count"] for k, v in base["per_grade"].items()}
    for mx, my in ((37, -12), (-5, 101), (1, 0)):
        dx, dy = mx * rule.step_um, my * rule.step_um
        moved = slide_grade(x + dx, y + dy, g, inside, rule, origin_um=(3.0 + dx, -7.0 + dy))
        assert moved["grade"] == base["grade"]
        assert {k: v["max_count"] for k, v in moved["per_grade"].items()} == counts
        np.testing.assert_allclose(moved["field_um"], np.asarray(base["field_um"]) + [dx, dy, dx, dy])
        # the grid repeats with the step: moving the points alone keeps the counts too
        alone = slide_grade(x + dx, y + dy, g, inside, rule, origin_um=(3.0, -7.0))
        assert {k: v["max_count"] for k, v in alone["per_grade"].items()} == counts


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize("kw", [{"field_mm2": 0}, {"field_mm2": -0.2}, {"field_mm2": float("nan")},
                                {"field_mm2": float("inf")}, {"field_mm2": True}, {"field_mm2": "0.2"},
                                {"min_nuclei": 0}, {"min_nuclei": 2.5}, {"min_nuclei": True}, {"min_nuclei": -1},
                                {"stride": 0}, {"stride": 2.0}, {"stride": None}])
def test_bad_rules_are_errors(kw):
    with pytest.raises(ValueError, match="GradingRule"):
        GradingRule(**kw)


def test_rule_values_and_bad_inputs():
    r = GradingRule(field_mm2=1, min_nuclei=np.int64(5), stride=np.int32(2))
    assert r.to_dict() == {"field_mm2": 1.0, "min_nuclei": 5, "stride": 2}
    assert type(r.min_nuclei) is int and r.side_um == 1000.0 and r.step_um == 500.0
    assert GradingRule(**GradingRule().to_dict()) == GradingRule()
    with pytest.raises(ValueError, match="differ in length"):
        slide_grade([0.0, 1.0], [0.0], [3, 3], [True, True])
    with pytest.raises(ValueError, match="differ in length"):
        slide_grade([0.0], [0.0], [3], [True, True])
    with pytest.raises(ValueError, match="origin_um"):
        slide_grade([0.0], [0.0], [3], [True], origin_um=(float("nan"), 0.0))
    with pytest.raises(ValueError, match="mpp"):
        slide_grade([0.0], [0.0], [3], [True], mpp=0)
    with pytest.raises(ValueError, match="non-finite"):
        slide_grade([np.nan], [0.0], [3], [True])
    slide_grade([np.nan], [0.0], [3], [False])  # a nucleus that does not count may lack a position


# ---------------------------------------------------------------------- grades.png
def test_share_grid_hand_count():
    # 100 × 60 level-0 px at 0.5 µm/px, 20 µm squares → side 40 px, 2 rows × 3 cols
    x = np.array([0.0, 10.0, 39.4, 39.5, 45.0, 99.0, 5.0, 5.0, 50.0, 120.0])
    y = np.array([0.0, 10.0, 5.0, 5.0, 5.0, 59.0, 45.0, 45.0, 45.0, 5.0])
    pos = np.array([1, 0, 1, 1, 0, 1, 1, 0, 1, 1], bool)
    cnt = np.array([1, 1, 1, 1, 1, 1, 0, 1, 0, 1], bool)
    frac, counts = share_grid(x, y, pos, cnt, width=100, height=60, cell_um=20, mpp=0.5)
    # (0,0): cells 0 (+), 1 (-), 2 (+); 39.5 + 0.5 = 40 → (0,1): cells 3 (+), 4 (-); (1,2): cell 5 (+);
    # (1,0): cell 7 (-) (cell 6 positive but not counted); cell 8 not counted; cell 9 outside the slide
    np.testing.assert_array_equal(counts, [[3, 2, 0], [1, 0, 1]])
    np.testing.assert_allclose(frac, [[2 / 3, 0.5, np.nan], [0.0, np.nan, 1.0]])
    with pytest.raises(ValueError, match="differ in length"):
        share_grid(x, y, pos[:3], cnt, 100, 60, 20, 0.5)


def test_grades_png(tmp_path):
    rng = np.random.default_rng(0)
    thumb = np.full((90, 150, 3), 200, np.uint8)  # flat: any variation comes from the grids
    mpp = 0.25
    x, y = rng.uniform(0, 5000, 4000), rng.uniform(0, 3000, 4000)  # level-0 px
    g = rng.integers(0, 4, 4000)
    g3, _ = share_grid(x, y, g == 3, g > 0, 5000, 3000, cell_um=250, mpp=mpp)
    g23, _ = share_grid(x, y, g >= 2, g > 0, 5000, 3000, cell_um=250, mpp=mpp)
    path = tmp_path / "grades.png"
    grids = [(g3, "share of G3 among tumour nuclei"), (g23, "share of G2+G3 among tumour nuclei")]
    assert write_grades_png(path, thumb, (0, 5000, 3000, 0), grids, square_px=250 / mpp, width_px=1600) == path
    with Image.open(path) as im:
        assert im.size == (1600, round((800 - 160) * 3000 / 5000) + 60)
        a = np.asarray(im.convert("RGB")).astype(int)
    assert [p.name for p in tmp_path.iterdir()] == ["grades.png"]
    for left in (10, 810):  # inside each map: the squares' colours vary
        panel = a[40:400, left + 10:left + 600]
        assert panel.std() > 5 and len(np.unique(panel.reshape(-1, 3), axis=0)) > 10
    with pytest.raises(ValueError, match="no grids"):
        write_grades_png(tmp_path / "none.png", thumb, (0, 5000, 3000, 0), [])
