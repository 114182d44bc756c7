"""What every reader provides: a dataset spec and, per split, a sequence of pairs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..pair import ClassSet, Pair, Points


@dataclass(frozen=True)
class DatasetSpec:
    """Class sets and nominal resolutions of a paired dataset.

    ``cell_mpp``/``tissue_mpp`` are nominal microns per pixel of the stored images; each
    pair carries its own exact values.
    """

    cell_classes: ClassSet
    tissue_classes: ClassSet | None
    cell_mpp: float = 0.2
    tissue_mpp: float = 0.8
    name: str = ""

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "cell_classes": self.cell_classes.to_dict(),
            "tissue_classes": None if self.tissue_classes is None else self.tissue_classes.to_dict(),
            "cell_mpp": self.cell_mpp,
            "tissue_mpp": self.tissue_mpp,
        }

    @classmethod
    def from_dict(cls, d: dict) -> DatasetSpec:
        t = d.get("tissue_classes")
        return cls(
            ClassSet.from_dict(d["cell_classes"]),
            None if t is None else ClassSet.from_dict(t),
            float(d.get("cell_mpp", 0.2)),
            float(d.get("tissue_mpp", 0.8)),
            d.get("name", ""),
        )


def slide_name(value, sample_id: str) -> str:
    """A sample's slide: ``value`` when it is a non-empty string, else the sample's own id
    (each such sample is then a slide of its own)."""
    return value if isinstance(value, str) and value else str(sample_id)


class PairSplit(Sequence[Pair], ABC):
    """The pairs of one split, loaded lazily; ``ids`` are sorted sample ids.

    ``split[k]`` is the k-th pair in sorted id order, which is also the challenge's
    ``image_k`` numbering.
    """

    spec: DatasetSpec
    name: str

    @property
    @abstractmethod
    def ids(self) -> list[str]: ...

    @abstractmethod
    def load(self, sample_id: str) -> Pair: ...

    def slide_and_organ(self, sample_id: str) -> tuple[str, str | None]:
        """The slide a sample was cut from (``meta["slide_name"]``; its own id when the
        source does not say) and its organ, for grouped splits (:mod:`histozoom.data.splits`).
        Readers override this to answer from their metadata without decoding images."""
        pair = self.load(sample_id)
        return slide_name(pair.meta.get("slide_name"), sample_id), pair.organ

    def points(self, sample_id: str) -> Points | None:
        """Ground-truth cell points (cell frame) without decoding images, where cheap."""
        return self.load(sample_id).cell_points

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, k):  # type: ignore[override]
        if isinstance(k, slice):
            return [self.load(i) for i in self.ids[k]]
        return self.load(self.ids[k])

    def __iter__(self) -> Iterator[Pair]:
        for i in self.ids:
            yield self.load(i)


class PairSource(Protocol):
    """A dataset on disk with named splits of :class:`~histozoom.pair.Pair` records
    (what :func:`histozoom.data.open.open_dataset` returns). Not to be confused with
    :class:`histozoom.data.samples.PairDataset`, the torch dataset of training tensors."""

    spec: DatasetSpec

    @property
    def splits(self) -> list[str]: ...

    def split(self, name: str) -> PairSplit: ...
