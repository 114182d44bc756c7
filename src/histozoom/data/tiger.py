"""TIGER (WSIROIS) → histozoom pairs: the OCELOT paper's TIGER pre-processing.

This implements section F of the OCELOT supplement (Ryu et al., CVPR 2023): Algorithm 1 for
TCGA samples and Algorithm 2 for the other (non-TCGA) samples. It reads the ROI-level part of
the TIGER training release and writes the histozoom own-data layout
(:func:`histozoom.data.own_layout.write_own_dataset`), which
:func:`histozoom.data.open.open_dataset` reads.

Input layout
------------
The ``wsirois`` folder of the TIGER training release (``aws s3 cp s3://tiger-training/ ...``);
``convert_tiger`` accepts that folder, the folder holding it, or its ``roi-level-annotations``
folder::

    wsirois/roi-level-annotations/
        tissue-cells/
            images/NAME_[x1, y1, x2, y2].png   RGB ROIs with cell annotations (all sources)
            masks/NAME_[x1, y1, x2, y2].png    their tissue labels (same size, ids below)
            tiger-coco.json                    COCO boxes of the cells in those ROIs
        tissue-bcss/
            images/TCGA-..._[x1, y1, x2, y2].png   large TCGA tissue ROIs (BCSS)
            masks/TCGA-..._[x1, y1, x2, y2].png    their tissue labels

* ``NAME`` is the slide name; ``[x1, y1, x2, y2]`` the ROI box in level-0 pixels of that
  slide (about 0.5 µm/px; ``mpp``). TCGA samples are the names beginning with ``TCGA``.
  Only ``x1, y1`` (the ROI's top-left) are used; the ROI size is the image's.
* ``tiger-coco.json``: ``images`` entries ``{"id", "file_name", "width", "height"}``
  (``file_name`` matched by its last path component against ``images/``), ``annotations``
  ``{"image_id", "category_id", "bbox": [x, y, w, h]}`` in pixels of that image, and
  ``categories``. Every category whose name contains "lymphocyte" is the cell class: in the
  release that is the single category "lymphocytes and plasma cells", so plasma cells are
  kept, as lymphocytes (LC), as the paper's single TIGER cell class does.
* Tissue masks hold the TIGER ids 1 invasive tumor, 2 tumor-associated stroma, 3 in-situ
  tumor, 4 healthy glands, 5 necrosis not in-situ, 6 inflamed stroma, 7 rest, 0 excluded /
  not annotated. Any other value is an :class:`~histozoom.errors.InputError`.

Definitions
-----------
* Cell point of a box ``[x, y, w, h]``: its centre as a pixel index (histozoom's pixel-centre
  convention, :mod:`histozoom.geometry`): the box covers pixels ``x .. x + w - 1``, so the
  point is ``(x + (w - 1) / 2, y + (h - 1) / 2)``. A box belongs to a crop when its point
  lies in the crop (``Points.inside``).
* Tissue remap (supplement F): 2 and 6 → ST (2); 1, 3, 4, 5, 7 → BG (1); 0 → 255
  (:data:`~histozoom.pair.UNKNOWN`, ignored).
* ``C = cell_size`` (128), ``T = tissue_size`` (512), ``k = T / C`` (4). Each pair: a ``C`` px
  cell crop at ``mpp``; the ``T`` px tissue crop around it resized to ``C`` px (image: box /
  area average; mask: nearest), so at ``k * mpp``; the cell window sits at the crop's place in
  it (``C / k`` px wide). Organ "breast"; ``meta["slide_name"]`` the slide name.

Algorithm 1 (TCGA), per cell ROI of ``tissue-cells`` whose name begins with ``TCGA``: the
tissue ROI is the first ``tissue-bcss`` ROI (sorted by name) of the same slide whose box
contains the ``C`` px crop at the cell ROI's top-left ``(xc, yc)`` (in that ROI's frame);
none: the ROI is counted in ``rois_without_tissue``. A cell ROI under ``C`` px in either side
is skipped (``rois_too_small``); else the cell crop is its top-left ``C`` px. For ``(it, jt)``
in ``range(k) × range(k)`` (the 16 "surrounding" tissue patches) the tissue crop's top-left is
``(yc − it·C, xc − jt·C)``; crops leaving the tissue ROI are skipped
(``tissue_patches_at_border``). Pair id ``<slide>_<x1>_<y1>_<x2>_<y2>_t<it>_<jt>``.

Algorithm 2 (non-TCGA: cell and tissue ROI are the same image): only images with
``H > 2T`` and ``W > 2T`` (1024 px, as printed; else ``images_too_small``). Whole ``T`` px
tiles at ``(it·T, jt·T)`` for ``it < H // T``, ``jt < W // T``; each tile with each of its
``k × k`` cell sub-patches at ``(ic·C, jc·C)`` inside it is a pair. Pair id
``<slide>_<x1>_<y1>_<x2>_<y2>_p<it>_<jt>_c<ic>_<jc>``.

Corrections to the printed algorithms: Algorithm 2 line 16 crops the cell sub-patch with size
``Szt``; it must be ``Szc`` (a cell patch is ``C`` px). Line 17 filters boxes at
``(yc + yt, xc + yt)``; the x offset is ``xc + xt``. Line 8 loops over ``Ht/Szt × Wt/Szt`` of
an image named ``H, W``; the tile counts here are ``H // T`` and ``W // T`` (whole tiles only).
The loops ``[0..Szt/Szc]`` are read as ``range(k)`` (16 patches, as Algorithm 1's comment says),
not ``k + 1`` values. The supplement's text says each non-TCGA tissue patch pairs with "42" cell
sub-patches and each TCGA cell ROI with "up to 42" tissue patches; its own loops give 16
(``k² = (512/128)²``), which is what is implemented.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ConfigError, InputError
from ..geometry import Placement
from ..jsonio import read_json
from ..pair import UNKNOWN, ClassSet, Pair, Points
from .base import DatasetSpec
from .checks import check_mpp, excerpt
from .io import read_image_size, read_label_map, read_rgb

TIGER_TISSUE_CLASSES = ClassSet(
    ("invasive tumor", "tumor-associated stroma", "in-situ tumor", "healthy glands", "necrosis not in-situ",
     "inflamed stroma", "rest"),
    (1, 2, 3, 4, 5, 6, 7),
)
"""Tissue ids of TIGER masks; 0 is excluded / not annotated."""
BG, ST = 1, 2
"""histozoom tissue ids after the remap."""
STROMA_IDS = (2, 6)
"""TIGER ids grouped into ST (tumor-associated and inflamed stroma)."""
CELL_CLASSES = ClassSet(("LC",), (1,))
"""The one cell class: lymphocyte (TIGER's "lymphocytes and plasma cells")."""
TISSUE_CLASSES = ClassSet(("BG", "ST"), (BG, ST), ignore=UNKNOWN)
LYMPHOCYTE_KEY = "lymphocyte"
"""A COCO category whose name contains this (case-insensitive) is the cell class."""
MIN_SIDE_FACTOR = 2
"""Algorithm 2 takes images with both sides > MIN_SIDE_FACTOR · tissue_size (1024 px)."""
ORGAN = "breast"
TCGA_PREFIX = "TCGA"
COCO_NAME = "tiger-coco.json"
_ROI_NAME = re.compile(r"^(?P<slide>.+?)_\[\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*\]$")


# ---------------------------------------------------------------------- summary
@dataclass
class TigerSummary:
    """What a conversion wrote and skipped (counts of pairs, ROIs, patches, images, cells)."""

    out: str
    split: str
    cell_mpp: float
    tissue_mpp: float
    pairs_tcga: int = 0
    pairs_non_tcga: int = 0
    cell_rois_tcga: int = 0
    images_non_tcga: int = 0
    rois_too_small: int = 0
    rois_without_tissue: int = 0
    tissue_patches_at_border: int = 0
    images_too_small: int = 0
    cells_written: int = 0
    slides: list[str] = field(default_factory=list)

    @property
    def pairs(self) -> int:
        return self.pairs_tcga + self.pairs_non_tcga

    def to_dict(self) -> dict:
        return asdict(self) | {"pairs": self.pairs}


# ---------------------------------------------------------------------- the input layout
@dataclass(frozen=True)
class Roi:
    """One ROI file: slide name and box ``(x1, y1, x2, y2)`` in level-0 slide pixels."""

    path: Path
    slide: str
    box: tuple[int, int, int, int]

    @property
    def tag(self) -> str:
        """``<slide>_<x1>_<y1>_<x2>_<y2>``: the ROI in pair ids and file names."""
        return "_".join([self.slide, *map(str, self.box)])

    @property
    def is_tcga(self) -> bool:
        return self.slide.startswith(TCGA_PREFIX)


def parse_roi_name(path: Path) -> Roi:
    """The slide and box a ROI file's name ``NAME_[x1, y1, x2, y2].png`` carries."""
    m = _ROI_NAME.match(path.stem)
    if m is None:
        raise InputError(path, "file name does not carry the ROI box as NAME_[x1, y1, x2, y2]")
    x1, y1, x2, y2 = (int(v) for v in m.groups()[1:])
    if x2 <= x1 or y2 <= y1:
        raise InputError(path, f"ROI box [{x1}, {y1}, {x2}, {y2}] in the file name is empty")
    return Roi(path, m["slide"], (x1, y1, x2, y2))


def find_roi_root(src: str | Path) -> Path:
    """The ``roi-level-annotations`` folder under ``src`` (the release root, ``wsirois`` or itself)."""
    src = Path(src)
    for cand in (src / "wsirois" / "roi-level-annotations", src / "roi-level-annotations", src):
        if (cand / "tissue-cells").is_dir():
            return cand
    raise InputError(src / "roi-level-annotations" / "tissue-cells",
                     "TIGER ROI folder not found (expected wsirois/roi-level-annotations/tissue-cells)")


def list_rois(folder: Path) -> list[Roi]:
    """The ROIs in ``folder/images`` (``*.png``), sorted by name; a missing folder is an InputError."""
    images = folder / "images"
    if not images.is_dir():
        raise InputError(images, "images folder not found")
    return [parse_roi_name(p) for p in sorted(images.glob("*.png"))]


def mask_path(roi: Roi) -> Path:
    """The tissue mask of a ROI: ``masks/`` beside its ``images/``, same file name."""
    return roi.path.parent.parent / "masks" / roi.path.name


# ---------------------------------------------------------------------- COCO boxes
def _lymphocyte_categories(coco: dict, path: Path) -> set[int]:
    cats = coco.get("categories")
    if not isinstance(cats, list):
        raise InputError(path, "expected a list 'categories'")
    ids = {c.get("id") for c in cats if isinstance(c, dict) and LYMPHOCYTE_KEY in str(c.get("name", "")).lower()}
    if not ids:
        names = [c.get("name") for c in cats if isinstance(c, dict)]
        raise InputError(path, f"no category named like {LYMPHOCYTE_KEY!r} among {excerpt(names, 200)}")
    return ids


def _box(ann: object, path: Path, k: int) -> tuple[object, tuple[float, float, float, float]]:
    """``(image_id, (x, y, w, h))`` of annotation ``k``, checked."""
    if not isinstance(ann, dict) or "image_id" not in ann:
        raise InputError(path, f"annotation {k}: expected a mapping with 'image_id' and 'bbox'")
    b = ann.get("bbox")
    try:
        x, y, w, h = (float(v) for v in b)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise InputError(path, f"annotation {k}: bbox must be 4 numbers [x, y, w, h], got {excerpt(b)}") from None
    if not all(np.isfinite((x, y, w, h))) or w < 0 or h < 0:
        raise InputError(path, f"annotation {k}: bbox {excerpt(b)} is not finite with w, h >= 0")
    return ann["image_id"], (x, y, w, h)


def read_coco_points(path: Path) -> dict[str, tuple[np.ndarray, tuple[int, int] | None]]:
    """Cell points of each COCO image: ``{file name: ((N, 2) x, y pixel indices, (w, h) or None)}``.

    Points are box centres as pixel indices (module docstring); only lymphocyte categories.
    """
    coco = read_json(path, "COCO annotations")
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list) \
            or not isinstance(coco.get("annotations"), list):
        raise InputError(path, "expected a COCO mapping with lists 'images', 'annotations' and 'categories'")
    cats = _lymphocyte_categories(coco, path)
    names: dict[object, str] = {}
    sizes: dict[str, tuple[int, int] | None] = {}
    for k, im in enumerate(coco["images"]):
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            raise InputError(path, f"images[{k}]: expected a mapping with 'id' and 'file_name'")
        name = Path(im["file_name"].replace("\\", "/")).name
        names[im["id"]] = name
        w, h = im.get("width"), im.get("height")
        sizes[name] = (int(w), int(h)) if isinstance(w, int) and isinstance(h, int) else None
    rows: dict[str, list[tuple[float, float]]] = {n: [] for n in sizes}
    for k, ann in enumerate(coco["annotations"]):
        image_id, (x, y, w, h) = _box(ann, path, k)
        if ann.get("category_id") not in cats:
            continue
        if image_id not in names:
            raise InputError(path, f"annotation {k}: image_id {excerpt(image_id)} is not in 'images'")
        rows[names[image_id]].append((x + (w - 1) / 2, y + (h - 1) / 2))
    return {n: (np.asarray(rows[n], dtype=np.float64).reshape(-1, 2), sizes[n]) for n in sizes}


def points_in(xy: np.ndarray, x0: int, y0: int, size: int) -> Points:
    """Points of ``xy`` (source pixel indices) inside the ``size`` px crop at ``(x0, y0)``, in
    the crop's frame, class LC."""
    shifted = Points(xy - (x0, y0), np.full(len(xy), CELL_CLASSES.ids[0]), np.ones(len(xy)))
    return shifted.subset(shifted.inside((size, size)))


# ---------------------------------------------------------------------- images
def remap_tissue(mask: np.ndarray) -> np.ndarray:
    """TIGER tissue ids → histozoom: 2, 6 → ST (2); 1, 3, 4, 5, 7 → BG (1); 0 → 255 (ignore).

    ``mask`` must hold only 0..7 (:func:`read_tiger_mask` checks)."""
    lut = np.full(256, BG, dtype=np.uint8)
    lut[0] = UNKNOWN
    lut[list(STROMA_IDS)] = ST
    return lut[mask]


def read_tiger_mask(roi: Roi, size: tuple[int, int]) -> np.ndarray:
    """The ROI's remapped tissue mask; it must be ``size = (w, h)`` and hold only TIGER ids."""
    return remap_tissue(read_label_map(mask_path(roi), TIGER_TISSUE_CLASSES, size))


def shrink(a: np.ndarray, side: int, *, labels: bool) -> np.ndarray:
    """``a`` resized to ``side`` px square: box (area) average for images, nearest for labels."""
    im = Image.fromarray(a)
    return np.asarray(im.resize((side, side), Image.Resampling.NEAREST if labels else Image.Resampling.BOX))


def crop(a: np.ndarray, x0: int, y0: int, size: int) -> np.ndarray:
    """The ``size`` px square of ``a`` at top-left ``(x0, y0)`` (caller checks it is inside)."""
    return a[y0:y0 + size, x0:x0 + size]


# ---------------------------------------------------------------------- pairs
@dataclass(frozen=True)
class _Geometry:
    """Patch sizes and resolutions: ``cell`` (C) and ``tissue`` (T) px, ``mpp`` of the source."""

    cell: int
    tissue: int
    mpp: float

    @property
    def factor(self) -> int:
        return self.tissue // self.cell

    @property
    def tissue_mpp(self) -> float:
        return self.mpp * self.factor

    def placement(self, ox: int, oy: int) -> Placement:
        """The cell window for a cell crop at ``(ox, oy)`` px inside the full-resolution tissue crop."""
        c, t = self.cell, self.tissue
        return Placement.from_centre(((ox + c / 2) / t, (oy + c / 2) / t), (c, c), (c, c), self.mpp, self.tissue_mpp)


def _pair(g: _Geometry, pid: str, slide: str, cell: np.ndarray, points: Points, tissue: np.ndarray,
          tmask: np.ndarray, ox: int, oy: int) -> Pair:
    """One pair from a full-resolution tissue crop (``T`` px, image and remapped mask) and the
    cell crop at ``(ox, oy)`` in it."""
    return Pair(id=pid, cell_image=np.ascontiguousarray(cell), tissue_image=shrink(tissue, g.cell, labels=False),
                placement=g.placement(ox, oy), cell_points=points, tissue_mask=shrink(tmask, g.cell, labels=True),
                organ=ORGAN, cell_mpp=g.mpp, tissue_mpp=g.tissue_mpp, meta={"slide_name": slide})


def _check_coco_size(roi: Roi, coco_path: Path, size: tuple[int, int] | None, actual: tuple[int, int]) -> None:
    if size is not None and size != actual:
        raise InputError(coco_path, f"{roi.path.name}: COCO says {size[0]}x{size[1]} px, the image is "
                                    f"{actual[0]}x{actual[1]}")


def _tissue_roi_for(cell: Roi, tissue_rois: list[Roi], side: int) -> Roi | None:
    """The first tissue ROI of the cell ROI's slide whose box holds the ``side`` px crop at the
    cell ROI's top-left."""
    x, y = cell.box[:2]
    for t in tissue_rois:
        tx1, ty1, tx2, ty2 = t.box
        if t.slide == cell.slide and tx1 <= x and ty1 <= y and x + side <= tx2 and y + side <= ty2:
            return t
    return None


def tcga_pairs(g: _Geometry, cell_rois: list[Roi], tissue_rois: list[Roi], boxes: dict, coco_path: Path,
               summary: TigerSummary, progress: Callable[[str], None] | None = None) -> Iterator[Pair]:
    """Algorithm 1: the pairs of the TCGA cell ROIs (module docstring)."""
    groups: dict[Roi, list[Roi]] = {}
    for roi in cell_rois:
        summary.cell_rois_tcga += 1
        t = _tissue_roi_for(roi, tissue_rois, g.cell)
        if t is None:
            summary.rois_without_tissue += 1
        else:
            groups.setdefault(t, []).append(roi)
    for t, rois in groups.items():
        timg = read_rgb(t.path)
        th, tw = timg.shape[:2]
        tmask = read_tiger_mask(t, (tw, th))
        for roi in rois:
            if progress is not None:
                progress(roi.path.name)
            cimg = read_rgb(roi.path)
            ch, cw = cimg.shape[:2]
            xy, size = _points_of(roi, boxes, coco_path)
            _check_coco_size(roi, coco_path, size, (cw, ch))
            if cw < g.cell or ch < g.cell:
                summary.rois_too_small += 1
                continue
            cell = crop(cimg, 0, 0, g.cell)
            points = points_in(xy, 0, 0, g.cell)
            xc, yc = roi.box[0] - t.box[0], roi.box[1] - t.box[1]
            for it in range(g.factor):
                for jt in range(g.factor):
                    yt, xt = yc - it * g.cell, xc - jt * g.cell
                    if yt < 0 or xt < 0 or yt + g.tissue > th or xt + g.tissue > tw:
                        summary.tissue_patches_at_border += 1
                        continue
                    summary.pairs_tcga += 1
                    summary.cells_written += len(points)
                    yield _pair(g, f"{roi.tag}_t{it}_{jt}", roi.slide, cell, points, crop(timg, xt, yt, g.tissue),
                                crop(tmask, xt, yt, g.tissue), xc - xt, yc - yt)


def non_tcga_pairs(g: _Geometry, rois: list[Roi], boxes: dict, coco_path: Path, summary: TigerSummary,
                   progress: Callable[[str], None] | None = None) -> Iterator[Pair]:
    """Algorithm 2: the pairs of the non-TCGA ROIs (module docstring)."""
    for roi in rois:
        summary.images_non_tcga += 1
        if progress is not None:
            progress(roi.path.name)
        w, h = read_image_size(roi.path)
        xy, size = _points_of(roi, boxes, coco_path)
        _check_coco_size(roi, coco_path, size, (w, h))
        if not (h > MIN_SIDE_FACTOR * g.tissue and w > MIN_SIDE_FACTOR * g.tissue):
            summary.images_too_small += 1
            continue
        img = read_rgb(roi.path, size=(w, h))
        mask = read_tiger_mask(roi, (w, h))
        for it in range(h // g.tissue):
            for jt in range(w // g.tissue):
                yt, xt = it * g.tissue, jt * g.tissue
                timg, tmask = crop(img, xt, yt, g.tissue), crop(mask, xt, yt, g.tissue)
                for ic in range(g.factor):
                    for jc in range(g.factor):
                        yc, xc = ic * g.cell, jc * g.cell
                        points = points_in(xy, xt + xc, yt + yc, g.cell)
                        summary.pairs_non_tcga += 1
                        summary.cells_written += len(points)
                        yield _pair(g, f"{roi.tag}_p{it}_{jt}_c{ic}_{jc}", roi.slide, crop(timg, xc, yc, g.cell),
                                    points, timg, tmask, xc, yc)


def _points_of(roi: Roi, boxes: dict, coco_path: Path) -> tuple[np.ndarray, tuple[int, int] | None]:
    if roi.path.name not in boxes:
        raise InputError(coco_path, f"no entry in 'images' for {roi.path.name}")
    return boxes[roi.path.name]


# ---------------------------------------------------------------------- the conversion
def _check_sizes(cell_size: int, tissue_size: int) -> None:
    if cell_size < 1 or tissue_size < cell_size or tissue_size % cell_size:
        raise ConfigError(f"tissue_size ({tissue_size}) must be a whole multiple of cell_size ({cell_size}) >= 1")


def _check_out(out: Path, overwrite: bool) -> None:
    """``out`` must be new or empty; with ``overwrite`` it may hold an earlier dataset (replaced whole)."""
    from ..atomic import check_output
    from .own_layout import find_descriptor

    check_output(out, "folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise InputError(out, "output folder is not empty (pass overwrite / --overwrite to replace a dataset)")
        if find_descriptor(out) is None:
            raise InputError(out, "output folder is not empty and holds no dataset.yaml; refusing to replace it")


def convert_tiger(src: str | Path, out: str | Path, *, cell_size: int = 128, tissue_size: int = 512,
                  mpp: float = 0.5, split: str = "train", overwrite: bool = False,
                  progress: Callable[[str], None] | None = None) -> TigerSummary:
    """Convert a TIGER WSIROIS folder ``src`` into the own-data layout at ``out`` (one split).

    ``mpp``: µm/px of the ROIs (cell images); tissue images get ``mpp · tissue_size / cell_size``.
    ``progress`` is called with each ROI file name as it is processed. The folder is written
    whole or not at all (:func:`histozoom.atomic.atomic_dir`). Bad input raises InputError.
    """
    from ..atomic import atomic_dir
    from .own_layout import write_own_dataset

    _check_sizes(cell_size, tissue_size)
    mpp = check_mpp(mpp, None, "mpp")
    out = Path(out)
    _check_out(out, overwrite)
    if not split or "/" in split or split.startswith("."):
        raise ConfigError(f"split must be a plain folder name, got {split!r}")
    g = _Geometry(cell_size, tissue_size, mpp)
    root = find_roi_root(src)
    cells_dir = root / "tissue-cells"
    rois = list_rois(cells_dir)
    coco_path = cells_dir / COCO_NAME
    boxes = read_coco_points(coco_path)
    tcga = [r for r in rois if r.is_tcga]
    other = [r for r in rois if not r.is_tcga]
    tissue_rois = list_rois(root / "tissue-bcss") if tcga else []
    summary = TigerSummary(str(out), split, g.mpp, g.tissue_mpp, slides=sorted({r.slide for r in rois}))
    spec = DatasetSpec(CELL_CLASSES, TISSUE_CLASSES, g.mpp, g.tissue_mpp, "tiger")

    def pairs() -> Iterator[Pair]:
        yield from tcga_pairs(g, tcga, tissue_rois, boxes, coco_path, summary, progress)
        yield from non_tcga_pairs(g, other, boxes, coco_path, summary, progress)

    with atomic_dir(out) as tmp:
        # write_own_dataset iterates each split's pairs once: a generator keeps one ROI in memory
        write_own_dataset(tmp, spec, {split: pairs()})
        if summary.pairs == 0:
            s = summary
            raise InputError(root, f"no pairs from {s.cell_rois_tcga} TCGA cell ROIs and {s.images_non_tcga} other "
                                   f"images ({s.rois_too_small} ROIs under {cell_size} px, {s.rois_without_tissue} "
                                   f"without a tissue ROI, {s.tissue_patches_at_border} tissue patches at the border, "
                                   f"{s.images_too_small} images not over {MIN_SIDE_FACTOR * tissue_size} px)")
    return summary
