"""Atomic writes: write to a temporary name in the target folder, then rename.

A crash (or a bad input found half-way) never leaves a half-written file under the
final name, and an existing file is only replaced once the new one is complete.

Permissions: :func:`tempfile.mkstemp` creates files with mode 0600 (and
:func:`tempfile.mkdtemp`-style folders 0700), which a rename would keep. Outputs get the
modes a plain ``open()`` / ``mkdir()`` would give instead: ``0o666 & ~umask`` for files,
``0o777 & ~umask`` for folders.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal

from .errors import InputError


def _read_umask() -> int:
    """The process umask. Linux exposes it in ``/proc/self/status`` (read-only, no race);
    elsewhere it can only be read by setting it, so it is set and restored at once, at
    import time (a file another thread creates in that instant would get umask 022 — the reason
    to do it once, at import, before worker threads exist, and not per write)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


_UMASK = _read_umask()
FILE_MODE = 0o666 & ~_UMASK
"""Mode of files written here: what ``open(path, "w")`` gives (``0o644`` under umask 022)."""
DIR_MODE = 0o777 & ~_UMASK
"""Mode of folders made by :func:`atomic_dir`: what ``mkdir`` gives (``0o755`` under umask 022)."""


def cannot_write(path: str | Path, e: OSError) -> InputError:
    """The named error for an output that the OS refuses (permission, read-only, full disk)."""
    return InputError(path, f"cannot write output ({e.strerror or type(e).__name__})")


def check_output(path: str | Path, kind: Literal["file", "folder"] = "file") -> Path:
    """Refuse, before any work is done, an output path that cannot be written.

    A ``"file"`` output must not be an existing folder and a ``"folder"`` output not an
    existing file; the nearest existing folder on the way must be writable. Returns ``path``.
    """
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise InputError(path, "is an existing folder; give a file name for this output")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise InputError(path, "is an existing file; give a folder name for this output")
    base = path if (kind == "folder" and path.is_dir()) else path.absolute().parent
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise InputError(path, f"cannot create the output: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise InputError(path, f"cannot write output (permission denied in {base})")
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    ``suffix`` defaults to the target's suffix so writers that infer the format from
    the extension (PIL, tifffile, safetensors) behave as for the final name.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix if suffix is None else suffix,
                                   dir=path.parent)
    except OSError as e:
        raise cannot_write(path, e) from None
    os.close(fd)
    os.chmod(tmp, FILE_MODE)  # mkstemp's 0600 would survive the rename
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        try:
            os.replace(tmp_path, path)
        except OSError as e:
            raise cannot_write(path, e) from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file for writing; it replaces ``path`` only when the block ends cleanly."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON atomically."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=indent)
        fh.write("\n")


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder next to ``path``; on success it replaces ``path``.

    The old folder is renamed aside first and removed after the swap; if a crash leaves
    only the aside copy, :func:`recover_dir` puts it back.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp"
    old = path.parent / f".{path.name}.old"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    except OSError as e:
        raise cannot_write(path, e) from None
    os.chmod(tmp, DIR_MODE)  # as mkdir under the umask; explicit so that it does not depend on how tmp was made
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old.exists():
        shutil.rmtree(old)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(path: str | Path) -> None:
    """Undo an interrupted :func:`atomic_dir` swap (the aside copy goes back)."""
    path = Path(path)
    old = path.parent / f".{path.name}.old"
    if not path.exists() and old.exists():
        os.replace(old, path)
