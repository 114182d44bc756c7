"""One self-contained HTML file summarising evaluation folders (``histozoom report``).

Input: folders written by ``histozoom evaluate --out DIR`` (their ``evaluation.json``,
:func:`histozoom.evaluation.render.report_document`). Output: one HTML file with every
image embedded as a base64 PNG ``data:`` URI and its style inline, so it opens offline
and can be mailed as is. Sections (element ids):

* ``summary`` -- ground truth, matching rule, hit radius, images, bootstrap settings, warnings;
* ``scores`` -- per method mF1 and per-class precision / recall / F1 with the 95 % bootstrap
  CIs recorded in ``evaluation.json`` (and the challenge's rounding);
* ``per-image`` -- per-image F1 violins (:func:`histozoom.reports.plots.plot_f1_violins`);
* ``ranking`` -- rank-probability and pairwise-win heat maps (report Fig. 5-6) recomputed
  from the per-image counts of all methods together by the paired bootstrap of
  :func:`histozoom.evaluation.scoring.bootstrap_report` (needs two methods);
* ``subgroups``, ``organs``, ``segmentation`` -- tissue-region subgroups (BC on BG, ...),
  per-organ scores and tissue IoU / Dice, when the evaluation holds them;
* ``overlays`` -- as the OCELOT paper's Fig. 7, for the images of lowest and highest mF1 of
  the first method: the cell view with ground truth (rings of the hit radius) and
  predictions (dots), colour per class; the tissue view with the cell window and the tissue
  ground truth / prediction as a translucent overlay. Only when the ground truth is a
  dataset folder (images exist); predictions are re-read from each method's recorded source.

Several folders are merged into one set of methods (a name used in two folders gets the
folder's name added); folders whose ground truth, matching, radius, mpp, classes or
images differ are refused (:class:`~histozoom.errors.InputError`).
"""

from __future__ import annotations

import base64
import html
import io
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from ..atomic import write_text
from ..errors import InputError
from ..evaluation.render import EVALUATION_JSON
from ..jsonio import read_json
from ..metrics.detection import DetectionCounts, match_image, per_image_f1
from ..metrics.stats import DEFAULT_RESAMPLES, DEFAULT_SEED
from ..pair import ClassSet, Pair, Points
from .geojson import DEFAULT_COLORS

if TYPE_CHECKING:
    from ..data.base import PairSplit
    from ..evaluation.scoring import EvaluationReport
    from ..evaluation.sources import PointSet
    from ..geometry import Placement

MERGE_KEYS = ("ground_truth", "matching", "radius_um", "mpp", "radius_px", "classes", "num_images")
"""Settings of ``evaluation.json`` that must be equal for folders to be merged."""

SECTIONS = {
    "summary": "Summary", "scores": "Scores", "per-image": "Per-image F1", "ranking": "Ranking uncertainty",
    "subgroups": "Tissue-region subgroups", "organs": "Per organ", "segmentation": "Tissue segmentation",
    "overlays": "Qualitative results",
}
"""Section id → heading, in page order."""

TISSUE_COLORS: tuple[tuple[int, int, int], ...] = ((40, 110, 255), (230, 30, 30), (255, 200, 0), (0, 200, 0))
"""Overlay colour per tissue class, in class-set order (OCELOT: BG blue, CA red)."""

WINDOW_COLOR = (255, 255, 0)
"""Outline of the cell window in the tissue view."""

PANEL_PX = 320
"""Longer side of an overlay panel in the page, pixels."""

TISSUE_ALPHA = 0.35
"""Opacity of the tissue overlay."""

Progress = Callable[[str], None]


# ====================================================================== reading and merging
@dataclass(frozen=True)
class Evaluation:
    """One ``evaluation.json`` (``path``) and its parsed document ``doc``."""

    path: Path
    doc: dict

    @property
    def label(self) -> str:
        """The folder's name: what tells its methods apart from another folder's."""
        return self.path.parent.name or str(self.path.parent)


@dataclass(frozen=True)
class ReportMethod:
    """A method of the report: display ``name``, its ``evaluation`` and its entry ``doc``
    (``evaluation.json``'s ``methods[original]``)."""

    name: str
    original: str
    evaluation: Evaluation
    doc: dict


def read_evaluation(path: str | Path) -> Evaluation:
    """``evaluation.json`` of an evaluation folder (or the file itself), checked for what
    the report needs; a missing, corrupt or foreign file raises :class:`InputError`."""
    path = Path(path)
    if path.is_dir() or (not path.exists() and path.suffix.lower() != ".json"):
        path = path / EVALUATION_JSON
    doc = read_json(path, "evaluation")
    _check_document(doc, path)
    return Evaluation(path, doc)


def _check_document(doc: Any, path: Path) -> None:
    """Refuse a document that is not ``histozoom evaluate``'s, or lacks per-image counts."""
    if not isinstance(doc, dict):
        raise InputError(path, "not an evaluation document (expected a JSON object)")
    missing = [k for k in (*MERGE_KEYS, "methods") if k not in doc]
    if missing:
        raise InputError(path, f"not written by 'histozoom evaluate --out' (missing {', '.join(missing)})")
    if not isinstance(doc["methods"], dict) or not doc["methods"]:
        raise InputError(path, "the evaluation holds no methods")
    classes = doc["classes"].get("names", []) if isinstance(doc["classes"], dict) else []
    for name, m in doc["methods"].items():
        rows = m.get("per_image") if isinstance(m, dict) else None
        if not isinstance(rows, list) or any(not isinstance(r, dict) or any(c not in r for c in ("image", "name", *classes))
                                             for r in rows):
            raise InputError(path, f"method {name!r} has no per-image counts (write it with 'histozoom evaluate --out')")


def _image_key(ev: Evaluation) -> list[tuple]:
    """Per image: index, name and ground-truth count per class (what identifies the ground truth)."""
    classes = ev.doc["classes"]["names"]
    rows = next(iter(ev.doc["methods"].values()))["per_image"]
    return [(r["image"], r["name"], *(r[c]["n_gt"] for c in classes)) for r in rows]


def check_mergeable(evals: Sequence[Evaluation]) -> None:
    """Raise :class:`InputError` naming the file unless every evaluation has the first's
    :data:`MERGE_KEYS` and the same images with the same ground-truth counts."""
    first = evals[0]
    key = _image_key(first)
    for ev in evals[1:]:
        for k in MERGE_KEYS:
            if ev.doc[k] != first.doc[k]:
                raise InputError(ev.path, f"cannot be merged with {first.path}: {k} differs "
                                          f"({ev.doc[k]!r} vs {first.doc[k]!r})")
        other = _image_key(ev)
        if other != key:
            bad = next((a, b) for a, b in zip(other + [None], key + [None], strict=False) if a != b)
            raise InputError(ev.path, f"cannot be merged with {first.path}: the images or their ground-truth "
                                      f"counts differ (first difference: {bad[0]} vs {bad[1]})")


def merge_methods(evals: Sequence[Evaluation]) -> list[ReportMethod]:
    """All methods of ``evals`` in order; a name found in several folders becomes
    ``"name (folder)"`` (numbered when even that repeats)."""
    seen: dict[str, int] = {}
    for ev in evals:
        for name in ev.doc["methods"]:
            seen[name] = seen.get(name, 0) + 1
    out: list[ReportMethod] = []
    used: set[str] = set()
    for ev in evals:
        for name, d in ev.doc["methods"].items():
            base = f"{name} ({ev.label})" if seen[name] > 1 else name
            shown, n = base, 2
            while shown in used:
                shown, n = f"{base} {n}", n + 1
            used.add(shown)
            out.append(ReportMethod(shown, name, ev, d))
    return out


def per_image_counts(method: Mapping, classes: ClassSet) -> np.ndarray:
    """``(n_images, n_classes, 3)`` ``[tp, fp, n_gt]`` from a method's ``per_image`` rows."""
    return np.array([[[r[c]["tp"], r[c]["fp"], r[c]["n_gt"]] for c in classes.names] for r in method["per_image"]],
                    dtype=np.int64).reshape(-1, len(classes), 3)


def rebuild_report(evals: Sequence[Evaluation], methods: Sequence[ReportMethod], bootstrap: int, seed: int | None,
                   level: float = 0.95) -> EvaluationReport:
    """An :class:`~histozoom.evaluation.scoring.EvaluationReport` of all ``methods`` from their
    per-image counts; with ``bootstrap > 0`` its paired bootstrap
    (:func:`~histozoom.evaluation.scoring.bootstrap_report`: CIs, ranking, pairwise wins)."""
    from ..evaluation.scoring import EvaluationReport, MethodResult, bootstrap_report

    d = evals[0].doc
    classes = ClassSet.from_dict(d["classes"])
    rows = methods[0].doc["per_image"]
    images, names = [int(r["image"]) for r in rows], [str(r["name"]) for r in rows]
    results = [MethodResult(m.name, str(m.doc.get("source", "")),
                            DetectionCounts(per_image_counts(m.doc, classes), classes, images, names, d["matching"],
                                            float(d["radius_px"])))
               for m in methods]
    report = EvaluationReport(results, str(d["ground_truth"]), images, names, classes, float(d["radius_um"]),
                              float(d["mpp"]), float(d["radius_px"]), d["matching"], [r.get("organ") for r in rows])
    if bootstrap > 0:
        bootstrap_report(report, bootstrap, seed, level)
    return report


def bootstrap_settings(evals: Sequence[Evaluation], bootstrap: int | None, seed: int | None) -> tuple[int, int | None, float]:
    """``(resamples, seed, level)`` of the comparison: as given, else the first
    evaluation's, else :data:`~histozoom.metrics.stats.DEFAULT_RESAMPLES` with seed
    :data:`~histozoom.metrics.stats.DEFAULT_SEED`."""
    rec = evals[0].doc.get("bootstrap") or {}
    n = bootstrap if bootstrap is not None else int(rec.get("resamples", DEFAULT_RESAMPLES))
    s = seed if seed is not None else rec.get("seed", DEFAULT_SEED)
    return n, s, float(rec.get("level", 0.95))


# ====================================================================== HTML pieces
def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def png_bytes(image: Image.Image) -> bytes:
    """PNG encoding of a PIL image."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def img_tag(png: bytes, alt: str, cls: str = "") -> str:
    """``<img>`` with the PNG embedded as a base64 ``data:`` URI."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="{_e(cls)}" alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def note(text: str) -> str:
    """A paragraph saying what is not shown and why."""
    return f'<p class="note">{_e(text)}</p>'


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    """An HTML table; a cell is text or ``(text, value)``: ``value`` goes to ``data-value``
    (the unrounded number), and text of the form ``"0.7 [0.6, 0.8]"`` shows its interval small."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_td(c) for c in r) + "</tr>" for r in rows)
    return f'<table class="{_e(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _td(cell: Any) -> str:
    if isinstance(cell, tuple):
        text, value = cell
        value_attr = "" if value is None else f' data-value="{_e(repr(float(value)))}"'
        main, _, ci = str(text).partition(" [")
        ci_html = f' <span class="ci">[{_e(ci)}</span>' if ci else ""
        return f'<td class="num"{value_attr}>{_e(main)}{ci_html}</td>'
    return f"<td>{_e(cell)}</td>"


def score_cell(value: float | None, ci: Sequence[float | None] | None = None) -> tuple[str, float | None]:
    """A score as ``"0.7637 [0.5306, 0.8408]"`` (4 decimals; the CI when known), with its value."""
    if value is None:
        return "n/a", None
    text = f"{value:.4f}"
    if ci is not None and len(ci) == 2 and ci[0] is not None and ci[1] is not None:
        text += f" [{ci[0]:.4f}, {ci[1]:.4f}]"
    return text, value


def section(sid: str, body: str) -> str:
    """``<section id=sid>`` with its heading from :data:`SECTIONS`."""
    return f'<section id="{_e(sid)}"><h2>{_e(SECTIONS[sid])}</h2>{body}</section>'


def swatch(rgb: Sequence[int], label: str, ring: bool = False) -> str:
    """A legend entry: a dot (or a ring) of colour ``rgb`` and its label."""
    c = f"rgb({int(rgb[0])},{int(rgb[1])},{int(rgb[2])})"
    style = f"border:2px solid {c};background:none" if ring else f"background:{c}"
    return f'<span class="sw"><span class="dot" style="{style}"></span>{_e(label)}</span>'


_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:2em}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.ci{color:#777;font-size:11px;display:block}.note{color:#8a5a00;background:#fff7e0;padding:6px 10px;border-left:3px solid #e0a800}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px}dt{font-weight:600}dd{margin:0}
img{max-width:100%;height:auto}.fig{margin:8px 0}
.row{display:flex;flex-wrap:wrap;gap:10px;margin:6px 0 18px}.panel{text-align:center;font-size:12px}
.panel img{display:block;image-rendering:auto;border:1px solid #ccc}
.sw{margin-right:14px;font-size:13px;white-space:nowrap}
.dot{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:4px;vertical-align:middle}
"""


def page(title: str, sections: Sequence[str]) -> str:
    """The whole document: inline style, no external resource."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{_STYLE}</style></head><body><h1>{_e(title)}</h1>{''.join(sections)}</body></html>\n")


# ====================================================================== sections: numbers
def summary_section(evals: Sequence[Evaluation], methods: Sequence[ReportMethod], comparison: str,
                    notes: Sequence[str]) -> str:
    """Ground truth, matching, radius, images, classes, bootstrap settings, folders, warnings."""
    d = evals[0].doc
    items = [
        ("Ground truth", d["ground_truth"]),
        ("Matching", d.get("matching_description") or d["matching"]),
        ("Hit radius", f"{d['radius_um']:g} µm = {d['radius_px']:g} px at {d['mpp']:g} µm/px"),
        ("Images", d["num_images"]),
        ("Cell classes", ", ".join(d["classes"]["names"])),
        ("Methods", ", ".join(m.name for m in methods)),
    ]
    for ev in evals:
        b = ev.doc.get("bootstrap")
        items.append((f"Evaluation {ev.label}", f"{ev.path}; " + (
            f"{int(b['level'] * 100)} % CIs from {b['resamples']} bootstrap resamples of images (seed {b['seed']})"
            if b else "no bootstrap (no CIs)")))
    items.append(("Ranking and pairwise wins", comparison))
    body = "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items) + "</dl>"
    warns = list(dict.fromkeys([*(w for ev in evals for w in ev.doc.get("warnings", [])),
                                *(f"{m.name}: {w}" for m in methods for w in m.doc.get("warnings", [])), *notes]))
    if warns:
        body += "<h3>Warnings</h3><ul>" + "".join(f"<li>{_e(w)}</li>" for w in warns) + "</ul>"
    return section("summary", body)


def scores_section(methods: Sequence[ReportMethod], classes: ClassSet, matching: str) -> str:
    """mF1 and per-class P / R / F1 with their recorded CIs; the challenge's rounding."""
    headers = ["method", "evaluation", "mF1"] + [f"{k} {c}" for c in classes.names for k in ("P", "R", "F1")]
    rows = []
    for m in methods:
        ci = m.doc.get("ci") or {}
        row: list[Any] = [m.name, m.evaluation.label, score_cell(m.doc["mF1"], ci.get("mF1"))]
        for c in classes.names:
            s, cci = m.doc["classes"][c], (ci.get("classes") or {}).get(c, {})
            row += [score_cell(s[k], cci.get(k)) for k in ("precision", "recall", "f1")]
        rows.append(row)
    body = table(headers, rows, "scores")
    count_rows = [[m.name, c, m.doc["classes"][c]["tp"], m.doc["classes"][c]["fp"], m.doc["classes"][c]["fn"]]
                  for m in methods for c in classes.names]
    body += table(["method", "class", "TP", "FP", "FN"], count_rows, "counts")
    if matching == "challenge" and all("challenge" in m.doc for m in methods):
        keys = [f"{k}/{c}" for c in classes.names for k in ("Pre", "Rec", "F1")] + ["mF1"]
        rows = [[m.name] + [score_cell(m.doc["challenge"][k]) for k in keys] for m in methods]
        body += "<h3>As the challenge reports it (official formula, rounded to 4 decimals)</h3>"
        body += table(["method"] + keys, rows, "challenge")
    return section("scores", body)


def subgroups_section(methods: Sequence[ReportMethod]) -> str | None:
    """Tissue-region subgroups (cell class on tissue class) per method, when recorded."""
    rows = [[m.name, r["subgroup"], *(score_cell(r[k], (r.get("ci") or {}).get(k)) for k in ("precision", "recall", "f1")),
             r["n_gt"], r["n_pred"]]
            for m in methods if m.doc.get("subgroups") for r in m.doc["subgroups"]["rows"]]
    if not rows:
        return None
    return section("subgroups", "<p>Cells on unknown tissue are left out.</p>"
                   + table(["method", "subgroup", "precision", "recall", "F1", "GT", "pred"], rows, "subgroups"))


def organs_section(methods: Sequence[ReportMethod], classes: ClassSet) -> str | None:
    """Per-organ mF1 and per-class F1 per method, when recorded."""
    rows = []
    for m in methods:
        for organ, o in (m.doc.get("per_organ") or {}).items():
            ci = o.get("ci") or {}
            rows.append([m.name, organ, o["n_images"], score_cell(o["mF1"], ci.get("mF1"))]
                        + [score_cell(o[f"F1/{c}"], ((ci.get("classes") or {}).get(c) or {}).get("f1"))
                           for c in classes.names])
    if not rows:
        return None
    return section("organs", table(["method", "organ", "images", "mF1"] + [f"F1 {c}" for c in classes.names], rows,
                                   "organs"))


def segmentation_section(methods: Sequence[ReportMethod]) -> str | None:
    """Tissue IoU / Dice per method, when recorded."""
    segs = [(m, m.doc["segmentation"]) for m in methods if m.doc.get("segmentation")]
    if not segs:
        return None
    names = list(segs[0][1].get("classes", {}))
    rows = [[m.name, score_cell(s.get("mIoU"), (s.get("ci") or {}).get("mIoU")),
             score_cell(s.get("mDice"), (s.get("ci") or {}).get("mDice"))]
            + [score_cell((s.get("classes", {}).get(c) or {}).get("iou")) for c in names] for m, s in segs]
    return section("segmentation", "<p>Unknown pixels are ignored.</p>"
                   + table(["method", "mIoU", "mDice"] + [f"IoU {c}" for c in names], rows, "segmentation"))


# ====================================================================== sections: plots
def _plot_png(draw: Callable[[Path], Path]) -> bytes:
    """Bytes of the PNG that ``draw(path)`` writes (the plot functions of :mod:`.plots`)."""
    with tempfile.TemporaryDirectory(prefix="histozoom-report-") as tmp:
        return draw(Path(tmp) / "plot.png").read_bytes()


def per_image_section(report: EvaluationReport) -> str:
    """Per-image F1 violins of every method (per class and mF1)."""
    from .plots import plot_f1_violins

    png = _plot_png(lambda p: plot_f1_violins(report.per_image_f1(), report.classes.names, p))
    return section("per-image", f'<div class="fig">{img_tag(png, "per-image F1 violins", "violins")}</div>')


def ranking_section(report: EvaluationReport, n_methods: int) -> str:
    """Rank-probability and pairwise-win heat maps from the report's comparison."""
    if report.comparison is None:
        why = "needs at least two methods" if n_methods < 2 else "needs bootstrap resamples (--bootstrap > 0)"
        return section("ranking", note(f"Ranking uncertainty and pairwise wins not shown: {why}."))
    from .plots import plot_pairwise_wins, plot_rank_probabilities

    c = report.comparison
    names = c["methods"]
    rp = {k: np.asarray(v) for k, v in c["rank_probabilities"].items()}
    ranks = _plot_png(lambda p: plot_rank_probabilities(rp, names, p))
    wins = _plot_png(lambda p: plot_pairwise_wins(np.asarray(c["pairwise_win"]["mF1"]), names, p))
    text = (f"<p>Share of {report.n_resamples} paired bootstrap resamples of images (seed {report.seed}) in which "
            "each method holds each rank, and in which the row method beats the column method.</p>")
    return section("ranking", text + f'<div class="fig">{img_tag(ranks, "rank probabilities", "ranks")}</div>'
                   + f'<div class="fig">{img_tag(wins, "pairwise win probabilities", "wins")}</div>')


# ====================================================================== overlays: data
@dataclass
class ImageSource:
    """The dataset split behind a dataset ground truth: its ``split`` (pairs) and ``gt``
    (:class:`~histozoom.evaluation.sources.PointSet`, image ``K`` = ``split.ids[K]``)."""

    root: Path
    split: PairSplit
    gt: PointSet
    notes: list[str] = field(default_factory=list)


def open_image_source(ev: Evaluation, gt: str | Path | None = None, split: str | None = None,
                      allow_outside_paths: bool = False) -> ImageSource | str:
    """The dataset of ``ev``'s ground truth (or ``gt``/``split`` given instead), checked to
    hold the evaluated images with the same ground-truth counts; a string says why there
    are no images. A given ``gt`` that does not match raises :class:`InputError`."""
    from ..data.open import is_dataset, open_dataset, pick_split
    from ..evaluation.sources import load_ground_truth, parse_dataset_label

    path, rec_split = parse_dataset_label(str(ev.doc["ground_truth"]))
    if gt is not None:
        path, rec_split = Path(gt), split or (rec_split if Path(gt) == path else None)
    elif split is not None:
        rec_split = split
    if not path.is_dir() or not is_dataset(path):
        return (f"The ground truth ({ev.doc['ground_truth']}) is not a dataset folder here, so the images are not "
                "available and no overlays are drawn (give --gt DATASET if the images exist).")
    ds = open_dataset(path, allow_outside_paths=allow_outside_paths)
    name = pick_split(ds, rec_split, path)
    ps = load_ground_truth(path, split=name, allow_outside_paths=allow_outside_paths)
    _check_same_ground_truth(ev, ps, path)
    return ImageSource(path, ds.split(name), ps)


def _check_same_ground_truth(ev: Evaluation, ps: PointSet, path: Path) -> None:
    """Raise unless every evaluated image of ``ps`` has the recorded ground-truth counts
    and name (its sample id, or ``image_K`` when the evaluation's ground truth had no ids)."""
    from ..data.challenge_json import image_name

    classes = ClassSet.from_dict(ev.doc["classes"])
    for k, name, *n_gt in _image_key(ev):
        pts = ps.points.get(k)
        have = [int(np.count_nonzero(pts.cls == cid)) if pts is not None else 0 for cid in classes.ids]
        if name not in (ps.name(k), image_name(k)) or have != n_gt:
            raise InputError(path, f"does not match the evaluation's ground truth ({ev.path}): image {k} is "
                                   f"{ps.name(k)!r} with {have} cells, the evaluation has {name!r} with {n_gt}")


def read_method_points(m: ReportMethod, src: ImageSource, classes: ClassSet) -> PointSet | str:
    """``m``'s predictions re-read from its recorded source
    (:func:`~histozoom.evaluation.sources.load_points`), or a string saying why not."""
    from ..evaluation.sources import load_points

    source = m.doc.get("source")
    if not source or source.startswith("<"):
        return f"{m.name}: predictions came from memory ({source or 'no source'}); not drawn"
    try:
        return load_points(source, classes=classes, image_size=src.gt.image_sizes or None, align_to=src.gt,
                           split=src.split.name, label=m.name)
    except InputError as e:
        return f"{m.name}: predictions could not be re-read ({e}); not drawn"


def read_tissue_predictions(tissue_preds: Mapping[str, str | Path], src: ImageSource) -> dict[str, dict[int, np.ndarray]]:
    """Predicted tissue masks per method name (:func:`~histozoom.evaluation.sources.read_mask_folder`)."""
    from ..evaluation.sources import read_mask_folder

    return {name: read_mask_folder(folder, src.gt, src.gt.tissue_classes, src.notes) for name, folder in tissue_preds.items()}


def tissue_pred_map(tissue_preds: Mapping[str, str | Path] | Sequence[str | Path] | None,
                    methods: Sequence[ReportMethod]) -> dict[str, Path]:
    """``{method name: mask folder}`` from a mapping, or a sequence in method order."""
    if not tissue_preds:
        return {}
    names = [m.name for m in methods]
    if isinstance(tissue_preds, Mapping):
        out = {str(k): Path(v) for k, v in tissue_preds.items()}
    else:
        if len(tissue_preds) > len(names):
            raise InputError(None, f"{len(tissue_preds)} tissue prediction folders for {len(names)} methods")
        out = dict(zip(names, (Path(v) for v in tissue_preds), strict=False))
    unknown = [k for k in out if k not in names]
    if unknown:
        raise InputError(out[unknown[0]], f"tissue predictions for {unknown[0]!r}, which is not a method of the "
                                          f"report ({', '.join(names)})")
    return out


def pick_images(f1: np.ndarray, n: int) -> list[int]:
    """Rows of the ``n`` images to show: the lowest and the highest per-image mF1 (mean F1
    over the classes defined on the image), lowest first; images where no class is
    defined are skipped."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows
        mf1 = np.nanmean(np.asarray(f1, dtype=np.float64), axis=1)
    order = [int(i) for i in np.argsort(mf1, kind="stable") if np.isfinite(mf1[i])]
    low = order[: (n + 1) // 2]
    high = [i for i in reversed(order) if i not in low][: n - len(low)]
    return low + high[::-1]


# ====================================================================== overlays: drawing
def _palette(classes: ClassSet, colors: Sequence[tuple[int, int, int]]) -> dict[int, tuple[int, int, int]]:
    return {cid: colors[k % len(colors)] for k, cid in enumerate(classes.ids)}


def _scaled(image: np.ndarray, side: int = PANEL_PX) -> tuple[Image.Image, float]:
    """The RGB image resized so that its longer side is ``side``, and the scale used."""
    im = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    s = side / max(im.size)
    size = (max(1, round(im.width * s)), max(1, round(im.height * s)))
    return im.resize(size, Image.NEAREST if s >= 1 else Image.LANCZOS), s


def cell_panel(image: np.ndarray, gt: Points | None, pred: Points | None, classes: ClassSet, ring_px: float) -> bytes:
    """PNG of the cell view: ground truth as rings of radius ``ring_px`` (the hit radius,
    cell pixels), predictions as dots, coloured per class."""
    im, s = _scaled(image)
    draw = ImageDraw.Draw(im)
    colors = _palette(classes, DEFAULT_COLORS)
    r = max(3.0, ring_px * s)
    for (x, y), c in zip(gt.xy if gt is not None else (), gt.cls if gt is not None else (), strict=True):
        cx, cy = (x + 0.5) * s, (y + 0.5) * s
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=colors.get(int(c), (255, 255, 255)), width=2)
    if pred is not None:
        for (x, y), c in zip(pred.xy, pred.cls, strict=True):
            cx, cy = (x + 0.5) * s, (y + 0.5) * s
            draw.ellipse((cx - 3, cy - 3, cx + 3, cy + 3), fill=colors.get(int(c), (255, 255, 255)), outline=(0, 0, 0))
    return png_bytes(im)


def tissue_panel(image: np.ndarray, mask: np.ndarray | None, placement: Placement, classes: ClassSet) -> bytes:
    """PNG of the tissue view with ``mask`` (tissue-frame labels) as a translucent overlay
    (unknown pixels clear) and the cell window's rectangle."""
    im, s = _scaled(image)
    if mask is not None:
        m = np.asarray(mask)
        rgba = np.zeros((*m.shape[:2], 4), dtype=np.uint8)
        for cid, rgb in _palette(classes, TISSUE_COLORS).items():
            rgba[m == cid] = (*rgb, round(255 * TISSUE_ALPHA))
        layer = Image.fromarray(rgba, "RGBA").resize(im.size, Image.NEAREST)
        im = Image.alpha_composite(im.convert("RGBA"), layer).convert("RGB")
    ts = im.width / placement.tissue_size[0]  # display px per tissue px (the mask may be stored at another size)
    x0, y0 = placement.x0 * ts, placement.y0 * ts
    box = (x0, y0, x0 + placement.width * ts, y0 + placement.height * ts)
    draw = ImageDraw.Draw(im)
    draw.rectangle(box, outline=(0, 0, 0), width=4)
    draw.rectangle(box, outline=WINDOW_COLOR, width=2)
    return png_bytes(im)


def _panel(png: bytes, caption: str) -> str:
    return f'<div class="panel">{img_tag(png, caption, "overlay")}<div>{_e(caption)}</div></div>'


def _f1_text(counts: np.ndarray, classes: ClassSet) -> str:
    f1 = per_image_f1(counts[None])[0]
    return ", ".join(f"F1 {c} {'n/a' if np.isnan(v) else f'{v:.2f}'}" for c, v in zip(classes.names, f1, strict=True))


def overlay_row(pair: Pair, row: int, report: EvaluationReport, methods: Sequence[ReportMethod],
                points: Mapping[str, PointSet],
                tissue: Mapping[str, dict[int, np.ndarray]], tissue_classes: ClassSet, notes: list[str]) -> str:
    """One image: a cell panel per method, the tissue view with the ground truth, one per
    method with tissue predictions."""
    k, classes = report.images[row], report.classes
    gt = pair.cell_points
    panels = []
    for m, res in zip(methods, report.methods, strict=True):
        pts = points.get(m.name)
        pred = pts.points.get(k, Points.empty()) if pts is not None else None
        if pred is not None and not np.array_equal(match_image(gt, pred, report.radius, classes, report.mode),
                                                   res.counts.counts[row]):
            notes.append(f"{m.name}: the predictions of {pair.id} read now differ from the evaluated ones "
                         "(file changed since the evaluation?)")
        label = f"{m.name}: {_f1_text(res.counts.counts[row], classes)}" if pred is not None else f"{m.name}: not drawn"
        panels.append(_panel(cell_panel(pair.cell_image, gt, pred, classes, report.radius), label))
    panels.append(_panel(tissue_panel(pair.tissue_image, pair.tissue_mask, pair.placement, tissue_classes),
                         "tissue view, ground truth" if pair.tissue_mask is not None else "tissue view (no tissue labels)"))
    for name, masks in tissue.items():
        if k in masks:
            panels.append(_panel(tissue_panel(pair.tissue_image, masks[k], pair.placement, tissue_classes),
                                 f"tissue prediction, {name}"))
    head = " / ".join(dict.fromkeys([pair.id, report.image_names[row], f"image_{k}"])) + (
        f", {pair.organ}" if pair.organ else "")
    return f"<h3>{_e(head)}</h3><div class=\"row\">{''.join(panels)}</div>"


def legend(classes: ClassSet, tissue_classes: ClassSet) -> str:
    """Colour key of the overlays."""
    cells = _palette(classes, DEFAULT_COLORS)
    tissue = _palette(tissue_classes, TISSUE_COLORS)
    return ("<p>" + "".join(swatch(cells[c], f"{n} ground truth", ring=True) + swatch(cells[c], f"{n} prediction")
                            for n, c in zip(classes.names, classes.ids, strict=True))
            + "".join(swatch(tissue[c], f"tissue {n}") for n, c in zip(tissue_classes.names, tissue_classes.ids, strict=True))
            + swatch(WINDOW_COLOR, "cell window", ring=True) + "</p>")


def overlays_section(src: ImageSource | str, report: EvaluationReport, methods: Sequence[ReportMethod], n: int,
                     tissue_preds: Mapping[str, Path], notes: list[str], say: Progress) -> tuple[str, list[str]]:
    """The qualitative section and the names of the images shown."""
    if n <= 0:
        return section("overlays", note("No overlays asked for (--overlays 0).")), []
    if isinstance(src, str):
        return section("overlays", note(src)), []
    f1 = report.methods[0].counts.per_image_f1()
    f1[np.asarray(report.images) >= len(src.split.ids)] = np.nan  # predictions for images the split lacks
    rows = pick_images(f1, n)
    say(f"overlays: {len(rows)} images")
    points: dict[str, PointSet] = {}
    for m in methods:
        got = read_method_points(m, src, report.classes)
        if isinstance(got, str):
            notes.append(got)
        else:
            points[m.name] = got
    tissue = read_tissue_predictions(tissue_preds, src)
    notes.extend(src.notes)
    tcls = src.gt.tissue_classes
    body = [f"<p>Images of lowest and highest per-image mF1 of {_e(methods[0].name)}, lowest first. Ground-truth "
            f"rings have the hit radius ({report.radius:g} px).</p>", legend(report.classes, tcls)]
    for row in rows:
        pair = src.split.load(src.gt.name(report.images[row]))
        body.append(overlay_row(pair, row, report, methods, points, tissue, tcls, notes))
    return section("overlays", "".join(body)), [report.image_names[r] for r in rows]


# ====================================================================== the report
@dataclass
class HtmlReport:
    """A rendered report: the ``html`` text, the ``methods`` shown, the ``sections`` with
    content (ids of :data:`SECTIONS`), the ``overlay_images`` and ``notes``."""

    html: str
    methods: list[str]
    sections: list[str]
    overlay_images: list[str]
    notes: list[str]

    def write(self, out: str | Path) -> Path:
        """Write the HTML atomically (temporary name, then rename); returns ``out``."""
        out = Path(out)
        write_text(out, self.html)
        return out


def render_html_report(
    evals: Sequence[str | Path],
    *,
    overlays: int = 4,
    gt: str | Path | None = None,
    split: str | None = None,
    tissue_preds: Mapping[str, str | Path] | Sequence[str | Path] | None = None,
    bootstrap: int | None = None,
    seed: int | None = None,
    allow_outside_paths: bool = False,
    title: str = "histozoom evaluation report",
    progress: Progress | None = None,
) -> HtmlReport:
    """Render the report of the evaluation folders ``evals`` (see the module docstring).

    ``overlays``: number of images drawn (0 = none). ``gt``/``split``: the dataset to take
    images from instead of the recorded ground truth (it must hold the same ground truth).
    ``tissue_preds``: predicted tissue mask folders, ``{method: folder}`` or in method
    order. ``bootstrap``/``seed``: resamples of the ranking and pairwise wins (default:
    the first evaluation's, else 10,000 and seed 0).
    """
    say = progress or (lambda msg: None)
    if not evals:
        raise InputError(None, "no evaluation folder given")
    loaded = [read_evaluation(p) for p in evals]
    check_mergeable(loaded)
    methods = merge_methods(loaded)
    n, s, level = bootstrap_settings(loaded, bootstrap, seed)
    say(f"{len(methods)} methods; bootstrap {n} resamples")
    report = rebuild_report(loaded, methods, n if len(methods) >= 2 else 0, s, level)
    tmap = tissue_pred_map(tissue_preds, methods)
    notes: list[str] = []
    src = open_image_source(loaded[0], gt, split, allow_outside_paths) if overlays > 0 or tmap else ""
    if tmap and isinstance(src, str):
        raise InputError(next(iter(tmap.values())), "tissue predictions need a dataset ground truth (images and masks)")
    over, shown = overlays_section(src, report, methods, overlays, tmap, notes, say)
    comparison = (f"{n} paired bootstrap resamples of images (seed {s}) over all methods"
                  if report.comparison is not None else "not computed (needs two methods and resamples)")
    classes = report.classes
    parts = {"scores": scores_section(methods, classes, report.mode), "per-image": per_image_section(report),
             "ranking": ranking_section(report, len(methods)), "subgroups": subgroups_section(methods),
             "organs": organs_section(methods, classes), "segmentation": segmentation_section(methods),
             "overlays": over}
    parts["summary"] = summary_section(loaded, methods, comparison, notes)
    with_content = [k for k in SECTIONS if parts.get(k) is not None and (k != "ranking" or report.comparison)
                    and (k != "overlays" or shown)]
    body = [parts[k] for k in SECTIONS if parts.get(k) is not None]
    return HtmlReport(page(title, body), [m.name for m in methods], with_content, shown, notes)


def write_html_report(evals: Sequence[str | Path], out: str | Path, *, overlays: int = 4, **kwargs: Any) -> Path:
    """Render the report of ``evals`` (:func:`render_html_report`, same keywords) and write
    it to ``out`` atomically; returns ``out``."""
    return render_html_report(evals, overlays=overlays, **kwargs).write(out)
