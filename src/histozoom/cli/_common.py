"""Helpers shared by subcommands: JSON output on stdout and ``KEY=VALUE`` options."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..jsonio import jsonable


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
