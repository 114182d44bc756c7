"""Training a cell–tissue model (``histozoom train``): one run = one folder.

>>> from histozoom.training.trainer import train
>>> from histozoom.training.config import TrainConfig
>>> summary = train(TrainConfig(data="DATA", model="pred-to-inter-2", epochs=300), "RUN")

What a run folder holds (every file written atomically; folders swapped in whole)::

    RUN/train_config.json   the TrainConfig (JSON)
    RUN/best.ckpt/          the best-validation-epoch model: config.json + model.safetensors
                            (histozoom.models.checkpoint format; ``extra`` holds the dataset
                            spec, the training size, peak settings, epoch and val scores)
    RUN/last/               the last finished epoch: config.json + model.safetensors +
                            state.pt (optimizer, scheduler, RNG states, epoch, best score,
                            history) — what ``resume`` continues from
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

import csv
import io
import json
import os
import random
import shutil
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from ..atomic import atomic_open, atomic_path, write_json
from ..data.augment import PairedAugment
from ..data.base import DatasetSpec, PairSplit
from ..data.open import open_dataset
from ..data.samples import PairDataset, SampleConfig
from ..errors import InputError
from ..inference.decode import PeakConfig
from ..inference.predictor import CHECKPOINT_NAME, Predictor, score_split, split_ground_truth
from ..models.checkpoint import from_pretrained, save_pretrained
from ..models.registry import get_config
from .config import TRAIN_CONFIG_FILE, TrainConfig
from .distributed import SINGLE, DistInfo, EpochSampler, barrier, broadcast_object, unwrap
from .losses import CellTissueLoss

LAST_DIR = "last"
STATE_FILE = "state.pt"
LOG_FILE = "log.csv"
DONE_FILE = "done.json"
TEST_PREDICTIONS = "test_predictions.json"


# ---------------------------------------------------------------------- small helpers
def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (``numpy.random.SeedSequence``)."""
    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder next to ``path``; on success it replaces ``path``.

    The old folder is renamed aside first and removed after the swap; if a crash leaves
    only the aside copy, :func:`recover_dir` puts it back.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp"
    old = path.parent / f".{path.name}.old"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old.exists():
        shutil.rmtree(old)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(path: str | Path) -> None:
    """Undo an interrupted :func:`atomic_dir` swap (the aside copy goes back)."""
    path = Path(path)
    old = path.parent / f".{path.name}.old"
    if not path.exists() and old.exists():
        os.replace(old, path)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(None, f"device {device!r} asked for but CUDA is not available")
    return device


def _collate(samples: list[dict]) -> dict:
    """Default collate over the keys every sample has (a pair without a tissue mask
    drops the tissue targets of its batch instead of failing)."""
    keys = set(samples[0])
    for s in samples[1:]:
        keys &= set(s)
    return default_collate([{k: s[k] for k in keys} for s in samples])


class SeededPairs(Dataset):
    """:class:`~histozoom.data.samples.PairDataset` indexed by ``(epoch, index)`` keys
    (:class:`~histozoom.training.distributed.EpochSampler`): the augmentation generator is
    reseeded from ``(seed, epoch, index)`` before each sample, so augmentation is
    reproducible, differs across epochs and workers, and needs no per-worker state."""

    def __init__(self, split: PairSplit, cfg: SampleConfig, augment: PairedAugment | None, seed: int):
        self.data = PairDataset(split, cfg, augment)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        if self.data.augment is not None:
            self.data.augment.rng = np.random.default_rng([self.seed, epoch, index])
        return self.data[index]


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


def rng_state(augment: PairedAugment | None = None) -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if augment is not None:
        state["augment"] = augment.rng.bit_generator.state
    return state


def set_rng_state(state: dict, augment: PairedAugment | None = None) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if augment is not None and "augment" in state:
        augment.rng.bit_generator.state = state["augment"]


def _write_log(path: Path, history: list[dict]) -> None:
    keys: list[str] = []
    for row in history:
        keys.extend(k for k in row if k not in keys)
    with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        for row in history:
            w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in keys})


def _tensorboard(folder: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - tensorboard is optional
        return None
    return SummaryWriter(str(folder), purge_step=purge_step)


def read_done(run: str | Path) -> dict | None:
    """The summary of a finished run (``RUN/done.json``), else ``None``."""
    path = Path(run) / DONE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


# ---------------------------------------------------------------------- the trainer
class Trainer:
    """One training run in ``run_dir`` (see the module doc). ``fit()`` trains (or
    continues with ``resume=True``), tests the best checkpoint and returns the summary."""

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: str | Path,
        resume: bool = False,
        dist_info: DistInfo = SINGLE,
        log: Callable[[str], None] | None = None,
    ):
        self.run = Path(run_dir)
        self.dist = dist_info
        self.log = log or (lambda msg: None)
        self.cfg = self._check_run_dir(cfg, resume)
        self.resume = resume
        device = resolve_device(self.cfg.device)
        if device == "cuda" and dist_info.enabled:
            device = f"cuda:{dist_info.local_rank}"
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        self.amp = cuda if self.cfg.amp is None else (self.cfg.amp and cuda)
        self.channels_last = cuda if self.cfg.channels_last is None else self.cfg.channels_last
        self.deterministic = (not cuda) if self.cfg.deterministic is None else self.cfg.deterministic
        nw = self.cfg.num_workers
        self.num_workers = (0 if not cuda else min(8, os.cpu_count() or 1)) if nw is None else nw

        ds = open_dataset(self.cfg.data)
        self.spec: DatasetSpec = ds.spec
        for name in (self.cfg.train_split,):
            if name not in ds.splits:
                raise InputError(self.cfg.data, f"split {name!r} not found (available: {', '.join(ds.splits)})")
        self.train_split = ds.split(self.cfg.train_split)
        self.val_split = ds.split(self.cfg.val_split) if self.cfg.val_split in ds.splits else None
        self.test_split = ds.split(self.cfg.test_split) if self.cfg.test_split in ds.splits else None
        if self.cfg.val_split and self.val_split is None:
            self.log(f"no split {self.cfg.val_split!r}: no validation; the last epoch is kept as best")
        missing = [s for s in self.train_split.ids if self.train_split.points(s) is None]
        if missing:
            raise InputError(self.cfg.data, f"training split {self.cfg.train_split!r}: sample {missing[0]!r} has no cell annotations")
        if len(self.train_split) == 0:
            raise InputError(self.cfg.data, f"training split {self.cfg.train_split!r} is empty")

        tc = self.spec.tissue_classes
        self.model_config = get_config(self.cfg.model, **self.cfg.model_kwargs(
            len(self.spec.cell_classes), len(tc) if tc is not None else None))
        if (self.model_config.tissue_branch or self.model_config.leak_tissue_labels) and tc is None:
            raise InputError(self.cfg.data, f"model {self.cfg.model!r} needs tissue annotations; the dataset has no tissue classes")
        if self.model_config.leak_tissue_labels and tuple(tc.ids) != tuple(range(1, len(tc) + 1)):
            # the model one-hots leaked labels as id k + 1 -> channel k (models.cell_tissue.tissue_index)
            raise InputError(self.cfg.data, f"label leaking needs tissue class ids 1..{len(tc)}, got {list(tc.ids)}")
        mc = self.model_config
        tissue_weight = self.cfg.tissue_weight if (mc.tissue_branch and mc.tissue_supervised) else 0.0
        self.loss_fn = CellTissueLoss(self.spec.cell_classes, tc, self.cfg.cell_weight, tissue_weight,
                                      tissue_in_cell_frame=mc.tissue_input == "cell").to(self.device)
        self.mask_key = None
        if mc.leak_tissue_labels:
            self.mask_key = "tissue_target_cell" if mc.tissue_input == "cell" else "tissue_target"
        self.peak = PeakConfig(self.cfg.peak_min_distance_um, self.cfg.peak_threshold)

    # ------------------------------------------------------------------ run folder
    def _check_run_dir(self, cfg: TrainConfig, resume: bool) -> TrainConfig:
        saved_path = self.run / TRAIN_CONFIG_FILE
        if not self.dist.is_main and not resume:
            return cfg  # rank 0 checks the folder (and may already have written the config)
        if saved_path.is_file():
            saved = TrainConfig.load(saved_path)
            if not resume:
                raise InputError(self.run, "a training run exists here; continue it with resume (--resume) or choose a new --out")
            diff = saved.differences(cfg)
            if diff:
                listed = ", ".join(f"{k}: saved {a!r} vs given {b!r}" for k, a, b in ((k, *v) for k, v in diff.items()))
                raise InputError(saved_path, f"resume with different settings: {listed}")
            runtime = {k: getattr(cfg, k) for k in ("device", "num_workers", "progress", "tensorboard", "stop_after")}
            return saved.replace(**runtime)
        if self.run.exists() and any(self.run.iterdir()) and not resume:
            raise InputError(self.run, "output folder exists and is not a training run; choose a new --out")
        return cfg

    def _extra(self, epoch: int, val: dict | None) -> dict:
        return {"spec": self.spec.to_dict(), "size": self.cfg.size,
                "peak": {"min_distance_um": self.peak.min_distance_um, "threshold": self.peak.threshold},
                "epoch": epoch, "val": val, "train_config": self.cfg.to_dict()}

    # ------------------------------------------------------------------ building
    def build(self):
        """Model, optimizer, scheduler, data loader (and the DDP wrapper)."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        model = self.model_config.build().to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.optimizer = torch.optim.Adam(param_groups(model, cfg.lr, cfg.cell_lr_ratio, cfg.weight_decay))
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, cfg.milestone_epochs(), cfg.gamma)
        self.augment = PairedAugment(seed=cfg.seed) if cfg.augment else None
        self.train_set = SeededPairs(self.train_split, SampleConfig(size=cfg.size), self.augment, cfg.seed)
        n_local = -(-len(self.train_set) // self.dist.world_size)
        self.sampler = EpochSampler(len(self.train_set), self.dist, cfg.seed, shuffle=True)
        bs = min(cfg.batch_size, n_local)
        drop_last = n_local > 1 and n_local % bs == 1  # a batch of one breaks BatchNorm in training
        self.loader = DataLoader(self.train_set, batch_size=bs, sampler=self.sampler, num_workers=self.num_workers,
                                 collate_fn=_collate, drop_last=drop_last, pin_memory=self.device.type == "cuda",
                                 persistent_workers=self.num_workers > 0)
        self.ddp = model
        if self.dist.enabled:
            if cfg.sync_bn:
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
                self.model = model
            mc = self.model_config
            # the tissue head feeds nothing when its loss is off and no prediction is injected
            unused = mc.tissue_branch and self.loss_fn.tissue_weight == 0 and mc.inject is None
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=bool(unused))
        self.history: list[dict] = []
        self.best = {"epoch": 0, "mF1": None}
        self.start_epoch = 1

    def _load_last(self) -> None:
        last = self.run / LAST_DIR
        recover_dir(last)
        if not (last / STATE_FILE).is_file():
            return
        from safetensors.torch import load_file

        self.model.load_state_dict(load_file(str(last / "model.safetensors"), device=str(self.device)))
        state = torch.load(last / STATE_FILE, map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"], self.augment)
        self.history = state["history"]
        self.best = state["best"]
        self.start_epoch = int(state["epoch"]) + 1
        self.log(f"resuming after epoch {state['epoch']} (best so far: epoch {self.best['epoch']}, mF1 {self.best['mF1']})")

    def _save_last(self, epoch: int) -> None:
        state = {"epoch": epoch, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "rng": rng_state(self.augment), "best": self.best, "history": self.history,
                 "train_config": self.cfg.to_dict()}
        with atomic_dir(self.run / LAST_DIR) as tmp:
            save_pretrained(self.model, tmp, self._extra(epoch, self.history[-1].get("val") if self.history else None))
            buf = io.BytesIO()
            torch.save(state, buf)
            with atomic_path(tmp / STATE_FILE) as p:
                p.write_bytes(buf.getvalue())

    # ------------------------------------------------------------------ steps
    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else nullcontext()

    def train_step(self, batch: dict) -> dict[str, float]:
        """One optimisation step on a collated batch; returns the loss and its parts."""
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
        cell, tissue = batch["cell_image"], batch["tissue_image"]
        if self.channels_last:
            cell = cell.contiguous(memory_format=torch.channels_last)
            tissue = tissue.contiguous(memory_format=torch.channels_last)
        with self._autocast():
            out = self.ddp(cell, tissue, batch["windows"], batch.get(self.mask_key) if self.mask_key else None)
        loss, parts = self.loss_fn(out, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.detach()), **parts}

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self.ddp.train()
        sums: dict[str, float] = {}
        n = 0
        it: Any = self.loader
        bar = None
        if self.cfg.progress and self.dist.is_main:
            from tqdm.auto import tqdm

            it = bar = tqdm(self.loader, desc=f"epoch {epoch}/{self.cfg.epochs}", leave=False, dynamic_ncols=True)
        for b, batch in enumerate(it):
            if self.cfg.max_train_batches is not None and b >= self.cfg.max_train_batches:
                break
            parts = self.train_step(batch)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
            if bar is not None:
                bar.set_postfix(loss=f"{parts['loss']:.4f}")
        if bar is not None:
            bar.close()
        return {k: v / max(n, 1) for k, v in sums.items()}

    def predictor(self, model: torch.nn.Module | None = None, tta: bool = False) -> Predictor:
        return Predictor(unwrap(model or self.model), self.spec, size=self.cfg.size, peak_cfg=self.peak,
                         device=self.device, tta=tta, batch_size=self.cfg.batch_size, num_workers=self.num_workers,
                         amp=self.amp)

    @torch.no_grad()
    def recalibrate_bn(self, n_batches: int) -> None:
        """Re-estimate BatchNorm running statistics as the average over ``n_batches``
        training batches of this epoch (train-mode forward, no gradient, weights unchanged)."""
        bns = [m for m in self.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if not bns or n_batches <= 0:
            return
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        was_training = self.model.training
        self.model.train()
        try:
            for b, batch in enumerate(self.loader):
                if b >= n_batches:
                    break
                batch = {k: v.to(self.device) for k, v in batch.items() if torch.is_tensor(v)}
                cell, tissue = batch["cell_image"], batch["tissue_image"]
                if self.channels_last:
                    cell = cell.contiguous(memory_format=torch.channels_last)
                    tissue = tissue.contiguous(memory_format=torch.channels_last)
                with self._autocast():
                    self.model(cell, tissue, batch["windows"], batch.get(self.mask_key) if self.mask_key else None)
        finally:
            for m, mom in zip(bns, momenta):
                m.momentum = mom
            self.model.train(was_training)

    def _validate(self) -> dict | None:
        if self.val_split is None:
            return None
        if not hasattr(self, "_val_gt"):
            self._val_gt = split_ground_truth(self.val_split)
        pred = self.predictor().predict_split(self.val_split)
        s = score_split(pred, self.val_split, self._val_gt)
        return {"mF1": s["mF1"], "f1": s["f1"]}

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict:
        """Train to ``cfg.epochs`` (or ``cfg.stop_after``), then test; returns the summary
        (also ``RUN/done.json`` once the schedule is complete)."""
        done = read_done(self.run)
        if done is not None and self.resume:
            self.log(f"{self.run} is finished already")
            return done
        prev_det = torch.are_deterministic_algorithms_enabled()
        prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
        prev_bench = torch.backends.cudnn.benchmark
        if self.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        try:
            return self._fit()
        finally:
            torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
            torch.backends.cudnn.benchmark = prev_bench

    def _fit(self) -> dict:
        cfg, main = self.cfg, self.dist.is_main
        if main:
            self.run.mkdir(parents=True, exist_ok=True)
            if not (self.run / TRAIN_CONFIG_FILE).is_file():
                cfg.save(self.run / TRAIN_CONFIG_FILE)
        barrier(self.dist)
        self.build()
        if self.resume:
            self._load_last()
        tb = _tensorboard(self.run / "tb", self.start_epoch) if (main and cfg.tensorboard) else None
        t_run = time.time()
        last_epoch = self.start_epoch - 1
        try:
            for epoch in range(self.start_epoch, cfg.epochs + 1):
                t0 = time.time()
                self.sampler.set_epoch(epoch)
                torch.manual_seed(derive_seed(cfg.seed, epoch, self.dist.rank))
                lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)}
                losses = self._train_epoch(epoch)
                self.scheduler.step()
                t_train = time.time() - t0
                val = None
                if main:
                    t1 = time.time()
                    if cfg.bn_recalibration:
                        self.recalibrate_bn(cfg.bn_recalibration)
                    val = self._validate()
                    row = {"epoch": epoch, **{f"lr_{k}": v for k, v in lrs.items()},
                           **{f"train_{k}": v for k, v in losses.items()}}
                    improved = val is None or self.best["mF1"] is None or val["mF1"] > self.best["mF1"]
                    if val is not None:
                        row["val_mF1"] = val["mF1"]
                        row.update({f"val_F1_{c}": f for c, f in val["f1"].items()})
                    row.update({"train_time_s": round(t_train, 3), "val_time_s": round(time.time() - t1, 3),
                                "best": bool(improved), "val": val})
                    if improved:
                        self.best = {"epoch": epoch, "mF1": None if val is None else val["mF1"]}
                        with atomic_dir(self.run / CHECKPOINT_NAME) as tmp:
                            save_pretrained(self.model, tmp, self._extra(epoch, val))
                    self.history.append(row)
                    self._save_last(epoch)
                    _write_log(self.run / LOG_FILE, [{k: v for k, v in r.items() if k != "val"} for r in self.history])
                    if tb is not None:
                        for k, v in row.items():
                            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch":
                                tb.add_scalar(k.replace("_", "/", 1), v, epoch)
                        tb.flush()
                    msg = f"epoch {epoch}/{cfg.epochs}: loss {losses.get('loss', float('nan')):.4f}"
                    if val is not None:
                        msg += f", val mF1 {val['mF1']:.4f}" + (" (best)" if improved else "")
                    self.log(msg + f" [{time.time() - t0:.1f}s]")
                barrier(self.dist)
                last_epoch = epoch
                if cfg.stop_after is not None and epoch >= cfg.stop_after and epoch < cfg.epochs:
                    self.log(f"stopping after epoch {epoch} (stop_after); continue with resume")
                    break
        finally:
            if tb is not None:
                tb.close()
        finished = last_epoch >= cfg.epochs
        summary = None
        if main:
            summary = self._summary(finished, time.time() - t_run)
            if finished:
                write_json(self.run / DONE_FILE, summary)
        summary = broadcast_object(summary, self.dist)
        return summary

    def _summary(self, finished: bool, seconds: float) -> dict:
        last = self.history[-1] if self.history else {}
        best_row = next((r for r in self.history if r["epoch"] == self.best["epoch"]), {})
        summary: dict[str, Any] = {
            "run": str(self.run), "model": self.cfg.model, "finished": finished,
            "epochs_done": last.get("epoch", 0), "epochs": self.cfg.epochs,
            "best_epoch": self.best["epoch"], "val": best_row.get("val"), "test": None,
            "checkpoint": str(self.run / CHECKPOINT_NAME), "seconds_this_session": round(seconds, 1),
            "train_seconds_total": round(sum(r.get("train_time_s", 0.0) for r in self.history), 1),
            "config": self.cfg.to_dict(),
        }
        if finished and self.test_split is not None:
            summary["test"] = self.test()
            summary["test_predictions"] = str(self.run / TEST_PREDICTIONS)
        return summary

    def test(self) -> dict | None:
        """Predict the test split with the best checkpoint; write the challenge JSON and
        return its scores (``None`` where the split has no ground truth)."""
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
