"""Splits grouped by slide and stratified by organ (OCELOT §3.1: "we randomly split the
dataset per WSI, so that different patches from the same WSI are not included in multiple
subsets. We maintain consistent cancer-type ratios in each subset").

:func:`grouped_folds` assigns every sample a fold ``0..k-1`` so that

* all samples of one slide share a fold (a slide is never in two folds);
* within each organ, slides are dealt out largest first, each to the fold that holds the
  fewest samples of that organ so far (ties: fewest samples in all, then a seeded random
  order). With one sample per slide every fold then holds ``⌊n_o / k⌋`` or ``⌈n_o / k⌉``
  samples of organ ``o``: the organ shares are exact to within one sample. Larger slides
  make that impossible in general; the greedy deal keeps the counts as even as it can.

The slide of a sample is ``meta["slide_name"]`` (OCELOT ``metadata.json``; a ``slide``
column in the own-data ``pairs.csv``), or its own id when the source does not say
(:meth:`~histozoom.data.base.PairSplit.slide_and_organ`).

:class:`SubsetSplit` and :class:`ConcatSplit` turn folds into splits the trainer reads:
``train --folds K --fold I`` trains on the training split without fold ``I`` and
validates on fold ``I`` (:func:`fold_splits`); ``--retrain-all`` trains on the training
and validation splits together (:class:`ConcatSplit`) with no validation.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from ..errors import InputError
from ..pair import Pair, Points
from .base import PairSplit

NO_ORGAN = "unknown"
"""The organ of samples whose source names none (one stratum)."""


def grouped_folds(slides: Sequence[str], organs: Sequence[str | None], k: int, seed: int = 0) -> np.ndarray:
    """Fold ``0..k-1`` of each sample (see the module doc for the rule).

    ``slides[i]``/``organs[i]``: sample ``i``'s slide and organ (``None`` = :data:`NO_ORGAN`).
    A slide listed under two organs is an error (its samples could not share a fold and
    be stratified). Deterministic for a given ``seed``."""
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got {k}")
    if len(slides) != len(organs):
        raise ValueError("slides and organs differ in length")
    members: dict[str, list[int]] = defaultdict(list)
    organ_of: dict[str, str] = {}
    for i, (s, o) in enumerate(zip(slides, organs)):
        o = o or NO_ORGAN
        if organ_of.setdefault(s, o) != o:
            raise ValueError(f"slide {s!r} is listed under two organs ({organ_of[s]!r} and {o!r})")
        members[s].append(i)
    n_slides = len(members)
    if n_slides < k:
        raise ValueError(f"{k} folds need at least {k} slides, got {n_slides}")
    rng = np.random.default_rng(seed)
    tie = {s: float(r) for s, r in zip(sorted(members), rng.permutation(n_slides))}
    folds = np.full(len(slides), -1, np.int64)
    total = np.zeros(k, np.int64)
    order_folds = rng.permutation(k)  # which fold wins a full tie
    for organ in sorted(set(organ_of.values())):
        count = np.zeros(k, np.int64)
        organ_slides = sorted((s for s in members if organ_of[s] == organ), key=lambda s: (-len(members[s]), tie[s]))
        for s in organ_slides:
            f = min(order_folds, key=lambda j: (count[j], total[j]))
            folds[members[s]] = f
            count[f] += len(members[s])
            total[f] += len(members[s])
    return folds


def split_folds(split: PairSplit, k: int, seed: int = 0) -> np.ndarray:
    """:func:`grouped_folds` of a split's samples (in ``split.ids`` order), from its metadata."""
    info = [split.slide_and_organ(i) for i in split.ids]
    try:
        return grouped_folds([s for s, _ in info], [o for _, o in info], k, seed)
    except ValueError as e:
        raise InputError(None, f"split {split.name!r}: {e}") from None


class SubsetSplit(PairSplit):
    """The samples ``ids`` of another split, under the name ``name``."""

    def __init__(self, base: PairSplit, ids: Sequence[str], name: str):
        self.base = base
        self.spec = base.spec
        self.name = name
        self._ids = sorted(ids)

    @property
    def ids(self) -> list[str]:
        return self._ids

    def load(self, sample_id: str) -> Pair:
        return self.base.load(sample_id)

    def points(self, sample_id: str) -> Points | None:
        return self.base.points(sample_id)

    def slide_and_organ(self, sample_id: str) -> tuple[str, str | None]:
        return self.base.slide_and_organ(sample_id)


class ConcatSplit(PairSplit):
    """Several splits of one dataset as one; sample ids become ``"<split>/<id>"`` so they
    stay unique (and sort by split, then id)."""

    def __init__(self, parts: Sequence[PairSplit], name: str):
        if not parts:
            raise ValueError("ConcatSplit needs at least one split")
        self.parts = {p.name: p for p in parts}
        self.spec = parts[0].spec
        self.name = name
        self._ids = sorted(f"{p.name}/{i}" for p in parts for i in p.ids)

    @property
    def ids(self) -> list[str]:
        return self._ids

    def _part(self, sample_id: str) -> tuple[PairSplit, str]:
        split, _, sid = sample_id.partition("/")
        if split not in self.parts:
            raise KeyError(f"no sample {sample_id!r} in {self.name!r}")
        return self.parts[split], sid

    def load(self, sample_id: str) -> Pair:
        part, sid = self._part(sample_id)
        return part.load(sid).replace(id=sample_id)

    def points(self, sample_id: str) -> Points | None:
        part, sid = self._part(sample_id)
        return part.points(sid)

    def slide_and_organ(self, sample_id: str) -> tuple[str, str | None]:
        part, sid = self._part(sample_id)
        return part.slide_and_organ(sid)


def fold_splits(split: PairSplit, k: int, fold: int, seed: int = 0) -> tuple[SubsetSplit, SubsetSplit]:
    """``(train, val)``: the samples of ``split`` outside fold ``fold`` and inside it."""
    if not 0 <= fold < k:
        raise ValueError(f"fold must be in 0..{k - 1}, got {fold}")
    folds = split_folds(split, k, seed)
    ids = split.ids
    train = [i for i, f in zip(ids, folds) if f != fold]
    val = [i for i, f in zip(ids, folds) if f == fold]
    return (SubsetSplit(split, train, f"{split.name}-without-fold{fold}"),
            SubsetSplit(split, val, f"{split.name}-fold{fold}"))
