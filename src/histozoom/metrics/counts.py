"""Per-image count tables: the one shape every pooled score and bootstrap starts from."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..pair import ClassSet


@dataclass
class PerImageCounts:
    """Integer counts ``(n_images, n_classes, 3)``; subclasses say what the 3 columns are.

    ``images``: the image index of each row; ``names``: a display name per row
    (``image_K`` by default).
    """

    counts: np.ndarray
    classes: ClassSet
    images: list[int]
    names: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.counts = np.asarray(self.counts, dtype=np.int64).reshape(len(self.images), len(self.classes), 3)
        if not self.names:
            self.names = [f"image_{k}" for k in self.images]

    @property
    def totals(self) -> np.ndarray:
        """Counts pooled over images, ``(n_classes, 3)``."""
        return self.counts.sum(axis=0)
