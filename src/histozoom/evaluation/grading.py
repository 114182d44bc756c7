"""Slide-level ccRCC nuclear grading from a whole-slide nuclei run.

Inputs, one value per nucleus: the centroid ``x_um``, ``y_um`` (µm from the slide's
top-left, i.e. level-0 pixel-centre coordinates times the slide's µm/px, as
``x_um = x · mpp`` in the slide tables), a class id of a class set holding the names
``G1``, ``G2``, ``G3`` (the CCRCC scheme, :data:`~histozoom.data.nuclei.records.CCRCC`;
ids are looked up by name) and whether the nucleus lies inside the cancer area.

* Grade of a nucleus (:func:`grade_of`): 1, 2, 3 for G1, G2, G3; 0 for any other class
  (endothelial). Tumour nuclei are those of grade > 0.
* Slide grade (:func:`slide_grade`, the ISUP rule as implemented here): :data:`RULE_WORDING`.
  A field is a square of side ``s = sqrt(field_mm2) · 1000`` µm placed on a grid of step
  ``b = s / stride`` from ``origin``: ``[x0, x0 + s) × [y0, y0 + s)`` with ``x0 = ox + i·b``,
  ``y0 = oy + j·b`` for any integers ``i``, ``j``; a nucleus counts when its centroid is inside.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..data.nuclei.records import CCRCC_CLASSES
from ..pair import ClassSet

__all__ = ["GRADE_NAMES", "RULE_WORDING", "GradingRule", "grade_of", "grade_shares", "slide_grade"]

GRADE_NAMES = ("G1", "G2", "G3")
"""Class names of the tumour grades 1, 2, 3."""

RULE_WORDING = ("the highest grade g in {3, 2, 1} such that some field holds at least min_nuclei tumour nuclei "
                "of grade >= g inside the cancer area (grade >= g: a G3 nucleus also shows the nucleoli of G2)")
"""The slide-grade rule of :func:`slide_grade`, in words."""


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"GradingRule: {name} must be a positive integer, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"GradingRule: {name} must be a positive integer, got {value!r}") from None
    if v < 1:
        raise ValueError(f"GradingRule: {name} must be a positive integer, got {value!r}")
    return v


@dataclass(frozen=True)
class GradingRule:
    """The field rule of :func:`slide_grade`.

    ``field_mm2``: area of one field in mm² (0.237 mm²: one high-power field);
    ``min_nuclei``: tumour nuclei a field must hold (N); ``stride``: fields are placed on a
    grid of step ``side_um / stride``.
    """

    field_mm2: float = 0.237
    min_nuclei: int = 10
    stride: int = 8

    def __post_init__(self):
        if isinstance(self.field_mm2, bool) or not isinstance(self.field_mm2, numbers.Real):
            raise ValueError(f"GradingRule: field_mm2 must be a number, got {self.field_mm2!r}")
        if not (math.isfinite(self.field_mm2) and self.field_mm2 > 0):
            raise ValueError(f"GradingRule: field_mm2 must be finite and > 0, got {self.field_mm2!r}")
        object.__setattr__(self, "field_mm2", float(self.field_mm2))
        object.__setattr__(self, "min_nuclei", _positive_int("min_nuclei", self.min_nuclei))
        object.__setattr__(self, "stride", _positive_int("stride", self.stride))

    @property
    def side_um(self) -> float:
        """Side of a field in µm: ``sqrt(field_mm2) · 1000``."""
        return math.sqrt(self.field_mm2) * 1000.0

    @property
    def step_um(self) -> float:
        """Step of the field grid in µm: ``side_um / stride``."""
        return self.side_um / self.stride

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _column(a: Any, dtype: Any) -> np.ndarray:
    return np.asarray(a, dtype=dtype).reshape(-1)


def grade_of(class_ids: Any, classes: ClassSet = CCRCC_CLASSES) -> np.ndarray:
    """Grade per nucleus (int8): 1, 2, 3 where the class is named G1, G2, G3 in ``classes``,
    0 for its other classes. A class id outside ``classes`` is a ``ValueError``."""
    cls = _column(class_ids, np.int64)
    missing = [n for n in GRADE_NAMES if n not in classes.names]
    if missing:
        raise ValueError(f"grade_of: the class set {list(classes.names)} has no class named {missing}")
    unknown = np.setdiff1d(cls, classes.ids).tolist()
    if unknown:
        raise ValueError(f"grade_of: class ids {unknown} are not in the class set {list(classes.ids)}")
    ids = np.array([classes.id(n) for n in GRADE_NAMES], dtype=np.int64)
    lut = np.zeros(max(classes.ids) + 1, dtype=np.int8)
    lut[ids] = np.arange(1, len(GRADE_NAMES) + 1)
    return lut[cls]


def _grades_inside(grades: Any, inside: Any) -> tuple[np.ndarray, np.ndarray]:
    g, ins = _column(grades, np.int64), _column(inside, bool)
    if len(g) != len(ins):
        raise ValueError(f"grades and inside differ in length ({len(g)}, {len(ins)})")
    if len(g) and (g.min() < 0 or g.max() > len(GRADE_NAMES)):
        raise ValueError(f"grades must be in 0..{len(GRADE_NAMES)}, got values in {g.min()}..{g.max()}")
    return g, ins


def grade_shares(grades: Any, inside: Any) -> dict[str, dict[str, Any]]:
    """Counts and shares of G1, G2, G3 among the tumour nuclei (grade > 0), inside and outside the cancer area.

    Returns ``{"cancer_area": {"tumour_nuclei": n, "counts": {"G1": n1, "G2": n2, "G3": n3},
    "shares": {"G1": n1 / n, ...}}, "outside_cancer_area": {...}}``; shares are ``None`` when ``n = 0``.
    """
    g, ins = _grades_inside(grades, inside)

    def block(sel: np.ndarray) -> dict[str, Any]:
        counts = np.bincount(g[sel], minlength=len(GRADE_NAMES) + 1)[1:]
        n = int(counts.sum())
        return {"tumour_nuclei": n, "counts": {name: int(c) for name, c in zip(GRADE_NAMES, counts)},
                "shares": {name: (int(c) / n if n else None) for name, c in zip(GRADE_NAMES, counts)}}

    return {"cancer_area": block(ins), "outside_cancer_area": block(~ins)}


def _bin_index(v: np.ndarray, origin: float, step: float) -> np.ndarray:
    """Grid bin of each coordinate: ``k`` with ``origin + k·step <= v < origin + (k+1)·step``,
    exact for the floating-point bin edges as written."""
    k = np.floor((v - origin) / step)
    k -= origin + k * step > v
    k += origin + (k + 1) * step <= v
    return k.astype(np.int64)


def _densest_field(kx: np.ndarray, ky: np.ndarray, stride: int) -> tuple[int, int, int]:
    """``(count, i, j)`` of the field of ``stride × stride`` bins (bins ``i .. i+stride-1`` in x,
    ``j ..`` in y) holding the most points of bins ``(kx, ky)``, the first in raster order (y, then x).

    A 2-D histogram over the points' bin extent, padded by ``stride - 1`` empty bins per side so that
    every field touching a point is a full box, and a summed-area table for the box sums."""
    if len(kx) == 0:
        return 0, 0, 0
    pad = stride - 1
    x0, y0 = int(kx.min()) - pad, int(ky.min()) - pad
    w, h = int(kx.max()) + pad - x0 + 1, int(ky.max()) + pad - y0 + 1
    sat = np.zeros((h + 1, w + 1), dtype=np.int64)
    sat[1:, 1:] = np.bincount((ky - y0) * w + (kx - x0), minlength=h * w).reshape(h, w).cumsum(0).cumsum(1)
    box = sat[stride:, stride:] - sat[:-stride, stride:] - sat[stride:, :-stride] + sat[:-stride, :-stride]
    j, i = np.unravel_index(int(np.argmax(box)), box.shape)
    return int(box[j, i]), x0 + int(i), y0 + int(j)


def slide_grade(x_um: Any, y_um: Any, grades: Any, inside: Any, rule: GradingRule | None = None,
                origin_um: Sequence[float] = (0.0, 0.0), mpp: float | None = None) -> dict[str, Any]:
    """The slide's grade by :data:`RULE_WORDING`, with the densest field per grade.

    ``x_um``, ``y_um``: nucleus centroids in µm; ``grades``: from :func:`grade_of`; ``inside``:
    bool, the nucleus lies in the cancer area; ``rule``: :class:`GradingRule` (default one);
    ``origin_um``: ``(ox, oy)`` of the field grid. Fields are ``[x0, x0 + s) × [y0, y0 + s)``
    with ``x0 = ox + i·b``, ``y0 = oy + j·b`` (``s`` = ``rule.side_um``, ``b`` = ``rule.step_um``,
    ``i``, ``j`` any integers). Counted exactly on a 2-D histogram of bins of side ``b`` over the
    nuclei's extent and a summed-area table of it.

    Returns ``{"grade": 3 | 2 | 1 | None, "rule": {field_mm2, min_nuclei, stride, side_um, step_um,
    "statement"}, "per_grade": {"G3": {"max_count", "field_um"}, "G2": ..., "G1": ...},
    "field_um", "tumour_nuclei_inside"}``: ``max_count`` is the most tumour nuclei of grade >= g
    inside the cancer area in one field, ``field_um`` ``[x0, y0, x0 + s, y0 + s]`` (µm) of the first
    field in raster order (y, then x) reaching it (``None`` when ``max_count`` is 0); the top-level
    ``field_um`` is that of the reported grade (``None`` when ``grade`` is None: no field holds
    ``min_nuclei`` tumour nuclei). With ``mpp`` (µm per level-0 px), also ``field_px``: the top-level
    box divided by ``mpp`` (level-0 pixel-centre coordinates, ``x = x_um / mpp``).
    """
    rule = GradingRule() if rule is None else rule
    x, y = _column(x_um, np.float64), _column(y_um, np.float64)
    g, ins = _grades_inside(grades, inside)
    if not (len(x) == len(y) == len(g)):
        raise ValueError(f"slide_grade: x_um, y_um, grades differ in length ({len(x)}, {len(y)}, {len(g)})")
    ox, oy = (float(v) for v in origin_um)
    if not (math.isfinite(ox) and math.isfinite(oy)):
        raise ValueError(f"slide_grade: origin_um must be finite, got {tuple(origin_um)}")
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise ValueError(f"slide_grade: mpp must be finite and > 0, got {mpp}")
    sel = ins & (g > 0)
    x, y, g = x[sel], y[sel], g[sel]
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("slide_grade: non-finite centroids of tumour nuclei inside the cancer area")
    b, k = rule.step_um, rule.stride
    kx, ky = _bin_index(x, ox, b), _bin_index(y, oy, b)

    per_grade: dict[str, dict[str, Any]] = {}
    grade = None
    for level in range(len(GRADE_NAMES), 0, -1):
        at = g >= level
        count, i, j = _densest_field(kx[at], ky[at], k)
        box = [ox + i * b, oy + j * b, ox + (i + k) * b, oy + (j + k) * b] if count else None
        per_grade[GRADE_NAMES[level - 1]] = {"max_count": count, "field_um": box}
        if grade is None and count >= rule.min_nuclei:
            grade = level
    field = None if grade is None else per_grade[GRADE_NAMES[grade - 1]]["field_um"]
    out: dict[str, Any] = {
        "grade": grade,
        "rule": {**rule.to_dict(), "side_um": rule.side_um, "step_um": b, "statement": RULE_WORDING},
        "per_grade": per_grade,
        "field_um": field,
        "tumour_nuclei_inside": len(g),
    }
    if mpp is not None:
        out["field_px"] = None if field is None else [v / mpp for v in field]
    return out
