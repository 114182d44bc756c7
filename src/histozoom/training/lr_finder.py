"""The learning-rate range test (Smith 2017, "Cyclical learning rates"; fastai's ``lr_find``).

Train for ``steps`` optimiser steps while the LR grows geometrically from ``lr_min`` to
``lr_max``; record the loss; stop early once its running average (an exponential moving
average, bias-corrected, factor ``beta``) exceeds ``diverge ×`` its minimum or the loss is
not finite.

The suggestion is read from a centred moving average of the losses (no lag, unlike the
running one): the smaller of

* the LR where that curve falls fastest per decade of LR ("steepest"), searched before
  its minimum, and
* the LR at its minimum divided by ``divisor`` (10, fastai's "minimum / 10": the minimum
  sits at the edge of divergence),

clipped to ``[clip_min, clip_max]``. Both rules are needed: with a bounded loss (Dice) and
a short test the loss may keep falling to the end of the range, only because training
progresses, and then the minimum says nothing while the steepest point still does; on a
problem that diverges the steepest point can sit close to divergence, and the minimum
rule keeps the choice a decade below it.

The caller restores the model and optimiser afterwards: the test changes the weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class LRFinderResult:
    """``lrs``/``losses``/``smoothed`` (the running average): one entry per step taken;
    ``suggestion``: the LR to train with; ``minimum_lr``/``steepest_lr``: where the centred
    average is lowest / falls fastest; ``stopped``: why it ended."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    suggestion: float = float("nan")
    minimum_lr: float = float("nan")
    steepest_lr: float = float("nan")
    stopped: str = "end of range"

    def summary(self) -> dict:
        """What a run config records (the curve thinned to at most 25 points)."""
        idx = np.unique(np.linspace(0, len(self.lrs) - 1, min(25, len(self.lrs))).round().astype(int)) if self.lrs else []
        return {"suggestion": self.suggestion, "minimum_lr": self.minimum_lr, "steepest_lr": self.steepest_lr,
                "steps": len(self.lrs),
                "stopped": self.stopped,
                "curve": [[float(f"{self.lrs[i]:.4g}"), float(f"{self.smoothed[i]:.5g}")] for i in idx]}


MIN_STEPS = 40
"""Fewest range-test steps a trainer runs (smoothing and the slope window need them)."""


def lr_range_test(
    step: Callable[[float], float],
    steps: int = 100,
    lr_min: float = 1e-6,
    lr_max: float = 1.0,
    beta: float = 0.9,
    diverge: float = 4.0,
    divisor: float = 10.0,
    clip_min: float = 1e-5,
    clip_max: float = 1e-2,
    skip: int = 5,
) -> LRFinderResult:
    """Run the range test. ``step(lr)`` does one optimiser step at learning rate ``lr`` and
    returns its loss. The first ``skip`` steps are left out of the search and of the
    divergence check (too few losses to average)."""
    if steps < 2 or not 0 < lr_min < lr_max:
        raise ValueError(f"need steps >= 2 and 0 < lr_min < lr_max, got {steps}, {lr_min}, {lr_max}")
    ratio = (lr_max / lr_min) ** (1.0 / (steps - 1))
    res = LRFinderResult()
    avg, best = 0.0, math.inf
    for i in range(steps):
        lr = lr_min * ratio**i
        loss = float(step(lr))
        res.lrs.append(lr)
        res.losses.append(loss)
        if not math.isfinite(loss):
            res.smoothed.append(math.inf)
            res.stopped = "loss not finite"
            break
        avg = beta * avg + (1 - beta) * loss
        sm = avg / (1 - beta ** (i + 1))
        res.smoothed.append(sm)
        if i >= skip:
            best = min(best, sm)
            if sm > diverge * best:
                res.stopped = "loss diverged"
                break
    finite = [x for x in res.losses if np.isfinite(x)]
    centred = centred_average(np.asarray(finite), max(1, len(finite) // 20))
    lrs = np.asarray(res.lrs[: len(finite)])
    lo = min(skip, max(len(finite) - 2, 0))
    k_min = lo + int(np.argmin(centred[lo:]))
    res.minimum_lr = float(lrs[k_min])
    h = max(1, len(finite) // 10)
    if k_min - lo > 2 * h:  # slope over a window of 2h steps: robust to minibatch noise
        log_lr = np.log(lrs)
        i = np.arange(lo + h, k_min - h + 1)
        slope = (centred[i + h] - centred[i - h]) / (log_lr[i + h] - log_lr[i - h])
        res.steepest_lr = float(lrs[i[int(np.argmin(slope))]])
    else:
        res.steepest_lr = res.minimum_lr
    pick = min(res.steepest_lr, res.minimum_lr / divisor)
    res.suggestion = float(min(max(pick, clip_min), clip_max))
    return res


def centred_average(x: np.ndarray, half: int) -> np.ndarray:
    """Moving average over ``2·half + 1`` points centred on each point (fewer at the ends)."""
    if len(x) == 0:
        return x
    c = np.concatenate([[0.0], np.cumsum(x)])
    i = np.arange(len(x))
    a, b = np.maximum(i - half, 0), np.minimum(i + half + 1, len(x))
    return (c[b] - c[a]) / (b - a)
