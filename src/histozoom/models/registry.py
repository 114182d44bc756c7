"""Model variants by name (timm-style ``@register_model``): a name maps to a function that
returns a :class:`~histozoom.models.cell_tissue.CellTissueConfig`; a new variant is a new
config, never a copy of model code.

>>> model = build_model("pred-to-inter-2", cell_dropout=0.3)
>>> model = build_model("feature-sharing", sharing=("t2c", "none", "both"))

Registered (OCELOT paper names): ``cell-only``, ``unet-cell-only`` (supplement C.1),
``tissue-label-leaking``, ``pred-to-input``, ``pred-to-inter-1``, ``pred-to-inter-2``,
``pred-to-output``, ``feature-sharing``, and the Table 7 ablations
``{pred-to-inter-2, feature-sharing}-no-large-fov`` (tissue labels without large FoV) and
``{...}-no-tissue-labels`` (large FoV without tissue labels).
"""

from __future__ import annotations

from typing import Any, Callable

import torch.nn as nn

from .cell_tissue import CellTissueConfig

ConfigBuilder = Callable[[], CellTissueConfig]
_BUILDERS: dict[str, ConfigBuilder] = {}

PRED_TO_POSITIONS = {
    "pred-to-input": "input",
    "pred-to-inter-1": "encoder",
    "pred-to-inter-2": "aspp",
    "pred-to-output": "decoder",
}
"""Paper name → injection position (Fig. 4 a–d)."""

FEATURE_SHARING_DEFAULT: tuple[str, str, str] = ("both", "both", "both")
"""Default ``sharing`` of ``feature-sharing``. The paper's searched best (Fig. 6) is drawn,
not stated in its text; exchanges in both directions at all three positions is our
reading of the figure — override ``sharing`` to reproduce a search result."""


def register_model(name: str) -> Callable[[ConfigBuilder], ConfigBuilder]:
    """Decorator registering a zero-argument function that returns the variant's config."""

    def decorator(fn: ConfigBuilder) -> ConfigBuilder:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is already registered")
        _BUILDERS[name] = fn
        return fn

    return decorator


def list_models() -> list[str]:
    """Registered names, in registration order."""
    return list(_BUILDERS)


def get_config(name: str, **overrides: Any) -> CellTissueConfig:
    """The config of variant ``name`` with ``overrides`` applied (``name`` is set to the key)."""
    if name not in _BUILDERS:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(_BUILDERS)}")
    return _BUILDERS[name]().replace(**{"name": name, **overrides})


def build_model(name: str, **overrides: Any) -> nn.Module:
    """Build variant ``name`` (random init unless ``encoder_weights`` names a local file)."""
    return get_config(name, **overrides).build()


# ---------------------------------------------------------------------- the OCELOT family
@register_model("cell-only")
def _cell_only() -> CellTissueConfig:
    return CellTissueConfig()


@register_model("unet-cell-only")
def _unet_cell_only() -> CellTissueConfig:
    return CellTissueConfig(architecture="unet")


@register_model("tissue-label-leaking")
def _tissue_label_leaking() -> CellTissueConfig:
    return CellTissueConfig(leak_tissue_labels=True)


def _register_pred_to(name: str, position: str) -> None:
    register_model(name)(lambda: CellTissueConfig(tissue_branch=True, inject=position))


for _name, _pos in PRED_TO_POSITIONS.items():
    _register_pred_to(_name, _pos)


@register_model("feature-sharing")
def _feature_sharing() -> CellTissueConfig:
    return CellTissueConfig(tissue_branch=True, sharing=FEATURE_SHARING_DEFAULT)


def _register_ablations(base: str) -> None:
    """Table 7: the same architecture with one data component removed."""
    register_model(f"{base}-no-large-fov")(lambda: get_config(base, tissue_input="cell"))
    register_model(f"{base}-no-tissue-labels")(lambda: get_config(base, tissue_supervised=False))


for _base in ("pred-to-inter-2", "feature-sharing"):
    _register_ablations(_base)
