"""Outputs are checked before the work, written whole or not at all, one process per run
folder, and permission problems are named errors (exit 2), never tracebacks."""

from __future__ import annotations

import argparse
import errno
import os
import tempfile

import pytest

from conftest import write_tiny_synthetic
from histozoom import atomic
from histozoom.cli import main
from histozoom.data import io as data_io
from histozoom.data.open import open_dataset
from histozoom.errors import InputError
from histozoom.folder_lock import folder_lock
from histozoom.inference.predictor import Predictions
from histozoom.jsonio import read_text
from histozoom.pair import OCELOT_CELL_CLASSES

TRAIN = ["--model", "cell-only", "--epochs", "1", "--size", "32", "--batch-size", "2", "--no-progress",
         "--model-arg", "encoder_name=tu-test_resnet", "--model-arg", "decoder_channels=16"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny_synthetic(tmp_path_factory.mktemp("d") / "data")


def _predictions(data):
    sp = open_dataset(data).split("test")
    return Predictions({k: sp.points(s) for k, s in enumerate(sp.ids)}, list(sp.ids), OCELOT_CELL_CLASSES)


# ---------------------------------------------------------------------- checked before the work
@pytest.mark.parametrize("flag,existing", [("--out", "dir"), ("--table", "dir"), ("--csv", "file")])
def test_predict_output_checked_before_the_model_is_loaded(data, tmp_path, capsys, flag, existing):
    target = tmp_path / "target"
    target.mkdir() if existing == "dir" else target.write_text("x")
    rc = main(["predict", "--checkpoint", str(tmp_path / "no-such-run"), "--data", str(data), flag, str(target)])
    err = capsys.readouterr().err
    assert rc == 2 and str(target) in err and "existing" in err and "no-such-run" not in err


def test_evaluate_out_an_existing_file_is_refused_before_scoring(data, tmp_path, capsys):
    _predictions(data).write_challenge_json(tmp_path / "p.json")
    (tmp_path / "res").write_text("keep me")
    rc = main(["evaluate", "--pred", str(tmp_path / "p.json"), "--gt", str(data), "--split", "test",
               "--out", str(tmp_path / "res")])
    err = capsys.readouterr().err
    assert rc == 2 and "is an existing file" in err and "[evaluate] matching" not in err
    assert (tmp_path / "res").read_text() == "keep me"


@pytest.mark.parametrize("argv", [["train", "--data", "{data}", "--out", "{f}", *TRAIN],
                                  ["experiment", "--data", "{data}", "--out", "{f}", "--dry-run"],
                                  ["nuclei", "predict", "--checkpoint", "{f}x", "--input", "{data}", "--out", "{f}"],
                                  ["nuclei", "evaluate", "--pred", "{data}", "--gt", "{data}", "--out", "{f}"]])
def test_folder_outputs_that_are_files_are_named_errors(data, tmp_path, capsys, argv):
    f = tmp_path / "afile"
    f.write_text("keep me")
    rc = main([a.format(data=data, f=f) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and "is an existing file" in err and "Traceback" not in err
    assert f.read_text() == "keep me"


# ---------------------------------------------------------------------- whole or not at all
def test_csv_folder_appears_whole_or_not_at_all(data, tmp_path, monkeypatch):
    preds = _predictions(data)
    out = tmp_path / "csv"
    real, calls = data_io.write_points_csv, []

    def dies_on_second(path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # a kill half-way
        return real(path, *a, **k)

    monkeypatch.setattr(data_io, "write_points_csv", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        preds.write_csv_folder(out)
    assert not out.exists() and not list(tmp_path.glob(".csv*"))
    monkeypatch.setattr(data_io, "write_points_csv", real)
    preds.write_csv_folder(out)
    assert sorted(p.stem for p in out.iterdir()) == list(preds.ids)
    # a re-run replaces the old CSVs; a folder holding anything else is not replaced
    (out / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="notes.txt"):
        preds.write_csv_folder(out)
    assert (out / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------------- one process per run folder
def test_second_process_on_a_run_folder_is_told_it_is_in_use(data, tmp_path, capsys):
    run = tmp_path / "run"
    with folder_lock(run, "training run folder"):
        rc = main(["train", "--data", str(data), "--out", str(run), *TRAIN])
    err = capsys.readouterr().err
    assert rc == 2 and f"in use by another histozoom process (pid {os.getpid()})" in err
    assert main(["train", "--data", str(data), "--out", str(run), *TRAIN]) == 0  # free again
    assert (run / "best.ckpt").is_dir()


def test_lock_is_released_when_the_holder_fails(tmp_path):
    with pytest.raises(RuntimeError), folder_lock(tmp_path / "r"):
        raise RuntimeError("boom")
    with folder_lock(tmp_path / "r"):
        pass


# ---------------------------------------------------------------------- permission denied
def _denied(*a, **k):
    raise PermissionError(errno.EACCES, "Permission denied", "somefile")


def test_unwritable_output_is_a_named_error(data, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "mkstemp", _denied)
    with pytest.raises(InputError, match=r"p\.json: cannot write output \(Permission denied\)"):
        _predictions(data).write_challenge_json(tmp_path / "p.json")
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    with pytest.raises(InputError, match="permission denied in"):
        atomic.check_output(tmp_path / "q.json")


def test_unreadable_inputs_are_named_errors(data, tmp_path, monkeypatch):
    img = next((data / "images" / "test" / "cell").iterdir())
    monkeypatch.setattr(data_io.Image, "open", _denied)
    with pytest.raises(InputError, match=r"cannot read image \(permission denied\)") as e:
        data_io.read_image(img)
    assert str(img) in str(e.value)
    monkeypatch.setattr(type(img), "read_text", _denied)
    with pytest.raises(InputError, match="cannot read metadata file"):
        read_text(data / "metadata.json", "metadata")


def test_cli_turns_a_stray_file_error_into_exit_2(monkeypatch, capsys):
    import histozoom.cli as cli

    class Parser:
        def parse_args(self, argv):
            return argparse.Namespace(command="evaluate", func=lambda args: _denied())

    monkeypatch.setattr(cli, "build_parser", Parser)
    assert cli.main([]) == 2
    assert "histozoom evaluate: error: somefile: Permission denied" in capsys.readouterr().err


def test_predict_on_an_empty_split_warns(data, tmp_path, capsys):
    import shutil

    from histozoom.models.checkpoint import save_pretrained
    from histozoom.models.registry import build_model

    empty = tmp_path / "empty"
    shutil.copytree(data, empty)
    for f in (empty / "images" / "test").rglob("*.jpg"):
        f.unlink()
    spec = open_dataset(data).spec
    save_pretrained(build_model("cell-only", encoder_name="tu-test_resnet", decoder_channels=16).eval(),
                    tmp_path / "ck", extra={"spec": spec.to_dict()})
    assert main(["predict", "--checkpoint", str(tmp_path / "ck"), "--data", str(empty), "--split", "test",
                 "--out", str(tmp_path / "p.json"), "--no-progress"]) == 0
    assert "no pairs to predict" in capsys.readouterr().err


def test_a_closed_output_pipe_ends_quietly(tmp_path):
    """`histozoom ... --json | head -1`: no traceback when the reader has gone."""
    import os
    import subprocess
    import sys

    r, w = os.pipe()
    os.close(r)  # every write to w now fails with EPIPE
    try:
        p = subprocess.run([sys.executable, "-m", "histozoom", "synth", "slide", str(tmp_path / "s.tiff"), "--width-mm", "0.1",
                            "--height-mm", "0.1", "--json"], stdout=w, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(w)
    assert "Traceback" not in p.stderr and p.returncode == 141
    assert (tmp_path / "s.tiff").is_file()  # the work itself was done and kept
