"""Pairs to tensors (resize, targets) and the dataset tables."""

import numpy as np
import pytest

from conftest import make_pair
from histozoom.cli import main
from histozoom.data.base import DatasetSpec
from histozoom.data.ocelot_release import OcelotRelease, OcelotReleaseWriter
from histozoom.data.samples import PairDataset, SampleConfig, resize_pair
from histozoom.data.stats import dataset_stats
from histozoom.geometry import Placement
from histozoom.pair import OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES, Pair, Points


def test_resize_pair_keeps_geometry_and_physical_size():
    pair = make_pair(np.random.default_rng(0), cell_size=(64, 64), tissue_size=(64, 64))
    small = resize_pair(pair, (32, 32), (16, 16))
    assert small.cell_image.shape == (32, 32, 3) and small.tissue_mask.shape == (16, 16)
    assert small.placement.fractions() == pytest.approx(pair.placement.fractions())
    assert small.cell_mpp == pytest.approx(0.4) and small.tissue_mpp == pytest.approx(3.2)
    # a point keeps its physical position in the tissue frame
    t_after = small.placement.cell_to_tissue_points(small.cell_points.xy)
    np.testing.assert_allclose((t_after + 0.5) * 4, pair.placement.cell_to_tissue_points(pair.cell_points.xy) + 0.5, atol=1e-9)


class _ListSplit:
    def __init__(self, pairs, spec):
        self.pairs, self.spec = pairs, spec

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i):
        return self.pairs[i]


def test_torch_samples_shapes_and_targets():
    spec = DatasetSpec(OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES)
    pair = make_pair(np.random.default_rng(1), cell_size=(64, 64), tissue_size=(64, 64))
    ds = PairDataset(_ListSplit([pair], spec), SampleConfig(size=32, heatmaps=True))
    s = ds[0]
    assert s["cell_image"].shape == (3, 32, 32) and s["cell_image"].max() <= 1
    assert s["cell_target"].shape == (32, 32) and s["cell_heatmap"].shape == (2, 32, 32)
    assert s["tissue_target"].shape == (32, 32) and s["tissue_target_cell"].shape == (32, 32)
    assert set(np.unique(s["cell_target"].numpy())) <= {0, 1, 2}
    # at 32 px the cell mpp is 0.4: a 1.4 µm disk has radius 3.5 px
    one = Pair("x", pair.cell_image, pair.tissue_image, pair.placement, Points.from_array([[32, 32, 2]]), None)
    s1 = PairDataset(_ListSplit([one], spec), SampleConfig(size=32))[0]
    assert int((s1["cell_target"] == 2).sum()) == 37  # lattice points within r = 3.5 of a pixel centre


def test_stats_counts_cells_on_tissue(tmp_path):
    # tissue: left half BG (1), right half CA (2); cell window covers the centre
    rng = np.random.default_rng(0)
    mask = np.ones((64, 64), np.uint8)
    mask[:, 32:] = 2
    mask[:2, :2] = 255
    p = Placement.from_centre((0.5, 0.5), (64, 64), (64, 64), 0.2, 0.8)  # window x 24..40
    pts = Points.from_array([[5, 10, 1], [10, 20, 1], [50, 30, 2], [60, 60, 2], [55, 5, 1]])  # cell x<32 → BG
    pair = Pair("001", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8),
                rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), p, pts, mask, organ="bladder")
    with OcelotReleaseWriter(tmp_path) as w:
        w.add(pair, "train", image_ext=".png")
        w.add(pair.replace(id="002", organ="kidney"), "test", image_ext=".png")
    st = dataset_stats(OcelotRelease(tmp_path), progress=False)
    assert st.cells["train"] == {"BC": 3, "TC": 2} and st.cells["total"] == {"BC": 6, "TC": 4}
    assert st.tissue_pixels["train"] == {"BG": 32 * 64 - 4, "CA": 32 * 64, "unknown": 4}
    assert st.cells_on_tissue["BC"] == {"BG": 4, "CA": 2}
    assert st.cells_on_tissue["TC"] == {"CA": 4}
    assert st.cell_tissue_fractions()["TC"]["CA"] == 1.0
    assert st.pairs["total"] == {"bladder": 1, "kidney": 1}
    assert st.tissue_ratios()["CA"] == pytest.approx(0.5)


def test_stats_cli_json(tmp_path, capsys):
    pair = make_pair(np.random.default_rng(2))
    with OcelotReleaseWriter(tmp_path) as w:
        w.add(pair, "val", image_ext=".png")
    assert main(["stats", str(tmp_path), "--json"]) == 0
    import json
    doc = json.loads(capsys.readouterr().out)
    assert doc["cells_per_class"]["val"]["BC"] + doc["cells_per_class"]["val"]["TC"] == len(pair.cell_points)
    assert main(["stats", str(tmp_path)]) == 0
    assert "Table 3" in capsys.readouterr().out


def test_cli_reports_bad_input_cleanly(tmp_path, capsys):
    assert main(["stats", str(tmp_path / "missing")]) == 2
    assert "missing: dataset not found" in capsys.readouterr().err
