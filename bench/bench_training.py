"""Training cost per OCELOT variant, relative to cell-only, measured in one run.

For every variant, through the real trainer (:class:`histozoom.training.cell_tissue_trainer.Trainer`:
Dice losses, Adam with the per-branch groups, bf16 autocast + channels_last on CUDA):

* seconds per training step at batch ``--batch`` with both views at ``--size`` px
  (stored pairs of ``--data-size`` px are resized by the data pipeline, as ``--size`` does
  in ``histozoom train``), and samples per second;
* peak memory of training: on CUDA ``torch.cuda.max_memory_allocated`` over the timed
  steps; on CPU the peak resident set over one step (after a warm-up step) in a
  subprocess per variant, and that peak minus the resident set before the step (the
  step's working set) — with ``bench_models.py``'s probes;
* once, the data pipeline's samples per second (load → resize → augment → targets),
  single process, to compare with the model's.

Timing: the batches are loaded once up front; the variants are timed round-robin
(``--repeats`` rounds, one step each after a warm-up step), reporting the fastest round, so
a change in machine load hits every variant alike. Ratios are to cell-only from the same
run.

    python bench/bench_training.py                                 # 512 px, cuda if available
    python bench/bench_training.py --size 256 --device cpu --batch 2 --encoder resnet18
    python bench/bench_training.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

VARIANTS = ["cell-only", "tissue-label-leaking", "pred-to-input", "pred-to-inter-1", "pred-to-inter-2",
            "pred-to-output", "feature-sharing"]


def make_data(root: Path, size: int, n: int) -> Path:
    from histozoom.data.synthetic import SynthConfig
    from histozoom.evaluation import write_synthetic_dataset

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        write_synthetic_dataset(root, SynthConfig(preset="context", cell_size=size, tissue_size=size,
                                                  n_train=n, n_val=1, n_test=0, seed=0))
    return root


def trainer_for(args, variant: str, run: Path):
    from histozoom.training.cell_tissue_trainer import Trainer
    from histozoom.training.config import TrainConfig

    overrides = {"encoder_name": args.encoder}
    cfg = TrainConfig(data=str(args.data), model=variant, model_overrides=overrides, size=args.size, batch_size=args.batch,
                      epochs=1, device=args.device, num_workers=0, progress=False, tensorboard=False)
    t = Trainer(cfg, run)
    t.build()
    return t


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_models import hwm_mib, reset_hwm, rss_mib


def memory_child(args, variant: str) -> dict:
    """(In a subprocess) peak resident set over one training step of one variant, after a
    warm-up step (optimizer state and allocator pools exist by then)."""
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        t = trainer_for(args, variant, Path(tmp) / "run")
        batch = next(iter(t.loader))
        t.train_step(batch)
        base = rss_mib()
        reset_ok = reset_hwm()
        t.train_step(batch)
        peak = hwm_mib(reset_ok)
    return {"peak_mib": peak, "step_mib": max(peak - base, 0.0)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512, help="model input size (both views), default 512")
    p.add_argument("--data-size", type=int, help="stored pair size (default: --size)")
    p.add_argument("--data", type=Path, help="use this dataset instead of a synthetic one")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--encoder", default="resnet34")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--variants", nargs="+", default=VARIANTS)
    p.add_argument("--json", action="store_true")
    p.add_argument("--_memory-child", dest="memory_child", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.data_size = args.data_size or args.size
    torch.set_num_threads(args.threads)

    tmp = tempfile.TemporaryDirectory()
    if args.data is None:
        args.data = make_data(Path(tmp.name) / "data", args.data_size, max(2 * args.batch, 4))
    if args.memory_child:
        print(json.dumps(memory_child(args, args.memory_child)))
        return 0

    trainers = {v: trainer_for(args, v, Path(tmp.name) / f"run-{v}") for v in args.variants}
    first = trainers[args.variants[0]]
    device = first.device
    # the data pipeline, once (its cost does not depend on the variant)
    t0 = time.perf_counter()
    batches = [b for _, b in zip(range(2), first.loader)]
    n_loaded = sum(len(b["index"]) for b in batches)
    data_sps = n_loaded / (time.perf_counter() - t0)
    batch = batches[0]
    n = len(batch["index"])
    times = {v: [] for v in args.variants}
    mem = {}
    for _, t in trainers.items():  # warm-up
        t.train_step(batch)
    for _ in range(args.repeats):
        for v, t in trainers.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            s = time.perf_counter()
            t.train_step(batch)
            sync(device)
            times[v].append(time.perf_counter() - s)
            if device.type == "cuda":
                mem[v] = max(mem.get(v, 0.0), torch.cuda.max_memory_allocated(device) / 2**20)
    if device.type != "cuda":
        del trainers
        for v in args.variants:
            cmd = [sys.executable, __file__, "--size", str(args.size), "--data-size", str(args.data_size),
                   "--data", str(args.data), "--batch", str(args.batch), "--encoder", args.encoder, "--device",
                   args.device, "--threads", str(args.threads), "--_memory-child", v]
            # fixed glibc mmap threshold: freed tensors leave the resident set (as in bench_models.py)
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
            mem[v] = json.loads(out.strip().splitlines()[-1])
    ref = min(times[args.variants[0]])
    rows = []
    for v in args.variants:
        best = min(times[v])
        m = mem.get(v)
        rows.append({"variant": v, "step_s": best, "samples_per_s": n / best, "ratio_to_first": best / ref,
                     "peak_mib": m["peak_mib"] if isinstance(m, dict) else m,
                     "step_mib": m["step_mib"] if isinstance(m, dict) else None})
    result = {"device": str(device), "size": args.size, "data_size": args.data_size, "batch": n,
              "encoder": args.encoder, "threads": args.threads, "repeats": args.repeats,
              "amp_bf16": first.amp, "channels_last": first.channels_last,
              "data_pipeline_samples_per_s": data_sps, "variants": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"training step, {args.encoder}, batch {n}, {args.size} px (stored {args.data_size} px), {device}"
          f"{', bf16 + channels_last' if first.amp else ''}; fastest of {args.repeats} round-robin rounds")
    print(f"data pipeline (1 process): {data_sps:.1f} samples/s")
    mem_label = "peak MiB" if device.type == "cuda" else "peak RSS MiB (step working set)"
    print(f"{'variant':24s} {'s/step':>8s} {'samples/s':>10s} {'x cell-only':>12s} {mem_label:>30s}")
    for r in rows:
        mtxt = f"{r['peak_mib']:.0f}" + (f" ({r['step_mib']:.0f})" if r["step_mib"] is not None else "")
        print(f"{r['variant']:24s} {r['step_s']:8.3f} {r['samples_per_s']:10.2f} {r['ratio_to_first']:12.2f} {mtxt:>30s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
