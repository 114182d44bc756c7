"""The README's recipe table: the default training recipe vs the paper's vs the old demo's
hand-tuned flags, for Cell-only, Pred-to-inter-2 and Tissue-label leaking, several seeds,
on two geometries of the synthetic ``context`` preset.

Run:  python bench/recipe_table.py [--out bench/out/recipes] [--epochs 25] [--seeds 3]
                                   [--geometries g02 g04] [--device cpu|cuda] [--jobs 1]

Recipes (every run: ``histozoom train --epochs E --size 128 --seed S`` plus):

* ``default`` — nothing else (the default recipe decides LR, schedule, loss, BatchNorm);
* ``paper``   — ``--recipe paper`` (LR 1e-4, ×0.3 at 60 % / 80 %, Dice);
* ``tuned``   — ``--recipe paper --lr 1e-3 --bn-recalibration 4`` (the flags the demo used
  to need).

Geometries (120/30/40 pairs of 128 px views, tissue field 4× the cell field):
``g02`` = 0.2 / 0.8 µm/px, ``g04`` = 0.4 / 1.6 µm/px. A finished run in OUT is reused
and an interrupted one resumed, so the table can be built over several sessions. Prints
one markdown table: test mF1 mean and 95 % t-interval over seeds, and the mean training
time per run (seconds of this machine, as ``train_seconds_total`` in each run's summary).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from histozoom.training.experiment import format_ci, mean_ci

GEOMETRIES = {"g02": (0.2, 0.8), "g04": (0.4, 1.6)}
MODELS = {"cell-only": "Cell-only", "pred-to-inter-2": "Pred-to-inter-2", "tissue-label-leaking": "Leaking"}
RECIPES = {
    "default": [],
    "paper": ["--recipe", "paper"],
    "tuned": ["--recipe", "paper", "--lr", "1e-3", "--bn-recalibration", "4"],
}
EXE = [sys.executable, "-m", "histozoom"]


def synth(out: Path, name: str) -> Path:
    root = out / "data" / name
    if not (root / "metadata.json").is_file():
        cm, tm = GEOMETRIES[name]
        subprocess.run([*EXE, "synth", str(root), "--preset", "context", "--cell-size", "128", "--tissue-size", "128",
                        "--cell-mpp", str(cm), "--tissue-mpp", str(tm), "--n-train", "120", "--n-val", "30",
                        "--n-test", "40", "--seed", "0", "--overwrite"], check=True, stdout=subprocess.DEVNULL)
    return root


def run_one(data: Path, run: Path, model: str, recipe: str, seed: int, epochs: int, device: str,
            extra: list[str]) -> dict:
    done = run / "done.json"
    if not done.is_file():
        args = [*EXE, "train", "--data", str(data), "--model", model, "--out", str(run), "--epochs", str(epochs),
                "--size", "128", "--seed", str(seed), "--device", device, "--no-progress", "--no-tensorboard",
                *RECIPES[recipe], *extra]
        if (run / "train_config.json").is_file():
            args.append("--resume")
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
        subprocess.run(args, check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads(done.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/out/recipes"))
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--geometries", nargs="+", default=list(GEOMETRIES), choices=list(GEOMETRIES))
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (each on its own process)")
    ap.add_argument("--train-args", default="", help="more train options for every run (smoke tests), e.g. "
                                                      "'--max-train-batches 1'")
    a = ap.parse_args()
    jobs = []
    for g in a.geometries:
        data = synth(a.out, g)
        for m in a.models:
            for r in a.recipes:
                for s in range(a.seeds):
                    jobs.append(((g, m, r, s), (data, a.out / "runs" / g / m / r / f"seed{s}", m, r, s, a.epochs, a.device,
                                              a.train_args.split())))
    results: dict[tuple, dict] = {}
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
        futures = {pool.submit(run_one, *args): key for key, args in jobs}
        for f in concurrent.futures.as_completed(futures):
            key = futures[f]
            results[key] = f.result()
            print(f"[recipes] {'/'.join(map(str, key))}: test mF1 {results[key]['test']['mF1']:.4f}", file=sys.stderr)
    print(f"| geometry | model | recipe | test mF1 (%), mean and 95 % CI over {a.seeds} seeds | seeds | train s / run |")
    print("|---|---|---|---|---|---|")
    for g in a.geometries:
        for m in a.models:
            for r in a.recipes:
                runs = [results[(g, m, r, s)] for s in range(a.seeds)]
                ci = mean_ci([x["test"]["mF1"] for x in runs])
                secs = sum(x["train_seconds_total"] for x in runs) / len(runs)
                label = f"{GEOMETRIES[g][0]}/{GEOMETRIES[g][1]} µm/px"
                each = ", ".join(f"{100 * x['test']['mF1']:.1f}" for x in runs)
                print(f"| {label} | {MODELS[m]} | {r} | {format_ci(ci)} | {each} | {secs:.0f} |")


if __name__ == "__main__":
    main()
