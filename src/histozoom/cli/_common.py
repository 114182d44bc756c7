"""Helpers shared by subcommands: JSON output on stdout, ``KEY=VALUE`` options, and the
``type=`` functions that validate numeric options at parse time.

The numeric types (:func:`positive_int`, :func:`nonnegative_int`, :func:`positive_float`,
:func:`nonnegative_float`, :func:`probability` and the bounds below) raise
:class:`argparse.ArgumentTypeError`, so a bad value ends the command with exit status 2
and one line such as ``histozoom train: error: argument --epochs: expected an integer in
[1, 100000], got '-5'`` — no traceback. NaN and infinities are always rejected.

This module is imported by every subcommand's ``register``: it must stay cheap (no torch,
no scipy; ``histozoom --help`` imports it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from typing import Any

from ..constants import MPP_RANGE
from ..jsonio import jsonable

# ---------------------------------------------------------------------- bounds of numeric options
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 4096
MAX_SIDE = 16_384
"""Largest image / input / crop side in pixels (a 16k x 16k RGB float tensor is 3 GiB)."""
MAX_EVAL_SIDE = 1_000_000
"""Largest image side for ``evaluate --image-size`` (only used to check coordinates)."""
MAX_BOOTSTRAP = 1_000_000
"""Bootstrap resamples (0 = off); 10x the report's 10,000 and still a few GiB at most."""
MAX_SEED = 2**32 - 1
"""numpy's ``SeedSequence`` range for a plain int seed."""
MAX_MPP = MPP_RANGE[1]
"""µm per pixel (0.2 at 40x; 100 is a heavily down-sampled overview): the readers' upper bound."""
MAX_UM = 1000.0
"""Distances in µm (hit radius, peak distance): 1 mm."""
MAX_LR = 10.0
MAX_WORKERS = 1024
MAX_SYNTH = 100_000
"""Images a synthetic-data command may write (each a ~1 MB image pair at the defaults)."""
MAX_COUNT = 10_000_000
"""Counts of things (images, batches, seeds) that have no tighter natural bound."""


def _numeric_type(parse: Callable[[str], float], kind: str, lo: float, hi: float | None,
                  lo_open: bool = False) -> Callable[[str], Any]:
    lo_s = f"({lo:g}" if lo_open else f"[{lo:g}"
    hi_s = "inf)" if hi is None else f"{hi:g}]"
    desc = f"{kind} in {lo_s}, {hi_s}"

    def check(text: str):
        try:
            v = parse(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {desc}, got {text!r}") from None
        if not math.isfinite(v) or v < lo or (lo_open and v == lo) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"expected {desc}, got {text!r}")
        return v

    check.__name__ = kind.split()[-1]  # what argparse would name the type in its own messages
    check.bounds = (lo, hi)  # for tests and documentation
    return check


def _int(text: str) -> int:
    return int(text.strip())


def bounded_int(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """``type=`` for an integer in ``[lo, hi]`` (``hi=None``: no upper bound)."""
    return _numeric_type(_int, "an integer", lo, hi)


def positive_int(max: int | None = None) -> Callable[[str], int]:
    """``type=`` for an integer in ``[1, max]``."""
    return bounded_int(1, max)


def nonnegative_int(max: int | None = None) -> Callable[[str], int]:
    """``type=`` for an integer in ``[0, max]`` (0 usually means "off")."""
    return bounded_int(0, max)


def positive_float(max: float | None = None) -> Callable[[str], float]:
    """``type=`` for a finite number in ``(0, max]``."""
    return _numeric_type(float, "a number", 0.0, max, lo_open=True)


def nonnegative_float(max: float | None = None) -> Callable[[str], float]:
    """``type=`` for a finite number in ``[0, max]``."""
    return _numeric_type(float, "a number", 0.0, max)


probability = _numeric_type(float, "a number", 0.0, 1.0)
"""``type=`` for a number in [0, 1]: probabilities, thresholds, dropout rates, fractions."""

mpp = positive_float(MAX_MPP)
"""``type=`` for µm per pixel: in (0, 100]."""

seed = nonnegative_int(MAX_SEED)
"""``type=`` for a random seed: an integer in [0, 2**32 - 1]."""


def size_pair(max_side: int = MAX_EVAL_SIDE) -> Callable[[str], tuple[int, int]]:
    """``type=`` for ``N`` or ``WxH`` (also ``W,H``) with positive sides up to ``max_side``."""

    def check(text: str) -> tuple[int, int]:
        try:
            parts = [int(v) for v in text.lower().replace("x", ",").split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected N or WxH, got {text!r}") from None
        if len(parts) == 1:
            parts = parts * 2
        if len(parts) != 2 or min(parts) <= 0 or max(parts) > max_side:
            raise argparse.ArgumentTypeError(f"expected N or WxH with sizes in [1, {max_side}], got {text!r}")
        return parts[0], parts[1]

    check.__name__ = "size"
    return check



def add_engine_argument(p: argparse.ArgumentParser) -> None:
    """``--engine auto|torch|onnxruntime|openvino`` (:mod:`histozoom.inference.engines`) and ``--compile``."""
    from ._static import CPU_DEFAULT_ENGINE, ENGINES

    p.add_argument("--engine", choices=("auto", *ENGINES), default="auto",
                   help=f"what runs the network: auto (default: {CPU_DEFAULT_ENGINE} on the CPU, the fastest measured "
                        f"here; torch on a GPU), {', '.join(ENGINES)}")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (torch engine; for GPUs: "
                                                          "the first batches are slow, the rest faster)")


def print_json(obj: Any) -> None:
    """Print exactly one strict JSON document on stdout (what ``--json`` promises); NaN
    (an undefined score) is written as ``null``."""
    json.dump(jsonable(obj), sys.stdout, indent=2, allow_nan=False)
    sys.stdout.write("\n")


def key_value(text: str) -> tuple[str, object]:
    """Parse a ``KEY=VALUE`` option; VALUE is read as JSON when it parses (``3``,
    ``[64,32]``, ``true``), else kept as a string (``resnet18``)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    try:
        value = json.loads(v)
    except json.JSONDecodeError:
        value = v
    return k.strip(), value
