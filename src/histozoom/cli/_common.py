"""Helpers shared by subcommands: JSON output on stdout."""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np


def _default(o: Any):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def print_json(obj: Any) -> None:
    """Print exactly one JSON document on stdout (what ``--json`` promises)."""
    json.dump(obj, sys.stdout, indent=2, default=_default)
    sys.stdout.write("\n")
