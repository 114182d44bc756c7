"""Building the parser, ``--help`` and argument errors import no torch (nor scipy,
skimage): they are instant. The cheap copies of library constants the parsers use
(:mod:`histozoom.cli._static`) must equal their sources."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from histozoom.cli import _static

HEAVY = ("torch", "torchvision", "timm", "segmentation_models_pytorch", "scipy", "skimage", "matplotlib")

_PROBE = """
import sys
from histozoom.cli import build_parser, main
argv = sys.argv[1:]
if argv == ["build"]:
    build_parser()
else:
    try:
        main(argv)
    except SystemExit:
        pass
print(sorted(m for m in {heavy!r} if m in sys.modules))
"""


@pytest.mark.parametrize("argv", [["build"], ["--help"], ["train", "--help"], ["nuclei", "train", "--help"],
                                  ["predict", "--help"], ["evaluate", "--help"], ["experiment", "--help"],
                                  ["train", "--out", "R", "--epochs", "-5"], ["evaluate", "--pred", "P", "--gt", "G",
                                                                             "--radius-um", "inf"], []])
def test_parser_help_and_argument_errors_import_no_heavy_module(argv):
    out = subprocess.run([sys.executable, "-c", _PROBE.format(heavy=HEAVY), *argv], capture_output=True, text=True,
                         timeout=120)
    assert "Traceback" not in out.stderr, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", (argv, out.stdout)


def test_build_parser_does_not_import_torch():
    code = "import sys; from histozoom.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"


def test_registry_copies_match_the_registry():
    """The parsers' model names and size-multiple texts (``cli/_static.py``) are copies of
    the registry's, which imports torch; every other shared value lives once in
    ``histozoom.constants``."""
    from histozoom.models import registry

    for family in ("cell-tissue", "nuclei"):
        assert _static.MODEL_NAMES[family] == tuple(registry.list_models(family)), family
        assert _static.SIZE_MULTIPLES_TEXT[family] == registry.describe_size_multiples(family), family
    from histozoom.inference import engines

    assert (_static.ENGINES, _static.CPU_DEFAULT_ENGINE) == (engines.ENGINES, engines.CPU_DEFAULT)


def test_constants_module_imports_nothing():
    code = "import sys; before = set(sys.modules); import histozoom.constants; print(sorted(set(sys.modules) - before))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert set(ast.literal_eval(out.stdout)) <= {"__future__", "histozoom", "histozoom.constants"}
