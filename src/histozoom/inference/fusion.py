"""Post-hoc tissue→cell fusion (Ji et al., OCELOT 2023; challenge report §3.3.2): the cell
classes of a detection are revised with the tissue prediction under it.

Both rules work on the cell probability map ``p`` ``(1 + C, H, W)`` (channel 0 background)
and the tissue probabilities ``t`` ``(T, H, W)`` aligned to the cell frame. The tissue
classes are mapped to cell classes by ``mapping`` (OCELOT: BG → BC, CA → TC,
:data:`OCELOT_FUSION`), giving per pixel the tissue's vote ``v_c = Σ_{t → c} t_t / Σ_{t
mapped} t_t``. Per pixel, with ``s = 1 - p_0`` (the foreground, unchanged by fusion) and
the class mixture ``q_c = p_c / s``:

* **adaptive**: ``q' = κ·q + (1 − κ)·v`` with the cell model's confidence ``κ`` = the
  margin between its two most probable classes (1 when one class has all the mass, 0 when
  two are tied) — "greater reliance on cell predictions when the cell detection model is
  confident ... on tissue segmentation results when it is less confident";
* **extreme**: ``q'`` = one-hot of the cell class of the most probable tissue class —
  "converting all cells within a predicted tissue region to a corresponding cell class".

The fused map is ``(p_0, s·q')``. Peaks do not move (the foreground is unchanged); a
detection's class and confidence are read from the fused map. Where no mapped tissue class
has probability (``Σ t_mapped = 0``) the pixel is left as it is. The report's caveat
(extreme fusion calls every cell in cancer area a tumour cell) is what the tissue-region
subgroup analysis of ``histozoom evaluate --subgroups`` measures (TC on BG, BC on CA).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..pair import OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES, ClassSet

FUSIONS: tuple[str, ...] = ("adaptive", "extreme")

OCELOT_FUSION: dict[int, int] = {1: 1, 2: 2}
"""OCELOT tissue id → cell id: background (1) → background cell (1), cancer area (2) →
tumour cell (2)."""


def default_mapping(cell_classes: ClassSet, tissue_classes: ClassSet | None) -> dict[int, int]:
    """:data:`OCELOT_FUSION` for OCELOT's class sets; any other pair needs a mapping given."""
    if tissue_classes is not None and tuple(cell_classes.names) == tuple(OCELOT_CELL_CLASSES.names) \
            and tuple(tissue_classes.names) == tuple(OCELOT_TISSUE_CLASSES.names):
        return dict(OCELOT_FUSION)
    raise ValueError(f"fusion needs a tissue→cell class mapping for cell classes {list(cell_classes.names)} "
                     f"and tissue classes {None if tissue_classes is None else list(tissue_classes.names)}")


def vote_matrix(mapping: Mapping[int, int], cell_classes: ClassSet, tissue_classes: ClassSet) -> torch.Tensor:
    """``(T, C)`` 0/1 matrix: row ``k`` (tissue channel ``k`` = ``tissue_classes.ids[k]``)
    has a 1 in the column of the cell class it maps to (cell channel ``1 + j`` = ``cell_classes.ids[j]``)."""
    m = torch.zeros(len(tissue_classes), len(cell_classes))
    for t, c in mapping.items():
        if t not in tissue_classes.ids or c not in cell_classes.ids:
            raise ValueError(f"fusion mapping {t} → {c}: not a tissue class → cell class of this model")
        m[tissue_classes.ids.index(t), cell_classes.ids.index(c)] = 1.0
    return m


def fuse(prob: torch.Tensor, tissue: torch.Tensor, votes: torch.Tensor, rule: str) -> torch.Tensor:
    """Fused ``(B, 1 + C, H, W)`` map of ``prob`` with tissue probabilities ``tissue``
    ``(B, T, H, W)`` (cell frame) and the :func:`vote_matrix` ``votes`` (module doc)."""
    if rule not in FUSIONS:
        raise ValueError(f"fusion rule must be one of {FUSIONS}, got {rule!r}")
    prob = prob.float()
    v = torch.einsum("bthw,tc->bchw", tissue.float(), votes.to(tissue.device))
    total = v.sum(dim=1, keepdim=True)
    has_vote = total > 0
    v = v / total.clamp_min(1e-12)
    s = prob[:, 1:].sum(dim=1, keepdim=True)
    q = prob[:, 1:] / s.clamp_min(1e-12)
    if rule == "adaptive":
        top2 = q.topk(2, dim=1).values if q.shape[1] > 1 else torch.cat([q, torch.zeros_like(q)], dim=1)
        kappa = top2[:, :1] - top2[:, 1:2]
        fused = kappa * q + (1 - kappa) * v
    else:
        fused = torch.nn.functional.one_hot(v.argmax(dim=1), q.shape[1]).permute(0, 3, 1, 2).to(q.dtype)
    fused = torch.where(has_vote, fused, q)
    return torch.cat([prob[:, :1], s * fused], dim=1)
