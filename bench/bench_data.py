"""Data-loading benchmark: pairs per second at full OCELOT size (1024 px views).

Measures, in one run on the same files:
  A. reading the two images alone;
  B. reading + targets (disk map, tissue crop) + paired augmentation + tensors
     (what a training step consumes);
  C. as B with Gaussian heatmaps;
  D. generating one synthetic nuclei grading tile.
Prints the rates and the ratios to A (the overhead of everything beyond decoding).

    python bench/bench_data.py [--pairs 8] [--size 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from histozoom.data.augment import PairedAugment
from histozoom.data.io import read_rgb
from histozoom.data.nuclei.synthetic import NucleiSynthConfig, generate_sample
from histozoom.data.ocelot_release import OcelotRelease, OcelotReleaseWriter
from histozoom.data.samples import PairDataset, SampleConfig
from histozoom.geometry import Placement
from histozoom.pair import Pair, Points


def make_dataset(root: Path, n: int, size: int) -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    with OcelotReleaseWriter(root) as w:
        for i in range(n):
            base = (np.sin(xx / 17 + i) * 60 + np.cos(yy / 23) * 60 + 128)
            img = np.clip(base[..., None] + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
            pts = Points.from_array(np.column_stack([rng.integers(0, size, 300), rng.integers(0, size, 300),
                                                     rng.integers(1, 3, 300)]))
            mask = np.where(xx < size // 2, 1, 2).astype(np.uint8)
            p = Placement.from_centre((0.5, 0.5), (size, size), (size, size), 0.2, 0.8)
            w.add(Pair(f"{i:03d}", img, img[::-1].copy(), p, pts, mask), "train")


def rate(fn, n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(n):
            fn(i)
        best = min(best, time.perf_counter() - t0)
    return n / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_dataset(root, args.pairs, args.size)
        split = OcelotRelease(root).split("train")
        folder = root / "images" / "train"

        def read_only(i: int) -> None:
            sid = split.ids[i]
            read_rgb(folder / "cell" / f"{sid}.jpg")
            read_rgb(folder / "tissue" / f"{sid}.jpg")

        full = PairDataset(split, SampleConfig(heatmaps=False), augment=PairedAugment(seed=0))
        full_heat = PairDataset(split, SampleConfig(heatmaps=True), augment=PairedAugment(seed=0))
        a = rate(read_only, args.pairs, args.repeats)
        b = rate(full.__getitem__, args.pairs, args.repeats)
        c = rate(full_heat.__getitem__, args.pairs, args.repeats)
    print(f"data loading at {args.size} px, {args.pairs} pairs, best of {args.repeats}")
    print(f"  A read images only                          {a:8.2f} pairs/s")
    print(f"  B read + disk targets + augment + tensors   {b:8.2f} pairs/s   A/B = {a / b:.2f}x time")
    print(f"  C as B + Gaussian heatmaps                  {c:8.2f} pairs/s   A/C = {a / c:.2f}x time")
    cfg = NucleiSynthConfig()
    d = rate(lambda k: generate_sample(cfg, np.random.default_rng(k), f"{k:02d}"), args.pairs, args.repeats)
    print(f"  D synthetic nuclei tile ({cfg.size} px)          {d:8.2f} tiles/s   D/A = {d / a:.2f}x the pair-read rate")


if __name__ == "__main__":
    main()
