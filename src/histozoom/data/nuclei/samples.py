"""Training samples for nuclei models (CHR-Net, the U-Net baseline): tensors and targets.

A sample is a dict of tensors, one tile (or a random crop of it):

* ``"image"``    ``(3, H, W)`` float32 in [0, 1];
* ``"binary"``   ``(H, W)`` float32, 1 on nuclei (:func:`~.targets.binary_map`);
* ``"distance"`` ``(H, W)`` float32 in [0, 1], DIST per nucleus (:func:`~.targets.distance_map`);
* ``"classes"``  ``(H, W)`` int64 class ids, 0 = background (:func:`~.records.class_map`);
  absent for tiles without classes.

Targets are computed once per tile (cached) on the whole tile, then cropped and
augmented together with the image, so distances near a crop edge are those of the full
nucleus. Augmentation (:class:`NucleiAugment`): flips and 90° rotations of image and
targets alike; colour jitter, blur and noise of the image (the paper: flip, rotation, blur).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ..augment import AugmentConfig, photometric
from ..samples import image_tensor
from .records import NucleiSample, class_map
from .targets import binary_map, distance_map

__all__ = ["NucleiAugment", "NucleiTrainSet", "tile_targets", "crop_origin"]

TARGET_KEYS = ("binary", "distance", "classes")


def tile_targets(sample: NucleiSample) -> dict[str, np.ndarray]:
    """``{"binary", "distance"[, "classes"]}`` maps of a whole tile (see the module doc)."""
    out = {"binary": binary_map(sample.inst_map).astype(np.float32),
           "distance": distance_map(sample.inst_map).astype(np.float32)}
    if sample.inst_class is not None:
        out["classes"] = class_map(sample.inst_map, sample.inst_class).astype(np.int64)
    return out


def crop_origin(shape: tuple[int, int], crop: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left ``(y, x)`` of a uniformly random ``crop``×``crop`` window (0 where the tile is smaller)."""
    h, w = shape
    return int(rng.integers(0, max(h - crop, 0) + 1)), int(rng.integers(0, max(w - crop, 0) + 1))


@dataclass
class NucleiAugment:
    """Geometric (shared by image and targets) and photometric (image only) augmentation.

    ``rng`` is reseeded per sample by the trainer (``(seed, epoch, index)``)."""

    cfg: AugmentConfig = AugmentConfig()
    rng: np.random.Generator = None  # type: ignore[assignment]

    def __post_init__(self):
        if self.rng is None:
            self.rng = np.random.default_rng(0)

    def __call__(self, image: np.ndarray, maps: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        arrays = [image] + [maps[k] for k in maps]
        if self.rng.random() < self.cfg.p_flip:
            arrays = [a[:, ::-1] for a in arrays]
        if self.rng.random() < self.cfg.p_rot90:
            k = int(self.rng.integers(1, 4))
            arrays = [np.rot90(a, k, axes=(0, 1)) for a in arrays]
        arrays = [np.ascontiguousarray(a) for a in arrays]
        image = photometric(arrays[0], self.cfg, self.rng)
        return image, dict(zip(maps, arrays[1:]))


class NucleiTrainSet(Dataset):
    """Tiles with their targets as tensors; ``crop`` px random crops (``None`` = whole tile,
    padded with background to a multiple of ``multiple``), optional augmentation."""

    def __init__(self, samples: Sequence[NucleiSample], crop: int | None = None,
                 augment: NucleiAugment | None = None, multiple: int = 32):
        self.samples = samples
        self.crop = crop
        self.augment = augment
        self.multiple = multiple
        self._targets: dict[int, dict[str, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.samples[index]
        if index not in self._targets:  # computed once per tile, from the sample just read
            self._targets[index] = tile_targets(sample)
        image, maps = sample.image, dict(self._targets[index])
        size = self.crop
        if size is not None:
            rng = self.augment.rng if self.augment is not None else np.random.default_rng(index)
            y, x = crop_origin(image.shape[:2], size, rng)
            image = image[y:y + size, x:x + size]
            maps = {k: v[y:y + size, x:x + size] for k, v in maps.items()}
        if self.augment is not None:
            image, maps = self.augment(image, maps)
        image, maps = _pad_to(image, maps, size, self.multiple)
        out = {"image": image_tensor(image)}
        out.update({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in maps.items()})
        return out


def _pad_to(image: np.ndarray, maps: dict[str, np.ndarray], size: int | None, multiple: int):
    """Pad bottom/right to ``size`` (or the next multiple of ``multiple``): the image with
    its median colour, the targets with background (so the padding is labelled truthfully)."""
    h, w = image.shape[:2]
    th = size if size is not None else -(-h // multiple) * multiple
    tw = size if size is not None else -(-w // multiple) * multiple
    if (th, tw) == (h, w):
        return image, maps
    pad = ((0, th - h), (0, tw - w))
    fill = np.median(image.reshape(-1, image.shape[-1]), axis=0).astype(image.dtype)
    padded = np.empty((th, tw, image.shape[2]), image.dtype)
    padded[:] = fill
    padded[:h, :w] = image
    image = padded
    return image, {k: np.pad(v, pad) for k, v in maps.items()}
