"""Synthetic paired data: determinism, layout, class–region statistics, view consistency,
and that the region is told by the tissue view but not by the cell view."""

import json

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import pdist

from histozoom.cli import main
from histozoom.data.ocelot_release import OcelotRelease
from histozoom.data.synthetic import (
    SIMPLE_MORPHOLOGY,
    SYNTHETIC_JSON,
    SynthConfig,
    _solve_class_probabilities,
    context_statistics,
    generate_pair,
    iter_synthetic_pairs,
    split_seed,
    write_synthetic_release,
)
from histozoom.evaluation.oracles import oracle_mf1, write_synthetic_dataset
from histozoom.geometry import cell_to_tissue_np
from histozoom.pair import OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES

N_CONTEXT = 100


@pytest.fixture(scope="module")
def context_pairs():
    cfg = SynthConfig(cell_size=256, tissue_size=256, seed=3)
    return [generate_pair(cfg, split_seed(cfg.seed, "train", k), f"{k:03d}") for k in range(N_CONTEXT)]


def _window_ca(pair) -> float:
    """CA share of the known tissue labels in the cell window."""
    x0, y0, x1, y1 = pair.placement.window_int()
    win = pair.tissue_mask[y0:y1, x0:x1]
    known = win != 255
    return float(np.mean(win[known] == 2)) if known.any() else 0.5


def _corr(a, b) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


# ---------------------------------------------------------------- determinism and layout
def test_generate_pair_is_deterministic():
    cfg = SynthConfig(cell_size=128, tissue_size=128, seed=5)
    a = generate_pair(cfg, split_seed(5, "val", 2), "x")
    b = generate_pair(cfg, split_seed(5, "val", 2), "x")
    c = generate_pair(cfg, split_seed(6, "val", 2), "x")
    np.testing.assert_array_equal(a.cell_image, b.cell_image)
    np.testing.assert_array_equal(a.tissue_image, b.tissue_image)
    np.testing.assert_array_equal(a.tissue_mask, b.tissue_mask)
    np.testing.assert_array_equal(a.cell_points.xy, b.cell_points.xy)
    np.testing.assert_array_equal(a.cell_points.cls, b.cell_points.cls)
    assert a.placement == b.placement and a.organ == b.organ
    assert not np.array_equal(a.tissue_image, c.tissue_image)


def test_splits_do_not_depend_on_other_split_sizes():
    small = SynthConfig(cell_size=128, tissue_size=128, n_train=1, n_val=1, n_test=0, seed=1)
    large = SynthConfig(cell_size=128, tissue_size=128, n_train=3, n_val=1, n_test=0, seed=1)
    val_small = [p for s, p in iter_synthetic_pairs(small) if s == "val"][0]
    val_large = [p for s, p in iter_synthetic_pairs(large) if s == "val"][0]
    np.testing.assert_array_equal(val_small.cell_image, val_large.cell_image)


def test_written_dataset_reads_back_and_is_reproducible(tmp_path):
    cfg = SynthConfig(cell_size=128, tissue_size=128, n_train=4, n_val=2, n_test=3, seed=11,
                      organs=("kidney", "bladder"))
    root = write_synthetic_dataset(tmp_path / "a", cfg)
    rel = OcelotRelease(root)
    assert rel.splits == ["train", "val", "test"]
    assert [len(rel.split(s)) for s in ("train", "val", "test")] == [4, 2, 3]
    assert rel.spec.cell_classes == OCELOT_CELL_CLASSES
    assert rel.spec.tissue_classes == OCELOT_TISSUE_CLASSES
    all_ids = sum((rel.split(s).ids for s in rel.splits), [])
    assert len(set(all_ids)) == 9

    in_memory = {p.id: (s, p) for s, p in iter_synthetic_pairs(cfg)}
    for split in rel.splits:
        for pair in rel.split(split):
            s, ref = in_memory[pair.id]
            assert s == split
            assert pair.cell_image.shape == (128, 128, 3) and pair.tissue_image.shape == (128, 128, 3)
            assert pair.organ in ("kidney", "bladder") and pair.organ == ref.organ
            assert pair.placement.fractions() == pytest.approx(ref.placement.fractions(), abs=1e-9)
            np.testing.assert_array_equal(pair.cell_points.xy, ref.cell_points.xy)
            np.testing.assert_array_equal(pair.cell_points.cls, ref.cell_points.cls)
            np.testing.assert_array_equal(pair.tissue_mask, ref.tissue_mask)
            assert np.abs(pair.cell_image.astype(int) - ref.cell_image).mean() < 3  # JPEG
            assert rel.sample_pairs[pair.id]["synthetic"]["preset"] == "context"

    report = json.loads((root / SYNTHETIC_JSON).read_text())
    assert report["config"]["seed"] == 11
    assert set(report["splits"]) == {"train", "val", "test", "all"}
    assert 0 <= report["splits"]["all"]["oracle_mf1"]["region"]["mf1"] <= 1
    assert SynthConfig.from_dict(report["config"]).to_dict() == cfg.to_dict()

    root_b = write_synthetic_dataset(tmp_path / "b", cfg)
    assert (root / "metadata.json").read_text() == (root_b / "metadata.json").read_text()
    for f in (root / "images").rglob("*.jpg"):
        assert f.read_bytes() == (root_b / f.relative_to(root)).read_bytes()

    with pytest.raises(Exception, match="not empty"):
        write_synthetic_dataset(root, cfg)
    write_synthetic_dataset(root, SynthConfig(cell_size=128, tissue_size=128, n_train=1, n_val=0, n_test=0),
                            overwrite=True)
    assert OcelotRelease(root).splits == ["train"]


def test_config_round_trip_and_release_writer(tmp_path):
    cfg = SynthConfig(preset="simple", cell_size=128, tissue_size=128, n_train=1, n_val=0, n_test=1)
    assert cfg.cell_morphology == SIMPLE_MORPHOLOGY
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["organs"] == list(cfg.organs) and d["morphology"]["radius_um"]["tc"] == SIMPLE_MORPHOLOGY.radius_um.tc
    assert SynthConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="unknown SynthConfig fields"):
        SynthConfig.from_dict({**d, "nope": 1})
    # The data layer writes the pairs and hands over per-cell summaries; synthetic.json
    # (with the oracle scores) is the evaluation package's.
    root, summaries = write_synthetic_release(tmp_path / "r", cfg)
    assert not (root / SYNTHETIC_JSON).exists()
    assert [len(summaries[s]) for s in ("train", "val", "test")] == [1, 0, 1]
    assert summaries["test"][0]["feats"].shape[1] == 4


def test_data_layer_imports_no_metrics_or_evaluation():
    import ast
    from pathlib import Path

    import histozoom.data

    for path in sorted(Path(histozoom.data.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                assert not any(part in ("metrics", "evaluation") for part in name.split(".")), (path.name, name)


def test_sizes_mpp_and_validation():
    cfg = SynthConfig(cell_size=64, tissue_size=96, cell_mpp=0.5, tissue_mpp=1.0)
    p = generate_pair(cfg, np.random.default_rng(0), "a")
    assert p.cell_image.shape == (64, 64, 3) and p.tissue_image.shape == (96, 96, 3)
    assert p.placement.width == pytest.approx(32) and p.placement.inside_tissue(tol=0)
    with pytest.raises(ValueError, match="whole number"):
        SynthConfig(cell_mpp=0.2, tissue_mpp=0.7)
    with pytest.raises(ValueError, match="multiple"):
        SynthConfig(cell_size=130)
    with pytest.raises(ValueError, match="does not fit"):
        SynthConfig(cell_size=1024, tissue_size=128)
    with pytest.raises(ValueError, match="preset"):
        SynthConfig(preset="nope")


def test_class_probability_solver():
    a, b = _solve_class_probabilities(0.9, 0.9, 0.4)
    q = 0.4
    tc_ca, tc_bg = q * a, (1 - q) * b
    bc_ca, bc_bg = q * (1 - a), (1 - q) * (1 - b)
    assert tc_ca / (tc_ca + tc_bg) == pytest.approx(0.9)
    assert bc_bg / (bc_bg + bc_ca) == pytest.approx(0.9)


# ---------------------------------------------------------------- context preset statistics
def test_context_class_region_statistics(context_pairs):
    st = context_statistics(context_pairs)
    assert st["tc_in_ca"] == pytest.approx(0.9, abs=0.05)
    assert st["bc_outside_ca"] == pytest.approx(0.9, abs=0.05)
    assert 0.25 <= st["ca_pixel_fraction"] <= 0.55
    assert 0.01 <= st["unknown_pixel_fraction"] <= 0.08
    assert 0.2 <= st["tc_fraction"] <= 0.55
    assert st["windows_90pct_one_region"] >= 0.7
    # density: ~7000 cells/mm² → ~18 per 256² image at 0.2 µm/px
    assert 12 <= st["cells_per_image"] <= 26
    assert {p.organ for p in context_pairs} <= {"kidney", "head-and-neck", "prostate", "stomach",
                                                "endometrium", "bladder"}


def test_points_inside_and_apart(context_pairs):
    dmin = 2.0 / 0.2
    for p in context_pairs:
        xy = p.cell_points.xy
        assert np.all(xy >= 0) and np.all(xy <= 255)
        assert np.array_equal(xy, np.round(xy))
        if len(xy) > 1:
            assert pdist(xy).min() >= dmin - 1e-9
        assert set(np.unique(p.cell_points.cls)) <= {1, 2}
        assert set(np.unique(p.tissue_mask)) <= {1, 2, 255}


def test_cell_view_is_the_tissue_window(context_pairs):
    for p in context_pairs[:10]:
        x0, y0, x1, y1 = p.placement.window_int()
        shrunk = cell_to_tissue_np(p.cell_image.astype(np.float32), p.placement)[y0:y1, x0:x1]
        crop = p.tissue_image[y0:y1, x0:x1].astype(np.float32)
        assert _corr(shrunk.mean(-1), crop.mean(-1)) > 0.9


def test_region_not_decidable_from_cell_view_background(context_pairs):
    """Background (non-nucleus) pixels of the cell view have the same statistics in CA and
    BG windows: the difference of the group means is small against the spread."""
    stats = {"CA": [], "BG": []}
    yy, xx = np.mgrid[0:256, 0:256]
    for p in context_pairs:
        frac = _window_ca(p)
        group = "CA" if frac >= 0.99 else "BG" if frac <= 0.01 else None
        if group is None:
            continue
        near = np.zeros((256, 256), bool)
        pts = np.rint(p.cell_points.xy).astype(int)
        near[pts[:, 1], pts[:, 0]] = True
        far = ndimage.distance_transform_edt(~near) > 16
        far &= (xx >= 16) & (xx < 240) & (yy >= 16) & (yy < 240)
        gray = p.cell_image.astype(np.float64).mean(-1)[far]
        stats[group].append((gray.mean(), gray.std(), p.cell_image[..., 1][far].mean()))
    ca, bg = np.array(stats["CA"]), np.array(stats["BG"])
    assert len(ca) >= 15 and len(bg) >= 15
    for k in range(ca.shape[1]):
        spread = np.sqrt((ca[:, k].var(ddof=1) + bg[:, k].var(ddof=1)) / 2)
        diff = abs(ca[:, k].mean() - bg[:, k].mean())
        se = np.sqrt(ca[:, k].var(ddof=1) / len(ca) + bg[:, k].var(ddof=1) / len(bg))
        assert diff < 0.5 * spread and diff < 3 * se


def test_region_is_visible_in_tissue_view_around_the_window(context_pairs):
    """Glands (bright lumina) surround CA windows but not BG windows: a simple score on the
    tissue image around the window separates them (AUC)."""
    scores = {"CA": [], "BG": []}
    for p in context_pairs:
        frac = _window_ca(p)
        group = "CA" if frac >= 0.99 else "BG" if frac <= 0.01 else None
        if group is None:
            continue
        x0, y0, x1, y1 = p.placement.window_int()
        w = x1 - x0
        m = w // 2
        ring = np.zeros(p.tissue_mask.shape, bool)
        ring[max(y0 - m, 0):y1 + m, max(x0 - m, 0):x1 + m] = True
        ring[y0:y1, x0:x1] = False
        bright = p.tissue_image.astype(np.float64).mean(-1) > 225
        scores[group].append(bright[ring].mean())
    ca, bg = np.array(scores["CA"]), np.array(scores["BG"])
    auc = np.mean(ca[:, None] > bg[None, :]) + 0.5 * np.mean(ca[:, None] == bg[None, :])
    assert auc > 0.9


def test_oracles_context(context_pairs):
    o = oracle_mf1(context_pairs)
    assert o["region"]["mf1"] > 0.84
    assert 0.55 < o["cell_view"]["mf1"] < 0.76
    assert o["cell_view_pooled"]["mf1"] < 0.78
    assert o["region"]["mf1"] - o["cell_view"]["mf1"] > 0.12
    assert o["region_and_cell_view"]["mf1"] >= o["region"]["mf1"] - 0.01
    for name in ("BC", "TC"):
        assert 0 <= o["region"][name]["precision"] <= 1 and 0 <= o["region"][name]["recall"] <= 1


def test_simple_preset_is_decidable_from_morphology():
    cfg = SynthConfig(preset="simple", cell_size=256, tissue_size=256, seed=2)
    pairs = [generate_pair(cfg, split_seed(2, "train", k), str(k)) for k in range(30)]
    o = oracle_mf1(pairs)
    assert o["cell_view"]["mf1"] > 0.95
    assert o["region"]["mf1"] < 0.7
    st = context_statistics(pairs)
    assert st["tc_in_ca"] < 0.7 and st["bc_outside_ca"] < 0.8


def test_region_oracle_works_without_morphology(context_pairs):
    p = context_pairs[0]
    bare = p.replace(meta={})
    o = oracle_mf1([bare])
    assert "region" in o and "cell_view" not in o


# ---------------------------------------------------------------- CLI
def test_cli_writes_dataset(tmp_path, capsys):
    out = tmp_path / "synth"
    rc = main(["synth", str(out), "--preset", "simple", "--n-train", "2", "--n-val", "1", "--n-test", "1",
               "--cell-size", "128", "--tissue-size", "128", "--seed", "4", "--organs", "kidney", "stomach"])
    assert rc == 0
    assert "wrote 4 pairs" in capsys.readouterr().out
    rel = OcelotRelease(out)
    assert [len(rel.split(s)) for s in rel.splits] == [2, 1, 1]
    assert {rel.split(s)[0].organ for s in rel.splits} <= {"kidney", "stomach"}
    assert json.loads((out / SYNTHETIC_JSON).read_text())["config"]["preset"] == "simple"

    assert main(["synth", str(out), "--n-train", "1", "--n-val", "0", "--n-test", "0", "--cell-size", "128",
                 "--tissue-size", "128"]) == 2  # not empty
    capsys.readouterr()
    assert main(["synth", str(out), "--n-train", "1", "--n-val", "0", "--n-test", "0", "--cell-size", "128",
                 "--tissue-size", "128", "--overwrite", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["splits"]["train"]["stats"]["n_pairs"] == 1
    assert main(["synth", str(tmp_path / "bad"), "--cell-size", "130"]) == 2


def test_config_round_trip_and_preset_change_brings_its_morphology():
    from histozoom.data.synthetic import CONTEXT_MORPHOLOGY, SIMPLE_MORPHOLOGY

    cfg = SynthConfig(preset="context", n_train=3)
    assert SynthConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(preset="simple").morphology == SIMPLE_MORPHOLOGY
    custom = SynthConfig(preset="simple", morphology=CONTEXT_MORPHOLOGY)
    assert custom.replace(preset="context", n_train=1).morphology == CONTEXT_MORPHOLOGY
    with pytest.raises(ValueError, match="unknown SynthConfig fields"):
        cfg.replace(n_trian=1)
