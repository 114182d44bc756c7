"""Shared fixtures: where the real data lives, and small synthetic pairs."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from histozoom.geometry import Placement
from histozoom.pair import Pair, Points

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread per test: tiny tensors gain nothing from more, and on a shared
    2-core machine more threads stall (measured 26 s vs 260 s for the 64-config sweep)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_tiny_synthetic(root: Path, **overrides) -> Path:
    """A tiny 'simple' synthetic dataset (64 px views, 4/2/2 pairs) for model tests."""
    from histozoom.data.synthetic import SynthConfig
    from histozoom.evaluation import write_synthetic_dataset

    cfg = dict(preset="simple", cell_size=64, tissue_size=64, n_train=4, n_val=2, n_test=2) | overrides
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        write_synthetic_dataset(root, SynthConfig(**cfg))
    return root


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
