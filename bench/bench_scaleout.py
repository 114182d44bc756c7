"""Scale-out on this machine: a local Ray (2 CPUs) vs one process on the same slide, and
``--shard`` unions vs one run, measured in one run.

1. The same slide (synthetic, ``histozoom synth slide``), the same Pred-to-inter-2
   (ResNet-34, 256 px views at 0.2 / 0.8 µm/px, random weights with the background logit
   offset as in ``bench_slides.py``), the torch engine, batch 8: once in this process
   (2 reader threads, 2 torch threads), once on a local Ray with one model actor of 1.75
   CPUs (2 torch threads) and read tasks of 0.25 CPU. Reported: both wall times, their
   ratio with and without starting Ray, and whether the cells are identical.
2. Three small slides predicted by one run and by shards 0/2 and 1/2 into one folder:
   whether every slide's cells and ``slides.csv`` are identical.

    .venv/bin/python bench/bench_scaleout.py                 # about 5 min on 2 cores
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench_slides import _checkpoint, _slide
from histozoom.slides.job import SlideOptions, predict_slides
from histozoom.slides.outputs import read_cells
from histozoom.slides.runner import SlidePredictor


def _same_cells(a: Path, b: Path) -> bool:
    x, y = read_cells(a / "cells.parquet"), read_cells(b / "cells.parquet")
    return all(np.array_equal(x[c], y[c]) for c in ("x", "y", "class_id", "probability", "tissue_class"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side-mm", type=float, default=1.0)
    ap.add_argument("--work", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(2)
    import ray

    from histozoom.slides.ray_run import RayOptions

    with tempfile.TemporaryDirectory() as tmp:
        root = a.work or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        slide = _slide(root, a.side_mm, "scale")
        ckpt = _checkpoint(root, 256, "resnet34", slide, 0.1)
        sp = SlidePredictor.from_checkpoint(ckpt, engine="torch")
        opts = SlideOptions(batch_size=8, workers=2, progress=False, images=False, formats=("parquet",))
        t0 = time.perf_counter()
        local = predict_slides(sp, [slide], root / "local", opts)[0]
        t_local = time.perf_counter() - t0
        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        t_init = time.perf_counter() - t0
        t0 = time.perf_counter()
        on_ray = predict_slides(sp, [slide], root / "ray", opts, ray=RayOptions(actors=1, cpus_per_actor=1.75))[0]
        t_ray = time.perf_counter() - t0
        same = _same_cells(root / "local" / "scale", root / "ray" / "scale")
        print(f"Pred-to-inter-2 R34 on a {a.side_mm} mm slide ({local['tiles']} cell tiles, {local['cells']} cells), "
              "torch engine")
        print(f"  one process: {t_local:.1f} s; local Ray (2 CPUs, 1 actor): {t_ray:.1f} s + {t_init:.1f} s to start Ray")
        print(f"  Ray / one process: {t_ray / t_local:.3f} (with the start: {(t_ray + t_init) / t_local:.3f}); "
              f"cells identical: {same} ({on_ray['cells']} vs {local['cells']})")
        ray.shutdown()

        small = [_slide(root, 0.2, f"small{i}") for i in range(3)]
        predict_slides(sp, small, root / "one", opts)
        for i in range(2):
            predict_slides(sp, small, root / "sharded", opts, shard=(i, 2))
        same = all(_same_cells(root / "one" / s.stem, root / "sharded" / s.stem) for s in small)
        table = [(root / d / "slides.csv").read_text().splitlines() for d in ("one", "sharded")]
        strip = [[",".join(r.split(",")[:3]) for r in t] for t in table]  # slide, status, cells (seconds differ)
        print(f"--shard 0/2 + 1/2 vs one run over 3 slides: cells identical: {same}, "
              f"slides.csv identical: {strip[0] == strip[1]}")


if __name__ == "__main__":
    main()
