"""MATLAB ``.mat`` (v5 / v7 format) numeric variables, read safely.

SciPy's MAT reader is compiled code that trusts the file: a flipped byte in a
variable's flags (a "complex" bit with no imaginary part) or in a data type crashes the
interpreter (segmentation fault) instead of raising. :func:`read_mat_arrays` therefore
walks the file's structure in Python first -- the 128-byte header, every top-level
element, each requested variable's array flags, dimensions, name and data sub-elements,
with every byte count checked against its container -- decompresses ``miCOMPRESSED``
elements itself (bounded), and hands SciPy only a rebuilt, uncompressed stream holding
the requested variables, each of which has passed the checks. Anything else is an
:class:`~histozoom.errors.InputError` naming the file.

Format (MathWorks, "MAT-File Format", Level 5): a data element is an 8-byte tag
(``uint32`` type, ``uint32`` byte count) and its data padded to 8 bytes, or a "small"
element (byte count ``<= 4`` in the upper half of the type word, data in the next four
bytes). A variable is an ``miMATRIX`` element holding: array flags (``miUINT32`` × 2:
class in the low byte, complex/global/logical bits ``0x800``/``0x400``/``0x200``),
dimensions (``miINT32``), name (``miINT8``), then for numeric and char classes the real
part and, when complex, the imaginary part.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import InputError
from .io import max_image_pixels

__all__ = ["MatContents", "read_mat_arrays"]


class MatContents(NamedTuple):
    """What :func:`read_mat_arrays` reads: the requested ``arrays`` the file holds, and the
    ``names`` of all its variables in file order."""

    arrays: dict[str, np.ndarray]
    names: list[str]

MI_INT8, MI_INT32, MI_UINT32, MI_MATRIX, MI_COMPRESSED = 1, 5, 6, 14, 15
MI_ITEMSIZE = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 9: 8, 12: 8, 13: 8, 16: 1, 17: 2, 18: 4}
"""Byte size of each numeric / character data type (miINT8 ... miUTF32)."""
MX_CHAR = 4
MX_NUMERIC = range(6, 16)  # mxDOUBLE_CLASS ... mxUINT64_CLASS
MX_NAMES = {1: "a cell array", 2: "a struct", 3: "an object", 5: "a sparse matrix", 16: "a function handle",
            17: "an opaque object"}
COMPLEX_FLAG = 0x800
HEADER_BYTES = 128
HEADER_PEEK = 1 << 16
"""Bytes decompressed from a variable that is not requested, enough for its name."""


class _Reader:
    """Tag-level access to one buffer: ``end`` bounds every read."""

    def __init__(self, buf: bytes, order: str, path: Path, what: str):
        self.buf, self.order, self.path, self.what = buf, order, path, what

    def fail(self, problem: str) -> InputError:
        return InputError(self.path, f"corrupt MATLAB file: {self.what}: {problem}")

    def tag(self, pos: int, end: int) -> tuple[int, int, int, int]:
        """``(type, nbytes, data_start, next_pos)`` of the element at ``pos``."""
        if pos + 8 > end:
            raise self.fail(f"element tag at byte {pos} runs past the end of its container")
        word, nbytes = struct.unpack_from(self.order + "II", self.buf, pos)
        if word >> 16:  # small data element
            mtype, nbytes = word & 0xFFFF, word >> 16
            if nbytes > 4:
                raise self.fail(f"small element at byte {pos} claims {nbytes} bytes")
            return mtype, nbytes, pos + 4, pos + 8
        start = pos + 8
        if start + nbytes > end:
            raise self.fail(f"element at byte {pos} claims {nbytes} bytes, only {end - start} remain")
        return word, nbytes, start, min(start + nbytes + (-nbytes) % 8, end)

    def element(self, pos: int, end: int, mtype: int, name: str) -> tuple[bytes, int]:
        t, n, start, nxt = self.tag(pos, end)
        if t != mtype:
            raise self.fail(f"{name} has data type {t}, expected {mtype}")
        return self.buf[start:start + n], nxt


def _matrix_header(r: _Reader, start: int, end: int) -> tuple[str, int, int, tuple[int, ...], int]:
    """``(name, class, flags, dims, pos after the name)`` of the miMATRIX content at ``start``."""
    flags_raw, pos = r.element(start, end, MI_UINT32, "array flags")
    if len(flags_raw) != 8:
        raise r.fail(f"array flags are {len(flags_raw)} bytes, expected 8")
    flags = struct.unpack_from(r.order + "I", flags_raw)[0]
    dims_raw, pos = r.element(pos, end, MI_INT32, "dimensions")
    if len(dims_raw) % 4 or len(dims_raw) < 8:
        raise r.fail(f"dimensions are {len(dims_raw)} bytes, expected at least two int32")
    dims = struct.unpack(r.order + f"{len(dims_raw) // 4}i", dims_raw)
    if min(dims) < 0:
        raise r.fail(f"negative dimension in {dims}")
    name_raw, pos = r.element(pos, end, MI_INT8, "variable name")
    try:
        name = name_raw.decode("ascii")
    except UnicodeDecodeError:
        raise r.fail("variable name is not ASCII") from None
    return name, flags & 0xFF, flags, tuple(dims), pos


def _check_data(r: _Reader, pos: int, end: int, mclass: int, count: int, part: str) -> int:
    t, n, _, nxt = r.tag(pos, end)
    if t not in MI_ITEMSIZE:
        raise r.fail(f"{part} has unknown data type {t}")
    size = MI_ITEMSIZE[t]
    if mclass == MX_CHAR:
        ok = n % size == 0  # UTF-8 text: bytes need not equal characters
    else:
        ok = n == count * size
    if not ok:
        raise r.fail(f"{part} holds {n} bytes, but {count} elements of data type {t} need {count * size}")
    return nxt


def _element_count(r: _Reader, dims: tuple[int, ...], limit: int) -> int:
    count = 1
    for d in dims:  # Python ints: no overflow
        count *= d
    if count > limit:
        raise InputError(r.path, f"MATLAB variable {r.what} declares {'x'.join(map(str, dims))} = {count:,} "
                                 f"elements, over the limit of {limit:,} (HISTOZOOM_MAX_IMAGE_PIXELS)")
    return count


def _check_array(r: _Reader, start: int, end: int, limit: int) -> None:
    """Check a requested variable's miMATRIX content completely (numeric or char only)."""
    _, mclass, flags, dims, pos = _matrix_header(r, start, end)
    if mclass != MX_CHAR and mclass not in MX_NUMERIC:
        kind = MX_NAMES.get(mclass, f"of unknown class {mclass}")
        raise InputError(r.path, f"MATLAB variable {r.what} is {kind}, expected a numeric array")
    count = _element_count(r, dims, limit)
    pos = _check_data(r, pos, end, mclass, count, "real part")
    if flags & COMPLEX_FLAG:
        pos = _check_data(r, pos, end, mclass, count, "imaginary part")


def _inflate(path: Path, data: bytes, max_bytes: int, full: bool, what: str) -> bytes:
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, max_bytes)
    except zlib.error as e:
        raise InputError(path, f"corrupt MATLAB file: {what}: compressed data is damaged ({e})") from None
    if full and d.unconsumed_tail:
        raise InputError(path, f"MATLAB variable {what} decompresses to more than {max_bytes:,} bytes")
    return out


def _header_order(path: Path, buf: bytes) -> str:
    if buf[:8] == b"\x89HDF\r\n\x1a\n" or buf[512:520] == b"\x89HDF\r\n\x1a\n":
        raise InputError(path, "MATLAB v7.3 (HDF5) file; save it with -v7")
    if len(buf) < HEADER_BYTES:
        raise InputError(path, f"not a MATLAB v5 file: {len(buf)} bytes, shorter than the 128-byte header")
    mark = buf[126:128]
    if mark not in (b"IM", b"MI"):
        raise InputError(path, "not a MATLAB v5/v7 file (no endian mark at bytes 126-127; v4 files are not read)")
    order = "<" if mark == b"IM" else ">"
    version = struct.unpack_from(order + "H", buf, 124)[0]
    if version != 0x0100:
        raise InputError(path, f"not a MATLAB v5/v7 file (version {version:#06x}, expected 0x0100)")
    return order


def read_mat_arrays(path: str | Path, names: Iterable[str], *, max_elements: int | None = None) -> MatContents:
    """The variables ``names`` of the MAT file ``path`` that it holds (others are skipped).

    Each must be a numeric or char array of at most ``max_elements`` elements (default:
    the image pixel limit, :func:`~histozoom.data.io.max_image_pixels`); arrays are as
    SciPy's ``loadmat`` gives them (2-D at least). The first of two variables of one name
    is kept. A file that is not MAT v5/v7, a
    structural inconsistency, or a requested variable of another class is an
    :class:`InputError` naming ``path``.
    """
    path = Path(path)
    wanted = set(names)
    limit = max_image_pixels(max_elements)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        buf = path.read_bytes()
    except OSError as e:
        raise InputError(path, f"cannot read ({e.strerror or e})") from None
    order = _header_order(path, buf)
    rebuilt = bytearray(buf[:HEADER_BYTES])
    seen: set[str] = set()
    all_names: list[str] = []
    pos, k = HEADER_BYTES, 0
    while len(buf) - pos >= 8:
        top = _Reader(buf, order, path, f"element {k}")
        t, n, start, nxt = top.tag(pos, len(buf))
        if t == MI_COMPRESSED:
            nxt = start + n  # compressed elements are not padded
            inner = _inflate(path, buf[start:nxt], HEADER_PEEK, False, f"element {k}")
            r = _Reader(inner, order, path, f"element {k}")
            if len(inner) < 8:
                raise r.fail("compressed element holds less than a tag")
            it = struct.unpack_from(order + "I", inner)[0]  # the byte count is checked after full inflation
            if it != MI_MATRIX:
                raise r.fail(f"compressed element holds data type {it}, expected a matrix ({MI_MATRIX})")
            name, _, _, dims, _ = _matrix_header(r, 8, len(inner))
            if name in wanted and name not in seen:
                r.what = repr(name)
                max_bytes = _element_count(r, dims, limit) * 16 + HEADER_PEEK  # complex 8-byte values + header
                inner = _inflate(path, buf[start:nxt], max_bytes, True, repr(name))
                r = _Reader(inner, order, path, repr(name))
                it, inn, istart, _ = r.tag(0, len(inner))
                content = inner[istart:istart + inn]
            else:
                content = None
        elif t == MI_MATRIX:
            r = top
            if n == 0:
                raise top.fail("empty matrix element")
            name = _matrix_header(top, start, start + n)[0]
            content = buf[start:start + n] if name in wanted and name not in seen else None
        else:
            raise top.fail(f"top-level data type {t}, expected a matrix ({MI_MATRIX}) or compressed ({MI_COMPRESSED})")
        all_names.append(name)
        if content is not None:
            r = _Reader(content, order, path, repr(name))
            _check_array(r, 0, len(content), limit)
            rebuilt += struct.pack(order + "II", MI_MATRIX, len(content)) + content + bytes((-len(content)) % 8)
            seen.add(name)
        pos, k = nxt, k + 1
    if any(buf[pos:]):
        raise InputError(path, f"corrupt MATLAB file: {len(buf) - pos} stray bytes after the last variable")
    if not seen:
        return MatContents({}, all_names)
    import scipy.io

    try:
        out = scipy.io.loadmat(io.BytesIO(bytes(rebuilt)))
    except Exception as e:  # structure was checked; values may still be refused
        raise InputError(path, f"cannot read MATLAB file ({type(e).__name__}: {e})") from e
    return MatContents({k: v for k, v in out.items() if k in seen}, all_names)
