"""Post-hoc tissue→cell fusion on hand-built probabilities."""

from __future__ import annotations

import pytest
import torch

from histozoom.inference.fusion import OCELOT_FUSION, default_mapping, fuse, vote_matrix
from histozoom.pair import OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES, ClassSet


def _maps(cell_rows, tissue_rows):
    """(B=1, ch, 1, N) maps from per-pixel rows."""
    c = torch.tensor(cell_rows, dtype=torch.float32).T[None, :, None, :]
    t = torch.tensor(tissue_rows, dtype=torch.float32).T[None, :, None, :]
    return c, t


VOTES = vote_matrix(OCELOT_FUSION, OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES)


def test_adaptive_weights_the_cell_model_by_its_margin():
    # columns: background, BC, TC | tissue: BG, CA
    cell, tissue = _maps([[0.2, 0.8, 0.0], [0.2, 0.4, 0.4], [0.5, 0.3, 0.2], [0.1, 0.9, 0.0]],
                         [[0.0, 1.0], [0.25, 0.75], [0.0, 1.0], [0.0, 0.0]])
    out = fuse(cell, tissue, VOTES, "adaptive")[0, :, 0].T
    # pixel 0: q = (1, 0), kappa = 1 -> unchanged
    assert torch.allclose(out[0], torch.tensor([0.2, 0.8, 0.0]))
    # pixel 1: q = (0.5, 0.5), kappa = 0 -> the tissue vote (0.25, 0.75) times s = 0.8
    assert torch.allclose(out[1], torch.tensor([0.2, 0.2, 0.6]))
    # pixel 2: q = (0.6, 0.4), kappa = 0.2 -> 0.2 q + 0.8 (0, 1) = (0.12, 0.88), s = 0.5
    assert torch.allclose(out[2], torch.tensor([0.5, 0.06, 0.44]))
    # pixel 3: no tissue probability (outside the tissue view) -> unchanged
    assert torch.allclose(out[3], torch.tensor([0.1, 0.9, 0.0]))


def test_extreme_follows_the_tissue_and_keeps_the_foreground():
    cell, tissue = _maps([[0.2, 0.8, 0.0], [0.3, 0.1, 0.6]], [[0.4, 0.6], [0.9, 0.1]])
    out = fuse(cell, tissue, VOTES, "extreme")[0, :, 0].T
    assert torch.allclose(out[0], torch.tensor([0.2, 0.0, 0.8]))  # on CA: all TC
    assert torch.allclose(out[1], torch.tensor([0.3, 0.7, 0.0]))  # on BG: all BC
    assert torch.allclose(out.sum(1), torch.ones(2))


def test_mappings():
    assert default_mapping(OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES) == {1: 1, 2: 2}
    with pytest.raises(ValueError, match="mapping"):
        default_mapping(ClassSet(("LC",), (1,)), ClassSet(("BG", "ST"), (1, 2)))
    m = vote_matrix({1: 1, 2: 1}, ClassSet(("LC",), (1,)), ClassSet(("BG", "ST"), (1, 2)))
    assert m.tolist() == [[1.0], [1.0]]
    with pytest.raises(ValueError, match="not a tissue class"):
        vote_matrix({3: 1}, OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES)
    with pytest.raises(ValueError, match="fusion rule"):
        fuse(torch.zeros(1, 3, 1, 1), torch.zeros(1, 2, 1, 1), VOTES, "soft")
