"""Open any supported paired dataset by looking at what the folder holds."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ..errors import InputError
from .base import DatasetSpec, PairSplit
from .gc_container import GrandChallengeContainer, is_container_dir
from .ocelot_release import OcelotRelease, is_release_dir
from .own_layout import OwnDataset, find_descriptor


class PairDataset(Protocol):
    spec: DatasetSpec

    @property
    def splits(self) -> list[str]: ...

    def split(self, name: str) -> PairSplit: ...


class _ContainerDataset:
    """A container folder seen as a dataset with one split, ``"container"``."""

    def __init__(self, root: Path):
        self._split = GrandChallengeContainer(root)
        self.spec = self._split.spec
        self.splits = ["container"]

    def split(self, name: str) -> PairSplit:
        if name not in self.splits:
            raise InputError(self._split.root, f"a container folder has only the split 'container', not {name!r}")
        return self._split


def open_dataset(path: str | Path) -> PairDataset:
    """The dataset at ``path``: OCELOT release layout, Grand-Challenge container, or own layout."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "dataset not found")
    if find_descriptor(path) is not None:
        return OwnDataset(path)
    if is_container_dir(path):
        return _ContainerDataset(path)
    if is_release_dir(path):
        return OcelotRelease(path)
    raise InputError(
        path,
        "not a dataset: expected metadata.json + images/ (OCELOT release), "
        "images/cell_patches/000.tif + metadata.json (container), or dataset.yaml (own layout)",
    )
