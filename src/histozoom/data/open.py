"""Open any supported paired dataset by looking at what the folder holds."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from ..errors import InputError
from .base import PairSource, PairSplit
from .gc_container import GrandChallengeContainer, is_container_dir
from .ocelot_release import OcelotRelease, is_release_dir
from .own_layout import OwnDataset, find_descriptor


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


DatasetFormat = Literal["own", "container", "release"]


def detect_format(path: str | Path) -> DatasetFormat | None:
    """Which paired-dataset layout ``path`` holds, or ``None`` for none of them.

    ``"own"``: an own-layout descriptor (``dataset.yaml``/``.yml``/``.json`` in the folder,
    or the descriptor file itself); ``"container"``: a Grand-Challenge container
    (``images/cell_patches/000.tif`` + ``metadata.json``); ``"release"``: the OCELOT
    release (``metadata.json`` + ``images/``). Checked in this order; this is the one
    detector :func:`open_dataset` and the evaluation's point sources use.
    """
    path = Path(path)
    if find_descriptor(path) is not None:
        return "own"
    if is_container_dir(path):
        return "container"
    if is_release_dir(path):
        return "release"
    return None


def is_dataset(path: str | Path) -> bool:
    """Whether :func:`open_dataset` reads ``path`` (see :func:`detect_format`)."""
    return detect_format(path) is not None


def open_dataset(path: str | Path, allow_outside_paths: bool = False) -> PairSource:
    """The dataset at ``path``: OCELOT release layout, Grand-Challenge container, or own layout.

    Paths read from the own layout's files must lie inside the dataset folder (symlinks
    resolved) unless ``allow_outside_paths`` is true; the release and container layouts
    take no paths from their files.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "dataset not found")
    fmt = detect_format(path)
    if fmt == "own":
        return OwnDataset(path, allow_outside_paths=allow_outside_paths)
    if fmt == "container":
        return _ContainerDataset(path)
    if fmt == "release":
        return OcelotRelease(path)
    raise InputError(
        path,
        "not a dataset: expected metadata.json + images/ (OCELOT release), "
        "images/cell_patches/000.tif + metadata.json (container), or dataset.yaml (own layout)",
    )


def pick_split(dataset: PairSource, name: str | None = None, path: str | Path | None = None) -> str:
    """The split of ``dataset`` to use: ``name`` when given (it must exist), else the
    dataset's only split, else ``"test"``; otherwise an error asks for one.

    ``path`` names the dataset in error messages (:class:`InputError`).
    """
    splits = list(dataset.splits)
    if name is not None:
        if name not in splits:
            raise InputError(path, f"split {name!r} not found (available: {', '.join(splits) or 'none'})")
        return name
    if len(splits) == 1:
        return splits[0]
    if "test" in splits:
        return "test"
    raise InputError(path, f"the dataset has several splits ({', '.join(splits)}); choose one with split=/--split")
