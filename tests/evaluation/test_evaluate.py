"""The evaluation API and ``histozoom evaluate``: sources, analyses, outputs, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import make_pair
from histozoom.cli import main
from histozoom.data.challenge_json import write_challenge_points
from histozoom.data.ocelot_release import OcelotReleaseWriter
from histozoom.data.open import open_dataset
from histozoom.errors import InputError
from histozoom.evaluation import (
    evaluate,
    load_ground_truth,
    score_split,
    split_ground_truth,
)
from histozoom.metrics.detection import count_detections, match_image
from histozoom.metrics.subgroups import tissue_at_points
from histozoom.pair import Points


def _random_points(rng, n, size=64, prob=True):
    xy = rng.integers(0, size, (n, 2)).astype(float)
    return Points(xy, rng.integers(1, 3, n), rng.random(n) if prob else np.ones(n))


def _jitter(rng, pts: Points, drop=0.2, noise=3, size=64) -> Points:
    keep = rng.random(len(pts)) > drop
    xy = np.clip(pts.xy[keep] + rng.integers(-noise, noise + 1, (keep.sum(), 2)), 0, size - 1)
    cls = pts.cls[keep].copy()
    flip = rng.random(len(cls)) < 0.1
    cls[flip] = 3 - cls[flip]
    return Points(xy, cls, rng.random(len(cls)))


@pytest.fixture
def toy():
    rng = np.random.default_rng(5)
    gt = {k: _random_points(rng, 20, prob=False) for k in range(12) if k != 4}  # image 4: no GT entry
    good = {k: _jitter(rng, g, drop=0.1, noise=2) for k, g in gt.items()}
    bad = {k: _jitter(rng, g, drop=0.5, noise=8) for k, g in gt.items()}
    good[4] = _random_points(rng, 3)
    return gt, good, bad


def test_in_memory_single_method(toy):
    gt, good, _ = toy
    rep = evaluate(good, gt, image_size=64)
    assert rep.images == list(range(12))
    m = rep.methods[0]
    ref = count_detections(gt, good, range(12), 15.0)
    np.testing.assert_array_equal(m.counts.counts, ref.counts)
    assert m.counts.counts[4, :, 2].sum() == 0 and m.counts.counts[4, :, 1].sum() == 3
    doc = rep.to_dict()
    assert doc["matching"] == "challenge" and doc["radius_px"] == 15.0 and doc["num_images"] == 12
    d = doc["methods"]["method_1"]
    assert d["mF1"] == pytest.approx(ref.scores().mf1)
    assert set(d["challenge"]) == {"Pre/BC", "Rec/BC", "F1/BC", "Pre/TC", "Rec/TC", "F1/TC", "mF1"}
    assert len(d["per_image"]) == 12 and d["per_image"][4]["BC"]["n_gt"] == 0
    json.dumps(doc)  # plain JSON (no NaN, no numpy types)
    assert "method_1" in rep.tables()


def test_comparison_bootstrap_is_paired_and_ranks(toy):
    gt, good, bad = toy
    rep = evaluate({"good": good, "bad": bad, "good_again": good}, gt, image_size=64, bootstrap=2000, seed=1)
    g, b, g2 = rep.methods
    np.testing.assert_array_equal(g.samples["mF1"], g2.samples["mF1"])  # same resamples for all methods
    lo, hi = g.ci["overall"]["mF1"]
    assert lo <= g.scores().mf1 <= hi
    for c in ("BC", "TC"):
        for k in ("precision", "recall", "f1"):
            lo, hi = g.ci["overall"]["classes"][c][k]
            assert lo <= hi
    comp = rep.comparison
    assert comp["methods"] == ["good", "bad", "good_again"]
    rp = np.array(comp["rank_probabilities"]["mF1"])
    np.testing.assert_allclose(rp.sum(axis=1), 1)
    assert rp[0, 0] == 1 and rp[2, 0] == 1 and rp[1, 2] == 1  # ties share rank 1
    w = np.array(comp["pairwise_win"]["mF1"])
    assert w[0, 1] == 1 and w[1, 0] == 0 and w[0, 2] == 0 and w[2, 0] == 0
    assert comp["observed_rank"]["mF1"] == [1, 3, 1]
    # Same seed, same numbers.
    rep2 = evaluate({"good": good, "bad": bad}, gt, image_size=64, bootstrap=2000, seed=1)
    assert rep2.methods[0].ci == g.ci
    text = rep.tables()
    assert "Ranking uncertainty" in text and "Pairwise win" in text and "[" in text


def test_hungarian_mode_is_labelled(toy):
    gt, good, _ = toy
    rep = evaluate(good, gt, image_size=64, mode="hungarian")
    doc = rep.to_dict()
    assert doc["matching"] == "hungarian" and "NOT the challenge" in doc["matching_description"]
    assert rep.methods[0].counts.totals[:, 0].sum() >= evaluate(good, gt, image_size=64).methods[0].counts.totals[:, 0].sum()


def test_predictions_for_unknown_images(toy, tmp_path):
    gt, good, _ = toy
    gt_path, pred_path = tmp_path / "gt.json", tmp_path / "pred.json"
    write_challenge_points(gt_path, gt, num_images=12)
    preds = dict(good)
    preds[20] = Points.from_array([[1, 1, 1]], prob=np.array([0.5]))
    write_challenge_points(pred_path, preds)
    rep = evaluate(str(pred_path), str(gt_path))
    assert rep.images[-1] == 20 and any("without ground truth" in w for w in rep.warnings)
    assert rep.methods[0].counts.counts[-1].tolist() == [[0, 1, 0], [0, 0, 0]]
    with pytest.raises(InputError, match=r"points\[\d+\] \(image_20\): no such image"):
        evaluate(str(pred_path), str(gt_path), strict=True)


def test_csv_folders_align_by_name(toy, tmp_path):
    gt, good, _ = toy
    ids = {k: f"{k * 7 + 1}" for k in gt}  # numeric names: 1, 8, 15, ... (numeric, not string, order)
    gdir, pdir = tmp_path / "gt", tmp_path / "pred"
    gdir.mkdir(), pdir.mkdir()
    for k, pts in gt.items():
        rows = [f"{int(x)},{int(y)},{c}" for (x, y), c in zip(pts.xy, pts.cls, strict=True)]
        (gdir / f"{ids[k]}.csv").write_text("x,y,class\n" + "\n".join(rows) + "\n")
        p = good[k]
        rows = [f"{int(x)},{int(y)},{c},{float(q)!r}" for (x, y), c, q in zip(p.xy, p.cls, p.prob, strict=True)]
        (pdir / f"{ids[k]}.csv").write_text("\n".join(rows) + "\n")
    rep = evaluate(str(pdir), str(gdir), image_size=64)
    keys = sorted(gt)  # the numeric order of the names is the image order
    expected = count_detections({i: gt[k] for i, k in enumerate(keys)}, {i: good[k] for i, k in enumerate(keys)},
                                range(len(keys)), 15.0)
    np.testing.assert_array_equal(rep.methods[0].counts.counts, expected.counts)
    assert rep.image_names[:3] == ["1", "8", "15"]
    (pdir / "999.csv").write_text("1,1,1,0.5\n")
    with pytest.raises(InputError, match="'999' matches no ground-truth image"):
        evaluate(str(pdir), str(gdir), image_size=64)
    (pdir / "999.csv").unlink()
    (pdir / f"{ids[0]}.csv").write_text("1,1,1,0.5\n1,1,9,0.5\n")
    with pytest.raises(InputError, match=r"1\.csv:2: class 9"):
        evaluate(str(pdir), str(gdir), image_size=64)


# ---------------------------------------------------------------------- dataset folder + CLI
@pytest.fixture
def release(tmp_path):
    rng = np.random.default_rng(3)
    ids = ["020", "003", "011", "007"]  # written out of order; image_K follows sorted ids
    pairs = []
    with OcelotReleaseWriter(tmp_path / "ds") as w:
        for i, pid in enumerate(ids):
            p = make_pair(rng, pid=pid, n_points=25, centre=(0.3 + 0.1 * i, 0.5))
            p = p.replace(organ=["kidney", "lung"][i % 2])
            pairs.append(p)
            w.add(p, "test", image_ext=".png")
    return tmp_path / "ds", {p.id: p for p in pairs}


def test_cli_dataset_split_json(release, tmp_path, capsys):
    root, pairs = release
    order = sorted(pairs)
    rng = np.random.default_rng(9)
    preds = {k: _jitter(rng, pairs[sid].cell_points, noise=2, size=48) for k, sid in enumerate(order)}
    pred_path = tmp_path / "p.json"
    write_challenge_points(pred_path, preds, num_images=len(order))
    rc = main(["evaluate", "--pred", str(pred_path), "--gt", str(root), "--split", "test", "--json", "--subgroups",
               "--bootstrap", "200"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    doc = json.loads(out.out)  # exactly one JSON document on stdout
    m = doc["methods"]["p"]
    expected = count_detections({k: pairs[s].cell_points for k, s in enumerate(order)}, preds, range(4), 15.0)
    assert m["classes"]["BC"]["tp"] == int(expected.totals[0, 0])
    assert [r["name"] for r in m["per_image"]] == order
    assert set(m["per_organ"]) == {"kidney", "lung"}
    assert m["per_organ"]["kidney"]["n_images"] == 2
    # Subgroups: by hand, cells filtered by the tissue under them.
    want = np.zeros((2, 2, 3), np.int64)
    for k, sid in enumerate(order):
        pair = pairs[sid]
        g, p = pair.cell_points, preds[k]
        lg = tissue_at_points(g.xy, pair.placement, pair.tissue_mask)
        lp = tissue_at_points(p.xy, pair.placement, pair.tissue_mask)
        for t in (1, 2):
            want[t - 1] += match_image(g.subset(lg == t), p.subset(lp == t), 15.0)
    rows = {r["subgroup"]: r for r in m["subgroups"]["rows"]}
    assert set(rows) == {"BC on BG", "TC on BG", "BC on CA", "TC on CA"}
    assert rows["TC on BG"]["tp"] == want[0, 1, 0] and rows["BC on CA"]["n_gt"] == want[1, 0, 2]
    assert rows["BC on BG"]["ci"]["f1"][0] <= rows["BC on BG"]["f1"] <= rows["BC on BG"]["ci"]["f1"][1]
    assert "[evaluate]" in out.err and "[evaluate]" not in out.out


def test_cli_bad_prediction_file(release, tmp_path, capsys):
    root, _ = release
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "Multiple points", "points": [
        {"name": "image_0", "point": [3, 4, 1], "probability": 0.5},
        {"name": "image_1", "point": [70, 4, 1], "probability": 0.5},  # the cell images are 64 x 48
    ]}))
    rc = main(["evaluate", "--pred", str(bad), "--gt", str(root), "--split", "test"])
    err = capsys.readouterr().err
    assert rc == 2 and str(bad) in err and "points[1] (image_1)" in err and "64x48" in err
    rc = main(["evaluate", "--pred", str(bad), "--gt", str(root), "--split", "nope"])
    assert rc == 2 and "split 'nope' not found" in capsys.readouterr().err


def test_split_ground_truth_is_the_one_way_from_a_split(release, tmp_path):
    from histozoom.inference.predictor import Predictions

    root, pairs = release
    order = sorted(pairs)
    split = open_dataset(root).split("test")
    gt = split_ground_truth(split)
    assert list(gt) == [0, 1, 2, 3]
    for k, sid in enumerate(order):
        np.testing.assert_array_equal(gt[k].xy, pairs[sid].cell_points.xy)
    seen = []
    visited = split_ground_truth(split, lambda k, pair: seen.append((k, pair.id)))
    assert seen == list(enumerate(order))
    assert all(np.array_equal(visited[k].xy, gt[k].xy) for k in gt)
    # The evaluate path reads the same points (with or without loading the pairs).
    for with_pairs in (False, True):
        ps = load_ground_truth(root, split="test", with_pairs=with_pairs)
        assert sorted(ps.points) == sorted(gt) and all(np.array_equal(ps.points[k].cls, gt[k].cls) for k in gt)
        assert [ps.name(k) for k in range(4)] == order
    # In-memory scoring (the trainer's) agrees with scoring the written file.
    rng = np.random.default_rng(2)
    preds = {k: _jitter(rng, gt[k], noise=2, size=48) for k in gt}
    pred = Predictions(preds, order, organs={k: pairs[sid].organ for k, sid in enumerate(order)})
    s = score_split(pred, split)
    given = score_split(pred, split, gt)
    assert (s["mF1"], s["f1"], s["organs"]) == (given["mF1"], given["f1"], given["organs"])
    path = pred.write_challenge_json(tmp_path / "p.json")
    rep = evaluate(str(path), str(root), split="test", bootstrap=0)
    assert s["mF1"] == pytest.approx(rep.methods[0].scores().mf1)
    assert set(s["organs"]) == {"kidney", "lung"}


def test_json_gt_with_metadata_and_tissue_masks(release, tmp_path, capsys):
    root, pairs = release
    order = sorted(pairs)
    gt_path = tmp_path / "gt.json"
    write_challenge_points(gt_path, {k: pairs[s].cell_points for k, s in enumerate(order)}, num_images=4)
    meta = json.loads((root / "metadata.json").read_text())["sample_pairs"]
    meta_path = tmp_path / "meta.json"
    meta_path.write_text(json.dumps([meta[s] for s in order]))  # container-style list: entry K = image_K
    # Masks named by the release ids: matched in sorted order; predicted masks named image_K.
    masks, tpred = root / "annotations" / "test" / "tissue", tmp_path / "tpred"
    tpred.mkdir()
    from histozoom.data.io import write_image

    for k, s in enumerate(order):
        write_image(tpred / f"image_{k}.png", np.where(pairs[s].tissue_mask == 255, 1, pairs[s].tissue_mask).astype(np.uint8))
    out_dir = tmp_path / "out"
    rc = main(["evaluate", "--pred", str(gt_path), "--gt", str(gt_path), "--image-size", "64x48", "--metadata", str(meta_path),
               "--tissue-masks", str(masks), "--tissue-pred", str(tpred), "--out", str(out_dir), "--plots", "--bootstrap", "100"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "Tissue-region subgroups" in out.out and "Per organ" in out.out and "Tissue segmentation" in out.out
    doc = json.loads((out_dir / "evaluation.json").read_text())
    m = doc["methods"]["gt"]
    assert m["mF1"] == 1.0 and all(r["f1"] in (0.0, 1.0) for r in m["subgroups"]["rows"])
    assert m["segmentation"]["classes"]["BG"]["iou"] == 1.0 and m["segmentation"]["classes"]["CA"]["iou"] == 1.0
    for name in ("f1_per_image_violins.png",):
        assert (out_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "sorted order" in out.err  # the mask names were matched by order, and said so


def test_masks_without_placement_are_an_error(toy, tmp_path):
    gt, _, _ = toy
    with pytest.raises(InputError, match="placement"):
        load_ground_truth(gt, image_size=64, tissue_masks={0: np.ones((8, 8), np.uint8)})


def test_plots_for_several_methods(toy, tmp_path):
    gt, good, bad = toy
    rep = evaluate({"good": good, "bad": bad}, gt, image_size=64, bootstrap=300)
    written = rep.write(tmp_path / "o", plots=True)
    names = sorted(p.name for p in written)
    assert names == ["evaluation.json", "f1_per_image_violins.png", "pairwise_wins.png", "rank_probabilities.png"]
    for p in written[1:]:
        assert p.read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in (tmp_path / "o").iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------- real data
def test_cli_reproduces_official_scores(shared_data, capsys):
    d = shared_data / "ocelot"
    rc = main(["evaluate", "--pred", str(d / "predictions" / "r12_e30k.json"), "--pred", str(d / "predictions" / "r14_e21k.json"),
               "--gt", str(d / "points" / "official_test_126_cell_gt.json"), "--strict", "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    doc = json.loads(out.out)
    assert doc["num_images"] == 126
    c12, c14 = doc["methods"]["r12_e30k"]["challenge"], doc["methods"]["r14_e21k"]["challenge"]
    assert (c12["Pre/BC"], c12["Rec/BC"], c12["F1/BC"], c12["Pre/TC"], c12["Rec/TC"], c12["F1/TC"]) == (
        0.662, 0.5673, 0.611, 0.7066, 0.7143, 0.7104)
    assert (c14["Pre/BC"], c14["Rec/BC"], c14["F1/BC"], c14["Pre/TC"], c14["Rec/TC"], c14["F1/TC"]) == (
        0.6595, 0.5296, 0.5875, 0.718, 0.7122, 0.7151)
    assert round(c12["mF1"], 4) == 0.6607 and round(c14["mF1"], 4) == 0.6513


def test_real_metadata_gives_organs(shared_data):
    d = shared_data / "ocelot" / "points"
    gt = d / "gestalt_fold0_81_cell_gt.json"
    rep = evaluate(str(gt), str(gt), metadata=str(d / "gestalt_fold0_81_metadata.json"), bootstrap=500)
    m = rep.methods[0]
    assert len(rep.images) == 81 and m.scores().mf1 == 1.0
    assert len(m.organs) >= 2 and sum(len(c.images) for c in m.organs.values()) == 81
    assert m.ci["overall"]["mF1"] == [1.0, 1.0]


def test_real_gt_with_images_beyond_num_images(shared_data):
    path = shared_data / "ocelot" / "points" / "train_sorted_first320_cell_gt.json"
    rep = evaluate(str(path), str(path), bootstrap=0)
    assert rep.images[-1] == 399 and rep.methods[0].scores().mf1 == 1.0
    assert any("num_images 320" in w for w in rep.warnings)
    with pytest.raises(InputError, match=r"image index \d+ >= num_images 320"):
        evaluate(str(path), str(path), strict=True)


@pytest.mark.parametrize("path, split", [("/data/ocelot", "test"), ("runs/a (split b)/ds", "val"), ("d", "fold 1")])
def test_dataset_label_round_trip(path, split):
    """The label evaluate records for a dataset ground truth reads back as its folder and
    split; any other label is a path with no split."""
    from histozoom.evaluation.sources import dataset_label, parse_dataset_label

    assert parse_dataset_label(dataset_label(path, split)) == (Path(path), split)
    assert parse_dataset_label("preds/gt.json") == (Path("preds/gt.json"), None)
