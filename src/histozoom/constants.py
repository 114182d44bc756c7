"""Named values that the library and the command line share (choices, defaults, grids).

This module imports nothing, so the command line can build its parsers (``--help``,
argument errors) without loading torch or scipy; the modules that use a value import it
from here.
"""

from __future__ import annotations

# image geometry (histozoom.data.checks, the command line's --mpp)
MPP_RANGE = (0.01, 100.0)
"""Accepted microns per pixel, both ends included: from far beyond any optical scanner's
finest resolution (0.01 µm/px) to a whole-slide thumbnail (100 µm/px)."""

# OCELOT 2023 challenge metric (histozoom.metrics.detection)
MATCH_MODES: tuple[str, ...] = ("challenge", "hungarian")
"""Matching rules: the challenge's greedy rule, and an optimal one-to-one matching."""
CHALLENGE_RADIUS_UM = 3.0
"""Hit radius in µm (15 px at the challenge's 0.2 µm/px)."""
CHALLENGE_MPP = 0.2
"""The challenge images' µm per pixel."""

# experiments (histozoom.training.experiment)
PAPER_MODELS: tuple[str, ...] = ("cell-only", "pred-to-input", "pred-to-inter-1", "pred-to-inter-2",
                                 "pred-to-output", "feature-sharing", "tissue-label-leaking")
"""Table 5's rows, in its order."""
PAPER_LR_GRID: tuple[float, ...] = (5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3)
PAPER_CELL_DROPOUT_GRID: tuple[float, ...] = (0.1, 0.3, 0.5)
PAPER_CELL_LR_RATIOS: tuple[float, ...] = (1.0, 0.5)
DEFAULT_LR_GRID: tuple[float, ...] = (3e-4, 1e-3, 3e-3)
"""The default recipe's LR grid: around the value its range test finds on these models (about 1e-3)."""
DEFAULT_CELL_DROPOUT_GRID: tuple[float, ...] = (0.0, 0.1, 0.3)
"""Around the models' default cell dropout (0.1)."""
SEARCH_MODES: tuple[str, ...] = ("none", "random", "halving")

# synthetic data (histozoom.data.synthetic)
OCELOT_ORGANS: tuple[str, ...] = ("kidney", "head-and-neck", "prostate", "stomach", "endometrium", "bladder")
PRESETS: tuple[str, ...] = ("context", "simple")

# nuclei (histozoom.evaluation.nuclei, histozoom.inference.nuclei_predictor)
MISSING_MODES: tuple[str, ...] = ("error", "empty")
"""What ``nuclei evaluate`` does with a ground-truth file that has no prediction."""
NUCLEI_OUTPUT_NAMES: dict[str, str] = {"npy": "{id}_instances.npy", "tif": "{id}_instances.tif",
                                       "csv": "{id}_nuclei.csv", "geojson": "{id}.geojson", "mat": "{id}.mat"}
"""File name per output format of a nuclei prediction."""
OUTPUT_FORMATS: tuple[str, ...] = tuple(NUCLEI_OUTPUT_NAMES)
