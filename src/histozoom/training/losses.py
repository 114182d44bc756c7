"""Losses for the cell and tissue branches (OCELOT supplement B: Dice on both; the default
recipe adds pixel-wise cross-entropy, ``loss="dice+ce"``).

Soft multi-class Dice over a softmax: for each channel ``c`` of the batch,
``dice_c = (2·Σ p_c·g_c + ε) / (Σ p_c + Σ g_c + ε)`` summed over all valid pixels of all
images, and the loss is ``1 − mean_c dice_c``. Pixels whose label is the ignore value
(tissue 255 = unknown, and 0 = unlabelled in tissue maps) do not count.

Gaussian targets (``target="gaussian"``): the cell term is the mean squared error between
``sigmoid(cell_logits)`` (one channel per class) and the per-class heatmaps
(:func:`~histozoom.data.targets.cell_gaussian_heatmaps`), :func:`heatmap_mse_loss`.

Label → channel: a :class:`ClassSet` orders classes; the cell output has channel 0 =
background and channel ``1 + k`` = ``classes.ids[k]``; the tissue output has channel
``k`` = ``classes.ids[k]`` (no background channel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..pair import ClassSet

IGNORE = -1


def label_lookup(classes: ClassSet, background: bool) -> torch.Tensor:
    """Table mapping label values 0..255 to channel indices (``IGNORE`` where none)."""
    table = torch.full((256,), IGNORE, dtype=torch.long)
    offset = 1 if background else 0
    if background:
        table[0] = 0
    for k, cid in enumerate(classes.ids):
        table[cid] = k + offset
    return table


def to_channels(labels: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Label map (any int dtype, values 0..255) → channel-index map with ``IGNORE``."""
    return table.to(labels.device)[labels.long().clamp(0, 255)]


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """``1 − mean_c dice_c`` of ``softmax(logits)`` (B, C, H, W) against channel indices
    ``target`` (B, H, W) with ``IGNORE`` pixels left out. Logits at another resolution than
    the target are resized bilinearly first.
    """
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    probs = logits.float().softmax(dim=1)
    valid = (target != IGNORE).unsqueeze(1)
    onehot = F.one_hot(target.clamp(min=0), probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    probs = probs * valid
    onehot = onehot * valid
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + eps) / (denom + eps)
    return 1.0 - dice.mean()


def cross_entropy_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean pixel-wise cross-entropy of ``logits`` (B, C, H, W) against channel indices
    ``target`` (B, H, W), ``IGNORE`` pixels left out (0 when every pixel is ignored);
    logits are resized to the target bilinearly as for the Dice loss."""
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    if not (target != IGNORE).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), target, ignore_index=IGNORE)


def heatmap_mse_loss(logits: torch.Tensor, heatmaps: torch.Tensor) -> torch.Tensor:
    """Mean over pixels and channels of ``(sigmoid(logits) − heatmaps)²``; ``logits`` and
    ``heatmaps`` are ``(B, C, H, W)`` (logits at another size are resized bilinearly)."""
    if logits.shape[-2:] != heatmaps.shape[-2:]:
        logits = F.interpolate(logits, size=heatmaps.shape[-2:], mode="bilinear", align_corners=False)
    return F.mse_loss(logits.float().sigmoid(), heatmaps.float())


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, cross_entropy: bool) -> tuple[torch.Tensor, float]:
    """Dice (+ cross-entropy): the loss and the Dice part's value."""
    dice = soft_dice_loss(logits, target)
    total = dice + cross_entropy_loss(logits, target) if cross_entropy else dice
    return total, float(dice.detach())


class CellTissueLoss(torch.nn.Module):
    """``w_cell · L(cell) + w_tissue · L(tissue)`` with ``L`` = Dice (``loss="dice"``, the
    paper's) or Dice + cross-entropy (``"dice+ce"``); the tissue term is skipped when its
    weight is 0 or the batch has no tissue labels — Table 7's "large FoV without tissue labels".

    ``tissue_in_cell_frame``: the tissue branch sees the cell view (Table 7's "tissue labels
    without large FoV"), so its target is the tissue mask cropped to the cell window.
    ``target="gaussian"``: the cell term is :func:`heatmap_mse_loss` against the batch's
    ``cell_heatmap`` (the tissue term is unchanged).
    """

    def __init__(
        self,
        cell_classes: ClassSet,
        tissue_classes: ClassSet | None,
        cell_weight: float = 1.0,
        tissue_weight: float = 1.0,
        tissue_in_cell_frame: bool = False,
        loss: str = "dice",
        target: str = "disk",
    ):
        super().__init__()
        if loss not in ("dice", "dice+ce"):
            raise ValueError(f"loss must be 'dice' or 'dice+ce', got {loss!r}")
        if target not in ("disk", "gaussian"):
            raise ValueError(f"target must be 'disk' or 'gaussian', got {target!r}")
        self.target = target
        self.cross_entropy = loss == "dice+ce"
        self.register_buffer("cell_table", label_lookup(cell_classes, background=True), persistent=False)
        tissue = tissue_classes or ClassSet(("none",), (1,))
        self.register_buffer("tissue_table", label_lookup(tissue, background=False), persistent=False)
        self.cell_weight = cell_weight
        self.tissue_weight = tissue_weight if tissue_classes is not None else 0.0
        self.tissue_key = "tissue_target_cell" if tissue_in_cell_frame else "tissue_target"

    def forward(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        if self.target == "gaussian":
            cell = heatmap_mse_loss(outputs["cell_logits"], batch["cell_heatmap"])
            parts = {"cell_mse_loss": float(cell.detach())}
        else:
            cell, cell_dice = segmentation_loss(outputs["cell_logits"],
                                                to_channels(batch["cell_target"], self.cell_table), self.cross_entropy)
            parts = {"cell_dice_loss": cell_dice}
        total = self.cell_weight * cell
        if self.tissue_weight and "tissue_logits" in outputs and self.tissue_key in batch:
            tissue, tissue_dice = segmentation_loss(outputs["tissue_logits"],
                                                    to_channels(batch[self.tissue_key], self.tissue_table),
                                                    self.cross_entropy)
            total = total + self.tissue_weight * tissue
            parts["tissue_dice_loss"] = tissue_dice
        return total, parts
