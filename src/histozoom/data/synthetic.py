"""Synthetic paired cell/tissue data in the OCELOT release layout (``histozoom synth``).

Each sample is a :class:`~histozoom.pair.Pair` rendered from one underlying scene, so the
two views agree geometrically: the tissue image's cell window *is* the cell image shrunk
by ``tissue_mpp / cell_mpp`` (4 by default, block mean), and the tissue image around it
is rendered from the same fields, nuclei and classes at the tissue resolution.

Scales. Cell-scale structures (nuclei, stroma fibres, mid-scale blotches, the minimum
distance between cells, cell density) are given in microns and converted with the mpp,
so a 256 px cell image is a smaller field of view than a 1024 px one at the same
0.2 µm/px. Tissue-scale structures (cancer-area blobs, glands, the unknown band) are given
in units of the cell window's side ``W`` (tissue pixels), so the cell/tissue geometry is
the same at every image size. With ``cell_mpp=0.8, tissue_mpp=3.2`` a 256 px dataset
covers OCELOT's field of view instead.

Presets
-------
``context`` (default): the tissue context decides most cell classes, and only the tissue
view shows it.

* Tissue: cancer area (CA, label 2) is thresholded low-frequency noise covering on
  average 40 % of the tissue (15-70 % per sample); the rest is background tissue (BG,
  label 1); a thin band along the CA/BG boundary and a few small patches are unknown
  (255), about 3-4 % of the pixels. CA shows at the tissue scale as a dense field of
  *glands* (pale lumina ringed by dark epithelium, 0.3 W apart) that ends at the CA
  boundary. No gland reaches into the cell window, so inside the window CA and BG look
  alike: the window's region must be read from its surroundings, as a pathologist does
  when zooming out.
* Window: in 85 % of the samples it lies wholly in one region (CA with probability 0.4)
  whose surroundings (a ring half a window wide) are at least 80 % the same region; in
  15 % it straddles a CA/BG boundary (25-75 % CA).
* Cells: one set of nuclei for both views, the same density in CA and BG (7000 /mm²:
  ~300 per 1024² cell image at 0.2 µm/px, ~19 per 256², at least 2 µm apart). A cell's
  class depends on its region so that ~90 % of tumour cells (TC, 2) lie in CA and ~90 %
  of background cells (BC, 1) outside (40 % TC overall). Morphology (radius ~1.4 µm =
  7 px, hematoxylin darkness, outline irregularity) differs only slightly between the
  classes (TC a little larger, paler, more irregular), and every sample has its own random
  offsets of these features (slide-to-slide heterogeneity) that are as large as the
  class differences, so neither one cell nor the cell population of an image tells the
  class reliably.
* Stroma: the same texture statistics everywhere (fibres, blotches, small pale spaces);
  stain colours vary by organ and per sample, independently of the region.

``simple``: the same tissue rendering, but windows are placed at random, cell classes are
independent of the region (40 % TC) and separable by morphology (TC large and pale, BC
small and dark). For quick tests of detection and classification.

Reference numbers (seed 0, all splits pooled, perfect localisation,
:func:`histozoom.evaluation.oracles.oracle_mf1`;
mF1 = mean of the BC and TC F1):

=======================================  ==================  ==================
oracle                                   context, 256 px     context, 1024 px
                                         (600 pairs)         (120 pairs)
=======================================  ==================  ==================
region (TC on CA, BC elsewhere)          0.887               0.891
cell view, best morphology threshold     0.655               0.663
cell view + image-mean morphology        0.657               0.668
region + cell view                       0.892               0.895
=======================================  ==================  ==================

``simple`` (256 px): region 0.496, cell view 1.000. Statistics of the context preset:
TC in CA 0.90, BC outside CA 0.89-0.90, CA 39 % of tissue pixels, unknown 3.5-4 %, 84-87 %
of the windows ≥ 90 % one region. The numbers of a generated dataset are written to
``synthetic.json`` next to ``metadata.json`` by
:func:`histozoom.evaluation.oracles.write_synthetic_dataset`; this module only generates and
writes the pairs (:func:`write_synthetic_release`) and summarises their cells
(:func:`pair_summary`, :func:`summary_statistics`). Whole slides drawn from the same scene
model: :mod:`histozoom.data.synthetic_slide`.
"""

from __future__ import annotations

import math
import shutil
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from ..config_fields import DictConfig
from ..constants import OCELOT_ORGANS, PRESETS
from ..errors import InputError
from ..geometry import Placement
from ..pair import OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES, UNKNOWN, Pair, Points
from .base import DatasetSpec
from .ocelot_release import SPLITS, OcelotReleaseWriter, ocelot_entry

BC, TC = 1, 2
BG, CA = 1, 2
SYNTHETIC_JSON = "synthetic.json"
"""Written next to ``metadata.json``: the config, the statistics and the oracle scores of
the dataset (by :func:`histozoom.evaluation.oracles.write_synthetic_dataset`)."""
MORPHOLOGY_FEATURES = ("radius_um", "darkness", "elongation", "irregularity")
THINNING_COMPENSATION = 1.08
"""Cells are drawn this much denser than ``cells_per_mm2``; thinning to the minimum distance takes the excess."""
GLAND_COVER = 0.05
"""A tissue pixel whose gland lumen + rim coverage exceeds this is gland: no cell lies
there (in the paired data and on slides, where ``OUT.glands.png`` marks it)."""


# ---------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class Feature:
    """One nucleus feature: class means, within-class sd and the sd of a per-sample offset."""

    bc: float
    tc: float
    sd: float
    pair_sd: float = 0.0


@dataclass(frozen=True)
class CellMorphology:
    """Nucleus appearance per class.

    ``radius_um``: equivalent radius in µm; ``darkness``: hematoxylin density at the
    centre (1 ≈ a dark lymphocyte); ``elongation``: axis ratio minus 1;
    ``irregularity``: amplitude of a 3-lobed outline perturbation (fraction of the radius).
    """

    radius_um: Feature
    darkness: Feature
    elongation: Feature
    irregularity: Feature

    def features(self) -> dict[str, Feature]:
        return {k: getattr(self, k) for k in MORPHOLOGY_FEATURES}


CONTEXT_MORPHOLOGY = CellMorphology(
    radius_um=Feature(bc=1.40, tc=1.52, sd=0.16, pair_sd=0.20),
    darkness=Feature(bc=1.00, tc=0.94, sd=0.09, pair_sd=0.12),
    elongation=Feature(bc=0.25, tc=0.25, sd=0.12, pair_sd=0.05),
    irregularity=Feature(bc=0.040, tc=0.055, sd=0.025, pair_sd=0.03),
)
SIMPLE_MORPHOLOGY = CellMorphology(
    radius_um=Feature(bc=1.15, tc=1.85, sd=0.10),
    darkness=Feature(bc=1.10, tc=0.70, sd=0.07),
    elongation=Feature(bc=0.20, tc=0.20, sd=0.10),
    irregularity=Feature(bc=0.02, tc=0.10, sd=0.02),
)


def _preset_morphology(preset: str) -> CellMorphology:
    return CONTEXT_MORPHOLOGY if preset == "context" else SIMPLE_MORPHOLOGY


@dataclass
class SynthConfig(DictConfig):
    """Everything that defines a synthetic dataset; with ``seed`` it is reproducible.

    ``tc_in_ca``/``bc_outside_ca``: target fractions of TC lying in CA and of BC lying
    outside CA (``context`` preset; the per-region class probabilities are solved from
    them). ``ca_fraction``: mean share of tissue pixels that are CA.
    ``ca_window_fraction``: share of single-region windows placed in CA.
    ``straddle_fraction``: share of windows placed across a CA/BG boundary.
    ``region_scale``: smoothing of the CA noise field in window sides (larger = larger blobs).
    ``morphology``: ``None`` takes the preset's (filled in at construction, so
    ``to_dict`` writes the values used); a mapping (as read from JSON) is converted.
    """

    preset: str = "context"
    n_train: int = 40
    n_val: int = 10
    n_test: int = 10
    cell_size: int = 1024
    tissue_size: int = 1024
    cell_mpp: float = 0.2
    tissue_mpp: float = 0.8
    seed: int = 0
    organs: tuple[str, ...] = OCELOT_ORGANS
    cells_per_mm2: float = 7000.0
    min_cell_distance_um: float = 2.0
    ca_fraction: float = 0.4
    tc_in_ca: float = 0.9
    bc_outside_ca: float = 0.9
    ca_window_fraction: float = 0.4
    straddle_fraction: float = 0.15
    region_scale: float = 0.8
    simple_tc_fraction: float = 0.4
    morphology: CellMorphology | None = None

    def __post_init__(self):
        self.organs = tuple(self.organs)
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {self.preset!r}")
        if self.morphology is None:
            self.morphology = _preset_morphology(self.preset)
        elif isinstance(self.morphology, Mapping):
            self.morphology = CellMorphology(**{k: Feature(**v) for k, v in self.morphology.items()})
        for name in ("n_train", "n_val", "n_test"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if not self.organs:
            raise ValueError("organs must not be empty")
        if self.cell_size < 16 or self.tissue_size < 16:
            raise ValueError("cell_size and tissue_size must be at least 16 px")
        if not (self.cell_mpp > 0 and self.tissue_mpp > 0):
            raise ValueError("cell_mpp and tissue_mpp must be positive")
        f = self.tissue_mpp / self.cell_mpp
        if round(f) < 1 or abs(f - round(f)) > 1e-6:
            raise ValueError(f"tissue_mpp / cell_mpp must be a whole number >= 1, got {f:g}")
        if self.cell_size % round(f):
            raise ValueError(f"cell_size ({self.cell_size}) must be a multiple of tissue_mpp / cell_mpp ({round(f)})")
        if self.window_size > self.tissue_size:
            raise ValueError(
                f"the cell window ({self.window_size} tissue px) does not fit in the "
                f"{self.tissue_size} px tissue image")
        for name in ("ca_fraction", "tc_in_ca", "bc_outside_ca", "ca_window_fraction", "straddle_fraction",
                     "simple_tc_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1]")

    @property
    def factor(self) -> int:
        """Cell pixels per tissue pixel (an integer)."""
        return int(round(self.tissue_mpp / self.cell_mpp))

    @property
    def window_size(self) -> int:
        """Side of the cell window in tissue pixels."""
        return self.cell_size // self.factor

    @property
    def cell_morphology(self) -> CellMorphology:
        """The nucleus appearance per class (the preset's unless given)."""
        return self.morphology  # type: ignore[return-value]  # set by __post_init__

    def replace(self, **changes: Any) -> SynthConfig:
        """A copy with ``changes``; a new ``preset`` without a new ``morphology`` brings the
        new preset's morphology unless this config's was set explicitly (not the preset's)."""
        if "preset" in changes and "morphology" not in changes and self.morphology == _preset_morphology(self.preset):
            changes["morphology"] = None
        return super().replace(**changes)

    def class_probabilities(self) -> tuple[float, float]:
        """``(P(TC | CA), P(TC | BG))`` used to draw cell classes."""
        if self.preset == "simple":
            return self.simple_tc_fraction, self.simple_tc_fraction
        # Expected share of cells in CA windows (straddling windows are about half CA).
        q = (1 - self.straddle_fraction) * self.ca_window_fraction + self.straddle_fraction * 0.5
        return _solve_class_probabilities(self.tc_in_ca, self.bc_outside_ca, q)


def _solve_class_probabilities(tc_in_ca: float, bc_out: float, q: float) -> tuple[float, float]:
    """P(TC|CA), P(TC|BG) such that the given fractions of TC lie in CA and of BC outside,
    when a share ``q`` of the cells lies in CA (clipped to valid probabilities)."""
    eps = 1e-6
    k1 = min(tc_in_ca, 1 - eps) / max(1 - tc_in_ca, eps)
    k2 = min(bc_out, 1 - eps) / max(1 - bc_out, eps)
    q = min(max(q, eps), 1 - eps)
    # unknowns: D = BC in CA, B = TC outside (shares of all cells); A = k1 B, C = k2 D
    denom = 1 - k1 * k2
    d = (q - k1 * (1 - q)) / denom if abs(denom) > eps else q / 2
    d = min(max(d, 0.0), q)
    b = min(max(1 - q - k2 * d, 0.0), 1 - q)
    return 1 - d / q, b / (1 - q)


# ---------------------------------------------------------------------- noise fields
def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise, zero mean and unit sd (float32).

    Large ``sigma`` is filtered on a coarse grid and upsampled bilinearly; the grid is
    padded so the field is not periodic.
    """
    h, w = shape
    d = max(1, int(sigma // 3))
    s = sigma / d
    pad = int(math.ceil(3 * s)) + 2
    ch, cw = -(-h // d) + 2 * pad + 1, -(-w // d) + 2 * pad + 1
    g = ndimage.gaussian_filter(rng.standard_normal((ch, cw)).astype(np.float32), s, mode="nearest", truncate=3.0)
    if d > 1:
        # bilinear upsampling by d (coarse pixel j covers fine pixels [j d, (j + 1) d))
        g = _upsample(g, (h, w), (pad, pad), d)
    else:
        g = g[pad:pad + h, pad:pad + w]
    g = g - g.mean()
    return g / (g.std() + 1e-12)


def _fibre_noise(rng: np.random.Generator, n: int, sigma_long: float, sigma_short: float, angles) -> np.ndarray:
    """Oriented (fibre-like) noise: white noise filtered by anisotropic Gaussians along ``angles``."""
    z = rng.standard_normal((n, n)).astype(np.float32)
    spec = np.fft.rfft2(z)
    ky = np.fft.fftfreq(n).astype(np.float32)[:, None]
    kx = np.fft.rfftfreq(n).astype(np.float32)[None, :]
    acc = np.zeros(spec.shape, np.float32)
    for a in angles:
        c, s = math.cos(a), math.sin(a)
        u = kx * c + ky * s
        v = -kx * s + ky * c
        acc += np.exp(-2 * math.pi ** 2 * (sigma_long ** 2 * u * u + sigma_short ** 2 * v * v))
    out = np.fft.irfft2(spec * acc, s=(n, n)).astype(np.float32)
    out -= out.mean()
    return out / (out.std() + 1e-12)


# ---------------------------------------------------------------------- stamping
def _stamp(
    canvas: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    theta: np.ndarray,
    irr: np.ndarray,
    phase: np.ndarray,
    value: np.ndarray,
    rng: np.random.Generator | None = None,
    texture: float = 0.0,
    inner: np.ndarray | None = None,
    membrane: float = 0.0,
) -> None:
    """Draw soft-edged (irregular) ellipses into ``canvas`` in place, keeping the maximum.

    Centres ``cx, cy`` are pixel positions (pixel centres at integers); ``a, b`` semi-axes
    in pixels; ``irr`` the amplitude of a 3-lobed outline perturbation; ``value`` the peak
    value; ``texture`` multiplicative per-pixel noise (chromatin). ``inner`` (pixels, same
    shape as ``a``) makes rings: the disk minus an inner disk of that radius. ``membrane``
    darkens the outline relative to the centre (vesicular chromatin).
    """
    if not canvas.flags.c_contiguous:
        raise ValueError("_stamp draws in place: the canvas must be C-contiguous")
    n = len(cx)
    if n == 0:
        return
    h, w = canvas.shape
    k = int(math.ceil(float(np.max(np.maximum(a, b) * (1 + irr))) + 1.5))
    off = np.arange(-k, k + 1, dtype=np.float32)
    ix = np.rint(cx).astype(np.int64)
    iy = np.rint(cy).astype(np.int64)
    dx = (ix - cx).astype(np.float32)[:, None, None] + off[None, None, :]
    dy = (iy - cy).astype(np.float32)[:, None, None] + off[None, :, None]
    c = np.cos(theta).astype(np.float32)[:, None, None]
    s = np.sin(theta).astype(np.float32)[:, None, None]
    u = dx * c + dy * s
    v = -dx * s + dy * c
    a3 = a.astype(np.float32)[:, None, None]
    b3 = b.astype(np.float32)[:, None, None]
    rho = np.sqrt((u / a3) ** 2 + (v / b3) ** 2)
    lobes = np.cos(3 * np.arctan2(v, u) + phase.astype(np.float32)[:, None, None])
    edge = 1.0 + irr.astype(np.float32)[:, None, None] * lobes
    scale = np.sqrt(a3 * b3)
    cov = np.clip((edge - rho) * scale + 0.5, 0.0, 1.0)
    if inner is not None:
        r_px = np.sqrt(u * u + v * v)
        cov = cov * np.clip(r_px - inner.astype(np.float32)[:, None, None] + 0.5, 0.0, 1.0)
    val = cov * value.astype(np.float32)[:, None, None]
    if membrane:
        val *= (1 - membrane) + 1.5 * membrane * np.minimum(rho, 1.0) ** 2
    if texture and rng is not None:
        val *= 1.0 + texture * rng.standard_normal(val.shape).astype(np.float32)
    px = ix[:, None, None] + off.astype(np.int64)[None, None, :]
    py = iy[:, None, None] + off.astype(np.int64)[None, :, None]
    px, py = np.broadcast_to(px, val.shape), np.broadcast_to(py, val.shape)
    ok = (cov > 0) & (px >= 0) & (px < w) & (py >= 0) & (py < h)
    np.maximum.at(canvas.reshape(-1), (py[ok] * w + px[ok]), val[ok])


def _thin(xy: np.ndarray, dmin: float) -> np.ndarray:
    """Boolean mask keeping points so that no two kept points are closer than ``dmin``."""
    keep = np.ones(len(xy), bool)
    if len(xy) < 2 or dmin <= 0:
        return keep
    pairs = cKDTree(xy).query_pairs(dmin * (1 - 1e-9), output_type="ndarray")
    if len(pairs):
        pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
        for i, j in pairs:
            if keep[i] and keep[j]:
                keep[j] = False
    return keep


# ---------------------------------------------------------------------- scene pieces
_H_VEC = np.array([0.95, 1.05, 0.42], np.float32)  # optical density of hematoxylin (darkness 1)
_E_VEC = np.array([0.09, 0.46, 0.25], np.float32)  # optical density of eosin stroma (density 1)


def _stain(rng: np.random.Generator, organ: str) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-sample stain vectors (organ-specific tint plus random jitter) and H background."""
    org = np.random.default_rng(zlib.crc32(organ.encode("utf-8")))
    h = _H_VEC * (1 + org.normal(0, 0.06, 3)) * (1 + rng.normal(0, 0.05, 3))
    e = _E_VEC * (1 + org.normal(0, 0.10, 3)) * (1 + rng.normal(0, 0.08, 3)) * (1 + rng.normal(0, 0.1))
    return h.astype(np.float32), e.astype(np.float32), float(0.06 * (1 + rng.normal(0, 0.2)))


def _window_kind(rng: np.random.Generator, cfg: SynthConfig) -> str:
    """Where the window should go: ``random`` (simple preset), ``straddle``, ``CA`` or ``BG``."""
    if cfg.preset == "simple":
        return "random"
    if rng.random() < cfg.straddle_fraction:
        return "straddle"
    return "CA" if rng.random() < cfg.ca_window_fraction else "BG"


_REGION_ATTEMPTS = 4  # fresh region fields tried before the window criteria are relaxed
_STRICT = (0.001, 0.8)  # window purity tolerance, share of the surrounding ring in the same region
_RELAXED = ((0.05, 0.65), (0.1, 0.5), (0.1, -1.0))


def _place_window(rng: np.random.Generator, ca: np.ndarray, w: int, kind: str,
                  strict: bool) -> tuple[int, int, str] | None:
    """Top-left ``(x0, y0)`` of the window in tissue pixels and the kind it got.

    ``CA``/``BG`` windows lie wholly in that region and the surroundings (a ring half a
    window wide, at least half of it in view) mostly share it, so the tissue view shows
    the region around the window; ``straddle`` windows are 25-75 % CA. ``strict`` returns ``None``
    when no position qualifies; otherwise the criteria are relaxed step by step, then the
    other region is tried, then the purest position is taken.
    """
    t_h, t_w = ca.shape
    ny, nx = t_h - w + 1, t_w - w + 1
    if kind == "random":
        return int(rng.integers(nx)), int(rng.integers(ny)), "random"
    frac = _box_fraction(ca, w, 0)

    def pick(cand: np.ndarray) -> tuple[int, int] | None:
        idx = np.flatnonzero(cand)
        if len(idx) == 0:
            return None
        k = int(idx[rng.integers(len(idx))])
        return k % nx, k // nx

    if kind == "straddle":
        got = pick((frac >= 0.25) & (frac <= 0.75))
        if got is not None:
            return got[0], got[1], "straddle"
        if strict:
            return None
        kind = "CA" if rng.random() < 0.5 else "BG"
    around = _ring_fraction(ca, w, int(round(0.5 * w)))
    levels = [_STRICT] if strict else [_STRICT, *_RELAXED]
    targets = [kind == "CA"] if strict else [kind == "CA", kind != "CA"]
    for target in targets:
        purity, purity_around = (frac, around) if target else (1 - frac, 1 - around)
        for tol, need in levels:
            ok_around = np.nan_to_num(purity_around, nan=-0.5) >= need
            got = pick((purity >= 1 - tol) & ok_around)
            if got is not None:
                return got[0], got[1], "CA" if target else "BG"
    if strict:
        return None
    k = int(np.argmax(np.abs(frac - 0.5)))
    return k % nx, k // nx, "CA" if frac.flat[k] >= 0.5 else "BG"


def _ring_fraction(ca: np.ndarray, w: int, m: int) -> np.ndarray:
    """CA share of the ring of width ``m`` around every window position (clipped to the
    image); positions whose visible ring is under half its full area get NaN (the
    surroundings would be mostly out of view)."""
    t_h, t_w = ca.shape
    inner = _box_fraction(ca, w, 0) * (w * w)
    y = np.arange(t_h - w + 1)
    x = np.arange(t_w - w + 1)
    hy = np.clip(y + w + m, 0, t_h) - np.clip(y - m, 0, t_h)
    hx = np.clip(x + w + m, 0, t_w) - np.clip(x - m, 0, t_w)
    area = hy[:, None] * hx[None, :]
    ring = area - w * w
    frac = (_box_fraction(ca, w, m) * area - inner) / np.maximum(ring, 1)
    full = (w + 2 * m) ** 2 - w * w
    return np.where(ring >= 0.5 * full, frac, np.nan)


def _box_fraction(ca: np.ndarray, w: int, m: int) -> np.ndarray:
    """CA share of the box ``[x0 - m, x0 + w + m)`` (clipped to the image) for every
    window position ``x0, y0`` (array indexed ``[y0, x0]``)."""
    t_h, t_w = ca.shape
    s = np.zeros((t_h + 1, t_w + 1), np.int64)
    s[1:, 1:] = ca.astype(np.int32).cumsum(0).cumsum(1)
    y = np.arange(t_h - w + 1)
    x = np.arange(t_w - w + 1)
    ya, yb = np.clip(y - m, 0, t_h), np.clip(y + w + m, 0, t_h)
    xa, xb = np.clip(x - m, 0, t_w), np.clip(x + w + m, 0, t_w)
    total = s[yb][:, xb] - s[ya][:, xb] - s[yb][:, xa] + s[ya][:, xa]
    return total / ((yb - ya)[:, None] * (xb - xa)[None, :]).astype(np.float64)


def _tissue_mask(rng: np.random.Generator, ca: np.ndarray, w: int) -> np.ndarray:
    """Labels BG/CA with an unknown band along the boundary and a few unknown patches."""
    band = max(1, int(round(0.02 * w)))
    m = ndimage.uniform_filter(ca.astype(np.float32), size=2 * band + 1, mode="nearest")
    near = (m > 1e-3) & (m < 1 - 1e-3)
    blobs = smooth_noise(rng, ca.shape, max(1.0, 0.08 * w))
    patches = blobs > np.quantile(blobs, 1 - rng.uniform(0.005, 0.025))
    mask = np.where(ca, CA, BG).astype(np.uint8)
    mask[near | patches] = UNKNOWN
    return mask


def _glands(rng: np.random.Generator, ca: np.ndarray, w: float,
            window: tuple[float, float, float, float] | None) -> dict:
    """Glands on a jittered grid over CA: centres ``x, y``, lumen semi-axes ``a, b``,
    ``theta``, outline ``irr``/``phase`` and ``rim`` width, all in tissue pixels.

    Glands tile CA densely (a gland's centre and most of its lumen lie in CA, so the gland
    field ends at the CA boundary) and never reach into ``window`` (x0, y0, x1, y1: the extreme pixel
    centres of the cell window), so the cell view shows none; ``window=None``: no exclusion (a slide).
    """
    t_h, t_w = ca.shape
    spacing = 0.3 * w
    rim = max(1.0, 0.035 * w)
    gx, gy = np.meshgrid(np.arange(-0.5, t_w / spacing + 1) * spacing, np.arange(-0.5, t_h / spacing + 1) * spacing)
    n = gx.size
    gx = gx.ravel() + rng.uniform(0, spacing) + rng.uniform(-0.3, 0.3, n) * spacing
    gy = gy.ravel() + rng.uniform(0, spacing) + rng.uniform(-0.3, 0.3, n) * spacing
    r = rng.uniform(0.06, 0.10, n) * w
    el = rng.uniform(0.0, 0.3, n)
    irr = rng.uniform(0.0, 0.12, n)
    a, b = r * np.sqrt(1 + el), r / np.sqrt(1 + el)
    reach = (a + rim) * (1 + irr) + 1.0  # soft edge included
    inside = (gx >= 0) & (gx <= t_w - 1) & (gy >= 0) & (gy <= t_h - 1)
    ang = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    px = np.concatenate([gx[:, None], gx[:, None] + 0.6 * a[:, None] * np.cos(ang)], 1)
    py = np.concatenate([gy[:, None], gy[:, None] + 0.6 * a[:, None] * np.sin(ang)], 1)
    lab = ca[np.clip(np.rint(py), 0, t_h - 1).astype(int), np.clip(np.rint(px), 0, t_w - 1).astype(int)]
    centre_ca = lab.all(axis=1)
    away = True
    if window is not None:
        x0, y0, x1, y1 = window
        ddx = np.maximum(np.maximum(x0 - gx, gx - x1), 0)
        ddy = np.maximum(np.maximum(y0 - gy, gy - y1), 0)
        away = np.hypot(ddx, ddy) > reach
    keep = centre_ca & inside & away & (rng.random(n) < 0.9)
    k = int(keep.sum())
    return {"x": gx[keep], "y": gy[keep], "a": a[keep], "b": b[keep], "theta": rng.uniform(0, np.pi, n)[keep],
            "irr": irr[keep], "phase": rng.uniform(0, 2 * np.pi, n)[keep], "rim": np.full(k, rim)}


_GLAND_BATCH = 32


def _gland_layers(gl: dict, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Lumen and epithelial rim coverage (0-1, float32) of the :func:`_glands` ``gl`` on a ``shape`` canvas."""
    lumen = np.zeros(shape, np.float32)
    rim = np.zeros(shape, np.float32)
    ng = len(gl["x"])
    for i in range(0, ng, _GLAND_BATCH):  # a pixel's value does not depend on the batch: bounded memory
        g = {k: v[i:i + _GLAND_BATCH] for k, v in gl.items()}
        one = np.ones(len(g["x"]))
        _stamp(lumen, g["x"], g["y"], g["a"], g["b"], g["theta"], g["irr"], g["phase"], one)
        _stamp(rim, g["x"], g["y"], g["a"] + g["rim"], g["b"] + g["rim"], g["theta"], g["irr"], g["phase"], one)
    if ng:
        rim = np.clip(rim - lumen, 0, 1)
    return lumen, rim


def _gland_stain(e: np.ndarray, hb: np.ndarray, lumen: np.ndarray, rim: np.ndarray,
                 mid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eosin and hematoxylin densities with the glands drawn in: pale lumina, dark rims."""
    return e * (1 - 0.85 * lumen) + 0.35 * rim, hb * (1 - lumen) + rim * 0.8 * (0.75 + 0.25 * np.clip(mid, -1, 1))


def _ca_share(rng: np.random.Generator, cfg: SynthConfig) -> float:
    """This sample's CA share of the tissue pixels."""
    return float(np.clip(rng.normal(cfg.ca_fraction, 0.12), 0.15, 0.7)) if cfg.ca_fraction > 0 else 0.0


def _ca_region(rng: np.random.Generator, shape: tuple[int, int], sigma: float, q: float) -> np.ndarray:
    """Boolean cancer area: the top share ``q`` of a smooth noise field of scale ``sigma`` (tissue px)."""
    field_ = smooth_noise(rng, shape, sigma)
    return field_ > np.quantile(field_, 1 - q) if q > 0 else np.zeros(shape, bool)


def _stroma(rng: np.random.Generator, shape: tuple[int, int], w: float, t_um: float,
            h_bg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tissue-scale stroma: eosin density, hematoxylin background and the mid-scale blotch field."""
    low = smooth_noise(rng, shape, 0.5 * w)
    mid = smooth_noise(rng, shape, 3.0 / t_um)
    holes = smooth_noise(rng, shape, 2.0 / t_um)
    e_t = (1 + 0.08 * low + 0.12 * mid) * (1 - 0.55 * np.clip((holes - 1.6) * 1.5, 0, 1))
    return e_t, h_bg * (1 + 0.3 * mid), mid


def _cell_classes(rng: np.random.Generator, cfg: SynthConfig,
                  in_ca: np.ndarray) -> tuple[np.ndarray, dict, np.ndarray, np.ndarray]:
    """Classes (by the preset's class–region rule), morphology (with this sample's offsets),
    orientation and outline phase of cells lying in CA where ``in_ca``."""
    p_tc_ca, p_tc_bg = cfg.class_probabilities()
    cls = np.where(rng.random(len(in_ca)) < np.where(in_ca, p_tc_ca, p_tc_bg), TC, BC)
    morph_cfg = cfg.cell_morphology
    offsets = {k: (rng.normal(0, ft.pair_sd) if ft.pair_sd else 0.0) for k, ft in morph_cfg.features().items()}
    morph = _sample_morphology(rng, morph_cfg, cls, offsets)
    theta = rng.uniform(0, np.pi, len(cls))
    phase = rng.uniform(0, 2 * np.pi, len(cls))
    return cls, morph, theta, phase


def _sample_morphology(rng: np.random.Generator, morph: CellMorphology, cls: np.ndarray, offsets: dict) -> dict:
    out = {}
    lims = {"radius_um": (0.6, 3.0), "darkness": (0.3, 1.8), "elongation": (0.0, 1.0), "irregularity": (0.0, 0.3)}
    for name, f in morph.features().items():
        mean = np.where(cls == TC, f.tc, f.bc) + offsets[name]
        out[name] = np.clip(mean + f.sd * rng.standard_normal(len(cls)), *lims[name])
    return out


def _stamp_nuclei(rng, canvas, xy, morph: dict, sel: np.ndarray, um_per_px: float, texture: float,
                  theta: np.ndarray, phase: np.ndarray, dark_scale: float = 1.0) -> None:
    r = morph["radius_um"][sel] / um_per_px
    e = morph["elongation"][sel]
    _stamp(canvas, xy[sel, 0], xy[sel, 1], r * np.sqrt(1 + e), r / np.sqrt(1 + e), theta[sel],
           morph["irregularity"][sel], phase[sel], morph["darkness"][sel] * dark_scale, rng, texture,
           membrane=0.3 if texture else 0.0)


def _interp_1d(n_out: int, start: int, n_in: int, f: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear weights from ``n_in`` coarse pixels to ``n_out`` fine pixels, ``f`` fine
    pixels per coarse pixel, the fine grid starting at the left edge of coarse pixel
    ``start``: fine pixel ``i`` sits at coarse coordinate ``start + (i + 0.5) / f - 0.5``
    (pixel centres at integers, edges clamped; the cell-window convention of
    :mod:`histozoom.geometry`). Returns ``(lo, hi, weight_of_hi)``."""
    pos = start + (np.arange(n_out) + 0.5) / f - 0.5
    lo = np.floor(pos).astype(np.int64)
    frac = (pos - lo).astype(np.float32)
    return np.clip(lo, 0, n_in - 1), np.clip(lo + 1, 0, n_in - 1), frac


def _upsample(a: np.ndarray, out_shape: tuple[int, int], start: tuple[int, int], f: int) -> np.ndarray:
    """Separable bilinear upsampling of ``a`` by ``f`` (see :func:`_interp_1d`);
    ``start = (y, x)`` in coarse pixels. Plain indexing: no BLAS threads."""
    return _resample(a, _interp_1d(out_shape[0], start[0], a.shape[0], f), _interp_1d(out_shape[1], start[1], a.shape[1], f))


def _resample(a: np.ndarray, rows_w: tuple[np.ndarray, np.ndarray, np.ndarray],
              cols_w: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    """Separable bilinear resampling of ``a`` with the :func:`_interp_1d` weights of the rows and the columns.

    The column gather leaves the result not C-contiguous; copy it before stamping into it. (The
    layout stays as it is on purpose: sums over the result, as in :func:`smooth_noise`, depend on it.)"""
    lo, hi, fr = rows_w
    rows = a[lo] * (1 - fr)[:, None] + a[hi] * fr[:, None]
    lo, hi, fr = cols_w
    return rows[:, lo] * (1 - fr)[None, :] + rows[:, hi] * fr[None, :]


def _upsample_window(a: np.ndarray, x0: int, y0: int, c: int, f: int) -> np.ndarray:
    """The window ``(x0, y0)``, side ``c / f``, of tissue map ``a`` resampled bilinearly to
    ``c × c`` cell pixels (same convention as :func:`histozoom.geometry.tissue_to_cell`)."""
    w = c // f
    ya, yb = max(y0 - 1, 0), min(y0 + w + 1, a.shape[0])
    xa, xb = max(x0 - 1, 0), min(x0 + w + 1, a.shape[1])
    crop = a[ya:yb, xa:xb].astype(np.float32)
    return _upsample(crop, (c, c), (y0 - ya, x0 - xa), f)


def _to_rgb(h: np.ndarray, e: np.ndarray, h_vec: np.ndarray, e_vec: np.ndarray) -> np.ndarray:
    od = h[..., None] * h_vec + e[..., None] * e_vec
    return 255.0 * np.exp(-od)


def _quantise(rgb: np.ndarray, rng: np.random.Generator, noise: float = 1.5) -> np.ndarray:
    rgb = rgb + noise * rng.standard_normal(rgb.shape, dtype=np.float32)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------- one pair
def generate_pair(cfg: SynthConfig, rng: np.random.Generator, sample_id: str) -> Pair:
    """Render one synthetic pair.

    ``pair.meta`` holds ``slide_name``, ``synthetic`` (window kind and CA share) and
    ``cell_morphology`` (per annotated cell: radius_um, darkness, elongation,
    irregularity; used by :func:`histozoom.evaluation.oracles.oracle_mf1`).
    """
    f = cfg.factor
    w = cfg.window_size
    t = cfg.tissue_size
    c = cfg.cell_size
    organ = str(cfg.organs[int(rng.integers(len(cfg.organs)))])
    h_vec, e_vec, h_bg = _stain(rng, organ)

    # ---- regions, window, labels
    q = _ca_share(rng, cfg)
    want = _window_kind(rng, cfg)
    for attempt in range(_REGION_ATTEMPTS):
        ca = _ca_region(rng, (t, t), cfg.region_scale * w, q)
        got = _place_window(rng, ca, w, want, strict=attempt < _REGION_ATTEMPTS - 1)
        if got is not None:
            break
    x0, y0, kind = got
    placement = Placement.from_centre(((x0 + w / 2) / t, (y0 + w / 2) / t), (c, c), (t, t),
                                      cfg.cell_mpp, cfg.tissue_mpp)
    mask = _tissue_mask(rng, ca, w)

    # ---- stroma (eosin density) at the tissue scale
    t_um = cfg.tissue_mpp
    e_t, hb_t, mid = _stroma(rng, (t, t), w, t_um, h_bg)

    # ---- nuclei: one physical set, positions in tissue pixels
    area_mm2 = (t * t_um / 1000.0) ** 2
    n = int(rng.poisson(cfg.cells_per_mm2 * area_mm2 * THINNING_COMPENSATION))
    dmin_t = cfg.min_cell_distance_um / t_um
    xy_t = rng.uniform(-0.5, t - 0.5, (n, 2))
    xy_t = xy_t[_thin(xy_t, dmin_t)]
    reg = ca[np.clip(np.rint(xy_t[:, 1]), 0, t - 1).astype(int), np.clip(np.rint(xy_t[:, 0]), 0, t - 1).astype(int)]
    cls, morph, theta, phase = _cell_classes(rng, cfg, reg)

    # Nuclei near the window are drawn in the cell view at integer cell pixels.
    r_max_c = 3.0 / cfg.cell_mpp
    xy_c = np.rint(placement.tissue_to_cell_points(xy_t))
    near_c = np.all((xy_c >= -r_max_c) & (xy_c <= c - 1 + r_max_c), axis=1)
    idx_near = np.flatnonzero(near_c)
    drop = ~_thin(xy_c[idx_near], cfg.min_cell_distance_um / cfg.cell_mpp)
    alive = np.ones(len(cls), bool)
    alive[idx_near[drop]] = False

    # ---- glands (tissue scale, CA only, never in the window)
    gl = _glands(rng, ca, w, (x0, y0, x0 + w - 1, y0 + w - 1))
    ng = len(gl["x"])
    lumen, rim = _gland_layers(gl, (t, t))
    in_gland = (lumen + rim)[np.clip(np.rint(xy_t[:, 1]), 0, t - 1).astype(int),
                             np.clip(np.rint(xy_t[:, 0]), 0, t - 1).astype(int)] > GLAND_COVER
    alive &= ~(in_gland & ~near_c)

    # ---- cell view
    fib_angles = rng.uniform(0, np.pi, 2)
    fib = _fibre_noise(rng, c, 1.5 / cfg.cell_mpp, 0.25 / cfg.cell_mpp, fib_angles)
    e_up = _upsample_window(e_t, x0, y0, c, f)
    hb_up = _upsample_window(hb_t, x0, y0, c, f)
    fine = 0.15 * fib
    e_c = e_up * (1 + fine)
    h_c = hb_up.copy()
    sel_c = near_c & alive
    _stamp_nuclei(rng, h_c, xy_c, morph, sel_c, cfg.cell_mpp, 0.15, theta, phase)
    cell_rgb = _to_rgb(h_c, e_c, h_vec, e_vec)

    # ---- tissue view
    block = fine.reshape(w, f, w, f).mean(axis=(1, 3))
    res = smooth_noise(rng, (t, t), 0.6) * float(block.std())
    e_full, h_t = _gland_stain(e_t * (1 + res), hb_t, lumen, rim, mid)
    sel_t = alive  # the window interior is then replaced by the shrunk cell view
    _stamp_nuclei(rng, h_t, xy_t, morph, sel_t, t_um, 0.0, theta, phase)
    tissue_rgb = _to_rgb(h_t, e_full, h_vec, e_vec)
    tissue_rgb[y0:y0 + w, x0:x0 + w] = cell_rgb.reshape(w, f, w, f, 3).mean(axis=(1, 3))

    cell_img = _quantise(cell_rgb, rng)
    tissue_img = _quantise(tissue_rgb, rng)

    # ---- annotations: cells with centres inside the cell image
    ann = alive & np.all((xy_c >= 0) & (xy_c <= c - 1), axis=1)
    order = np.flatnonzero(ann)
    order = order[np.lexsort((xy_c[order, 0], xy_c[order, 1]))]
    points = Points(xy_c[order], cls[order], np.ones(len(order)))
    window_ca = float(ca[y0:y0 + w, x0:x0 + w].mean())
    return Pair(
        id=sample_id,
        cell_image=cell_img,
        tissue_image=tissue_img,
        placement=placement,
        cell_points=points,
        tissue_mask=mask,
        organ=organ,
        cell_mpp=cfg.cell_mpp,
        tissue_mpp=cfg.tissue_mpp,
        meta={
            "slide_name": f"synth-{organ}-{sample_id}",
            "synthetic": {"preset": cfg.preset, "window_kind": kind, "window_ca_fraction": window_ca,
                          "ca_fraction": float(ca.mean()), "n_glands": int(ng)},
            "cell_morphology": {k: v[order].copy() for k, v in morph.items()},
        },
    )


# ---------------------------------------------------------------------- datasets
def split_seed(seed: int, split: str, k: int) -> np.random.Generator:
    """The generator of the ``k``-th pair of ``split`` (independent of the other splits' sizes)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), SPLITS.index(split), int(k)]))


def iter_synthetic_pairs(cfg: SynthConfig) -> Iterable[tuple[str, Pair]]:
    """``(split, pair)`` for every pair of the dataset, ids numbered across splits."""
    counts = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    width = max(3, len(str(sum(counts.values()))))
    i = 0
    for split in SPLITS:
        for k in range(counts[split]):
            i += 1
            yield split, generate_pair(cfg, split_seed(cfg.seed, split, k), f"{i:0{width}d}")


def synthetic_spec(cfg: SynthConfig) -> DatasetSpec:
    return DatasetSpec(OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES, cfg.cell_mpp, cfg.tissue_mpp,
                       name=f"synthetic-{cfg.preset}")


def write_synthetic_release(out_dir: str | Path, cfg: SynthConfig,
                            overwrite: bool = False) -> tuple[Path, dict[str, list[dict]]]:
    """Write the pairs of ``cfg`` in the OCELOT release layout; return the root and the
    :func:`pair_summary` of every pair per split (``train``, ``val``, ``test``).

    An existing non-empty ``out_dir`` is an error unless ``overwrite`` (then only the
    release files and ``synthetic.json`` are removed, and the release files rewritten).
    ``synthetic.json`` is written by
    :func:`histozoom.evaluation.oracles.write_synthetic_dataset`, which calls this.
    """
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise InputError(root, "exists and is not a directory")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise InputError(root, "directory exists and is not empty (use overwrite / --overwrite)")
        for sub in ("images", "annotations"):
            if (root / sub).is_dir():
                shutil.rmtree(root / sub)
        for name in ("metadata.json", SYNTHETIC_JSON):
            (root / name).unlink(missing_ok=True)
    spec = synthetic_spec(cfg)
    summaries: dict[str, list[dict]] = {s: [] for s in SPLITS}
    with OcelotReleaseWriter(root, spec, dataset_name=spec.name) as writer:
        for split, pair in iter_synthetic_pairs(cfg):
            entry = ocelot_entry(pair, split)
            entry["synthetic"] = pair.meta["synthetic"]
            writer.add(pair, split, entry=entry)
            summaries[split].append(pair_summary(pair))
    return root, summaries


# ---------------------------------------------------------------------- per-cell summaries and statistics
def pair_summary(pair: Pair) -> dict:
    """What the statistics and the oracles need from a pair, as plain arrays.

    ``cls``: the cell classes; ``region``: the tissue label under each cell; ``feats``:
    the cells' morphology (columns :data:`MORPHOLOGY_FEATURES`), ``None`` without
    ``pair.meta["cell_morphology"]``; ``counts`` / ``window``: BG, CA and unknown pixels of
    the tissue mask / of the cell window.
    """
    if pair.cell_points is None or pair.tissue_mask is None:
        raise ValueError(f"pair {pair.id}: statistics need cell points and a tissue mask")
    mask = pair.tissue_mask
    th, tw = mask.shape
    txy = pair.placement.cell_to_tissue_points(pair.cell_points.xy)
    lab = mask[np.clip(np.rint(txy[:, 1]), 0, th - 1).astype(int), np.clip(np.rint(txy[:, 0]), 0, tw - 1).astype(int)]
    x0, y0, x1, y1 = pair.placement.window_int()
    win = mask[max(y0, 0):y1, max(x0, 0):x1]
    morph = pair.meta.get("cell_morphology")
    feats = None
    if morph is not None:
        feats = np.column_stack([np.asarray(morph[k], np.float64) for k in MORPHOLOGY_FEATURES])
    return {
        "cls": pair.cell_points.cls.copy(),
        "region": lab,
        "feats": feats,
        "counts": np.bincount(mask.ravel(), minlength=256)[[BG, CA, UNKNOWN]],
        "window": np.bincount(win.ravel(), minlength=256)[[BG, CA, UNKNOWN]],
    }


def summary_statistics(items: Sequence[dict]) -> dict:
    """:func:`context_statistics` of :func:`pair_summary` items."""
    cls = np.concatenate([s["cls"] for s in items]) if items else np.zeros(0, int)
    reg = np.concatenate([s["region"] for s in items]) if items else np.zeros(0, np.uint8)
    counts = np.sum([s["counts"] for s in items], axis=0)
    known = reg != UNKNOWN
    tc, bc = (cls == TC) & known, (cls == BC) & known
    pure = []
    for s in items:
        bg, ca_, _ = s["window"]
        pure.append(max(bg, ca_) / max(s["window"].sum(), 1))
    return {
        "n_pairs": len(items),
        "n_cells": int(len(cls)),
        "cells_per_image": float(len(cls) / max(len(items), 1)),
        "tc_fraction": float(np.mean(cls == TC)) if len(cls) else float("nan"),
        "tc_in_ca": float(np.mean(reg[tc] == CA)) if tc.any() else float("nan"),
        "bc_outside_ca": float(np.mean(reg[bc] == BG)) if bc.any() else float("nan"),
        "ca_pixel_fraction": float(counts[1] / counts.sum()),
        "unknown_pixel_fraction": float(counts[2] / counts.sum()),
        "windows_90pct_one_region": float(np.mean(np.array(pure) >= 0.9)) if pure else float("nan"),
    }


def context_statistics(pairs: Iterable[Pair]) -> dict:
    """Class–region statistics of pairs with points and tissue masks.

    ``tc_in_ca``: share of TC whose tissue label is CA (cells on unknown pixels left
    out); ``bc_outside_ca``: share of BC on BG; ``ca_pixel_fraction`` and
    ``unknown_pixel_fraction`` of all tissue pixels; ``windows_90pct_one_region``: share
    of cell windows whose tissue labels are ≥ 90 % one class.
    """
    return summary_statistics([pair_summary(p) for p in pairs])
