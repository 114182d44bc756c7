"""Cells of one whole slide as a point set: a slide run's ``cells.parquet`` / ``cells.csv``,
or a ground-truth CSV such as ``histozoom synth slide`` writes (``x,y,class``).

Points are level-0 pixel centres of the slide, so the whole slide is one "image"
(index 0). Columns: ``x``, ``y``; the class in ``class_id`` or ``class``; the confidence
in ``probability`` or ``prob`` (1 when absent). The slide's µm/px comes from the sidecar
file beside it — ``summary.json`` of a slide run's folder, or ``NAME.slide.json`` beside
``NAME.cells.csv`` — so the hit radius is 3 µm at the slide's resolution; its level-0
size bounds the coordinates.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..pair import ClassSet, Points

__all__ = ["SLIDE_TABLE_EXTS", "read_slide_table", "slide_sidecar"]

SLIDE_TABLE_EXTS = (".parquet", ".csv")


def slide_sidecar(path: Path) -> dict:
    """``{"mpp", "size"}`` from the file describing the slide of a cells table (``{}`` if none)."""
    name = path.name
    candidates = [path.parent / "summary.json"]
    if name.endswith(".cells.csv"):
        candidates.insert(0, path.parent / (name[: -len(".cells.csv")] + ".slide.json"))
    for c in candidates:
        if c.is_file():
            try:
                d = json.loads(c.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise InputError(c, f"cannot read the slide description ({e})") from None
            size = d.get("level0_size") or ([d["width_px"], d["height_px"]] if "width_px" in d else None)
            return {"mpp": float(d["mpp"]) if "mpp" in d else None, "size": tuple(int(v) for v in size) if size else None}
    return {}


def _column(cols: dict, path: Path, *names: str, required: bool = True) -> np.ndarray | None:
    for n in names:
        if n in cols:
            return cols[n]
    if required:
        raise InputError(path, f"no column {' or '.join(repr(n) for n in names)} (has {sorted(cols)})")
    return None


def read_slide_table(path: str | Path, classes: ClassSet | None) -> tuple[Points, dict]:
    """The cells of a slide table and its sidecar description (see the module docstring)."""
    import pyarrow as pa

    path = Path(path)
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        else:
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(path, f"cannot read the cells table ({e})") from None
    cols = {n: table.column(n).to_numpy(zero_copy_only=False) for n in table.column_names}
    try:
        x = np.asarray(_column(cols, path, "x"), dtype=np.float64)
        y = np.asarray(_column(cols, path, "y"), dtype=np.float64)
        cls = np.asarray(_column(cols, path, "class_id", "class"), dtype=np.int64)
        prob = _column(cols, path, "probability", "prob", required=False)
        prob = np.ones(len(x)) if prob is None else np.asarray(prob, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(path, f"non-numeric cell columns ({e})") from None
    if not (np.isfinite(x).all() and np.isfinite(y).all() and np.isfinite(prob).all()):
        raise InputError(path, "non-finite coordinates or probabilities")
    if classes is not None and len(cls):
        bad = sorted(set(np.unique(cls).tolist()) - set(classes.ids))
        if bad:
            raise InputError(path, f"class id(s) {bad} not in {list(classes.ids)}")
    return Points(np.column_stack([x, y]), cls, np.clip(prob, 0, 1)), slide_sidecar(path)
