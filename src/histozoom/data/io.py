"""Reading and writing the files pairs are made of, with errors that name the file.

Images are ``(H, W, 3)`` uint8 RGB; label maps ``(H, W)`` uint8; point CSVs have rows
``x,y,class`` (optionally a header) in pixels of the image they belong to.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import tokenize
import warnings
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from ..atomic import atomic_open, atomic_path
from ..errors import ConfigError, InputError
from ..jsonio import read_text
from ..pair import ClassSet, Points
from .checks import excerpt

_TIFF = {".tif", ".tiff"}
RASTER_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
"""The only formats Pillow may decode: a file is never handed to a decoder that runs an
external program (EPS → Ghostscript) whatever its name says."""


DEFAULT_MAX_IMAGE_PIXELS = 2**28
"""Largest image :func:`read_image` decodes unless told otherwise: 268 M pixels, a 16384² tile,
768 MiB as uint8 RGB. The largest image any reader is meant to open is a Grand-Challenge
container, which stacks every view of a split in one TIFF (126 × 1024² ≈ 132 M pixels for
OCELOT's validation or test split), so this leaves a 2× margin; a header declaring more is
refused before a byte of pixel data is allocated. Raise it with ``HISTOZOOM_MAX_IMAGE_PIXELS``
or the ``max_pixels`` argument."""
MAX_IMAGE_PIXELS_ENV = "HISTOZOOM_MAX_IMAGE_PIXELS"


def max_image_pixels(max_pixels: int | None = None) -> int:
    """The pixel limit in force: ``max_pixels`` if given, else ``$HISTOZOOM_MAX_IMAGE_PIXELS``,
    else :data:`DEFAULT_MAX_IMAGE_PIXELS`. A limit that is not a positive integer is a ConfigError."""
    if max_pixels is not None:
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1:
            raise ConfigError(f"max_pixels must be a positive integer, got {max_pixels!r}")
        return int(max_pixels)
    env = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
    if not env:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(env)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{MAX_IMAGE_PIXELS_ENV} must be a positive integer, got {env!r}")
    return value


def _refuse_large(path: Path, width: int, height: int, pixels: int, limit: int) -> None:
    if pixels > limit:
        raise InputError(
            path,
            f"image header declares {width}x{height} px ({pixels:,} pixels), over the limit of {limit:,} pixels "
            f"(raise it with {MAX_IMAGE_PIXELS_ENV} if the image is genuine)",
        )


def _check_header_size(path: Path, width: int, height: int, size: tuple[int, int] | None) -> None:
    if size is not None and (width, height) != tuple(size):
        raise InputError(path, f"image is {width}x{height} px, expected {size[0]}x{size[1]}")


def _read_tiff(path: Path, limit: int, size: tuple[int, int] | None, header_only: bool = False) -> np.ndarray:
    with tifffile.TiffFile(path) as tf:
        if not tf.series:
            raise InputError(path, "cannot decode image (TIFF holds no image series)")
        series = tf.series[0]
        shape = tuple(int(d) for d in series.shape)
        spp = max(1, int(getattr(series.keyframe, "samplesperpixel", 1) or 1))
        pixels = math.prod(shape) // spp
        width = int(getattr(series.keyframe, "imagewidth", 0) or (shape[1] if len(shape) > 1 else 0))
        height = int(getattr(series.keyframe, "imagelength", 0) or (shape[0] if shape else 0))
        if len(shape) > 3 or (len(shape) == 3 and shape[2] != spp):
            height = pixels // max(width, 1)  # pages or planes stacked: report the whole series
        _refuse_large(path, width, height, pixels, limit)
        if len(shape) == 2 or (len(shape) == 3 and shape[2] == spp):
            _check_header_size(path, shape[1], shape[0], size)
        if header_only:
            return (width, int(series.keyframe.imagelength))  # type: ignore[return-value]
        return tf.asarray()


def _read_pillow(path: Path, limit: int, size: tuple[int, int] | None, header_only: bool = False) -> np.ndarray:
    # Pillow checks the declared size in Image.open (DecompressionBombError over twice its limit,
    # a warning over it): keep its limit at ours and report its refusal as ours.
    Image.MAX_IMAGE_PIXELS = limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path, formats=RASTER_FORMATS)
    except Image.DecompressionBombError as e:
        m = re.search(r"\((\d+) pixels\)", str(e))
        declared = f"{int(m.group(1)):,} pixels" if m else f"more than {2 * limit:,} pixels"
        raise InputError(
            path,
            f"image header declares {declared}, over the limit of {limit:,} pixels "
            f"(raise it with {MAX_IMAGE_PIXELS_ENV} if the image is genuine)",
        ) from e
    with im:
        width, height = im.size  # from the header: Image.open is lazy
        _refuse_large(path, width, height, width * height, limit)
        _check_header_size(path, width, height, size)
        if header_only:
            return (width, height)  # type: ignore[return-value]
        im.load()
        return np.asarray(im)


def read_image_size(path: str | Path, max_pixels: int | None = None) -> tuple[int, int]:
    """``(width, height)`` declared by an image file's header, without decoding its pixels;
    an image over the pixel limit is refused as by :func:`read_image`."""
    return read_image(path, max_pixels=max_pixels, header_only=True)  # type: ignore[return-value]


def read_image(
    path: str | Path, max_pixels: int | None = None, size: tuple[int, int] | None = None, header_only: bool = False
) -> np.ndarray:
    """Read an image file as it is stored (uint8 RGB, or a label map), naming the file on error.

    The declared size is read from the header first: an image over :func:`max_image_pixels`
    (``max_pixels``, ``$HISTOZOOM_MAX_IMAGE_PIXELS`` or 2**28) or, if ``size=(width, height)``
    is given, of another size is refused with an InputError before its pixels are decoded.
    ``header_only``: return the declared ``(width, height)`` instead (:func:`read_image_size`).
    """
    path = Path(path)
    limit = max_image_pixels(max_pixels)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        if path.suffix.lower() in _TIFF:
            arr = _read_tiff(path, limit, size, header_only)
        else:
            arr = _read_pillow(path, limit, size, header_only)
    except (OSError, ValueError, UnidentifiedImageError, SyntaxError, tifffile.TiffFileError) as e:
        if isinstance(e, InputError):
            raise
        if isinstance(e, PermissionError):
            raise InputError(path, "cannot read image (permission denied)") from None
        raise InputError(path, f"cannot decode image ({type(e).__name__}: {e})") from e
    except MemoryError as e:
        raise InputError(path, f"cannot decode image (out of memory: {e})") from e
    return arr


def read_npy(path: str | Path) -> np.ndarray:
    """Load a ``.npy`` array (no pickles), naming the file on error."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        arr = np.load(path, allow_pickle=False)  # object arrays and pickles raise ValueError
    except (OSError, ValueError, EOFError, SyntaxError, TypeError, tokenize.TokenError) as e:  # a damaged header
        raise InputError(path, f"cannot read .npy ({type(e).__name__}: {excerpt(str(e))})") from e
    if not isinstance(arr, np.ndarray):  # np.load opens an .npz archive whatever the file's name
        arr.close()
        raise InputError(path, "not a .npy array (an .npz archive)")
    return arr


def read_rgb(path: str | Path, size: tuple[int, int] | None = None, max_pixels: int | None = None) -> np.ndarray:
    """Read an RGB image as ``(H, W, 3)`` uint8; ``size=(width, height)`` is checked if given
    (from the header, before decoding); ``max_pixels`` as in :func:`read_image`."""
    arr = read_image(path, max_pixels=max_pixels, size=size)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise InputError(path, f"expected an RGB image, got array of shape {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        raise InputError(path, f"expected 8-bit RGB, got dtype {arr.dtype}")
    check_size(path, arr, size)
    return np.ascontiguousarray(arr)


def read_label_map(
    path: str | Path, classes: ClassSet | None = None, size: tuple[int, int] | None = None, max_pixels: int | None = None
) -> np.ndarray:
    """Read a single-channel label map; values must be 0, class ids or the ignore value.
    ``size`` is checked from the header before decoding; ``max_pixels`` as in :func:`read_image`."""
    arr = read_image(path, max_pixels=max_pixels, size=size)
    if arr.ndim == 3:
        if arr.shape[2] >= 3 and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
            arr = arr[..., 0]
        else:
            raise InputError(path, f"expected a single-channel label map, got shape {arr.shape}")
    if arr.ndim != 2:
        raise InputError(path, f"expected a single-channel label map, got shape {arr.shape}")
    check_size(path, arr, size)
    if classes is not None:
        bad = ~classes.valid(arr, allow_background=True)
        if bad.any():
            vals = sorted(set(np.unique(arr[bad]).tolist()))
            raise InputError(path, f"label values {vals[:10]} are not in the class set {dict(zip(classes.ids, classes.names))}")
    return arr.astype(np.uint8)


def check_size(path: str | Path, arr: np.ndarray, size: tuple[int, int] | None) -> None:
    """``arr`` (H, W, ...) must be ``size = (width, height)`` px (when given)."""
    _check_header_size(Path(path), arr.shape[1], arr.shape[0], size)


def read_points_csv(path: str | Path, classes: ClassSet | None = None, size: tuple[int, int] | None = None) -> Points:
    """Read ``x,y,class[,prob]`` rows (a header line is allowed; prob defaults to 1).

    Errors name the file and 1-based row: unparsable rows, non-finite coordinates, classes
    not in ``classes``, points outside ``size = (width, height)``, prob outside [0, 1].
    """
    path = Path(path)
    text = read_text(path, "points CSV", encoding="utf-8-sig")  # utf-8-sig: a byte-order mark (Excel) is skipped
    rows: list[tuple[float, float, int, float]] = []
    for lineno, row in enumerate(csv.reader(io.StringIO(text, newline="")), start=1):
        if not row or all(not c.strip() for c in row):
            continue
        if lineno == 1 and row[0].strip().lower() in ("x", "x_coord"):
            continue
        if len(row) not in (3, 4):
            raise InputError(path, f"expected columns x,y,class[,prob], got {len(row)}: {excerpt(','.join(row))}", row=lineno)
        try:
            x, y = float(row[0]), float(row[1])
            c = int(row[2])
            p = float(row[3]) if len(row) == 4 else 1.0
        except ValueError:
            raise InputError(path, f"cannot parse x,y,class[,prob] from {excerpt(','.join(row))}", row=lineno) from None
        if not (np.isfinite(x) and np.isfinite(y)):
            raise InputError(path, f"non-finite coordinate in {excerpt(','.join(row))}", row=lineno)
        if classes is not None and c not in classes.ids:
            raise InputError(path, f"class {c} is not in the class set {list(classes.ids)}", row=lineno)
        if size is not None and not (0 <= x <= size[0] - 1 and 0 <= y <= size[1] - 1):
            raise InputError(path, f"point ({x:g}, {y:g}) lies outside the {size[0]}x{size[1]} image", row=lineno)
        if not (0.0 <= p <= 1.0):
            raise InputError(path, f"probability {p!r} is outside [0, 1]", row=lineno)
        rows.append((x, y, c, p))
    a = np.array(rows, dtype=np.float64).reshape(-1, 4)
    return Points(a[:, :2], a[:, 2].astype(np.int64), a[:, 3])


def write_points_csv(path: str | Path, points: Points, with_prob: bool = False) -> None:
    """Write ``x,y,class`` rows (rounded to int pixels), plus ``prob`` if asked; atomic."""
    with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        for (x, y), c, p in zip(points.xy, points.cls, points.prob):
            row = [int(round(x)), int(round(y)), int(c)]
            if with_prob:
                row.append(f"{float(p):.6g}")
            w.writerow(row)


def write_image(path: str | Path, arr: np.ndarray, quality: int = 95) -> None:
    """Write an image atomically (JPEG/PNG via PIL, TIFF via tifffile)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix.lower() in _TIFF:
            tifffile.imwrite(tmp, arr)
        else:
            im = Image.fromarray(arr)
            kw = {"quality": quality} if path.suffix.lower() in (".jpg", ".jpeg") else {}
            im.save(tmp, format=Image.registered_extensions()[path.suffix.lower()], **kw)
