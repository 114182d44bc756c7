"""Shared fixtures: where the real data lives, and small synthetic pairs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from histozoom.geometry import Placement
from histozoom.pair import Pair, Points

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$HISTOZOOM_SHARED_DATA`` or ``../shared/data`` beside the repository."""
    env = os.environ.get("HISTOZOOM_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    d = shared_data_dir()
    if not d.is_dir():
        pytest.skip(f"real data not found at {d} (set HISTOZOOM_SHARED_DATA)")
    return d


@pytest.fixture(scope="session")
def sample_004(shared_data) -> Path:
    d = shared_data / "ocelot" / "sample_004"
    if not d.is_dir():
        pytest.skip(f"{d} missing")
    return d


def make_pair(
    rng: np.random.Generator,
    cell_size=(64, 48),
    tissue_size=(80, 96),
    centre=(0.4, 0.55),
    n_points: int = 12,
    pid: str = "000",
    cell_mpp: float = 0.2,
    tissue_mpp: float = 0.8,
) -> Pair:
    """A random pair with non-square, unequal views, points and a tissue mask."""
    p = Placement.from_centre(centre, cell_size, tissue_size, cell_mpp, tissue_mpp)
    cw, ch = cell_size
    tw, th = tissue_size
    xy = np.stack([rng.integers(0, cw, n_points), rng.integers(0, ch, n_points)], 1)
    pts = Points.from_array(np.column_stack([xy, rng.integers(1, 3, n_points)]))
    mask = rng.choice(np.array([1, 2, 255], np.uint8), size=(th, tw), p=[0.5, 0.45, 0.05])
    return Pair(
        pid,
        rng.integers(0, 256, (ch, cw, 3), dtype=np.uint8),
        rng.integers(0, 256, (th, tw, 3), dtype=np.uint8),
        p,
        pts,
        mask,
        organ="kidney",
        cell_mpp=cell_mpp,
        tissue_mpp=tissue_mpp,
    )
