"""Measuring helpers shared by the benchmarks."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident set in MB: ``VmHWM`` (of its own address space;
    ``ru_maxrss`` keeps the parent's resident set from before ``exec``, so a child started
    by a large parent would report the parent's size)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def offset_background(model, cell_logits, foreground: float) -> None:
    """Raise the background logit bias of ``model``'s cell head so that a ``foreground``
    share of the pixels of ``cell_logits`` (its output on a few real views) is foreground:
    a random model then detects cells at a trained model's density instead of one every
    few µm. ``foreground >= 1`` leaves the model as it is."""
    import torch

    if foreground >= 1:
        return
    gap = (cell_logits[:, 1:].max(1).values - cell_logits[:, 0]).flatten()
    with torch.no_grad():
        model.cell.head[0].bias[0] += float(torch.quantile(gap[::7], 1 - foreground))


def save_ocelot_checkpoint(model, root: Path, size: int) -> Path:
    """Save ``model`` as an OCELOT-class checkpoint under ``root/ckpt``: views of ``size`` px
    at 0.2 (cell) / 0.8 (tissue) µm/px, peaks 2 µm apart above 0.5."""
    from histozoom.data.base import DatasetSpec
    from histozoom.models.checkpoint import save_pretrained
    from histozoom.pair import OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES

    extra = {"spec": DatasetSpec(OCELOT_CELL_CLASSES, OCELOT_TISSUE_CLASSES).to_dict(), "size": size,
             "views": {"cell": {"size": size, "mpp": 0.2}, "tissue": {"size": size, "mpp": 0.8}},
             "peak": {"min_distance_um": 2.0, "threshold": 0.5}}
    return save_pretrained(model, root / "ckpt", extra=extra)
