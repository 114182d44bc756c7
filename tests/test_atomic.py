"""Atomic writes leave files and folders with the modes the umask gives a plain open()/mkdir()."""

import subprocess
import sys

import pytest

_SCRIPT = """
import os, stat, sys
os.umask(int(sys.argv[2], 8))
from histozoom.atomic import atomic_dir, write_json
root = sys.argv[1]
write_json(os.path.join(root, "a.json"), {"x": 1})
with atomic_dir(os.path.join(root, "d")) as d:
    (d / "f.txt").write_text("x")
print(oct(stat.S_IMODE(os.stat(os.path.join(root, "a.json")).st_mode)),
      oct(stat.S_IMODE(os.stat(os.path.join(root, "d")).st_mode)))
"""


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [("022", "0o644", "0o755"), ("077", "0o600", "0o700"),
                                                             ("002", "0o664", "0o775")])
def test_outputs_respect_umask(tmp_path, umask, file_mode, dir_mode):
    out = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path), umask], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [file_mode, dir_mode]
