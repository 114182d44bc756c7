"""Whole-slide inference: ratios measured in one run.

1. Shared tissue map vs per-pair tiling for Pred-to-inter-2 at OCELOT geometry (cell
   view at 0.2 µm/px, tissue view with 4× the field at 0.8 µm/px): whole-slide speed-up,
   on both slides (the tissue pass's border costs a smaller share of a larger slide).
2. End-to-end time / the model's forward time (reading, decoding and writing hidden
   behind the model).
3. Peak memory (``VmHWM``) of a slide with 4× the area / the smaller slide's (each in its own
   process).
4. mm² per minute and tiles per second.

The model has random weights (the forward's cost does not depend on them), with the
background logit offset so that cells come at a realistic density; the slides are
synthetic (``histozoom synth slide``) pyramidal TIFFs read through OpenSlide.

    .venv/bin/python bench/bench_slides.py                 # CPU sizes (a few minutes)
    .venv/bin/python bench/bench_slides.py --tile 512 --side-mm 2 --device cuda
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _measure import offset_background, peak_rss_mb, save_ocelot_checkpoint


def _checkpoint(root: Path, tile: int, encoder: str, slide: Path, foreground: float) -> Path:
    """Random weights, with the background logit offset so that a ``foreground`` share of
    the pixels of a few tiles of ``slide`` is foreground: the peaks then come at a density
    like a trained model's (~9000 cells/mm² at 0.1) instead of one every 2 µm, which
    would make decoding, not the model, the work."""
    from histozoom.models.registry import build_model
    from histozoom.slides.reader import open_slide

    torch.manual_seed(0)
    model = build_model("pred-to-inter-2", encoder_name=encoder).eval()
    sl = open_slide(slide)

    def view(x, y, mpp):
        return torch.from_numpy(sl.read(x, y, tile, tile, mpp).copy()).permute(2, 0, 1).float() / 255

    origins = [(i * tile, j * tile) for i in range(2) for j in range(2)]
    cells = torch.stack([view(x, y, 0.2) for x, y in origins])
    tissue = torch.stack([view(x - 1.5 * tile, y - 1.5 * tile, 0.8) for x, y in origins])
    windows = torch.tensor([[0.375, 0.375, 0.25, 0.25]] * len(origins))
    with torch.inference_mode():
        logits = model(cells, tissue, windows)["cell_logits"]
    offset_background(model, logits, foreground)
    return save_ocelot_checkpoint(model, root, tile)


def _slide(root: Path, side_mm: float, name: str) -> Path:
    out = root / f"{name}.tiff"
    subprocess.run([sys.executable, "-m", "histozoom", "synth", "slide", str(out), "--preset", "context",
                    "--width-mm", str(side_mm), "--height-mm", str(side_mm), "--mpp", "0.2", "--seed", "0"],
                   check=True, stdout=subprocess.DEVNULL)
    return out


def run_one(ckpt: str, slide: str, out: str, context: str, batch: int, workers: int, device: str) -> dict:
    """One slide run; prints its summary's timings and this process's peak RSS as JSON."""
    from histozoom.slides.runner import SlideOptions, SlidePredictor

    sp = SlidePredictor.from_checkpoint(ckpt, device=device)
    t0 = time.perf_counter()
    s = sp.predict_slide(slide, out, SlideOptions(batch_size=batch, workers=workers, progress=False, images=False,
                                                  formats=("parquet",), context=context))
    wall = time.perf_counter() - t0
    rss_mb = peak_rss_mb()
    return {"wall_s": wall, "model_s": s["model_seconds"], "tiles": s["tiles"], "mm2": s["tissue_area_mm2"],
            "cells": s["cells"], "context": s["context"], "peak_rss_mb": rss_mb}


def _in_process(args: list[str]) -> dict:
    r = subprocess.run([sys.executable, __file__, "--one", *args], check=True, capture_output=True, text=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tile", type=int, default=256, help="cell and tissue view side in px (default 256)")
    ap.add_argument("--side-mm", type=float, default=0.5, help="side of the small slide in mm (the large one: 2x)")
    ap.add_argument("--encoder", default="resnet34")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--foreground", type=float, default=0.1,
                    help="share of foreground pixels the random model is set to (default 0.1; 1: no offset)")
    ap.add_argument("--one", nargs=7, metavar="ARG", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        ckpt, slide, out, context, batch, workers, device = a.one
        print(json.dumps(run_one(ckpt, slide, out, context, int(batch), int(workers), device)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        small, large = _slide(root, a.side_mm, "small"), _slide(root, 2 * a.side_mm, "large")
        ckpt = _checkpoint(root, a.tile, a.encoder, small, a.foreground)
        common = [str(a.batch_size), str(a.workers), a.device]
        shared = _in_process([str(ckpt), str(small), str(root / "o1"), "auto", *common])
        per_tile = _in_process([str(ckpt), str(small), str(root / "o2"), "per-tile", *common])
        big = _in_process([str(ckpt), str(large), str(root / "o3"), "auto", *common])
        big_per_tile = _in_process([str(ckpt), str(large), str(root / "o4"), "per-tile", *common])
    print(f"Pred-to-inter-2, {a.tile} px views at 0.2 / 0.8 µm/px, {a.encoder}, batch {a.batch_size}, "
          f"{a.workers} reader threads, {a.device}, torch threads {torch.get_num_threads()}")
    print(f"  small slide {a.side_mm} mm square: {shared['tiles']} cell tiles, {shared['mm2']:.3f} mm² of tissue, "
          f"{shared['cells']} cells")
    for label, a_shared, a_pair in (("small", shared, per_tile), ("large", big, big_per_tile)):
        print(f"  {label} slide ({a_shared['tiles']} cell tiles): shared tissue map {a_shared['wall_s']:.1f} s, "
              f"per-pair context {a_pair['wall_s']:.1f} s; speed-up {a_pair['wall_s'] / a_shared['wall_s']:.2f}x")
    print(f"  end-to-end / model forward: {shared['wall_s'] / shared['model_s']:.3f} (shared), "
          f"{per_tile['wall_s'] / per_tile['model_s']:.3f} (per-pair)")
    print(f"  peak RSS: {shared['peak_rss_mb']:.0f} MB (small), {big['peak_rss_mb']:.0f} MB (4x the area); "
          f"ratio {big['peak_rss_mb'] / shared['peak_rss_mb']:.3f}")
    print(f"  throughput: {60 * big['mm2'] / big['wall_s']:.3f} mm²/min, {big['tiles'] / big['wall_s']:.2f} tiles/s "
          f"(large slide, shared map)")


if __name__ == "__main__":
    main()
