"""Strict field checks shared by the JSON-saved config dataclasses."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable


def check_fields(cls_or_obj: Any, keys: Iterable[str]) -> None:
    """Raise ``ValueError`` naming unknown ``keys`` and the known fields of the dataclass."""
    names = {f.name for f in dataclasses.fields(cls_or_obj)}
    unknown = sorted(set(keys) - names)
    if unknown:
        cls = cls_or_obj if isinstance(cls_or_obj, type) else type(cls_or_obj)
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(names)}")
