"""``histozoom report``: one self-contained HTML file of evaluation folders.

Evaluations are built here from a tiny synthetic dataset (6 test pairs, 128 px views)
and perturbed copies of its ground truth; the report is parsed with ``html.parser``."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import warnings
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from histozoom.cli import main
from histozoom.data.challenge_json import write_challenge_points
from histozoom.data.io import write_image
from histozoom.data.open import open_dataset
from histozoom.data.synthetic import SynthConfig
from histozoom.errors import InputError
from histozoom.evaluation import evaluate, write_synthetic_dataset
from histozoom.evaluation.sources import split_ground_truth
from histozoom.pair import Points
from histozoom.reports.html_report import (
    SECTIONS,
    merge_methods,
    read_evaluation,
    rebuild_report,
    render_html_report,
    write_html_report,
)

BOOT = 200
SIZE = 128


# ---------------------------------------------------------------------- fixtures
def _perturb(gt: dict[int, Points], seed: int) -> dict[int, Points]:
    """Drop ~10-20 % of the cells, move the rest by ~2 px, flip 15 % of the classes."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, p in gt.items():
        keep = rng.random(len(p)) > 0.1 + 0.1 * seed
        xy = np.clip(p.xy[keep] + rng.normal(0, 2, (int(keep.sum()), 2)), 0, SIZE - 1)
        cls = p.cls[keep].copy()
        flip = rng.random(len(cls)) < 0.15
        cls[flip] = 3 - cls[flip]
        out[k] = Points(xy, cls, rng.random(len(cls)))
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Dataset, predictions ``pa``/``pb``, a tissue prediction folder and four evaluations:
    ``evA`` (pa, pb; dataset GT, subgroups, tissue scores), ``evB`` (pa again), ``evC``
    (pa against the GT as challenge JSON), ``evD`` (pa with another hit radius)."""
    root = tmp_path_factory.mktemp("report")
    cfg = SynthConfig(preset="context", n_train=1, n_val=1, n_test=6, cell_size=SIZE, tissue_size=SIZE,
                      cell_mpp=0.4, tissue_mpp=1.6)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        ds = write_synthetic_dataset(root / "ds", cfg)
    split = open_dataset(ds).split("test")
    gt = split_ground_truth(split)
    preds = {}
    for seed, name in enumerate(("pa", "pb")):
        preds[name] = root / f"{name}.json"
        write_challenge_points(preds[name], _perturb(gt, seed), len(split.ids))
    tpred = root / "tissue_pred"
    tpred.mkdir()
    for sid in split.ids:
        mask = split.load(sid).tissue_mask
        write_image(tpred / f"{sid}.png", np.where(mask == 255, 1, mask).astype(np.uint8))
    gt_json = root / "gt.json"
    write_challenge_points(gt_json, gt, len(split.ids))
    ev = {}
    common = dict(split="test", bootstrap=BOOT)
    ev["A"] = evaluate([str(preds["pa"]), str(preds["pb"])], str(ds), subgroups=True, tissue_preds=[str(tpred), None],
                       **common)
    ev["B"] = evaluate([str(preds["pa"])], str(ds), **common)
    ev["C"] = evaluate([str(preds["pa"])], str(gt_json), image_size=SIZE, bootstrap=BOOT)
    ev["D"] = evaluate([str(preds["pa"])], str(ds), radius_um=5.0, **common)
    dirs = {}
    for k, rep in ev.items():
        dirs[k] = root / f"ev{k}"
        rep.write(dirs[k])
    return {"root": root, "ds": ds, "tpred": tpred, "ev": dirs, "ids": list(split.ids)}


class _Page(HTMLParser):
    """Sections, images, numeric cells and every URL-bearing attribute of a page."""

    def __init__(self):
        super().__init__()
        self.sections: dict[str, str] = {}
        self.images: list[tuple[str | None, dict]] = []
        self.cells: list[tuple[str | None, str | None, str]] = []
        self.urls: list[str] = []
        self._sec: str | None = None
        self._td: list | None = None
        self._table: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.urls += [v or "" for k, v in attrs if k in ("src", "href", "srcset", "poster", "data", "action")]
        if tag == "section":
            self._sec = a.get("id")
            self.sections[self._sec] = ""
        elif tag == "img":
            self.images.append((self._sec, a))
        elif tag == "table":
            self._table = a.get("class")
        elif tag == "td":
            self._td = [self._table, a.get("data-value"), ""]

    def handle_endtag(self, tag):
        if tag == "section":
            self._sec = None
        elif tag == "td" and self._td is not None:
            self.cells.append((self._td[0], self._td[1], self._td[2].strip()))
            self._td = None

    def handle_data(self, data):
        if self._sec is not None:
            self.sections[self._sec] += data
        if self._td is not None:
            self._td[2] += data


def _parse(path: Path) -> tuple[_Page, str]:
    text = path.read_text(encoding="utf-8")
    p = _Page()
    p.feed(text)
    p.close()
    return p, text


def _check_self_contained(page: _Page, text: str) -> None:
    assert "http://" not in text and "https://" not in text
    assert all(u.startswith("data:") for u in page.urls), [u[:40] for u in page.urls if not u.startswith("data:")]
    assert "<link" not in text and "<script" not in text and "@import" not in text and "url(" not in text
    for _, a in page.images:
        head, data = a["src"].split(",", 1)
        assert head == "data:image/png;base64"
        raw = base64.b64decode(data, validate=True)
        with Image.open(io.BytesIO(raw)) as im:
            im.verify()
        with Image.open(io.BytesIO(raw)) as im:
            assert im.format == "PNG" and min(im.size) >= 64, im.size
            assert np.asarray(im.convert("L")).std() > 5  # not a blank image
        assert len(raw) > 2000


def _score_cells(page: _Page) -> dict[str, str]:
    return {v: t for table, v, t in page.cells if table == "scores" and v is not None}


# ---------------------------------------------------------------------- one evaluation with images
def test_report_of_a_dataset_evaluation(world, tmp_path):
    out = write_html_report([world["ev"]["A"]], tmp_path / "r.html", overlays=4, tissue_preds={"pa": world["tpred"]})
    page, text = _parse(out)
    _check_self_contained(page, text)
    assert set(page.sections) == set(SECTIONS)
    doc = json.loads((world["ev"]["A"] / "evaluation.json").read_text())
    cells = _score_cells(page)
    for m in doc["methods"].values():
        mf1, ci = m["mF1"], m["ci"]["mF1"]
        assert cells[repr(mf1)] == f"{mf1:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"
        for c in ("BC", "TC"):
            f1 = m["classes"][c]["f1"]
            assert cells[repr(f1)].startswith(f"{f1:.4f} [")
    challenge = [t for table, _, t in page.cells if table == "challenge"]
    assert f"{doc['methods']['pb']['challenge']['mF1']:.4f}" in challenge
    sub = [t for table, _, t in page.cells if table == "subgroups"]
    assert "BC on BG" in sub and "TC on CA" in sub
    assert any(t == "bladder" or t == "kidney" or t == "prostate" for table, _, t in page.cells if table == "organs")
    assert [t for table, _, t in page.cells if table == "segmentation"][0] == "pa"
    by_section = {}
    for sec, a in page.images:
        by_section.setdefault(sec, []).append(a.get("class"))
    assert by_section["per-image"] == ["violins"] and by_section["ranking"] == ["ranks", "wins"]
    # 4 images x (a cell view per method + tissue ground truth + pa's tissue prediction)
    assert by_section["overlays"] == ["overlay"] * 16
    assert "tissue prediction, pa" in page.sections["overlays"]
    assert doc["ground_truth"] in page.sections["summary"] and "200 bootstrap resamples" in page.sections["summary"]
    assert "7.5 px" in page.sections["summary"]


def test_overlays_show_the_lowest_and_highest_mf1_images(world):
    rep = render_html_report([world["ev"]["A"]], overlays=2)
    doc = json.loads((world["ev"]["A"] / "evaluation.json").read_text())
    rows = doc["methods"]["pa"]["per_image"]
    mf1 = {r["name"]: np.nanmean([np.nan if r[c]["f1"] is None else r[c]["f1"] for c in ("BC", "TC")]) for r in rows}
    assert rep.overlay_images == [min(mf1, key=mf1.get), max(mf1, key=mf1.get)]
    assert "overlays" in rep.sections and not rep.notes


def test_recomputed_comparison_equals_the_recorded_one(world):
    evs = [read_evaluation(world["ev"]["A"])]
    report = rebuild_report(evs, merge_methods(evs), BOOT, 0)
    doc = evs[0].doc
    assert report.comparison == doc["comparison"]
    assert report.methods[1].ci["overall"] == doc["methods"]["pb"]["ci"]


# ---------------------------------------------------------------------- no images
def test_challenge_json_ground_truth_says_overlays_are_not_available(world, tmp_path):
    rep = render_html_report([world["ev"]["C"]])
    out = rep.write(tmp_path / "c.html")
    page, text = _parse(out)
    _check_self_contained(page, text)
    assert "not available" in page.sections["overlays"] and "no overlays" in page.sections["overlays"]
    assert not [s for s, _ in page.images if s == "overlays"]
    assert "at least two methods" in page.sections["ranking"]
    assert rep.sections == ["summary", "scores", "per-image"] and rep.overlay_images == []
    assert "subgroups" not in page.sections
    # the same ground truth as a dataset (image_K = K-th sample in sorted id order) gives the images
    rep = render_html_report([world["ev"]["C"]], gt=world["ds"], split="test", overlays=2)
    assert "overlays" in rep.sections and all(n.startswith("image_") for n in rep.overlay_images)


# ---------------------------------------------------------------------- merging
def test_merging_two_folders(world, tmp_path):
    a, b = world["ev"]["A"], world["ev"]["B"]
    rep = render_html_report([a, b], overlays=1)
    assert rep.methods == ["pa (evA)", "pb", "pa (evB)"]
    assert "ranking" in rep.sections
    page, text = _parse(rep.write(tmp_path / "m.html"))
    _check_self_contained(page, text)
    cells = _score_cells(page)
    for d in (a, b):
        for m in json.loads((d / "evaluation.json").read_text())["methods"].values():
            assert repr(m["mF1"]) in cells
    assert [t for table, _, t in page.cells if table == "scores" and t.startswith("pa")] == ["pa (evA)", "pa (evB)"]
    # one cell view per merged method, plus the tissue view
    assert len([s for s, _ in page.images if s == "overlays"]) == 4


@pytest.mark.parametrize("other, what", [("D", "radius_um differs"), ("C", "ground_truth differs")])
def test_incompatible_evaluations_are_refused(world, other, what):
    with pytest.raises(InputError, match=what) as e:
        render_html_report([world["ev"]["A"], world["ev"][other]], overlays=0)
    assert e.value.path == str(world["ev"][other] / "evaluation.json")


# ---------------------------------------------------------------------- bad input
def test_bad_evaluation_folders_name_the_file(world, tmp_path):
    with pytest.raises(InputError, match="evaluation file not found") as e:
        render_html_report([tmp_path / "nothing"])
    assert "nothing" in str(e.value)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "evaluation.json").write_text('{"methods": {')
    with pytest.raises(InputError, match=r"bad/evaluation.json: invalid evaluation"):
        render_html_report([bad])
    doc = json.loads((world["ev"]["B"] / "evaluation.json").read_text())
    del doc["methods"]["pa"]["per_image"]
    (bad / "evaluation.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="no per-image counts"):
        render_html_report([bad])
    with pytest.raises(InputError, match="does not match the evaluation's ground truth"):
        render_html_report([world["ev"]["A"]], gt=world["ds"], split="val")


# ---------------------------------------------------------------------- command line
def test_cli_report(world, tmp_path, capsys):
    out = tmp_path / "cli.html"
    rc = main(["report", "--eval", str(world["ev"]["A"]), "--eval", str(world["ev"]["B"]), "--out", str(out),
               "--overlays", "2", "--tissue-pred", f"pb={world['tpred']}", "--json"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    doc = json.loads(cap.out)
    assert doc["out"] == str(out) and out.is_file()
    assert doc["methods"] == ["pa (evA)", "pb", "pa (evB)"] and len(doc["overlay_images"]) == 2
    assert {"summary", "scores", "ranking", "subgroups", "overlays"} <= set(doc["sections"])
    assert "tissue prediction, pb" in out.read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # written atomically, nothing left over
    rc = main(["report", "--eval", str(tmp_path / "missing"), "--out", str(tmp_path / "x.html")])
    cap = capsys.readouterr()
    assert rc == 2 and "missing/evaluation.json" in cap.err and not (tmp_path / "x.html").exists()


def test_report_parser_imports_nothing_heavy():
    code = ("import sys\nfrom histozoom.cli import main\ntry:\n    main(['report', '--help'])\nexcept SystemExit:\n"
            "    pass\nprint(sorted(m for m in ('torch', 'matplotlib', 'scipy', 'PIL') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr
