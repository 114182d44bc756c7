"""The training loop every histozoom trainer shares: one run = one folder.

A concrete trainer (:class:`~histozoom.training.cell_tissue_trainer.Trainer` for the OCELOT family,
:class:`~histozoom.training.nuclei_trainer.NucleiTrainer` for CHR-Net) subclasses
:class:`RunLoop` and supplies the task: the model, its parameter groups, the training
set, the loss of one batch, validation and test. The loop supplies the rest:

    RUN/<config file>       the run's config (JSON; ``config_file`` of the subclass)
    RUN/best.ckpt/          the best-validation epoch's model (histozoom.models.checkpoint format)
    RUN/last/               the last finished epoch: config.json + model.safetensors +
                            state.safetensors + state.json (optimizer, scheduler, RNG states,
                            epoch, best score, history; no pickle, see
                            :mod:`histozoom.training.resume_state`) — what ``resume`` continues from
    RUN/log.csv             one row per epoch: learning rates, losses, validation scores, times
    RUN/tb/                 TensorBoard events (when tensorboard is installed)
    RUN/done.json           written last: the summary (best epoch, validation and test scores)

Every file is written atomically and folders are swapped in whole. Reproducibility:
every epoch's randomness — shuffling, augmentation, dropout — is derived from
``(seed, epoch)`` (augmentation per sample: ``(seed, epoch, index)``), so a resumed run
repeats the uninterrupted one exactly (on CPU bit for bit). On CPU
``torch.use_deterministic_algorithms`` is on during training. On CUDA: bf16 autocast and
channels_last by default. Under ``torchrun`` the model is wrapped in
DistributedDataParallel; rank 0 validates and writes.

The config (a :class:`~histozoom.training.config.RunConfig`) names a recipe
(:mod:`histozoom.training.recipe`): what it resolves when the run starts — the LR (a range
test, :mod:`histozoom.training.lr_finder`, for ``default`` without ``lr``), the schedule,
the BatchNorm recalibration — is written into the saved config's ``resolved`` and reused on
resume. ``extend`` adds epochs after the schedule (``resume`` with a longer ``extend``).
"""

from __future__ import annotations

import copy
import csv
import math
import os
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from ..atomic import atomic_dir, atomic_open, check_output, recover_dir, write_json
from ..errors import InputError
from ..folder_lock import LOCK_FILE, folder_lock
from ..jsonio import read_json
from ..models.checkpoint import BEST_CHECKPOINT as CHECKPOINT_NAME
from ..models.checkpoint import WEIGHTS_FILE, save_pretrained
from .config import RUNTIME_FIELDS
from .distributed import SINGLE, DistInfo, EpochSampler, barrier, broadcast_object
from .lr_finder import MIN_STEPS as MIN_FINDER_STEPS
from .lr_finder import lr_range_test
from .recipe import FINAL_FRACTION, PAPER_LR, TAIL_START, auto_bn_batches, default_lr_factor
from .resume_state import LEGACY_STATE_FILE, STATE_FILE, read_resume_state, save_state

LAST_DIR = "last"
LOG_FILE = "log.csv"
DONE_FILE = "done.json"


# ---------------------------------------------------------------------- small helpers
def derive_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys (``numpy.random.SeedSequence``)."""
    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(None, f"device {device!r} asked for but CUDA is not available")
    return device


def collate_common(samples: list[dict]) -> dict:
    """Default collate over the keys every sample has (a sample without some target
    drops that target from its batch instead of failing)."""
    keys = set(samples[0])
    for s in samples[1:]:
        keys &= set(s)
    return default_collate([{k: s[k] for k in keys} for s in samples])


class SeededSamples(Dataset):
    """A dataset with an ``augment`` attribute (an object with an ``rng``), indexed by
    ``(epoch, index)`` keys (:class:`~histozoom.training.distributed.EpochSampler`): the
    augmentation generator is reseeded from ``(seed, epoch, index)`` before each sample,
    so augmentation is reproducible, differs across epochs and workers, and needs no
    per-worker state."""

    def __init__(self, data: Dataset, seed: int):
        self.data = data
        self.seed = seed

    def __len__(self) -> int:
        return len(self.data)  # type: ignore[arg-type]

    def __getitem__(self, key) -> dict:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        augment = getattr(self.data, "augment", None)
        if augment is not None:
            augment.rng = np.random.default_rng([self.seed, epoch, index])
        return self.data[index]


def rng_state(augment: Any = None) -> dict:
    """Every RNG state, as tensors (torch, CUDA) and plain numbers and lists (numpy, python,
    the augmentation generator), so that the resume state stores it without pickle."""
    # numpy's legacy global RNG is saved (and restored below) on purpose, so that a resumed run is exact
    name, key, pos, has_gauss, cached_gaussian = np.random.get_state()  # noqa: NPY002
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"bit_generator": str(name), "key": [int(k) for k in key], "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
             "python": {"version": int(version), "internal": [int(v) for v in internal], "gauss_next": gauss_next}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if augment is not None:
        state["augment"] = augment.rng.bit_generator.state
    return state


def set_rng_state(state: dict, augment: Any = None) -> None:
    """Restore what :func:`rng_state` returned (numpy and python states also as the tuples
    of their ``get_state``/``getstate``)."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    if isinstance(np_state, dict):
        np_state = (np_state["bit_generator"], np.asarray(np_state["key"], dtype=np.uint32), int(np_state["pos"]),
                    int(np_state["has_gauss"]), float(np_state["cached_gaussian"]))
    # restore numpy's legacy global RNG on purpose (see rng_state), for an exact resume
    np.random.set_state(np_state)  # noqa: NPY002
    py_state = state["python"]
    if isinstance(py_state, dict):
        gauss_next = py_state["gauss_next"]
        py_state = (int(py_state["version"]), tuple(int(v) for v in py_state["internal"]),
                    None if gauss_next is None else float(gauss_next))
    random.setstate(py_state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if augment is not None and "augment" in state:
        augment.rng.bit_generator.state = state["augment"]


def write_log(path: Path, history: list[dict]) -> None:
    """``history`` rows as CSV (columns: the union of keys in first-seen order)."""
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
    except Exception:
        return None
    return SummaryWriter(str(folder), purge_step=purge_step)


def read_done(run: str | Path) -> dict | None:
    """The summary of a finished run (``RUN/done.json``), else ``None``."""
    path = Path(run) / DONE_FILE
    if not path.is_file():
        return None
    try:
        return read_json(path, "run summary")
    except InputError:  # unreadable or half-copied: the run counts as not finished
        return None


def _better(score: float | None, best: float | None) -> bool:
    """Whether ``score`` beats ``best`` (no score or no best yet: yes; NaN counts as -inf)."""
    if score is None or best is None:
        return True
    as_num = lambda v: float("-inf") if v != v else v  # noqa: E731
    return as_num(score) > as_num(best)


# ---------------------------------------------------------------------- the loop
class RunLoop:
    """Generic training run in ``run_dir``. Subclasses set ``config_file`` and
    ``score_key`` (the validation score that selects the best epoch, higher is better)
    and implement :meth:`setup`, :meth:`make_model`, :meth:`make_param_groups`,
    :meth:`make_train_set`, :meth:`forward`, :meth:`loss`, :meth:`validate`,
    :meth:`test` and :meth:`extra`. ``test_predictions``: where :meth:`test` writes its
    predictions, relative to the run folder (named in the summary), or ``None``."""

    config_file = "train_config.json"
    score_key = "score"
    test_predictions: str | None = None
    runtime_fields = RUNTIME_FIELDS

    def __init__(self, cfg: Any, run_dir: str | Path, resume: bool = False, dist_info: DistInfo = SINGLE,
                 log: Callable[[str], None] | None = None):
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
        self.setup()

    # ------------------------------------------------------------------ the task (subclasses)
    def setup(self) -> None:
        """Open the data and derive the model config (called at the end of ``__init__``)."""
        raise NotImplementedError

    def make_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def make_param_groups(self, model: torch.nn.Module, lr: float) -> list[dict]:
        """Optimiser parameter groups at base learning rate ``lr``."""
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr,
                 "name": "all", "weight_decay": self.cfg.weight_decay}]

    def make_train_set(self) -> Dataset:
        """The training set (samples are dicts of tensors; an ``augment`` attribute with an
        ``rng`` is reseeded per sample)."""
        raise NotImplementedError

    def forward(self, model: torch.nn.Module, batch: dict) -> Any:
        """The model's outputs for a batch already on the device."""
        raise NotImplementedError

    def loss(self, outputs: Any, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def validate(self) -> dict | None:
        """Validation scores (must hold ``score_key``), or ``None`` without a validation split."""
        raise NotImplementedError

    def test(self) -> dict | None:
        """Test the best checkpoint (``RUN/best.ckpt``); its scores or ``None``."""
        raise NotImplementedError

    def extra(self, epoch: int, val: dict | None) -> dict:
        """JSON metadata stored with each checkpoint (``config.json``'s ``extra``)."""
        return {"epoch": epoch, "val": val, "train_config": self.cfg.to_dict()}

    def sample_weights(self) -> list[float] | None:
        """Per-sample drawing weights of the training set (``None``: a plain shuffle)."""
        return None

    def unused_parameters(self) -> bool:
        """Whether some parameters get no gradient (DDP's ``find_unused_parameters``)."""
        return False

    # ------------------------------------------------------------------ run folder
    def _check_run_dir(self, cfg: Any, resume: bool) -> Any:
        saved_path = self.run / self.config_file
        if not self.dist.is_main and not resume:
            return cfg  # rank 0 checks the folder (and may already have written the config)
        check_output(self.run, "folder")
        if saved_path.is_file():
            saved = type(cfg).load(saved_path)
            if not resume:
                raise InputError(self.run, "a training run exists here; continue it with resume (--resume) or choose a new --out")
            diff = saved.differences(cfg)
            n = len(saved.extend)
            if "extend" in diff and len(cfg.extend) > n and tuple(cfg.extend[:n]) == tuple(saved.extend):
                del diff["extend"]  # more epochs after the schedule: allowed
            if diff:
                listed = ", ".join(f"{k}: saved {a!r} vs given {b!r}" for k, a, b in ((k, *v) for k, v in diff.items()))
                hint = (" (to train longer, keep --epochs and add --extend N)" if "epochs" in diff else "")
                raise InputError(saved_path, f"resume with different settings: {listed}{hint}")
            return saved.replace(extend=cfg.extend, **{k: getattr(cfg, k) for k in self.runtime_fields})
        if self.run.exists() and any(p.name != LOCK_FILE for p in self.run.iterdir()) and not resume:
            raise InputError(self.run, "output folder exists and is not a training run; choose a new --out")
        return cfg

    # ------------------------------------------------------------------ building
    def build(self):
        """Model, optimizer, scheduler, data loader (and the DDP wrapper)."""
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        model = self.make_model().to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.train_set = SeededSamples(self.make_train_set(), cfg.seed)
        self.augment = getattr(self.train_set.data, "augment", None)
        n_local = -(-len(self.train_set) // self.dist.world_size)
        self.sampler = EpochSampler(len(self.train_set), self.dist, cfg.seed, shuffle=True,
                                    weights=self.sample_weights())
        bs = min(cfg.batch_size, n_local)
        drop_last = n_local > 1 and n_local % bs == 1  # a batch of one breaks BatchNorm in training
        self.loader = DataLoader(self.train_set, batch_size=bs, sampler=self.sampler, num_workers=self.num_workers,
                                 collate_fn=collate_common, drop_last=drop_last,
                                 pin_memory=self.device.type == "cuda", persistent_workers=self.num_workers > 0)
        self.ddp = model
        if self.dist.enabled:
            if cfg.sync_bn:
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
                self.model = model
            self.ddp = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.unused_parameters())
        self.history: list[dict] = []
        self.best: dict[str, Any] = {"epoch": 0, "score": None}
        self.start_epoch = 1
        self.steps_per_epoch = len(self.loader) if cfg.max_train_batches is None else min(len(self.loader),
                                                                                            cfg.max_train_batches)
        self._resolve_recipe()
        self.optimizer = torch.optim.Adam(self.make_param_groups(model, self.cfg.resolved["lr"]))
        if self.cfg.recipe == "paper":  # stepped once per epoch, exactly as the challenge baseline
            self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, cfg.milestone_epochs(), cfg.gamma)
            self.step_per_batch = False
        else:
            spe, c = self.steps_per_epoch, self.cfg
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, lambda s: default_lr_factor(s, spe, c.epochs, c.extend, c.warmup))
            self.step_per_batch = True

    # ------------------------------------------------------------------ the recipe
    def _resolve_recipe(self) -> None:
        """Fill ``cfg.resolved`` (kept from the saved config on resume): ``lr`` (given, the
        paper's, or found by the range test), ``bn_recalibration``, ``schedule``,
        ``steps_per_epoch``; and what :meth:`resolve_extra` adds."""
        cfg = self.cfg
        res = dict(cfg.resolved)
        if "lr" not in res:
            if cfg.lr is not None:
                res["lr"], res["lr_source"] = float(cfg.lr), "given"
            elif cfg.recipe == "paper":
                res["lr"], res["lr_source"] = PAPER_LR, "paper"
            else:
                found = self.find_lr()
                res["lr"], res["lr_source"], res["lr_finder"] = found.suggestion, "lr_finder", found.summary()
                self.log(f"learning rate {found.suggestion:.3g} from a range test over {len(found.lrs)} steps "
                         f"(loss falls fastest at {found.steepest_lr:.3g}, lowest at {found.minimum_lr:.3g}; "
                         f"{found.stopped})")
        if "bn_recalibration" not in res:
            res["bn_recalibration"] = (auto_bn_batches(cfg.recipe, self.steps_per_epoch)
                                       if cfg.bn_recalibration is None else int(cfg.bn_recalibration))
        res["steps_per_epoch"] = self.steps_per_epoch
        if cfg.recipe == "paper":
            res["schedule"] = {"kind": "multistep", "per": "epoch", "milestones": cfg.milestone_epochs(),
                               "gamma": cfg.gamma, "extensions": "constant at the last LR"}
        else:
            total = cfg.epochs * self.steps_per_epoch
            res["schedule"] = {"kind": "warmup+cosine", "per": "step", "steps": total,
                               "warmup_steps": math.ceil(cfg.warmup * total), "final_fraction": FINAL_FRACTION,
                               "extensions": f"cosine from {TAIL_START} to {FINAL_FRACTION} of the LR"}
        res.update(self.resolve_extra())
        self.cfg = cfg.replace(resolved=res)
        self.bn_batches = int(res["bn_recalibration"])
        if self.dist.is_main and (res != cfg.resolved or cfg.extend):
            self.cfg.save(self.run / self.config_file)  # a new run, new resolved values, or a longer extend

    def resolve_extra(self) -> dict[str, Any]:
        """More resolved values of the subclass's recipe (e.g. the loss)."""
        return {}

    def lr_finder_steps(self) -> int:
        """Range-test steps: ``cfg.lr_finder_steps``, but at most a quarter of the run's
        training steps (at least :data:`~.lr_finder.MIN_STEPS`), so a short run does not
        spend most of its budget finding its LR."""
        total = self.cfg.total_epochs() * self.steps_per_epoch
        return min(self.cfg.lr_finder_steps, max(MIN_FINDER_STEPS, total // 4))

    def find_lr(self):
        """The LR range test on this run's model and data (rank 0; broadcast to the others).
        Weights, BatchNorm statistics and the RNG are restored afterwards."""
        result = None
        if self.dist.is_main:
            snapshot = copy.deepcopy(self.model.state_dict())
            rng = torch.get_rng_state()
            groups = self.make_param_groups(self.model, 1.0)  # lr 1: each group's ratio to the base LR
            ratios = [g["lr"] for g in groups]
            opt = torch.optim.Adam(groups)
            batches = iter(())
            self.sampler.set_epoch(0)

            def step(lr: float) -> float:
                nonlocal batches
                try:
                    batch = next(batches)
                except StopIteration:
                    batches = iter(self.loader)
                    batch = next(batches)
                for g, r in zip(opt.param_groups, ratios, strict=True):
                    g["lr"] = lr * r
                self.model.train()
                return self.train_step(batch, self.model, opt)["loss"]

            try:
                result = lr_range_test(step, steps=self.lr_finder_steps())
            finally:
                self.model.load_state_dict(snapshot)
                torch.set_rng_state(rng)
                del opt
        return broadcast_object(result, self.dist)

    def _load_last(self) -> None:
        last = self.run / LAST_DIR
        recover_dir(last)
        state = read_resume_state(last)  # never unpickles; InputError naming the file on any defect
        if state is None:
            return
        from safetensors.torch import load_file

        weights = last / WEIGHTS_FILE
        if not weights.is_file():
            raise InputError(weights, "resume weights not found")
        try:
            model_state = load_file(str(weights), device=str(self.device))
        except Exception as err:  # safetensors raises its own error types on bad files
            raise InputError(weights, f"cannot read safetensors ({type(err).__name__}: {err})") from err
        try:
            self.model.load_state_dict(model_state)
        except RuntimeError as err:
            raise InputError(weights, f"weights do not fit this run's model: {err}") from err
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.step_per_batch:  # the LR of the next step under this config (an extension starts its tail)
                for g, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs, strict=True):
                    g["lr"] = base * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
            set_rng_state(state["rng"], self.augment)
            history, best, epoch = state["history"], state["best"], int(state["epoch"])
            if not (isinstance(history, list) and isinstance(best, dict) and {"epoch", "score"} <= set(best)):
                raise ValueError("'history' must be a list and 'best' an object with 'epoch' and 'score'")
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError, OverflowError) as err:
            name = STATE_FILE if (last / STATE_FILE).is_file() else LEGACY_STATE_FILE
            raise InputError(last / name, f"resume state does not fit this run ({type(err).__name__}: {err})") from err
        self.history, self.best, self.start_epoch = history, best, epoch + 1
        self.log(f"resuming after epoch {state['epoch']} (best so far: epoch {self.best['epoch']}, "
                 f"{self.score_key} {self.best['score']})")

    def _save_last(self, epoch: int) -> None:
        state = {"epoch": epoch, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "rng": rng_state(self.augment), "best": self.best, "history": self.history,
                 "train_config": self.cfg.to_dict()}
        with atomic_dir(self.run / LAST_DIR) as tmp:
            save_pretrained(self.model, tmp, self.extra(epoch, self.history[-1].get("val") if self.history else None))
            save_state(tmp, state)

    # ------------------------------------------------------------------ steps
    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp else nullcontext()

    def to_device(self, batch: dict) -> dict:
        """Tensors of ``batch`` on the device (image-like 4-D tensors channels_last on CUDA)."""
        out = {}
        for k, v in batch.items():
            if not torch.is_tensor(v):
                continue
            v = v.to(self.device, non_blocking=True)
            if self.channels_last and v.ndim == 4 and v.is_floating_point():
                v = v.contiguous(memory_format=torch.channels_last)
            out[k] = v
        return out

    def train_step(self, batch: dict, model: torch.nn.Module | None = None,
                   optimizer: torch.optim.Optimizer | None = None) -> dict[str, float]:
        """One optimisation step on a collated batch with ``model`` and ``optimizer``
        (default: the run's, DDP-wrapped); returns the loss and its parts."""
        model = self.ddp if model is None else model
        optimizer = self.optimizer if optimizer is None else optimizer
        batch = self.to_device(batch)
        with self._autocast():
            out = self.forward(model, batch)
        loss, parts = self.loss(out, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": float(loss.detach()), **parts}

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self.ddp.train()
        sums: dict[str, float] = {}
        n = 0
        it: Any = self.loader
        bar = None
        if self.cfg.progress and self.dist.is_main:
            from tqdm.auto import tqdm

            it = bar = tqdm(self.loader, desc=f"epoch {epoch}/{self.cfg.total_epochs()}", leave=False, dynamic_ncols=True)
        for b, batch in enumerate(it):
            if self.cfg.max_train_batches is not None and b >= self.cfg.max_train_batches:
                break
            parts = self.train_step(batch)
            if self.step_per_batch:
                self.scheduler.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
            if bar is not None:
                bar.set_postfix(loss=f"{parts['loss']:.4f}")
        if bar is not None:
            bar.close()
        return {k: v / max(n, 1) for k, v in sums.items()}

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
                with self._autocast():
                    self.forward(self.model, self.to_device(batch))
        finally:
            for m, mom in zip(bns, momenta):
                m.momentum = mom
            self.model.train(was_training)

    def epoch_hook(self, epoch: int) -> None:
        """Called before each epoch's training (e.g. to freeze or unfreeze parts)."""

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict:
        """Train to ``cfg.epochs`` (or ``cfg.stop_after``), then test; returns the summary
        (also ``RUN/done.json`` once the schedule is complete)."""
        done = read_done(self.run)
        if done is not None and self.resume and done.get("epochs_done", 0) >= self.cfg.total_epochs():
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

    def _epoch_row(self, epoch: int, lrs: dict, losses: dict, val: dict | None, improved: bool,
                   t_train: float, t_val: float) -> dict:
        row = {"epoch": epoch, **{f"lr_{k}": v for k, v in lrs.items()}, **{f"train_{k}": v for k, v in losses.items()}}
        if val is not None:
            for k, v in val.items():
                if isinstance(v, dict):
                    row.update({f"val_{k}_{c}": f for c, f in v.items() if not isinstance(f, (dict, list))})
                elif not isinstance(v, list):
                    row[f"val_{k}"] = v
        row.update({"train_time_s": round(t_train, 3), "val_time_s": round(t_val, 3), "best": bool(improved), "val": val})
        return row

    def _fit(self) -> dict:
        if not self.dist.is_main:
            return self._fit_locked()
        with folder_lock(self.run, "training run folder"):  # a second process on this run is refused
            return self._fit_locked()

    def _fit_locked(self) -> dict:
        cfg, main = self.cfg, self.dist.is_main
        if main:
            (self.run / DONE_FILE).unlink(missing_ok=True)  # finished runs returned in fit(): this one is going on
        barrier(self.dist)
        self.build()
        if self.resume:
            self._load_last()
        tb = _tensorboard(self.run / "tb", self.start_epoch) if (main and cfg.tensorboard) else None
        t_run = time.time()
        last_epoch = self.start_epoch - 1
        try:
            for epoch in range(self.start_epoch, cfg.total_epochs() + 1):
                t0 = time.time()
                self.sampler.set_epoch(epoch)
                torch.manual_seed(derive_seed(cfg.seed, epoch, self.dist.rank))
                self.epoch_hook(epoch)
                lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)}
                losses = self._train_epoch(epoch)
                if not self.step_per_batch:
                    self.scheduler.step()
                t_train = time.time() - t0
                if main:
                    t1 = time.time()
                    if self.bn_batches:
                        self.recalibrate_bn(self.bn_batches)
                    val = self.validate()
                    score = None if val is None else val.get(self.score_key)
                    if val is not None and score is None:
                        score = float("-inf")  # undefined this epoch (e.g. no class present): never better
                    improved = _better(score, self.best["score"])
                    row = self._epoch_row(epoch, lrs, losses, val, improved, t_train, time.time() - t1)
                    if improved:
                        self.best = {"epoch": epoch, "score": score}
                        with atomic_dir(self.run / CHECKPOINT_NAME) as tmp:
                            save_pretrained(self.model, tmp, self.extra(epoch, val))
                    self.history.append(row)
                    self._save_last(epoch)
                    write_log(self.run / LOG_FILE, [{k: v for k, v in r.items() if k != "val"} for r in self.history])
                    if tb is not None:
                        for k, v in row.items():
                            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch":
                                tb.add_scalar(k.replace("_", "/", 1), v, epoch)
                        tb.flush()
                    msg = f"epoch {epoch}/{cfg.total_epochs()}: loss {losses.get('loss', float('nan')):.4f}"
                    if score is not None:
                        msg += f", val {self.score_key} {score:.4f}" + (" (best)" if improved else "")
                    self.log(msg + f" [{time.time() - t0:.1f}s]")
                barrier(self.dist)
                last_epoch = epoch
                if cfg.stop_after is not None and epoch >= cfg.stop_after and epoch < cfg.total_epochs():
                    self.log(f"stopping after epoch {epoch} (stop_after); continue with resume")
                    break
        finally:
            if tb is not None:
                tb.close()
        finished = last_epoch >= cfg.total_epochs()
        summary = None
        if main:
            summary = self.summary(finished, time.time() - t_run)
            if finished:
                write_json(self.run / DONE_FILE, summary)
        return broadcast_object(summary, self.dist)

    def summary(self, finished: bool, seconds: float) -> dict:
        last = self.history[-1] if self.history else {}
        best_row = next((r for r in self.history if r["epoch"] == self.best["epoch"]), {})
        out: dict[str, Any] = {
            "run": str(self.run), "model": self.cfg.model, "finished": finished,
            "epochs_done": last.get("epoch", 0), "epochs": self.cfg.total_epochs(),
            "best_epoch": self.best["epoch"], "val": best_row.get("val"), "test": None,
            "checkpoint": str(self.run / CHECKPOINT_NAME), "seconds_this_session": round(seconds, 1),
            "train_seconds_total": round(sum(r.get("train_time_s", 0.0) for r in self.history), 1),
            "config": self.cfg.to_dict(),
        }
        if finished:
            out["test"] = self.test()
            if out["test"] is not None and self.test_predictions is not None:
                out["test_predictions"] = str(self.run / self.test_predictions)
        return out
