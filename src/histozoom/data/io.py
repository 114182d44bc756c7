"""Reading and writing the files pairs are made of, with errors that name the file.

Images are ``(H, W, 3)`` uint8 RGB; label maps ``(H, W)`` uint8; point CSVs have rows
``x,y,class`` (optionally a header) in pixels of the image they belong to.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from ..atomic import atomic_open, atomic_path
from ..errors import InputError
from ..pair import ClassSet, Points

_TIFF = {".tif", ".tiff"}
RASTER_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
"""The only formats Pillow may decode: a file is never handed to a decoder that runs an
external program (EPS → Ghostscript) whatever its name says."""


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as it is stored (uint8 RGB, or a label map), naming the file on error."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        if path.suffix.lower() in _TIFF:
            arr = tifffile.imread(path)
        else:
            with Image.open(path, formats=RASTER_FORMATS) as im:
                im.load()
                arr = np.asarray(im)
    except (OSError, ValueError, UnidentifiedImageError, SyntaxError, tifffile.TiffFileError) as e:
        raise InputError(path, f"cannot decode image ({type(e).__name__}: {e})") from e
    return arr


def read_npy(path: str | Path) -> np.ndarray:
    """Load a ``.npy`` array (no pickles), naming the file on error."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        arr = np.load(path, allow_pickle=False)  # object arrays and pickles raise ValueError
    except (OSError, ValueError, EOFError) as e:
        raise InputError(path, f"cannot read .npy ({type(e).__name__}: {e})") from e
    if not isinstance(arr, np.ndarray):  # np.load opens an .npz archive whatever the file's name
        arr.close()
        raise InputError(path, "not a .npy array (an .npz archive)")
    return arr


def read_rgb(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an RGB image as ``(H, W, 3)`` uint8; ``size=(width, height)`` is checked if given."""
    arr = read_image(path)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise InputError(path, f"expected an RGB image, got array of shape {arr.shape}")
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        raise InputError(path, f"expected 8-bit RGB, got dtype {arr.dtype}")
    check_size(path, arr, size)
    return np.ascontiguousarray(arr)


def read_label_map(path: str | Path, classes: ClassSet | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read a single-channel label map; values must be 0, class ids or the ignore value."""
    arr = read_image(path)
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
    if size is not None and (arr.shape[1], arr.shape[0]) != tuple(size):
        raise InputError(path, f"image is {arr.shape[1]}x{arr.shape[0]} px, expected {size[0]}x{size[1]}")


def read_points_csv(path: str | Path, classes: ClassSet | None = None, size: tuple[int, int] | None = None) -> Points:
    """Read ``x,y,class[,prob]`` rows (a header line is allowed; prob defaults to 1).

    Errors name the file and 1-based row: unparsable rows, non-finite coordinates, classes
    not in ``classes``, points outside ``size = (width, height)``, prob outside [0, 1].
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    rows: list[tuple[float, float, int, float]] = []
    with open(path, newline="", encoding="utf-8") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if lineno == 1 and row[0].strip().lower() in ("x", "x_coord"):
                continue
            if len(row) not in (3, 4):
                raise InputError(path, f"expected columns x,y,class[,prob], got {len(row)}: {row!r}", row=lineno)
            try:
                x, y = float(row[0]), float(row[1])
                c = int(row[2])
                p = float(row[3]) if len(row) == 4 else 1.0
            except ValueError:
                raise InputError(path, f"cannot parse x,y,class[,prob] from {row!r}", row=lineno) from None
            if not (np.isfinite(x) and np.isfinite(y)):
                raise InputError(path, f"non-finite coordinate in {row!r}", row=lineno)
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
