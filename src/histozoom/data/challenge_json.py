"""The OCELOT 2023 challenge's point JSON: reader (with the challenge's validity rules) and writer.

Format (predictions and ground truth alike)::

    {"type": "Multiple points", "num_images": N,
     "points": [{"name": "image_K", "point": [x, y, cls], "probability": p}, ...],
     "version": {"major": 1, "minor": 0}}

``image_K`` is the K-th image (0-based) of the evaluated set; for a dataset split that is
the K-th sample in sorted id order. ``x, y`` are integer pixel indices in the cell image,
``cls`` a cell class id, ``p`` a confidence in [0, 1] (1.0 for ground truth).

Validity rules (the official checker, ``ocelot23algo/evaluation/eval.py::_check_validity``,
asserts them for every entry of both files):

* an entry has exactly the keys ``name``, ``point``, ``probability``;
* ``name`` matches ``image_[0-9]+`` in full;
* ``point`` is a list of three values;
* ``x`` and ``y`` are ints with ``0 <= v <= 1023`` (inside a 1024 px image);
* the class is an int in ``(1, 2)``;
* ``probability`` is a float with ``0.0 <= p <= 1.0`` (so NaN fails).

Both modes of :func:`read_challenge_json` enforce these rules and name the first offending
entry. The default mode is lenient about *types only*: integral floats (``12.0``) are
accepted as coordinates/classes and ``0``/``1`` as probabilities, and the image size and
class set are parameters. ``strict=True`` rejects exactly what the official checker
rejects (exact Python types, ``bool`` is not an int); with the default image size and
class set that is the official rule set.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_json
from ..errors import InputError
from ..jsonio import read_json
from ..pair import OCELOT_CELL_CLASSES, ClassSet, Points
from .checks import excerpt

CHALLENGE_IMAGE_SIZE = (1024, 1024)
"""``(width, height)`` of an OCELOT cell image: the official checker's coordinate bounds."""

_NAME_RE = re.compile(r"image_[0-9]+")
_KEYS = ["name", "point", "probability"]

ImageSize = int | tuple[int, int] | Mapping[int, tuple[int, int]] | None


def image_name(index: int) -> str:
    """The challenge's name of the ``index``-th image: ``image_K``."""
    return f"image_{int(index)}"


def parse_image_name(name: str) -> int | None:
    """``K`` for a name ``image_K`` (digits only, as the checker's regex), else ``None``."""
    if isinstance(name, str) and _NAME_RE.fullmatch(name):
        return int(name[6:])
    return None


@dataclass
class ChallengePoints:
    """The points of one challenge JSON file, per image index.

    ``points``: image index → :class:`Points` (cell frame, file order kept within an image);
    images without entries are absent. ``num_images``: the file's ``num_images`` (ground
    truth has it; prediction files usually do not). ``first_entry``: image index → position
    of its first entry in ``points`` (for error messages).
    """

    points: dict[int, Points]
    num_images: int | None = None
    path: str | None = None
    first_entry: dict[int, int] = field(default_factory=dict)

    @property
    def image_indices(self) -> list[int]:
        """Sorted indices of ``range(num_images)`` and of every image with entries."""
        keys = set(self.points)
        if self.num_images is not None:
            keys |= set(range(self.num_images))
        return sorted(keys)

    def __len__(self) -> int:
        return sum(len(p) for p in self.points.values())


def image_size_of(image_size: ImageSize, index: int) -> tuple[int, int] | None:
    """``(width, height)`` of image ``index`` from an int, a pair, a per-index mapping, or None."""
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)):
        return (int(image_size), int(image_size))
    if isinstance(image_size, Mapping):
        s = image_size.get(index)
        return None if s is None else (int(s[0]), int(s[1]))
    return (int(image_size[0]), int(image_size[1]))


def _as_int(v: Any, strict: bool) -> int | None:
    """``v`` as an int under the mode's type rule, else ``None``."""
    if type(v) is int:
        return v
    if strict or isinstance(v, bool):
        return None
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)) and math.isfinite(v) and float(v).is_integer():
        return int(v)
    return None


def _as_prob(v: Any, strict: bool) -> float | None:
    if type(v) is float:
        return v
    if strict or isinstance(v, bool):
        return None
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    return None


def _parse_entry(
    e: Any, i: int, path: str | Path | None, class_ids: set[int] | None, image_size: ImageSize, strict: bool
) -> tuple[int, tuple[int, int, int, float]]:
    """Image index and ``(x, y, class, probability)`` of entry ``points[i]``, validated."""
    where = f"points[{i}]"

    def bad(problem: str) -> InputError:
        return InputError(path, f"{where}: {problem}")

    if not isinstance(e, dict):
        raise bad(f"expected an object with keys {_KEYS}, got {type(e).__name__}")
    keys = sorted(e.keys())
    if keys != _KEYS:
        raise bad(f"keys must be exactly {_KEYS}, got {keys}")
    name = e["name"]
    k = parse_image_name(name)
    if k is None:
        raise bad(f"name {excerpt(name)} is not of the form image_K (K = 0, 1, ...)")
    where = f"points[{i}] ({name})"
    pt = e["point"]
    if type(pt) is not list or len(pt) != 3:
        raise bad(f"point must be a list [x, y, class], got {excerpt(pt)}")
    x, y, c = (_as_int(v, strict) for v in pt)
    if x is None or y is None:
        raise bad(f"coordinates must be integers, got x={excerpt(pt[0])}, y={excerpt(pt[1])}")
    size = image_size_of(image_size, k)
    if size is not None and not (0 <= x <= size[0] - 1 and 0 <= y <= size[1] - 1):
        raise bad(f"point ({x}, {y}) lies outside the {size[0]}x{size[1]} image "
                  f"(0 <= x <= {size[0] - 1}, 0 <= y <= {size[1] - 1})")
    if c is None:
        raise bad(f"class must be an integer, got {excerpt(pt[2])}")
    if class_ids is not None and c not in class_ids:
        raise bad(f"class {c} is not in the class set {sorted(class_ids)}")
    p = _as_prob(e["probability"], strict)
    if p is None:
        raise bad(f"probability must be a {'float' if strict else 'number'}, got {excerpt(e['probability'])}")
    if not (0.0 <= p <= 1.0):
        raise bad(f"probability {p!r} is outside [0, 1]")
    return k, (x, y, c, p)


def parse_challenge_entries(
    entries: Iterable[Any],
    path: str | Path | None = None,
    *,
    classes: ClassSet | Sequence[int] | None = OCELOT_CELL_CLASSES,
    image_size: ImageSize = CHALLENGE_IMAGE_SIZE,
    strict: bool = False,
) -> tuple[dict[int, Points], dict[int, int]]:
    """Validate and group challenge point entries by image.

    Raises :class:`InputError` naming ``path`` and the first offending entry
    (``points[i]``). ``classes=None`` and ``image_size=None`` switch those checks off
    (not allowed with ``strict``, whose rules are fixed by the given values).
    Returns ``(points per image index, first entry position per image index)``.
    """
    class_ids = None if classes is None else set(classes.ids if isinstance(classes, ClassSet) else classes)
    rows: dict[int, list[tuple[int, int, int, float]]] = {}
    first: dict[int, int] = {}
    for i, e in enumerate(entries):
        k, row = _parse_entry(e, i, path, class_ids, image_size, strict)
        rows.setdefault(k, []).append(row)
        first.setdefault(k, i)
    out: dict[int, Points] = {}
    for k, r in rows.items():
        a = np.array([t[:3] for t in r], dtype=np.float64).reshape(-1, 3)
        out[k] = Points(a[:, :2], a[:, 2].astype(np.int64), np.array([t[3] for t in r], dtype=np.float64))
    return out, first


MAX_IMAGES_FLOOR = 100_000
"""``num_images`` up to this many is always believed (OCELOT's splits have 126-400 images)."""
MAX_IMAGES_FACTOR = 10
"""Beyond :data:`MAX_IMAGES_FLOOR`, ``num_images`` may exceed the highest image index + 1 by this factor."""


def check_num_images_claim(num_images: int | None, indices: Iterable[int], path: str | Path | None) -> None:
    """Reject an absurd ``num_images`` claim: more than ``max(100_000, 10 × (highest index + 1))``.

    Every image of ``range(num_images)`` is evaluated (an image without points still counts,
    e.g. for the bootstrap), so evaluation costs memory and time per *declared* image: a file
    claiming a billion images would otherwise allocate gigabytes for images that have no
    points. The claim is refused with an InputError naming the file rather than trimmed, so
    scores of a file that passes are exactly those of the full claim.
    """
    if num_images is None:
        return
    highest = max(indices, default=-1)
    bound = max(MAX_IMAGES_FLOOR, MAX_IMAGES_FACTOR * (highest + 1))
    if num_images > bound:
        where = f"highest image index with points is {highest}" if highest >= 0 else "no image has points"
        raise InputError(
            path,
            f"num_images {num_images:,} is not believable: {where}, and at most "
            f"max({MAX_IMAGES_FLOOR:,}, {MAX_IMAGES_FACTOR} x (highest index + 1)) = {bound:,} images are accepted",
        )


def parse_challenge_document(
    doc: Any,
    path: str | Path | None = None,
    *,
    classes: ClassSet | Sequence[int] | None = OCELOT_CELL_CLASSES,
    image_size: ImageSize = CHALLENGE_IMAGE_SIZE,
    strict: bool = False,
) -> ChallengePoints:
    """:func:`read_challenge_json` for an already-loaded JSON value.

    Lenient mode also accepts a bare list of entries; strict mode wants the object with a
    ``points`` list (the official scorer reads ``doc["points"]``).
    """
    if isinstance(doc, list) and not strict:
        entries, num_images = doc, None
    elif isinstance(doc, dict) and isinstance(doc.get("points"), list):
        entries = doc["points"]
        num_images = doc.get("num_images")
        if num_images is not None and (_as_int(num_images, strict) is None or int(num_images) < 0):
            raise InputError(path, f"num_images must be a non-negative integer, got {excerpt(num_images)}")
        num_images = None if num_images is None else int(num_images)
    else:
        raise InputError(path, 'expected a JSON object with a "points" list (the challenge\'s "Multiple points" format)')
    pts, first = parse_challenge_entries(entries, path, classes=classes, image_size=image_size, strict=strict)
    check_num_images_claim(num_images, pts, path)
    return ChallengePoints(pts, num_images, None if path is None else str(path), first)


def read_challenge_json(
    path: str | Path,
    *,
    classes: ClassSet | Sequence[int] | None = OCELOT_CELL_CLASSES,
    image_size: ImageSize = CHALLENGE_IMAGE_SIZE,
    strict: bool = False,
) -> ChallengePoints:
    """Read and validate a challenge JSON file (see the module doc for the rules).

    ``image_size``: ``(width, height)`` (an int for square images), a mapping of image
    index to size, or ``None`` for no bounds check. Default: 1024 x 1024.
    """
    path = Path(path)
    doc = read_json(path, "JSON")
    return parse_challenge_document(doc, path, classes=classes, image_size=image_size, strict=strict)


def read_challenge_points(path: str | Path, **kwargs: Any) -> dict[int, Points]:
    """Points per image index of a challenge JSON file (keyword arguments as :func:`read_challenge_json`)."""
    return read_challenge_json(path, **kwargs).points


def challenge_document(
    per_image: Mapping[int, Points | None] | Sequence[Points | None],
    num_images: int | None = None,
) -> dict:
    """The challenge JSON object for points per image index (or a list indexed by image).

    ``x``/``y`` are rounded to Python ints, the class is an int, the probability a float.
    ``num_images`` defaults to one past the largest index.
    """
    items = per_image.items() if isinstance(per_image, Mapping) else enumerate(per_image)
    items = sorted((int(k), v) for k, v in items)
    if num_images is None:
        num_images = (items[-1][0] + 1) if items else 0
    points = []
    for k, pts in items:
        if pts is None:
            continue
        name = image_name(k)
        xs = np.rint(pts.xy).astype(np.int64).tolist()
        for (x, y), c, p in zip(xs, pts.cls.tolist(), pts.prob.tolist(), strict=True):
            points.append({"name": name, "point": [int(x), int(y), int(c)], "probability": float(p)})
    return {"type": "Multiple points", "num_images": int(num_images), "points": points, "version": {"major": 1, "minor": 0}}


def write_challenge_points(
    path: str | Path,
    per_image: Mapping[int, Points | None] | Sequence[Points | None],
    num_images: int | None = None,
) -> None:
    """Write points per image index as a challenge JSON file (atomically)."""
    write_json(path, challenge_document(per_image, num_images), indent=None)
