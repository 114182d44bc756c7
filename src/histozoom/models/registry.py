"""Model variants by name (timm-style ``@register_model``): a name maps to a function that
returns a model config (:class:`~histozoom.models.cell_tissue.CellTissueConfig`,
:class:`~histozoom.models.chrnet.ChrNetConfig`, or any :class:`ModelConfig`); a new
variant is a new config, never a copy of model code.

>>> model = build_model("pred-to-inter-2", cell_dropout=0.3)
>>> model = build_model("feature-sharing", sharing=("t2c", "none", "both"))

Registered (OCELOT paper names): ``cell-only``, ``unet-cell-only`` (supplement C.1),
``tissue-label-leaking``, ``pred-to-input``, ``pred-to-inter-1``, ``pred-to-inter-2``,
``pred-to-output``, ``feature-sharing``, and the Table 7 ablations
``{pred-to-inter-2, feature-sharing}-no-large-fov`` (tissue labels without large FoV) and
``{...}-no-tissue-labels`` (large FoV without tissue labels), and ``mfovce-net`` (supplement
Table C.1: the large-FoV image as an extra input without tissue labels).

Nuclei family (CHR-Net paper names, Tables 1–2): ``chrnet`` (the full model = MHR+WDist),
``chrnet-shr`` (one HRFE, no segmentation branch), ``chrnet-mhr`` (two HRFEs, no
segmentation), ``chrnet-mhr-udist`` (+ U-Net distance regression),
``chrnet-mhr-wdist`` (+ W-Net; same config as ``chrnet``) and ``unet-nuclei`` (the
5-class U-Net baseline). ``list_models()`` lists the cell–tissue family (as before);
``list_models("nuclei")`` the nuclei family, ``list_models(None)`` all of them.

>>> model = build_model("chrnet", encoder_name="resnet18", hrfe_channels=(16, 32, 64))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch.nn as nn

from .cell_tissue import CellTissueConfig
from .chrnet import ChrNetConfig


class ModelConfig(Protocol):
    """What the registry needs of a config: ``replace(**fields)``, ``build()`` and
    ``size_multiple`` (input sides must be multiples of it; the built model has the same
    property, which trainers, predictors and the CLI ask instead of a constant)."""

    def replace(self, **changes: Any) -> ModelConfig: ...

    @property
    def size_multiple(self) -> int: ...

    def build(self, pretrained: bool = True) -> nn.Module: ...


ConfigBuilder = Callable[[], ModelConfig]
_BUILDERS: dict[str, ConfigBuilder] = {}
_FAMILIES: dict[str, str] = {}

FAMILIES: tuple[str, ...] = ("cell-tissue", "nuclei")
"""Model families: "cell-tissue" (OCELOT, :class:`CellTissueConfig`; input cell/tissue
views) and "nuclei" (CHR-Net, :class:`ChrNetConfig`; input one image). Variants of one
family share a config class, a forward signature and a trainer."""

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


def register_model(name: str, family: str = "cell-tissue") -> Callable[[ConfigBuilder], ConfigBuilder]:
    """Decorator registering a zero-argument function that returns the variant's config."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")

    def decorator(fn: ConfigBuilder) -> ConfigBuilder:
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} is already registered")
        _BUILDERS[name] = fn
        _FAMILIES[name] = family
        return fn

    return decorator


def list_models(family: str | None = "cell-tissue") -> list[str]:
    """Registered names of ``family`` (``None``: every family), in registration order.

    The default is the cell–tissue (OCELOT) family, whose variants all take the same
    inputs and overrides, as before the nuclei family existed.
    """
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")
    return [n for n in _BUILDERS if family is None or _FAMILIES[n] == family]


def model_family(name: str) -> str:
    """The family ``name`` was registered in (``KeyError`` for an unknown name)."""
    if name not in _FAMILIES:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(_BUILDERS)}")
    return _FAMILIES[name]


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """The config of variant ``name`` with ``overrides`` applied (``name`` is set to the key)."""
    if name not in _BUILDERS:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(_BUILDERS)}")
    return _BUILDERS[name]().replace(**{"name": name, **overrides})


def build_model(name: str, **overrides: Any) -> nn.Module:
    """Build variant ``name`` (random init unless ``encoder_weights`` names a local file)."""
    return get_config(name, **overrides).build()


def size_multiples(family: str | None = "cell-tissue") -> dict[str, int]:
    """``{name: size_multiple}`` of the registered variants of ``family`` with their
    default configs (nothing is built): the input side multiple each one needs for a
    size shared by all its inputs (``size_multiple`` of the config and of the model)."""
    return {n: get_config(n).size_multiple for n in list_models(family)}


def describe_size_multiples(family: str | None = "cell-tissue") -> str:
    """The size multiples of ``family`` in words, for help texts: the most common one,
    then the exceptions, e.g. ``"16, or 32 for unet-cell-only"``."""
    by_multiple: dict[int, list[str]] = {}
    for n, m in size_multiples(family).items():
        by_multiple.setdefault(m, []).append(n)
    ordered = sorted(by_multiple, key=lambda m: (-len(by_multiple[m]), m))
    parts = [str(ordered[0])] + [f"{m} for {', '.join(by_multiple[m])}" for m in ordered[1:]]
    return ", or ".join(parts)


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


@register_model("mfovce-net")
def _mfovce_net() -> CellTissueConfig:
    """Supplement Table C.1's MFoVCE-Net baseline ("a large FoV patch is also utilized as an
    input", no tissue annotation): a context encoder on the large-FoV view whose features,
    cropped to the cell window, join the cell branch at its encoder output and after ASPP
    (tissue→cell exchanges), trained without any tissue loss."""
    return CellTissueConfig(tissue_branch=True, sharing=("t2c", "t2c", "none"), tissue_supervised=False)


# ---------------------------------------------------------------------- the nuclei family (CHR-Net)
# Listed by list_models("nuclei"); one image in, the dict of histozoom.models.chrnet out.
NUCLEI_VARIANTS: dict[str, dict[str, str]] = {
    "chrnet": {},  # the full model: two HRFEs (MHR) + the W-Net distance branch (WDist)
    "chrnet-shr": {"classification": "single", "segmentation": "none"},
    "chrnet-mhr": {"classification": "two-task", "segmentation": "none"},
    "chrnet-mhr-udist": {"classification": "two-task", "segmentation": "udist"},
    "chrnet-mhr-wdist": {"classification": "two-task", "segmentation": "wnet"},
}
"""CHR-Net's Table 2 variants as ``ChrNetConfig`` fields."""


def _register_nuclei(name: str, fields: dict[str, str]) -> None:
    register_model(name, family="nuclei")(lambda: ChrNetConfig(**fields))


for _name, _fields in NUCLEI_VARIANTS.items():
    _register_nuclei(_name, _fields)


@register_model("unet-nuclei", family="nuclei")
def _unet_nuclei() -> ChrNetConfig:
    """Table 1's U-Net with a 5-channel output (background + 4 classes), plain ResNet encoder."""
    return ChrNetConfig(architecture="unet", classification="single", segmentation="none", global_context=False)
