"""The records every reader produces: class sets, point sets and the paired view.

Class ids follow the OCELOT files: cells 1 = BC, 2 = TC; tissue 1 = BG, 2 = CA and
255 = unknown (ignored in losses and metrics). Other datasets bring their own class
sets (:class:`ClassSet`); nothing downstream assumes two classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .geometry import Placement

UNKNOWN = 255
"""Tissue label value meaning 'unknown / excluded' (ignored in losses and metrics)."""


@dataclass(frozen=True)
class ClassSet:
    """Named classes with integer ids (0 is background and never listed).

    ``ignore`` is a label value that marks unknown pixels (tissue masks), or ``None``.
    """

    names: tuple[str, ...]
    ids: tuple[int, ...]
    ignore: int | None = None

    def __post_init__(self):
        if len(self.names) != len(self.ids):
            raise ValueError("ClassSet: names and ids differ in length")
        if len(set(self.ids)) != len(self.ids) or any(i <= 0 for i in self.ids):
            raise ValueError(f"ClassSet: ids must be distinct positive integers, got {self.ids}")
        if self.ignore is not None and self.ignore in self.ids:
            raise ValueError("ClassSet: the ignore value is also a class id")

    @classmethod
    def from_names(cls, names: Sequence[str], ignore: int | None = None) -> ClassSet:
        """Classes numbered 1, 2, ... in the given order."""
        return cls(tuple(names), tuple(range(1, len(names) + 1)), ignore)

    @classmethod
    def from_mapping(cls, mapping: Mapping[int | str, str], ignore: int | None = None) -> ClassSet:
        """Classes from ``{id: name}`` (ids may be JSON strings)."""
        items = sorted((int(k), str(v)) for k, v in mapping.items())
        return cls(tuple(n for _, n in items), tuple(i for i, _ in items), ignore)

    def __len__(self) -> int:
        return len(self.ids)

    def name(self, class_id: int) -> str:
        return self.names[self.ids.index(int(class_id))]

    def id(self, name: str) -> int:
        return self.ids[self.names.index(name)]

    def valid(self, values: np.ndarray, allow_background: bool = False) -> np.ndarray:
        """Boolean mask of values that are class ids (or 0 / ``ignore`` where allowed)."""
        ok = np.isin(values, self.ids)
        if allow_background:
            ok |= values == 0
        if self.ignore is not None:
            ok |= values == self.ignore
        return ok

    def to_dict(self) -> dict:
        return {"names": list(self.names), "ids": list(self.ids), "ignore": self.ignore}

    @classmethod
    def from_dict(cls, d: Mapping) -> ClassSet:
        return cls(tuple(d["names"]), tuple(int(i) for i in d["ids"]), d.get("ignore"))


OCELOT_CELL_CLASSES = ClassSet(("BC", "TC"), (1, 2))
OCELOT_TISSUE_CLASSES = ClassSet(("BG", "CA"), (1, 2), ignore=UNKNOWN)


@dataclass(frozen=True)
class Points:
    """Cell points of one image in one frame.

    ``xy``: ``(N, 2)`` float64 pixel positions ``(x, y)`` (pixel centres, see geometry);
    ``cls``: ``(N,)`` int64 class ids; ``prob``: ``(N,)`` float64 confidences in [0, 1]
    (1.0 for ground truth).
    """

    xy: np.ndarray
    cls: np.ndarray
    prob: np.ndarray

    def __post_init__(self):
        xy = np.asarray(self.xy, dtype=np.float64).reshape(-1, 2)
        cls_ = np.asarray(self.cls, dtype=np.int64).reshape(-1)
        prob = np.asarray(self.prob, dtype=np.float64).reshape(-1)
        if not (len(xy) == len(cls_) == len(prob)):
            raise ValueError("Points: xy, cls and prob differ in length")
        object.__setattr__(self, "xy", xy)
        object.__setattr__(self, "cls", cls_)
        object.__setattr__(self, "prob", prob)

    @classmethod
    def empty(cls) -> Points:
        return cls(np.zeros((0, 2)), np.zeros(0, np.int64), np.zeros(0))

    @classmethod
    def from_array(cls, rows: np.ndarray, prob: np.ndarray | None = None) -> Points:
        """From ``(N, 3)`` rows ``x, y, class`` (probability 1 unless given)."""
        rows = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
        p = np.ones(len(rows)) if prob is None else prob
        return cls(rows[:, :2], rows[:, 2].astype(np.int64), p)

    def __len__(self) -> int:
        return len(self.cls)

    def subset(self, keep: np.ndarray) -> Points:
        return Points(self.xy[keep], self.cls[keep], self.prob[keep])

    def with_xy(self, xy: np.ndarray) -> Points:
        return Points(xy, self.cls, self.prob)

    def inside(self, size: tuple[int, int]) -> np.ndarray:
        """Mask of points within an image of ``size = (width, height)`` pixels."""
        x, y = self.xy[:, 0], self.xy[:, 1]
        return (x >= -0.5) & (y >= -0.5) & (x < size[0] - 0.5) & (y < size[1] - 0.5)


@dataclass
class Pair:
    """One paired view: a cell image inside a tissue image, with optional labels.

    ``cell_image``/``tissue_image``: ``(H, W, 3)`` uint8 RGB.
    ``cell_points``: ground-truth cells in the cell frame (or ``None``).
    ``tissue_mask``: ``(H, W)`` uint8 tissue labels in the tissue frame (class ids,
    ``UNKNOWN`` = 255 ignored), or ``None``.
    ``cell_mpp``/``tissue_mpp``: microns per pixel of the stored images.
    """

    id: str
    cell_image: np.ndarray
    tissue_image: np.ndarray
    placement: Placement
    cell_points: Points | None = None
    tissue_mask: np.ndarray | None = None
    organ: str | None = None
    cell_mpp: float = 0.2
    tissue_mpp: float = 0.8
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def cell_size(self) -> tuple[int, int]:
        return (self.cell_image.shape[1], self.cell_image.shape[0])

    @property
    def tissue_size(self) -> tuple[int, int]:
        return (self.tissue_image.shape[1], self.tissue_image.shape[0])

    def replace(self, **changes) -> Pair:
        return replace(self, **changes)
