"""Strict field checks and dict round trip shared by the JSON-saved config dataclasses."""

from __future__ import annotations

import dataclasses
import numbers
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


# ---------------------------------------------------------------------- value checks
# Used by the model configs' validation (``_problems``): each returns a problem string or None,
# checking the type first so that a wrong type from JSON is named rather than raising TypeError.
MAX_CHANNELS = 4096
"""Largest width (channels) a model config may ask for; the paper models use at most 512."""
MAX_CLASSES = 254
"""Largest class count: class ids live in uint8 label maps, with 0 = background and 255 = ignore."""
MAX_IN_CHANNELS = 64
"""Largest number of image channels (3 = RGB; a few more for stacked extra inputs)."""


def int_problem(label: str, value: Any, lo: int, hi: int, optional: bool = False) -> str | None:
    """``None`` if ``value`` is an int (not a bool) in ``[lo, hi]`` (or ``None`` when ``optional``)."""
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return f"{label} must be an integer{' or null' if optional else ''} in [{lo}, {hi}], got {value!r}"
    if not lo <= value <= hi:
        return f"{label} must be in [{lo}, {hi}], got {value}"
    return None


def ints_problem(label: str, values: Any, lo: int, hi: int, lengths: Iterable[int] | None = None) -> str | None:
    """``None`` if ``values`` is a list/tuple of ints in ``[lo, hi]`` (with a length in ``lengths``)."""
    if not isinstance(values, (list, tuple)):
        return f"{label} must be a list of integers, got {values!r}"
    allowed = None if lengths is None else sorted(set(lengths))
    if allowed is not None and len(values) not in allowed:
        n = allowed[0] if len(allowed) == 1 else f"{allowed[0]}..{allowed[-1]}"
        return f"{label} needs {n} entries, got {len(values)}: {list(values)}"
    for v in values:
        problem = int_problem(label, v, lo, hi)
        if problem:
            return f"{problem} (in {list(values)})"
    return None


def prob_problem(label: str, value: Any, hi_open: bool = True) -> str | None:
    """``None`` if ``value`` is a real number in ``[0, 1)`` (``[0, 1]`` when not ``hi_open``)."""
    interval = "[0, 1)" if hi_open else "[0, 1]"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return f"{label} must be a number in {interval}, got {value!r}"
    if not (0.0 <= value < 1.0 if hi_open else 0.0 <= value <= 1.0):
        return f"{label} must be in {interval}, got {value}"
    return None


def bool_problem(label: str, value: Any) -> str | None:
    return None if isinstance(value, bool) else f"{label} must be true or false, got {value!r}"


def str_problem(label: str, value: Any, optional: bool = False) -> str | None:
    if (optional and value is None) or isinstance(value, str):
        return None
    return f"{label} must be a string{' or null' if optional else ''}, got {value!r}"


def encoder_problem(label: str, name: Any) -> str | None:
    """``None`` if smp can build encoder ``name``: one of
    ``segmentation_models_pytorch.encoders.get_encoder_names()``, or ``tu-<timm model>``."""
    if not isinstance(name, str):
        return f"{label} must be a string, got {name!r}"
    from segmentation_models_pytorch.encoders import get_encoder_names

    names = get_encoder_names()
    if name in names:
        return None
    if name.startswith("tu-"):
        import timm

        if timm.is_model(name[3:]):
            return None
        return f"{label} {name!r}: timm has no model {name[3:]!r}"
    return f"unknown {label} {name!r}; smp encoders: {', '.join(names[:12])}, ... (or 'tu-<timm model>')"


def convert(label: str, fn: Any, value: Any) -> Any:
    """``fn(value)``, a ConfigError naming ``label`` if that fails (a wrong type from JSON)."""
    try:
        return fn(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{label}: cannot read {value!r} ({err})") from None
