"""CHR-Net post-processing: marker-controlled watershed and per-nucleus classification.

From the predicted binary (foreground) map and distance map, the instance map is made
by a marker-controlled watershed (CHR-Net §2.3, "the same strategy of [3]", Naylor et al.
2019): the markers are the regional maxima of the predicted distance map inside the
predicted nuclei, taken as h-maxima (maxima whose dynamic is at least ``h``, which drops
the shallow maxima that noise in a predicted map creates), and the watershed of
``-distance`` restricted to the mask splits touching nuclei between them. Thresholding
the distance map (``marker_mode="threshold"``) is kept as an option.

Each instance's class is the majority vote of the per-pixel class map over its pixels
(:func:`histozoom.data.nuclei.records.instance_classes`: background 0 loses to any class,
ties go to the smaller class id); its probability is the vote share of that class.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from ..data.nuclei.records import instance_classes
from ..errors import InputError
from ..metrics.instances import relabel_instances
from ..pair import ClassSet

__all__ = ["WatershedConfig", "instances_from_maps", "classify_instances", "nucleus_table"]


@dataclass(frozen=True)
class WatershedConfig:
    """Settings of :func:`instances_from_maps` (lengths and sizes in pixels).

    ``fg_threshold``: foreground is ``binary_prob > fg_threshold``. ``marker_mode``:

    * ``"h_maxima"`` (default, the paper's rule): the regional maxima of the distance map
      inside the foreground whose dynamic (height above the highest saddle that leads to a
      higher maximum) is at least ``h``; ``h`` is in the distance map's units (the DIST
      target peaks at 1 in every nucleus);
    * ``"threshold"``: each connected region ``{distance >= marker_threshold}`` inside the
      foreground is one marker (robust on plateaus and elongated nuclei);
    * ``"local_max"``: local maxima of the distance map with value ``>= marker_threshold``
      at least ``min_marker_distance`` px apart (``skimage.feature.peak_local_max``).

    ``min_size``: instances with fewer pixels are removed. ``connectivity``: of the
    foreground components (1 = 4-neighbours, 2 = 8). A foreground component that gets no
    marker is kept as one instance (marker at its distance maximum).
    """

    fg_threshold: float = 0.5
    marker_threshold: float = 0.5
    marker_mode: Literal["h_maxima", "threshold", "local_max"] = "h_maxima"
    min_marker_distance: int = 3
    h: float = 0.1
    min_size: int = 10
    connectivity: int = 1

    def __post_init__(self):
        if self.marker_mode not in ("threshold", "local_max", "h_maxima"):
            raise ValueError(f"marker_mode must be 'threshold', 'local_max' or 'h_maxima', got {self.marker_mode!r}")
        if self.min_marker_distance < 1:
            raise ValueError(f"min_marker_distance must be >= 1, got {self.min_marker_distance}")
        if self.min_size < 0:
            raise ValueError(f"min_size must be >= 0, got {self.min_size}")
        if self.h <= 0:
            raise ValueError(f"h must be > 0, got {self.h}")
        if self.connectivity not in (1, 2):
            raise ValueError(f"connectivity must be 1 or 2, got {self.connectivity}")


def _as_map(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise InputError(None, f"{name}: must be 2-D (H, W), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise InputError(None, f"{name}: contains NaN or inf")
    return a


def _markers(distance: np.ndarray, mask: np.ndarray, cfg: WatershedConfig) -> np.ndarray:
    from skimage.feature import peak_local_max
    from skimage.measure import label
    from skimage.morphology import h_maxima

    d = np.where(mask, distance, distance.min() - 1.0 if distance.size else 0.0)
    if cfg.marker_mode == "threshold":
        peaks = mask & (distance >= cfg.marker_threshold)
    elif cfg.marker_mode == "h_maxima":
        peaks = h_maxima(d, cfg.h).astype(bool) & mask
    else:
        comp = label(mask, connectivity=cfg.connectivity)
        coords = peak_local_max(
            d,
            min_distance=cfg.min_marker_distance,
            threshold_abs=cfg.marker_threshold,
            labels=comp,
            exclude_border=False,
        )
        peaks = np.zeros(mask.shape, bool)
        peaks[tuple(coords.T)] = True
        peaks &= mask
    markers = label(peaks, connectivity=cfg.connectivity if cfg.marker_mode == "threshold" else 2)
    # a foreground component without any marker still gets one (at its distance maximum),
    # so that it is kept as an instance instead of vanishing
    comp = label(mask, connectivity=cfg.connectivity)
    n_comp = int(comp.max())
    if n_comp:
        has = np.zeros(n_comp + 1, bool)
        has[comp[markers > 0]] = True
        missing = np.flatnonzero(~has[1:]) + 1
        if missing.size:
            pos = ndimage.maximum_position(d, comp, missing)
            nxt = int(markers.max())
            for k, p in enumerate(pos, start=1):
                markers[p] = nxt + k
    return markers


def instances_from_maps(binary_prob, distance, cfg: WatershedConfig | None = None) -> np.ndarray:
    """Instance map ``(H, W)`` int32 (ids ``1..n`` in raster order, 0 = background).

    ``binary_prob``: foreground probability; ``distance``: predicted distance map (larger
    towards nucleus centres, e.g. normalised to 1 at each centre), or ``None`` for a model
    without one (CHR-Net's SHR/MHR ablations, the 5-class U-Net baseline): then each
    connected foreground component is one instance.
    """
    from skimage.segmentation import watershed

    cfg = cfg or WatershedConfig()
    p = _as_map(binary_prob, "binary_prob")
    mask = p > cfg.fg_threshold
    conn = ndimage.generate_binary_structure(2, cfg.connectivity)
    if distance is None:
        inst = ndimage.label(mask, structure=conn)[0]
    else:
        d = _as_map(distance, "distance")
        if p.shape != d.shape:
            raise InputError(None, f"binary_prob {p.shape} and distance {d.shape} differ in shape")
        if not mask.any():
            return np.zeros(p.shape, np.int32)
        inst = watershed(-d, markers=_markers(d, mask, cfg), mask=mask, connectivity=conn)
    if cfg.min_size > 1 and inst.max() > 0:
        sizes = np.bincount(inst.ravel())
        small = sizes < cfg.min_size
        small[0] = False
        inst = np.where(small[inst], 0, inst)
    return relabel_instances(inst.astype(np.int32))


def _class_map(class_pred, shape: tuple[int, ...], classes: ClassSet | None) -> np.ndarray:
    c = np.asarray(class_pred)
    if c.ndim == 3:
        if c.shape[1:] != shape:
            raise InputError(None, f"class_prob {c.shape} does not match the instance map {shape}")
        idx = np.argmax(c, axis=0)
        if classes is None:
            return idx.astype(np.int64)
        if c.shape[0] != len(classes) + 1:
            raise InputError(
                None, f"class_prob has {c.shape[0]} channels, expected {len(classes) + 1} (background + {len(classes)})"
            )
        lut = np.array((0,) + tuple(classes.ids), np.int64)
        return lut[idx]
    if c.ndim == 2:
        if c.shape != shape:
            raise InputError(None, f"class_map {c.shape} does not match the instance map {shape}")
        if not (np.issubdtype(c.dtype, np.integer) or c.dtype == bool):
            raise InputError(None, f"class_map must have an integer dtype, got {c.dtype}")
        if classes is not None:
            bad = ~classes.valid(c, allow_background=True)
            if bad.any():
                raise InputError(None, f"class_map has values that are not class ids: {sorted(np.unique(c[bad]).tolist())[:10]}")
        return c.astype(np.int64)
    raise InputError(None, f"class prediction must be (C+1, H, W) or (H, W), got shape {c.shape}")


def classify_instances(inst_map, class_pred, classes: ClassSet | None = None) -> dict[int, tuple[int, float]]:
    """``{id: (class_id, probability)}`` by majority vote of the per-pixel class.

    ``class_pred`` is either ``(C+1, H, W)`` class probabilities / logits (channel 0 =
    background, channel ``k`` = ``classes.ids[k-1]``; without ``classes`` the channel
    index is the class id) or an ``(H, W)`` integer class map. Votes are counted over all
    the instance's pixels; background (0) loses to any class. ``probability`` is the share
    of the instance's pixels voting for the chosen class (an instance whose pixels are all
    background gets class 0 with the share of background votes, i.e. 1.0).
    """
    inst = np.asarray(inst_map)
    if inst.ndim != 2:
        raise InputError(None, f"inst_map must be 2-D (H, W), got shape {inst.shape}")
    cmap = _class_map(class_pred, inst.shape, classes)
    votes = instance_classes(inst, cmap)
    if not votes:
        return {}
    ids = np.fromiter(votes.keys(), np.int64)
    chosen = np.fromiter(votes.values(), np.int64)
    flat = inst.ravel()
    fg = flat > 0
    areas = ndimage.sum_labels(np.ones(fg.sum()), flat[fg], ids)
    lut = np.zeros(int(flat.max()) + 1, np.int64)
    lut[ids] = chosen
    agree = (cmap.ravel()[fg] == lut[flat[fg]]).astype(np.float64)
    hits = ndimage.sum_labels(agree, flat[fg], ids)
    return {int(i): (int(c), float(h / a)) for i, c, h, a in zip(ids, chosen, hits, areas)}


def nucleus_table(inst_map, classes_dict: Mapping[int, tuple[int, float]] | None = None) -> list[dict]:
    """One row per instance (ascending id): ``id, centroid_x, centroid_y, bbox (x0, y0,
    x1, y1; x1/y1 exclusive), area, class, probability`` (class/probability ``None`` when
    the instance is missing from ``classes_dict``)."""
    from skimage.measure import regionprops

    inst = np.asarray(inst_map)
    if inst.ndim != 2 or not (np.issubdtype(inst.dtype, np.integer)):
        raise InputError(None, f"inst_map must be a 2-D integer map, got shape {inst.shape} dtype {inst.dtype}")
    classes_dict = classes_dict or {}
    rows = []
    for r in regionprops(inst.astype(np.int32)):
        cy, cx = r.centroid
        y0, x0, y1, x1 = r.bbox
        cls, prob = classes_dict.get(int(r.label), (None, None))
        rows.append(
            {
                "id": int(r.label),
                "centroid_x": float(cx),
                "centroid_y": float(cy),
                "bbox": (int(x0), int(y0), int(x1), int(y1)),
                "area": int(r.area),
                "class": None if cls is None else int(cls),
                "probability": None if prob is None else float(prob),
            }
        )
    return rows
