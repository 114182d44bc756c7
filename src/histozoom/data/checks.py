"""Checks every reader shares: paths taken from data files stay inside their dataset,
microns per pixel are sane, class sets are well formed, and error messages quote file
content only as a short excerpt."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

from ..constants import MPP_RANGE
from ..errors import InputError
from ..pair import ClassSet

EXCERPT_CHARS = 40
"""At most this many characters of a file's content appear in an error message."""


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """``value`` as a short excerpt for an error message: at most ``limit`` characters
    of a text (``str``/``bytes``, shown in quotes) or of another value's ``repr``,
    non-printable characters escaped (``\\n``, ``\\x00``), ``...`` appended when cut.
    Only for content of files the user meant to be read — never of a refused path's file."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    text = value if isinstance(value, str) else repr(value)
    cut = len(text) > limit
    text = text[:limit]
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    if isinstance(value, str):
        shown = f"'{shown}'"
    return shown + ("..." if cut else "")


def resolve_inside(
    root: str | Path,
    relpath: str | Path,
    *,
    allow_outside: bool = False,
    source: str | Path | None = None,
    row: int | None = None,
    what: str = "path",
) -> Path:
    """The file ``relpath`` (relative to ``root``) names, with symlinks resolved.

    Without ``allow_outside`` the resolved path must lie inside the resolved ``root``:
    absolute paths, ``..`` steps and symlinks that lead outside raise :class:`InputError`
    naming ``source`` (the data file the path was read from, default ``root``) and
    ``row``. The refused file is never opened, and its content never shown.
    """
    where = source if source is not None else root
    try:
        root_r = Path(os.path.realpath(root))
        rel = Path(relpath)
        target = Path(os.path.realpath(root_r / rel))  # an absolute rel replaces root_r
    except (OSError, ValueError) as e:  # embedded NUL bytes, symlink loops
        raise InputError(where, f"{what} {excerpt(relpath, 200)} is not a usable path ({type(e).__name__})", row=row) from None
    if allow_outside:
        return target
    if target != root_r and root_r not in target.parents:
        how = "an absolute path" if rel.is_absolute() else "a path that leads (via '..' or a symlink)"
        raise InputError(
            where,
            f"{what} {excerpt(relpath, 200)} is {how} outside the dataset folder {root_r}; "
            "pass allow_outside_paths=True (CLI: --allow-outside-paths) to read it anyway",
            row=row,
        )
    return target


def check_mpp(value: object, source: str | Path | None, what: str = "mpp", row: int | None = None) -> float:
    """``value`` as microns per pixel: a finite number in :data:`MPP_RANGE`
    (0.01–100 µm/px), else :class:`InputError` naming ``source`` (and ``row``), the field
    ``what`` and the value."""
    lo, hi = MPP_RANGE
    try:
        if isinstance(value, bool):
            raise TypeError
        mpp = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InputError(source, f"{what} must be a number in µm/px, got {excerpt(value)}", row=row) from None
    if not math.isfinite(mpp) or not lo <= mpp <= hi:
        raise InputError(source, f"{what} must be a finite number in {lo:g}..{hi:g} µm/px, got {mpp!r}", row=row)
    return mpp


def class_set(value: object, path: str | Path | None, key: str, ignore: object = None,
              ignore_key: str = "tissue_ignore", names_ok: bool = False) -> ClassSet:
    """A class set read from a data file: ``{id: name}`` (ids may be JSON strings) or, with
    ``names_ok``, a list of names numbered 1, 2, ...; ``ignore`` (the label value ignored in
    losses and metrics) an integer in [0, 255] or ``None``. Anything else is an InputError
    naming the file and ``key`` (or ``ignore_key``)."""
    if ignore is not None and (isinstance(ignore, bool) or not isinstance(ignore, int) or not 0 <= ignore <= 255):
        raise InputError(path, f"{ignore_key} must be an integer in [0, 255] or null, got {excerpt(ignore)}")
    try:
        if isinstance(value, Mapping) and value:
            return ClassSet.from_mapping(value, ignore)
        if names_ok and isinstance(value, list) and value:
            return ClassSet.from_names([str(v) for v in value], ignore)
    except (TypeError, ValueError) as e:
        raise InputError(path, f"{key}: {e}") from None
    expected = "a non-empty list of names or a mapping id -> name" if names_ok else "a non-empty mapping id -> name"
    raise InputError(path, f"{key}: expected {expected}, got {excerpt(value)}")
