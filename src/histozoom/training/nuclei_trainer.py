"""Training a nuclei model (``histozoom nuclei train``): CHR-Net and its baselines.

>>> from histozoom.training.nuclei_trainer import NucleiTrainConfig, train_nuclei
>>> summary = train_nuclei(NucleiTrainConfig(data="TILES", model="chrnet"), "RUN")

The run folder is the one of every histozoom trainer (:mod:`histozoom.training.loop`),
with ``RUN/nuclei_train_config.json`` as its config and ``RUN/test_predictions/`` holding
the best checkpoint's test predictions (CoNSeP-style ``.mat``, scored by ``histozoom
nuclei evaluate``). The best epoch is the one with the highest validation aPQ (mean of the
per-class PQ, averaged over images); ties keep the earlier epoch.

Defaults follow CHR-Net §3 where it says something: Adam at 1e-4, divided by 10 half way
(the paper: 1e-5 after 25 of 50 epochs); loss weights λ_dist = 2, others 1; flip,
rotation and blur augmentation (plus colour jitter and noise here). With ImageNet weights
(``model_overrides={"encoder_weights": PATH}``) the paper first trains with the encoder
frozen: ``freeze_encoder_epochs``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.augment import AugmentConfig
from ..data.nuclei.dataset import NucleiDataset, open_nuclei
from ..data.nuclei.samples import NucleiAugment, NucleiTrainSet
from ..errors import InputError
from ..evaluation.nuclei import evaluate_samples
from ..inference.nuclei_predictor import NucleiPredictor
from ..inference.watershed import WatershedConfig
from ..models.checkpoint import from_pretrained
from ..models.chrnet import ChrNetLoss, targets_for_config
from ..models.registry import get_config, list_models, model_family
from .config import RunConfig, model_size_multiple, size_problem
from .distributed import SINGLE, DistInfo, unwrap
from .loop import CHECKPOINT_NAME, RunLoop

NUCLEI_CONFIG_FILE = "nuclei_train_config.json"
TEST_PREDICTIONS_DIR = "test_predictions"


@dataclass
class NucleiTrainConfig(RunConfig):
    """Everything that defines a nuclei training run (JSON-serialisable).

    Data: ``data`` (a folder :func:`~histozoom.data.nuclei.dataset.open_nuclei` reads
    with splits, e.g. :func:`~histozoom.data.nuclei.synthetic.write_synthetic_nuclei`'s),
    ``train_split``/``val_split``/``test_split`` (``None``: none), ``crop`` (random
    training crops of ``crop``×``crop`` px, a multiple of the model's ``size_multiple``,
    32 for every CHR-Net variant; ``None`` = whole tiles, padded to that multiple),
    ``augment``.

    Model: ``model`` (registry name: ``chrnet``, ``chrnet-shr``, ``chrnet-mhr``,
    ``chrnet-mhr-udist``, ``unet-nuclei``, ...), ``model_overrides`` (``ChrNetConfig``
    fields; ``n_classes`` and the cross-category groups come from the dataset's class
    scheme), ``loss_weights`` (``bc, dist, mc1, mc2, mcf``; default Eq. 1),
    ``freeze_encoder_epochs`` (encoder frozen for the first epochs).

    Optimisation: ``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``milestones``
    (fractions of ``epochs``), ``gamma``, ``bn_recalibration`` (as in
    :class:`~histozoom.training.config.TrainConfig`).

    Post-processing for validation and test: ``watershed``
    (:class:`~histozoom.inference.watershed.WatershedConfig` fields).

    Runtime fields as in :class:`~histozoom.training.config.TrainConfig`.
    """

    model: str = "chrnet"
    crop: int | None = 256
    loss_weights: dict[str, float] = field(default_factory=dict)
    freeze_encoder_epochs: int = 0

    watershed: dict[str, Any] = field(default_factory=dict)

    # the schedule's defaults differ from the OCELOT recipe's (RunConfig): CHR-Net's paper recipe
    recipe: str = "paper"
    lr: float | None = 1e-4
    epochs: int = 50
    batch_size: int = 4
    weight_decay: float = 0.0
    milestones: tuple[float, ...] = (0.5,)
    gamma: float = 0.1

    def __post_init__(self):
        self.loss_weights = dict(self.loss_weights or {})
        self.watershed = dict(self.watershed or {})
        super().__post_init__()

    def problems(self):
        problem = size_problem("crop", self.crop, self.model,
                               None if self.crop is None else model_size_multiple(self.model, self.model_overrides))
        if problem:
            yield problem
        if self.freeze_encoder_epochs < 0:
            yield f"freeze_encoder_epochs must be >= 0, got {self.freeze_encoder_epochs}"
        try:
            WatershedConfig(**self.watershed)
        except (TypeError, ValueError) as e:
            yield f"watershed: {e}"

    def watershed_config(self) -> WatershedConfig:
        return WatershedConfig(**self.watershed)


def _split(root: str, split: str | None) -> NucleiDataset | None:
    if split is None:
        return None
    try:
        return open_nuclei(root, split)
    except InputError:
        return None


class NucleiTrainer(RunLoop):
    """One nuclei training run (see the module doc and :class:`~histozoom.training.loop.RunLoop`)."""

    config_file = NUCLEI_CONFIG_FILE
    score_key = "aPQ"
    test_predictions = TEST_PREDICTIONS_DIR

    def setup(self) -> None:
        cfg = self.cfg
        self.train_data = open_nuclei(cfg.data, cfg.train_split)
        if len(self.train_data) == 0:
            raise InputError(cfg.data, f"training split {cfg.train_split!r} is empty")
        self.val_data = _split(cfg.data, cfg.val_split)
        self._val_tiles: list | None = None
        self.test_data = _split(cfg.data, cfg.test_split)
        if cfg.val_split and self.val_data is None:
            self.log(f"no split {cfg.val_split!r}: no validation; the last epoch is kept as best")
        scheme = self.train_data.scheme
        if scheme is None:
            raise InputError(cfg.data, "the training data has no class scheme (classes.json); nuclei models need classes")
        self.scheme = scheme
        self.classes = scheme.classes
        if tuple(self.classes.ids) != tuple(range(1, len(self.classes) + 1)):
            raise InputError(cfg.data, f"nucleus class ids must be 1..{len(self.classes)}, got {list(self.classes.ids)}")
        if model_family(cfg.model) != "nuclei":
            raise InputError(None, f"model {cfg.model!r} is not a nuclei model; choose from {', '.join(list_models('nuclei'))}")
        overrides: dict[str, Any] = {"n_classes": len(self.classes)}
        base = get_config(cfg.model)
        if getattr(base, "classification", None) == "two-task":
            if len(scheme.merges) < 2:
                raise InputError(cfg.data, f"model {cfg.model!r} needs two cross-category merges in the class scheme, "
                                           f"found {len(scheme.merges)}")
            overrides["task_groups"] = tuple(m.groups for m in scheme.merges[:2])
        self.model_config = get_config(cfg.model, **{**overrides, **cfg.model_overrides})
        problem = size_problem("crop", cfg.crop, cfg.model, self.model_config.size_multiple)  # the model says
        if problem:
            raise InputError(None, problem)
        self.loss_fn = ChrNetLoss(cfg.loss_weights or None)
        self.watershed = cfg.watershed_config()

    def extra(self, epoch: int, val: dict | None) -> dict:
        return {"classes": self.classes.to_dict(), "scheme": self.scheme.to_dict(),
                "mpp": self.train_data.mpp, "size": self.cfg.crop,
                "watershed": dataclasses.asdict(self.watershed), "epoch": epoch, "val": val, "train_config": self.cfg.to_dict()}

    # ------------------------------------------------------------------ the task
    def make_model(self) -> torch.nn.Module:
        return self.model_config.build()

    def make_train_set(self) -> NucleiTrainSet:
        augment = NucleiAugment(AugmentConfig()) if self.cfg.augment else None
        return NucleiTrainSet(self.train_data, self.cfg.crop, augment, multiple=self.model_config.size_multiple)

    def epoch_hook(self, epoch: int) -> None:
        # the pretrained ResNet body only: the global-context blocks start as the identity
        # and would stay so while frozen
        encoder = getattr(self.model, "encoder", None)
        encoder = getattr(encoder, "body", encoder)
        if encoder is None or not self.cfg.freeze_encoder_epochs:
            return
        frozen = epoch <= self.cfg.freeze_encoder_epochs
        for p in encoder.parameters():
            p.requires_grad_(not frozen)

    def unused_parameters(self) -> bool:
        return self.cfg.freeze_encoder_epochs > 0

    def forward(self, model: torch.nn.Module, batch: dict) -> Any:
        return model(batch["image"])

    def loss(self, outputs: Any, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        targets = dict(batch)
        targets["tasks"] = targets_for_config(self.model_config, batch["classes"])
        total, parts = self.loss_fn(outputs, targets)
        return total, {k: float(v) for k, v in parts.items()}

    def predictor(self, model: torch.nn.Module | None = None) -> NucleiPredictor:
        return NucleiPredictor(unwrap(model or self.model), self.classes, self.watershed, device=self.device, amp=self.amp)

    def _score(self, predictor: NucleiPredictor, samples: list) -> tuple[dict, list]:
        preds = predictor.predict_samples(samples)
        ev = evaluate_samples(preds, samples, classes=self.classes)
        m = ev.mean
        num = lambda v: None if v != v else float(v)  # noqa: E731 - NaN (undefined) -> null in JSON
        scores = {"aPQ": num(m.apq), "PQ": num(m.pq), "DQ": num(m.dq), "SQ": num(m.sq), "Dice": num(m.dice),
                  "AJI": num(m.aji), "PQ_class": {self.classes.name(c): num(v) for c, v in m.pq_per_class.items()}}
        return scores, preds

    def validate(self) -> dict | None:
        if self.val_data is None:
            return None
        was_training = self.model.training
        try:
            if self._val_tiles is None:  # read from disk once: validation runs every epoch
                self._val_tiles = list(self.val_data)
            scores, _ = self._score(self.predictor(), self._val_tiles)
        finally:
            self.model.train(was_training)
        return scores

    def test(self) -> dict | None:
        """Predict the test split with the best checkpoint; write ``RUN/test_predictions/*.mat``
        and return the scores (``None`` without a test split)."""
        if self.test_data is None:
            return None
        model = from_pretrained(self.run / CHECKPOINT_NAME, map_location=str(self.device))
        scores, preds = self._score(self.predictor(model), list(self.test_data))
        for p in preds:
            p.write(self.run / TEST_PREDICTIONS_DIR, formats=("mat",))
        return scores


def train_nuclei(cfg: NucleiTrainConfig, run_dir: str | Path, resume: bool = False, dist_info: DistInfo = SINGLE,
                 log: Callable[[str], None] | None = None) -> dict:
    """Train one nuclei run (see :class:`NucleiTrainer`); returns its summary."""
    return NucleiTrainer(cfg, run_dir, resume=resume, dist_info=dist_info, log=log).fit()
