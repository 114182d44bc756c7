"""Text and JSON in and out: readers that name the file on every failure, and one converter
that turns results (numpy scalars and arrays, tuples, paths, NaN) into strict JSON.

JSON has no NaN: an undefined score (NaN) is written as ``null``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError


def read_json(path: str | Path, what: str = "JSON") -> Any:
    """Parse the JSON file ``path``.

    Raises :class:`InputError` naming the file for a missing or unreadable file, bytes that
    are not UTF-8, or invalid JSON (with line and column). ``what`` names the expected
    content in the messages (e.g. ``"metadata"``).
    """
    return parse_json(read_text(path, what), path, what)


def read_text(path: str | Path, what: str = "text", encoding: str = "utf-8") -> str:
    """The text of ``path``; a missing or unreadable file, or bytes that are not valid in
    ``encoding`` (``"utf-8-sig"`` also skips a byte-order mark), raise :class:`InputError`
    naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, f"{what} file not found")
    try:
        return path.read_text(encoding=encoding)
    except UnicodeDecodeError as e:
        raise InputError(path, f"{what} file is not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise InputError(path, f"cannot read {what} file ({e.strerror or e})") from None


def parse_json(text: str, path: str | Path | None = None, what: str = "JSON") -> Any:
    """Parse JSON ``text`` read from ``path``; invalid JSON raises :class:`InputError`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(path, f"invalid {what} (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except RecursionError:
        raise InputError(path, f"invalid {what} (nested too deeply)") from None


def nan_to_none(v: Any) -> float | None:
    """``float(v)``, or ``None`` for ``None`` and NaN (JSON ``null``)."""
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v


def jsonable(o: Any) -> Any:
    """``o`` with every value JSON can hold: dict keys as strings, tuples and arrays as
    lists, numpy scalars as Python numbers, NaN as ``None``, paths as strings."""
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return jsonable(o.tolist())
    if isinstance(o, (bool, np.bool_)):
        return bool(o)
    if isinstance(o, (int, np.integer)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        return nan_to_none(o)
    if isinstance(o, Path):
        return str(o)
    return o
