"""Save a model as ``config.json`` + ``model.safetensors`` and rebuild it with no code edits.

``config.json``::

    {"format": "histozoom-model/1",
     "config_type": "histozoom.models.cell_tissue.CellTissueConfig",
     "model_name": "<registry key>",          # config.name, when the config has one
     "config": {...},                          # config.to_dict()
     "extra": {...}}                           # caller's JSON-able metadata, or null

A config class usable here provides ``to_dict()``, ``from_dict(d)`` and
``build(pretrained=...)``; the model keeps it as ``model.config``. ``config_type`` is the
class's import path (only ``histozoom.*`` classes are resolved). Both files are written
to a temporary name and renamed (weights first, then the config).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..atomic import atomic_path, write_json
from ..errors import InputError
from ..jsonio import read_json

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "histozoom-model/1"
BEST_CHECKPOINT = "best.ckpt"
"""A training run keeps its best-validation model in ``RUN/best.ckpt/``."""


def config_type_name(config: Any) -> str:
    """Import path ``module.QualName`` of ``config``'s class."""
    cls = type(config)
    return f"{cls.__module__}.{cls.__qualname__}"


def resolve_config_type(name: str, path: str | Path | None = None) -> type:
    """The config class for a ``config_type`` string (``histozoom.*`` only)."""
    module, _, qualname = name.rpartition(".")
    if not module.startswith("histozoom.") or not qualname:
        raise InputError(path, f"config_type {name!r} is not a histozoom config class")
    try:
        cls = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
    except (ImportError, AttributeError) as err:
        raise InputError(path, f"config_type {name!r} cannot be imported ({err})") from err
    # only a class defined in histozoom with the config interface (not e.g. a function or an imported class)
    if not (isinstance(cls, type) and cls.__module__.startswith("histozoom.")
            and callable(getattr(cls, "from_dict", None)) and callable(getattr(cls, "build", None))):
        raise InputError(path, f"config_type {name!r} is not a histozoom config class")
    return cls


def save_pretrained(model: nn.Module, directory: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model.config`` and the weights (``state_dict``) into ``directory``; returns it."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise TypeError(f"{type(model).__name__} has no .config with to_dict(); cannot save it")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    meta = {
        "format": FORMAT,
        "config_type": config_type_name(config),
        "model_name": getattr(config, "name", None),
        "config": config.to_dict(),
        "extra": None if extra is None else dict(extra),
    }
    write_json(directory / CONFIG_FILE, meta)
    return directory


def load_config(directory: str | Path) -> tuple[Any, dict[str, Any]]:
    """``(config, meta)`` from ``directory/config.json``; ``meta`` is the whole JSON object."""
    path = Path(directory) / CONFIG_FILE
    meta = read_json(path, "checkpoint config")
    if not isinstance(meta, dict) or "config_type" not in meta or "config" not in meta:
        raise InputError(path, "expected an object with 'config_type' and 'config'")
    cls = resolve_config_type(str(meta["config_type"]), path)
    try:
        config = cls.from_dict(meta["config"])
    except (TypeError, ValueError) as err:
        raise InputError(path, f"bad config: {err}") from err
    return config, meta


def checkpoint_family(meta: Mapping[str, Any]) -> str:
    """The model family of a checkpoint's ``meta`` (:func:`load_config`): ``"nuclei"``
    (CHR-Net and its baselines) or ``"cell-tissue"`` (the OCELOT models), from its config class."""
    name = str(meta.get("config_type", ""))
    if name.endswith(".ChrNetConfig"):
        return "nuclei"
    if name.endswith(".CellTissueConfig"):
        return "cell-tissue"
    return "unknown"


def require_family(path: str | Path, meta: Mapping[str, Any], family: str, hint: str) -> None:
    """An :class:`InputError` naming the checkpoint ``path`` and what it is unless it is of ``family``."""
    got = checkpoint_family(meta)
    if got != family:
        what = {"nuclei": "a nuclei (CHR-Net) model", "cell-tissue": "an OCELOT cell–tissue model"}.get(got, "not a known model")
        raise InputError(path, f"this checkpoint is {what} ({meta.get('model_name') or meta.get('config_type')}); {hint}")


def from_pretrained(directory: str | Path, map_location: str | torch.device = "cpu", strict: bool = True) -> nn.Module:
    """Rebuild the model saved by :func:`save_pretrained` and load its weights (eval mode)."""
    config, _ = load_config(directory)
    model = config.build(pretrained=False)
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise InputError(path, "checkpoint weights not found")
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device=str(map_location))
    except Exception as err:
        raise InputError(path, f"cannot read safetensors ({type(err).__name__}: {err})") from err
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as err:
        raise InputError(path, f"weights do not fit the config's model: {err}") from err
    return model.to(map_location).eval()


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder for ``path``: a training run folder (its ``best.ckpt``) or a
    :func:`save_pretrained` folder itself."""
    path = Path(path)
    if (path / BEST_CHECKPOINT / CONFIG_FILE).is_file():
        return path / BEST_CHECKPOINT
    if not (path / CONFIG_FILE).is_file():
        raise InputError(path, f"no checkpoint here (expected {BEST_CHECKPOINT}/{CONFIG_FILE} of a training run, "
                               f"or {CONFIG_FILE} + {WEIGHTS_FILE})")
    return path
