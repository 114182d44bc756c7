"""Nuclei datasets: lazily loaded samples of one layout, and :func:`open_nuclei`, which tells the layout.

Layouts: plain folder (:mod:`.folder`), CoNSeP-style ``.mat`` (:mod:`.consep`), MICCAI
2015 text masks (:mod:`.miccai2015`), GBM40 contour XML (:mod:`.gbm40`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import InputError
from ...pair import ClassSet
from .consep import read_consep_mat
from .folder import find_class_file, read_class_file, read_folder_sample
from .gbm40 import read_gbm40
from .miccai2015 import read_miccai2015
from .records import CONSEP_CLASSES, IMAGE_EXTS, NucleiClassScheme, NucleiSample

__all__ = ["NucleiEntry", "NucleiDataset", "open_nuclei"]


@dataclass(frozen=True)
class NucleiEntry:
    """One lazily loaded sample of a :class:`NucleiDataset`."""

    id: str
    source: Path
    load: Callable[[], NucleiSample]


class NucleiDataset(Sequence[NucleiSample]):
    """Lazily loaded samples in sorted id order; ``ds[k]`` or ``ds["id"]``.

    Build it with :meth:`folder`, :meth:`consep`, :meth:`miccai2015`, :meth:`gbm40`, or
    let :func:`open_nuclei` tell the layout.
    """

    def __init__(self, entries: Sequence[NucleiEntry], scheme: NucleiClassScheme | None = None,
                 name: str = "", mpp: float | None = None):
        self.entries = sorted(entries, key=lambda e: e.id)
        self.scheme = scheme
        self.name = name
        self.mpp = mpp
        self._index = {e.id: k for k, e in enumerate(self.entries)}

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, key):  # type: ignore[override]
        if isinstance(key, str):
            if key not in self._index:
                raise KeyError(f"{self.name}: no sample {key!r}")
            key = self._index[key]
        if isinstance(key, slice):
            return [self[k] for k in range(*key.indices(len(self)))]
        return self.entries[key].load()

    def __iter__(self) -> Iterator[NucleiSample]:
        for e in self.entries:
            yield e.load()

    # ------------------------------------------------------------ layouts
    @classmethod
    def folder(cls, root: str | Path, split: str | None = None,
               scheme: NucleiClassScheme | None = None) -> NucleiDataset:
        """The plain layout at ``root`` (or ``root/split``); the class file may sit in ``root``."""
        root = Path(root)
        base = root / split if split else root
        if not (base / "images").is_dir():
            subs = sorted(p.name for p in root.iterdir() if (p / "images").is_dir()) if root.is_dir() else []
            hint = f"; splits here: {subs}" if subs else ""
            raise InputError(base / "images", f"folder not found{hint}")
        mpp = None
        cf = find_class_file(base)
        if scheme is None and cf is not None:
            scheme, mpp = read_class_file(cf)
        classes = scheme.classes if scheme is not None else None
        names = sorted({p.stem for p in (base / "images").iterdir() if p.suffix.lower() in IMAGE_EXTS})

        def loader(n: str) -> Callable[[], NucleiSample]:
            return lambda: read_folder_sample(base, n, classes, mpp)

        return cls([NucleiEntry(n, base / "images" / n, loader(n)) for n in names], scheme, base.name, mpp)

    @classmethod
    def consep(cls, root: str | Path, classes: ClassSet | None = CONSEP_CLASSES) -> NucleiDataset:
        """CoNSeP-style ``ROOT/masks/*.mat`` (or ``ROOT/Labels``) with ``ROOT/imgs`` (or ``images``, ``Images``)."""
        root = Path(root)
        mdir = next((root / d for d in ("masks", "Labels", "labels") if (root / d).is_dir()), None)
        if mdir is None:
            raise InputError(root / "masks", "folder of .mat files not found")
        mats = sorted(mdir.glob("*.mat"))

        def loader(p: Path) -> Callable[[], NucleiSample]:
            return lambda: read_consep_mat(p, classes=classes)

        scheme = NucleiClassScheme("consep", classes) if classes is not None else None
        return cls([NucleiEntry(p.stem, p, loader(p)) for p in mats], scheme, root.name)

    @classmethod
    def miccai2015(cls, root: str | Path, fix_swapped: bool = True) -> NucleiDataset:
        """``ROOT/imageXX.png`` with ``imageXX_mask.txt``; the release's 04/05 swap is fixed by default."""
        root = Path(root)
        imgs = sorted(p for p in root.glob("image*.png") if re.fullmatch(r"image\d+", p.stem))
        if not imgs:
            raise InputError(root, "no imageXX.png files")

        def loader(p: Path) -> Callable[[], NucleiSample]:
            return lambda: read_miccai2015(p, fix_swapped=fix_swapped)

        return cls([NucleiEntry(p.stem, p, loader(p)) for p in imgs], None, root.name)

    @classmethod
    def gbm40(cls, root: str | Path) -> NucleiDataset:
        """``ROOT/raw_image/NN.tif`` with ``ROOT/contour_annotation_xml/NN_data.xml``."""
        root = Path(root)
        if not (root / "raw_image").is_dir():
            raise InputError(root / "raw_image", "folder not found")
        imgs = sorted(p for p in (root / "raw_image").iterdir() if p.suffix.lower() in IMAGE_EXTS)

        def loader(p: Path) -> Callable[[], NucleiSample]:
            return lambda: read_gbm40(p)

        return cls([NucleiEntry(p.stem, p, loader(p)) for p in imgs], None, root.name)


def open_nuclei(root: str | Path, split: str | None = None, **kwargs: Any) -> NucleiDataset:
    """Open a nuclei dataset, telling the layout from the folder's contents.

    plain (``images/`` + ``labels/``, or ``SPLIT/images``), CoNSeP-style (``masks/*.mat``),
    MICCAI 2015 (``imageXX_mask.txt``), GBM40 (``raw_image/`` + ``contour_annotation_xml/``).
    ``kwargs`` go to the layout's constructor.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "not a folder")
    if split is not None or ((root / "images").is_dir() and (root / "labels").is_dir()):
        return NucleiDataset.folder(root, split, **kwargs)
    if (root / "raw_image").is_dir() and (root / "contour_annotation_xml").is_dir():
        return NucleiDataset.gbm40(root, **kwargs)
    if any((root / d).is_dir() and any((root / d).glob("*.mat")) for d in ("masks", "Labels", "labels")):
        return NucleiDataset.consep(root, **kwargs)
    if any(root.glob("image*_mask.txt")):
        return NucleiDataset.miccai2015(root, **kwargs)
    subs = sorted(p.name for p in root.iterdir() if (p / "images").is_dir())
    if subs:
        raise InputError(root, f"holds splits {subs}; pass split=")
    raise InputError(root, "unknown nuclei layout (plain images/+labels/, CoNSeP masks/*.mat, MICCAI 2015, GBM40)")
