"""From pairs to training tensors: resizing, targets, and a torch ``Dataset``.

A sample is a dict of tensors (batched by the default collate):

* ``cell_image``, ``tissue_image``: ``(3, H, W)`` float32 in [0, 1].
* ``windows``: ``(4,)`` float32 window fractions ``(x0, y0, w, h)`` of the tissue image.
* ``cell_target``: ``(Hc, Wc)`` int64 disk label map (0 = background, else cell class id).
* ``cell_heatmap``: ``(C, Hc, Wc)`` float32 Gaussian heatmaps (if asked).
* ``tissue_target``: ``(Ht, Wt)`` int64 tissue labels (0 = no label, ignore value kept).
* ``tissue_target_cell``: ``(Hc, Wc)`` int64 tissue labels cropped to the cell window.
* ``index``: int, position of the pair in its split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..pair import UNKNOWN, Pair
from .base import PairSplit
from .normalize import normalize_pair
from .targets import (
    DISK_RADIUS_UM,
    GAUSSIAN_SIGMA_UM,
    cell_disk_map,
    cell_gaussian_heatmaps,
    tissue_mask_in_cell_frame,
    um_to_px,
)


def _resize_image(a: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize ``(H, W[, C])`` to ``size = (width, height)``: area for images, nearest for labels."""
    if (a.shape[1], a.shape[0]) == tuple(size):
        return a
    t = torch.from_numpy(np.require(a, requirements=["C", "W"]))
    t = (t.permute(2, 0, 1) if a.ndim == 3 else t[None])[None].float()
    mode = "nearest-exact" if nearest else ("area" if size[0] < a.shape[1] else "bilinear")
    out = F.interpolate(t, size=(size[1], size[0]), mode=mode)[0]
    out = out.permute(1, 2, 0) if a.ndim == 3 else out[0]
    return out.round().clamp(0, 255).numpy().astype(a.dtype)


def resize_pair(pair: Pair, cell_size: tuple[int, int], tissue_size: tuple[int, int]) -> Pair:
    """Both views (and labels, placement, mpp) resized to new pixel sizes ``(width, height)``."""
    sx = cell_size[0] / pair.cell_size[0]
    sy = cell_size[1] / pair.cell_size[1]
    pts = pair.cell_points
    if pts is not None:
        xy = np.column_stack([(pts.xy[:, 0] + 0.5) * sx - 0.5, (pts.xy[:, 1] + 0.5) * sy - 0.5])
        pts = pts.with_xy(xy)
    return pair.replace(
        cell_image=_resize_image(pair.cell_image, cell_size),
        tissue_image=_resize_image(pair.tissue_image, tissue_size),
        tissue_mask=None if pair.tissue_mask is None else _resize_image(pair.tissue_mask, tissue_size, nearest=True),
        cell_points=pts,
        placement=pair.placement.resized(cell_size, tissue_size),
        cell_mpp=pair.cell_mpp / sx,
        tissue_mpp=pair.tissue_mpp * pair.tissue_size[0] / tissue_size[0],
    )


@dataclass(frozen=True)
class SampleConfig:
    """How pairs become tensors.

    ``size``: resize both views to this many pixels per side (None: keep).
    ``disk_radius_um``/``sigma_um``: target geometry in µm (converted with each pair's mpp).
    ``heatmaps``: also produce Gaussian heatmaps.
    ``normalize``: input normalisation of both views (:mod:`histozoom.data.normalize`),
    applied to the stored pair before resizing.
    """

    size: int | None = None
    disk_radius_um: float = DISK_RADIUS_UM
    sigma_um: float = GAUSSIAN_SIGMA_UM
    heatmaps: bool = False
    normalize: str = "none"


def image_tensor(img: np.ndarray) -> torch.Tensor:
    """``(H, W, 3)`` uint8 → ``(3, H, W)`` float32 in [0, 1]."""
    return torch.from_numpy(np.require(img, requirements=["C", "W"])).permute(2, 0, 1).float().div_(255.0)


def pair_to_sample(pair: Pair, cfg: SampleConfig, cell_classes, tissue_ignore: int = UNKNOWN) -> dict:
    """Targets and tensors of one (already augmented/resized) pair."""
    out = {
        "cell_image": image_tensor(pair.cell_image),
        "tissue_image": image_tensor(pair.tissue_image),
        "windows": torch.tensor(pair.placement.fractions(), dtype=torch.float32),
    }
    if pair.cell_points is not None:
        radius = um_to_px(cfg.disk_radius_um, pair.cell_mpp)
        out["cell_target"] = torch.from_numpy(cell_disk_map(pair.cell_points, pair.cell_size, radius).astype(np.int64))
        if cfg.heatmaps:
            sigma = um_to_px(cfg.sigma_um, pair.cell_mpp)
            out["cell_heatmap"] = torch.from_numpy(
                cell_gaussian_heatmaps(pair.cell_points, pair.cell_size, sigma, cell_classes))
    if pair.tissue_mask is not None:
        out["tissue_target"] = torch.from_numpy(pair.tissue_mask.astype(np.int64))
        out["tissue_target_cell"] = torch.from_numpy(
            tissue_mask_in_cell_frame(pair.tissue_mask, pair.placement, tissue_ignore).astype(np.int64))
    return out


class PairDataset(Dataset):
    """Torch dataset over a split: load → resize → augment → targets → tensors."""

    def __init__(
        self,
        split: PairSplit,
        cfg: SampleConfig = SampleConfig(),
        augment: Callable[[Pair], Pair] | None = None,
    ):
        self.split = split
        self.cfg = cfg
        self.augment = augment
        tc = split.spec.tissue_classes
        self.tissue_ignore = tc.ignore if tc is not None and tc.ignore is not None else UNKNOWN

    def __len__(self) -> int:
        return len(self.split)

    def load_pair(self, index: int) -> Pair:
        pair = normalize_pair(self.split[index], self.cfg.normalize)
        if self.cfg.size is not None:
            pair = resize_pair(pair, (self.cfg.size, self.cfg.size), (self.cfg.size, self.cfg.size))
        return pair

    def __getitem__(self, index: int) -> dict:
        pair = self.load_pair(index)
        if self.augment is not None:
            pair = self.augment(pair)
        sample = pair_to_sample(pair, self.cfg, self.split.spec.cell_classes, self.tissue_ignore)
        sample["index"] = index
        return sample
