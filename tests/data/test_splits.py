"""Slide-grouped, organ-stratified folds; the fold and concatenated splits the trainer reads."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from conftest import write_tiny_synthetic
from histozoom.data.open import open_dataset
from histozoom.data.splits import ConcatSplit, fold_splits, grouped_folds, split_folds


def _check(slides, organs, folds, k, exact: bool):
    by_slide: dict[str, set] = {}
    for s, f in zip(slides, folds):
        by_slide.setdefault(s, set()).add(int(f))
    assert all(len(v) == 1 for v in by_slide.values()), "a slide in two folds"
    assert set(folds.tolist()) == set(range(k))
    if exact:  # one sample per slide: each organ within one sample of n_o / k in every fold
        for organ, n in Counter(organs).items():
            per_fold = Counter(int(f) for f, o in zip(folds, organs) if o == organ)
            for j in range(k):
                assert abs(per_fold.get(j, 0) - n / k) < 1, (organ, j, per_fold)


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_one_sample_per_slide_gives_exact_organ_shares(k, seed):
    rng = np.random.default_rng(seed)
    organs = list(rng.choice(["kidney", "bladder", "prostate", "stomach"], size=53))
    slides = [f"s{i}" for i in range(53)]
    folds = grouped_folds(slides, organs, k, seed)
    _check(slides, organs, folds, k, exact=True)
    assert np.array_equal(folds, grouped_folds(slides, organs, k, seed))  # deterministic


def test_real_ocelot_metadata_keeps_slides_together(shared_data):
    meta = json.loads((shared_data / "ocelot" / "points" / "gestalt_fold0_81_metadata.json").read_text())
    slides = [e["slide_name"] for e in meta]
    organs = [e["organ"] for e in meta]
    assert len(set(slides)) < len(slides)  # several pairs per slide: the grouping matters
    for k in (3, 5):
        folds = grouped_folds(slides, organs, k, seed=0)
        _check(slides, organs, folds, k, exact=False)
        # the greedy deal keeps every organ's fold counts within its largest slide of even
        for organ in set(organs):
            biggest = max(Counter(s for s, o in zip(slides, organs) if o == organ).values())
            counts = Counter(int(f) for f, o in zip(folds, organs) if o == organ)
            vals = [counts.get(j, 0) for j in range(k)]
            assert max(vals) - min(vals) <= biggest


def test_bad_groupings_are_refused():
    with pytest.raises(ValueError, match="two organs"):
        grouped_folds(["a", "a", "b"], ["kidney", "bladder", "kidney"], 2)
    with pytest.raises(ValueError, match="at least 3 slides"):
        grouped_folds(["a", "a", "b"], ["x", "x", "x"], 3)


def test_fold_and_concat_splits(tmp_path):
    data = write_tiny_synthetic(tmp_path / "d", n_train=6, n_val=2, n_test=2)
    ds = open_dataset(data)
    train = ds.split("train")
    folds = split_folds(train, 3)
    assert len(folds) == 6
    seen = []
    for fold in range(3):
        tr, va = fold_splits(train, 3, fold)
        assert set(tr.ids).isdisjoint(va.ids) and sorted(tr.ids + va.ids) == train.ids
        assert len(va) == 2  # six one-pair slides in three folds
        seen += va.ids
        assert va[0].id == va.ids[0]
    assert sorted(seen) == train.ids
    both = ConcatSplit([train, ds.split("val")], "train+val")
    assert len(both) == 8 and both.ids[0].startswith("train/")
    first = both[0]
    assert first.id == both.ids[0]
    assert np.array_equal(first.cell_image, train[0].cell_image)
    assert both.points(both.ids[-1]) is not None
