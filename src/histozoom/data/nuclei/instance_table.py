"""Nucleus instances as rows of a table: each with its exact mask (slides, ground truth).

A whole slide's instances do not fit one instance map, so both the predicted nuclei of
``histozoom nuclei slide predict`` (``nuclei.parquet``) and the ground truth of a
synthetic nuclei slide (``OUT.nuclei.parquet``) are tables with one row per nucleus that
keep its mask losslessly:

* ``bbox_x0``, ``bbox_y0`` (float64): level-0 top-left *edge* of the mask's box (pixel
  ``(r, c)`` spans ``[c, c + 1)``); ``bbox_w``, ``bbox_h`` (int32): the box in mask px;
* ``mask`` (binary): ``np.packbits`` of the ``bbox_h × bbox_w`` boolean mask, row-major,
  big bit order; mask pixel ``(r, c)`` covers level-0 ``[x0 + c·s, x0 + (c+1)·s) × …``
  with ``s = mask_scale`` (level-0 px per mask px; 1 when masks are at level 0), stored in
  the Parquet schema metadata (``histozoom.mask_scale``);
* ``x``, ``y`` (float64): centroid in level-0 pixel-centre coordinates (the mean of the
  mask pixels' centres); ``area_px`` (int64, mask px) and ``area_um2``.

:func:`instance_rows` makes these columns from an instance map, :func:`decode_mask` and
:func:`paste` turn rows back into masks, :func:`write_table` / :func:`read_table` store them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ...errors import InputError

__all__ = ["MASK_COLUMNS", "decode_mask", "encode_mask", "instance_rows", "paste", "read_table", "write_table",
           "mask_scale_of"]

MASK_COLUMNS = ("bbox_x0", "bbox_y0", "bbox_w", "bbox_h", "mask")
SCALE_KEY = b"histozoom.mask_scale"


def encode_mask(mask: np.ndarray) -> bytes:
    """A 2-D boolean mask as packed bits (row-major, big bit order)."""
    return np.packbits(np.asarray(mask, bool).ravel()).tobytes()


def decode_mask(data: bytes, h: int, w: int) -> np.ndarray:
    """The ``(h, w)`` boolean mask of :func:`encode_mask`."""
    bits = np.unpackbits(np.frombuffer(data, np.uint8), count=int(h) * int(w))
    return bits.reshape(int(h), int(w)).astype(bool)


def instance_rows(inst_map: np.ndarray, origin: tuple[float, float] = (0.0, 0.0), scale: float = 1.0,
                  ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Columns ``id``, ``x``, ``y``, ``area_px`` and :data:`MASK_COLUMNS` of the instances
    of ``inst_map`` (ids > 0; ``ids`` restricts and orders them, default all in ascending
    order). Map pixel ``(r, c)`` covers level-0 ``[ox + c·s, ox + (c+1)·s)`` (``origin`` =
    ``(ox, oy)``, ``s`` = ``scale``); centroids are level-0 pixel centres."""
    from scipy import ndimage

    inst = np.asarray(inst_map)
    if inst.ndim != 2 or not np.issubdtype(inst.dtype, np.integer):
        raise InputError(None, f"instance map must be a 2-D integer array, got shape {inst.shape} dtype {inst.dtype}")
    objs = ndimage.find_objects(inst)
    if ids is None:
        ids = np.array([i + 1 for i, sl in enumerate(objs) if sl is not None], np.int64)
    ids = np.asarray(ids, np.int64)
    n = len(ids)
    out = {"id": ids, "x": np.zeros(n), "y": np.zeros(n), "area_px": np.zeros(n, np.int64),
           "bbox_x0": np.zeros(n), "bbox_y0": np.zeros(n), "bbox_w": np.zeros(n, np.int32),
           "bbox_h": np.zeros(n, np.int32), "mask": np.empty(n, object)}
    ox, oy, s = float(origin[0]), float(origin[1]), float(scale)
    for k, i in enumerate(ids):
        sl = objs[i - 1] if 0 < i <= len(objs) else None
        if sl is None:
            raise InputError(None, f"instance {int(i)} is not in the map")
        m = inst[sl] == i
        rr, cc = np.nonzero(m)
        r0, c0 = sl[0].start, sl[1].start
        out["x"][k] = ox + (c0 + cc.mean() + 0.5) * s - 0.5
        out["y"][k] = oy + (r0 + rr.mean() + 0.5) * s - 0.5
        out["area_px"][k] = len(rr)
        out["bbox_x0"][k], out["bbox_y0"][k] = ox + c0 * s, oy + r0 * s
        out["bbox_h"][k], out["bbox_w"][k] = m.shape
        out["mask"][k] = encode_mask(m)
    return out


def paste(canvas: np.ndarray, value: int, x0: float, y0: float, w: int, h: int, data: bytes,
          origin: tuple[int, int] = (0, 0)) -> None:
    """Write ``value`` where a row's mask (level-0 masks, ``mask_scale`` 1) is set into
    ``canvas``, whose pixel ``(0, 0)`` is level-0 pixel ``origin`` = ``(x, y)`` (clipped)."""
    m = decode_mask(data, h, w)
    c0, r0 = int(round(x0)) - origin[0], int(round(y0)) - origin[1]
    H, W = canvas.shape[:2]
    a0, b0 = max(r0, 0), max(c0, 0)
    a1, b1 = min(r0 + h, H), min(c0 + w, W)
    if a1 <= a0 or b1 <= b0:
        return
    sub = m[a0 - r0:a1 - r0, b0 - c0:b1 - c0]
    canvas[a0:a1, b0:b1][sub] = value


def write_table(path: str | Path, columns: Mapping[str, np.ndarray], mask_scale: float = 1.0,
                types: Mapping[str, object] | None = None, metadata: Mapping[str, str] | None = None) -> None:
    """A Parquet file of ``columns`` (atomically); ``types``: pyarrow types by column (the
    rest inferred); ``mask`` is stored as binary and ``mask_scale`` in the schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ...atomic import atomic_path

    types = dict(types or {})
    arrays = {}
    for name, v in columns.items():
        if name == "mask":
            arrays[name] = pa.array(list(v), pa.binary())
        elif name in types:
            arrays[name] = pa.array(v, types[name])
        else:
            arrays[name] = pa.array(v)
    meta = {SCALE_KEY: repr(float(mask_scale)).encode()}
    meta.update({k.encode(): str(v).encode() for k, v in (metadata or {}).items()})
    table = pa.table(arrays).replace_schema_metadata(meta)
    with atomic_path(Path(path)) as tmp:
        pq.write_table(table, tmp, row_group_size=1 << 16)


def mask_scale_of(path: str | Path) -> float:
    """The ``mask_scale`` of a table written by :func:`write_table` (1.0 when absent)."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return float(meta.get(SCALE_KEY, b"1.0"))


def read_table(path: str | Path, columns: list[str] | None = None) -> dict[str, np.ndarray]:
    """The columns of an instance table as NumPy arrays (``mask`` as an object array of bytes)."""
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        t = pq.read_table(path, columns=columns)
    except (OSError, ValueError) as e:
        raise InputError(path, f"not a readable Parquet table: {e}") from e
    missing = [c for c in (columns or ()) if c not in t.column_names]
    if missing:
        raise InputError(path, f"missing columns {missing}")
    return {name: t.column(name).to_numpy(zero_copy_only=False) for name in t.column_names}
