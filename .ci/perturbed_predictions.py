"""Write a challenge-JSON prediction file: a dataset split's ground truth with cells dropped,
moved and re-classed (for CI checks that need plausible predictions without a model).

    .venv/bin/python .ci/perturbed_predictions.py DATASET SPLIT OUT.json [--seed S] [--drop F] [--jitter PX] [--flip F]
"""

from __future__ import annotations

import argparse

import numpy as np

from histozoom.data.challenge_json import write_challenge_points
from histozoom.data.open import open_dataset
from histozoom.evaluation.sources import split_ground_truth
from histozoom.pair import Points


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset")
    p.add_argument("split")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--drop", type=float, default=0.1, help="share of cells left out")
    p.add_argument("--jitter", type=float, default=2.0, help="standard deviation of the moves, px")
    p.add_argument("--flip", type=float, default=0.15, help="share of kept cells given another class")
    a = p.parse_args()
    split = open_dataset(a.dataset).split(a.split)
    classes = np.asarray(split.spec.cell_classes.ids)
    rng = np.random.default_rng(a.seed)
    preds = {}
    for k, pts in split_ground_truth(split).items():
        size = np.asarray(split.load(split.ids[k]).cell_size) - 1
        keep = rng.random(len(pts)) >= a.drop
        xy = np.clip(pts.xy[keep] + rng.normal(0, a.jitter, (int(keep.sum()), 2)), 0, size)
        cls = pts.cls[keep].copy()
        flip = rng.random(len(cls)) < a.flip
        cls[flip] = rng.choice(classes, int(flip.sum()))
        preds[k] = Points(xy, cls, rng.random(len(cls)))
    write_challenge_points(a.out, preds, len(split.ids))


if __name__ == "__main__":
    main()
