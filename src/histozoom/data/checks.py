"""Checks every reader shares: paths taken from data files stay inside their dataset,
microns per pixel are sane, and error messages quote file content only as a short excerpt."""

from __future__ import annotations

import math
import os
from pathlib import Path

from ..errors import InputError

MPP_RANGE = (0.01, 100.0)
"""Accepted microns per pixel, both ends included: from far beyond any optical scanner's
finest resolution (0.01 µm/px) to a whole-slide thumbnail (100 µm/px)."""

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
