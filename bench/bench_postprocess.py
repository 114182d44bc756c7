"""Nuclei post-processing seconds per tile (CHR-Net maps → instances → classes → table → GeoJSON).

A ``--size`` px tile (1024 by default) of the synthetic ccRCC generator
(:func:`histozoom.data.nuclei.synthetic.generate_sample`, ``--nuclei`` nuclei, ~40 % of
the tumour nuclei in touching pairs) gives the ground truth. From it, maps like a
network's outputs:

* binary probability: the foreground mask plus N(0, 0.2) noise, blurred (Gaussian σ 1 px;
  the noise is then smooth, sd ~0.06), clipped to [0, 1];
* distance: the DIST map (:func:`histozoom.data.nuclei.targets.distance_map`) plus
  N(0, 0.1) noise, blurred (σ 1 px), clipped at 0;
* class probabilities ``(1, 5, H, W)`` (background + G1, G2, G3, endothelial): softmax of
  3 × one-hot(class map) + N(0, 1) noise per pixel and channel, so single pixels are
  often wrong and the majority vote has work to do.

Timed, on the same maps (median of ``--repeat`` rounds, the steps called in turn each
round so load changes hit all alike; ``gc.collect()`` before each call, untimed):

1. ``scipy.ndimage.label`` of ``binary_prob > 0.5`` — the trivial lower bound of any
   instance step (connected components, no splitting); where ``instances_from_maps``
   accepts ``distance=None``, also that call (components + small-object removal +
   relabelling, no watershed);
2. ``instances_from_maps`` — marker-controlled watershed → instance map;
3. ``classify_instances`` — majority-vote class per instance;
4. ``nucleus_table`` — one row per nucleus;
5. ``instances_to_geojson`` — QuPath FeatureCollection, and ``json.dumps`` of it (plus,
   as a diagnostic outside the sum, the GeoJSON step with the cyclic GC paused);
6. the whole pipeline (2–5) in one call.

Ratios: each step to the watershed step and to the label lower bound. Sanity: instances
found vs ground truth, and PQ / aPQ (:func:`histozoom.metrics.instances.score_instances`)
of the result. ``--profile`` prints the hottest functions of one pipeline call.

    python bench/bench_postprocess.py                    # 1024 px, 400 nuclei
    python bench/bench_postprocess.py --size 512 --nuclei 100 --repeat 3
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from histozoom.data.nuclei.records import CCRCC, class_map
from histozoom.data.nuclei.synthetic import NucleiSynthConfig, generate_sample
from histozoom.data.nuclei.targets import distance_map
from histozoom.inference.watershed import (
    WatershedConfig,
    classify_instances,
    instances_from_maps,
    nucleus_table,
)
from histozoom.metrics.instances import score_instances
from histozoom.reports.geojson import instances_to_geojson


def make_tile(size: int, nuclei: int, seed: int):
    """Ground truth and network-like maps of one synthetic tile (see the module docstring)."""
    cfg = NucleiSynthConfig(size=size, n_nuclei=(nuclei, nuclei))
    s = generate_sample(cfg, np.random.default_rng(seed), "bench")
    rng = np.random.default_rng(seed + 1)
    gt = s.inst_map
    fg = (gt > 0).astype(np.float32)
    # noise added before the blur: network outputs are spatially smooth (pixel-independent
    # noise would break each marker region {distance >= 0.5} into crumbs at its edge)
    binary_prob = np.clip(ndimage.gaussian_filter(fg + rng.normal(0, 0.2, gt.shape), 1.0), 0, 1).astype(np.float32)
    dist = distance_map(gt) + rng.normal(0, 0.1, gt.shape)
    dist = np.clip(ndimage.gaussian_filter(dist, 1.0), 0, None).astype(np.float32)
    cmap = class_map(gt, s.inst_class)
    n_ch = len(CCRCC.classes) + 1
    logits = rng.normal(0, 1.0, (1, n_ch, *gt.shape)).astype(np.float32)
    for k in range(n_ch):
        logits[0, k] += 3.0 * (cmap == k)
    logits -= logits.max(axis=1, keepdims=True)
    class_prob = np.exp(logits)
    class_prob /= class_prob.sum(axis=1, keepdims=True)
    return s, binary_prob, dist, class_prob


def pipeline(binary_prob, dist, class_prob, ws_cfg, classes):
    inst = instances_from_maps(binary_prob, dist, ws_cfg)
    cls = classify_instances(inst, class_prob[0], classes)
    table = nucleus_table(inst, cls)
    doc = instances_to_geojson(inst, cls, classes)
    text = json.dumps(doc)
    return inst, cls, table, doc, text


def _gc_off(fn, *args):
    """``fn(*args)`` with Python's cyclic garbage collector paused (diagnostic: the GeoJSON
    step allocates ~100 small lists per nucleus, which triggers full collections whose
    cost depends on everything else alive in the process)."""
    gc.disable()
    try:
        return fn(*args)
    finally:
        gc.enable()


def time_round_robin(fns: dict, repeat: int) -> dict[str, float]:
    """Median of ``repeat`` calls per function, called in turn each round (after one warm-up
    round). A full ``gc.collect()`` before each call (untimed) keeps one step's garbage
    from being collected on the next step's clock; collections a call itself triggers count."""
    for fn in fns.values():
        fn()
    ts: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(max(repeat, 1)):
        for k, fn in fns.items():
            gc.collect()
            t = time.perf_counter()
            fn()
            ts[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in ts.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024, help="tile side (px; a multiple of 4)")
    ap.add_argument("--nuclei", type=int, default=400, help="nuclei the generator tries to place")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=5, help="timed rounds (median reported), after one warm-up round")
    ap.add_argument("--marker-mode", default="threshold", choices=["threshold", "local_max", "h_maxima"])
    ap.add_argument("--profile", action="store_true", help="also print the hottest functions of one pipeline call")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    s, binary_prob, dist, class_prob = make_tile(args.size, args.nuclei, args.seed)
    t_make = time.perf_counter() - t0
    gt = s.inst_map
    classes = CCRCC.classes
    ws_cfg = WatershedConfig(marker_mode=args.marker_mode)
    n_gt = len(s.inst_class)
    print(f"tile {gt.shape[1]}x{gt.shape[0]} (synthetic ccRCC, {s.mpp} µm/px, built in {t_make:.1f} s): "
          f"{n_gt} GT nuclei, {len(s.meta['touching'])} touching pairs, foreground {np.mean(gt > 0):.1%}; "
          f"class probabilities {class_prob.shape} float32, per-pixel argmax accuracy on nuclei "
          f"{np.mean(np.argmax(class_prob[0], 0)[gt > 0] == class_map(gt, s.inst_class)[gt > 0]):.1%}")

    # fixed inputs for the downstream steps (the watershed's own output)
    inst, cls, table, doc, text = pipeline(binary_prob, dist, class_prob, ws_cfg, classes)
    steps = {
        "ndimage.label (lower bound)": lambda: ndimage.label(binary_prob > ws_cfg.fg_threshold),
    }
    try:  # newer instances_from_maps: distance=None -> connected components (+ min_size, relabel)
        instances_from_maps(binary_prob, None, ws_cfg)
        steps["instances, no distance map"] = lambda: instances_from_maps(binary_prob, None, ws_cfg)
    except Exception:
        pass
    steps |= {
        "watershed -> instances": lambda: instances_from_maps(binary_prob, dist, ws_cfg),
        "majority-vote classes": lambda: classify_instances(inst, class_prob[0], classes),
        "nucleus table": lambda: nucleus_table(inst, cls),
        "GeoJSON features": lambda: instances_to_geojson(inst, cls, classes),
        "GeoJSON json.dumps": lambda: json.dumps(doc),
        "  GeoJSON features, gc off": lambda: _gc_off(instances_to_geojson, inst, cls, classes),
        "whole pipeline (one call)": lambda: pipeline(binary_prob, dist, class_prob, ws_cfg, classes),
    }
    t = time_round_robin(steps, args.repeat)
    parts = ["watershed -> instances", "majority-vote classes", "nucleus table", "GeoJSON features", "GeoJSON json.dumps"]
    t_sum = sum(t[k] for k in parts)
    t_lb, t_ws = t["ndimage.label (lower bound)"], t["watershed -> instances"]

    print(f"seconds per tile: median of {args.repeat} round-robin rounds (after a warm-up round); "
          f"marker mode {args.marker_mode!r}; × ws = ratio to the watershed step, × label = ratio to "
          f"ndimage.label of the thresholded mask (the lower bound); share = of the sum of the steps (watershed to json.dumps)")
    head = f"{'step':<30} {'s/tile':>8} {'× ws':>7} {'× label':>8} {'share':>6}"
    print(head)
    print("-" * len(head))
    for k, v in t.items():
        share = f"{v / t_sum:6.1%}" if k in parts else f"{'':>6}"
        print(f"{k:<30} {v:8.4f} {v / t_ws:7.2f} {v / t_lb:8.1f} {share}")
    print(f"{'sum of steps':<30} {t_sum:8.4f} {t_sum / t_ws:7.2f} {t_sum / t_lb:8.1f} {1:6.0%}")

    sc = score_instances(gt, inst, s.inst_class, {k: c for k, (c, _) in cls.items()}, list(classes.ids))
    n_label = int(ndimage.label(binary_prob > ws_cfg.fg_threshold)[1])
    print(f"sanity: {int(inst.max())} instances found vs {n_gt} GT ({n_label} connected components of the mask); "
          f"{len(table)} table rows, {len(doc['features'])} GeoJSON features ({len(text) / 2**20:.1f} MiB JSON); "
          f"PQ {sc.pq:.3f} (DQ {sc.dq:.3f}, SQ {sc.sq:.3f}), aPQ {sc.apq:.3f}, Dice {sc.dice:.3f}, AJI {sc.aji:.3f} "
          f"(TP {sc.counts.tp}, FP {sc.counts.fp}, FN {sc.counts.fn})")

    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        gc.collect()  # else a full collection lands on whichever function happens to trigger it
        prof.enable()
        pipeline(binary_prob, dist, class_prob, ws_cfg, classes)
        prof.disable()
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(15)

    if args.json:
        from histozoom.atomic import write_json

        write_json(args.json, {
            "args": vars(args), "n_gt": n_gt, "n_found": int(inst.max()), "n_components": n_label,
            "seconds": t, "sum_of_steps": t_sum, "ratio_to_watershed": {k: v / t_ws for k, v in t.items()},
            "ratio_to_label": {k: v / t_lb for k, v in t.items()},
            "scores": {"pq": sc.pq, "dq": sc.dq, "sq": sc.sq, "apq": sc.apq, "dice": sc.dice, "aji": sc.aji,
                       "tp": sc.counts.tp, "fp": sc.counts.fp, "fn": sc.counts.fn},
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
