"""The README's CHR-Net table: five nuclei models on synthetic ccRCC grading tiles, scored on
the test split with the paper's watershed markers (h-maxima, the default) and with the
markers thresholded at 0.5, on the same checkpoints.

Run:  python bench/chrnet_table.py [--out bench/out/chrnet] [--epochs 40] [--threads 2]

Trains with the README's settings through the ``histozoom nuclei`` command line (a finished
run in OUT is reused, an interrupted one resumed), then prints one markdown table.
Training times are wall-clock seconds of each run on this machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch

from histozoom.data.nuclei import open_nuclei
from histozoom.evaluation.nuclei import evaluate_samples
from histozoom.inference.nuclei_predictor import NucleiPredictor
from histozoom.inference.watershed import WatershedConfig

MODELS = {  # registry name -> table label
    "unet-nuclei": "U-Net, 5 classes",
    "chrnet-shr": "SHR",
    "chrnet-mhr": "MHR",
    "chrnet-mhr-udist": "MHR+UDist",
    "chrnet": "MHR+WDist = CHR-Net",
}
SMALL = ["--model-arg", "encoder_name=resnet18", "--model-arg", "decoder_channels=[64,32,32,16,16]"]
SMALL_CHRNET = ["--model-arg", "lunet_channels=[8,16,32]", "--model-arg", "hrfe_channels=[16,32,64]",
                "--model-arg", "hrfe_blocks=1"]
RULES = ("h_maxima", "threshold")


def histozoom(*args: str) -> None:
    cmd = [sys.executable, "-c", "import sys; from histozoom.cli import main; sys.exit(main())", *args]
    subprocess.run(cmd, check=True)


def train(out: Path, model: str, epochs: int) -> float:
    """Train (or reuse) ``model``; wall-clock seconds of this call."""
    run = out / "runs" / model
    t = time.perf_counter()
    args = ["nuclei", "train", "--data", str(out / "tiles"), "--model", model, "--out", str(run),
            "--epochs", str(epochs), "--crop", "128", "--batch-size", "4", "--lr", "1e-3",
            "--no-progress", "--no-tensorboard", *SMALL, *([] if model == "unet-nuclei" else SMALL_CHRNET)]
    if (run / "done.json").is_file():
        return float(json.loads((run / "done.json").read_text())["train_seconds_total"])
    if (run / "last").exists():
        args.append("--resume")
    histozoom(*args)
    return time.perf_counter() - t


def scores(out: Path, model: str, rule: str, test: list) -> dict[str, float]:
    pred = NucleiPredictor.from_checkpoint(out / "runs" / model, watershed=WatershedConfig(marker_mode=rule))
    m = evaluate_samples(pred.predict_samples(test), test, classes=pred.classes).mean
    per_class = {pred.classes.name(c): v for c, v in m.pq_per_class.items()}
    return {"aPQ": m.apq, "PQ": m.pq, "Dice": m.dice, "AJI": m.aji, **{f"PQ {k}": v for k, v in per_class.items()}}


def cell(values: list[float]) -> str:
    a, b = values
    return f"{a:.3f}" if round(a, 3) == round(b, 3) else f"{a:.3f} / {b:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/out/chrnet"))
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tiles = args.out / "tiles"
    if not (tiles / "classes.json").is_file():
        histozoom("nuclei", "synth", str(tiles), "--n", "60", "--size", "256", "--overwrite")
    seconds = {m: train(args.out, m, args.epochs) for m in MODELS}
    test = list(open_nuclei(tiles, "test"))
    table = {m: {r: scores(args.out, m, r, test) for r in RULES} for m in MODELS}
    keys = list(table["chrnet"]["h_maxima"])
    print(f"\nTest split ({len(test)} tiles); 'a / b' = h-maxima markers (default) / thresholded markers "
          "where they differ")
    print("| model | " + " | ".join(keys) + " | train time |")
    print("|---" * (len(keys) + 2) + "|")
    for m, label in MODELS.items():
        row = [cell([table[m][r][k] for r in RULES]) for k in keys]
        print(f"| {label} (`{m}`) | " + " | ".join(row) + f" | {seconds[m] / 60:.0f} min |")


if __name__ == "__main__":
    main()
