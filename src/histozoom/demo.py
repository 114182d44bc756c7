"""The README's main job, on built-in data.

1. Generate a small synthetic ``context`` dataset (OCELOT release layout).
2. Print its dataset tables (Tables 2, 3, 4, A.1 of the OCELOT paper).
3. Score the two real challenge submissions against the real test ground truth
   (``../shared/data/ocelot``) exactly as the challenge did, with bootstrap confidence
   intervals, ranking probabilities and pairwise win probabilities.

Steps whose outputs already exist are reused, so an interrupted demo resumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .data.open import open_dataset
from .data.stats import dataset_stats, stats_tables
from .data.synthetic import SynthConfig, write_synthetic_dataset
from .evaluation import evaluate
from .reports.tables import format_table

Echo = Callable[[str], None]


def default_shared_data() -> Path:
    """``../shared/data`` next to the working directory's repository, or beside the package."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        cand = base.parent / "shared" / "data"
        if cand.is_dir():
            return cand
    return Path.cwd().parent / "shared" / "data"


@dataclass(frozen=True)
class DemoConfig:
    out: Path
    shared_data: Path
    size: int = 256
    n_train: int = 24
    n_val: int = 8
    n_test: int = 8
    bootstrap: int = 10_000
    seed: int = 0


def synth_step(cfg: DemoConfig, echo: Echo) -> Path:
    root = cfg.out / "synth_context"
    if (root / "metadata.json").is_file():
        echo(f"[1/3] reusing synthetic dataset {root}")
        return root
    echo(f"[1/3] generating a synthetic 'context' dataset in {root}")
    synth = SynthConfig(preset="context", n_train=cfg.n_train, n_val=cfg.n_val, n_test=cfg.n_test,
                        cell_size=cfg.size, tissue_size=cfg.size, seed=cfg.seed)
    return write_synthetic_dataset(root, synth, overwrite=True)


def stats_step(root: Path, echo: Echo) -> None:
    echo("[2/3] dataset tables")
    stats = dataset_stats(open_dataset(root), progress=False)
    for title, headers, rows in stats_tables(stats):
        echo(format_table(rows, headers, title=title, digits=2) + "\n")


def scoring_step(cfg: DemoConfig, echo: Echo) -> None:
    ocelot = cfg.shared_data / "ocelot"
    gt = ocelot / "points" / "official_test_126_cell_gt.json"
    preds = [ocelot / "predictions" / "r12_e30k.json", ocelot / "predictions" / "r14_e21k.json"]
    if not gt.is_file() or not all(p.is_file() for p in preds):
        echo(f"[3/3] skipped: real challenge files not found under {ocelot}")
        return
    echo(f"[3/3] scoring two real submissions on the OCELOT 2023 test set ({cfg.bootstrap} bootstrap resamples)")
    report = evaluate([str(p) for p in preds], str(gt), names=[p.stem for p in preds], bootstrap=cfg.bootstrap,
                      seed=cfg.seed)
    report.write(cfg.out / "evaluation", plots=True)
    echo(report.tables())


def run_demo(cfg: DemoConfig, echo: Echo = print) -> None:
    cfg.out.mkdir(parents=True, exist_ok=True)
    root = synth_step(cfg, echo)
    stats_step(root, echo)
    scoring_step(cfg, echo)
    echo(f"outputs in {cfg.out}")
