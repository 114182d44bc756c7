"""Synthetic ccRCC whole-slide images with ground-truth nuclei (``histozoom nuclei synth slide``).

The slide is drawn with the nucleus and background model of the grading tiles
(:mod:`histozoom.data.nuclei.synthetic`): the same class parameters, outlines, chromatin,
nucleoli, clear cytoplasm, Voronoi cell membranes, capillaries along endothelial nuclei,
optics and Beer-Lambert H&E stain, with one set of stain vectors for the slide.

Units and frames
----------------
* **Level-0 pixels** at ``mpp`` µm/px: pixel ``(row, col)`` spans ``[col, col + 1) × [row,
  row + 1)``; points (centroids, nucleoli) are in pixel-centre coordinates, ``x = col``,
  ``y = row``; ``x_um = x · mpp``.
* **Region grid**: grid pixel ``j`` covers level-0 pixels ``[j g, (j + 1) g)``, ``g =
  round(8 µm / mpp)`` (:attr:`NucleiSlideSynthConfig.region_px`); ``OUT.regions.png`` holds
  its labels. The region field (smooth noise of sd ``region_um``) lives on this grid and is
  resampled bilinearly to level 0 (level-0 centre ``x`` at grid coordinate ``(x + 0.5) / g -
  0.5``); a level-0 pixel is **cancer** where the resampled field exceeds the threshold that
  makes ``cancer_share`` of the grid cancer, else **stroma**. Tissue ids: 1 = stroma, 2 = cancer.
* Class ids: those of the tile generator's scheme (:data:`~histozoom.data.nuclei.records.CCRCC`:
  1 G1, 2 G2, 3 G3, 4 endothelial).

What is drawn
-------------
* **Cancer**: clear-cell tumour as in the tiles — G1/G2/G3 and endothelial nuclei at the tile
  density (``n_nuclei`` per tile field of ``size · mpp`` µm), ``touching`` pairs, membranes,
  capillaries. The grade mix varies smoothly: a second smooth field (sd ``region_um / 2``)
  marks high-grade foci (its top ``hotspot_share``), where the G3 share of the tumour nuclei
  rises to ``hotspot_g3`` (G1 and G2 shrink in proportion). Tumour nuclei lie wholly in cancer.
* **Stroma**: pink fibrous eosin (oriented fibre texture and 3 µm blotches) with sparse
  endothelial nuclei (``stroma_endothelial_per_mm2``) and their capillaries; no tumour nuclei.
  Near the boundary the backgrounds blend over a narrow band of the region field.

Nuclei come from one slide-wide placement over bins of one tile field (256 px at the
defaults) in raster order, each bin with its own random stream and checked against the
nuclei of the bins placed before it; overlaps are resolved "later nucleus wins" (ids in
placement order). Nucleoli are placed per nucleus, deep in its visible part, when the scene
is built. Every nucleus reaching a drawing block is stamped whole, outlines are evaluated
relative to a point fixed per nucleus, textures are periodic fields indexed by the level-0
position and sensor noise is tied to the 256 px TIFF tiles, so the image and the ground
truth do not depend on the strip or block size.

Outputs of :func:`write_synthetic_nuclei_slide` for ``OUT.tiff`` (:func:`nuclei_slide_outputs`)
-----------------------------------------------------------------------------------------------
* ``OUT.tiff``: pyramidal TIFF (:func:`~histozoom.data.pyramid_tiff.write_pyramid_tiff`, Aperio
  description with the mpp).
* ``OUT.nuclei.parquet``: ground truth, one row per visible nucleus, in the row format of
  :mod:`histozoom.data.nuclei.instance_table` (level-0 masks, ``mask_scale`` 1): ``id``
  (int64, 1..n in drawing order), ``x``, ``y`` (centroid), ``x_um``, ``y_um``, ``area_px``,
  ``area_um2``, ``class_id`` (int16), ``class_name``, ``tissue_class`` (int16, the region under
  the rounded centroid), ``nucleolus_x``, ``nucleolus_y``, ``nucleolus_r_px`` (NaN without a
  nucleolus), ``bbox_x0``, ``bbox_y0``, ``bbox_w``, ``bbox_h``, ``mask``. A mask holds exactly
  the pixels where the nucleus shows; nuclei wholly covered by later ones are left out. The
  masks do not overlap and their union is the slide's instance map.
* ``OUT.nuclei.geojson``: the same nuclei as QuPath polygon detections (largest piece's outer
  ring, in the pixel-centre frame of ``x``, ``y``: pixel ``k`` spans ``[k - 0.5, k + 0.5)``),
  classified by class name, with measurements ``id`` and ``area_um2``.
* ``OUT.regions.png``: uint8 tissue labels on the region grid.
* ``OUT.slide.json``: the summary returned (sizes, levels, classes, counts, grade shares).

Memory: the nuclei (~150 bytes each) and their ground-truth masks (~300 bytes each),
~40 MB of periodic textures, the region grid (~12 bytes per grid pixel), ~150 bytes per
pixel of a drawing block (150 MB at the default 512 × 2048) and one strip of RGB.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from ...atomic import check_output, write_json
from ...config_fields import DictConfig
from ...errors import ConfigError, InputError
from ...jsonio import jsonable
from ..pyramid_tiff import TILE, check_blocks, slide_stem, write_pyramid_tiff
from ..synthetic import _fibre_noise, _interp_1d, _resample, smooth_noise
from .instance_table import instance_rows, write_table
from .synthetic import (
    NucleiSynthConfig,
    _canvas_box,
    _capillary_ends,
    _capillary_params,
    _capillary_wall,
    _cytoplasm,
    _cytoplasm_level,
    _endothelial_id,
    _expose,
    _hematoxylin,
    _membrane,
    _Nucleus,
    _nucleus_box,
    _optics,
    _paint_nuclei,
    _pick_nucleolus,
    _place_nuclei,
    _stain_vectors,
    _stamp_nucleolus,
    _tumour_ids,
    _voronoi_gap,
)

__all__ = ["CANCER", "STROMA", "NucleiSlideSynthConfig", "nuclei_slide_outputs", "write_synthetic_nuclei_slide"]

STROMA, CANCER = 1, 2
"""Tissue ids of ``OUT.regions.png`` and the ``tissue_class`` column."""
TISSUE_NAMES = {STROMA: "stroma", CANCER: "cancer"}
MAX_SIDE_MM = 20.0
MPP_LIMITS = (0.1, 1.0)
"""µm/px the nucleus model is drawn at (a G2 nucleolus is ~1 px at 0.25 µm/px)."""
MIN_SIDE_PX = 16
REGION_GRID_UM = 8.0
"""Side of a region-grid pixel (µm)."""
TEXTURE_PERIOD = 1024
"""Period (px) of the chromatin, cytoplasm, membrane and blotch textures."""
FIBRE_PERIOD = 2048
"""Largest period (px) of the stroma fibre texture."""
MARGIN = 4
"""Pixels drawn around a block so that the blur and the membrane mask are exact at its border."""
BLEND = 0.05
"""Width (in region-field units, sd 1) of the band where cancer and stroma backgrounds blend."""
CAPILLARY_REACH = 12
"""Pixels beyond its segment that a capillary wall is drawn (its profile is exp(-36) there)."""
STROMA_HEM = 0.03
"""Hematoxylin background of the stroma."""
EXTRA_SEEDS = (3, 8)
"""Membrane seeds added per placement bin, as per tile (``[low, high)``); at least 3, so that
the two nearest seeds of a pixel are always within two bins."""
DEFAULT_COLORS = {"G1": (60, 180, 75), "G2": (255, 190, 0), "G3": (230, 25, 75), "endothelial": (0, 130, 200)}
_SCENE, _PLACE, _SEEDS, _CAPILLARY, _NUCLEOLI, _NOISE = 0x5C, 0x50, 0x53, 0x43, 0x4C, 0x51  # random-stream tags


# ---------------------------------------------------------------------- configuration
def _number_problem(label: str, v, lo: float, hi: float, lo_open: bool = False) -> str | None:
    ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) \
        and (v > lo if lo_open else v >= lo) and v <= hi
    return None if ok else f"{label} must be a number in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {v!r}"


@dataclass(frozen=True)
class NucleiSlideSynthConfig(DictConfig):
    """A synthetic ccRCC slide of ``width_mm × height_mm`` at ``mpp`` µm/px.

    ``cancer_share``: share of the region grid that is cancer; ``region_um``: sd (µm) of the
    smooth field whose top share is cancer (blobs of a few hundred µm); ``hotspot_share``:
    share of the slide in high-grade foci, where the G3 share of tumour nuclei reaches
    ``hotspot_g3``; ``stroma_endothelial_per_mm2``: endothelial nuclei per mm² of stroma;
    ``nuclei``: the tile generator's config (classes, appearance, density per tile field,
    touching, chromatin, noise; its ``mpp`` and ``size`` fix the field, the slide's ``mpp``
    the drawing).
    """

    width_mm: float = 1.0
    height_mm: float = 1.0
    mpp: float = 0.25
    seed: int = 0
    cancer_share: float = 0.5
    region_um: float = 150.0
    hotspot_share: float = 0.15
    hotspot_g3: float = 0.7
    stroma_endothelial_per_mm2: float = 300.0
    nuclei: NucleiSynthConfig = field(default_factory=NucleiSynthConfig)

    def __post_init__(self):
        if isinstance(self.nuclei, Mapping):
            try:
                object.__setattr__(self, "nuclei", NucleiSynthConfig.from_dict(self.nuclei))
            except (TypeError, ValueError) as e:
                raise ConfigError(f"NucleiSlideSynthConfig: nuclei: {e}") from None
        problems = self._problems()
        if problems:
            raise ConfigError("NucleiSlideSynthConfig: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        lo, hi = MPP_LIMITS
        checks = [_number_problem("width_mm", self.width_mm, 0, MAX_SIDE_MM, lo_open=True),
                  _number_problem("height_mm", self.height_mm, 0, MAX_SIDE_MM, lo_open=True),
                  _number_problem("mpp (µm/px)", self.mpp, lo, hi),
                  _number_problem("cancer_share", self.cancer_share, 0, 1),
                  _number_problem("region_um", self.region_um, 2 * REGION_GRID_UM, 5000),
                  _number_problem("hotspot_share", self.hotspot_share, 0, 1),
                  _number_problem("hotspot_g3", self.hotspot_g3, 0, 1),
                  _number_problem("stroma_endothelial_per_mm2", self.stroma_endothelial_per_mm2, 0, 20_000)]
        out = [p for p in checks if p]
        if isinstance(self.seed, bool) or not (isinstance(self.seed, numbers.Integral) and 0 <= self.seed < 2**32):
            out.append(f"seed must be an integer in [0, 2**32), got {self.seed!r}")
        if not isinstance(self.nuclei, NucleiSynthConfig):
            out.append(f"nuclei must be a NucleiSynthConfig, got {type(self.nuclei).__name__}")
        if out:
            return out
        if min(self.width_px, self.height_px) < MIN_SIDE_PX:
            out.append(f"the slide is {self.width_px}x{self.height_px} px; each side must be at least {MIN_SIDE_PX} px")
        reach = _max_reach(self.model)
        if 2 * reach + 4 > self.bin_px:
            out.append(f"nuclei reach {reach:.0f} px from their centre, too large for placement bins of {self.bin_px} px "
                       f"(the tile field nuclei.size · nuclei.mpp = {self.nuclei.size * self.nuclei.mpp:g} µm)")
        return out

    @property
    def width_px(self) -> int:
        return max(1, int(round(self.width_mm * 1000.0 / self.mpp)))

    @property
    def height_px(self) -> int:
        return max(1, int(round(self.height_mm * 1000.0 / self.mpp)))

    @property
    def bin_px(self) -> int:
        """Side (level-0 px) of a placement bin: one tile field, ``nuclei.size · nuclei.mpp`` µm."""
        return max(1, int(round(self.nuclei.size * self.nuclei.mpp / self.mpp)))

    @property
    def region_px(self) -> int:
        """Level-0 pixels per region-grid pixel."""
        return max(MARGIN, int(round(REGION_GRID_UM / self.mpp)))

    @property
    def region_shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the region grid (the last row/column may stick out of the slide)."""
        g = self.region_px
        return -(-self.height_px // g), -(-self.width_px // g)

    @property
    def model(self) -> NucleiSynthConfig:
        """The tile generator's config drawn at the slide's mpp."""
        return self.nuclei.replace(mpp=self.mpp)

    def to_dict(self) -> dict:
        """:meth:`DictConfig.to_dict` with ``nuclei`` in its own dict form; :meth:`from_dict` reads it back."""
        d = super().to_dict()
        d["nuclei"] = self.nuclei.to_dict()
        return d


def _max_reach(model: NucleiSynthConfig) -> float:
    """Largest distance (px) from a nucleus centre to the edge of its drawing box."""
    px = 1.0 / model.mpp
    return max(p.radius_um[1] * math.sqrt(p.aspect[1]) * px * (1 + 1.6 * p.irregularity) + 3 for p in model.classes)


# ---------------------------------------------------------------------- the scene
@dataclass
class _Scene:
    """Everything the blocks and the ground truth are drawn from (level-0 px, see the module docstring)."""

    cfg: NucleiSlideSynthConfig
    model: NucleiSynthConfig
    field: np.ndarray  # region field on the grid (float32)
    threshold: float  # cancer where the field exceeds it
    hot: np.ndarray  # high-grade weight 0..1 on the grid
    rows_w: tuple[np.ndarray, np.ndarray, np.ndarray]  # grid weights of level-0 rows -g .. H + g - 1
    cols_w: tuple[np.ndarray, np.ndarray, np.ndarray]
    nuc: dict[str, np.ndarray]  # per nucleus, in drawing order
    bin_start: np.ndarray  # nuclei of bin k (raster order): bin_start[k]:bin_start[k + 1]
    seeds: np.ndarray  # extra membrane seeds (m, 2), grouped by bin
    seed_start: np.ndarray
    reach: int  # how far (px) a nucleus box or capillary box extends beyond its bin
    tex: dict[str, np.ndarray]  # periodic textures
    h_vec: np.ndarray
    e_vec: np.ndarray
    cyto_level: float
    stroma_level: float
    gt: dict[str, np.ndarray] | None = None

    @property
    def nbx(self) -> int:
        return -(-self.cfg.width_px // self.cfg.bin_px)

    @property
    def nby(self) -> int:
        return -(-self.cfg.height_px // self.cfg.bin_px)

    def nucleus(self, k: int) -> _Nucleus:
        n = self.nuc
        return _Nucleus(int(n["cls"][k]), self.model.classes[int(n["pidx"][k])], float(n["cx"][k]), float(n["cy"][k]),
                        float(n["a"][k]), float(n["b"][k]), float(n["theta"][k]), n["irr"][k], float(n["dark"][k]))

    def frame(self, k: int) -> tuple[int, int]:
        return int(math.floor(self.nuc["cx"][k])), int(math.floor(self.nuc["cy"][k]))

    def bin_range(self, y0: int, y1: int, x0: int, x1: int, extra: int) -> tuple[range, int, int]:
        """Bin rows and the bin column span holding anything within ``extra`` px of ``[y0, y1) × [x0, x1)``."""
        b = self.cfg.bin_px
        rows = range(max(0, (y0 - extra) // b), min(self.nby, (y1 - 1 + extra) // b + 1))
        return rows, max(0, (x0 - extra) // b), min(self.nbx, (x1 - 1 + extra) // b + 1)

    def reaching(self, y0: int, y1: int, x0: int, x1: int, key: str = "box") -> np.ndarray:
        """Ids (drawing order) of the nuclei whose ``key`` box meets ``[y0, y1) × [x0, x1)``."""
        rows, bx0, bx1 = self.bin_range(y0, y1, x0, x1, self.reach)
        if bx0 >= bx1 or not len(rows):
            return np.zeros(0, np.int64)
        idx = np.concatenate([np.arange(self.bin_start[by * self.nbx + bx0], self.bin_start[by * self.nbx + bx1])
                              for by in rows])
        box = self.nuc[key][idx]
        return idx[(box[:, 0] < y1) & (box[:, 1] > y0) & (box[:, 2] < x1) & (box[:, 3] > x0)]

    def region_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Tissue id (1 stroma, 2 cancer) of the level-0 pixels under the points ``(x, y)``."""
        c = np.clip(np.rint(x), 0, self.cfg.width_px - 1).astype(np.int64) + self.cfg.region_px
        r = np.clip(np.rint(y), 0, self.cfg.height_px - 1).astype(np.int64) + self.cfg.region_px
        (lr, hr, fr), (lc, hc, fc) = (v[r] for v in self.rows_w), (v[c] for v in self.cols_w)
        f = self.field
        lo = f[lr, lc] * (1 - fr) + f[hr, lc] * fr
        hi = f[lr, hc] * (1 - fr) + f[hr, hc] * fr
        return np.where(lo * (1 - fc) + hi * fc > self.threshold, CANCER, STROMA)

    def field_block(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The region field resampled to level-0 rows ``[y0, y1)``, cols ``[x0, x1)`` (within ``region_px`` of the slide)."""
        g = self.cfg.region_px
        ry = [v[y0 + g:y1 + g] for v in self.rows_w]
        rx = [v[x0 + g:x1 + g] for v in self.cols_w]
        ya, yb, xa, xb = ry[0][0], ry[1][-1] + 1, rx[0][0], rx[1][-1] + 1
        return _resample(self.field[ya:yb, xa:xb], (ry[0] - ya, ry[1] - ya, ry[2]), (rx[0] - xa, rx[1] - xa, rx[2]))


def _grid_fields(cfg: NucleiSlideSynthConfig, rng: np.random.Generator) -> tuple[np.ndarray, float, np.ndarray]:
    """Region field, its cancer threshold and the high-grade weight, on the region grid."""
    shape, grid_um = cfg.region_shape, cfg.region_px * cfg.mpp
    f = smooth_noise(rng, shape, cfg.region_um / grid_um)
    q = float(cfg.cancer_share)
    threshold = np.inf if q <= 0 else -np.inf if q >= 1 else float(np.quantile(f, 1 - q))
    grade = smooth_noise(rng, shape, 0.5 * cfg.region_um / grid_um)
    hs = float(cfg.hotspot_share)
    if hs <= 0 or hs >= 1:
        return f, threshold, np.full(shape, float(hs >= 1), np.float32)
    hot = np.clip((grade - float(np.quantile(grade, 1 - hs))) / 0.5, 0, 1).astype(np.float32)
    return f, threshold, hot


def _textures(rng: np.random.Generator, cfg: NucleiSlideSynthConfig) -> dict[str, np.ndarray]:
    """Periodic unit-sd textures (Gaussian-filtered noise; the fibres oriented along two angles)."""
    px, p = 1.0 / cfg.mpp, TEXTURE_PERIOD
    side = max(cfg.width_px, cfg.height_px) + 2 * MARGIN
    pf = min(FIBRE_PERIOD, max(p, 1 << (side - 1).bit_length()))

    def smooth(sigma: float) -> np.ndarray:
        return _fibre_noise(rng, p, sigma, sigma, (0.0,))

    model = cfg.nuclei
    return {"chrom": smooth(model.chromatin_um * px), "grain": rng.standard_normal((p, p)).astype(np.float32),
            "coarse": smooth(2.0 * px), "fine": smooth(0.5 * px), "memb": smooth(3.0), "mid": smooth(3.0 * px),
            "fibre": _fibre_noise(rng, pf, 1.5 * px, 0.25 * px, rng.uniform(0, np.pi, 2))}


def _class_weights(model: NucleiSynthConfig, hot: float, hotspot_g3: float) -> np.ndarray:
    """Class-params weights with the G3 share of the tumour nuclei moved towards ``hotspot_g3`` by ``hot``."""
    w = np.array([p.weight for p in model.classes], np.float64)
    ids = [model.class_id(p) for p in model.classes]
    tumour = np.array([c in _tumour_ids(model) for c in ids])
    g3 = np.array([p.name == "G3" for p in model.classes])
    total, base = w[tumour].sum(), w[g3].sum()
    if hot <= 0 or total <= 0 or not g3.any() or base >= total:
        return w / w.sum()
    share = (1 - hot) * base / total + hot * hotspot_g3
    out = w.copy()
    out[g3] = w[g3] / base * share * total
    rest = tumour & ~g3
    out[rest] = w[rest] / w[rest].sum() * (1 - share) * total
    return out / out.sum()


class _Placement:
    """Slide-wide placement, bin by bin in raster order (see the module docstring)."""

    def __init__(self, scene: _Scene):
        self.scene, cfg = scene, scene.cfg
        self.model = scene.model
        self.tumour = _tumour_ids(self.model)
        self.endo = _endothelial_id(self.model)
        self.endo_params = [k for k, p in enumerate(self.model.classes) if self.model.class_id(p) == self.endo]
        self.near = 2 * _max_reach(self.model) + 4
        tile_um = cfg.nuclei.size * cfg.nuclei.mpp
        self.density = (cfg.bin_px * cfg.mpp / tile_um) ** 2  # tile counts per full bin
        self.stroma_rate = cfg.stroma_endothelial_per_mm2 * (cfg.bin_px * cfg.mpp / 1000.0) ** 2

    def _in_cancer(self, n: _Nucleus) -> bool:
        """Tumour nuclei: their whole box (9 points, clipped to the slide) in cancer."""
        y0, y1, x0, x1 = _nucleus_box(n)
        xs, ys = np.meshgrid([x0, n.cx, x1 - 1], [y0, n.cy, y1 - 1])
        return bool((self.scene.region_at(xs.ravel(), ys.ravel()) == CANCER).all())

    def bin(self, by: int, bx: int, neighbours: list[_Nucleus]) -> list[_Nucleus]:
        cfg, sc = self.scene.cfg, self.scene
        b, w, h = cfg.bin_px, cfg.width_px, cfg.height_px
        x0, x1, y0, y1 = bx * b, min((bx + 1) * b, w), by * b, min((by + 1) * b, h)
        rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), _PLACE, by, bx]))
        xs, ys = np.meshgrid(np.linspace(x0, x1 - 1, 16), np.linspace(y0, y1 - 1, 16))
        frac = float(np.mean(sc.region_at(xs.ravel(), ys.ravel()) == CANCER))
        area = (x1 - x0) * (y1 - y0) / b**2
        lo, hi = self.model.n_nuclei
        n_target = int(rng.integers(round(lo * self.density), round(hi * self.density) + 1))
        n_cancer = int(rng.binomial(n_target, frac * area))
        hot = sc.hot[(y0 + y1) // 2 // cfg.region_px, (x0 + x1) // 2 // cfg.region_px]  # at the bin centre
        weights = _class_weights(self.model, float(hot), cfg.hotspot_g3)
        picks = rng.choice(len(weights), n_cancer, p=weights)
        n_stroma = int(rng.poisson(self.stroma_rate * (1 - frac) * area)) if self.endo_params else 0

        def propose() -> tuple[float, float]:
            return rng.uniform(x0, min(x1, w - 1)), rng.uniform(y0, min(y1, h - 1))

        def in_bin(n: _Nucleus) -> bool:
            return x0 <= n.cx < x1 and y0 <= n.cy < y1 and n.cx <= w - 1 and n.cy <= h - 1

        def cancer_ok(n: _Nucleus) -> bool:
            if not in_bin(n):
                return False
            if n.cls in self.tumour:
                return self._in_cancer(n)
            return int(sc.region_at(np.array([n.cx]), np.array([n.cy]))[0]) == CANCER

        def stroma_ok(n: _Nucleus) -> bool:
            return in_bin(n) and int(sc.region_at(np.array([n.cx]), np.array([n.cy]))[0]) == STROMA

        m = self.near
        placed = [n for n in neighbours if x0 - m <= n.cx < x1 + m and y0 - m <= n.cy < y1 + m]
        first = len(placed)
        _place_nuclei(self.model, rng, picks, placed, propose, cancer_ok, first)
        _place_nuclei(self.model, rng, [self.endo_params[0]] * n_stroma if n_stroma else [], placed, propose,
                      stroma_ok, first)
        return placed[first:]


def _place_all(scene: _Scene) -> None:
    """Place the nuclei (fills ``scene.nuc``, ``bin_start``, the membrane seeds and ``reach``)."""
    cfg, model = scene.cfg, scene.model
    placer = _Placement(scene)
    cols: dict[str, list] = {k: [] for k in ("pidx", "cls", "cx", "cy", "a", "b", "theta", "irr", "dark")}
    starts, seeds, seed_starts = [0], [], [0]
    pidx_of = {id(p): k for k, p in enumerate(model.classes)}
    prev: list[list[_Nucleus]] = [[] for _ in range(scene.nbx)]
    b = cfg.bin_px
    for by in range(scene.nby):
        cur: list[list[_Nucleus]] = []
        for bx in range(scene.nbx):
            neigh = [n for j in (bx - 1, bx, bx + 1) if 0 <= j < scene.nbx for n in prev[j]]
            if bx:
                neigh += cur[bx - 1]
            new = placer.bin(by, bx, neigh)
            cur.append(new)
            for n in new:
                for k, v in (("pidx", pidx_of[id(n.p)]), ("cls", n.cls), ("cx", n.cx), ("cy", n.cy), ("a", n.a),
                             ("b", n.b), ("theta", n.theta), ("irr", n.irr), ("dark", n.darkness)):
                    cols[k].append(v)
            starts.append(starts[-1] + len(new))
            rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), _SEEDS, by, bx]))
            x0, x1, y0, y1 = bx * b, min((bx + 1) * b, cfg.width_px), by * b, min((by + 1) * b, cfg.height_px)
            k = int(rng.integers(*EXTRA_SEEDS))
            seeds.append(np.column_stack([rng.uniform(x0, x1, k), rng.uniform(y0, y1, k)]))
            seed_starts.append(seed_starts[-1] + k)
        prev = cur
    n = len(cols["cx"])
    nuc = {k: np.array(v, np.float64) for k, v in cols.items() if k not in ("pidx", "cls", "irr")}
    nuc["pidx"] = np.array(cols["pidx"], np.int16)
    nuc["cls"] = np.array(cols["cls"], np.int16)
    nuc["irr"] = np.array(cols["irr"], np.float64).reshape(n, 4)
    scene.nuc, scene.bin_start = nuc, np.array(starts, np.int64)
    scene.seeds, scene.seed_start = np.concatenate(seeds), np.array(seed_starts, np.int64)
    nuc["box"] = np.array([_nucleus_box(scene.nucleus(k)) for k in range(n)], np.int64).reshape(n, 4)
    _capillaries(scene)
    scene.reach = _reach(scene)


def _capillaries(scene: _Scene) -> None:
    """Capillary wall of every endothelial nucleus: half-length ``cap_ext``, side ``cap_side``, box ``cap_box``."""
    nuc, cfg = scene.nuc, scene.cfg
    n = len(nuc["cx"])
    nuc["cap_ext"], nuc["cap_side"] = np.zeros(n), np.zeros(n, np.int64)
    nuc["cap_box"] = np.zeros((n, 4), np.int64)  # empty boxes for the other nuclei
    endo = _endothelial_id(scene.model)
    for k_bin in range(len(scene.bin_start) - 1):
        ids = np.arange(scene.bin_start[k_bin], scene.bin_start[k_bin + 1])
        ids = ids[nuc["cls"][ids] == endo] if endo is not None else ids[:0]
        if not len(ids):
            continue
        by, bx = divmod(k_bin, scene.nbx)
        rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), _CAPILLARY, by, bx]))
        for k in ids:
            n_k = scene.nucleus(k)
            ext, side = _capillary_params(n_k, rng)
            fx, fy = scene.frame(k)
            p0, p1 = _capillary_ends(n_k, ext, side, (fx, fy))
            lo, hi = np.minimum(p0, p1), np.maximum(p0, p1)
            nuc["cap_ext"][k], nuc["cap_side"][k] = ext, side
            nuc["cap_box"][k] = (fy + math.floor(lo[1]) - CAPILLARY_REACH, fy + math.ceil(hi[1]) + CAPILLARY_REACH + 1,
                                 fx + math.floor(lo[0]) - CAPILLARY_REACH, fx + math.ceil(hi[0]) + CAPILLARY_REACH + 1)


def _reach(scene: _Scene) -> int:
    """How far (px) any nucleus or capillary box extends beyond the bin that holds the nucleus."""
    nuc, b = scene.nuc, scene.cfg.bin_px
    if not len(nuc["cx"]):
        return 0
    bin_of = np.repeat(np.arange(len(scene.bin_start) - 1), np.diff(scene.bin_start))
    by, bx = np.divmod(bin_of, scene.nbx)
    out = 0
    for key in ("box", "cap_box"):
        box = nuc[key]
        used = box[:, 1] > box[:, 0]
        over = np.stack([by * b - box[:, 0], box[:, 1] - (by + 1) * b, bx * b - box[:, 2], box[:, 3] - (bx + 1) * b])
        out = max(out, int(over[:, used].max(initial=0)))
    return out


def _build_scene(cfg: NucleiSlideSynthConfig) -> _Scene:
    """Draw the slide's scene: the random choices of the regions, textures and stain are made
    here in a fixed order; nuclei, seeds, capillaries and nucleoli have a stream per bin."""
    rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), _SCENE]))
    f, threshold, hot = _grid_fields(cfg, rng)
    g = cfg.region_px
    gh, gw = cfg.region_shape
    tex = _textures(rng, cfg)
    h_vec, e_vec = _stain_vectors(rng)
    cyto = _cytoplasm_level(rng)
    stroma = 0.7 + 0.05 * rng.standard_normal()
    scene = _Scene(cfg=cfg, model=cfg.model, field=f, threshold=threshold, hot=hot,
                   rows_w=_interp_1d(cfg.height_px + 2 * g, -1, gh, g), cols_w=_interp_1d(cfg.width_px + 2 * g, -1, gw, g),
                   nuc={}, bin_start=np.zeros(1, np.int64), seeds=np.zeros((0, 2)), seed_start=np.zeros(1, np.int64),
                   reach=0, tex=tex, h_vec=h_vec, e_vec=e_vec, cyto_level=float(cyto), stroma_level=float(stroma))
    _place_all(scene)
    scene.gt = _ground_truth(scene)
    return scene


# ---------------------------------------------------------------------- ground truth
def _ground_truth(scene: _Scene) -> dict[str, np.ndarray]:
    """The visible pixels of every nucleus (instance-table columns), bin by bin; sets the nucleoli.

    Each bin's nuclei are painted with every nucleus reaching their boxes (in drawing order),
    so a mask is exactly what the image shows; the nucleoli are placed in those masks.
    """
    cfg, nuc, model = scene.cfg, scene.nuc, scene.model
    n = len(nuc["cx"])
    nuc["nucleolus"] = np.full((n, 3), np.nan)
    px = 1.0 / cfg.mpp
    parts = []
    for k_bin in range(len(scene.bin_start) - 1):
        own = np.arange(scene.bin_start[k_bin], scene.bin_start[k_bin + 1])
        if not len(own):
            continue
        box = nuc["box"][own]
        y0, y1 = max(int(box[:, 0].min()), 0), min(int(box[:, 1].max()), cfg.height_px)
        x0, x1 = max(int(box[:, 2].min()), 0), min(int(box[:, 3].max()), cfg.width_px)
        idx = scene.reaching(y0, y1, x0, x1)
        inst, _ = _paint_nuclei([scene.nucleus(k) for k in idx], (y1 - y0, x1 - x0), (x0, y0),
                                [scene.frame(k) for k in idx])
        local = np.searchsorted(idx, own) + 1
        objs = ndimage.find_objects(inst)
        by, bx = divmod(k_bin, scene.nbx)
        rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), _NUCLEOLI, by, bx]))
        keep = []
        for k, lid in zip(own, local):
            sl = objs[lid - 1] if lid <= len(objs) else None
            if sl is None:  # wholly covered by later nuclei
                continue
            keep.append((k, lid))
            n_k = scene.nucleus(k)
            if n_k.p.nucleolus_um is not None:
                spot = _pick_nucleolus(n_k, inst[sl] == lid, sl[1].start + x0, sl[0].start + y0, px, rng)
                if spot is not None:
                    nuc["nucleolus"][k] = spot
        if keep:
            ks, lids = np.array(keep, np.int64).T
            rows = instance_rows(inst, (x0, y0), 1.0, lids)
            rows["id"] = ks
            parts.append(rows)
    cols = {k: np.concatenate([p[k] for p in parts]) if parts else np.zeros(0, v) for k, v in (
        ("id", np.int64), ("x", np.float64), ("y", np.float64), ("area_px", np.int64), ("bbox_x0", np.float64),
        ("bbox_y0", np.float64), ("bbox_w", np.int32), ("bbox_h", np.int32), ("mask", object))}
    k = cols.pop("id")
    names = model.scheme.classes
    cls = nuc["cls"][k].astype(np.int16)
    spot = nuc["nucleolus"][k]
    mask_cols = {c: cols.pop(c) for c in ("bbox_x0", "bbox_y0", "bbox_w", "bbox_h", "mask")}
    return {"id": np.arange(1, len(k) + 1, dtype=np.int64), "x": cols["x"], "y": cols["y"],
            "x_um": cols["x"] * cfg.mpp, "y_um": cols["y"] * cfg.mpp, "area_px": cols["area_px"],
            "area_um2": cols["area_px"] * cfg.mpp**2, "class_id": cls,
            "class_name": np.array([names.name(int(c)) for c in cls], object),
            "tissue_class": scene.region_at(cols["x"], cols["y"]).astype(np.int16),
            "nucleolus_x": spot[:, 0], "nucleolus_y": spot[:, 1], "nucleolus_r_px": spot[:, 2], **mask_cols}


# ---------------------------------------------------------------------- drawing
def _periodic(a: np.ndarray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    p = a.shape[0]
    return a[np.ix_(np.arange(y0, y1) % p, np.arange(x0, x1) % p)]


def _membranes(scene: _Scene, eos: np.ndarray, w: np.ndarray, near_fg: np.ndarray, y0: int, x0: int) -> None:
    """Add the membranes (Voronoi of the tumour nuclei and the extra seeds), weighted by the cancer weight ``w``."""
    sel = (w > 0) & ~near_fg
    if not sel.any():
        return
    h, wd = eos.shape
    rows, bx0, bx1 = scene.bin_range(y0, y0 + h, x0, x0 + wd, 2 * scene.cfg.bin_px)
    nb = scene.nbx
    ids = np.concatenate([np.arange(scene.bin_start[by * nb + bx0], scene.bin_start[by * nb + bx1]) for by in rows])
    ids = ids[scene.nuc["cls"][ids] != (_endothelial_id(scene.model) or -1)]
    extra = np.concatenate([scene.seeds[scene.seed_start[by * nb + bx0]:scene.seed_start[by * nb + bx1]] for by in rows])
    seeds = np.concatenate([np.column_stack([scene.nuc["cx"][ids], scene.nuc["cy"][ids]]), extra])
    rr, cc = np.nonzero(sel)
    gap = _voronoi_gap(seeds, np.column_stack([cc + x0, rr + y0]).astype(np.float64))
    eos[sel] += w[sel] * _membrane(gap, _periodic(scene.tex["memb"], y0, y0 + h, x0, x0 + wd)[sel])


def _capillary_walls(scene: _Scene, eos: np.ndarray, near_fg: np.ndarray, y0: int, x0: int) -> None:
    """Add the capillary wall of every endothelial nucleus whose wall box meets the canvas (drawing order)."""
    for k in scene.reaching(y0, y0 + eos.shape[0], x0, x0 + eos.shape[1], "cap_box"):
        b = scene.nuc["cap_box"][k]
        sl = _canvas_box(int(b[0]), int(b[1]), int(b[2]), int(b[3]), eos.shape, (x0, y0))
        if sl is None:
            continue
        fx, fy = scene.frame(k)
        n_k = scene.nucleus(k)
        p0, p1 = _capillary_ends(n_k, float(scene.nuc["cap_ext"][k]), scene.nuc["cap_side"][k], (fx, fy))
        yy, xx = np.mgrid[sl[0].start + y0 - fy:sl[0].stop + y0 - fy,
                          sl[1].start + x0 - fx:sl[1].stop + x0 - fx].astype(np.float32)
        eos[sl] += _capillary_wall(xx, yy, p0, p1) * ~near_fg[sl]


def _render_block(scene: _Scene, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """The uint8 RGB of level-0 rows ``[r0, r1)``, cols ``[c0, c1)`` (``r0``, ``c0`` multiples of
    :data:`TILE`), drawn with a margin of :data:`MARGIN` px that is cut off."""
    cfg, nuc, tex = scene.cfg, scene.nuc, scene.tex
    y0, y1, x0, x1 = r0 - MARGIN, r1 + MARGIN, c0 - MARGIN, c1 + MARGIN
    shape = (y1 - y0, x1 - x0)
    idx = scene.reaching(y0, y1, x0, x1)
    inst, cover = _paint_nuclei([scene.nucleus(k) for k in idx], shape, (x0, y0), [scene.frame(k) for k in idx])
    dark = np.zeros(len(idx) + 1, np.float32)
    dark[1:] = nuc["dark"][idx]
    hem = _hematoxylin(inst, cover, dark, _periodic(tex["chrom"], y0, y1, x0, x1), _periodic(tex["grain"], y0, y1, x0, x1),
                       scene.model.chromatin)
    eos = np.zeros(shape, np.float32)
    for i, k in enumerate(idx, start=1):
        x, y, r = nuc["nucleolus"][k]
        if not math.isnan(r):
            od = scene.model.classes[int(nuc["pidx"][k])].nucleolus_od
            _stamp_nucleolus(hem, eos, inst, i, float(x), float(y), float(r), od, (x0, y0),
                             (int(math.floor(x)), int(math.floor(y))))

    fg = inst > 0
    near_fg = ndimage.binary_dilation(fg, iterations=1)
    w = np.clip(0.5 + (scene.field_block(y0, y1, x0, x1) - scene.threshold) / BLEND, 0, 1).astype(np.float32)
    cyto = _cytoplasm(scene.cyto_level, _periodic(tex["coarse"], y0, y1, x0, x1), _periodic(tex["fine"], y0, y1, x0, x1))
    fibre = _periodic(tex["fibre"], y0, y1, x0, x1)
    stroma = scene.stroma_level * np.clip(1 + 0.3 * fibre + 0.12 * _periodic(tex["mid"], y0, y1, x0, x1), 0.2, None)
    eos += (w * cyto + (1 - w) * stroma) * ~fg
    _membranes(scene, eos, w, near_fg, y0, x0)
    _capillary_walls(scene, eos, near_fg, y0, x0)
    hem += STROMA_HEM * (1 - w)

    hem, eos = _optics(hem, eos)
    hem, eos = hem[MARGIN:-MARGIN, MARGIN:-MARGIN], eos[MARGIN:-MARGIN, MARGIN:-MARGIN]
    noise = np.empty((*hem.shape, 3), np.float32)
    for y in range(0, r1 - r0, TILE):
        for x in range(0, c1 - c0, TILE):
            seq = np.random.SeedSequence([int(cfg.seed), _NOISE, (r0 + y) // TILE, (c0 + x) // TILE])
            th, tw = min(TILE, r1 - r0 - y), min(TILE, c1 - c0 - x)
            noise[y:y + th, x:x + tw] = np.random.default_rng(seq).normal(0, scene.model.noise, (th, tw, 3))
    return _expose(hem, eos, scene.h_vec, scene.e_vec, noise)


# ---------------------------------------------------------------------- outputs
def nuclei_slide_outputs(out_path: str | Path) -> dict[str, Path]:
    """The files written for ``OUT.tiff``: ``image``, ``nuclei`` (``OUT.nuclei.parquet``),
    ``geojson`` (``OUT.nuclei.geojson``), ``regions`` (``OUT.regions.png``) and ``summary``
    (``OUT.slide.json``); see the module docstring."""
    base = slide_stem(out_path)
    return {"image": Path(out_path), "nuclei": Path(f"{base}.nuclei.parquet"), "geojson": Path(f"{base}.nuclei.geojson"),
            "regions": Path(f"{base}.regions.png"), "summary": Path(f"{base}.slide.json")}


def _write_geojson(path: Path, gt: dict[str, np.ndarray], model: NucleiSynthConfig, chunk: int = 4096) -> None:
    from ...reports.slide_reports import GeoJSONPointWriter, mask_polygons
    from .instance_table import decode_mask

    classes = model.scheme.classes
    colors = {cid: DEFAULT_COLORS[name] for cid, name in zip(classes.ids, classes.names) if name in DEFAULT_COLORS}
    with GeoJSONPointWriter(path, classes, colors) as out:
        for s in range(0, len(gt["id"]), chunk):
            sl = slice(s, s + chunk)
            rings = []
            for x0, y0, w, h, data in zip(gt["bbox_x0"][sl], gt["bbox_y0"][sl], gt["bbox_w"][sl], gt["bbox_h"][sl],
                                          gt["mask"][sl]):
                parts = mask_polygons(decode_mask(data, h, w), (x0 - 0.5, y0 - 0.5)).geoms
                rings.append(np.asarray(max(parts, key=lambda p: p.area).exterior.coords))
            out.write_detection_polygons(rings, gt["class_id"][sl], {"id": gt["id"][sl], "area_um2": gt["area_um2"][sl]})


def _shares(counts: dict[str, int]) -> dict[str, float | None]:
    total = sum(counts.values())
    return {k: (v / total if total else None) for k, v in counts.items()}


def _summary(scene: _Scene, sizes: list[tuple[int, int]], paths: dict[str, Path], labels: np.ndarray) -> dict:
    cfg, gt, classes = scene.cfg, scene.gt, scene.model.scheme.classes
    inside = gt["tissue_class"] == CANCER
    per_class = {name: int(np.sum(gt["class_id"] == cid)) for cid, name in zip(classes.ids, classes.names)}
    in_cancer = {name: int(np.sum((gt["class_id"] == cid) & inside)) for cid, name in zip(classes.ids, classes.names)}
    grades = {g: in_cancer[g] for g in ("G1", "G2", "G3") if g in in_cancer}
    return {
        "seed": int(cfg.seed), "mpp": float(cfg.mpp), "width_px": cfg.width_px, "height_px": cfg.height_px,
        "width_mm": cfg.width_px * cfg.mpp / 1000.0, "height_mm": cfg.height_px * cfg.mpp / 1000.0,
        "levels": [list(s) for s in sizes],
        "class_ids": dict(zip(classes.names, classes.ids)), "tissue_ids": {v: k for k, v in TISSUE_NAMES.items()},
        "n_nuclei": int(len(gt["id"])), "nuclei_per_class": per_class, "nuclei_per_class_in_cancer": in_cancer,
        "grade_shares_in_cancer": _shares(grades),
        "cancer_fraction": float(np.mean(labels == CANCER)),
        "region_grid_px": cfg.region_px, "region_shape": list(labels.shape), "placement_bin_px": cfg.bin_px,
        "config": jsonable(cfg.to_dict()),  # as read back from OUT.slide.json
        "files": {k: p.name for k, p in paths.items()},
    }


def write_synthetic_nuclei_slide(out_path: str | Path, cfg: NucleiSlideSynthConfig, overwrite: bool = False, *,
                                 strip_rows: int = 2 * TILE, block_cols: int = 8 * TILE) -> dict:
    """Render the slide of ``cfg`` to ``out_path`` with its ground truth (see
    :func:`nuclei_slide_outputs`) and return the summary written to ``OUT.slide.json``.

    Existing outputs are an error unless ``overwrite``. ``strip_rows`` / ``block_cols``
    (multiples of 256) set the drawing blocks, hence the memory; the result does not depend
    on them. Every file is written to a temporary name and renamed.
    """
    from ..io import write_image

    paths = nuclei_slide_outputs(out_path)
    for p in paths.values():
        check_output(p)
        if p.exists() and not overwrite:
            raise InputError(p, "exists (use overwrite / --overwrite)")
    check_blocks(strip_rows, block_cols, "write_synthetic_nuclei_slide")
    if not isinstance(cfg, NucleiSlideSynthConfig):
        raise ConfigError(f"write_synthetic_nuclei_slide: cfg must be a NucleiSlideSynthConfig, got {type(cfg).__name__}")
    scene = _build_scene(cfg)
    sizes = write_pyramid_tiff(paths["image"], cfg.width_px, cfg.height_px, cfg.mpp,
                               lambda r0, r1, c0, c1: _render_block(scene, r0, r1, c0, c1),
                               strip_rows=strip_rows, block_cols=block_cols)
    import pyarrow as pa

    write_table(paths["nuclei"], scene.gt, 1.0, {"class_id": pa.int16(), "tissue_class": pa.int16(),
                                                  "class_name": pa.string()},
                {"histozoom.mpp": repr(float(cfg.mpp)), "histozoom.kind": "synthetic nuclei ground truth"})
    _write_geojson(paths["geojson"], scene.gt, scene.model)
    labels = np.where(scene.field > scene.threshold, CANCER, STROMA).astype(np.uint8)
    write_image(paths["regions"], labels)
    summary = _summary(scene, sizes, paths, labels)
    write_json(paths["summary"], summary)
    return summary
