"""Whole-slide nuclei grading: ratios measured in one run.

1. End-to-end time / model forward time of ``nuclei slide predict`` (watershed,
   classification, outlines and writing run in a thread beside the model), with a trained
   CHR-Net on a synthetic ccRCC slide, and its PQ / aPQ / grade shares against the truth.
2. PQ of the tiled slide / PQ of the same model over the same area in one pass.
3. Peak memory (``VmHWM``, each run in its own process) of a slide with 4× the area / the
   smaller one's, with 100,000+ nuclei written to Parquet and GeoJSON. This part uses a
   cheap stand-in model (dark pixels are nuclei; a blur of them is the distance map), so
   that the slides can be large: the pipeline's memory does not depend on the model.

The CHR-Net is the README's small recipe (ResNet-18 encoders, 40 epochs on 60 synthetic
tiles, crop 128), trained once into ``--work`` unless ``--checkpoint`` is given.

    .venv/bin/python bench/bench_nuclei_slides.py            # about 30 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from _measure import peak_rss_mb

RECIPE = ["--model", "chrnet", "--epochs", "40", "--crop", "128", "--batch-size", "4", "--lr", "1e-3",
          "--model-arg", "encoder_name=resnet18", "--model-arg", "decoder_channels=[64,32,32,16,16]",
          "--model-arg", "lunet_channels=[8,16,32]", "--model-arg", "hrfe_channels=[16,32,64]", "--model-arg", "hrfe_blocks=1"]


class DarkBlobs(nn.Module):
    """Stand-in nuclei model: foreground logit from the darkness of the pixel, distance =
    a 7×7 blur (twice) of the foreground, every nucleus class G1."""

    size_multiple = 32

    def forward(self, x):
        fg = (0.55 - x.mean(1, keepdim=True)) * 30
        p = torch.sigmoid(fg)
        dist = F.avg_pool2d(F.avg_pool2d(p, 7, 1, 3), 7, 1, 3)
        cls = torch.cat([-fg, fg, -fg - 9, -fg - 9, -fg - 9], 1)
        return {"class_logits": cls, "binary_logits": fg, "distance": dist}


def _cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "histozoom", *args], check=True, stdout=subprocess.DEVNULL)


def _checkpoint(work: Path) -> Path:
    run = work / "chrnet"
    if (run / "best.ckpt").is_dir() and (run / "done.json").is_file():
        return run
    tiles = work / "tiles"
    if not (tiles / "synthetic.json").is_file():
        _cli("nuclei", "synth", str(tiles), "--n", "60", "--size", "256", "--seed", "0", "--overwrite")
    t0 = time.perf_counter()
    _cli("nuclei", "train", "--data", str(tiles), "--out", str(run), *RECIPE, "--no-progress", "--no-tensorboard",
         *(["--resume"] if run.is_dir() else []))
    (run / "done.json").write_text(json.dumps({"train_s": time.perf_counter() - t0}))
    return run


def _slide(work: Path, name: str, side_mm: float, seed: int, cancer_share: float) -> Path:
    from histozoom.data.nuclei.synthetic_slide import NucleiSlideSynthConfig, write_synthetic_nuclei_slide

    out = work / f"{name}.tiff"
    if not out.is_file():
        write_synthetic_nuclei_slide(out, NucleiSlideSynthConfig(width_mm=side_mm, height_mm=side_mm, seed=seed,
                                                                 cancer_share=cancer_share))
    return out


def run_one(kind: str, ckpt: str, slide: str, out: str, batch: int, workers: int, device: str) -> dict:
    """One slide in this process: its timings, nuclei and peak RSS."""
    from histozoom.data.nuclei.records import CCRCC_CLASSES
    from histozoom.inference.nuclei_predictor import NucleiPredictor
    from histozoom.inference.watershed import WatershedConfig
    from histozoom.slides.job import SlideOptions
    from histozoom.slides.nuclei import NucleiSlidePredictor, NucleiSlideSettings

    if kind == "blobs":
        sp = NucleiSlidePredictor(NucleiPredictor(DarkBlobs(), CCRCC_CLASSES, WatershedConfig(min_size=10)),
                                  NucleiSlideSettings(0.25), "dark-blobs")
    else:
        sp = NucleiSlidePredictor.from_checkpoint(ckpt, device=device)
    t0 = time.perf_counter()
    s = sp.predict_slide(slide, out, SlideOptions(batch_size=batch, workers=workers, progress=False,
                                                  formats=("parquet", "geojson")))
    return {"wall_s": time.perf_counter() - t0, "model_s": s["model_seconds"], "tiles": s["tiles"],
            "mm2": s["tissue_area_mm2"], "nuclei": s["nuclei"], "seams": s["seams"],
            "geojson_mb": (Path(out) / "nuclei.geojson").stat().st_size / 2**20,
            "peak_rss_mb": peak_rss_mb()}


def _in_process(args: list[str]) -> dict:
    r = subprocess.run([sys.executable, __file__, "--one", *args], check=True, capture_output=True, text=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def tiled_vs_one_pass(ckpt: Path, slide: Path, truth: Path, work: Path, side: int) -> dict:
    """PQ / aPQ of the tiled run and of one pass over the same ``side`` px square (against the truth)."""
    from histozoom.data.nuclei.instance_table import paste, read_table
    from histozoom.inference.nuclei_predictor import NucleiPredictor
    from histozoom.metrics.instances import score_instances
    from histozoom.slides.job import SlideOptions
    from histozoom.slides.nuclei import NucleiSlidePredictor
    from histozoom.slides.reader import ArraySlide, open_slide

    gt = read_table(truth)
    with open_slide(slide) as s:
        w, h = s.dimensions
        x0, y0 = (w - side) // 2 // 32 * 32, (h - side) // 2 // 32 * 32
        image = s.read(x0, y0, side, side, s.mpp)

    def inst_map(cols, dx, dy):
        m = np.zeros((side, side), np.int64)
        classes = {}
        for i in range(len(cols["x"])):
            paste(m, i + 1, cols["bbox_x0"][i] - dx, cols["bbox_y0"][i] - dy, cols["bbox_w"][i], cols["bbox_h"][i],
                  cols["mask"][i])
            classes[i + 1] = int(cols["class_id"][i])
        return m, classes

    g_map, g_cls = inst_map(gt, x0, y0)
    present = {int(i) for i in np.unique(g_map) if i}
    g_cls = {k: v for k, v in g_cls.items() if k in present}
    one = NucleiPredictor.from_checkpoint(ckpt).predict(image)
    sp = NucleiSlidePredictor.from_checkpoint(ckpt)
    sp.predict_slide(ArraySlide(image, 0.25, work / "crop.png"), work / "crop_out",
                     SlideOptions(progress=False, formats=("parquet",), images=False))
    t_map, t_cls = inst_map(read_table(work / "crop_out" / "nuclei.parquet"), 0, 0)
    ids = (1, 2, 3, 4)
    a = score_instances(g_map, one.inst_map, g_cls, one.inst_class, ids)
    b = score_instances(g_map, t_map, g_cls, {k: v for k, v in t_cls.items() if k in set(np.unique(t_map))}, ids)
    return {"one_pass": {"pq": a.pq, "apq": a.apq}, "tiled": {"pq": b.pq, "apq": b.apq}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("bench/out/nuclei_slides"))
    ap.add_argument("--checkpoint", type=Path, help="a trained nuclei checkpoint (default: train the README recipe)")
    ap.add_argument("--side-mm", type=float, default=1.0, help="slide for the CHR-Net run (default 1 mm square)")
    ap.add_argument("--memory-side-mm", type=float, default=2.5, help="smaller memory slide (the larger: twice the side)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--one", nargs=7, metavar="ARG", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        kind, ckpt, slide, out, batch, workers, device = a.one
        print(json.dumps(run_one(kind, ckpt, slide, out, int(batch), int(workers), device)))
        return
    work = a.work
    work.mkdir(parents=True, exist_ok=True)
    ckpt = a.checkpoint or _checkpoint(work)
    common = [str(a.batch_size), str(a.workers), a.device]
    slide = _slide(work, "ratio", a.side_mm, 0, 0.6)
    ratio = _in_process(["chrnet", str(ckpt), str(slide), str(work / "o_ratio"), *common])
    from histozoom.evaluation.slide_nuclei import evaluate_slide_nuclei

    scores = evaluate_slide_nuclei(work / "o_ratio", slide).to_dict()
    pq = tiled_vs_one_pass(ckpt, slide, slide.with_suffix(".nuclei.parquet"), work, 1024)
    small = _slide(work, "mem_small", a.memory_side_mm, 1, 0.9)
    large = _slide(work, "mem_large", 2 * a.memory_side_mm, 2, 0.9)
    m1 = _in_process(["blobs", "", str(small), str(work / "o_small"), *common])
    m2 = _in_process(["blobs", "", str(large), str(work / "o_large"), *common])
    print(f"CHR-Net (small recipe) on a {a.side_mm} mm synthetic ccRCC slide, 512 px tiles at 0.25 µm/px, margin 64 px, "
          f"batch {a.batch_size}, {a.workers} reader threads, {a.device}, torch threads {torch.get_num_threads()}")
    print(f"  {ratio['tiles']} tiles, {ratio['nuclei']} nuclei, {ratio['wall_s']:.1f} s end to end, "
          f"{ratio['model_s']:.1f} s model: end-to-end / model {ratio['wall_s'] / ratio['model_s']:.3f}")
    print(f"  vs truth: PQ {scores['pq']:.4f}, aPQ {scores['apq']:.4f}, per class {scores['pq_per_class']}, "
          f"GT matched twice {scores['gt_matched_twice']}, seams {ratio['seams']}")
    if scores["grades"]:
        print(f"  grade shares in the cancer area: predicted {scores['grades']['predicted']['cancer_area']['shares']}, "
              f"true {scores['grades']['true']['cancer_area']['shares']}")
    print(f"  tiled vs one pass over 1024 px: PQ {pq['tiled']['pq']:.4f} vs {pq['one_pass']['pq']:.4f} "
          f"(ratio {pq['tiled']['pq'] / pq['one_pass']['pq']:.4f}), aPQ {pq['tiled']['apq']:.4f} vs {pq['one_pass']['apq']:.4f}")
    print(f"Memory (stand-in model): {m1['mm2']:.2f} mm², {m1['nuclei']} nuclei, {m1['peak_rss_mb']:.0f} MB; "
          f"{m2['mm2']:.2f} mm², {m2['nuclei']} nuclei, GeoJSON {m2['geojson_mb']:.0f} MB, {m2['peak_rss_mb']:.0f} MB; "
          f"ratio {m2['peak_rss_mb'] / m1['peak_rss_mb']:.3f} for {m2['mm2'] / m1['mm2']:.2f}x the area")
    print(f"  stand-in throughput: {60 * m2['mm2'] / m2['wall_s']:.2f} mm²/min, {m2['tiles'] / m2['wall_s']:.2f} tiles/s, "
          f"end-to-end / model {m2['wall_s'] / m2['model_s']:.2f} (a model this cheap leaves post-processing exposed)")


if __name__ == "__main__":
    main()
