"""Training recipes: how the learning rate, its schedule, the loss and the BatchNorm
statistics are chosen. A run's config names its recipe; what the recipe resolved (the LR
found, the schedule, the recalibration batches) is stored in the config's ``resolved``.

* ``"paper"`` — the OCELOT paper / OCELOT 2023 challenge baseline exactly: Adam at ``lr``
  (default :data:`PAPER_LR` = 1e-4), ×``gamma`` (0.3) after 60 % and 80 % of the epochs,
  stepped once per epoch (``MultiStepLR``), Dice loss, no BatchNorm recalibration.
* ``"default"`` — adapts to the budget: the LR from a range test
  (:mod:`histozoom.training.lr_finder`) unless ``lr`` is given; linear warm-up over the
  first ``warmup`` fraction of the optimiser steps, then a cosine down to
  :data:`FINAL_FRACTION` of the LR at the last step (stepped per batch); Dice +
  cross-entropy; no spatial dropout (:data:`DEFAULT_RECIPE_DROPOUT`); BatchNorm
  statistics re-estimated from :data:`AUTO_BN_BATCHES` batches
  before each validation when an epoch has fewer than :data:`AUTO_BN_MAX_STEPS` steps
  (then the running averages lag the weights and eval-mode outputs suffer).

Extensions (``extend``, one entry per ``--extend N``) append epochs after the schedule:
with ``default`` each follows a fresh cosine from :data:`TAIL_START` to
:data:`FINAL_FRACTION` of the LR; with ``paper`` the LR stays at the schedule's last value
(what ``MultiStepLR`` does past its milestones).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

RECIPES = ("default", "paper")
PAPER_LR = 1e-4
"""The challenge baseline's initial learning rate."""
FINAL_FRACTION = 0.01
"""The cosine ends at this fraction of the base LR."""
TAIL_START = 0.1
"""An extension's cosine starts at this fraction of the base LR."""
AUTO_BN_MAX_STEPS = 100
AUTO_BN_BATCHES = 16
LOSSES = ("dice", "dice+ce")
DEFAULT_RECIPE_DROPOUT = 0.0
"""The default recipe's spatial dropout in both branches (the paper's is 0.1): in short
runs dropout slows fitting more than it regularises (measured in the README's recipe table)."""


def recipe_dropout(recipe: str) -> float | None:
    """Dropout the recipe sets when the run does not (``None``: the model variant's own)."""
    return DEFAULT_RECIPE_DROPOUT if recipe == "default" else None


def default_lr_factor(step: int, steps_per_epoch: int, epochs: int, extend: Sequence[int] = (),
                      warmup: float = 0.05) -> float:
    """LR multiplier of the ``default`` recipe before optimiser step ``step`` (0-based).

    Main schedule (``epochs × steps_per_epoch`` steps): linear warm-up from 1/W to 1 over
    the first ``W = ceil(warmup × steps)`` steps, then a cosine from 1 to
    :data:`FINAL_FRACTION` reached at the last step. Step ``s`` of an extension of ``n``
    epochs: a cosine from :data:`TAIL_START` to :data:`FINAL_FRACTION`.
    """
    total = epochs * steps_per_epoch
    if step < total:
        w = math.ceil(warmup * total)
        if step < w:
            return (step + 1) / w
        span = max(total - w - 1, 1)
        return _cosine(1.0, FINAL_FRACTION, (step - w) / span)
    start = total
    for n in extend:
        length = n * steps_per_epoch
        if step < start + length:
            return _cosine(TAIL_START, FINAL_FRACTION, (step - start) / max(length - 1, 1))
        start += length
    return FINAL_FRACTION


def _cosine(hi: float, lo: float, t: float) -> float:
    t = min(max(t, 0.0), 1.0)
    return lo + 0.5 * (hi - lo) * (1.0 + math.cos(math.pi * t))


def auto_bn_batches(recipe: str, steps_per_epoch: int) -> int:
    """Batches for BatchNorm recalibration when the config leaves it to the recipe."""
    if recipe == "paper" or steps_per_epoch >= AUTO_BN_MAX_STEPS:
        return 0
    return min(AUTO_BN_BATCHES, steps_per_epoch)


def recipe_loss(recipe: str, loss: str | None) -> str:
    """The loss the run uses: the config's, else the recipe's (paper: Dice)."""
    if loss is not None:
        return loss
    return "dice" if recipe == "paper" else "dice+ce"
