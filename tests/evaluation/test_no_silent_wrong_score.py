"""Missing ground truth is an error, never an image scored as having no cells; what still
scores but looks wrong (duplicates, no images, missing prediction files) is a warning."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import write_tiny_synthetic
from histozoom.cli import main
from histozoom.data.open import open_dataset
from histozoom.data.own_layout import write_own_dataset
from histozoom.errors import InputError
from histozoom.evaluation import evaluate
from histozoom.inference.predictor import Predictions
from histozoom.pair import OCELOT_CELL_CLASSES, Points


@pytest.fixture()
def data(tmp_path):
    return write_tiny_synthetic(tmp_path / "data")


def _perfect_predictions(data, tmp_path, split="test"):
    sp = open_dataset(data).split(split)
    pts = {k: sp.points(sid) for k, sid in enumerate(sp.ids)}
    Predictions(pts, list(sp.ids), OCELOT_CELL_CLASSES).write_challenge_json(tmp_path / "p.json")
    return tmp_path / "p.json", sp


def test_missing_release_csv_is_an_error_naming_the_file(data, tmp_path, capsys):
    pj, sp = _perfect_predictions(data, tmp_path)
    lost = data / "annotations" / "test" / "cell" / f"{sp.ids[0]}.csv"
    lost.unlink()
    with pytest.raises(InputError, match="ground-truth CSV missing") as e:
        evaluate(pj, data, split="test", bootstrap=0)
    assert str(lost) in str(e.value)
    assert main(["evaluate", "--pred", str(pj), "--gt", str(data), "--split", "test", "--bootstrap", "0"]) == 2
    assert "ground-truth CSV missing" in capsys.readouterr().err


def test_unlabelled_release_split_still_predicts_but_cannot_be_scored(data, tmp_path):
    pj, _ = _perfect_predictions(data, tmp_path)
    shutil.rmtree(data / "annotations" / "test" / "cell")
    sp = open_dataset(data).split("test")
    assert all(sp.points(sid) is None for sid in sp.ids)  # an unlabelled split is allowed
    with pytest.raises(InputError, match="no ground-truth cells"):
        evaluate(pj, data, split="test", bootstrap=0)


def test_own_layout_missing_points_file_is_an_error(data, tmp_path):
    own = tmp_path / "own"
    ds = open_dataset(data)
    write_own_dataset(own, ds.spec, {s: list(ds.split(s)) for s in ("train", "test")})
    lost = sorted((own / "test").glob("*_cells.csv"))[0]
    lost.unlink()
    with pytest.raises(InputError, match="not found") as e:
        evaluate(tmp_path / "x.json", own, split="test", bootstrap=0)
    assert lost.name in str(e.value)


def test_csv_folder_ground_truth_with_a_gap_is_an_error(tmp_path):
    gt = tmp_path / "gt"
    gt.mkdir()
    for k in (0, 1, 3):
        (gt / f"image_{k}.csv").write_text("10,10,1\n")
    with pytest.raises(InputError, match="image_2.csv.*ground-truth CSV missing"):
        evaluate(gt, gt, bootstrap=0)


def test_missing_prediction_csv_is_a_warning(data, tmp_path):
    _, sp = _perfect_predictions(data, tmp_path)
    csv = tmp_path / "csv"
    Predictions({k: sp.points(s) for k, s in enumerate(sp.ids)}, list(sp.ids), OCELOT_CELL_CLASSES).write_csv_folder(csv)
    (csv / f"{sp.ids[1]}.csv").unlink()
    report = evaluate(csv, data, split="test", bootstrap=0)
    assert any("no CSV for 1 ground-truth image" in w and sp.ids[1] in w for w in report.warnings)


def test_duplicate_ground_truth_points_are_a_warning_and_still_scored(tmp_path):
    xy = np.array([[10.0, 10.0], [10.0, 10.0], [40.0, 40.0]])
    gt = {0: Points(xy, np.array([1, 1, 2]), np.ones(3))}
    pred = {0: Points(xy[1:], np.array([1, 2]), np.ones(2))}
    report = evaluate(pred, gt, bootstrap=0)
    assert any("1 duplicate ground-truth point" in w and "(10, 10) class 1" in w for w in report.warnings)
    totals = report.methods[0].scores().totals  # the copy is a missed cell: BC tp 1, fp 0, 2 gt
    assert totals[0].tolist() == [1, 0, 2]
    # the same position in two classes is no duplicate
    ok = {0: Points(xy[1:], np.array([1, 2]), np.ones(2))}
    assert not any("duplicate" in w for w in evaluate(pred, ok, bootstrap=0).warnings)


def test_empty_split_is_a_warning(data, tmp_path):
    for view in ("cell", "tissue"):
        for f in (data / "images" / "test" / view).iterdir():
            f.unlink()
    empty = tmp_path / "empty.json"
    empty.write_text('{"type": "Multiple points", "num_images": 0, "points": [], "version": {"major": 1, "minor": 0}}')
    report = evaluate(empty, data, split="test", bootstrap=0)
    assert any("no images" in w for w in report.warnings)
