"""Training targets of CHR-Net from a nucleus instance map and its classes.

* **Binary map**: 1 on nucleus pixels, 0 on background (W-Net stage 1).
* **Distance map** (DIST, Naylor et al. 2019; W-Net stage 2): for each nucleus, every
  pixel's Euclidean distance to the nearest pixel *outside that nucleus* (background or
  another nucleus; outside the image counts as outside), divided by the nucleus's own
  maximum, so each nucleus peaks at exactly 1; background is 0. Values are in (0, 1] on
  nuclei (pixel distances are >= 1), a one-pixel nucleus is 1.0. Touching nuclei each
  get their own peak, unlike a distance transform of the union of all nuclei.
  Computed per nucleus on its bounding box (``scipy.ndimage.find_objects``) padded by one
  pixel, which gives the same distances as a whole-image transform of that nucleus.
* **Class map**: each nucleus's pixels carry its class id, background 0
  (:func:`~histozoom.data.nuclei.records.class_map`).
* **Cross-category maps**: the class map with groups of classes merged
  (:class:`~histozoom.data.nuclei.records.ClassMerge`), one per merge of the scheme; for
  ccRCC task 1 = (bg, G1∪G2, G3, endothelial) and task 2 = (bg, G1, G2∪G3, endothelial).
  :func:`merge_classes` takes any ``{class: merged class}`` mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ...errors import InputError
from .records import NucleiClassScheme, NucleiSample, check_instance_map, class_map, relabel_dense

__all__ = [
    "NucleiTargets",
    "binary_map",
    "distance_map",
    "merge_classes",
    "cross_category_maps",
    "nuclei_targets",
]


def binary_map(inst: np.ndarray) -> np.ndarray:
    """``(H, W)`` uint8: 1 where ``inst > 0``."""
    return (np.asarray(inst) > 0).astype(np.uint8)


def distance_map(inst: np.ndarray) -> np.ndarray:
    """The DIST distance map ``(H, W)`` float32 (definition: module docstring).

    An id made of several pieces is one nucleus: its pieces share one normalisation.
    """
    inst = check_instance_map(inst, None)
    out = np.zeros(inst.shape, np.float32)
    ids, dense = relabel_dense(inst)
    if ids.size == 0:
        return out
    for k, sl in enumerate(ndimage.find_objects(dense, max_label=ids.size), start=1):
        if sl is None:
            continue
        mask = dense[sl] == k
        d = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        vals = d[mask]
        out[sl][mask] = (vals / vals.max()).astype(np.float32)
    return out


def merge_classes(labels, mapping: Mapping[int, int], *, keep: tuple[int, ...] = (0,)):
    """Relabel classes through ``mapping`` (``{class: merged class}``).

    ``labels`` is a class map (array, any shape) or a dict ``{instance id: class}``; the
    result has the same form. Values in ``keep`` (background 0; add an ignore value such
    as 255 if the map has one) stay as they are; any other value missing from
    ``mapping`` is an error.
    """
    m = {int(k): int(v) for k, v in mapping.items()}
    for v in keep:
        m.setdefault(int(v), int(v))
    if isinstance(labels, Mapping):
        missing = sorted({int(c) for c in labels.values()} - set(m))
        if missing:
            raise InputError(None, f"class(es) {missing} have no entry in the merge mapping {mapping}")
        return {int(i): m[int(c)] for i, c in labels.items()}
    a = np.asarray(labels)
    if not np.issubdtype(a.dtype, np.integer):
        raise InputError(None, f"class map must hold integers, got dtype {a.dtype}")
    vals, inv = np.unique(a, return_inverse=True)
    missing = sorted(set(vals.tolist()) - set(m))
    if missing:
        raise InputError(None, f"class(es) {missing} have no entry in the merge mapping {mapping}")
    out_dtype = a.dtype if max(m.values(), default=0) <= np.iinfo(a.dtype).max else np.int32
    return np.array([m[int(v)] for v in vals], out_dtype)[inv.reshape(a.shape)]


def cross_category_maps(cmap: np.ndarray, scheme: NucleiClassScheme) -> dict[str, np.ndarray]:
    """One merged class map per merge of ``scheme`` (``{merge name: map}``)."""
    return {m.name: merge_classes(cmap, m.mapping) for m in scheme.merges}


@dataclass
class NucleiTargets:
    """All CHR-Net targets of one sample (arrays ``(H, W)``).

    ``classes`` and ``tasks`` are ``None`` / empty for samples without classes.
    """

    binary: np.ndarray
    distance: np.ndarray
    classes: np.ndarray | None = None
    tasks: dict[str, np.ndarray] = field(default_factory=dict)


def nuclei_targets(sample: NucleiSample, scheme: NucleiClassScheme | None = None) -> NucleiTargets:
    """Binary, distance, class and cross-category maps of ``sample``.

    ``scheme`` supplies the merges; its classes must contain the sample's class ids.
    """
    binary = binary_map(sample.inst_map)
    dist = distance_map(sample.inst_map)
    if sample.inst_class is None:
        return NucleiTargets(binary, dist)
    cmap = class_map(sample.inst_map, sample.inst_class)
    tasks: dict[str, np.ndarray] = {}
    if scheme is not None:
        bad = sorted({c for c in sample.inst_class.values() if c not in scheme.classes.ids})
        if bad:
            raise InputError(sample.source, f"class id(s) {bad} not in scheme {scheme.name!r}")
        tasks = cross_category_maps(cmap, scheme)
    return NucleiTargets(binary, dist, cmap, tasks)
