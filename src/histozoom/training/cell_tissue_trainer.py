"""Training a cell–tissue model (``histozoom train``): one run = one folder.

>>> from histozoom.training.cell_tissue_trainer import train
>>> from histozoom.training.config import TrainConfig
>>> summary = train(TrainConfig(data="DATA", model="pred-to-inter-2", epochs=300), "RUN")

What a run folder holds (every file written atomically; folders swapped in whole)::

    RUN/train_config.json   the TrainConfig (JSON)
    RUN/best.ckpt/          the best-validation-epoch model: config.json + model.safetensors
                            (histozoom.models.checkpoint format; ``extra`` holds the dataset
                            spec, the training size, peak settings, epoch and val scores)
    RUN/last/               the last finished epoch: config.json + model.safetensors +
                            state.safetensors + state.json (optimizer, scheduler, RNG states,
                            epoch, best score, history; no pickle) — what ``resume`` continues from
    RUN/log.csv             one row per epoch: learning rates, losses, val mF1 / F1 per class, times
    RUN/tb/                 TensorBoard events (when tensorboard is installed)
    RUN/test_predictions.json  the best checkpoint's test-split detections (challenge JSON)
    RUN/done.json           written last: the summary (best epoch, val and test mF1, per organ)

Reproducibility: every epoch's randomness — shuffling, augmentation, dropout — is derived
from ``(seed, epoch)`` (augmentation per sample: ``(seed, epoch, index)``), so the run
does not depend on worker count, and a resumed run repeats the uninterrupted one exactly
(on CPU bit for bit; with ``num_workers=0`` or any other count). The RNG states are also
saved and restored. On CPU ``torch.use_deterministic_algorithms`` is switched on during
training (off on CUDA by default: several ops the models use have no deterministic CUDA
kernel).

Devices: CPU by default; on CUDA bf16 autocast and channels_last. Under ``torchrun`` the
model is wrapped in DistributedDataParallel (:mod:`histozoom.training.distributed`);
rank 0 validates and writes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..data.augment import PairedAugment
from ..data.base import DatasetSpec, PairSplit
from ..data.open import open_dataset
from ..data.samples import PairDataset, SampleConfig
from ..data.splits import ConcatSplit, fold_splits
from ..errors import InputError
from ..evaluation import score_split, split_ground_truth
from ..inference.decode import PeakConfig
from ..inference.predictor import Predictor
from ..models.checkpoint import from_pretrained
from ..models.registry import get_config, model_family
from .config import TRAIN_CONFIG_FILE, TrainConfig, size_problem
from .distributed import SINGLE, DistInfo, unwrap
from .loop import CHECKPOINT_NAME, RunLoop
from .losses import CellTissueLoss
from .recipe import recipe_loss
from .sampling import class_balance_weights

TEST_PREDICTIONS = "test_predictions.json"


def param_groups(model: torch.nn.Module, lr: float, cell_lr_ratio: float, weight_decay: float) -> list[dict]:
    """Adam parameter groups: ``cell`` (the cell branch and the tissue→cell exchange convs,
    LR = ``lr · cell_lr_ratio``) and ``tissue`` (the tissue branch and cell→tissue convs,
    LR = ``lr``). A model without a tissue branch has only the ``cell`` group."""
    cell, tissue = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (cell if name.startswith(("cell.", "t2c.")) else tissue).append(p)
    groups = [{"params": cell, "lr": lr * cell_lr_ratio, "name": "cell", "weight_decay": weight_decay}]
    if tissue:
        groups.append({"params": tissue, "lr": lr, "name": "tissue", "weight_decay": weight_decay})
    return groups


class Trainer(RunLoop):
    """One OCELOT cell–tissue training run in ``run_dir`` (see the module doc). ``fit()``
    trains (or continues with ``resume=True``), tests the best checkpoint and returns the
    summary."""

    config_file = TRAIN_CONFIG_FILE
    score_key = "mF1"
    test_predictions = TEST_PREDICTIONS

    def setup(self) -> None:
        ds = open_dataset(self.cfg.data, allow_outside_paths=self.cfg.allow_outside_paths)
        self.spec: DatasetSpec = ds.spec
        self.train_split, self.val_split = self._train_val(ds)
        self.test_split = ds.split(self.cfg.test_split) if self.cfg.test_split in ds.splits else None
        missing = [s for s in self.train_split.ids if self.train_split.points(s) is None]
        if missing:
            raise InputError(self.cfg.data,
                             f"training split {self.cfg.train_split!r}: sample {missing[0]!r} has no cell annotations")
        if len(self.train_split) == 0:
            raise InputError(self.cfg.data, f"training split {self.cfg.train_split!r} is empty")

        if model_family(self.cfg.model) != "cell-tissue":
            raise InputError(None, f"model {self.cfg.model!r} is a {model_family(self.cfg.model)} model; "
                                   "train it with 'histozoom nuclei train'")
        tc = self.spec.tissue_classes
        self.model_config = get_config(self.cfg.model, **self.cfg.model_kwargs(
            len(self.spec.cell_classes), len(tc) if tc is not None else None))
        if (self.model_config.tissue_branch or self.model_config.leak_tissue_labels) and tc is None:
            raise InputError(self.cfg.data,
                             f"model {self.cfg.model!r} needs tissue annotations; the dataset has no tissue classes")
        if self.model_config.leak_tissue_labels and tuple(tc.ids) != tuple(range(1, len(tc) + 1)):
            # the model one-hots leaked labels as id k + 1 -> channel k (models.cell_tissue.tissue_index)
            raise InputError(self.cfg.data, f"label leaking needs tissue class ids 1..{len(tc)}, got {list(tc.ids)}")
        mc = self.model_config
        problem = size_problem("size", self.cfg.size, self.cfg.model, mc.size_multiple)  # the model says
        if problem:
            raise InputError(None, problem)
        tissue_weight = self.cfg.tissue_weight if (mc.tissue_branch and mc.tissue_supervised) else 0.0
        self.loss_name = recipe_loss(self.cfg.recipe, self.cfg.loss)
        self.loss_fn = CellTissueLoss(self.spec.cell_classes, tc, self.cfg.cell_weight, tissue_weight,
                                      tissue_in_cell_frame=mc.tissue_input == "cell", loss=self.loss_name,
                                      target=self.cfg.target).to(self.device)
        self.mask_key = None
        if mc.leak_tissue_labels:
            self.mask_key = "tissue_target_cell" if mc.tissue_input == "cell" else "tissue_target"
        self.peak = PeakConfig(**self.cfg.peak_settings())

    def _train_val(self, ds) -> tuple[PairSplit, PairSplit | None]:
        """The training and validation splits the config asks for: the dataset's named
        splits; with ``folds`` the training split without fold ``fold`` and that fold; with
        ``retrain_all`` the training and validation splits together, no validation."""
        cfg = self.cfg
        if cfg.train_split not in ds.splits:
            raise InputError(cfg.data, f"split {cfg.train_split!r} not found (available: {', '.join(ds.splits)})")
        train = ds.split(cfg.train_split)
        val = ds.split(cfg.val_split) if cfg.val_split in ds.splits else None
        if cfg.folds is not None:
            train, val = fold_splits(train, cfg.folds, cfg.fold, cfg.split_seed)
            self.log(f"fold {cfg.fold} of {cfg.folds} (slides grouped, organs stratified, split seed "
                     f"{cfg.split_seed}): {len(train)} training, {len(val)} validation pairs")
        elif cfg.retrain_all:
            if val is not None:
                train = ConcatSplit([train, val], f"{cfg.train_split}+{cfg.val_split}")
            val = None
            self.log(f"retraining on {len(train)} pairs (no validation: the last epoch is kept)")
        elif cfg.val_split and val is None:
            self.log(f"no split {cfg.val_split!r}: no validation; the last epoch is kept as best")
        return train, val

    def model_views(self) -> dict:
        """What the model reads (for slides): per view its input side in pixels and µm/px
        after the training resize, from the first training pair."""
        if getattr(self, "_views", None) is None:
            pair = self.train_split[0]
            out = {}
            for view, (w, _), mpp in (("cell", pair.cell_size, pair.cell_mpp), ("tissue", pair.tissue_size, pair.tissue_mpp)):
                side = self.cfg.size or w
                out[view] = {"size": int(side), "mpp": float(mpp) * w / side}
            self._views = out
        return self._views

    def extra(self, epoch: int, val: dict | None) -> dict:
        return {"spec": self.spec.to_dict(), "size": self.cfg.size, "views": self.model_views(),
                "peak": dataclasses.asdict(self.peak), "normalize": self.cfg.normalize, "target": self.cfg.target,
                "epoch": epoch, "val": val, "train_config": self.cfg.to_dict()}

    # ------------------------------------------------------------------ the task
    def make_model(self) -> torch.nn.Module:
        return self.model_config.build()

    def make_param_groups(self, model: torch.nn.Module, lr: float) -> list[dict]:
        return param_groups(model, lr, self.cfg.cell_lr_ratio, self.cfg.weight_decay)

    def resolve_extra(self) -> dict[str, Any]:
        return {"loss": self.loss_name}

    def make_train_set(self) -> PairDataset:
        augment = PairedAugment(seed=self.cfg.seed) if self.cfg.augment else None
        sample = SampleConfig(size=self.cfg.size, heatmaps=self.cfg.target == "gaussian", normalize=self.cfg.normalize)
        return PairDataset(self.train_split, sample, augment)

    def sample_weights(self) -> list[float] | None:
        if self.cfg.sampling != "class-balanced":
            return None
        points = [self.train_split.points(i) for i in self.train_split.ids]
        return class_balance_weights(points, self.spec.cell_classes.ids).tolist()

    def unused_parameters(self) -> bool:
        mc = self.model_config
        # the tissue head feeds nothing when its loss is off and no prediction is injected
        return bool(mc.tissue_branch and self.loss_fn.tissue_weight == 0 and mc.inject is None)

    def forward(self, model: torch.nn.Module, batch: dict) -> Any:
        return model(batch["cell_image"], batch["tissue_image"], batch["windows"],
                     batch.get(self.mask_key) if self.mask_key else None)

    def loss(self, outputs: Any, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss_fn(outputs, batch)

    def predictor(self, model: torch.nn.Module | None = None, tta: bool = False) -> Predictor:
        return Predictor(unwrap(model or self.model), self.spec, size=self.cfg.size, peak_cfg=self.peak,
                         normalize=self.cfg.normalize, device=self.device, tta=tta, batch_size=self.cfg.batch_size,
                         num_workers=self.num_workers, amp=self.amp)

    def validate(self) -> dict | None:
        if self.val_split is None:
            return None
        if not hasattr(self, "_val_gt"):
            self._val_gt = split_ground_truth(self.val_split)
        pred = self.predictor().predict_split(self.val_split)
        s = score_split(pred, self.val_split, self._val_gt)
        return {"mF1": s["mF1"], "f1": s["f1"]}

    def test(self) -> dict | None:
        """Predict the test split with the best checkpoint; write the challenge JSON and
        return its scores (``None`` without a test split or where it has no ground truth)."""
        if self.test_split is None:
            return None
        model = from_pretrained(self.run / CHECKPOINT_NAME, map_location=str(self.device))
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        pred = self.predictor(model).predict_split(self.test_split)
        pred.write_challenge_json(self.run / TEST_PREDICTIONS)
        gt = split_ground_truth(self.test_split)
        if not gt:
            return None
        s = score_split(pred, self.test_split, gt)
        organ_images: dict[str, int] = {}
        for organ in pred.organs.values():
            organ_images[organ] = organ_images.get(organ, 0) + 1
        return {"mF1": s["mF1"], "f1": s["f1"], "organs": s["organs"], "organ_images": organ_images,
                "counts": {n: dict(zip(("tp", "fp", "n_gt"), (int(v) for v in row)))
                           for n, row in zip(s["counts"].classes.names, s["counts"].totals)}}


def train(cfg: TrainConfig, run_dir: str | Path, resume: bool = False, dist_info: DistInfo = SINGLE,
          log: Callable[[str], None] | None = None) -> dict:
    """Train one run (see :class:`Trainer`); returns its summary."""
    return Trainer(cfg, run_dir, resume=resume, dist_info=dist_info, log=log).fit()
