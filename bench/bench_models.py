"""Cost of each OCELOT variant relative to the cell-only model, measured in one run.

For every variant: eval-mode forward seconds per pair (batch 1, cell and tissue both
``--size`` px, window 1/4 of the tissue side as in OCELOT), peak memory of that forward,
and the seconds of one training step (Adam, cross-entropy on both outputs) at
``--train-size`` px with batch ``--train-batch`` (>= 2: ASPP's image-pooling BatchNorm sees
one value per channel at batch 1; ``--train-repeats 0`` skips the training step).

End-to-end inference: the same variant run through the real
:class:`~histozoom.inference.predictor.Predictor` (``size=--size``, no TTA, fp32 — no
autocast, so the forward it contains is the bare forward timed beside it) on an
in-memory :class:`~histozoom.pair.Pair` (random uint8 cell and tissue images of
``--size`` px, the same centred 1/4-side window, a tissue mask for label leaking):
``predict_pairs`` goes from uint8 arrays to points (resize, padding, uint8 → float,
tissue-mask handling, forward, softmax, peak decoding). The network runs in full, but by
default the cell logits it returns are swapped for synthetic trained-like ones
(:class:`TrainedLikeCellLogits`: ~300 cells per 1024² px, some with saturated centres):
a randomly initialised network's output at 1024 px saturates on most pixels and its
decoding would time ~10⁶ tied peak candidates that no trained model gives
(``--logits network`` decodes them anyway). Reported: its seconds per pair,
its ratio to the bare forward it contains (``e2e/fwd``; target <= 1.3, so decoding and
data handling do not dominate — rows above are flagged ``!``), the points it decoded,
and its peak memory (fresh process, as for the forward) with the ratio to the forward's
peak. ``--tta`` also times the 8-transform TTA and reports its time / 8 / bare forward
(the per-forward overhead with TTA). The end-to-end calls are timed in the same
round-robin as the bare forwards, so load changes hit both alike.

Timing: all models are built in this process and timed round-robin (variant after
variant, ``--repeats`` rounds), reporting the fastest call, so a change in machine load
during the run hits every variant alike. On a CPU shared with other jobs use
``--threads 1``: with more threads every parallel region waits for descheduled workers.
Memory: each variant's forward runs in its own
subprocess so peaks do not mix — on CUDA ``torch.cuda.max_memory_allocated`` (peak, and
peak minus what was held before the forward); on CPU the process's peak resident set
(``VmHWM``, reset through ``/proc/self/clear_refs`` before the forward when the kernel
allows it, else ``ru_maxrss``; glibc's mmap threshold fixed so freed tensors leave the
resident set), and that peak minus the resident set before the forward.

    python bench/bench_models.py                   # 1024 px, cuda if available
    python bench/bench_models.py --size 256 --device cpu
    python bench/bench_models.py --device cpu --threads 1 --repeats 2 --train-repeats 0   # 1024 px inference only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from histozoom.geometry import Placement
from histozoom.models.registry import build_model, size_multiples
from histozoom.pair import Pair

RATIO_TARGET = 1.3
"""End-to-end inference / bare forward above this is flagged (decoding and data must not dominate)."""

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


def make_pairs(size: int, n: int = 1) -> list[Pair]:
    """``n`` in-memory pairs for the predictor: random uint8 cell and tissue images of
    ``size`` px (OCELOT mpp 0.2 / 0.8), the window 1/4 of the tissue side centred, and a
    tissue mask with labels 1..2 (read by tissue-label leaking only)."""
    rng = np.random.default_rng(0)
    side = size / 4
    out = []
    for i in range(n):
        cell = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        tissue = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        mask = rng.integers(1, 3, (size, size), dtype=np.uint8)
        pl = Placement((size - side) / 2, (size - side) / 2, side, side, (size, size), (size, size))
        out.append(Pair(f"{i:03d}", cell, tissue, pl, tissue_mask=mask, cell_mpp=0.2, tissue_mpp=0.8))
    return out


CELLS_PER_MPX = 300
"""Cells per 1024² px of the synthetic trained-like cell logits (OCELOT: a few hundred per image)."""


def trained_like_logits(shape: tuple[int, ...], n_cells: int, radius: float = 7.0, seed: int = 0) -> torch.Tensor:
    """``(B, 1 + C, H, W)`` cell logits like a trained model's: background logit 0; around
    ``n_cells`` centres (>= 2.5 radii apart) a parabolic bump of its class's logit peaking
    at U(3, 20) (above ~17 softmax saturates: ``1 - p_bg`` is exactly 1.0 on a few pixels,
    the tied plateaus of confident cells) and -6 away from cells; the other classes 1-4
    lower; N(0, 0.5) noise. ``radius``: 7 px = the 1.4 µm target disk at 0.2 µm/px."""
    b, c1, h, w = shape
    rng = np.random.default_rng(seed)
    out = np.full((b, c1, h, w), -6.0, np.float32)
    out[:, 0] = 0.0
    k = int(np.ceil(radius))
    yy, xx = np.mgrid[-k:k + 1, -k:k + 1]
    r2 = (yy ** 2 + xx ** 2) / radius ** 2
    centres: list[tuple[float, float]] = []
    for _ in range(50 * n_cells):
        if len(centres) >= n_cells:
            break
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        if centres and np.min(np.hypot(*(np.array(centres) - (cy, cx)).T)) < 2.5 * radius:
            continue
        centres.append((cy, cx))
        peak = rng.uniform(3.0, 20.0)
        bump = (peak - (peak + 6.0) * r2).astype(np.float32)
        y0, y1, x0, x1 = max(cy - k, 0), min(cy + k + 1, h), max(cx - k, 0), min(cx + k + 1, w)
        patch = bump[y0 - (cy - k):y1 - (cy - k), x0 - (cx - k):x1 - (cx - k)]
        cls = 1 + int(rng.integers(0, c1 - 1))
        for ch in range(1, c1):
            v = patch if ch == cls else patch - rng.uniform(1.0, 4.0)
            np.maximum(out[:, ch, y0:y1, x0:x1], v, out=out[:, ch, y0:y1, x0:x1])
    out[:, 1:] += rng.normal(0.0, 0.5, out[:, 1:].shape).astype(np.float32)
    return torch.from_numpy(out)


class TrainedLikeCellLogits(torch.nn.Module):
    """Runs the real network, then hands the predictor :func:`trained_like_logits` instead
    of its cell logits (same shape, dtype, device). A randomly initialised network's cell
    output is unlike a trained one's — at 1024 px on noise it saturates (``1 - p_bg`` = 1.0
    on most pixels), so peak decoding would sort ~10⁶ tied candidates and time a case no
    trained model produces. The forward's cost is unchanged; only its cell logits are
    discarded. ``--logits network`` keeps them."""

    def __init__(self, model: torch.nn.Module, cells_per_mpx: float = CELLS_PER_MPX):
        super().__init__()
        self.model = model
        self.config = model.config
        self.cells_per_mpx = cells_per_mpx
        self._cache: dict = {}
        self.train(model.training)  # the predictor restores this mode on the shared model afterwards

    def forward(self, *args, **kwargs):
        out = self.model(*args, **kwargs)
        logits = out["cell_logits"]
        key = (tuple(logits.shape), logits.dtype, logits.device)
        if key not in self._cache:
            n = max(1, round(self.cells_per_mpx * logits.shape[-2] * logits.shape[-1] / 1024 ** 2))
            self._cache = {key: trained_like_logits(tuple(logits.shape), n).to(logits.device, logits.dtype)}
        return {**out, "cell_logits": self._cache[key]}


def make_predictor(model, size: int, device: torch.device, tta: bool = False, logits: str = "trained-like"):
    """The real predictor around ``model``: resize to ``size``, no TTA unless asked, fp32;
    ``logits="trained-like"`` swaps the network's cell logits for :func:`trained_like_logits`."""
    from histozoom.inference.predictor import Predictor

    if logits == "trained-like":
        model = TrainedLikeCellLogits(model)
    return Predictor(model, size=size, device=device, tta=tta, batch_size=1, num_workers=0, amp=False)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------- memory (subprocess)
def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def hwm_mib(reset_ok: bool) -> float:
    if reset_ok:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_worker(name: str, size: int, device: torch.device, mode: str = "forward",
                  logits: str = "trained-like") -> dict:
    """Peak memory of one eval forward of ``name`` (``mode="forward"``) or of one
    end-to-end ``Predictor.predict_pairs`` call on one pair (``mode="e2e"``), run alone
    in a fresh process."""
    torch.manual_seed(0)
    model = build_model(name).to(device).eval()
    if mode == "e2e":
        predictor = make_predictor(model, size, device, logits=logits)
        pairs = make_pairs(size, 1)

        def forward():
            predictor.predict_pairs(pairs)
            sync(device)
    else:
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
        before = rss_mib()
        reset_ok = reset_hwm()
        forward()
        peak = hwm_mib(reset_ok)
    return {"peak_mib": peak, "forward_extra_mib": max(peak - before, 0.0),
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def measure_memory(name: str, args, mode: str = "forward") -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-worker", name, "--memory-mode", mode,
           "--size", str(args.size), "--device", args.device, "--threads", str(args.threads),
           "--logits", args.logits]
    # A fixed glibc mmap threshold: large tensors are always mmapped and unmapped when
    # freed, so the resident-set peak follows the live tensors instead of heap caching.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"{name}: {mode} memory worker failed\n{res.stderr}")
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


def e2e_fn(predictor, pairs, device, sink: dict):
    """One ``predict_pairs`` call; the points of the last call go to ``sink["points"]``."""
    def run():
        pts = predictor.predict_pairs(pairs)
        sync(device)
        sink["points"] = sum(len(p) for p in pts) / len(pairs)
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


def _fmt(v, spec: str, width: int) -> str:
    return format(v, spec) if v is not None else f"{'n/a':>{width}}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=1024, help="cell and tissue side for the forward (px)")
    p.add_argument("--train-size", type=int, default=512, help="cell and tissue side for the training step (px)")
    p.add_argument("--train-batch", type=int, default=2)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--repeats", type=int, default=6,
                   help="forwards (and end-to-end calls) per variant, the first included (fastest reported)")
    p.add_argument("--train-repeats", type=int, default=3,
                   help="training steps per variant, the first included (fastest reported); 0 skips training")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch default); on a shared CPU, 1 avoids OpenMP stalls")
    p.add_argument("--variants", nargs="*", default=VARIANTS)
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end predictor measurement")
    p.add_argument("--tta", action="store_true",
                   help="also time the predictor with 8-transform TTA (reported as time / 8 / bare forward)")
    p.add_argument("--logits", default="trained-like", choices=["trained-like", "network"],
                   help="cell logits the predictor decodes: synthetic trained-like maps (default; the forward still "
                        "runs in full) or the randomly initialised network's own (unrepresentative peaks)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--memory-mode", default="forward", choices=["forward", "e2e"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_worker:
        print(json.dumps(memory_worker(args.memory_worker, args.size, device, args.memory_mode, args.logits)))
        return 0

    e2e = not args.no_e2e
    names = list(dict.fromkeys(["cell-only", *args.variants]))
    # the bare forward gets exactly --size / --train-size px, so each must suit every model
    multiples = size_multiples(None)
    unknown = [n for n in names if n not in multiples]
    if unknown:
        p.error(f"unknown variants {unknown}")
    for flag, side in (("--size", args.size), ("--train-size", args.train_size if args.train_repeats > 0 else None)):
        bad = {n: multiples[n] for n in names if side is not None and side % multiples[n]}
        if bad:
            p.error(f"{flag} {side} is not a multiple of the models' size multiples: "
                    + ", ".join(f"{n} needs {m}" for n, m in bad.items()))
    rows = {n: {"variant": n, **measure_memory(n, args)} for n in names}
    if e2e:
        for n in names:
            m = measure_memory(n, args, "e2e")
            rows[n].update(e2e_peak_mib=m["peak_mib"], e2e_extra_mib=m["forward_extra_mib"])
    print("  memory measured", file=sys.stderr, flush=True)

    torch.manual_seed(0)
    models = {n: build_model(n).to(device) for n in names}
    fwd_in = make_inputs(args.size, 1, device)
    for m in models.values():
        m.eval()
    fns, sinks = {}, {}
    pairs = make_pairs(args.size, 1)
    for n, m in models.items():
        fns[("fwd", n)] = forward_fn(m, fwd_in, device)
        if e2e:
            sinks[n] = {}
            fns[("e2e", n)] = e2e_fn(make_predictor(m, args.size, device, logits=args.logits), pairs, device, sinks[n])
            if args.tta:
                fns[("tta", n)] = e2e_fn(make_predictor(m, args.size, device, tta=True, logits=args.logits),
                                         pairs, device, {})
    timed = time_round_robin(fns, args.repeats)
    print("  forward" + (" and end-to-end" if e2e else "") + " timed", file=sys.stderr, flush=True)
    train = {}
    if args.train_repeats > 0:
        train_in = make_inputs(args.train_size, args.train_batch, device)
        steps = {}
        for n, m in models.items():
            m.train()
            steps[n] = train_step_fn(m, train_in, device)
        train = time_round_robin(steps, args.train_repeats)
    for n in names:
        r = rows[n]
        r.update(forward_s=timed[("fwd", n)], train_step_s=train.get(n))
        if e2e:
            r.update(e2e_s=timed[("e2e", n)], e2e_ratio=timed[("e2e", n)] / timed[("fwd", n)],
                     e2e_points=sinks[n].get("points"), e2e_mem_ratio=r["e2e_peak_mib"] / r["peak_mib"])
            r["e2e_over_target"] = r["e2e_ratio"] > RATIO_TARGET
            if args.tta:
                r.update(tta_s=timed[("tta", n)], tta_ratio_per_forward=timed[("tta", n)] / 8 / timed[("fwd", n)])

    ref = rows["cell-only"]
    mem = "GPU max_memory_allocated" if device.type == "cuda" else "CPU peak RSS of a fresh process"
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    train_desc = (f"train step: batch {args.train_batch}, {args.train_size} px, Adam" if train else "train step: skipped")
    print(f"device {args.device} ({dev_name}); forward: batch 1, {args.size} px cell + {args.size} px tissue, eval; "
          f"{train_desc}; memory: {mem}")
    print("times: fastest of the round-robin repeats; × = ratio to cell-only in the same column; "
          "fwd+ = forward peak minus memory held before it")
    head = (f"{'variant':<22} {'params M':>8} {'fwd s/pair':>10} {'×':>5} {'peak MiB':>9} {'×':>5} "
            f"{'fwd+ MiB':>9} {'×':>5} {'train s':>8} {'×':>5}")
    print(head)
    print("-" * len(head))
    for r in rows.values():
        tr = r["train_step_s"]
        print(f"{r['variant']:<22} {r['params_m']:8.1f} {r['forward_s']:10.4f} {_ratio(r['forward_s'], ref['forward_s'])} "
              f"{r['peak_mib']:9.0f} {_ratio(r['peak_mib'], ref['peak_mib'])} "
              f"{r['forward_extra_mib']:9.0f} {_ratio(r['forward_extra_mib'], ref['forward_extra_mib'])} "
              f"{_fmt(tr, '8.3f', 8)} {_ratio(tr, ref['train_step_s']) if tr is not None else '  n/a'}")
    if e2e:
        print()
        print(f"end-to-end inference: Predictor.predict_pairs on 1 pair ({args.size} px uint8 cell + tissue, size={args.size}, "
              f"no TTA, fp32), timed in the same round-robin as the bare forward; cell logits decoded: {args.logits}"
              + (f" (~{CELLS_PER_MPX} cells per 1024² px)" if args.logits == "trained-like" else ""))
        print(f"e2e/fwd = end-to-end / bare forward of the same variant (target <= {RATIO_TARGET}; '!' above it); "
              "e2e peak = peak of predict_pairs in a fresh process, × = ratio to the forward's peak"
              + ("; tta/8/fwd = TTA ×8 time / 8 / bare forward" if args.tta else ""))
        head = (f"{'variant':<22} {'e2e s/pair':>10} {'fwd s/pair':>10} {'e2e/fwd':>8}   {'points':>7} "
                f"{'e2e peak':>9} {'×':>5} {'e2e+ MiB':>9}" + (f" {'tta s':>8} {'tta/8/fwd':>9}" if args.tta else ""))
        print(head)
        print("-" * len(head))
        for r in rows.values():
            flag = "!" if r["e2e_over_target"] else " "
            line = (f"{r['variant']:<22} {r['e2e_s']:10.4f} {r['forward_s']:10.4f} {r['e2e_ratio']:8.2f} {flag} "
                    f"{_fmt(r['e2e_points'], '7.0f', 7)} {r['e2e_peak_mib']:9.0f} {r['e2e_mem_ratio']:5.2f} "
                    f"{r['e2e_extra_mib']:9.0f}")
            if args.tta:
                line += f" {r['tta_s']:8.3f} {r['tta_ratio_per_forward']:9.2f}"
            print(line)
        worst = max(rows.values(), key=lambda r: r["e2e_ratio"])
        print(f"worst e2e/fwd: {worst['variant']} {worst['e2e_ratio']:.2f} "
              f"({'OVER' if worst['e2e_over_target'] else 'within'} the {RATIO_TARGET} target)")
    if args.json:
        from histozoom.atomic import write_json

        write_json(args.json, {"args": {k: v for k, v in vars(args).items() if k not in ("memory_worker", "memory_mode")},
                               "ratio_target": RATIO_TARGET, "rows": list(rows.values())})
    return 0


if __name__ == "__main__":
    sys.exit(main())
