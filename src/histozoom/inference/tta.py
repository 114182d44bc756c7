"""Test-time augmentation over the dihedral group of the square: the one implementation
both predictors use.

A transform is a pair ``(flip, k)``: flip left-right (the last axis) if ``flip``, then
rotate by ``k`` × 90° counter-clockwise in the plane of the last two axes (``torch.rot90``
with ``dims=(-2, -1)``; ``np.rot90`` on ``(H, W, ...)`` arrays with ``axes=(0, 1)`` turns
the same way, which is what :func:`~histozoom.data.augment.rot90_pair` uses).
:data:`DIHEDRAL` lists the 8; the identity comes first.

* :func:`apply` / :func:`invert`: a transform and its exact inverse on tensors
  ``(..., H, W)`` (only element order changes, so ``invert(apply(x)) == x`` bit for bit).
* :class:`MapMean`: running mean of maps predicted on transformed inputs, each mapped back
  first; maps are tensors or dicts of tensors. The sum runs in the order maps are added
  and is divided once at the end.
* :func:`average`: ``mean over transforms t of invert(fn(apply(x, t)), t)``.
* :func:`as_transforms`: a predictor's ``tta`` argument (bool or list) as a transform list.

For a function that commutes with every transform (e.g. a convolution with a kernel
symmetric under the group) :func:`average` equals the plain output, up to rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

Transform = tuple[bool, int]

IDENTITY: Transform = (False, 0)
DIHEDRAL: tuple[Transform, ...] = tuple((f, k) for f in (False, True) for k in range(4))
"""``(flip_lr, rot90_k)`` of the 8 TTA transforms; the first is the identity."""

Maps = torch.Tensor | Mapping[str, torch.Tensor]


def apply(x: torch.Tensor, flip: bool, k: int) -> torch.Tensor:
    """``x`` ``(..., H, W)`` flipped left-right (if ``flip``), then rotated ``k`` × 90°."""
    if flip:
        x = x.flip(-1)
    return torch.rot90(x, k, dims=(-2, -1)) if k % 4 else x


def invert(x: torch.Tensor, flip: bool, k: int) -> torch.Tensor:
    """Undo :func:`apply`: maps computed on ``apply(img, flip, k)`` back to ``img``'s frame."""
    if k % 4:
        x = torch.rot90(x, -k, dims=(-2, -1))
    return x.flip(-1) if flip else x


def as_transforms(tta: bool | Iterable[Sequence] | None) -> list[Transform]:
    """``True`` → the 8 of :data:`DIHEDRAL`; ``False``/``None`` → the identity only; a
    sequence of ``(flip, k)`` pairs → those (``k`` taken mod 4)."""
    if tta is True:
        return list(DIHEDRAL)
    if not tta:
        return [IDENTITY]
    out = []
    for t in tta:
        flip, k = t
        out.append((bool(flip), int(k) % 4))
    return out


def _map(fn: Callable[[torch.Tensor], torch.Tensor], maps: Maps) -> Maps:
    if isinstance(maps, torch.Tensor):
        return fn(maps)
    return {name: fn(m) for name, m in maps.items()}


class MapMean:
    """Mean of maps predicted under transforms: ``add(maps, (flip, k))`` maps them back
    (:func:`invert`) and sums; ``mean()`` divides by the count. ``maps``: a tensor or a
    dict of tensors (every call with the same keys)."""

    def __init__(self) -> None:
        self._sum: Any = None
        self.count = 0

    def add(self, maps: Maps, transform: Transform = IDENTITY) -> None:
        back = _map(lambda m: invert(m, *transform), maps)
        if self._sum is None:
            self._sum = back
        elif isinstance(back, torch.Tensor):
            self._sum = self._sum + back
        else:
            if set(back) != set(self._sum):
                raise ValueError(f"maps hold {sorted(back)}, earlier ones {sorted(self._sum)}")
            self._sum = {name: self._sum[name] + m for name, m in back.items()}
        self.count += 1

    def mean(self) -> Maps:
        if self.count == 0:
            raise ValueError("no maps added")
        return _map(lambda m: m / self.count, self._sum)


def average(fn: Callable[[torch.Tensor], Maps], x: torch.Tensor,
            transforms: Iterable[Transform] = DIHEDRAL) -> Maps:
    """``fn``'s maps for ``x`` ``(..., H, W)`` averaged over ``transforms``: each transform
    is applied to ``x``, ``fn`` runs on the result and its maps (a tensor or dict of
    tensors, ``(..., H', W')`` in the transformed frame) are inverted before averaging."""
    acc = MapMean()
    for t in transforms:
        acc.add(fn(apply(x, *t)), t)
    return acc.mean()
