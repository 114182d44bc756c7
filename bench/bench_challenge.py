"""The Grand-Challenge container job (``histozoom challenge run``): peak memory against the
challenge's 12 GB limit, measured in one run.

Containers of N pairs are built from the released ``sample_004`` pair (its 1024 px cell and
tissue views repeated N times, as the platform stacks the 126 test pairs), and each is run
through the CLI in its own process with a Pred-to-inter-2 DeepLabV3+ ResNet-34 checkpoint
(random weights, background offset to a trained model's cell density: memory and time
hardly depend on the weights). Printed per N: the process's peak
resident set (``VmHWM``), seconds per pair; then the memory per extra pair (the slope
between the two sizes) and the peak extrapolated to the 126 test pairs.

    .venv/bin/python bench/bench_challenge.py                      # N = 2 and 8, CPU
    .venv/bin/python bench/bench_challenge.py --pairs 4 32 --device cuda
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from _measure import offset_background, peak_rss_mb, save_ocelot_checkpoint

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "ocelot" / "sample_004"
TEST_PAIRS = 126
LIMIT_GB = 12.0


def build_checkpoint(root: Path, pair, foreground: float = 0.02) -> Path:
    """Random weights, with the background logit offset so that a ``foreground`` share of
    the sample pair's pixels is foreground: detections then come at a trained model's
    density (about a hundred per pair) instead of one every 2 µm."""
    import torch

    from histozoom.models.registry import build_model

    torch.manual_seed(0)
    model = build_model("pred-to-inter-2").eval()

    def view(image):
        return torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255

    with torch.inference_mode():
        logits = model(view(pair.cell_image), view(pair.tissue_image),
                       torch.tensor([pair.placement.fractions()], dtype=torch.float32))["cell_logits"]
    offset_background(model, logits, foreground)
    return save_ocelot_checkpoint(model, root, 1024)


def child(args: list[str]) -> None:
    """Run the CLI in this process and print its peak RSS (MB) as the last line."""
    from histozoom.cli import main

    rc = main(args)
    print(json.dumps({"rc": rc, "peak_mb": peak_rss_mb()}))


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, nargs=2, default=[2, 8], metavar=("N1", "N2"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=2)
    a = ap.parse_args()
    if min(a.pairs) < a.batch_size or a.pairs[0] >= a.pairs[1]:
        ap.error("--pairs N1 N2 needs batch size <= N1 < N2 (below a full batch the slope measures the batch, not the pairs)")
    from histozoom.data.gc_container import GrandChallengeContainer, write_container

    with tempfile.TemporaryDirectory(prefix="bench-challenge-") as tmp:
        root = Path(tmp)
        pair = GrandChallengeContainer(SAMPLE).load("000")
        ckpt = build_checkpoint(root, pair)
        peaks = {}
        for n in a.pairs:
            inp = write_container(root / f"input{n}", [pair] * n)
            out = subprocess.run([sys.executable, __file__, "--child", "challenge", "run", "--input", str(inp),
                                  "--output", str(root / f"out{n}"), "--checkpoint", str(ckpt), "--device", a.device,
                                  "--batch-size", str(a.batch_size), "--no-progress", "--json"],
                                 check=True, capture_output=True, text=True).stdout.strip().splitlines()
            summary, measured = json.loads("\n".join(out[:-1])), json.loads(out[-1])
            peaks[n] = measured["peak_mb"]
            print(f"{n} pairs: peak RSS {peaks[n]:.0f} MB, {summary['seconds'] / n:.2f} s/pair, "
                  f"{summary['detections']} detections")
    n1, n2 = a.pairs
    slope = (peaks[n2] - peaks[n1]) / (n2 - n1)
    at_test = peaks[n2] + slope * (TEST_PAIRS - n2)
    print(f"memory per extra pair: {slope:.1f} MB (two 1024 px RGB views are {2 * 1024 * 1024 * 3 / 1e6:.1f} MB)")
    print(f"peak extrapolated to the {TEST_PAIRS} test pairs: {at_test / 1024:.2f} GB "
          f"= {at_test / 1024 / LIMIT_GB:.2f} of the challenge's {LIMIT_GB:g} GB limit")


if __name__ == "__main__":
    main()
