"""CSV files saved by Excel start with a UTF-8 byte-order mark; every CSV reader accepts it."""

import numpy as np

from conftest import make_pair
from histozoom.data.base import DatasetSpec
from histozoom.data.io import read_points_csv
from histozoom.data.own_layout import OwnDataset, write_own_dataset
from histozoom.pair import ClassSet

BOM = b"\xef\xbb\xbf"


def test_points_csv_with_bom(tmp_path):
    for header in (b"x,y,class,prob\n", b""):
        f = tmp_path / "p.csv"
        f.write_bytes(BOM + header + b"10,20,1,0.5\n30.5,40,2,1\n")
        pts = read_points_csv(f)
        np.testing.assert_array_equal(pts.xy, [[10, 20], [30.5, 40]])
        np.testing.assert_array_equal(pts.cls, [1, 2])


def test_own_layout_pairs_csv_with_bom(tmp_path):
    rng = np.random.default_rng(0)
    spec = DatasetSpec(ClassSet.from_names(["A", "B"]), ClassSet.from_names(["BG", "CA"], ignore=255),
                       cell_mpp=0.25, tissue_mpp=1.0, name="bom")
    pair = make_pair(rng, pid="p0", cell_mpp=0.25, tissue_mpp=1.0)
    write_own_dataset(tmp_path, spec, {"train": [pair]})
    index = tmp_path / "pairs.csv"
    index.write_bytes(BOM + index.read_bytes())
    ds = OwnDataset(tmp_path)
    assert ds.splits == ["train"]
    got = ds.split("train")[0]
    assert got.id == "p0"
    np.testing.assert_array_equal(got.cell_points.xy, pair.cell_points.xy)
