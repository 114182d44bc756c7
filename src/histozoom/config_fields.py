"""Strict field checks and dict round trip shared by the JSON-saved config dataclasses."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import ConfigError


def check_fields(cls_or_obj: Any, keys: Iterable[str]) -> None:
    """Raise ``ValueError`` naming unknown ``keys`` and the known fields of the dataclass."""
    names = {f.name for f in dataclasses.fields(cls_or_obj)}
    unknown = sorted(set(keys) - names)
    if unknown:
        cls = cls_or_obj if isinstance(cls_or_obj, type) else type(cls_or_obj)
        raise ConfigError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(names)}")


class DictConfig:
    """Mixin for config dataclasses: ``to_dict`` (``dataclasses.asdict``; tuples become
    lists in JSON), ``from_dict`` and ``replace`` that reject unknown fields."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        check_fields(cls, d)
        return cls(**dict(d))

    def replace(self, **changes: Any):
        """A copy with ``changes``; an unknown field raises ``ValueError`` listing the fields."""
        check_fields(self, changes)
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]
