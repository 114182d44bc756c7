"""The README's challenge-toolkit table: what each of the OCELOT 2023 top teams' options
buys on the synthetic ``context`` data, one seed, the same training budget for every run.

Run:  python bench/toolkit_table.py [--out bench/out/toolkit] [--epochs cell-only=15 pred-to-inter-2=10] [--jobs 2]
      [--only 'Cell-only, Gaussians' percentile]   (a subset of rows, training only what they use)

Data: ``histozoom synth --preset context``, 128 px views at 0.4 / 1.6 µm/px, 120/30/40
pairs (``recipe_table.py``'s ``g04``). Runs (``histozoom train --epochs E --size 128``,
the default recipe, nothing tuned; E per model, the same for all of a model's options, and
smaller for Pred-to-inter-2, whose epochs cost 2.2x on this CPU): Cell-only and Pred-to-inter-2 with disks (seeds 0, 1,
2: seed 0 is the single model, the three are the ensemble), with Gaussian targets
(``--target gaussian``) and with percentile scaling (``--normalize percentile``). Rows on
the test split: each model alone; + TTA; the 3-model ensemble; Cell-only + extreme /
adaptive fusion with the tissue prediction of Pred-to-inter-2 (seed 0); Pred-to-inter-2 +
fusion with its own tissue branch. Every row is scored in one ``evaluate`` call (1000
bootstrap resamples, tissue-region subgroups): mF1 with its 95 % CI, F1 per class, and the
recall of the two subgroups fusion endangers (TC on BG, BC on CA). Finished runs are
reused; ``OUT/eval`` is an ``evaluate --out`` folder (``histozoom report --eval OUT/eval``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from recipe_table import run_one, synth

MODELS = {"cell-only": "Cell-only", "pred-to-inter-2": "Pred-to-inter-2"}
VARIANTS = {"disk": [], "gaussian": ["--target", "gaussian"], "percentile": ["--normalize", "percentile"]}


def runs_to_train(table: list[tuple[str, dict]]) -> list[tuple[str, str, int]]:
    """(model, variant, seed) of every training the rows use, Pred-to-inter-2's first (the
    longest first keeps both workers busy to the end)."""
    keys = {key for _, settings in table for key in settings["checkpoints"] + settings.get("tissue", [])}
    return sorted(keys, key=lambda j: (j[0] != "pred-to-inter-2", j))


def model_epochs(text: str) -> tuple[str, int]:
    """``MODEL=E`` of ``--epochs``."""
    model, _, epochs = text.partition("=")
    if model not in MODELS or not epochs.isdigit():
        raise argparse.ArgumentTypeError(f"expected MODEL=EPOCHS with MODEL one of {', '.join(MODELS)}: {text!r}")
    return model, int(epochs)


def run_dir(out: Path, model: str, variant: str, seed: int) -> Path:
    return out / "runs" / model / variant / f"seed{seed}"


def rows() -> list[tuple[str, dict]]:
    """(row label, prediction settings) in table order; runs are (model, variant, seed)."""
    table = []
    for m, name in MODELS.items():
        table += [(f"{name}, disks", {"checkpoints": [(m, "disk", 0)]}),
                  (f"{name}, Gaussians", {"checkpoints": [(m, "gaussian", 0)]}),
                  (f"{name}, disks + TTA", {"checkpoints": [(m, "disk", 0)], "tta": True}),
                  (f"{name}, disks, 3-model ensemble", {"checkpoints": [(m, "disk", s) for s in range(3)]}),
                  (f"{name}, disks, percentile scaling", {"checkpoints": [(m, "percentile", 0)]})]
        for rule in ("extreme", "adaptive"):
            tissue = {} if m == "pred-to-inter-2" else {"tissue": [("pred-to-inter-2", "disk", 0)]}
            source = "own tissue branch" if m == "pred-to-inter-2" else "Pred-to-inter-2's tissue"
            table.append((f"{name}, disks + {rule} fusion ({source})",
                          {"checkpoints": [(m, "disk", 0)], "fusion": rule, **tissue}))
    return table


def selected(table: list[tuple[str, dict]], only: list[str] | None) -> list[tuple[str, dict]]:
    """The rows whose label contains one of ``only`` (all rows without it). The bootstrap
    draws one set of resamples for every method, so a row scores the same in any subset."""
    chosen = [row for row in table if not only or any(text in row[0] for text in only)]
    if not chosen:
        raise SystemExit(f"--only {only} matches no row; rows: {[label for label, _ in table]}")
    return chosen


def predict(out: Path, label: str, settings: dict, data: Path) -> Path:
    from histozoom.cli.predict import load_tissue_model
    from histozoom.data.open import open_dataset
    from histozoom.inference.predictor import Predictor

    path = out / "predictions" / (label.replace(", ", "_").replace(" ", "-").replace("'", "") + ".json")
    if not path.is_file():
        tissue = load_tissue_model(str(run_dir(out, *settings["tissue"][0])), "cpu") if "tissue" in settings else None
        pred = Predictor.from_checkpoints([run_dir(out, *key) for key in settings["checkpoints"]], tta=settings.get("tta", False),
                                          fusion=settings.get("fusion"), tissue_model=tissue)
        path.parent.mkdir(parents=True, exist_ok=True)
        pred.predict_split(open_dataset(data).split("test")).write_challenge_json(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench/out/toolkit"))
    ap.add_argument("--epochs", type=model_epochs, nargs="+", default=[("cell-only", 15), ("pred-to-inter-2", 10)],
                    metavar="MODEL=E", help="epochs per model (default: cell-only=15 pred-to-inter-2=10)")
    ap.add_argument("--jobs", type=int, default=2, help="trainings at once (each its own process)")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--only", nargs="+", metavar="TEXT", help="only the rows whose label contains TEXT "
                                                               "(and only the trainings they use)")
    ap.add_argument("--train-args", default="", help="more train options for every run (smoke tests)")
    a = ap.parse_args()
    data = synth(a.out, "g04")
    epochs = dict(a.epochs)
    table = selected(rows(), a.only)
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as pool:
        futures = [pool.submit(run_one, data, run_dir(a.out, m, v, s), m, "default", s, epochs[m], "cpu",
                               VARIANTS[v] + a.train_args.split()) for m, v, s in runs_to_train(table)]
        for f in concurrent.futures.as_completed(futures):
            f.result()
    from histozoom.evaluation import evaluate

    preds = [predict(a.out, label, settings, data) for label, settings in table]
    report = evaluate([str(p) for p in preds], str(data), names=[label for label, _ in table], split="test",
                      subgroups=True, bootstrap=a.bootstrap, seed=0)
    report.write(a.out / "eval")
    doc = report.to_dict(per_image=False)
    print("| model and options | test mF1 (%) | 95 % CI | F1 BC | F1 TC | recall TC on BG | recall BC on CA |")
    print("|---|---|---|---|---|---|---|")
    for label, _ in table:
        m = doc["methods"][label]
        lo, hi = (m.get("ci") or {}).get("mF1") or (None, None)
        sub = {r["subgroup"]: r for r in m["subgroups"]["rows"]}
        ci_text = f"[{100 * lo:.2f}, {100 * hi:.2f}]" if lo is not None else ""
        f1 = {c: v["f1"] for c, v in m["classes"].items()}
        print(f"| {label} | {100 * m['mF1']:.2f} | {ci_text} | {100 * f1['BC']:.2f} | {100 * f1['TC']:.2f} | "
              f"{100 * sub['TC on BG']['recall']:.1f} | {100 * sub['BC on CA']['recall']:.1f} |")


if __name__ == "__main__":
    main()
