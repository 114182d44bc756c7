"""Synthetic ccRCC nuclei grading tiles that follow the ISUP nucleoli rule CHR-Net relies on.

A tile is a 400x view (``size`` px at ``mpp`` µm/px, 0.25 µm/px by default) of clear-cell
tumour: pale cytoplasm crossed by thin pink cell membranes, with nuclei of the four
classes of :data:`~histozoom.data.nuclei.records.CCRCC` (ids taken from the scheme):

* **G1** — small, round, dark nuclei; no nucleolus visible at 400x.
* **G2** — slightly larger, paler nuclei with a *small* nucleolus (radius ~0.3 µm,
  ~1.2 px): it stands out at 400x but is averaged away when the image is shrunk by
  ``low_mag_factor`` (4, i.e. the 100x view of CHR-Net) with an area (block) mean.
* **G3** — larger, vesicular nuclei with a *prominent* nucleolus (radius ~1 µm, ~4 px),
  still a clear dark spot at 100x.
* **endothelial** — thin elongated dark nuclei (aspect 2.8-4, eccentricity > 0.9) lying
  along a pink capillary wall.

Nuclei carry a chromatin texture (smooth noise with a ~1.25 µm correlation length) that
survives the ×4 shrink, so at 100x a G2 nucleolus is no stronger than G1 chromatin
(G2 looks like G1 at 100x and like G3 at 400x, the inter-class similarity of the paper).
About ``touching`` of the tumour nuclei are placed in overlapping/abutting pairs, so a
threshold of the image merges them; overlaps are resolved "later nucleus wins" in the
instance map. :func:`nucleolus_contrast` and :func:`visibility_report` measure the
visibility rule on generated tiles (written to ``synthetic.json`` by
:func:`write_synthetic_nuclei`).

Rendering is in optical density (hematoxylin + eosin, Beer-Lambert), with per-tile stain
jitter and sensor noise, like :mod:`histozoom.data.synthetic`. Everything is
deterministic given the ``numpy.random.Generator``; :func:`write_synthetic_nuclei` seeds
tile ``k`` with ``SeedSequence([seed, k])``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from ...atomic import write_json
from ...config_fields import DictConfig, check_fields
from ...errors import InputError
from ..synthetic import smooth_noise
from .folder import write_class_file, write_nuclei_sample
from .records import CCRCC, NucleiClassScheme, NucleiSample

__all__ = [
    "NucleusClassParams",
    "NucleiSynthConfig",
    "generate_sample",
    "downsample_mean",
    "nucleolus_contrast",
    "visibility_report",
    "write_synthetic_nuclei",
    "SPLIT_FRACTIONS",
]

SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
"""The paper's random 70/10/20 split."""

_H_VEC = np.array([0.95, 1.05, 0.42], np.float32)  # hematoxylin OD at density 1 (blue-purple)
_E_VEC = np.array([0.09, 0.46, 0.25], np.float32)  # eosin OD at density 1 (pink)


@dataclass(frozen=True)
class NucleusClassParams:
    """Appearance of one nucleus class (ranges are uniform ``(low, high)``).

    ``radius_um``: equivalent radius ``sqrt(a b)``; ``aspect``: ``a / b``; ``darkness``:
    hematoxylin density; ``nucleolus_um``: nucleolus radius (``None``: no nucleolus);
    ``nucleolus_od``: density added at the nucleolus; ``weight``: share of the nuclei.
    """

    name: str
    radius_um: tuple[float, float]
    aspect: tuple[float, float]
    darkness: tuple[float, float]
    nucleolus_um: tuple[float, float] | None = None
    nucleolus_od: float = 0.0
    weight: float = 0.25
    irregularity: float = 0.05


DEFAULT_CLASSES = (
    NucleusClassParams("G1", (2.7, 3.3), (1.0, 1.35), (0.95, 1.15), None, 0.0, 0.30),
    NucleusClassParams("G2", (3.0, 3.7), (1.0, 1.35), (0.80, 1.00), (0.25, 0.31), 0.30, 0.25),
    NucleusClassParams("G3", (3.8, 4.6), (1.0, 1.35), (0.65, 0.80), (0.95, 1.15), 0.80, 0.20),
    NucleusClassParams("endothelial", (2.3, 2.8), (2.8, 4.0), (1.05, 1.25), None, 0.0, 0.25, 0.02),
)


@dataclass(frozen=True)
class NucleiSynthConfig(DictConfig):
    """Configuration of the generator (lengths in µm unless named ``_px``).

    ``n_nuclei``: range of nuclei per tile (at the default size and mpp: a 64 µm field).
    ``touching``: probability that a tumour nucleus is placed overlapping a previous,
    unpaired tumour nucleus (centre distance 0.8-0.95 of the sum of their radii along
    the joining line). ``chromatin``: relative sd of the chromatin density texture,
    ``chromatin_um`` its correlation length. ``noise``: sensor noise (grey levels).
    ``to_dict`` / ``from_dict`` / ``replace``: :class:`~histozoom.config_fields.DictConfig`
    (``to_dict`` is what ``synthetic.json`` holds under ``"config"``).
    """

    size: int = 256
    mpp: float = 0.25
    low_mag_factor: int = 4
    n_nuclei: tuple[int, int] = (16, 26)
    touching: float = 0.4
    chromatin: float = 0.10
    chromatin_um: float = 1.25
    noise: float = 2.0
    classes: tuple[NucleusClassParams, ...] = DEFAULT_CLASSES
    scheme: NucleiClassScheme = CCRCC

    def __post_init__(self):
        # what to_dict writes (lists, dicts; as read back from JSON) becomes tuples and records again
        object.__setattr__(self, "n_nuclei", tuple(self.n_nuclei))
        object.__setattr__(self, "classes", tuple(_class_params(c) for c in self.classes))
        if isinstance(self.scheme, Mapping):
            object.__setattr__(self, "scheme", NucleiClassScheme.from_dict(self.scheme))
        names = [c.name for c in self.classes]
        missing = [n for n in names if n not in self.scheme.classes.names]
        if missing:
            raise ValueError(f"class params {missing} are not classes of scheme {self.scheme.name!r}")
        if self.size < 32 or self.size % self.low_mag_factor:
            raise ValueError(f"size must be >= 32 and a multiple of low_mag_factor, got {self.size}")

    def class_id(self, p: NucleusClassParams) -> int:
        return self.scheme.classes.id(p.name)

    def to_dict(self) -> dict:
        """:meth:`DictConfig.to_dict` with ``scheme`` in the class-file form
        (:meth:`NucleiClassScheme.to_dict`); :meth:`from_dict` reads it back."""
        d = super().to_dict()
        d["scheme"] = self.scheme.to_dict()
        return d


def _class_params(c: NucleusClassParams | Mapping) -> NucleusClassParams:
    """``c``, or the :class:`NucleusClassParams` of its dict form (ranges as lists in JSON)."""
    if isinstance(c, NucleusClassParams):
        return c
    check_fields(NucleusClassParams, c)
    return NucleusClassParams(**{k: tuple(v) if isinstance(v, list) else v for k, v in c.items()})


# ---------------------------------------------------------------------- geometry
@dataclass
class _Nucleus:
    cls: int
    p: NucleusClassParams
    cx: float
    cy: float
    a: float
    b: float
    theta: float
    irr: np.ndarray  # (4,): amplitudes c2, c3 and phases p2, p3
    darkness: float
    partner: int = -1

    def radius_towards(self, phi: float) -> float:
        """Radius of the (smooth) ellipse along direction ``phi``."""
        psi = phi - self.theta
        return self.a * self.b / math.hypot(self.b * math.cos(psi), self.a * math.sin(psi))


def _nucleus_box(n: _Nucleus) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)``: the pixel box (end exclusive, not clipped) that holds the mask of ``n``."""
    amp = float(np.abs(n.irr[:2]).sum())
    k = n.a * (1 + amp) + 2
    return int(math.floor(n.cy - k)), int(math.ceil(n.cy + k)) + 1, int(math.floor(n.cx - k)), int(math.ceil(n.cx + k)) + 1


def _canvas_box(y0: int, y1: int, x0: int, x1: int, shape: tuple[int, int],
                origin: tuple[int, int]) -> tuple[slice, slice] | None:
    """The part of the box ``[y0, y1) × [x0, x1)`` on a canvas of ``shape`` whose pixel ``(0, 0)``
    is pixel ``origin = (x, y)``, as canvas slices (``None`` when they do not meet)."""
    ox, oy = origin
    y0, y1, x0, x1 = max(y0, oy), min(y1, oy + shape[0]), max(x0, ox), min(x1, ox + shape[1])
    if y0 >= y1 or x0 >= x1:
        return None
    return slice(y0 - oy, y1 - oy), slice(x0 - ox, x1 - ox)


def _draw_nucleus(n: _Nucleus, shape: tuple[int, int], origin: tuple[int, int] = (0, 0),
                  frame: tuple[int, int] = (0, 0)) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """Canvas slices and the boolean mask of a nucleus (pixel centres at integers).

    The canvas of ``shape`` starts at pixel ``origin = (x, y)``; the outline is evaluated in
    coordinates relative to ``frame = (x, y)`` (an integer point fixed per nucleus), so a
    pixel's value does not depend on the canvas it is drawn on.
    """
    y0, y1, x0, x1 = _nucleus_box(n)
    sl = _canvas_box(y0, y1, x0, x1, shape, origin)
    if sl is None:
        return None
    (ys, xs), (ox, oy), (fx, fy) = sl, origin, frame
    yy, xx = np.mgrid[ys.start + oy - fy:ys.stop + oy - fy, xs.start + ox - fx:xs.stop + ox - fx].astype(np.float32)
    dx, dy = xx - (n.cx - fx), yy - (n.cy - fy)
    c, s = math.cos(n.theta), math.sin(n.theta)
    u, v = (dx * c + dy * s) / n.a, (-dx * s + dy * c) / n.b
    psi = np.arctan2(v, u)
    edge = 1 + n.irr[0] * np.cos(2 * psi + n.irr[2]) + n.irr[1] * np.cos(3 * psi + n.irr[3])
    mask = u * u + v * v <= edge * edge
    if not mask.any():
        return None
    return sl, mask


def _paint_nuclei(nuclei: Sequence[_Nucleus], shape: tuple[int, int], origin: tuple[int, int] = (0, 0),
                  frames: Sequence[tuple[int, int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Instance map (``nuclei[k]`` painted as ``k + 1``, later nuclei win) and the number of
    nuclei covering each pixel (uint8), on a canvas of ``shape`` starting at pixel ``origin``."""
    inst = np.zeros(shape, np.int32)
    cover = np.zeros(shape, np.uint8)
    for i, n in enumerate(nuclei, start=1):
        drawn = _draw_nucleus(n, shape, origin, (0, 0) if frames is None else frames[i - 1])
        if drawn is None:
            continue
        sl, m = drawn
        inst[sl][m] = i
        cover[sl] += m.astype(np.uint8)
    return inst, cover


def _new_nucleus(cfg: NucleiSynthConfig, p: NucleusClassParams, rng: np.random.Generator) -> _Nucleus:
    px = 1.0 / cfg.mpp
    r = rng.uniform(*p.radius_um) * px
    asp = rng.uniform(*p.aspect)
    irr = np.array([rng.uniform(0, p.irregularity), rng.uniform(0, p.irregularity * 0.6),
                    rng.uniform(0, 2 * math.pi), rng.uniform(0, 2 * math.pi)])
    return _Nucleus(cfg.class_id(p), p, 0.0, 0.0, r * math.sqrt(asp), r / math.sqrt(asp),
                    rng.uniform(0, math.pi), irr, rng.uniform(*p.darkness))


def _free(n: _Nucleus, placed: Sequence[_Nucleus], skip: int = -1, gap: float = 3.0) -> bool:
    for j, m in enumerate(placed):
        if j == skip:
            continue
        d = math.hypot(n.cx - m.cx, n.cy - m.cy)
        if d < n.a + m.a + gap:
            # exact enough: directional radii along the joining line
            phi = math.atan2(m.cy - n.cy, m.cx - n.cx)
            if d < n.radius_towards(phi) * 1.12 + m.radius_towards(phi + math.pi) * 1.12 + gap:
                return False
    return True


def _inside(n: _Nucleus, size: int) -> bool:
    """Centre inside the tile; elongated (endothelial-like) nuclei wholly inside."""
    m = n.a + 1 if n.a > 1.8 * n.b else 0.4 * n.b
    return m <= n.cx <= size - 1 - m and m <= n.cy <= size - 1 - m


def _tumour_ids(cfg: NucleiSynthConfig) -> set[int]:
    """Class ids of the tumour nuclei (G1-G3) in the scheme."""
    return {cfg.scheme.classes.id(n) for n in ("G1", "G2", "G3") if n in cfg.scheme.classes.names}


def _endothelial_id(cfg: NucleiSynthConfig) -> int | None:
    return cfg.scheme.classes.id("endothelial") if "endothelial" in cfg.scheme.classes.names else None


def _place_nuclei(cfg: NucleiSynthConfig, rng: np.random.Generator, picks: Iterable[int], placed: list[_Nucleus],
                  propose: Callable[[], tuple[float, float]], inside: Callable[[_Nucleus], bool],
                  first: int = 0) -> None:
    """Place one nucleus of each class-params index in ``picks``, appending to ``placed``.

    A tumour nucleus touches an unpaired tumour nucleus of ``placed[first:]`` with
    probability ``cfg.touching`` (12 tries), else it goes to the first of 150 positions from
    ``propose()`` where ``inside`` holds and it keeps clear of every nucleus in ``placed``
    (:func:`_free`); a nucleus with no such position is dropped. ``partner`` holds indices
    into ``placed``.
    """
    tumour = _tumour_ids(cfg)
    for pi in picks:
        n = _new_nucleus(cfg, cfg.classes[pi], rng)
        done = False
        if n.cls in tumour and rng.random() < cfg.touching:
            cand = [j for j in range(first, len(placed)) if placed[j].cls in tumour and placed[j].partner < 0]
            if cand:
                j = int(cand[rng.integers(len(cand))])
                m = placed[j]
                for _ in range(12):
                    phi = rng.uniform(0, 2 * math.pi)
                    d = (m.radius_towards(phi) + n.radius_towards(phi + math.pi)) * rng.uniform(0.8, 0.95)
                    n.cx, n.cy = m.cx + d * math.cos(phi), m.cy + d * math.sin(phi)
                    if inside(n) and _free(n, placed, skip=j):
                        n.partner, m.partner = j, len(placed)
                        done = True
                        break
        if not done:
            for _ in range(150):
                n.cx, n.cy = propose()
                if inside(n) and _free(n, placed):
                    done = True
                    break
        if done:
            placed.append(n)


def _place(cfg: NucleiSynthConfig, rng: np.random.Generator) -> list[_Nucleus]:
    size = cfg.size
    w = np.array([p.weight for p in cfg.classes], np.float64)
    n_target = int(rng.integers(cfg.n_nuclei[0], cfg.n_nuclei[1] + 1))
    picks = rng.choice(len(cfg.classes), n_target, p=w / w.sum())
    placed: list[_Nucleus] = []
    _place_nuclei(cfg, rng, picks, placed, lambda: (rng.uniform(0, size - 1), rng.uniform(0, size - 1)),
                  lambda n: _inside(n, size))
    return placed


# ---------------------------------------------------------------------- rendering (shared with the slides)
# The pieces of the nucleus and background model, used by :func:`generate_sample` and by
# :mod:`histozoom.data.nuclei.synthetic_slide`. Densities: hematoxylin ``hem`` and eosin
# ``eos`` per pixel (float32), turned into RGB by :func:`_expose`. Canvases start at pixel
# ``origin = (x, y)``; outlines are evaluated relative to ``frame = (x, y)``, an integer point
# fixed per object, so that a pixel's value does not depend on the canvas it is drawn on.
def _soft_disk(shape: tuple[int, int], cx: float, cy: float, r: float, origin: tuple[int, int] = (0, 0),
               frame: tuple[int, int] = (0, 0)) -> tuple[tuple[slice, slice], np.ndarray]:
    """Coverage (0..1) of a disk with a one-pixel soft edge, on its bounding box (canvas slices;
    empty where the disk misses the canvas)."""
    k = r + 2
    sl = _canvas_box(int(cy - k), int(cy + k) + 2, int(cx - k), int(cx + k) + 2, shape, origin)
    if sl is None:
        return (slice(0, 0), slice(0, 0)), np.zeros((0, 0), np.float32)
    (ys, xs), (ox, oy), (fx, fy) = sl, origin, frame
    yy, xx = np.mgrid[ys.start + oy - fy:ys.stop + oy - fy, xs.start + ox - fx:xs.stop + ox - fx].astype(np.float32)
    d = np.hypot(xx - (cx - fx), yy - (cy - fy))
    return sl, np.clip(r - d + 0.5, 0.0, 1.0)


def _segment_distance(xx: np.ndarray, yy: np.ndarray, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    d = p1 - p0
    t = np.clip(((xx - p0[0]) * d[0] + (yy - p0[1]) * d[1]) / max(float(d @ d), 1e-9), 0, 1)
    return np.hypot(xx - (p0[0] + t * d[0]), yy - (p0[1] + t * d[1]))


def _deep_point(mask: np.ndarray, min_depth: float, rng: np.random.Generator) -> tuple[float, float] | None:
    """A random pixel of ``mask`` at least ``min_depth`` from its outside (else the deepest one)."""
    edt = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    ys, xs = np.nonzero(edt >= min_depth)
    if ys.size == 0:
        if edt.max() < 1:
            return None
        ys, xs = np.nonzero(edt == edt.max())
    k = rng.integers(ys.size)
    return float(xs[k]), float(ys[k])


def _hematoxylin(inst: np.ndarray, cover: np.ndarray, dark: np.ndarray, chrom: np.ndarray, grain: np.ndarray,
                 chromatin: float) -> np.ndarray:
    """Nuclei (``dark[inst]``, ``dark[0] = 0``) with chromatin texture (``chrom``: smooth, ``grain``:
    white, both unit sd, relative sd ``chromatin``); pixels covered by two nuclei are darker."""
    hem = dark[inst] * (1 + chromatin * chrom + 0.25 * chromatin * grain)
    hem += 0.25 * (cover > 1)
    return hem


def _pick_nucleolus(n: _Nucleus, visible: np.ndarray, x0: int, y0: int, px: float,
                    rng: np.random.Generator) -> tuple[float, float, float] | None:
    """Nucleolus ``(x, y, r_px)`` of ``n`` placed deep enough in its ``visible`` pixels (a mask
    whose pixel ``(0, 0)`` is ``(x0, y0)``); ``None`` when it has no room."""
    r = rng.uniform(*n.p.nucleolus_um) * px
    pt = _deep_point(visible, r + 4.0, rng)
    if pt is None:
        return None
    return pt[0] + x0 + rng.uniform(-0.5, 0.5), pt[1] + y0 + rng.uniform(-0.5, 0.5), r


def _stamp_nucleolus(hem: np.ndarray, eos: np.ndarray, inst: np.ndarray, i: int, x: float, y: float, r: float,
                     od: float, origin: tuple[int, int] = (0, 0), frame: tuple[int, int] = (0, 0)) -> None:
    """Add a nucleolus of density ``od`` at ``(x, y)`` (radius ``r`` px) where instance ``i`` shows."""
    dsl, cov = _soft_disk(inst.shape, x, y, r, origin, frame)
    cov = cov * (inst[dsl] == i)
    hem[dsl] += 0.7 * od * cov
    eos[dsl] += 1.5 * od * cov


def _cytoplasm_level(rng: np.random.Generator) -> float:
    """Eosin density of the clear cytoplasm (one value per tile or slide)."""
    return 0.16 + 0.05 * rng.standard_normal()


def _cytoplasm(level: float, coarse: np.ndarray, fine: np.ndarray) -> np.ndarray:
    """Clear cytoplasm: ``level`` times a texture of unit-sd fields at 2 µm (``coarse``) and 0.5 µm (``fine``)."""
    return level * np.clip(1 + 0.5 * coarse + 0.25 * fine, 0.1, None)


def _voronoi_gap(seeds: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance to the second-nearest minus the nearest of ``seeds`` ``(n, 2)`` at ``points``
    ``(m, 2)`` (``(x, y)`` px): near 0 on the Voronoi edges (cell membranes), float32."""
    d, _ = cKDTree(seeds).query(points, k=2)
    return (d[:, 1] - d[:, 0]).astype(np.float32)


def _membrane(gap: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Eosin of the cell membranes at Voronoi ``gap`` (px), ``noise`` a unit-sd field (3 px)."""
    return 0.6 * np.clip(np.exp(-((gap / 1.6) ** 2)) * (1 + 0.3 * noise), 0, None)


def _capillary_params(n: _Nucleus, rng: np.random.Generator) -> tuple[float, np.integer]:
    """Half-length (px) of the capillary wall along an endothelial nucleus and its side (±1)."""
    return n.a + rng.uniform(0.8, 1.6) * n.a, rng.choice([-1, 1])


def _capillary_ends(n: _Nucleus, ext: float, side: np.integer,
                    frame: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """End points ``(x, y)`` (relative to ``frame``) of the capillary wall of ``n``: parallel to its
    long axis, ``b + 1.5`` px to one ``side``."""
    dvec = np.array([math.cos(n.theta), math.sin(n.theta)], np.float32)
    c = np.array([n.cx - frame[0], n.cy - frame[1]], np.float32)
    off = np.array([-dvec[1], dvec[0]], np.float32) * (n.b + 1.5) * side
    return c - ext * dvec + off, c + ext * dvec + off


def _capillary_wall(xx: np.ndarray, yy: np.ndarray, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Eosin of a capillary wall (Gaussian profile, 2 px) along the segment ``p0``-``p1``."""
    return 1.0 * np.exp(-((_segment_distance(xx, yy, p0, p1) / 2.0) ** 2))


def _stain_vectors(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Jittered hematoxylin and eosin optical densities (RGB at density 1)."""
    h_vec = _H_VEC * (1 + rng.normal(0, 0.05, 3)).astype(np.float32)
    e_vec = _E_VEC * (1 + rng.normal(0, 0.08, 3)).astype(np.float32)
    return h_vec, e_vec


def _optics(hem: np.ndarray, eos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Optical blur (0.6 px) and the hematoxylin floor of the section."""
    return ndimage.gaussian_filter(hem, 0.6) + 0.02, ndimage.gaussian_filter(eos, 0.6)


def _expose(hem: np.ndarray, eos: np.ndarray, h_vec: np.ndarray, e_vec: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Beer-Lambert RGB (uint8) of the densities plus sensor ``noise`` (grey levels, ``(..., 3)``)."""
    od = hem[..., None] * h_vec + eos[..., None] * e_vec
    rgb = 250.0 * np.exp(-od) + noise
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------- one tile
def generate_sample(cfg: NucleiSynthConfig, rng: np.random.Generator, sample_id: str) -> NucleiSample:
    """Render one tile.

    ``meta``: ``nucleoli`` (list of ``{"id", "class", "x", "y", "r_px"}`` in tile pixels),
    ``touching`` (pairs of ids placed to overlap/abut), ``low_mag_factor``.
    """
    size = cfg.size
    shape = (size, size)
    px = 1.0 / cfg.mpp
    nuclei = _place(cfg, rng)
    inst, cover = _paint_nuclei(nuclei, shape)
    present = np.unique(inst)
    present = present[present > 0]
    inst_class = {int(i): nuclei[i - 1].cls for i in present}

    # ---- hematoxylin: nuclei with chromatin texture; overlaps darker
    chrom = smooth_noise(rng, shape, cfg.chromatin_um * px)
    grain = rng.standard_normal(shape).astype(np.float32)
    dark = np.zeros(len(nuclei) + 1, np.float32)
    dark[1:] = [n.darkness for n in nuclei]
    hem = _hematoxylin(inst, cover, dark, chrom, grain, cfg.chromatin)
    eos = np.zeros(shape, np.float32)

    # ---- nucleoli (placed deep enough in the visible part of their nucleus)
    nucleoli = []
    objs = ndimage.find_objects(inst)
    for i in present:
        n = nuclei[i - 1]
        if n.p.nucleolus_um is None:
            continue
        sl = objs[i - 1]
        spot = _pick_nucleolus(n, inst[sl] == i, sl[1].start, sl[0].start, px, rng)
        if spot is None:
            continue
        x, y, r = spot
        _stamp_nucleolus(hem, eos, inst, i, x, y, r, n.p.nucleolus_od)
        nucleoli.append({"id": int(i), "class": int(n.cls), "x": float(x), "y": float(y), "r_px": float(r)})

    # ---- background: clear cytoplasm, cell membranes (Voronoi of tumour cells), capillaries
    fg = inst > 0
    near_fg = ndimage.binary_dilation(fg, iterations=1)
    level = _cytoplasm_level(rng)
    coarse = smooth_noise(rng, shape, 2.0 * px)
    eos += _cytoplasm(level, coarse, smooth_noise(rng, shape, 0.5 * px)) * ~fg
    endo_id = _endothelial_id(cfg)
    seeds = [(n.cx, n.cy) for n in nuclei if n.cls != endo_id]
    n_extra = int(rng.integers(3, 8))
    seeds += list(zip(rng.uniform(0, size, n_extra), rng.uniform(0, size, n_extra)))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if len(seeds) >= 2:
        gap = _voronoi_gap(np.array(seeds), np.column_stack([xx.ravel(), yy.ravel()])).reshape(shape)
        eos += _membrane(gap, smooth_noise(rng, shape, 3.0)) * ~near_fg
    for n in nuclei:
        if n.cls != endo_id:
            continue
        p0, p1 = _capillary_ends(n, *_capillary_params(n, rng))
        eos += _capillary_wall(xx, yy, p0, p1) * ~near_fg

    # ---- optics and colour
    hem, eos = _optics(hem, eos)
    h_vec, e_vec = _stain_vectors(rng)
    image = _expose(hem, eos, h_vec, e_vec, rng.normal(0, cfg.noise, (*shape, 3)).astype(np.float32))

    touching = sorted({tuple(sorted((i + 1, n.partner + 1))) for i, n in enumerate(nuclei) if n.partner >= 0})
    touching = [list(t) for t in touching if t[0] in inst_class and t[1] in inst_class]
    return NucleiSample(
        sample_id, image, inst, inst_class, cfg.scheme.classes, cfg.mpp, None,
        {"nucleoli": nucleoli, "touching": touching, "low_mag_factor": cfg.low_mag_factor},
    )


# ---------------------------------------------------------------------- the visibility rule
def downsample_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Area (block-mean) shrink by an integer ``factor`` (float32; edges cropped to a multiple).

    This is what a lower objective does to detail finer than its pixels, and the 100x
    view of CHR-Net (400x image at 1/``factor`` per side).
    """
    a = np.asarray(image, np.float32)
    if factor == 1:
        return a
    h, w = a.shape[0] // factor * factor, a.shape[1] // factor * factor
    a = a[:h, :w]
    return a.reshape(h // factor, factor, w // factor, factor, *a.shape[2:]).mean(axis=(1, 3))


def nucleolus_contrast(
    gray: np.ndarray, x: float, y: float, r_px: float, factor: int = 1, mask: np.ndarray | None = None
) -> float:
    """Local contrast of a dark spot of radius ``r_px`` at ``(x, y)`` (400x pixels), seen at 1/``factor``.

    The grey image is block-mean shrunk by ``factor``; with ``r = r_px / factor`` and the
    spot centre mapped to the shrunk grid, contrast = median of the ring
    ``r + 1 <= d <= r + 2.5`` (shrunk pixels; only pixels mostly inside ``mask`` if given)
    minus the darkest pixel within ``r + 0.5`` of the centre. Positive = a darker spot.
    """
    g = downsample_mean(gray, factor)
    xs, ys = (x + 0.5) / factor - 0.5, (y + 0.5) / factor - 0.5
    r = r_px / factor
    k = int(math.ceil(r + 3))
    y0, y1 = max(int(ys) - k, 0), min(int(ys) + k + 2, g.shape[0])
    x0, x1 = max(int(xs) - k, 0), min(int(xs) + k + 2, g.shape[1])
    yy, xx = np.mgrid[y0:y1, x0:x1]
    d = np.hypot(xx - xs, yy - ys)
    win = g[y0:y1, x0:x1]
    spot = d <= max(r + 0.5, 0.75)
    ring = (d >= r + 1) & (d <= r + 2.5)
    if mask is not None:
        ring &= downsample_mean(mask.astype(np.float32), factor)[y0:y1, x0:x1] >= 0.5
    if not spot.any() or not ring.any():
        return float("nan")
    return float(np.median(win[ring]) - win[spot].min())


def visibility_report(samples: Iterable[NucleiSample], factor: int = 4, null_per_nucleus: int = 2,
                      seed: int = 0, scheme: NucleiClassScheme = CCRCC) -> dict:
    """How visible the nucleoli are at 400x and at 1/``factor`` (100x).

    For every nucleolus in ``meta["nucleoli"]`` the :func:`nucleolus_contrast` at both
    scales; as reference ("null"), the same statistic with the same radius at random deep
    points of G1 nuclei (chromatin only). A spot is *visible* at a scale when its
    contrast exceeds the null's 95th percentile there. Returns, per class name with
    nucleoli, the share of visible nucleoli at ``"400x"`` and ``"100x"`` and the counts.
    """
    rng = np.random.default_rng(seed)
    g1 = scheme.classes.id("G1")
    spots: dict[int, list[tuple[float, float]]] = {}
    null: dict[int, list[tuple[float, float]]] = {}
    for s in samples:
        gray = s.image.astype(np.float32).mean(axis=2)
        objs = ndimage.find_objects(s.inst_map)
        g1_ids = [i for i, c in (s.inst_class or {}).items() if c == g1]
        for nu in s.meta.get("nucleoli", []):
            m = s.inst_map == nu["id"]
            spots.setdefault(nu["class"], []).append(
                (nucleolus_contrast(gray, nu["x"], nu["y"], nu["r_px"], 1, m),
                 nucleolus_contrast(gray, nu["x"], nu["y"], nu["r_px"], factor, m))
            )
            # null points with this radius in G1 nuclei of the same tile
            for _ in range(null_per_nucleus if g1_ids else 0):
                j = g1_ids[rng.integers(len(g1_ids))]
                sl = objs[j - 1]
                pt = _deep_point(s.inst_map[sl] == j, nu["r_px"] + 4.0, rng)
                if pt is None:
                    continue
                x, y = pt[0] + sl[1].start, pt[1] + sl[0].start
                mj = s.inst_map == j
                null.setdefault(nu["class"], []).append(
                    (nucleolus_contrast(gray, x, y, nu["r_px"], 1, mj),
                     nucleolus_contrast(gray, x, y, nu["r_px"], factor, mj))
                )
    out: dict = {}
    for c, vals in sorted(spots.items()):
        v = np.array(vals, np.float64)
        nv = np.array(null.get(c, []), np.float64).reshape(-1, 2)
        entry = {"n": len(v), "n_null": len(nv)}
        for k, name in enumerate(("400x", "100x")):
            thr = float(np.nanpercentile(nv[:, k], 95)) if len(nv) else float("nan")
            entry[name] = float(np.nanmean(v[:, k] > thr)) if len(nv) else float("nan")
            entry[f"threshold_{name}"] = thr
            entry[f"median_contrast_{name}"] = float(np.nanmedian(v[:, k]))
        out[scheme.classes.name(c)] = entry
    return out


# ---------------------------------------------------------------------- datasets
def _split_sizes(n: int, fractions: Mapping[str, float]) -> dict[str, int]:
    names = list(fractions)
    tot = sum(fractions.values())
    sizes = {k: int(math.floor(n * fractions[k] / tot)) for k in names}
    rest = n - sum(sizes.values())
    for k in sorted(names, key=lambda k: -(n * fractions[k] / tot - sizes[k]))[:rest]:
        sizes[k] += 1
    return sizes


def write_synthetic_nuclei(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    cfg: NucleiSynthConfig | None = None,
    *,
    splits: Mapping[str, float] = SPLIT_FRACTIONS,
    overwrite: bool = False,
) -> Path:
    """Write ``n`` tiles in the plain folder layout, split ``train/val/test`` (70/10/20).

    ``ROOT/classes.json`` holds the scheme (with its cross-category merges) and the mpp;
    ``ROOT/SPLIT/images/NNNN.png``, ``labels/NNNN.npy``, ``classes/NNNN.json``;
    ``ROOT/synthetic.json`` the config, the tiles per split, class counts and the
    :func:`visibility_report` of the first 50 tiles. Tile ``k`` (ids numbered across splits in this order)
    depends only on ``(seed, k)``.
    """
    cfg = cfg or NucleiSynthConfig()
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise InputError(root, "exists and is not a directory")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise InputError(root, "directory exists and is not empty (pass overwrite=True)")
    sizes = _split_sizes(n, splits)
    width = max(4, len(str(n)))
    write_class_file(root / "classes.json", cfg.scheme, cfg.mpp)
    k = 0
    report: dict = {"config": cfg.to_dict(), "seed": seed, "splits": {}}
    probe: list[NucleiSample] = []  # the first 50 tiles, for the visibility report
    for split, m in sizes.items():
        counts: dict[str, int] = {name: 0 for name in cfg.scheme.classes.names}
        ids = []
        for _ in range(m):
            s = generate_sample(cfg, np.random.default_rng(np.random.SeedSequence([int(seed), k])), f"{k:0{width}d}")
            write_nuclei_sample(root / split, s)
            for c in s.inst_class.values():
                counts[cfg.scheme.classes.name(c)] += 1
            ids.append(s.id)
            if len(probe) < 50:
                probe.append(s)
            k += 1
        report["splits"][split] = {"ids": ids, "class_counts": counts}
    report["visibility"] = visibility_report(probe, cfg.low_mag_factor, scheme=cfg.scheme)
    write_json(root / "synthetic.json", report)
    return root

