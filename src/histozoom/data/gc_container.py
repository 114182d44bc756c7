"""The OCELOT 2023 Grand-Challenge container layout (the algorithm's input folder).

Layout::

    ROOT/images/cell_patches/<name>.tif     N cell views stacked along the height axis
    ROOT/images/tissue_patches/<name>.tif   N tissue views stacked the same way
    ROOT/metadata.json                      a JSON list; entry k describes pair k

Each folder holds exactly one TIFF, of any name (the platform names it by a UUID; the
released sample and :func:`write_container` use ``000.tif``).

Each metadata entry has the release's per-sample keys (``cell``/``tissue`` boxes with
``resized_mpp_x/y``, ``patch_x_offset/patch_y_offset``, ``organ``...). Pair ``k`` is the
challenge's ``image_k``; its id here is ``"k"`` zero-padded to three digits. The
algorithm writes its detections as ``cell_classification.json`` ("Multiple points").
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..jsonio import read_json
from ..pair import OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES, Pair
from .base import DatasetSpec, PairSplit, slide_name
from .io import read_rgb
from .ocelot_release import _mpp, check_box_size, placement_from_entry

CELL_TIFF = Path("images/cell_patches/000.tif")
TISSUE_TIFF = Path("images/tissue_patches/000.tif")
"""Where :func:`write_container` puts the stacks (Grand-Challenge itself names them by a UUID)."""
CELL_FOLDER, TISSUE_FOLDER = CELL_TIFF.parent, TISSUE_TIFF.parent


def stack_file(root: str | Path, folder: Path) -> Path:
    """The one ``.tif``/``.tiff`` in ``root/folder`` (any name: the platform uses UUIDs);
    an error names the folder when there is none or more than one."""
    d = Path(root) / folder
    found = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in (".tif", ".tiff")) if d.is_dir() else []
    if len(found) != 1:
        what = "no .tif file" if not found else f"{len(found)} .tif files ({', '.join(p.name for p in found[:3])})"
        raise InputError(d, f"expected exactly one stacked TIFF of all pairs, found {what}")
    return found[0]


def is_container_dir(root: str | Path) -> bool:
    root = Path(root)
    cells = root / CELL_FOLDER
    return (root / "metadata.json").is_file() and cells.is_dir() and any(
        p.suffix.lower() in (".tif", ".tiff") for p in cells.iterdir())


class GrandChallengeContainer(PairSplit):
    """All pairs of a container input folder (one split, named ``"container"``).

    Images are decoded once on first access (the container holds one stacked TIFF per
    view) and sliced per pair.
    """

    def __init__(self, root: str | Path, spec: DatasetSpec | None = None):
        self.root = Path(root)
        self.name = "container"
        self.spec = spec or DatasetSpec(OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES, name="ocelot-container")
        self.metadata_path = self.root / "metadata.json"
        meta = read_json(self.metadata_path, "metadata")
        if not isinstance(meta, list) or not meta:
            raise InputError(self.metadata_path, "expected a non-empty JSON list with one entry per pair")
        self.metadata: list[dict] = meta

    @cached_property
    def ids(self) -> list[str]:
        return [f"{k:03d}" for k in range(len(self.metadata))]

    def slide_and_organ(self, sample_id: str) -> tuple[str, str | None]:
        entry = self.metadata[int(sample_id)] if sample_id.isdigit() and int(sample_id) < len(self.metadata) else None
        if not isinstance(entry, dict):
            raise InputError(self.metadata_path, f"no entry for pair {sample_id}")
        return slide_name(entry.get("slide_name"), sample_id), entry.get("organ")

    def _stack(self, folder: Path) -> tuple[np.ndarray, int]:
        path = stack_file(self.root, folder)
        arr = read_rgb(path)
        n = len(self.metadata)
        if arr.shape[0] % n:
            raise InputError(
                path,
                f"height {arr.shape[0]} px is not a multiple of the {n} pairs listed in "
                f"{self.metadata_path.name} (mismatched pair count)",
            )
        return arr, arr.shape[0] // n

    @cached_property
    def _cells(self) -> tuple[np.ndarray, int]:
        return self._stack(CELL_FOLDER)

    @cached_property
    def _tissues(self) -> tuple[np.ndarray, int]:
        return self._stack(TISSUE_FOLDER)

    def load(self, sample_id: str) -> Pair:
        k = int(sample_id)
        if not 0 <= k < len(self.metadata):
            raise InputError(self.metadata_path, f"no entry for pair {sample_id}")
        cells, ch = self._cells
        tissues, th = self._tissues
        cell = cells[k * ch:(k + 1) * ch]
        tissue = tissues[k * th:(k + 1) * th]
        entry = self.metadata[k]
        if not isinstance(entry, dict):
            raise InputError(self.metadata_path, f"entry {k} is not an object")
        cell_size, tissue_size = (cell.shape[1], cell.shape[0]), (tissue.shape[1], tissue.shape[0])
        check_box_size(entry, "cell", cell_size, self.metadata_path, sample_id)
        check_box_size(entry, "tissue", tissue_size, self.metadata_path, sample_id)
        placement = placement_from_entry(entry, cell_size, tissue_size, self.metadata_path, sample_id)
        return Pair(
            id=sample_id,
            cell_image=cell,
            tissue_image=tissue,
            placement=placement,
            organ=entry.get("organ"),
            cell_mpp=_mpp(entry, "cell", self.metadata_path, sample_id)[0],
            tissue_mpp=_mpp(entry, "tissue", self.metadata_path, sample_id)[0],
            meta={"slide_name": entry.get("slide_name"), "split": self.name, "index": k},
        )


def write_container(root: str | Path, pairs: list[Pair]) -> Path:
    """Write pairs as a container input folder (stacked TIFFs + metadata list), atomically per file.

    All cell views must share one size, and all tissue views another.
    """
    from ..atomic import write_json
    from .io import write_image
    from .ocelot_release import ocelot_entry

    if not pairs:
        raise ValueError("write_container: no pairs")
    if len({p.cell_image.shape for p in pairs}) > 1 or len({p.tissue_image.shape for p in pairs}) > 1:
        raise ValueError("write_container: all cell views (and all tissue views) must have one size")
    root = Path(root)
    write_image(root / CELL_TIFF, np.concatenate([p.cell_image for p in pairs], axis=0))
    write_image(root / TISSUE_TIFF, np.concatenate([p.tissue_image for p in pairs], axis=0))
    write_json(root / "metadata.json", [ocelot_entry(p, p.meta.get("split", "test")) for p in pairs])
    return root
