"""Paths read from data files never leave their dataset; mpp is checked alike in every
layout; error messages quote file content only as a short excerpt."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import make_pair
from histozoom.cli import main
from histozoom.data.base import DatasetSpec
from histozoom.data.checks import EXCERPT_CHARS, check_mpp, excerpt, resolve_inside
from histozoom.data.gc_container import write_container
from histozoom.data.io import read_points_csv
from histozoom.data.nuclei.folder import read_class_file
from histozoom.data.ocelot_release import OcelotReleaseWriter
from histozoom.data.open import open_dataset
from histozoom.data.own_layout import write_own_dataset
from histozoom.errors import InputError
from histozoom.pair import OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES

SECRET = "TOP-SECRET-7f3a: root:x:0:0:root:/root:/bin/bash"
BAD_MPP = [-0.8, 0, math.inf, math.nan, 1000]


# ---------------------------------------------------------------- helpers
def _own(tmp_path: Path) -> Path:
    """An own-layout dataset with one pair ("000", split test) in tmp_path/ds."""
    root = tmp_path / "ds"
    pair = make_pair(np.random.default_rng(0))
    write_own_dataset(root, DatasetSpec(OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES), {"test": [pair]})
    return root


def _set_column(root: Path, column: str, value: str, row: int = 0) -> None:
    path = root / "pairs.csv"
    with open(path, newline="", encoding="utf-8") as fh:
        recs = list(csv.DictReader(fh))
    recs[row][column] = value
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(recs[0]))
        w.writeheader()
        w.writerows(recs)


def _move_points_outside(tmp_path: Path, root: Path) -> Path:
    """Move the pair's points CSV out of the dataset; returns its new place."""
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "cells.csv"
    (root / "test/000_cells.csv").rename(target)
    return target


def _refs(tmp_path: Path, root: Path, kind: str) -> str:
    """The cell_points value of each way out of the dataset."""
    target = _move_points_outside(tmp_path, root)
    if kind == "dotdot":
        return "../outside/cells.csv"
    if kind == "absolute":
        return str(target)
    if kind == "symlink":
        (root / "test/link.csv").symlink_to(target)
        return "test/link.csv"
    if kind == "symlinked_dir":
        (root / "linkdir").symlink_to(target.parent, target_is_directory=True)
        return "linkdir/cells.csv"
    raise AssertionError(kind)


# ---------------------------------------------------------------- paths out of the dataset
@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "symlinked_dir"])
def test_outside_points_path_refused_naming_pairs_csv_and_row(tmp_path, kind):
    root = _own(tmp_path)
    _set_column(root, "cell_points", _refs(tmp_path, root, kind))
    with pytest.raises(InputError) as ei:
        open_dataset(root).split("test").load("000")
    e = ei.value
    assert Path(e.path).name == "pairs.csv" and e.row == 2
    assert "cell_points" in e.problem and "outside the dataset" in e.problem
    assert "--allow-outside-paths" in e.problem


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "symlinked_dir"])
def test_outside_paths_read_when_allowed(tmp_path, kind):
    root = _own(tmp_path)
    _set_column(root, "cell_points", _refs(tmp_path, root, kind))
    pair = open_dataset(root, allow_outside_paths=True).split("test").load("000")
    assert pair.cell_points is not None and len(pair.cell_points) == 12


@pytest.mark.parametrize("column", ["cell_image", "tissue_image", "tissue_mask"])
def test_every_file_column_is_checked(tmp_path, column):
    root = _own(tmp_path)
    _set_column(root, column, "../../../etc/passwd")
    with pytest.raises(InputError) as ei:
        open_dataset(root).split("test").load("000")
    assert Path(ei.value.path).name == "pairs.csv" and ei.value.row == 2 and column in ei.value.problem


def test_pairs_index_outside_refused_naming_the_descriptor(tmp_path):
    root = _own(tmp_path)
    (root / "pairs.csv").rename(tmp_path / "pairs.csv")
    desc = yaml.safe_load((root / "dataset.yaml").read_text())
    desc["pairs"] = "../pairs.csv"
    (root / "dataset.yaml").write_text(yaml.safe_dump(desc))
    with pytest.raises(InputError) as ei:
        open_dataset(root)
    assert Path(ei.value.path).name == "dataset.yaml" and "pairs" in ei.value.problem
    assert "outside the dataset" in ei.value.problem


def test_refused_file_content_never_in_the_message(tmp_path):
    root = _own(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET + "\n" + SECRET + "\n")
    for value in ("../secret.txt", str(secret)):
        _set_column(root, "cell_points", value)
        with pytest.raises(InputError) as ei:
            open_dataset(root).split("test").load("000")
        assert "TOP-SECRET" not in str(ei.value) and "root:x" not in str(ei.value)


def test_allowed_non_csv_file_shows_only_a_bounded_excerpt(tmp_path):
    root = _own(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("A" * 500 + "\x00\x1b" + SECRET + "\n")
    _set_column(root, "cell_points", str(secret))
    with pytest.raises(InputError) as ei:
        open_dataset(root, allow_outside_paths=True).split("test").load("000")
    msg = str(ei.value)
    assert "A" * (EXCERPT_CHARS + 1) not in msg and "TOP-SECRET" not in msg and "\x00" not in msg


def test_points_csv_errors_quote_a_bounded_printable_excerpt(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text("x" * 300 + "\x07,1,2\n")
    with pytest.raises(InputError) as ei:
        read_points_csv(f)
    msg = str(ei.value)
    assert "x" * (EXCERPT_CHARS + 1) not in msg and "\x07" not in msg and "..." in msg
    f.write_text(SECRET + "\n")  # one column: /etc/passwd-like lines used to be echoed whole
    with pytest.raises(InputError) as ei:
        read_points_csv(f)
    assert SECRET not in str(ei.value)


def test_excerpt_and_resolve_inside_units(tmp_path):
    assert excerpt("abc") == "'abc'"
    assert excerpt("a\nb") == "'a\\nb'"
    assert excerpt("z" * 100) == "'" + "z" * EXCERPT_CHARS + "'..."
    assert resolve_inside(tmp_path, "a/b.csv") == (tmp_path / "a/b.csv").resolve()
    with pytest.raises(InputError):
        resolve_inside(tmp_path, "a/../../b.csv")
    assert resolve_inside(tmp_path, "a/../../b.csv", allow_outside=True) == (tmp_path.parent / "b.csv").resolve()


# ---------------------------------------------------------------- CLI
@pytest.mark.parametrize("kind", ["dotdot", "symlink"])
def test_cli_stats_allow_outside_paths(tmp_path, capsys, kind):
    root = _own(tmp_path)
    _set_column(root, "cell_points", _refs(tmp_path, root, kind))
    assert main(["stats", str(root), "--json"]) == 2
    err = capsys.readouterr().err
    assert "pairs.csv:2" in err and "--allow-outside-paths" in err and "Traceback" not in err
    assert main(["stats", str(root), "--json", "--allow-outside-paths"]) == 0
    assert json.loads(capsys.readouterr().out)


def test_cli_flag_on_every_dataset_command():
    from histozoom.cli import build_parser

    parser = build_parser()
    for argv in (["stats", "D", "--allow-outside-paths"],
                 ["predict", "--checkpoint", "R", "--data", "D", "--out", "o.json", "--allow-outside-paths"],
                 ["evaluate", "--pred", "p.json", "--gt", "D", "--allow-outside-paths"],
                 ["train", "--out", "R", "--allow-outside-paths"]):
        assert parser.parse_args(argv).allow_outside_paths is True


def test_train_config_saves_allow_outside_paths(tmp_path):
    from histozoom.training.config import TrainConfig

    cfg = TrainConfig(data="D", allow_outside_paths=True)
    cfg.save(tmp_path / "c.json")
    assert json.loads((tmp_path / "c.json").read_text())["allow_outside_paths"] is True
    assert TrainConfig.load(tmp_path / "c.json").allow_outside_paths is True
    assert TrainConfig().allow_outside_paths is False


# ---------------------------------------------------------------- mpp
def _assert_mpp_error(e: InputError, file_name: str, field: str) -> None:
    assert Path(e.path).name == file_name, str(e)
    assert field in e.problem and "0.01..100" in e.problem, str(e)


@pytest.mark.parametrize("value", BAD_MPP)
def test_check_mpp(value):
    with pytest.raises(InputError) as ei:
        check_mpp(value, "f.json", "mpp")
    assert repr(float(value)) in ei.value.problem
    assert check_mpp(0.25, None) == 0.25 and check_mpp("0.5", None) == 0.5


@pytest.mark.parametrize("field", ["cell_mpp", "tissue_mpp"])
@pytest.mark.parametrize("value", BAD_MPP)
def test_own_layout_descriptor_mpp(tmp_path, field, value):
    root = _own(tmp_path)
    desc = yaml.safe_load((root / "dataset.yaml").read_text())
    desc[field] = value
    (root / "dataset.yaml").write_text(yaml.safe_dump(desc))
    with pytest.raises(InputError) as ei:
        open_dataset(root)
    _assert_mpp_error(ei.value, "dataset.yaml", field)


@pytest.mark.parametrize("field", ["cell_mpp", "tissue_mpp"])
@pytest.mark.parametrize("value", BAD_MPP)
def test_own_layout_row_mpp(tmp_path, field, value):
    root = _own(tmp_path)
    _set_column(root, field, repr(float(value)))
    with pytest.raises(InputError) as ei:
        open_dataset(root).split("test").load("000")
    _assert_mpp_error(ei.value, "pairs.csv", field)
    assert ei.value.row == 2


def _release_with(tmp_path: Path, value: float, where: str) -> Path:
    root = tmp_path / "rel"
    with OcelotReleaseWriter(root, DatasetSpec(OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES)) as w:
        w.add(make_pair(np.random.default_rng(0)), "test", image_ext=".png")
    meta = json.loads((root / "metadata.json").read_text())
    if where == "classes":
        meta["classes"]["tissue_mpp"] = value
    elif where == "level0":
        meta["sample_pairs"]["000"]["mpp_x"] = value
    else:
        meta["sample_pairs"]["000"][where]["resized_mpp_x"] = value
    (root / "metadata.json").write_text(json.dumps(meta))  # NaN / Infinity: Python's JSON extension
    return root


@pytest.mark.parametrize("where,field", [("cell", "cell.resized_mpp_x"), ("tissue", "tissue.resized_mpp_x"),
                                         ("classes", "tissue_mpp"), ("level0", "mpp_x")])
@pytest.mark.parametrize("value", BAD_MPP)
def test_release_metadata_mpp(tmp_path, where, field, value):
    root = _release_with(tmp_path, value, where)
    with pytest.raises(InputError) as ei:
        open_dataset(root).split("test").load("000")
    _assert_mpp_error(ei.value, "metadata.json", field)


@pytest.mark.parametrize("view", ["cell", "tissue"])
@pytest.mark.parametrize("value", BAD_MPP)
def test_container_metadata_mpp(tmp_path, view, value):
    root = tmp_path / "c"
    write_container(root, [make_pair(np.random.default_rng(0))])
    meta = json.loads((root / "metadata.json").read_text())
    meta[0][view]["resized_mpp_x"] = value
    (root / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(InputError) as ei:
        open_dataset(root).split("container").load("000")
    _assert_mpp_error(ei.value, "metadata.json", f"{view}.resized_mpp_x")


@pytest.mark.parametrize("value", BAD_MPP)
def test_nuclei_class_file_mpp(tmp_path, value):
    f = tmp_path / "classes.json"
    f.write_text(json.dumps({"classes": ["a", "b"], "mpp": value}))
    with pytest.raises(InputError) as ei:
        read_class_file(f)
    _assert_mpp_error(ei.value, "classes.json", "mpp")
