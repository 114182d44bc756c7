"""Many slides on Ray: the tile batches of all slides as one Ray Data pipeline.

>>> predict_slides(sp, ["slides/"], "OUT", options, ray=RayOptions("auto", actors=8, gpus_per_actor=1))

A run (:func:`run_on_ray`, called by :func:`~.job.predict_slides`):

1. **Prepare**, in the driver, each slide to do with the runner's own ``prepare``: the
   region, the journal (``OUT/<slide>/.work``, so a run resumes as a local one does) and,
   where the model needs it, the tissue pass into the slide's stitched map.
2. **Tiles**: one Ray Dataset row per unfinished batch of every slide. ``map`` reads a
   batch's model inputs in Ray tasks (the runner's ``batch_reader``: no model; each worker
   keeps the slides it opened); ``map_batches`` runs them through a fixed pool of actors
   (:class:`TileModel`), one runner and so one model per actor (``gpus_per_actor`` GPUs
   each when on GPU), which decodes and writes the batch's journal part, atomically, as a
   local run does. The output folder must therefore be on storage every node sees.
3. **Finish**, in the driver, each slide from its journal with the runner's ``finish``:
   the same files as a local run, and identical detections (the same batches through the
   same code).

Actors build their runner with the runner's ``factory`` (set by ``from_checkpoint``: the
same checkpoint, device and engine) or, for a runner built by hand, a pickled copy.
"""

from __future__ import annotations

import pickle
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..ray_cluster import connect
from .job import SlideOptions, SlidePass, decode_behind, finish_prepared, part_path
from .reader import open_slide

__all__ = ["RayOptions", "TileModel", "run_on_ray"]


@dataclass(frozen=True)
class RayOptions:
    """``address``: ``None``/``"local"`` starts a Ray on this machine (or uses the one this
    process already started), ``"auto"`` joins the running cluster, else ``ray://…`` or
    ``host:port``. ``actors``: model actors (default: one per ``cpus_per_actor`` CPUs of the
    cluster, or one per GPU with ``gpus_per_actor``); ``cpus_per_actor``: CPUs each
    reserves (rounded: its torch threads; 1.75 leaves a quarter CPU for reading beside
    it); ``read_cpus``: CPUs each read task reserves."""

    address: str | None = None
    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    read_cpus: float = 0.25
    batches_per_call: int = 4
    """Tile batches an actor takes per call (the decoding of one overlaps the next's forward)."""

    def __post_init__(self):
        if self.cpus_per_actor <= 0 or self.gpus_per_actor < 0 or self.read_cpus <= 0:
            raise ValueError("cpus_per_actor and read_cpus must be > 0 and gpus_per_actor >= 0")
        if self.actors is not None and self.actors < 1:
            raise ValueError("actors must be >= 1")


# ---------------------------------------------------------------------- in the workers
OPEN_PER_WORKER = 4
"""Slides (with their tissue maps) a worker process keeps open; the least recently used
one is closed beyond that."""
_OPEN: OrderedDict[str, tuple[Any, Any]] = OrderedDict()


def _open(job: SlidePass) -> tuple[Any, Any]:
    """The job's slide and tissue map (or ``None``), opened once per worker process."""
    key = f"{job.slide}|{job.mpp}|{job.work}"
    if key in _OPEN:
        _OPEN.move_to_end(key)
        return _OPEN[key]
    while len(_OPEN) >= OPEN_PER_WORKER:
        slide, tmap = _OPEN.popitem(last=False)[1]
        slide.close()
        if tmap is not None:
            tmap.close()
    _OPEN[key] = (open_slide(job.slide, job.mpp), job.open_tissue_map())
    return _OPEN[key]


def _read(row: dict, reader: Callable) -> dict:
    job = pickle.loads(row["job"])
    slide, tmap = _open(job)
    inputs = reader(slide, job, tmap, list(row["tiles"]))
    return {**row, "inputs": pickle.dumps(inputs, protocol=pickle.HIGHEST_PROTOCOL)}


class TileModel:
    """A Ray Data actor: one runner (one model). Per call, a few rows (tile batches): each
    batch's forward, with the previous batch's decoding and writing of its journal part in
    a thread beside it (:func:`~.job.decode_behind`, as in a local run). Returns per row the
    slide, batch and model seconds."""

    def __init__(self, factory: Callable[[], Any], threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        self.runner = factory()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {"slide": [], "b": [], "model_s": []}
        rows = [(int(i), int(b), [int(k) for k in tiles], pickle.loads(job_bytes))
                for i, b, tiles, job_bytes in zip(batch["slide"], batch["b"], batch["tiles"], batch["job"])]
        inputs = (pickle.loads(payload) for payload in batch["inputs"])

        def forward(row, x):
            clock = self.runner.new_clock()
            result = self.runner.forward_batch(x, row[3], clock)
            out["slide"].append(row[0])
            out["b"].append(row[1])
            out["model_s"].append(clock.seconds)
            return result

        def write(row, result):
            i, b, tiles, job = row
            self.runner.write_batch(part_path(job.work, b), job, _open(job)[1], tiles, result)

        decode_behind(zip(rows, inputs), forward, write)
        return {k: np.asarray(v) for k, v in out.items()}


# ---------------------------------------------------------------------- in the driver
def _raise(e: Exception) -> Callable[[], dict]:
    def fail() -> dict:
        raise e

    return fail


def _actors(opts: RayOptions) -> int:
    import ray

    if opts.actors is not None:
        return opts.actors
    res = ray.cluster_resources()
    if opts.gpus_per_actor > 0:
        return max(1, int(res.get("GPU", 0) // opts.gpus_per_actor))
    return max(1, int(res.get("CPU", 1) // (opts.cpus_per_actor + opts.read_cpus)))


def run_on_ray(sp, pending: list[tuple[Path, Path, SlideOptions]], options: SlideOptions,
               opts: RayOptions) -> Iterator[tuple[Path, Callable[[], dict]]]:
    """For :func:`~.job.predict_slides`: ``(slide, call)`` per slide of ``pending``
    (``(slide, folder, options)``), ``call()`` returning its summary or raising its
    :class:`InputError` (module docstring)."""
    import ray

    connect(opts.address)
    prepared = []
    for path, folder, slide_opts in pending:
        t0 = time.perf_counter()
        try:
            with open_slide(path, slide_opts.mpp) as slide:
                prep = sp.prepare(slide, folder, slide_opts)
                prep.close()  # the map is on disk; workers open it themselves
        except InputError as e:
            yield path, _raise(e)
            continue
        prepared.append((path, folder, slide_opts, prep, t0))
    jobs = [p[3].job for p in prepared]
    rows = []
    for i, job in enumerate(jobs):
        light = pickle.dumps(replace(job, groups=[], todo=[]))  # what a batch needs, without every batch's tiles
        rows += [{"slide": i, "b": b, "tiles": job.groups[b], "job": light} for b in job.todo]
    model_s = np.zeros(len(jobs))
    if rows:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = options.progress
        factory = getattr(sp, "factory", None) or _copy_of(sp)
        threads = max(1, round(opts.cpus_per_actor))
        ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows) // opts.batches_per_call))
        ds = ds.map(_read, fn_kwargs={"reader": sp.batch_reader()}, num_cpus=opts.read_cpus)
        ds = ds.map_batches(TileModel, batch_size=opts.batches_per_call,
                            fn_constructor_kwargs={"factory": factory, "threads": threads},
                            compute=ray.data.ActorPoolStrategy(size=_actors(opts)), num_cpus=opts.cpus_per_actor,
                            num_gpus=opts.gpus_per_actor or None)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            np.add.at(model_s, batch["slide"].astype(np.int64), batch["model_s"])
    for i, (path, folder, slide_opts, prep, t0) in enumerate(prepared):
        missing = [b for b in prep.job.todo if not part_path(prep.job.work, b).is_file()]
        if missing:
            yield path, _raise(InputError(path, f"{len(missing)} tile batches were not written by the Ray workers; "
                                                "run again to resume"))
            continue
        yield path, _finisher(sp, path, folder, slide_opts, prep, float(model_s[i]), t0)


def _finisher(sp, path: Path, folder: Path, slide_opts: SlideOptions, prep, model_s: float, t0: float):
    def finish() -> dict:
        prep.clock.seconds += model_s
        prep.tmap = prep.job.open_tissue_map()
        with open_slide(path, slide_opts.mpp) as slide:
            return finish_prepared(sp, slide, prep, folder, slide_opts, t0)

    return finish


def _copy_of(sp) -> Callable[[], Any]:
    """A factory for a runner built by hand: its pickled copy (model included)."""
    import cloudpickle

    data = cloudpickle.dumps(sp)
    return lambda: pickle.loads(data)

