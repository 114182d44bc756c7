"""Challenge JSON: round trip, the validity rules, and strict = the official checker."""

from __future__ import annotations

import copy
import json
import random
import re

import numpy as np
import pytest

from histozoom.data.challenge_json import (
    challenge_document,
    parse_challenge_document,
    read_challenge_json,
    read_challenge_points,
    write_challenge_points,
)
from histozoom.errors import InputError
from histozoom.pair import ClassSet, Points


def _doc(entries, num_images=None):
    d = {"type": "Multiple points", "points": entries, "version": {"major": 1, "minor": 0}}
    if num_images is not None:
        d["num_images"] = num_images
    return d


def _entry(k=0, x=10, y=20, c=1, p=0.5):
    return {"name": f"image_{k}", "point": [x, y, c], "probability": p}


def official_checker_accepts(entry) -> bool:
    """The official ``_check_validity`` rules for one entry, written out from the rules."""
    try:
        assert sorted(list(entry.keys())) == ["name", "point", "probability"]
        assert re.fullmatch(r"image_[0-9]+", entry["name"]) is not None
        assert type(entry["point"]) is list and len(entry["point"]) == 3
        assert type(entry["point"][0]) is int and 0 <= entry["point"][0] <= 1023
        assert type(entry["point"][1]) is int and 0 <= entry["point"][1] <= 1023
        assert type(entry["point"][2]) is int and entry["point"][2] in (1, 2)
        assert type(entry["probability"]) is float and 0.0 <= entry["probability"] <= 1.0
    except (AssertionError, AttributeError, TypeError, KeyError):
        return False
    return True


def test_round_trip(tmp_path):
    per_image = {
        0: Points(np.array([[1.0, 2.0], [1023, 0]]), np.array([1, 2]), np.array([0.25, 1.0])),
        3: Points(np.array([[5.4, 6.6]]), np.array([2]), np.array([0.75])),
        4: Points.empty(),
    }
    path = tmp_path / "pred.json"
    write_challenge_points(path, per_image, num_images=6)
    raw = json.loads(path.read_text())
    assert raw["type"] == "Multiple points" and raw["num_images"] == 6
    assert raw["points"][0] == {"name": "image_0", "point": [1, 2, 1], "probability": 0.25}
    assert raw["points"][2]["point"] == [5, 7, 2]  # rounded to ints
    assert all(type(v) is int for e in raw["points"] for v in e["point"])
    assert all(type(e["probability"]) is float for e in raw["points"])
    cp = read_challenge_json(path, strict=True)  # what we write passes the official checker
    assert cp.num_images == 6 and sorted(cp.points) == [0, 3]
    assert cp.image_indices == list(range(6))
    np.testing.assert_array_equal(cp.points[0].xy, [[1, 2], [1023, 0]])
    np.testing.assert_array_equal(cp.points[0].prob, [0.25, 1.0])
    assert read_challenge_points(path)[3].cls.tolist() == [2]
    assert not list(tmp_path.glob(".*"))  # no temporary left behind


def test_document_from_list_defaults_num_images():
    d = challenge_document([None, Points.from_array([[1, 1, 2]])])
    assert d["num_images"] == 2 and len(d["points"]) == 1 and d["points"][0]["name"] == "image_1"


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ({"name": "image_0", "point": [1, 2, 1]}, "keys must be exactly"),
        ({**_entry(), "extra": 1}, "keys must be exactly"),
        (_entry() | {"name": "img_0"}, "not of the form image_K"),
        (_entry() | {"name": "image_-1"}, "not of the form image_K"),
        (_entry() | {"point": [1, 2]}, "point must be a list"),
        (_entry(x=1.5), "coordinates must be integers"),
        (_entry(y="3"), "coordinates must be integers"),
        (_entry(x=True), "coordinates must be integers"),
        (_entry(x=1024), "outside the 1024x1024 image"),
        (_entry(y=-1), "outside the 1024x1024 image"),
        (_entry(c=3), "class 3 is not in the class set [1, 2]"),
        (_entry(c=1.5), "class must be an integer"),
        (_entry(p=1.5), "outside [0, 1]"),
        (_entry(p=-0.1), "outside [0, 1]"),
        (_entry(p=float("nan")), "outside [0, 1]"),
        (_entry(p="0.5"), "probability must be"),
    ],
)
def test_invalid_entries_name_file_and_first_offending_entry(tmp_path, bad, fragment):
    entries = [_entry(0), _entry(1), bad, _entry(2, c=7)]  # the 4th is bad too, but later
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_doc(entries)))
    with pytest.raises(InputError) as ei:
        read_challenge_json(path)
    msg = str(ei.value)
    assert msg.startswith(str(path)) and "points[2]" in msg and fragment in msg, msg


def test_lenient_and_strict_types():
    lenient_only = [_entry(x=12.0), _entry(c=2.0), _entry(p=1), _entry(p=0)]
    for e in lenient_only:
        parse_challenge_document(_doc([e]))
        with pytest.raises(InputError):
            parse_challenge_document(_doc([e]), strict=True)
    assert parse_challenge_document([_entry()]).points[0].cls.tolist() == [1]  # bare list: lenient only
    with pytest.raises(InputError, match='"points" list'):
        parse_challenge_document([_entry()], strict=True)
    # Leading zeros match the official regex.
    assert sorted(parse_challenge_document(_doc([_entry() | {"name": "image_007"}]), strict=True).points) == [7]


def test_image_size_and_classes_are_parameters():
    e = _entry(x=1500, y=900, c=3)
    three = ClassSet(("a", "b", "c"), (1, 2, 3))
    cp = parse_challenge_document(_doc([e]), image_size=(2048, 1000), classes=three)
    assert cp.points[0].xy.tolist() == [[1500, 900]]
    with pytest.raises(InputError, match="outside the 2048x800 image"):
        parse_challenge_document(_doc([e]), image_size=(2048, 800), classes=three)
    with pytest.raises(InputError, match="outside the 1024x1024"):
        parse_challenge_document(_doc([e]), classes=three)
    # Per-image sizes.
    parse_challenge_document(_doc([e]), image_size={0: (1600, 1600)}, classes=three)


def test_strict_rejects_exactly_what_the_official_checker_rejects():
    rnd = random.Random(0)

    def set_coord(i, values):
        def f(e):
            if isinstance(e["point"], list) and len(e["point"]) > i:
                e["point"][i] = rnd.choice(values)
        return f

    mutations = [
        lambda e: e.pop("probability", None),
        lambda e: e.__setitem__("score", 1.0),
        lambda e: e.__setitem__("name", rnd.choice(["image_1", "image_", "Image_1", "image_1a", "image_0012", " image_1", 3])),
        lambda e: e.__setitem__("point", e["point"][:2] if isinstance(e["point"], list) else e["point"]),
        lambda e: e.__setitem__("point", {"x": 1}),
        set_coord(0, [0, 1023, 1024, -1, 5.0, 5.5, True, "5", None]),
        set_coord(1, [0, 1023, 1024, -1, 7.0, False]),
        set_coord(2, [0, 1, 2, 3, 1.0, True]),
        lambda e: e.__setitem__("probability", rnd.choice([0.0, 1.0, 0.3, 1, 0, 1.01, -0.0, float("nan"), True, None])),
    ]
    n_bad = 0
    for _ in range(1500):
        e = _entry(rnd.randrange(5), rnd.randrange(1024), rnd.randrange(1024), rnd.randint(1, 2), rnd.random())
        for _ in range(rnd.randrange(3)):
            rnd.choice(mutations)(e)
        e = json.loads(json.dumps(e))  # as a file would hold it
        expected = official_checker_accepts(copy.deepcopy(e))
        try:
            parse_challenge_document(_doc([e]), strict=True)
            accepted = True
        except InputError:
            accepted = False
        assert accepted == expected, e
        n_bad += not expected
    assert n_bad > 300


def test_real_files_pass_the_official_rules(shared_data):
    gt = read_challenge_json(shared_data / "ocelot" / "points" / "official_test_126_cell_gt.json", strict=True)
    assert gt.num_images == 126 and len(gt) == 22477 and len(gt.points) == 124
    assert len(gt.image_indices) == 126
    pred = read_challenge_json(shared_data / "ocelot" / "predictions" / "r12_e30k.json", strict=True)
    assert pred.num_images is None and len(pred) == 21244
    assert (pred.points[0].prob <= 1).all()


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_challenge_json(tmp_path / "nope.json")
    p = tmp_path / "broken.json"
    p.write_text("{not json")
    with pytest.raises(InputError, match="invalid JSON"):
        read_challenge_json(p)
    p.write_text(json.dumps({"points": "x"}))
    with pytest.raises(InputError, match='"points" list'):
        read_challenge_json(p)
