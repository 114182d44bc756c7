"""Property: a corrupted file of any format histozoom reads gives a correct result or a
named ``InputError`` — never another exception (a traceback for the user).

Each format starts from a valid file; hypothesis truncates it, flips or inserts bytes, or
(for JSON) replaces one value by a wrong type, a huge number, NaN, or a deep nesting.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import make_pair, write_tiny_synthetic
from histozoom.data.base import DatasetSpec
from histozoom.data.challenge_json import read_challenge_json
from histozoom.data.gc_container import write_container
from histozoom.data.io import read_npy, read_points_csv, read_rgb
from histozoom.data.nuclei.consep import read_consep_labels
from histozoom.data.nuclei.folder import read_class_file, write_class_file
from histozoom.data.nuclei.records import CCRCC
from histozoom.data.open import open_dataset
from histozoom.data.own_layout import write_own_dataset
from histozoom.errors import InputError
from histozoom.pair import OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES
from histozoom.training.config import TrainConfig

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])  # derandomized: the same cases on every run

# ---------------------------------------------------------------------- valid files


def _challenge_json(path: Path) -> None:
    pts = [{"name": f"image_{k}", "point": [10 + k, 20, 1 + k % 2], "probability": 0.5} for k in range(3)]
    path.write_text(json.dumps({"type": "Multiple points", "num_images": 3, "points": pts,
                                "version": {"major": 1, "minor": 0}}))


def _points_csv(path: Path) -> None:
    path.write_text("x,y,class,prob\n10,20,1,0.5\n30,40,2,0.9\n")


def _png(path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)


def _npy(path: Path) -> None:
    np.save(path, np.arange(64, dtype=np.int32).reshape(8, 8))


def _mat(path: Path) -> None:
    inst = np.zeros((16, 16), np.int32)
    inst[2:6, 2:6], inst[8:12, 8:14] = 1, 2
    scipy.io.savemat(path, {"inst_map": inst, "type_map": (inst > 0).astype(np.int32), "inst_type": np.array([[1], [2]])})


def _class_file(path: Path) -> None:
    write_class_file(path, CCRCC, mpp=0.25)


def _train_config(path: Path) -> None:
    TrainConfig(data="somewhere", model="cell-only").save(path)


READERS: dict[str, tuple[str, Callable[[Path], None], Callable[[Path], object]]] = {
    "challenge JSON": ("p.json", _challenge_json, lambda p: read_challenge_json(p)),
    "points CSV": ("p.csv", _points_csv, lambda p: read_points_csv(p)),
    "PNG image": ("i.png", _png, lambda p: read_rgb(p)),
    ".npy array": ("a.npy", _npy, read_npy),
    "CoNSeP .mat": ("l.mat", _mat, read_consep_labels),
    "nuclei class file": ("classes.json", _class_file, read_class_file),
    "training config": ("train_config.json", _train_config, TrainConfig.load),
}

# ---------------------------------------------------------------------- corruptions


@st.composite
def byte_corruption(draw, data: bytes) -> bytes:
    kind = draw(st.sampled_from(["truncate", "flip", "insert"]))
    i = draw(st.integers(0, max(len(data) - 1, 0)))
    if kind == "truncate":
        return data[:i]
    if kind == "flip":
        return data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1:]
    return data[:i] + draw(st.binary(min_size=1, max_size=16)) + data[i:]


BAD_VALUES = st.sampled_from([None, "x", "", -1, 0, 10**30, 1e308, -1e308, math.nan, math.inf, [], {}, [[[]]], True,
                              "../../etc/passwd", {"a": [1, {"b": None}]}])


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for k, v in enumerate(obj):
            yield from _paths(v, prefix + (k,))


def _replace(obj, path, value):
    if not path:
        return value
    out = dict(obj) if isinstance(obj, dict) else list(obj)
    out[path[0]] = _replace(obj[path[0]], path[1:], value)
    return out


@st.composite
def json_corruption(draw, doc) -> bytes:
    paths = list(_paths(doc))
    where = draw(st.sampled_from(paths))
    value = draw(BAD_VALUES)
    if draw(st.booleans()) and isinstance(doc, dict) and where:
        mutated = _replace(doc, where, value)
    elif isinstance(doc, dict) and where and draw(st.booleans()):  # drop a key
        parent = where[:-1]
        holder = doc
        for k in parent:
            holder = holder[k]
        mutated = _replace(doc, parent, {k: v for k, v in holder.items() if k != where[-1]}
                           if isinstance(holder, dict) else holder)
    else:
        mutated = _replace(doc, where, value)
    return json.dumps(mutated, allow_nan=True).encode()


def _check(read: Callable[[Path], object], path: Path) -> None:
    try:
        read(path)
    except InputError as e:
        assert str(path.name) in str(e) or path.parent.name in str(e), f"error does not name the file: {e}"


# ---------------------------------------------------------------------- properties


def _corrupt_and_read(fmt: str, corruptions) -> None:
    """Write a valid file of ``fmt``, check that it reads, then feed every corruption that
    ``corruptions(path)`` (a hypothesis strategy of bytes) draws to its reader."""
    name, make, read = READERS[fmt]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        make(path)
        read(path)  # the valid file reads
        strategy = corruptions(path)

        @SETTINGS
        @given(strategy)
        def prop(bad: bytes):
            path.write_bytes(bad)
            _check(read, path)

        prop()


@pytest.mark.parametrize("fmt", sorted(READERS))
def test_corrupted_bytes_give_a_result_or_a_named_error(fmt):
    _corrupt_and_read(fmt, lambda path: byte_corruption(path.read_bytes()))


@pytest.mark.parametrize("fmt", [f for f in sorted(READERS) if READERS[f][0].endswith(".json")])
def test_corrupted_json_values_give_a_result_or_a_named_error(fmt):
    _corrupt_and_read(fmt, lambda path: json_corruption(json.loads(path.read_text())))


def _read_whole_dataset(root: Path) -> None:
    ds = open_dataset(root)
    for split in ds.splits:
        for pair in ds.split(split):
            assert pair.cell_image.ndim == 3


def _own_dataset(root: Path) -> None:
    rng = np.random.default_rng(0)
    spec = DatasetSpec(OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES, cell_mpp=0.2, tissue_mpp=0.8, name="own")
    write_own_dataset(root, spec, {"train": [make_pair(rng, pid="a")], "test": [make_pair(rng, pid="b")]})


def _container(root: Path) -> None:
    rng = np.random.default_rng(0)
    write_container(root, [make_pair(rng, pid=f"{k:03d}", cell_size=(64, 64), tissue_size=(64, 64)) for k in range(2)])


def _release(root: Path) -> None:
    write_tiny_synthetic(root, n_train=2, n_val=1, n_test=1)


def _files(root: Path, *names: str) -> list[str]:
    """The named files, or for a folder name every file below it, relative to ``root``."""
    out = []
    for n in names:
        p = root / n
        out += [str(f.relative_to(root)) for f in sorted(p.rglob("*")) if f.is_file()] if p.is_dir() else [n]
    return out


DATASETS = {  # layout -> (writer, files whose corruption is probed)
    "release": (_release, ("metadata.json", "annotations/train/cell")),
    "own": (_own_dataset, ("dataset.yaml", "pairs.csv")),
    "container": (_container, ("metadata.json", "images/cell_patches")),
}


@pytest.mark.parametrize("layout", sorted(DATASETS))
def test_corrupted_dataset_files_give_a_result_or_a_named_error(tmp_path, layout):
    make, probed = DATASETS[layout]
    root = tmp_path / "ds"
    make(root)
    _read_whole_dataset(root)
    files = _files(root, *probed)
    work = tmp_path / "work"

    @SETTINGS
    @given(st.sampled_from(files), st.data())
    def prop(name: str, data):
        if work.exists():
            shutil.rmtree(work)
        shutil.copytree(root, work)
        raw = (root / name).read_bytes()
        if name.endswith(".json") and data.draw(st.booleans()):
            bad = data.draw(json_corruption(json.loads(raw)))
        else:
            bad = data.draw(byte_corruption(raw))
        (work / name).write_bytes(bad)
        with contextlib.suppress(InputError):
            _read_whole_dataset(work)

    prop()
