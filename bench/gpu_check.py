"""The GPU check (``bench/gpu_check.sh``): GPU outputs against CPU outputs, then pairs/s,
slide mm²/min and training steps/s on one CUDA GPU, in under 8 minutes.

1. **Agreement**: Pred-to-inter-2 (ResNet-34, seeded random weights) on 4 random pairs at
   512 px on the CPU (fp32) and on the GPU (fp32 with TF32 off, and bf16 autocast):
   largest probability difference, and the share of CPU detections found at the same
   pixel and class on the GPU.
2. **Pairs/s at 1024 px** (cell and tissue views 1024 px, OCELOT geometry) for cell-only
   and Pred-to-inter-2: fp32, bf16 autocast + channels_last, and the same compiled
   (``torch.compile``); batch sized from free memory (:func:`histozoom.inference.device.fit_batch_size`,
   at most 64); each the forward, softmax and the GPU peak finder
   (:func:`~histozoom.inference.decode.decode_cells_torch`), timed after warm-up.
3. **Slide**: a synthetic 2 mm × 2 mm slide through ``SlidePredictor`` (shared tissue
   map, 512 px views, batch 32, bf16): mm² per minute.
4. **Training**: Pred-to-inter-2 at 512 px, batch 8, bf16 autocast, channels_last, Adam
   on both losses: steps/s.

Target (issue): ≥ 200 pairs/s for Pred-to-inter-2 inference on one H100-class GPU.

    bash bench/gpu_check.sh                     # prints the figures; exit 3 without CUDA
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from histozoom.inference.decode import PeakConfig, decode_cells_torch
from histozoom.inference.device import fit_batch_size
from histozoom.models.registry import build_model
from histozoom.pair import OCELOT_CELL_CLASSES

WIN = [0.375, 0.375, 0.25, 0.25]


def _model(name: str, device: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name).eval().to(device)


def _pairs(n: int, side: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cell = torch.rand(n, 3, side, side, generator=g)
    tissue = torch.rand(n, 3, side, side, generator=g)
    return cell.to(device), tissue.to(device), torch.tensor([WIN] * n, device=device)


def _probs(model, args, amp: bool) -> torch.Tensor:
    dev = args[0].device.type
    ctx = torch.autocast(dev, dtype=torch.bfloat16) if amp else torch.autocast(dev, enabled=False)
    with torch.inference_mode(), ctx:
        out = model(*(args if model.tissue is not None else args[:1]))
    return out["cell_logits"].float().softmax(1)


def agreement() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cpu = _model("pred-to-inter-2", "cpu")
    gpu = _model("pred-to-inter-2", "cuda")
    args = _pairs(4, 512, "cpu")
    ref = _probs(cpu, args, False)
    ref_pts = decode_cells_torch(ref, OCELOT_CELL_CLASSES, PeakConfig(), 0.2)
    for label, amp in (("fp32", False), ("bf16", True)):
        p = _probs(gpu, tuple(a.cuda() for a in args), amp).cpu()
        pts = decode_cells_torch(p, OCELOT_CELL_CLASSES, PeakConfig(), 0.2)
        same = total = 0
        for a, b in zip(ref_pts, pts):
            theirs = {(int(x), int(y), int(c)) for (x, y), c in zip(b.xy.tolist(), b.cls.tolist())}
            mine = [(int(x), int(y), int(c)) for (x, y), c in zip(a.xy.tolist(), a.cls.tolist())]
            same += sum(m in theirs for m in mine)
            total += len(mine)
        print(f"GPU {label} vs CPU fp32 (4 pairs, 512 px): max |Δp| {float((p - ref).abs().max()):.2e}, "
              f"detections at the same pixel and class {same}/{total}")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def pairs_per_second(name: str, mode: str, seconds: float = 8.0) -> tuple[float, int]:
    model = _model(name, "cuda").to(memory_format=torch.channels_last)
    fn = torch.compile(model) if mode == "compiled" else model
    amp = mode != "fp32"

    def run(n):
        args = _pairs(n, 1024, "cuda")
        args = (args[0].contiguous(memory_format=torch.channels_last), args[1].contiguous(memory_format=torch.channels_last),
                args[2])
        p = _probs(fn, args, amp)
        decode_cells_torch(p, OCELOT_CELL_CLASSES, PeakConfig(), 0.2)

    batch = fit_batch_size(run, "cuda", 8, cap=64)
    for _ in range(3):
        run(batch)
    torch.cuda.synchronize()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        run(batch)
        n += batch
    torch.cuda.synchronize()
    return n / (time.perf_counter() - t0), batch


def slide_throughput(root: Path) -> str:
    import subprocess

    from histozoom.data.base import DatasetSpec
    from histozoom.models.checkpoint import save_pretrained
    from histozoom.pair import OCELOT_TISSUE_CLASSES
    from histozoom.slides.job import SlideOptions
    from histozoom.slides.runner import SlidePredictor

    slide = root / "gpu.tiff"
    subprocess.run([sys.executable, "-m", "histozoom", "synth", "slide", str(slide), "--preset", "context", "--width-mm", "2",
                    "--height-mm", "2", "--mpp", "0.2", "--seed", "0"], check=True, stdout=subprocess.DEVNULL)
    extra = {"spec": DatasetSpec(OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES).to_dict(), "size": 512,
             "views": {"cell": {"size": 512, "mpp": 0.2}, "tissue": {"size": 512, "mpp": 0.8}}}
    ckpt = save_pretrained(_model("pred-to-inter-2", "cpu"), root / "ckpt", extra=extra)
    sp = SlidePredictor.from_checkpoint(ckpt, device="cuda", engine="torch")
    t0 = time.perf_counter()
    s = sp.predict_slide(slide, root / "out", SlideOptions(batch_size=32, workers=8, progress=False, images=False,
                                                           formats=("parquet",)))
    wall = time.perf_counter() - t0
    return (f"slide: {s['tissue_area_mm2']:.2f} mm² ({s['tiles']} cell tiles) in {wall:.1f} s, model {s['model_seconds']:.1f} s: "
            f"{60 * s['tissue_area_mm2'] / wall:.1f} mm²/min")


def training_steps() -> float:
    model = build_model("pred-to-inter-2").cuda().train().to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    cell, tissue, win = _pairs(8, 512, "cuda")
    cell_t = torch.randint(0, 3, (8, 512, 512), device="cuda")
    tissue_t = torch.randint(0, 2, (8, 512, 512), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(cell.contiguous(memory_format=torch.channels_last), tissue.contiguous(memory_format=torch.channels_last),
                        win)
            loss = F.cross_entropy(out["cell_logits"].float(), cell_t) + F.cross_entropy(out["tissue_logits"].float(), tissue_t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    t0, n = time.perf_counter(), 0
    while time.perf_counter() - t0 < 10:
        step()
        n += 1
    torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-compile", action="store_true", help="leave out the compiled runs")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device", file=sys.stderr)
        return 3
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    agreement()
    modes = ["fp32", "bf16"] + ([] if a.skip_compile else ["compiled"])
    for name in ("cell-only", "pred-to-inter-2"):
        for mode in modes:
            rate, batch = pairs_per_second(name, mode)
            print(f"{name} @ 1024 px, {mode}: {rate:.1f} pairs/s (batch {batch})")
            sys.stdout.flush()
    with tempfile.TemporaryDirectory() as tmp:
        print(slide_throughput(Path(tmp)))
    print(f"training Pred-to-inter-2 @ 512 px, batch 8, bf16: {training_steps():.2f} steps/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
