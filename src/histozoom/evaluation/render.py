"""What an evaluation report writes: text tables, the JSON document, PNG plots.

:class:`~histozoom.evaluation.scoring.EvaluationReport`'s ``tables()``, ``to_dict()`` and
``write()`` call these; this module alone decides the layout of each output (the plots
themselves are drawn by :mod:`histozoom.reports.plots`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..atomic import write_json
from ..jsonio import jsonable, nan_to_none
from ..metrics.detection import MODE_LABELS
from ..reports.tables import format_table

if TYPE_CHECKING:
    from .scoring import EvaluationReport

EVALUATION_JSON = "evaluation.json"
"""The JSON document's file name in an output folder."""



def _with_ci(v: float, ci: Sequence[float] | None) -> str:
    if ci is None or ci[0] is None:
        return f"{v:.4f}"
    return f"{v:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"


def _short_scores(s) -> dict:
    return {"mF1": s.mf1, **{f"{k}/{c}": float(getattr(s, attr)[j]) for j, c in enumerate(s.classes.names)
                             for k, attr in (("Pre", "precision"), ("Rec", "recall"), ("F1", "f1"))}}


def report_document(report: EvaluationReport, per_image: bool = True) -> dict:
    """The JSON document of a report (``evaluation.json``, ``histozoom evaluate --json``):
    settings, per method the pooled scores with CIs, per organ, subgroups, segmentation
    and (``per_image``) per-image counts; the method comparison. NaN is written as ``null``."""
    doc: dict[str, Any] = {
        "ground_truth": report.gt_source,
        "matching": report.mode,
        "matching_description": MODE_LABELS[report.mode],
        "radius_um": report.radius_um,
        "mpp": report.mpp,
        "radius_px": report.radius,
        "classes": report.classes.to_dict(),
        "num_images": len(report.images),
        "bootstrap": (
            {"resamples": report.n_resamples, "seed": report.seed, "level": report.level} if report.n_resamples else None
        ),
        "methods": {},
        "warnings": list(report.warnings),
    }
    for m in report.methods:
        s = m.scores()
        d = {"source": m.source, **s.to_dict()}
        if m.ci is not None:
            d["ci"] = m.ci.get("overall")
        if m.organs:
            d["per_organ"] = {
                organ: {"n_images": len(c.images), **_short_scores(c.scores()),
                        **({"ci": m.ci["organs"].get(organ)} if m.ci and "organs" in m.ci else {})}
                for organ, c in m.organs.items()
            }
        if m.subgroups is not None:
            rows = m.subgroups.scores()
            if m.ci and "subgroups" in m.ci:
                for r in rows:
                    r["ci"] = m.ci["subgroups"].get(r["subgroup"])
            d["subgroups"] = {"n_images": len(m.subgroups.images), "rows": rows,
                              "cell_distribution": m.subgroups.cell_distribution()}
        if m.segmentation is not None:
            d["segmentation"] = m.segmentation.scores()
            if m.ci and "segmentation" in m.ci:
                d["segmentation"]["ci"] = m.ci["segmentation"]
        if per_image:
            f1 = m.counts.per_image_f1()
            d["per_image"] = [
                {"image": k, "name": n, "organ": o,
                 **{c: {"tp": int(m.counts.counts[i, j, 0]), "fp": int(m.counts.counts[i, j, 1]),
                        "n_gt": int(m.counts.counts[i, j, 2]), "f1": nan_to_none(f1[i, j])}
                    for j, c in enumerate(report.classes.names)}}
                for i, (k, n, o) in enumerate(zip(report.images, report.image_names, report.organs_of_images, strict=False))
            ]
        if m.warnings:
            d["warnings"] = list(m.warnings)
        doc["methods"][m.name] = d
    if report.comparison is not None:
        doc["comparison"] = report.comparison
    return jsonable(doc)


def report_tables(report: EvaluationReport) -> str:
    """The text report (``histozoom evaluate``): scores with CIs, the challenge's rounding,
    organs, subgroups, segmentation, ranking uncertainty and pairwise wins, warnings."""
    cl = report.classes.names
    out = []
    ci = report.n_resamples > 0
    title = (f"Cell detection, {MODE_LABELS[report.mode]}; hit radius {report.radius_um:g} µm = {report.radius:g} px "
             f"at {report.mpp:g} µm/px; {len(report.images)} images")
    if ci:
        title += f"; {int(report.level * 100)}% CIs from {report.n_resamples} bootstrap resamples of images (seed {report.seed})"
    rows = []
    for m in report.methods:
        s = m.scores()
        for j, c in enumerate(cl):
            tp, fp, ngt = (int(v) for v in s.totals[j])
            r = [m.name, c]
            for key, v in (("precision", s.precision[j]), ("recall", s.recall[j]), ("f1", s.f1[j])):
                r.append(_with_ci(float(v), m.ci["overall"]["classes"][c][key] if ci and m.ci else None))
            rows.append(r + [tp, fp, ngt - tp])
        rows.append([m.name, "mF1", "", "", _with_ci(s.mf1, m.ci["overall"]["mF1"] if ci and m.ci else None), "", "", ""])
    out.append(format_table(rows, ["method", "class", "precision", "recall", "F1", "TP", "FP", "FN"], title=title))
    if report.mode == "challenge":
        keys = [f"{k}/{c}" for c in cl for k in ("Pre", "Rec", "F1")] + ["mF1"]
        rows = [[m.name] + [f"{m.scores().challenge[k]:.4f}" for k in keys] for m in report.methods]
        out.append(format_table(rows, ["method"] + keys,
                                title="As the challenge reports it (official formula, rounded to 4 decimals)"))
    organ_rows = []
    for m in report.methods:
        for organ, c in m.organs.items():
            s = c.scores()
            oci = m.ci["organs"].get(organ) if ci and m.ci and "organs" in m.ci else None
            organ_rows.append([m.name, organ, len(c.images), _with_ci(s.mf1, oci["mF1"] if oci else None)]
                              + [_with_ci(float(v), oci["classes"][n]["f1"] if oci else None)
                                 for n, v in zip(cl, s.f1, strict=True)])
    if organ_rows:
        out.append(format_table(organ_rows, ["method", "organ", "images", "mF1"] + [f"F1/{c}" for c in cl], title="Per organ"))
    sub_rows = []
    for m in report.methods:
        if m.subgroups is None:
            continue
        for r in m.subgroups.scores():
            cis = m.ci["subgroups"].get(r["subgroup"]) if ci and m.ci and "subgroups" in m.ci else None
            sub_rows.append([m.name, r["subgroup"]]
                            + [_with_ci(r[k], cis[k] if cis else None) for k in ("precision", "recall", "f1")]
                            + [r["n_gt"], r["n_pred"]])
    if sub_rows:
        out.append(format_table(sub_rows, ["method", "subgroup", "precision", "recall", "F1", "GT", "pred"],
                                title="Tissue-region subgroups (cells on unknown tissue left out)"))
    seg_rows = []
    for m in report.methods:
        if m.segmentation is None:
            continue
        s = m.segmentation.scores()
        seg_rows.append([m.name, s["mIoU"], s["mDice"]] + [s["classes"][c]["iou"] for c in m.segmentation.classes.names])
    if seg_rows:
        names = report.methods[0].segmentation.classes.names if report.methods[0].segmentation else ()
        out.append(format_table(seg_rows, ["method", "mIoU", "mDice"] + [f"IoU/{c}" for c in names],
                                title="Tissue segmentation (unknown pixels ignored)"))
    if report.comparison is not None:
        names = report.comparison["methods"]
        for metric, probs in report.comparison["rank_probabilities"].items():
            rows = [[n] + [float(p) for p in probs[i]] for i, n in enumerate(names)]
            out.append(format_table(rows, ["method"] + [f"P(rank {r + 1})" for r in range(len(names))],
                                    title=f"Ranking uncertainty, {metric} (share of bootstrap resamples)", digits=3))
        w = report.comparison["pairwise_win"]["mF1"]
        rows = [[n] + [float(v) for v in w[i]] for i, n in enumerate(names)]
        out.append(format_table(rows, ["row beats column"] + list(names), title="Pairwise win probability, mF1", digits=3))
    if report.warnings:
        out.append("Warnings:\n" + "\n".join(f"  - {w}" for w in report.warnings))
    return "\n\n".join(out)


def write_report(report: EvaluationReport, out_dir: str | Path, plots: bool = False) -> list[Path]:
    """Write :func:`report_document` as ``out_dir/evaluation.json`` and, with ``plots``, the
    PNG plots (per-image F1 violins; with several methods rank probabilities and pairwise
    wins), atomically; returns the paths written."""
    out_dir = Path(out_dir)
    written = [out_dir / EVALUATION_JSON]
    write_json(written[0], report_document(report))
    if plots:
        from ..reports.plots import (
            plot_f1_violins,
            plot_pairwise_wins,
            plot_rank_probabilities,
        )

        written.append(plot_f1_violins(report.per_image_f1(), report.classes.names, out_dir / "f1_per_image_violins.png"))
        if report.comparison is not None:
            names = report.comparison["methods"]
            rp = {k: np.asarray(v) for k, v in report.comparison["rank_probabilities"].items()}
            written.append(plot_rank_probabilities(rp, names, out_dir / "rank_probabilities.png"))
            written.append(plot_pairwise_wins(np.asarray(report.comparison["pairwise_win"]["mF1"]), names,
                                              out_dir / "pairwise_wins.png"))
    return written
