"""Experiments as in the OCELOT paper (§6.2–6.4): hyper-parameter grids selected on
validation, repeated seeds with mean ± 95 % CI, Tables 5–7, and the feature-sharing search.

>>> from histozoom.training.experiment import ExperimentConfig, run_experiment
>>> exp = ExperimentConfig(base=TrainConfig(data="DATA"), models=["cell-only", "pred-to-inter-2"])
>>> results = run_experiment(exp, "EXP")

Stages (each resumable: every run is a folder with ``done.json`` when finished; a
finished run is read, an unfinished one resumed, so the whole experiment can be stopped
and restarted at any time):

1. **tune** — per model, every ``(lr, cell_lr_ratio, cell_dropout)`` of the grids
   (paper: LR in [5e-5, 2e-3], ratio {1, 0.5}, cell dropout {0.1, 0.3, 0.5}; the tissue
   branch keeps 0.1) with ``grid_seeds`` seeds; the setting with the best mean
   validation mF1 is selected. ``tune=False`` uses the base config's values.
2. **seeds** — the selected setting with ``seeds`` seeds (paper: 5; the grid's seeds are
   reused). Each run's scores are those of its best-validation epoch: val mF1 and the
   test mF1 of that checkpoint (also per organ).
3. **search** (optional) — the 4³ = 64 feature-sharing configurations
   (:func:`~histozoom.models.cell_tissue.all_sharing_configs`) under a budget: ``random``
   trains ``search_budget`` configurations drawn at random; ``halving`` (successive
   halving) trains ``search_budget`` configurations for a few epochs and keeps the best
   ``1/search_eta`` at each rung, with ``search_eta`` times the epochs, up to the full
   schedule. Selected on validation mF1.
4. **report** — Table 5 (models × val/test, mean ± CI half-width, in %), Table 6 (test
   mF1 per organ), written to ``EXP/results.json`` and ``EXP/tables.txt``.

Folder layout::

    EXP/experiment.json
    EXP/runs/<model>/<setting>/seed<S>/          one training run each (see trainer)
    EXP/search/e<EPOCHS>/<sharing>/seed<S>/
    EXP/results.json, EXP/tables.txt

Confidence intervals: ``mean ± t_{(1+level)/2, n-1} · s / √n`` with ``s`` the sample
standard deviation (ddof = 1); undefined (``None``) for fewer than two runs.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import check_output, write_json, write_text
from ..config_fields import DictConfig
from ..constants import (
    DEFAULT_CELL_DROPOUT_GRID,
    DEFAULT_LR_GRID,
    PAPER_CELL_DROPOUT_GRID,
    PAPER_CELL_LR_RATIOS,
    PAPER_LR_GRID,
    PAPER_MODELS,
    SEARCH_MODES,
)
from ..errors import InputError
from ..folder_lock import folder_lock
from ..models.cell_tissue import SHARE_MODES, all_sharing_configs
from ..reports.tables import format_table
from .cell_tissue_trainer import train
from .config import TRAIN_CONFIG_FILE, TrainConfig
from .loop import read_done

FAILED_FILE = "failed.json"
EXPERIMENT_FILE = "experiment.json"


# ---------------------------------------------------------------------- statistics
def mean_ci(values: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """``{"mean", "half_width", "low", "high", "std", "n"}`` of a t-interval for the mean.

    ``half_width = t_{(1+level)/2, n-1} · s / √n`` (``s``: ddof = 1). With fewer than two
    values the interval is ``None``.
    """
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    n = len(v)
    if n == 0:
        return {"mean": None, "half_width": None, "low": None, "high": None, "std": None, "n": 0}
    mean = float(v.mean())
    if n < 2:
        return {"mean": mean, "half_width": None, "low": None, "high": None, "std": None, "n": 1}
    from scipy.stats import t

    s = float(v.std(ddof=1))
    hw = float(t.ppf((1 + level) / 2, n - 1) * s / math.sqrt(n))
    return {"mean": mean, "half_width": hw, "low": mean - hw, "high": mean + hw, "std": s, "n": n}


def format_ci(ci: Mapping[str, Any], scale: float = 100.0, digits: int = 2) -> str:
    """``"72.68±1.58"`` (the paper's style, in %); ``"-"`` when empty."""
    if ci.get("mean") is None:
        return "-"
    text = f"{ci['mean'] * scale:.{digits}f}"
    if ci.get("half_width") is not None:
        text += f"±{ci['half_width'] * scale:.{digits}f}"
    return text


# ---------------------------------------------------------------------- configuration
@dataclass
class ExperimentConfig(DictConfig):
    """An experiment: the base training config and what varies around it (see module doc).

    ``to_dict``/``from_dict`` (:class:`~histozoom.config_fields.DictConfig`) hold ``base``
    as a nested dict; a mapping given as ``base`` is read with ``TrainConfig.from_dict``.
    """

    base: TrainConfig = field(default_factory=TrainConfig)
    models: list[str] = field(default_factory=lambda: list(PAPER_MODELS))
    seeds: int = 5
    tune: bool = True
    lr_grid: list[float] | None = None
    cell_dropout_grid: list[float] | None = None
    cell_lr_ratios: list[float] = field(default_factory=lambda: list(PAPER_CELL_LR_RATIOS))
    grid_seeds: int = 1
    search: str = "none"
    search_budget: int = 16
    search_eta: int = 3
    search_seed: int = 0
    level: float = 0.95

    def __post_init__(self):
        if isinstance(self.base, Mapping):
            self.base = TrainConfig.from_dict(self.base)
        paper = self.base.recipe == "paper"
        if self.lr_grid is None:
            self.lr_grid = list(PAPER_LR_GRID if paper else DEFAULT_LR_GRID)
        if self.cell_dropout_grid is None:
            self.cell_dropout_grid = list(PAPER_CELL_DROPOUT_GRID if paper else DEFAULT_CELL_DROPOUT_GRID)
        problems = []
        if self.seeds < 1 or self.grid_seeds < 1:
            problems.append("seeds and grid_seeds must be >= 1")
        if self.search not in SEARCH_MODES:
            problems.append(f"search must be one of {SEARCH_MODES}, got {self.search!r}")
        if self.search_budget < 1 or self.search_eta < 2:
            problems.append("search_budget must be >= 1 and search_eta >= 2")
        if self.tune and not (self.lr_grid and self.cell_dropout_grid and self.cell_lr_ratios):
            problems.append("tuning needs non-empty lr, cell-dropout and ratio grids")
        if not 0 < self.level < 1:
            problems.append(f"level must be in (0, 1), got {self.level}")
        if problems:
            raise ValueError("ExperimentConfig: " + "; ".join(problems))

    # ------------------------------------------------------------------ settings
    def settings(self) -> list[dict[str, float]]:
        """The grid's settings ``{"lr", "cell_lr_ratio", "cell_dropout"}`` (one, from the
        base config, without tuning)."""
        if not self.tune:
            return [{"lr": self.base.lr, "cell_lr_ratio": self.base.cell_lr_ratio,
                     "cell_dropout": self.base.cell_dropout}]
        return [{"lr": lr, "cell_lr_ratio": r, "cell_dropout": d}
                for lr in self.lr_grid for r in self.cell_lr_ratios for d in self.cell_dropout_grid]


def setting_tag(setting: Mapping[str, Any]) -> str:
    """Folder name of a setting, e.g. ``lr0.0001_r0.5_do0.3`` (``lrauto``: the recipe's LR)."""
    do, lr = setting.get("cell_dropout"), setting["lr"]
    return f"lr{'auto' if lr is None else f'{lr:g}'}_r{setting['cell_lr_ratio']:g}_do{'default' if do is None else f'{do:g}'}"


def sharing_tag(sharing: Sequence[str]) -> str:
    return "-".join(sharing)


# ---------------------------------------------------------------------- running
@dataclass
class RunSpec:
    """One training run of the experiment: its folder and config."""

    run_dir: Path
    config: TrainConfig
    group: str = ""

    def done(self) -> dict | None:
        return read_done(self.run_dir)


class Experiment:
    """Runs the stages of an :class:`ExperimentConfig` in ``out`` (see the module doc)."""

    def __init__(self, cfg: ExperimentConfig, out: str | Path, log: Callable[[str], None] | None = None,
                 runner: Callable[[TrainConfig, Path, bool], dict] | None = None,
                 parallel: Callable[[list[tuple[TrainConfig, Path, bool]]], list] | None = None):
        """``runner(config, run_dir, resume)`` trains one run (default: the trainer);
        ``parallel``, when given, trains a stage's pending runs together (e.g.
        :func:`histozoom.training.ray_runs.ray_parallel`) and returns, per run, its
        summary or the exception it raised; the stage then reads them like finished runs."""
        self.cfg = cfg
        self.out = Path(out)
        self.log = log or (lambda msg: None)
        self.runner = runner or (lambda c, d, resume: train(c, d, resume=resume, log=self.log))
        self.parallel = parallel
        self.failed: set[str] = set()  # runs that failed in this invocation: not tried again in it
        self.trained: list[str] = []  # runs trained (or resumed) by this object
        self.pending: list[str] = []  # runs left untrained (dry run or a stage not asked for)

    # ------------------------------------------------------------------ one run
    def run(self, spec: RunSpec, dry_run: bool = False) -> dict | None:
        """The summary of a run: read when finished, otherwise trained (or resumed).
        A failure is recorded in ``RUN/failed.json`` and gives ``None`` (the experiment
        goes on)."""
        done = spec.done()
        self._check_settings(spec)
        if done is not None:
            return done
        if str(spec.run_dir) in self.failed:
            return None
        if dry_run:
            if str(spec.run_dir) not in self.pending:
                self.pending.append(str(spec.run_dir))
            return None
        self.log(f"run {spec.run_dir}")
        try:
            summary = self.runner(spec.config, spec.run_dir, (spec.run_dir / TRAIN_CONFIG_FILE).is_file())
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as err:
            self._record_failure(spec, err)
            return None
        self.trained.append(str(spec.run_dir))
        return summary if summary.get("finished") else None

    @staticmethod
    def _check_settings(spec: RunSpec) -> None:
        """Refuse a run folder made with other settings than ``spec``'s."""
        saved = spec.run_dir / TRAIN_CONFIG_FILE
        if saved.is_file():
            diff = TrainConfig.load(saved).differences(spec.config)
            if diff:
                raise InputError(saved, f"this run was made with other settings ({sorted(diff)}); use a new experiment folder")

    def _record_failure(self, spec: RunSpec, err: BaseException) -> None:
        """``RUN/failed.json`` with the error and its traceback; not tried again in this invocation."""
        spec.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(spec.run_dir / FAILED_FILE, {"error": f"{type(err).__name__}: {err}",
                                                "traceback": "".join(traceback.format_exception(err))})
        self.log(f"run {spec.run_dir} failed: {type(err).__name__}: {err}")
        self.failed.add(str(spec.run_dir))

    def run_together(self, specs: Sequence[RunSpec], dry_run: bool = False) -> None:
        """With ``parallel``: train the runs of ``specs`` not yet finished all at once
        (a failure is recorded in ``RUN/failed.json``, as by :meth:`run`). Without it,
        nothing: :meth:`run` trains them one by one."""
        if self.parallel is None or dry_run:
            return
        todo = []
        for spec in specs:
            self._check_settings(spec)
            if spec.done() is None and str(spec.run_dir) not in self.failed and spec not in todo:
                todo.append(spec)
        if not todo:
            return
        self.log(f"training {len(todo)} runs together")
        outcomes = self.parallel([(s.config, s.run_dir, (s.run_dir / TRAIN_CONFIG_FILE).is_file()) for s in todo])
        for spec, outcome in zip(todo, outcomes):
            if isinstance(outcome, BaseException):
                self._record_failure(spec, outcome)
            else:
                self.trained.append(str(spec.run_dir))

    def model_run(self, model: str, setting: Mapping[str, Any], seed: int) -> RunSpec:
        changes = {"model": model, "seed": seed, "lr": setting["lr"], "cell_lr_ratio": setting["cell_lr_ratio"],
                   "cell_dropout": setting.get("cell_dropout"), "stop_after": None}
        cfg = self.cfg.base.replace(**changes)
        return RunSpec(self.out / "runs" / model / setting_tag(setting) / f"seed{seed}", cfg, model)

    # ------------------------------------------------------------------ stages
    def tune(self, dry_run: bool = False) -> dict[str, dict]:
        """Per model: every setting's mean val mF1 over the grid seeds and the selected one."""
        out = {}
        self.run_together([self.model_run(m, st, seed) for m in self.cfg.models for st in self.cfg.settings()
                           for seed in range(self.cfg.grid_seeds)], dry_run)
        for model in self.cfg.models:
            rows = []
            for setting in self.cfg.settings():
                vals = []
                for seed in range(self.cfg.grid_seeds):
                    s = self.run(self.model_run(model, setting, seed), dry_run)
                    if s and s.get("val"):
                        vals.append(s["val"]["mF1"])
                rows.append({"setting": dict(setting), "tag": setting_tag(setting), "val_mF1": vals,
                             "mean_val_mF1": float(np.mean(vals)) if vals else None})
            scored = [r for r in rows if r["mean_val_mF1"] is not None]
            best = max(scored, key=lambda r: r["mean_val_mF1"]) if scored else None
            if len(self.cfg.settings()) == 1:
                best = rows[0]
            out[model] = {"grid": rows, "selected": None if best is None else best["setting"],
                          "selected_tag": None if best is None else best["tag"]}
        return out

    def seeds(self, selected: Mapping[str, Mapping], dry_run: bool = False) -> dict[str, dict]:
        """Per model: the runs of the selected setting over ``seeds`` seeds, aggregated."""
        out = {}
        self.run_together([self.model_run(m, selected[m]["selected"], seed) for m in self.cfg.models
                           if (selected.get(m) or {}).get("selected") is not None for seed in range(self.cfg.seeds)], dry_run)
        for model in self.cfg.models:
            setting = (selected.get(model) or {}).get("selected")
            if setting is None:
                out[model] = {"runs": [], "note": "no setting selected (grid runs missing or failed)"}
                continue
            runs = []
            for seed in range(self.cfg.seeds):
                spec = self.model_run(model, setting, seed)
                s = self.run(spec, dry_run)
                if s is not None:
                    runs.append({"seed": seed, "run": str(spec.run_dir), "best_epoch": s.get("best_epoch"),
                                 "val_mF1": (s.get("val") or {}).get("mF1"), "test_mF1": (s.get("test") or {}).get("mF1"),
                                 "test_organs": (s.get("test") or {}).get("organs", {}),
                                 "organ_images": (s.get("test") or {}).get("organ_images", {})})
            out[model] = {"setting": dict(setting), "runs": runs, **aggregate_runs(runs, self.cfg.level)}
        return out

    def search(self, dry_run: bool = False) -> dict | None:
        """The feature-sharing search (``random`` or successive ``halving``) on validation mF1."""
        mode = self.cfg.search
        if mode == "none":
            return None
        rng = np.random.default_rng(self.cfg.search_seed)
        configs = all_sharing_configs()
        budget = min(self.cfg.search_budget, len(configs))
        order = rng.permutation(len(configs))[:budget]
        candidates = [configs[i] for i in sorted(order)]
        full = self.cfg.base.epochs
        if mode == "random":
            rungs = [full]
        else:
            eta = self.cfg.search_eta
            n_rungs = max(1, int(math.floor(math.log(budget, eta) + 1e-9)) + 1)
            rungs = [max(1, int(round(full / eta ** (n_rungs - 1 - i)))) for i in range(n_rungs)]
        history = []
        epochs_used = 0
        for r, epochs in enumerate(rungs):
            scores = []
            specs = [self._search_run(sharing, epochs) for sharing in candidates]
            self.run_together(specs, dry_run)
            for sharing, spec in zip(candidates, specs):
                s = self.run(spec, dry_run)
                epochs_used += epochs
                val = (s or {}).get("val") or {}
                scores.append({"sharing": list(sharing), "epochs": epochs, "val_mF1": val.get("mF1"),
                               "test_mF1": ((s or {}).get("test") or {}).get("mF1"), "run": str(spec.run_dir)})
            history.append({"rung": r, "epochs": epochs, "results": scores})
            ranked = sorted((x for x in scores if x["val_mF1"] is not None), key=lambda x: -x["val_mF1"])
            if r < len(rungs) - 1:
                if not ranked:
                    break  # nothing scored (not trained yet): the next rungs are unknown
                keep = max(1, len(candidates) // self.cfg.search_eta)
                candidates = [tuple(x["sharing"]) for x in ranked[:keep]]
        final = sorted((x for x in history[-1]["results"] if x["val_mF1"] is not None), key=lambda x: -x["val_mF1"])
        return {"mode": mode, "budget": budget, "rungs": rungs, "epochs_trained": epochs_used,
                "full_search_epochs": len(configs) * full, "history": history,
                "best": final[0] if final else None}

    def _search_run(self, sharing: Sequence[str], epochs: int) -> RunSpec:
        cfg = self.cfg.base.replace(model="feature-sharing", epochs=epochs, stop_after=None,
                                    model_overrides={**self.cfg.base.model_overrides, "sharing": list(sharing)})
        return RunSpec(self.out / "search" / f"e{epochs}" / sharing_tag(sharing) / f"seed{self.cfg.base.seed}", cfg)

    # ------------------------------------------------------------------ all together
    def run_all(self, stages: Sequence[str] = ("tune", "seeds", "search", "report"), dry_run: bool = False) -> dict:
        """Run the given stages; a stage not given only reads its finished runs (so
        ``stages=("report",)`` tabulates what exists and trains nothing)."""
        stages = set(stages)
        unknown = stages - {"tune", "seeds", "search", "report"}
        if unknown:
            raise ValueError(f"unknown stages {sorted(unknown)}")
        check_output(self.out, "folder")
        with folder_lock(self.out, "experiment folder"):
            return self._run_all(stages, dry_run)

    def _run_all(self, stages: set[str], dry_run: bool) -> dict:
        if not dry_run:
            write_json(self.out / EXPERIMENT_FILE, self.cfg.to_dict())
        results: dict[str, Any] = {"experiment": self.cfg.to_dict()}
        tuned = self.tune(dry_run or not ({"tune", "seeds"} & stages))
        results["tune"] = tuned
        results["models"] = self.seeds(tuned, dry_run or "seeds" not in stages)
        results["search"] = self.search(dry_run or "search" not in stages)
        if dry_run:
            results["planned_runs"] = list(self.pending)
            return results
        results["tables"] = {"table5": table5(results["models"]), "table6": table6(results["models"])}
        if "report" in stages:
            write_text(self.out / "tables.txt", render_tables(results))
        write_json(self.out / "results.json", results)
        return results


def run_experiment(cfg: ExperimentConfig, out: str | Path, stages: Sequence[str] = ("tune", "seeds", "search", "report"),
                   dry_run: bool = False, log: Callable[[str], None] | None = None, parallel=None) -> dict:
    """Run (or continue) an experiment; returns the results (also ``OUT/results.json``);
    ``parallel``: see :class:`Experiment`."""
    return Experiment(cfg, out, log, parallel=parallel).run_all(stages, dry_run)


# ---------------------------------------------------------------------- aggregation and tables
def aggregate_runs(runs: Sequence[Mapping[str, Any]], level: float = 0.95) -> dict[str, Any]:
    """Mean ± CI of val and test mF1 over runs, and of test mF1 per organ."""
    organs = sorted({o for r in runs for o in (r.get("test_organs") or {})})
    return {
        "val": mean_ci([r.get("val_mF1") for r in runs], level),
        "test": mean_ci([r.get("test_mF1") for r in runs], level),
        "organs": {o: mean_ci([(r.get("test_organs") or {}).get(o) for r in runs], level) for o in organs},
        "organ_images": dict(next((r.get("organ_images") for r in runs if r.get("organ_images")), {}) or {}),
    }


def table5(models: Mapping[str, Mapping]) -> dict[str, Any]:
    """Table 5 layout: one row per model, ``Val`` and ``Test`` as mean ± CI in %."""
    rows = [[m, format_ci(a.get("val", {})), format_ci(a.get("test", {})), len(a.get("runs", []))] for m, a in models.items()]
    return {"headers": ["Method", "Val", "Test", "runs"], "rows": rows}


def table6(models: Mapping[str, Mapping]) -> dict[str, Any]:
    """Table 6 layout: test mF1 per organ (columns: population, then organs by image count)."""
    counts: dict[str, int] = {}
    for a in models.values():
        for o, n in (a.get("organ_images") or {}).items():
            counts[o] = max(counts.get(o, 0), int(n))
    organs = sorted({o for a in models.values() for o in (a.get("organs") or {})}, key=lambda o: (-counts.get(o, 0), o))
    total = sum(counts.values())
    headers = ["Method", f"population ({total})" if total else "population"] + [
        f"{o} ({counts[o]})" if o in counts else o for o in organs]
    rows = [[m, format_ci(a.get("test", {}))] + [format_ci((a.get("organs") or {}).get(o, {})) for o in organs]
            for m, a in models.items()]
    return {"headers": headers, "rows": rows}


def render_tables(results: Mapping[str, Any]) -> str:
    parts = []
    t = results.get("tables") or {}
    if "table5" in t:
        parts.append(format_table(t["table5"]["rows"], t["table5"]["headers"],
                                  "Table 5: cell detection mF1 (%), mean ± 95% CI over seeds"))
    if "table6" in t:
        parts.append(format_table(t["table6"]["rows"], t["table6"]["headers"], "Table 6: test mF1 (%) per organ"))
    tuned = results.get("tune") or {}
    sel = [[m, v.get("selected_tag") or "-"] for m, v in tuned.items()]
    if sel:
        parts.append(format_table(sel, ["Method", "selected setting (validation)"], "Hyper-parameters"))
    search = results.get("search")
    if search and search.get("best"):
        b = search["best"]
        parts.append(f"Feature-sharing search ({search['mode']}, {search['budget']} of 64 configurations, "
                     f"{search['epochs_trained']} of {search['full_search_epochs']} epochs): best "
                     f"{sharing_tag(b['sharing'])} (val mF1 {b['val_mF1']:.4f})")
    return "\n\n".join(parts) + "\n"


__all__ = ["ExperimentConfig", "Experiment", "run_experiment", "mean_ci", "format_ci", "aggregate_runs",
           "table5", "table6", "PAPER_MODELS", "SHARE_MODES"]
