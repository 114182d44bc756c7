"""``histozoom nuclei evaluate`` and :mod:`histozoom.evaluation.nuclei`: folders of CoNSeP-style .mat files."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
import scipy.io
from scipy import ndimage

from histozoom.cli import main
from histozoom.data.io import write_image
from histozoom.data.nuclei import NucleiSample, open_nuclei, write_consep_mat
from histozoom.errors import InputError
from histozoom.evaluation.nuclei import (
    NucleiLabels,
    evaluate_nuclei,
    evaluate_samples,
    read_nuclei_labels,
)
from histozoom.metrics.instances import aggregate, score_instances

H, W = 48, 64
METRICS = ("dice", "aji", "aji_plus", "dq", "sq", "pq", "apq")
DOC_KEYS = {"n_images", "match_iou", "pred", "gt", "classes", "overall", "per_image",
            "missing_predictions", "unmatched_predictions", "warnings"}


def _disk(inst: np.ndarray, cy: int, cx: int, r: int, k: int) -> None:
    yy, xx = np.ogrid[: inst.shape[0], : inst.shape[1]]
    inst[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k


def _image(seed: int) -> tuple[np.ndarray, dict[int, int]]:
    """Hand-made instance map: 5 disjoint disks, non-contiguous ids, classes 1..3."""
    centres = [(10, 10), (10, 32), (10, 52), (34, 18), (34, 44)]
    inst = np.zeros((H, W), np.int32)
    cls = {}
    for j, (cy, cx) in enumerate(centres):
        k = 3 * j + 2 + seed  # non-contiguous ids
        _disk(inst, cy, cx, 6 + (j + seed) % 3, k)
        cls[k] = 1 + (j + seed) % 3
    return inst, cls


def _sample(name: str, inst: np.ndarray, cls: dict[int, int] | None) -> NucleiSample:
    return NucleiSample(name, np.zeros(inst.shape + (3,), np.uint8), inst, cls)


def _gt_arrays() -> dict[str, tuple[np.ndarray, dict[int, int]]]:
    return {f"img{i}": _image(i) for i in range(3)}


def _perturbed(gt: dict) -> dict[str, tuple[np.ndarray, dict[int, int]]]:
    """img0: one nucleus removed; img1: one shifted by 2 px (still matched, IoU < 1); img2: one reclassified (2 -> 3)."""
    out = {}
    inst, cls = gt["img0"]
    k = sorted(cls)[0]
    inst0 = np.where(inst == k, 0, inst)
    out["img0"] = (inst0, {i: c for i, c in cls.items() if i != k})
    inst, cls = gt["img1"]
    k = sorted(cls)[2]
    inst1 = np.where(inst == k, 0, inst)
    inst1[np.roll(inst == k, 2, axis=1)] = k
    out["img1"] = (inst1, dict(cls))
    inst, cls = gt["img2"]
    k = next(i for i, c in sorted(cls.items()) if c == 2)
    out["img2"] = (inst.copy(), {**cls, k: 3})
    return out


def _write(folder, arrays: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (inst, cls) in arrays.items():
        write_consep_mat(folder / f"{name}.mat", _sample(name, inst, cls))


@pytest.fixture
def folders(tmp_path):
    gt = _gt_arrays()
    pert = _perturbed(gt)
    _write(tmp_path / "gt", gt)
    _write(tmp_path / "pred", pert)
    return tmp_path / "gt", tmp_path / "pred", gt, pert


def _nan_eq(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == pytest.approx(b, abs=1e-12)


# ---------------------------------------------------------------------- API


def test_self_scores_are_one(folders):
    gt_dir, _, gt, _ = folders
    ev = evaluate_nuclei(gt_dir, gt_dir)
    assert ev.n_images == 3
    assert [int(i) for i in ev.classes.ids] == [1, 2, 3]
    for s in [ev.mean, ev.pooled] + [r.scores for r in ev.per_image]:
        for m in METRICS:
            assert getattr(s, m) == pytest.approx(1.0)
        # classes present in an image score 1; absent ones are NaN (undefined), never 0
        assert all(math.isnan(v) or v == pytest.approx(1.0) for v in s.pq_per_class.values())
    assert ev.pooled.pq_per_class == {1: pytest.approx(1.0), 2: pytest.approx(1.0), 3: pytest.approx(1.0)}
    assert ev.missing_predictions == [] and ev.unmatched_predictions == [] and ev.warnings == []


def test_perturbed_equals_direct_metrics(folders):
    gt_dir, pred_dir, gt, pert = folders
    ev = evaluate_nuclei(pred_dir, gt_dir)
    direct = [score_instances(gt[n][0], pert[n][0], gt[n][1], pert[n][1], [1, 2, 3]) for n in sorted(gt)]
    assert [r.name for r in ev.per_image] == sorted(gt)
    for r, d in zip(ev.per_image, direct):
        assert r.scores.to_dict() == d.to_dict()
    assert ev.mean.to_dict() == aggregate(direct, "mean").to_dict()
    assert ev.pooled.to_dict() == aggregate(direct, "pooled").to_dict()
    # the perturbations show: one FN (removed), the shifted nucleus, the reclassified one
    assert ev.pooled.counts.fn == 1 and ev.pooled.counts.fp == 0 and ev.pooled.pq < 1
    img1 = ev.per_image[1].scores
    assert img1.dq == pytest.approx(1.0) and 0.5 < img1.sq < 1 and img1.aji < 1
    img2 = ev.per_image[2].scores
    assert img2.dice == pytest.approx(1.0) and img2.pq == pytest.approx(1.0)  # instances untouched
    assert img2.pq_per_class[2] < 1.0 and img2.apq < 1.0  # the reclassified class drops
    assert ev.pooled.pq_per_class[2] < 1.0
    # in memory (the trainer's path) gives the same
    mem = evaluate_samples([_sample(n, *pert[n]) for n in pert], [_sample(n, *gt[n]) for n in gt])
    assert mem.to_dict()["overall"] == ev.to_dict()["overall"]
    assert [r.scores for r in mem.per_image] == [r.scores for r in ev.per_image]


def test_reading_classes_inst_type_or_type_map(folders, tmp_path):
    gt_dir, pred_dir, gt, pert = folders
    # pred files with only inst_type, or only type_map, give the same scores
    for keep in ("inst_type", "type_map"):
        d = tmp_path / f"pred_{keep}"
        d.mkdir()
        for p in pred_dir.glob("*.mat"):
            m = scipy.io.loadmat(p)
            scipy.io.savemat(d / p.name, {"inst_map": m["inst_map"], keep: m[keep]})
        ev = evaluate_nuclei(d, gt_dir)
        ref = evaluate_nuclei(pred_dir, gt_dir)
        assert ev.to_dict()["overall"] == ref.to_dict()["overall"], keep
    lab = read_nuclei_labels(pred_dir / "img2.mat")
    assert lab.inst_class == pert["img2"][1]


def test_consep_root_npy_and_class_names(folders, tmp_path):
    gt_dir, pred_dir, gt, pert = folders
    root = tmp_path / "consep"
    shutil.copytree(gt_dir, root / "masks")
    npy = tmp_path / "npy"
    npy.mkdir()
    for n, (inst, cls) in pert.items():
        tm = np.zeros_like(inst)
        for k, c in cls.items():
            tm[inst == k] = c
        np.save(npy / f"{n}.npy", np.stack([inst, tm], -1))
    names = tmp_path / "classes.json"
    names.write_text(json.dumps(["a", "b", "c", "d"]))
    ev = evaluate_nuclei(npy, root, classes=names)
    ref = evaluate_nuclei(pred_dir, gt_dir, classes=[1, 2, 3, 4])
    assert ev.to_dict()["classes"] == {"1": "a", "2": "b", "3": "c", "4": "d"}
    assert ev.pooled.to_dict() == ref.pooled.to_dict()
    assert math.isnan(ev.pooled.pq_per_class[4])  # fixed class list: absent class is undefined, not 0
    # class-agnostic .npy instance maps: no classes, no aPQ
    for n, (inst, _) in pert.items():
        np.save(npy / f"{n}.npy", inst)
    ev = evaluate_nuclei(npy, npy)
    assert ev.classes is None and ev.to_dict()["classes"] == {} and ev.pooled.pq == pytest.approx(1.0)
    assert math.isnan(ev.pooled.apq)
    # GT with classes, predictions without: class-agnostic with a warning; with explicit classes an error
    ev = evaluate_nuclei(npy, gt_dir)
    assert ev.classes is None and ev.warnings and ev.pooled.pq == pytest.approx(evaluate_nuclei(pred_dir, gt_dir).pooled.pq)
    with pytest.raises(InputError, match="no classes"):
        evaluate_nuclei(npy, gt_dir, classes="consep")


def test_missing_and_unmatched(folders):
    gt_dir, pred_dir, gt, pert = folders
    (pred_dir / "img1.mat").unlink()
    shutil.copy(pred_dir / "img0.mat", pred_dir / "extra.mat")
    with pytest.raises(InputError) as e:
        evaluate_nuclei(pred_dir, gt_dir)
    assert "img1.mat" in str(e.value)
    ev = evaluate_nuclei(pred_dir, gt_dir, missing="empty")
    r = ev.per_image[1]
    assert r.missing_prediction and r.n_pred == 0 and r.n_gt == 5
    assert r.scores.pq == 0 and r.scores.dice == 0
    assert ev.missing_predictions == ["img1"] and ev.unmatched_predictions == ["extra"]
    # in memory as well
    with pytest.raises(InputError, match="img1"):
        evaluate_samples([NucleiLabels("img0", pert["img0"][0], pert["img0"][1])],
                         [NucleiLabels(n, *gt[n]) for n in gt])


# ---------------------------------------------------------------------- CLI


def test_cli_json(folders, capsys, tmp_path):
    gt_dir, pred_dir, gt, pert = folders
    out = tmp_path / "out"
    rc = main(["nuclei", "evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--json", "--out", str(out)])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)  # exactly one JSON document
    assert set(doc) == DOC_KEYS
    assert doc["n_images"] == 3 and doc["classes"] == {"1": "1", "2": "2", "3": "3"}
    assert set(doc["overall"]) == {"mean", "pooled"}
    for mode in ("mean", "pooled"):
        assert {"dice", "aji", "aji_plus", "dq", "sq", "pq", "apq", "pq_per_class"} <= set(doc["overall"][mode])
    assert [r["name"] for r in doc["per_image"]] == ["img0", "img1", "img2"]
    per_image_keys = {"name", "n_gt", "n_pred", "pred_file", "gt_file", "missing_prediction", "pq", "pq_per_class"}
    assert per_image_keys <= set(doc["per_image"][0])
    ev = evaluate_nuclei(pred_dir, gt_dir)
    assert doc["overall"]["mean"] == ev.mean.to_dict()
    assert json.loads((out / "scores.json").read_text()) == doc
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert [r["name"] for r in rows] == ["img0", "img1", "img2"]
    assert float(rows[2]["pq_2"]) == pytest.approx(ev.per_image[2].scores.pq_per_class[2])
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_cli_tables(folders, capsys):
    gt_dir, pred_dir, _, _ = folders
    assert main(["nuclei", "evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--match-iou", "0.6"]) == 0
    out = capsys.readouterr().out
    assert "mean over images" in out and "pooled" in out and "img2" in out and "IoU > 0.6" in out


def test_cli_missing(folders, capsys):
    gt_dir, pred_dir, _, _ = folders
    (pred_dir / "img1.mat").unlink()
    assert main(["nuclei", "evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--json"]) == 2
    cap = capsys.readouterr()
    assert "img1.mat" in cap.err and cap.out == ""
    assert main(["nuclei", "evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--json", "--missing", "empty"]) == 0
    doc = json.loads(capsys.readouterr().out)
    r = doc["per_image"][1]
    assert r["name"] == "img1" and r["missing_prediction"] and r["n_pred"] == 0 and r["sums"]["counts"]["tp"] == 0
    assert doc["missing_predictions"] == ["img1"]


def test_cli_bad_inputs(folders, capsys, tmp_path):
    gt_dir, pred_dir, gt, _ = folders
    # shape mismatch
    inst, cls = gt["img0"]
    write_consep_mat(pred_dir / "img0.mat", _sample("img0", inst[:-2], {k: c for k, c in cls.items() if (inst[:-2] == k).any()}))
    assert main(["nuclei", "evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--json"]) == 2
    err = capsys.readouterr().err
    assert "img0.mat" in err and "64x46" in err and "64x48" in err
    # no inst_map
    scipy.io.savemat(pred_dir / "img0.mat", {"type_map": np.zeros((H, W), np.int32)})
    assert main(["nuclei", "evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir)]) == 2
    err = capsys.readouterr().err
    assert "img0.mat" in err and "inst_map" in err
    # unreadable .mat
    (pred_dir / "img0.mat").write_bytes(b"not a mat file at all")
    assert main(["nuclei", "evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir)]) == 2
    assert "img0.mat" in capsys.readouterr().err
    # no .mat files
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["nuclei", "evaluate", "--pred", str(empty), "--gt", str(gt_dir)]) == 2
    assert str(empty) in capsys.readouterr().err
    # bad --match-iou is an argparse error (exit 2)
    with pytest.raises(SystemExit) as e:
        main(["nuclei", "evaluate", "--pred", str(gt_dir), "--gt", str(gt_dir), "--match-iou", "0.3"])
    assert e.value.code == 2


# ---------------------------------------------------------------------- one reader for .mat


def test_dataset_and_evaluate_read_mat_files_alike(tmp_path):
    """The training datasets (open_nuclei -> read_consep_mat) and ``nuclei evaluate``
    (read_nuclei_labels) read every .mat to the same instances and classes, empty maps included."""
    inst, cls = _image(0)
    empty = np.zeros((H, W), np.int32)
    full_ids = np.unique(inst)[1:]
    full_types = np.array([[cls[int(i)]] for i in full_ids], np.int32)
    type_map = np.zeros_like(inst)
    for k, c in cls.items():
        type_map[inst == k] = c
    files = {  # name: (variables of the .mat, the classes both readers must give)
        "both": ({"inst_map": inst, "type_map": type_map, "inst_type": full_types}, cls),
        "inst_type": ({"inst_map": inst, "inst_type": full_types}, cls),
        "type_map": ({"inst_map": inst, "type_map": type_map}, cls),
        "no_classes": ({"inst_map": inst}, None),
        "empty_with_type_map": ({"inst_map": empty, "type_map": np.zeros_like(empty)}, {}),
        "empty_with_inst_type": ({"inst_map": empty, "inst_type": np.zeros((0, 1), np.int32)}, {}),
        "empty_no_classes": ({"inst_map": empty}, None),
    }
    root = tmp_path / "consep"
    (root / "masks").mkdir(parents=True)
    for name, (variables, _) in files.items():
        scipy.io.savemat(root / "masks" / f"{name}.mat", variables)
        write_image(root / "imgs" / f"{name}.png", np.zeros((H, W, 3), np.uint8))
    # the writer's empty samples: with classes -> {}, without -> None
    write_consep_mat(root / "masks" / "written_empty_classes.mat", _sample("e", empty, {}))
    write_consep_mat(root / "masks" / "written_empty_none.mat", _sample("e", empty, None))
    files["written_empty_classes"] = (None, {})
    files["written_empty_none"] = (None, None)
    for name in ("written_empty_classes", "written_empty_none"):
        write_image(root / "imgs" / f"{name}.png", np.zeros((H, W, 3), np.uint8))

    ds = open_nuclei(root, classes=None)
    assert sorted(ds.ids) == sorted(files)
    for s in ds:
        lab = read_nuclei_labels(root / "masks" / f"{s.id}.mat")
        np.testing.assert_array_equal(lab.inst_map, s.inst_map)
        assert lab.inst_map.dtype == s.inst_map.dtype == np.int32
        assert lab.inst_class == s.inst_class == files[s.id][1], s.id

    # scoring keeps its rule for empty files without classes: they do not make the
    # evaluation class-agnostic (an empty prediction saved without type_map)
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    shutil.copy(root / "masks" / "both.mat", gt / "a.mat")
    shutil.copy(root / "masks" / "both.mat", pred / "a.mat")
    shutil.copy(root / "masks" / "both.mat", gt / "b.mat")
    shutil.copy(root / "masks" / "empty_no_classes.mat", pred / "b.mat")
    ev = evaluate_nuclei(pred, gt)
    assert ev.warnings == [] and [int(c) for c in ev.classes.ids] == [1, 2, 3]
    assert ev.per_image[1].n_pred == 0 and ev.per_image[1].scores.pq == 0
    assert ev.to_dict()["overall"] == evaluate_nuclei(pred, gt, classes=[1, 2, 3]).to_dict()["overall"]


# ---------------------------------------------------------------------- real data


def _real_mats(shared_data):
    d = shared_data / "nuclei"
    mats = sorted(d.rglob("*.mat")) if d.is_dir() else []
    if not mats:
        pytest.skip(f"no CoNSeP-style .mat files under {d}")
    return mats[:2]


def _erode(inst: np.ndarray) -> np.ndarray:
    """Each instance loses its one-pixel rim (also where two instances touch)."""
    fp = ndimage.generate_binary_structure(2, 1)
    same = ndimage.grey_erosion(inst, footprint=fp) == ndimage.grey_dilation(inst, footprint=fp)
    return np.where(same, inst, 0).astype(np.int32)


def test_real_consep_tiles(shared_data, tmp_path):
    mats = _real_mats(shared_data)
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    for p in mats:
        shutil.copy(p, gt / p.name)
        m = scipy.io.loadmat(p)
        inst = _erode(np.asarray(m["inst_map"]).astype(np.int32))
        scipy.io.savemat(pred / p.name, {"inst_map": inst, "type_map": np.where(inst > 0, m["type_map"], 0)})
    ev = evaluate_nuclei(gt, gt)
    for m in METRICS:
        assert getattr(ev.mean, m) == pytest.approx(1.0) and getattr(ev.pooled, m) == pytest.approx(1.0)
    ev = evaluate_nuclei(pred, gt)
    assert 0.5 < ev.mean.pq < 1 and 0.5 < ev.pooled.pq < 1
    assert 0.5 < ev.pooled.dice < 1 and 0.5 < ev.pooled.aji < 1
    # the same numbers as scoring the arrays directly
    for p, r in zip(mats, ev.per_image):
        g = scipy.io.loadmat(p)
        q = scipy.io.loadmat(pred / p.name)
        d = score_instances(g["inst_map"], q["inst_map"], g["type_map"], q["type_map"], [int(c) for c in ev.classes.ids])
        assert r.name == p.stem
        for m in ("dice", "aji", "aji_plus", "dq", "sq", "pq"):
            assert getattr(r.scores, m) == pytest.approx(getattr(d, m))


@pytest.mark.parametrize("layout", ["miccai2015", "gbm40"])
def test_real_other_layouts_score_against_themselves_and_perturbed(shared_data, layout):
    from histozoom.data.nuclei import NucleiSample, open_nuclei

    d = shared_data / "nuclei" / layout
    if not d.is_dir():
        pytest.skip(f"{d} missing")
    samples = list(open_nuclei(d))[:2]
    ev = evaluate_samples(samples, samples)
    for m in METRICS[:-1]:  # no classes in these layouts: aPQ is undefined (NaN)
        assert getattr(ev.mean, m) == pytest.approx(1.0)
    assert np.isnan(ev.mean.apq)
    eroded = [NucleiSample(s.id, s.image, _erode(s.inst_map)) for s in samples]
    ev = evaluate_samples(eroded, samples)
    assert 0.3 < ev.mean.pq < 1 and 0.5 < ev.mean.dice < 1
    for s, e, r in zip(samples, eroded, ev.per_image):
        d = score_instances(s.inst_map, e.inst_map)
        assert r.scores.pq == pytest.approx(d.pq) and r.scores.aji == pytest.approx(d.aji)
