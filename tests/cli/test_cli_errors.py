"""Bad options end with a one-line error and exit status 2, never a traceback."""

from __future__ import annotations

from conftest import write_tiny_synthetic
from histozoom.cli import main


def test_size_the_model_cannot_take_is_a_named_error(tmp_path, capsys):
    data = write_tiny_synthetic(tmp_path / "data")
    rc = main(["train", "--data", str(data), "--model", "unet-cell-only", "--out", str(tmp_path / "run"),
               "--size", "48", "--epochs", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "histozoom train: error:" in err and "multiple of 32" in err and "unet-cell-only" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "last").exists()


def test_unknown_model_override_is_a_named_error(tmp_path, capsys):
    data = write_tiny_synthetic(tmp_path / "data")
    rc = main(["train", "--data", str(data), "--model", "cell-only", "--out", str(tmp_path / "run"),
               "--size", "64", "--epochs", "1", "--model-arg", "no_such_field=3"])
    err = capsys.readouterr().err
    assert rc == 2 and "no_such_field" in err and "Traceback" not in err
