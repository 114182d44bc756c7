"""Plain-text tables for the terminal."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def _cell(v: Any, digits: int) -> str:
    if v is None:
        return "-"
    if isinstance(v, (float, np.floating)):
        return "-" if math.isnan(v) else f"{float(v):.{digits}f}"
    return str(v)


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str], title: str | None = None, digits: int = 4) -> str:
    """Render rows as an aligned text table; floats get ``digits`` decimals, and an
    undefined value (``None`` or NaN) shows as ``-``."""
    text = [[str(h) for h in headers]] + [[_cell(v, digits) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in text) for i in range(len(headers))]
    lines = []
    if title:
        lines.append(title)

    def fmt(r: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))

    lines.append(fmt(text[0]))
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(fmt(r) for r in text[1:])
    return "\n".join(lines)
