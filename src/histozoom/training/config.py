"""What defines a training run: :class:`TrainConfig`, saved as ``RUN/train_config.json``.

``recipe`` (:mod:`histozoom.training.recipe`) picks the optimisation: ``"default"``
adapts LR and schedule to the budget; ``"paper"`` is the recipe below, exactly. It follows
the OCELOT paper (CVPR 2023, §6.2, supplement B) where it says something, and for the
schedule the cell-only baseline of the OCELOT 2023 challenge report (§4.1, "Overall
results": "initial learning rate of 1e-4 ... reducing by a factor of 0.3 in epochs 180 and
240 ... 300 epochs ... weight decay of 1e-5"), which the paper does not state:

* Adam (paper); ``lr`` = 1e-4, weight decay 1e-5, step decay ×0.3 at 60 % and 80 % of
  the epochs (``MultiStepLR``; 180 and 240 of 300) — the challenge report's baseline.
  The paper tunes the learning rate in ``[5e-5, 2e-3]`` (``lr`` is the tissue branch's;
  the cell branch gets ``lr · cell_lr_ratio`` with the ratio in {1, 0.5}).
* 300 epochs on OCELOT (150 on TIGER, 100 on CARP; paper); the epoch with the best
  validation mF1 is kept and used for the test set.
* Dice loss on both branches; spatial dropout after every ResNet block, 0.1 in the tissue
  branch, the cell branch's searched over {0.1, 0.3, 0.5}.
* Augmentation: flips and rot90 shared by both views, blur / noise / colour jitter per view.

Dataset ablations (Table 7) are switches here that become model overrides, so the model
config (saved with every checkpoint) stays the one place that says what was trained:
``no_tissue_loss`` → ``tissue_supervised=False`` ("large FoV without tissue labels");
``no_large_fov`` → ``tissue_input="cell"`` ("tissue labels without large FoV"; the tissue
target is then the mask cropped to the cell window). The loss reads both from the model
config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..config_fields import DictConfig
from ..errors import ConfigError, InputError
from ..jsonio import read_json
from .recipe import LOSSES, RECIPES

TRAIN_CONFIG_FILE = "train_config.json"

TARGETS = ("disk", "gaussian")
"""Cell training targets: class-labelled disks (segmentation loss) or Gaussian heatmaps (MSE)."""

SAMPLINGS = ("uniform", "class-balanced")
"""How training samples are drawn each epoch."""

TARGET_PEAKS = {"disk": {"threshold": 0.5, "smooth_um": 0.0},
                "gaussian": {"threshold": 0.3, "smooth_um": 0.57}}
"""Decoding defaults per target: the foreground threshold, and the σ (µm) of the Gaussian
that smooths the foreground map before peak finding (half the target σ for heatmaps,
whose raw peaks are flat-topped and noisy; none for disks)."""

RUNTIME_FIELDS = ("device", "num_workers", "progress", "tensorboard", "stop_after")
"""Fields that do not change what is computed (on one device type); a resumed run may
change them. Every other field must match the saved config."""


def size_problem(field_name: str, value: int | None, model: str, multiple: int | None) -> str | None:
    """The message when ``value`` (an input side in px, ``None`` = not set) does not fit
    model ``model`` whose inputs must be multiples of ``multiple`` (the model's
    ``size_multiple``; ``None`` = not known yet: only ``value >= 1`` is checked)."""
    if value is None:
        return None
    if multiple is None:
        return None if value >= 1 else f"{field_name} must be >= 1 px, got {value}"
    if value < multiple or value % multiple:
        return (f"{field_name} must be a multiple of {multiple} (the input size multiple of model "
                f"{model!r}), got {value}")
    return None


def model_size_multiple(model: str, overrides: dict[str, Any]) -> int | None:
    """``size_multiple`` of registry variant ``model`` with ``overrides`` (its config's,
    nothing built), or ``None`` when that config cannot be made yet (an unknown name, or
    overrides that only the dataset completes): the trainer checks again with the full
    model config."""
    from ..models.registry import get_config

    try:
        return int(get_config(model, **overrides).size_multiple)
    except (KeyError, TypeError, ValueError):
        return None


@dataclass
class RunConfig(DictConfig):
    """What every training run has: the optimisation schedule and the runtime (fields
    below; defaults are the OCELOT recipe's, subclasses may redeclare them), plus JSON
    round trip, strict ``replace`` and resume comparison (tuples become lists in JSON;
    ``__post_init__`` of the subclass turns them back). Field meanings: see
    :class:`TrainConfig`."""

    data: str = ""
    model: str = "cell-only"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    train_split: str = "train"
    val_split: str | None = "val"
    test_split: str | None = "test"
    augment: bool = True
    recipe: str = "default"
    epochs: int = 300
    extend: tuple[int, ...] = ()
    batch_size: int = 8
    lr: float | None = None
    warmup: float = 0.05
    lr_finder_steps: int = 100
    weight_decay: float = 1e-5
    milestones: tuple[float, ...] = (0.6, 0.8)
    gamma: float = 0.3
    bn_recalibration: int | None = None
    seed: int = 0
    device: str = "cpu"
    num_workers: int | None = None
    amp: bool | None = None
    channels_last: bool | None = None
    deterministic: bool | None = None
    sync_bn: bool = False
    progress: bool = True
    tensorboard: bool = True
    stop_after: int | None = None
    max_train_batches: int | None = None
    resolved: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.data = str(self.data)
        self.milestones = tuple(float(m) for m in self.milestones)
        self.extend = tuple(int(n) for n in self.extend)
        self.resolved = dict(self.resolved or {})
        self.model_overrides = dict(self.model_overrides or {})
        problems = list(self.common_problems()) + list(self.problems())
        if problems:
            raise ConfigError(f"{type(self).__name__}: " + "; ".join(problems))

    def problems(self):
        """Checks of the subclass's own fields (messages)."""
        return []

    def milestone_epochs(self) -> list[int]:
        """Epoch counts after which the LR is multiplied by ``gamma`` (60 %, 80 % of 300 → 180, 240;
        ``paper`` recipe)."""
        return sorted({max(1, int(round(m * self.epochs))) for m in self.milestones})

    def total_epochs(self) -> int:
        """The schedule's ``epochs`` plus every extension."""
        return self.epochs + sum(self.extend)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    def differences(self, other, ignore: tuple[str, ...] = (*RUNTIME_FIELDS, "resolved")) -> dict[str, tuple[Any, Any]]:
        """``{field: (self's, other's)}`` for fields that differ (``ignore`` left out)."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if k not in ignore and a[k] != b[k]}

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path):
        path = Path(path)
        d = read_json(path, "training config")
        if isinstance(d, dict) and "recipe" not in d:
            d = {**d, "recipe": "paper"}  # saved before recipes existed: trained with the paper's
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as e:
            raise InputError(path, f"bad training config: {e}") from e

    def common_problems(self):
        """Checks of the fields every run config has (``recipe, epochs, extend, batch_size,
        lr, warmup, lr_finder_steps, weight_decay, milestones, gamma, num_workers,
        bn_recalibration, stop_after``)."""
        checks = [
            (self.recipe in RECIPES, f"recipe must be one of {RECIPES}, got {self.recipe!r}"),
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (all(n >= 1 for n in self.extend), f"extend: each extension is >= 1 epoch, got {list(self.extend)}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr is None or self.lr > 0, f"lr must be > 0 (or None: the recipe's), got {self.lr}"),
            (0 <= self.warmup <= 0.5, f"warmup is a fraction of the steps in [0, 0.5], got {self.warmup}"),
            (self.lr_finder_steps >= 10, f"lr_finder_steps must be >= 10, got {self.lr_finder_steps}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (all(0 < m <= 1 for m in self.milestones),
             f"milestones are fractions of the epochs in (0, 1], got {self.milestones}"),
            (0 < self.gamma <= 1, f"gamma must be in (0, 1], got {self.gamma}"),
            (self.num_workers is None or self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}"),
            (self.bn_recalibration is None or self.bn_recalibration >= 0,
             f"bn_recalibration must be >= 0 (or None: the recipe's), got {self.bn_recalibration}"),
            (self.stop_after is None or self.stop_after >= 1, f"stop_after must be >= 1, got {self.stop_after}"),
        ]
        return [msg for ok, msg in checks if not ok]


@dataclass
class TrainConfig(RunConfig):
    """Everything that defines a training run (JSON-serialisable).

    Data: ``data`` (any folder :func:`~histozoom.data.open.open_dataset` reads),
    ``train_split``/``val_split``/``test_split`` (``test_split=None``: no test pass),
    ``size`` (resize both views to ``size``×``size`` px; a multiple of the model's
    ``size_multiple`` — 16 for the DeepLabV3+ variants, 32 for ``unet-cell-only``;
    ``None`` keeps the stored size), ``augment``, ``allow_outside_paths`` (the dataset's
    files may name files outside its folder; off by default, saved with the run).

    Model: ``model`` (registry name), ``model_overrides`` (``CellTissueConfig`` fields),
    ``cell_dropout``/``tissue_dropout`` (``None``: the recipe's — 0 for ``default``, the
    variant's 0.1 for ``paper``),
    ``no_tissue_loss``/``no_large_fov`` (Table 7 ablations, see the module doc).

    Optimisation: ``recipe`` ("default" or "paper"), ``epochs`` (the schedule's length),
    ``extend`` (epochs added after it, one entry per extension), ``batch_size`` (per
    process), ``lr`` (tissue branch; ``None``: the recipe's — a range test over
    ``lr_finder_steps`` steps -- fewer for a short run: at most a quarter of its steps,
    but at least 40 -- or 1e-4), ``warmup`` (default recipe: fraction of the
    steps), ``cell_lr_ratio``, ``weight_decay``, ``milestones`` (paper recipe: fractions
    of ``epochs``), ``gamma``, ``loss`` ("dice" or "dice+ce"; ``None``: the recipe's),
    ``cell_weight``/``tissue_weight`` (loss weights). ``resolved``: what the recipe
    chose, filled in by the trainer (not compared on resume).

    ``bn_recalibration``: before each validation, re-estimate the BatchNorm running
    statistics from this many training batches (a cumulative average, "precise BN");
    0 = off, the paper's recipe; ``None``: the recipe's. With few steps per epoch at a high LR the running
    averages lag the weights and eval-mode outputs suffer (seen on small synthetic sets:
    tissue accuracy 0.54 with the running statistics, 0.92 re-estimated).

    Decoding for validation: ``peak_min_distance_um``, ``peak_threshold``, ``peak_smooth_um``,
    ``peak_nms_radius_um``
    (:class:`~histozoom.inference.decode.PeakConfig`; ``None``: the target's default,
    :data:`TARGET_PEAKS`).

    Challenge toolkit (the OCELOT 2023 top teams' options):
    ``target`` ("disk": class-labelled disks + the segmentation loss, the paper's;
    "gaussian": one heatmap per class, σ = 1.14 µm, sigmoid outputs and an MSE loss,
    decoded on the smoothed heatmap), ``normalize`` (:data:`~histozoom.data.normalize.NORMALIZATIONS`:
    "none", "percentile" = per-channel 1–99 percentile scaling, "macenko" = stain
    normalisation fitted on each tissue view, applied to both views; recorded in the
    checkpoint, so prediction does the same), ``sampling`` ("uniform" or
    "class-balanced": samples drawn with replacement, weighted by
    :func:`~histozoom.training.sampling.class_balance_weights`), ``folds``/``fold``
    (train on the training split without fold ``fold`` of ``folds`` slide-grouped,
    organ-stratified folds and validate on that fold, :mod:`histozoom.data.splits`;
    ``split_seed`` deals the folds), ``retrain_all`` (train on the training and the
    validation split together, without validation: the last epoch is kept).

    Runtime: ``seed``, ``device`` ("cpu", "cuda", "cuda:1", "auto"), ``num_workers``
    (``None``: 0 on CPU, up to 8 on CUDA), ``amp`` (bf16 autocast; ``None`` = on CUDA
    only), ``channels_last`` (``None`` = on CUDA only), ``deterministic``
    (``torch.use_deterministic_algorithms``; ``None`` = on CPU only), ``sync_bn``
    (SyncBatchNorm under DDP), ``progress`` (tqdm bars), ``tensorboard`` (when installed),
    ``stop_after`` (stop after this epoch, to be continued with resume; not the
    schedule's length), ``max_train_batches`` (cap per epoch, for benchmarks and smoke
    tests).
    """

    size: int | None = None
    allow_outside_paths: bool = False

    cell_dropout: float | None = None
    tissue_dropout: float | None = None
    no_tissue_loss: bool = False
    no_large_fov: bool = False

    cell_lr_ratio: float = 1.0
    cell_weight: float = 1.0
    tissue_weight: float = 1.0

    peak_min_distance_um: float = 2.0
    peak_threshold: float | None = None
    peak_smooth_um: float | None = None
    peak_nms_radius_um: float = 0.0
    loss: str | None = None

    target: str = "disk"
    normalize: str = "none"
    sampling: str = "uniform"
    folds: int | None = None
    fold: int = 0
    split_seed: int = 0
    retrain_all: bool = False

    def problems(self):
        from ..data.normalize import NORMALIZATIONS

        for name, value, allowed in (("target", self.target, TARGETS), ("normalize", self.normalize, NORMALIZATIONS),
                                     ("sampling", self.sampling, SAMPLINGS)):
            if value not in allowed:
                yield f"{name} must be one of {allowed}, got {value!r}"
        if self.folds is not None and not (self.folds >= 2 and 0 <= self.fold < self.folds):
            yield f"folds must be >= 2 and fold in 0..folds-1, got folds={self.folds}, fold={self.fold}"
        if self.folds is not None and self.retrain_all:
            yield "retrain_all trains on every training and validation sample: it takes no folds"
        if self.loss is not None and self.loss not in LOSSES:
            yield f"loss must be one of {LOSSES} (or None: the recipe's), got {self.loss!r}"
        problem = size_problem("size", self.size, self.model,
                               None if self.size is None else model_size_multiple(self.model, self.model_kwargs()))
        if problem:
            yield problem
        if not self.cell_lr_ratio > 0:
            yield f"cell_lr_ratio must be > 0, got {self.cell_lr_ratio}"
        for name in ("cell_dropout", "tissue_dropout"):
            v = getattr(self, name)
            if v is not None and not 0 <= v < 1:
                yield f"{name} must be in [0, 1), got {v}"

    # ------------------------------------------------------------------ derived
    def peak_settings(self) -> dict[str, float]:
        """``PeakConfig`` fields: the explicit ones, the rest from :data:`TARGET_PEAKS`."""
        base = TARGET_PEAKS[self.target]
        return {"min_distance_um": self.peak_min_distance_um,
                "threshold": base["threshold"] if self.peak_threshold is None else self.peak_threshold,
                "smooth_um": base["smooth_um"] if self.peak_smooth_um is None else self.peak_smooth_um,
                "nms_radius_um": self.peak_nms_radius_um}

    def model_kwargs(self, n_cell_classes: int | None = None, n_tissue_classes: int | None = None) -> dict[str, Any]:
        """Overrides for :func:`~histozoom.models.registry.get_config`: the explicit
        ``model_overrides`` plus dropout, ablation switches and the dataset's class counts."""
        kw: dict[str, Any] = {}
        if n_cell_classes is not None:
            kw["n_cell_classes"] = n_cell_classes
        if n_tissue_classes is not None:
            kw["n_tissue_classes"] = n_tissue_classes
        from .recipe import recipe_dropout

        for name, value in (("cell_dropout", self.cell_dropout), ("tissue_dropout", self.tissue_dropout)):
            value = recipe_dropout(self.recipe) if value is None else value
            if value is not None:
                kw[name] = value
        if self.no_tissue_loss:
            kw["tissue_supervised"] = False
        if self.no_large_fov:
            kw["tissue_input"] = "cell"
        if self.target == "gaussian":
            kw["cell_output"] = "heatmap"
        kw.update(self.model_overrides)
        return kw
