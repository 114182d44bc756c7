"""Ensembles of cell–tissue models: the probability maps of several checkpoints (seeds,
folds, architectures) averaged before decoding (``predict --checkpoint A --checkpoint B``).

:class:`EnsembleNet` has the forward signature of a
:class:`~histozoom.models.cell_tissue.CellTissueModel`, so the predictor, the slide runner
and the inference engines take it unchanged. Its ``cell_logits`` are already the mean
``(1 + C)`` probability map (``cell_output = "probabilities"``): each member's
``cell_logits`` become a probability map by that member's own ``cell_output`` (softmax
for disk-trained models, sigmoid heatmaps for Gaussian-trained ones), then the maps are
averaged with equal weights. ``tissue_logits`` (when any member has a tissue branch) are
the log of the mean tissue softmax of the members that have one, so a softmax of them is
the mean. An ensemble of one member gives that member's probabilities, hence its
detections.

Members must agree on what decoding and the inputs mean: the same cell classes (the
dataset spec), the same views (training size and µm/px of both views), the same input
normalisation, and the same use of ground-truth tissue labels. On slides an ensemble
runs each member's own tissue branch on each tile's tissue view ("per-tile" context).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from ..errors import InputError
from ..models.cell_tissue import cell_probability_map

MEMBER_KEYS = ("spec", "views", "normalize", "size")
"""Checkpoint ``extra`` entries every member of an ensemble must share."""


class EnsembleNet(nn.Module):
    """Mean of the cell probability maps (and tissue softmax) of ``members``."""

    cell_output = "probabilities"

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList(members)
        cfgs = [getattr(m, "config", None) for m in members]
        reads = {(getattr(c, "leak_tissue_labels", False), getattr(c, "tissue_input", "tissue")) for c in cfgs}
        if len(reads) > 1:
            raise ValueError("ensemble members differ in whether they read ground-truth tissue labels")
        self.config = cfgs[0]
        """The first member's config (members agree on the inputs they read)."""
        self.eval()  # an ensemble is for inference

    @property
    def size_multiple(self) -> int:
        return math.lcm(*(int(getattr(m, "size_multiple", 1)) for m in self.members))

    @property
    def cell_size_multiple(self) -> int:
        return math.lcm(*(int(getattr(m, "cell_size_multiple", getattr(m, "size_multiple", 1))) for m in self.members))

    @property
    def tissue_size_multiple(self) -> int:
        return math.lcm(*(int(getattr(m, "tissue_size_multiple", getattr(m, "size_multiple", 1))) for m in self.members))

    @property
    def tissue(self) -> nn.Module | None:
        """The first member's tissue branch (``None`` when no member has one): tells slide
        runners that tissue context is read."""
        return next((m.tissue for m in self.members if getattr(m, "tissue", None) is not None), None)

    tissue_prediction_only = False
    """Each member needs its own tissue prediction: no shared slide-wide tissue map."""

    def forward(self, cell_img: torch.Tensor, tissue_img: torch.Tensor | None = None,
                windows: torch.Tensor | None = None, tissue_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        cell, tissue = [], []
        for m in self.members:
            out = m(cell_img, tissue_img, windows, tissue_mask)
            cell.append(cell_probability_map(out["cell_logits"], getattr(m, "cell_output", "softmax")))
            if "tissue_logits" in out:
                tissue.append(out["tissue_logits"].float().softmax(dim=1))
        result = {"cell_logits": torch.stack(cell).mean(dim=0)}
        if tissue:
            result["tissue_logits"] = torch.stack(tissue).mean(dim=0).clamp_min(1e-12).log()
        return result


def member_extras(paths: Sequence[str | Path],
                  hint: str = "ensembles combine OCELOT cell–tissue checkpoints") -> list[tuple[Path, dict]]:
    """``(checkpoint folder, its extra)`` per path; an error names the first member that
    differs from the first in any of :data:`MEMBER_KEYS` or is not a cell–tissue model."""
    from ..models.checkpoint import load_config, require_family, resolve_checkpoint

    out = []
    for p in paths:
        ckpt = resolve_checkpoint(p)
        _, meta = load_config(ckpt)
        require_family(ckpt, meta, "cell-tissue", hint)
        out.append((ckpt, meta.get("extra") or {}))
    first_path, first = out[0]
    for path, extra in out[1:]:
        for key in MEMBER_KEYS:
            a, b = first.get(key), extra.get(key)
            if key == "normalize":
                a, b = a or "none", b or "none"
            if a != b:
                raise InputError(path, f"cannot join an ensemble with {first_path}: its {key} differs "
                                       f"({b!r} vs {a!r}); members must share classes, views and normalisation")
    return out


def load_ensemble(paths: Sequence[str | Path], device: str = "cpu") -> EnsembleNet:
    """The members of ``paths`` (run folders or ``save_pretrained`` folders) as one net."""
    from ..models.checkpoint import from_pretrained

    return EnsembleNet([from_pretrained(ckpt, map_location=device) for ckpt, _ in member_extras(paths)])
