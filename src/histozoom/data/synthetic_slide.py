"""Synthetic whole-slide images with ground truth (``histozoom synth slide``).

One slide is one scene of the paired generator (:mod:`histozoom.data.synthetic`), drawn
over the whole slide instead of around one cell window, so that a model trained on a
``histozoom synth`` dataset of the same preset transfers to it: the same stain model, the
same nucleus morphology per class (with one set of slide-wide offsets, as one sample of
the dataset), the same class–region rule (``P(TC | CA)`` and ``P(TC | BG)`` of the
preset) and the same glands filling the cancer area.

Units and frames
----------------
* **Level-0 pixels** at ``mpp`` µm/px: pixel ``(row, col)`` spans ``[col, col + 1) ×
  [row, row + 1)``; points (cells) are pixel *centres* at integer coordinates ``x = col``,
  ``y = row``.
* **Tissue pixels** at ``tissue_mpp = f · mpp`` (``f`` a whole number, 4 by default):
  tissue pixel ``j`` covers level-0 pixels ``[j f, (j + 1) f)``, so level-0 centre ``x``
  lies at tissue coordinate ``(x + 0.5) / f - 0.5``. The low-frequency fields (cancer area,
  stroma density and blotches, glands) live on this grid, once for the slide, and are
  resampled bilinearly to level 0. Tissue-scale structures are in units of the paired
  dataset's cell-window side ``W = window_um / tissue_mpp`` tissue px; ``window_um =
  204.8`` (1024 px × 0.2 µm/px, the default ``context`` geometry) gives glands and CA blobs
  of the same physical size as in that dataset.
* Class ids: 1 = BC (background cell), 2 = TC (tumour cell). Tissue ids: 1 = BG, 2 = CA;
  the whole slide is tissue (no glass, no unknown band).

What is drawn
-------------
Tissue scale (once, with the generator's functions): CA as the top share (15-70 %, mean
40 %) of smooth noise; the stroma eosin/hematoxylin fields; glands on a jittered grid over
CA, stamped as in the paired tissue view. Level 0 (strip by strip) is drawn as the paired
cell view is: those fields resampled bilinearly, times a fibre texture (periodic, period
up to 4096 px), the glands' pale lumina and dark rims added (soft-edged at level 0, since
they come from the tissue scale), nuclei stamped at full resolution with chromatin texture,
then shot noise and rounding to 8 bits. Lower levels are 2×2 means, so a slide read at the
tissue mpp looks like the (shrunk) cell window of a paired tissue view.

Cells come from one slide-wide point process (Poisson at the preset's density, at integer
centres, thinned to its minimum distance); classes follow the preset's ``P(TC | region)``;
cells inside glands are removed, as in the paired data. Random texture is tied to fixed
256 px bins (nuclei) and tiles (noise), so the image and the cells do not depend on the
strip size.

Outputs of :func:`write_synthetic_slide` for ``OUT.tiff``: the pyramidal tiled TIFF of
:func:`~histozoom.data.pyramid_tiff.write_pyramid_tiff` (deflate with a horizontal predictor,
256 px tiles, one page per level, ×2 down to a longest side under 1024, an Aperio
ImageDescription so that OpenSlide reports the mpp),
``OUT.cells.csv`` (``x,y,class,tissue``, rows sorted by ``y`` then ``x``), ``OUT.tissue.png``
(uint8 labels on the tissue grid), ``OUT.glands.png`` (the gland pixels of that grid) and
``OUT.slide.json`` (the returned summary).

Memory: ~30 bytes per tissue pixel (the fields), ~0.5 GB while the 4096 px fibre texture
is made, ~200 bytes per pixel of a drawing block (200 MB at the default 512 × 2048) and a
strip of uint8 RGB; the lower levels go through memory-mapped scratch files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..atomic import atomic_open, atomic_path, check_output, write_json
from ..constants import MPP_RANGE, OCELOT_ORGANS, PRESETS
from ..errors import ConfigError, InputError
from .pyramid_tiff import TILE, check_blocks, slide_stem, write_pyramid_tiff
from .synthetic import (
    BC,
    BG,
    CA,
    GLAND_COVER,
    TC,
    THINNING_COMPENSATION,
    SynthConfig,
    _ca_region,
    _ca_share,
    _cell_classes,
    _fibre_noise,
    _gland_layers,
    _gland_stain,
    _glands,
    _interp_1d,
    _quantise,
    _resample,
    _stain,
    _stamp_nuclei,
    _stroma,
    _thin,
    _to_rgb,
)

__all__ = ["SlideSynthConfig", "slide_outputs", "tissue_index", "write_synthetic_slide"]

MAX_SIDE_MM = 50.0
MAX_PIXELS = 2**31
"""Largest level-0 area in pixels (6 GiB of RGB)."""
MAX_TISSUE_PIXELS = 2**27
"""Largest tissue-scale grid (its fields are held in memory, ~30 bytes per pixel)."""
MIN_SIDE_PX = 16
DEFAULT_WINDOW_UM = 204.8
"""Cell-view side of the default ``context`` dataset: 1024 px × 0.2 µm/px."""
FIBRE_PERIOD = 4096
NUCLEUS_TEXTURE = 0.15  # chromatin texture, as in the paired cell views
FINE_TEXTURE = 0.15  # amplitude of the fibre texture on the eosin density, as in the paired cell views
_SCENE, _NUCLEI, _NOISE = 0x5C, 0x4E, 0x51  # seed-sequence tags of the slide's random streams


# ---------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class SlideSynthConfig:
    """A synthetic slide: ``width_mm × height_mm`` at ``mpp`` µm/px, tissue structure at
    ``tissue_mpp`` (``None``: ``4 · mpp``; a whole multiple of ``mpp``), tissue-scale sizes in
    units of ``window_um`` (the paired dataset's cell-view side in µm), random ``seed``."""

    preset: str = "context"
    width_mm: float = 2.0
    height_mm: float = 2.0
    mpp: float = 0.25
    tissue_mpp: float | None = None
    seed: int = 0
    window_um: float = DEFAULT_WINDOW_UM

    def __post_init__(self):
        if self.tissue_mpp is None and _finite_positive(self.mpp):
            object.__setattr__(self, "tissue_mpp", 4.0 * float(self.mpp))
        problems = self._problems()
        if problems:
            raise ConfigError("SlideSynthConfig: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        out = []
        if self.preset not in PRESETS:
            out.append(f"preset must be one of {PRESETS}, got {self.preset!r}")
        for name in ("width_mm", "height_mm"):
            v = getattr(self, name)
            if not (_finite_positive(v) and v <= MAX_SIDE_MM):
                out.append(f"{name} must be in (0, {MAX_SIDE_MM:g}], got {v!r}")
        lo, hi = MPP_RANGE
        for name in ("mpp", "tissue_mpp"):
            v = getattr(self, name)
            if v is None:  # tissue_mpp of a bad mpp
                continue
            if not (_finite_positive(v) and lo <= v <= hi):
                out.append(f"{name} must be in [{lo:g}, {hi:g}] µm/px, got {v!r}")
        if not (_finite_positive(self.window_um) and self.window_um <= 10_000):
            out.append(f"window_um must be in (0, 10000], got {self.window_um!r}")
        if not (isinstance(self.seed, (int, np.integer)) and 0 <= self.seed < 2**32):
            out.append(f"seed must be an integer in [0, 2**32), got {self.seed!r}")
        if out:
            return out
        f = self.tissue_mpp / self.mpp
        if round(f) < 1 or abs(f - round(f)) > 1e-6:
            out.append(f"tissue_mpp / mpp must be a whole number >= 1, got {f:g}")
            return out
        w, h = self.width_px, self.height_px
        if min(w, h) < MIN_SIDE_PX:
            out.append(f"the slide is {w}x{h} px; each side must be at least {MIN_SIDE_PX} px")
        if w * h > MAX_PIXELS:
            out.append(f"the slide is {w}x{h} px = {w * h:,} px, over the limit of {MAX_PIXELS:,} px")
        th, tw = self.tissue_shape
        if th * tw > MAX_TISSUE_PIXELS:
            out.append(f"the tissue grid is {tw}x{th} px, over the limit of {MAX_TISSUE_PIXELS:,} px "
                       f"(use a coarser tissue_mpp)")
        if self.window_px < 8:
            out.append(f"window_um / tissue_mpp = {self.window_px:g} tissue px; it must be at least 8")
        return out

    @property
    def width_px(self) -> int:
        return max(1, int(round(self.width_mm * 1000.0 / self.mpp)))

    @property
    def height_px(self) -> int:
        return max(1, int(round(self.height_mm * 1000.0 / self.mpp)))

    @property
    def factor(self) -> int:
        """Level-0 pixels per tissue pixel."""
        return int(round(self.tissue_mpp / self.mpp))

    @property
    def tissue_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the tissue grid (the last row/column may stick out of the slide)."""
        f = self.factor
        return -(-self.height_px // f), -(-self.width_px // f)

    @property
    def window_px(self) -> float:
        """``W``, the unit of tissue-scale structures, in tissue pixels."""
        return self.window_um / self.tissue_mpp

    def synth_config(self) -> SynthConfig:
        """The paired-dataset config whose scene statistics this slide follows."""
        return SynthConfig(preset=self.preset)


def _finite_positive(v) -> bool:
    return isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(v) and v > 0



# ---------------------------------------------------------------------- the scene
@dataclass
class _Scene:
    """Everything the strips are drawn from: tissue-scale fields, cells, texture."""

    cfg: SlideSynthConfig
    organ: str
    h_vec: np.ndarray
    e_vec: np.ndarray
    ca: np.ndarray  # bool, tissue grid
    fields: dict[str, np.ndarray]  # e, hb, lumen, rim, mid on the tissue grid (float32)
    fib: np.ndarray  # periodic fibre texture, level-0 px
    xy: np.ndarray  # (n, 2) int64 level-0 centres, sorted by y then x
    cls: np.ndarray
    region: np.ndarray  # tissue label under each cell
    morph: dict[str, np.ndarray]
    theta: np.ndarray
    phase: np.ndarray
    bins: _Bins
    rows_w: tuple[np.ndarray, np.ndarray, np.ndarray]
    cols_w: tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass
class _Bins:
    """Cells grouped by the ``TILE``-px bin of their centre: bin ``(by, bx)`` holds the cells
    ``order[start[k]:start[k + 1]]``, ``k = by · nx + bx``; ``reach``: how far (px) a nucleus
    stamp extends from its centre."""

    order: np.ndarray
    start: np.ndarray
    ny: int
    nx: int
    reach: int


def tissue_index(xy: np.ndarray, f: float, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Nearest tissue pixel ``(row, col)`` of level-0 centres ``xy`` ``(N, 2)`` (``f`` level-0
    px per tissue px, ``shape`` the tissue grid): the frame of ``OUT.tissue.png`` and ``OUT.glands.png``."""
    t = (xy + 0.5) / f - 0.5
    return (np.clip(np.rint(t[:, 1]), 0, shape[0] - 1).astype(np.int64),
            np.clip(np.rint(t[:, 0]), 0, shape[1] - 1).astype(np.int64))


def _scatter_cells(rng: np.random.Generator, syn: SynthConfig, cfg: SlideSynthConfig) -> np.ndarray:
    """Cell centres (int64 level-0 px): Poisson at the preset's density, thinned to its minimum distance."""
    w, h = cfg.width_px, cfg.height_px
    area_mm2 = w * h * (cfg.mpp / 1000.0) ** 2
    n = int(rng.poisson(syn.cells_per_mm2 * area_mm2 * THINNING_COMPENSATION))
    xy = np.rint(rng.uniform(-0.5, (w - 0.5, h - 0.5), (n, 2)))
    xy = np.clip(xy, 0, (w - 1, h - 1)).astype(np.int64)
    return xy[_thin(xy.astype(np.float64), syn.min_cell_distance_um / cfg.mpp)]


def _bin_cells(xy: np.ndarray, morph: dict, cfg: SlideSynthConfig) -> _Bins:
    ny, nx = -(-cfg.height_px // TILE), -(-cfg.width_px // TILE)
    key = (xy[:, 1] // TILE) * nx + xy[:, 0] // TILE
    order = np.argsort(key, kind="stable")
    start = np.searchsorted(key[order], np.arange(ny * nx + 1))
    r = morph["radius_um"] / cfg.mpp * np.sqrt(1 + morph["elongation"]) * (1 + morph["irregularity"])
    reach = int(math.ceil(float(r.max()) + 1.5)) + 1 if len(r) else 0
    return _Bins(order, start, ny, nx, reach)


def _build_scene(cfg: SlideSynthConfig) -> _Scene:
    """Draw the slide's scene: the random choices are made here, in a fixed order."""
    syn = cfg.synth_config()
    rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), _SCENE]))
    organ = str(OCELOT_ORGANS[int(rng.integers(len(OCELOT_ORGANS)))])
    h_vec, e_vec, h_bg = _stain(rng, organ)
    shape, w, f = cfg.tissue_shape, cfg.window_px, cfg.factor
    ca = _ca_region(rng, shape, syn.region_scale * w, _ca_share(rng, syn))
    e_t, hb_t, mid = _stroma(rng, shape, w, cfg.tissue_mpp, h_bg)

    xy = _scatter_cells(rng, syn, cfg)
    ti = tissue_index(xy, f, shape)
    cls, morph, theta, phase = _cell_classes(rng, syn, ca[ti])
    lumen, rim = _gland_layers(_glands(rng, ca, w, None), shape)
    keep = (lumen[ti] + rim[ti]) <= GLAND_COVER  # no cells inside glands (as in the paired data)
    order = np.flatnonzero(keep)
    order = order[np.lexsort((xy[order, 0], xy[order, 1]))]

    period = min(FIBRE_PERIOD, 1 << max(8, (max(cfg.width_px, cfg.height_px) - 1).bit_length()))
    fib = _fibre_noise(rng, period, 1.5 / cfg.mpp, 0.25 / cfg.mpp, rng.uniform(0, np.pi, 2))
    morph = {k: v[order] for k, v in morph.items()}
    return _Scene(
        cfg=cfg, organ=organ, h_vec=h_vec, e_vec=e_vec, ca=ca,
        fields={"e": e_t, "hb": hb_t, "lumen": lumen, "rim": rim, "mid": mid}, fib=fib,
        xy=xy[order], cls=cls[order], region=np.where(ca[ti][order], CA, BG).astype(np.uint8),
        morph=morph, theta=theta[order], phase=phase[order], bins=_bin_cells(xy[order], morph, cfg),
        rows_w=_interp_1d(cfg.height_px, 0, shape[0], f), cols_w=_interp_1d(cfg.width_px, 0, shape[1], f),
    )


# ---------------------------------------------------------------------- drawing
def _block_fields(scene: _Scene, r0: int, r1: int, c0: int, c1: int) -> dict[str, np.ndarray]:
    """The tissue fields resampled bilinearly to level-0 rows ``[r0, r1)``, cols ``[c0, c1)``."""
    ry = [v[r0:r1] for v in scene.rows_w]
    rx = [v[c0:c1] for v in scene.cols_w]
    ya, yb, xa, xb = ry[0][0], ry[1][-1] + 1, rx[0][0], rx[1][-1] + 1
    wy, wx = (ry[0] - ya, ry[1] - ya, ry[2]), (rx[0] - xa, rx[1] - xa, rx[2])
    return {k: np.ascontiguousarray(_resample(a[ya:yb, xa:xb], wy, wx)) for k, a in scene.fields.items()}


def _stamp_block_nuclei(scene: _Scene, h: np.ndarray, r0: int, c0: int) -> None:
    """Stamp every bin of nuclei that reaches into the block at ``(r0, c0)``; each bin with
    its own random stream, so a nucleus looks the same in every block that shows it."""
    b, cfg = scene.bins, scene.cfg
    r1, c1 = r0 + h.shape[0], c0 + h.shape[1]
    by0, by1 = max(0, (r0 - b.reach) // TILE), min(b.ny, (r1 - 1 + b.reach) // TILE + 1)
    bx0, bx1 = max(0, (c0 - b.reach) // TILE), min(b.nx, (c1 - 1 + b.reach) // TILE + 1)
    for by in range(by0, by1):
        for bx in range(bx0, bx1):
            k = by * b.nx + bx
            cells = b.order[b.start[k]:b.start[k + 1]]
            if len(cells) == 0:
                continue
            rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), _NUCLEI, by, bx]))
            xy = (scene.xy[cells] - (c0, r0)).astype(np.float64)  # block pixels
            morph = {name: v[cells] for name, v in scene.morph.items()}
            _stamp_nuclei(rng, h, xy, morph, slice(None), cfg.mpp, NUCLEUS_TEXTURE, scene.theta[cells], scene.phase[cells])


def _render_block(scene: _Scene, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """The uint8 RGB image of level-0 rows ``[r0, r1)``, cols ``[c0, c1)`` (multiples of ``TILE`` at the start)."""
    fl = _block_fields(scene, r0, r1, c0, c1)
    p = scene.fib.shape[0]
    fine = FINE_TEXTURE * scene.fib[np.ix_(np.arange(r0, r1) % p, np.arange(c0, c1) % p)]
    e, h = _gland_stain(fl["e"] * (1 + fine), fl["hb"], fl["lumen"], fl["rim"], fl["mid"])
    _stamp_block_nuclei(scene, h, r0, c0)
    rgb = _to_rgb(h, e, scene.h_vec, scene.e_vec)
    out = np.empty(rgb.shape, np.uint8)
    for y in range(0, r1 - r0, TILE):
        for x in range(0, c1 - c0, TILE):
            seq = np.random.SeedSequence([int(scene.cfg.seed), _NOISE, (r0 + y) // TILE, (c0 + x) // TILE])
            out[y:y + TILE, x:x + TILE] = _quantise(rgb[y:y + TILE, x:x + TILE], np.random.default_rng(seq))
    return out


# ---------------------------------------------------------------------- ground truth
def _purity(cls: np.ndarray) -> float | None:
    return float(np.mean(cls == TC)) if len(cls) else None


def _summary(scene: _Scene, sizes: list[tuple[int, int]], paths: dict[str, Path]) -> dict:
    cfg, cls, reg = scene.cfg, scene.cls, scene.region
    p_ca, p_bg = cfg.synth_config().class_probabilities()
    tc, bc = cls == TC, cls == BC
    return {
        "preset": cfg.preset, "seed": int(cfg.seed), "organ": scene.organ,
        "mpp": float(cfg.mpp), "tissue_mpp": float(cfg.tissue_mpp), "window_um": float(cfg.window_um),
        "width_px": cfg.width_px, "height_px": cfg.height_px,
        "width_mm": cfg.width_px * cfg.mpp / 1000.0, "height_mm": cfg.height_px * cfg.mpp / 1000.0,
        "tissue_shape": list(cfg.tissue_shape), "levels": [list(s) for s in sizes],
        "class_ids": {"BC": BC, "TC": TC}, "tissue_ids": {"BG": BG, "CA": CA},
        "n_cells": {"BC": int(bc.sum()), "TC": int(tc.sum())},
        "purity": {"overall": _purity(cls), "inside_ca": _purity(cls[reg == CA]), "outside_ca": _purity(cls[reg != CA])},
        "tc_in_ca": float(np.mean(reg[tc] == CA)) if tc.any() else None,
        "bc_outside_ca": float(np.mean(reg[bc] != CA)) if bc.any() else None,
        "ca_fraction": float(scene.ca.mean()),
        "p_tc_given_ca": p_ca, "p_tc_given_bg": p_bg,
        "files": {k: p.name for k, p in paths.items()},
    }


def _write_cells(path: Path, scene: _Scene) -> None:
    table = np.column_stack([scene.xy, scene.cls, scene.region]).astype(np.int64)
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        np.savetxt(fh, table, fmt="%d", delimiter=",", header="x,y,class,tissue", comments="")


def _write_labels(path: Path, labels: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(labels.astype(np.uint8)).save(tmp, format="PNG")


def gland_mask(scene: _Scene) -> np.ndarray:
    """Tissue-grid pixels covered by a gland (lumen or epithelial rim), by the rule that
    keeps cells out of glands."""
    return (scene.fields["lumen"] + scene.fields["rim"]) > GLAND_COVER


# ---------------------------------------------------------------------- public API
def slide_outputs(out_path: str | Path) -> dict[str, Path]:
    """The files written for ``OUT.tiff``: ``image``, ``cells`` (``OUT.cells.csv``),
    ``tissue`` (``OUT.tissue.png``: 1 = BG, 2 = CA on the tissue grid), ``glands``
    (``OUT.glands.png``: 1 where a gland's lumen or rim covers the tissue pixel, else 0)
    and ``summary`` (``OUT.slide.json``)."""
    base = slide_stem(out_path)
    return {"image": Path(out_path), "cells": Path(f"{base}.cells.csv"), "tissue": Path(f"{base}.tissue.png"),
            "glands": Path(f"{base}.glands.png"), "summary": Path(f"{base}.slide.json")}


def write_synthetic_slide(out_path: str | Path, cfg: SlideSynthConfig, *, overwrite: bool = False,
                          strip_rows: int = 2 * TILE, block_cols: int = 8 * TILE) -> dict:
    """Render the slide of ``cfg`` to ``out_path`` (with its ground truth, see
    :func:`slide_outputs`) and return the summary written to ``OUT.slide.json``.

    Existing outputs are an error unless ``overwrite``. ``strip_rows`` / ``block_cols``
    (multiples of 256) set the drawing blocks, hence the memory; the result does not
    depend on them. Every file is written to a temporary name and renamed.
    """
    paths = slide_outputs(out_path)
    for p in paths.values():
        check_output(p)
        if p.exists() and not overwrite:
            raise InputError(p, "exists (use overwrite / --overwrite)")
    check_blocks(strip_rows, block_cols, "write_synthetic_slide")
    scene = _build_scene(cfg)
    sizes = write_pyramid_tiff(paths["image"], cfg.width_px, cfg.height_px, cfg.mpp,
                               lambda r0, r1, c0, c1: _render_block(scene, r0, r1, c0, c1),
                               strip_rows=strip_rows, block_cols=block_cols)
    _write_cells(paths["cells"], scene)
    _write_labels(paths["tissue"], np.where(scene.ca, CA, BG))
    _write_labels(paths["glands"], gland_mask(scene))
    summary = _summary(scene, sizes, paths)
    write_json(paths["summary"], summary)
    return summary
