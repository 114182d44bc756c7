"""Inference engines on this CPU: PyTorch, ONNX Runtime and OpenVINO per pair, and the
network's GFLOP/s next to the machine's fp32 matmul peak, measured in one run.

For each variant (cell-only, Pred-to-inter-2, Cell–Tissue Feature-Sharing on DeepLabV3+
ResNet-34; CHR-Net at the paper's ResNet-34 encoders) and side (``--sizes``, default 1024
and 256 px; both OCELOT views that side, the cell view 1/4 of the tissue view's field):
seconds per pair (batch 1, eval, fp32) of each engine, fastest of ``--repeats`` calls,
engines timed round-robin so a change of load hits them alike, and the largest
probability difference from PyTorch. FLOPs of one forward are counted by
``torch.utils.flop_counter`` (2 per multiply-add); GFLOP/s = FLOPs / fastest seconds. The
peak: fastest 4096² fp32 matmul with torch and with NumPy in the same threads.

    .venv/bin/python bench/bench_engines.py                        # about 10 min on 2 cores
    .venv/bin/python bench/bench_engines.py --sizes 256 --variants pred-to-inter-2
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from histozoom.inference.engines import ENGINES, engine_model
from histozoom.models.registry import build_model, list_models

VARIANTS = ("cell-only", "pred-to-inter-2", "feature-sharing", "chrnet")


def matmul_peak(threads: int, n: int = 4096, repeats: int = 5) -> dict[str, float]:
    """GFLOP/s of the fastest ``n``² fp32 matmul with torch and with NumPy."""
    a = torch.rand(n, n)
    b = torch.rand(n, n)
    an, bn = a.numpy(), b.numpy()
    out = {}
    for name, fn in (("torch", lambda: torch.mm(a, b)), ("numpy", lambda: an @ bn)):
        fn()
        best = min(_timed(fn) for _ in range(repeats))
        out[name] = 2 * n ** 3 / best / 1e9
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name).eval()


def _inputs(model: torch.nn.Module, side: int) -> tuple:
    """Batch-1 inputs at ``side`` px: the image (CHR-Net, cell-only) or both views, the
    OCELOT window, and a tissue mask for label leaking."""
    g = torch.Generator().manual_seed(0)
    cell = torch.rand(1, 3, side, side, generator=g)
    cfg = model.config
    if getattr(model, "tissue", None) is None and not getattr(cfg, "leak_tissue_labels", False):
        return (cell,)
    tissue = torch.rand(1, 3, side, side, generator=g)
    win = torch.tensor([[0.375, 0.375, 0.25, 0.25]])
    if cfg.leak_tissue_labels:
        return cell, tissue, win, torch.randint(0, 3, (1, side, side), generator=g)
    return cell, tissue, win


def _probs(out) -> torch.Tensor:
    logits = out["class_logits"] if "class_logits" in out else out["cell_logits"]
    return logits.float().softmax(1)


def flops(model: torch.nn.Module, args: tuple) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model(*args)
    return float(fc.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 256])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=[*list_models(), "chrnet"],
                    help="default: %(default)s; any OCELOT variant, or chrnet")
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    peak = matmul_peak(a.threads)
    print(f"fp32 matmul peak, {a.threads} threads: torch {peak['torch']:.1f} GFLOP/s, NumPy {peak['numpy']:.1f} GFLOP/s")
    best_peak = max(peak.values())
    wins: dict[str, int] = {e: 0 for e in a.engines}
    for side in a.sizes:
        for name in a.variants:
            model = _model(name)
            args = _inputs(model, side)
            runners = {e: engine_model(model, e) for e in a.engines}
            with torch.inference_mode():
                ref = _probs(model(*args))
                diff = {e: float((_probs(r(*args)) - ref).abs().max()) for e, r in runners.items()}  # also warms up
                times = {e: [] for e in runners}
                for _ in range(a.repeats):
                    for e, r in runners.items():
                        times[e].append(_timed(lambda r=r, args=args: r(*args)))
            best = {e: min(t) for e, t in times.items()}
            fl = flops(model, args)
            fastest = min(best, key=best.get)
            wins[fastest] += 1
            cols = ", ".join(f"{e} {best[e]:.3f} s ({best['torch'] / best[e]:.2f}x, |Δp| {diff[e]:.1e})" for e in best)
            rate = {e: fl / best[e] / 1e9 for e in best}
            print(f"{name} @ {side} px: {fl / 1e9:.1f} GFLOP; {cols}; fastest {fastest}: "
                  f"{rate[fastest]:.1f} GFLOP/s = {100 * rate[fastest] / best_peak:.0f}% of the matmul peak "
                  f"(torch {100 * rate['torch'] / best_peak:.0f}%)")
            sys.stdout.flush()
    print(f"fastest engine per case: {wins}")


if __name__ == "__main__":
    main()
