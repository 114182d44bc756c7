"""Getting batches onto the accelerator and sizing them to its memory.

* :func:`to_device`: on CUDA, a host tensor goes through pinned memory with a
  non-blocking copy (the copy overlaps the previous batch's compute), and 4-D image
  batches become ``channels_last`` (what cuDNN's fastest convolutions read); elsewhere a
  plain ``.to``.
* :func:`fit_batch_size`: the largest batch whose forward fits the free GPU memory, from
  the peak memory of two trial batches (``batch = ⌊(free · headroom − fixed) / per item⌋``
  with ``per item`` = peak(2) − peak(1), ``fixed`` = peak(1) − per item), capped; on a
  CPU, the default.
* :func:`maybe_compile`: ``torch.compile`` of a model or function when asked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["batch_size_for", "fit_batch_size", "maybe_compile", "to_device"]


def to_device(x: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``x`` on ``device`` (module docstring)."""
    device = torch.device(device)
    if device.type != "cuda":
        return x.to(device)
    if x.device.type == "cpu":
        x = x.pin_memory().to(device, non_blocking=True)
    else:
        x = x.to(device)
    if x.dim() == 4 and x.is_floating_point():
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def batch_size_for(free_bytes: float, peak_1: float, peak_2: float, cap: int = 256, headroom: float = 0.8) -> int:
    """The batch that fits ``free_bytes · headroom`` when one item peaks at ``peak_1``
    bytes and two at ``peak_2`` (at least 1, at most ``cap``)."""
    per_item = max(peak_2 - peak_1, 1.0)
    fixed = max(peak_1 - per_item, 0.0)
    return int(max(1, min(cap, (free_bytes * headroom - fixed) // per_item)))


def fit_batch_size(run: Callable[[int], Any], device: torch.device | str, default: int, cap: int = 256) -> int:
    """The batch size for ``run(batch)`` (a forward on a batch of that many items) on
    ``device``: measured on CUDA (module docstring), ``default`` elsewhere."""
    device = torch.device(device)
    if device.type != "cuda":
        return default
    peaks = []
    for n in (1, 2):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with torch.inference_mode():
            run(n)
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
    free, _ = torch.cuda.mem_get_info(device)
    return batch_size_for(free, peaks[0], peaks[1], cap)


def maybe_compile(fn, enabled: bool):
    """``torch.compile(fn)`` when ``enabled``, else ``fn``."""
    return torch.compile(fn) if enabled else fn
