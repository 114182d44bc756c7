"""Training runs as Ray tasks: the runs of an experiment stage (grid points × seeds, a
rung of the sharing search) trained at once over a Ray cluster.

>>> run_experiment(cfg, "EXP", parallel=ray_parallel(RayTraining("auto", gpus_per_run=1)))

One task per run (``cpus_per_run`` CPUs, which are also its torch threads, and
``gpus_per_run`` GPUs), each calling the same trainer as a local run into the same run
folder, so the experiment folder must be on storage every node sees. A run's result
depends only on its config and seed (the data order, augmentation and initialisation are
seeded; torch uses ``cpus_per_run`` threads), so the results equal the sequential
runner's with the same thread count. A task that fails returns its exception, which the
experiment records in the run's ``failed.json`` as it does locally.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .config import TrainConfig

__all__ = ["RayTraining", "ray_parallel"]


@dataclass(frozen=True)
class RayTraining:
    """``address``: see :func:`histozoom.ray_cluster.connect`;
    ``cpus_per_run``/``gpus_per_run``: what each training task reserves."""

    address: str | None = None
    cpus_per_run: int = 1
    gpus_per_run: float = 0.0

    def __post_init__(self):
        if self.cpus_per_run < 1 or self.gpus_per_run < 0:
            raise ValueError("cpus_per_run must be >= 1 and gpus_per_run >= 0")


def _train_task(config: dict, run_dir: str, resume: bool, threads: int):
    import torch

    from .cell_tissue_trainer import train

    torch.set_num_threads(threads)
    try:
        return train(TrainConfig.from_dict(config), Path(run_dir), resume=resume)
    except Exception as e:  # returned, not raised: the experiment records it and goes on
        return e


def ray_parallel(opts: RayTraining) -> Callable[[list[tuple[TrainConfig, Path, bool]]], list]:
    """A ``parallel`` for :class:`~histozoom.training.experiment.Experiment`: trains the
    given ``(config, run_dir, resume)`` runs as Ray tasks and returns their summaries (or
    exceptions) in order."""

    def run(runs: list[tuple[TrainConfig, Path, bool]]) -> list:
        import ray

        from ..ray_cluster import connect

        connect(opts.address)
        task = ray.remote(_train_task).options(num_cpus=opts.cpus_per_run, num_gpus=opts.gpus_per_run or None,
                                               max_retries=0)
        refs = [task.remote(cfg.to_dict(), str(d), resume, opts.cpus_per_run) for cfg, d, resume in runs]
        out = []
        for ref in refs:
            try:
                out.append(ray.get(ref))
            except Exception as e:  # the task died (a node lost, out of memory): recorded like a failed run
                out.append(e)
        return out

    return run
