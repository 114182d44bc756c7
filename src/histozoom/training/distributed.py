"""DistributedDataParallel plumbing for ``torchrun`` (one process per GPU, or CPU processes
with the gloo backend).

Usage::

    torchrun --nproc-per-node 4 -m histozoom.cli.train --data DIR --model pred-to-inter-2 --out RUN --device cuda

:func:`init_from_env` reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (set by ``torchrun``),
starts the process group (NCCL on CUDA, gloo on CPU) and pins each process to its GPU.
Each process trains on its share of every epoch (:class:`EpochSampler` wraps
``DistributedSampler``); only rank 0 validates, writes checkpoints and logs, and the
others wait at a barrier. ``batch_size`` is per process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``; ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo()


def env_world_size() -> int:
    """``WORLD_SIZE`` from the environment (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def init_from_env(device: str = "cpu", backend: str | None = None) -> tuple[DistInfo, str]:
    """Start the process group when launched with ``WORLD_SIZE > 1``.

    Returns ``(info, device)``: on CUDA each process gets ``cuda:LOCAL_RANK``. An
    already-initialised group (e.g. a test that set it up) is reused.
    """
    world = env_world_size()
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        return SINGLE, device
    if not dist.is_initialized():
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank))
        cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"), rank=rank, world_size=world)
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", rank))
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        device = f"cuda:{local}"
    return DistInfo(rank, world, local), device


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(obj, info: DistInfo, src: int = 0):
    """``obj`` of rank ``src`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup(info: DistInfo) -> None:
    """Destroy the process group if this module's caller started one."""
    if info.enabled and dist.is_initialized():
        # every rank reaches this point before any tears down its connections: a rank
        # leaving while another is still in a collective can abort the process (gloo)
        dist.barrier()
        dist.destroy_process_group()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a ``DistributedDataParallel`` (or the model itself)."""
    return model.module if hasattr(model, "module") and isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` keys: this process's share of a shuffled epoch.

    The order is ``DistributedSampler``'s (a permutation seeded with ``seed + epoch``,
    split across ranks), so it depends on nothing but ``(seed, epoch, rank, world)``. The
    epoch travels with every index, so a dataset can seed its augmentation per sample
    and epoch — reproducible with any number of (persistent) workers and after resume.

    ``weights`` (one per sample): draw the epoch's ``n`` indices with replacement, each
    with probability proportional to its weight (``torch.multinomial`` seeded with
    ``seed + epoch``), rank ``r`` of ``w`` taking draws ``r, r + w, ...`` of
    ``⌈n / w⌉·w``; class-balanced sampling (:mod:`histozoom.training.sampling`).
    """

    def __init__(self, n: int, info: DistInfo = SINGLE, seed: int = 0, shuffle: bool = True, drop_last: bool = False,
                 weights: Sequence[float] | None = None):
        self.inner = DistributedSampler(range(n), num_replicas=info.world_size, rank=info.rank,
                                        shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if self.weights is not None and (len(self.weights) != n or not bool((self.weights >= 0).all())
                                         or not float(self.weights.sum()) > 0):
            raise ValueError(f"weights: {n} non-negative values with a positive sum expected")
        self.info, self.seed = info, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.inner.set_epoch(self.epoch)

    def _drawn(self) -> list[int]:
        world = self.info.world_size
        total = -(-len(self.weights) // world) * world
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        draws = torch.multinomial(self.weights, total, replacement=True, generator=g)
        return draws[self.info.rank::world].tolist()

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i in (self.inner if self.weights is None else self._drawn()):
            yield (self.epoch, int(i))

    def __len__(self) -> int:
        if self.weights is None:
            return len(self.inner)
        return -(-len(self.weights) // self.info.world_size)
