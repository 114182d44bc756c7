"""Cost of each OCELOT variant relative to the cell-only model, measured in one run.

For every variant: eval-mode forward seconds per pair (batch 1, cell and tissue both
``--size`` px, window 1/4 of the tissue side as in OCELOT), peak memory of that forward,
and the seconds of one training step (Adam, cross-entropy on both outputs) at
``--train-size`` px with batch ``--train-batch`` (>= 2: ASPP's image-pooling BatchNorm sees
one value per channel at batch 1).

Timing: all models are built in this process and timed round-robin (variant after
variant, ``--repeats`` rounds), reporting the fastest call, so a change in machine load
during the run hits every variant alike. On a CPU shared with other jobs use
``--threads 1``: with more threads every parallel region waits for descheduled workers. Memory: each variant's forward runs in its own
subprocess so peaks do not mix — on CUDA ``torch.cuda.max_memory_allocated`` (peak, and
peak minus what was held before the forward); on CPU the process's peak resident set
(``VmHWM``, reset through ``/proc/self/clear_refs`` before the forward when the kernel
allows it, else ``ru_maxrss``; glibc's mmap threshold fixed so freed tensors leave the
resident set), and that peak minus the resident set before the forward.

    python bench/bench_models.py                   # 1024 px, cuda if available
    python bench/bench_models.py --size 256 --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from histozoom.geometry import Placement
from histozoom.models.registry import build_model

VARIANTS = ["cell-only", "unet-cell-only", "tissue-label-leaking", "pred-to-input", "pred-to-inter-1",
            "pred-to-inter-2", "pred-to-output", "feature-sharing"]


def make_inputs(size: int, batch: int, device: torch.device):
    """Cell and tissue images of ``size`` px, OCELOT-like windows (1/4 side), a tissue mask."""
    g = torch.Generator().manual_seed(0)
    cell = torch.rand(batch, 3, size, size, generator=g).to(device)
    tissue = torch.rand(batch, 3, size, size, generator=g).to(device)
    mask = torch.randint(1, 3, (batch, size, size), generator=g).to(device)
    side = size / 4
    win = [Placement((size - side) / 2 + 8 * i, (size - side) / 2, side, side, (size, size), (size, size))
           for i in range(batch)]
    return cell, tissue, win, mask


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------- memory (subprocess)
def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _hwm_mib(reset_ok: bool) -> float:
    if reset_ok:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_worker(name: str, size: int, device: torch.device) -> dict:
    """Peak memory of one eval forward of ``name`` (run alone in a fresh process)."""
    torch.manual_seed(0)
    model = build_model(name).to(device).eval()
    cell, tissue, win, mask = make_inputs(size, 1, device)

    def forward():
        with torch.inference_mode():
            model(cell, tissue, win, mask)
        sync(device)

    forward()  # warm-up: allocator pools, kernels
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) / 2**20
        forward()
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        before = _rss_mib()
        reset_ok = _reset_hwm()
        forward()
        peak = _hwm_mib(reset_ok)
    return {"peak_mib": peak, "forward_extra_mib": max(peak - before, 0.0),
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def measure_memory(name: str, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-worker", name, "--size", str(args.size),
           "--device", args.device, "--threads", str(args.threads)]
    # A fixed glibc mmap threshold: large tensors are always mmapped and unmapped when
    # freed, so the resident-set peak follows the live tensors instead of heap caching.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{name}: memory worker failed\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------- timing (round-robin)
def time_round_robin(fns: dict, repeats: int) -> dict[str, float]:
    """Fastest of ``repeats`` calls per function, calling them in turn each round. The first
    (warm-up) round counts too: it is rarely the fastest, and skipping it would cost a
    whole extra round of training steps."""
    best = {k: float("inf") for k in fns}
    for _ in range(max(repeats, 1)):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def forward_fn(model, inputs, device):
    def run():
        with torch.inference_mode():
            model(*inputs)
        sync(device)
    return run


def train_step_fn(model, inputs, device):
    cell, tissue, win, mask = inputs
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(1)
    cell_t = torch.randint(0, model.config.n_cell_classes + 1, (cell.shape[0], *cell.shape[2:]), generator=g).to(device)
    tissue_t = torch.randint(0, model.config.n_tissue_classes, (tissue.shape[0], *tissue.shape[2:]), generator=g).to(device)

    def run():
        opt.zero_grad(set_to_none=True)
        out = model(cell, tissue, win, mask)
        loss = F.cross_entropy(out["cell_logits"], cell_t)
        if "tissue_logits" in out:
            loss = loss + F.cross_entropy(out["tissue_logits"], tissue_t)
        loss.backward()
        opt.step()
        sync(device)
    return run


# ---------------------------------------------------------------------- driver
def _ratio(v: float, ref: float) -> str:
    return f"{v / ref:5.2f}" if ref > 0 else "  n/a"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=1024, help="cell and tissue side for the forward (px)")
    p.add_argument("--train-size", type=int, default=512, help="cell and tissue side for the training step (px)")
    p.add_argument("--train-batch", type=int, default=2)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--repeats", type=int, default=6, help="forwards per variant, the first included (fastest reported)")
    p.add_argument("--train-repeats", type=int, default=3, help="training steps per variant, the first included (fastest reported)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch default); on a shared CPU, 1 avoids OpenMP stalls")
    p.add_argument("--variants", nargs="*", default=VARIANTS)
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker, args.size, device)))
        return 0

    names = list(dict.fromkeys(["cell-only", *args.variants]))
    rows = {n: {"variant": n, **measure_memory(n, args)} for n in names}
    print("  memory measured", file=sys.stderr, flush=True)

    torch.manual_seed(0)
    models = {n: build_model(n).to(device) for n in names}
    fwd_in = make_inputs(args.size, 1, device)
    for m in models.values():
        m.eval()
    fwd = time_round_robin({n: forward_fn(m, fwd_in, device) for n, m in models.items()}, args.repeats)
    print("  forward timed", file=sys.stderr, flush=True)
    train_in = make_inputs(args.train_size, args.train_batch, device)
    steps = {}
    for n, m in models.items():
        m.train()
        steps[n] = train_step_fn(m, train_in, device)
    train = time_round_robin(steps, args.train_repeats)
    for n in names:
        rows[n].update(forward_s=fwd[n], train_step_s=train[n])

    ref = rows["cell-only"]
    mem = "GPU max_memory_allocated" if device.type == "cuda" else "CPU peak RSS of a fresh process"
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"device {args.device} ({dev_name}); forward: batch 1, {args.size} px cell + {args.size} px tissue, eval; "
          f"train step: batch {args.train_batch}, {args.train_size} px, Adam; memory: {mem}")
    print("times: fastest of the round-robin repeats; × = ratio to cell-only in the same column; "
          "fwd+ = forward peak minus memory held before it")
    head = (f"{'variant':<22} {'params M':>8} {'fwd s/pair':>10} {'×':>5} {'peak MiB':>9} {'×':>5} "
            f"{'fwd+ MiB':>9} {'×':>5} {'train s':>8} {'×':>5}")
    print(head)
    print("-" * len(head))
    for r in rows.values():
        print(f"{r['variant']:<22} {r['params_m']:8.1f} {r['forward_s']:10.4f} {_ratio(r['forward_s'], ref['forward_s'])} "
              f"{r['peak_mib']:9.0f} {_ratio(r['peak_mib'], ref['peak_mib'])} "
              f"{r['forward_extra_mib']:9.0f} {_ratio(r['forward_extra_mib'], ref['forward_extra_mib'])} "
              f"{r['train_step_s']:8.3f} {_ratio(r['train_step_s'], ref['train_step_s'])}")
    if args.json:
        from histozoom.atomic import write_json

        write_json(args.json, {"args": {k: v for k, v in vars(args).items() if k != "memory_worker"},
                               "rows": list(rows.values())})
    return 0


if __name__ == "__main__":
    sys.exit(main())
