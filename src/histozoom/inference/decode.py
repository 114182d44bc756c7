"""Cell probability maps → detections (OCELOT supplement B).

The cell branch outputs ``(1 + C, H, W)`` softmax probabilities: channel 0 is background,
channel ``1 + k`` the k-th cell class of the dataset's ``ClassSet``. Decoding:

1. foreground map ``fg = 1 - p_background``;
2. local peaks of ``fg`` with ``skimage.feature.peak_local_max`` semantics: a pixel is a
   peak when it equals the maximum of its ``(2·min_distance + 1)²`` neighbourhood and
   ``fg > threshold``; border peaks are kept; a constant map has no peak; among peaks
   closer than ``min_distance`` (Chebyshev) the higher (then the earlier in row-major
   order) is kept;
3. class = argmax over the cell channels at the peak; confidence = that class's probability.

:func:`find_peaks` is the NumPy/SciPy path (it calls scikit-image);
:func:`find_peaks_torch` does the neighbourhood maximum with ``max_pool2d`` for whole
batches on any device and returns the same peaks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from skimage.feature import peak_local_max

try:  # the spacing rule peak_local_max applies to tied neighbours
    from skimage._shared.coord import ensure_spacing
except ImportError:  # pragma: no cover - moved in a future scikit-image
    ensure_spacing = None

from ..pair import ClassSet, Points


@dataclass(frozen=True)
class PeakConfig:
    """``min_distance_um``: half-size of the peak neighbourhood in µm (converted with the
    map's mpp, at least 1 px); ``threshold``: minimum foreground probability."""

    min_distance_um: float = 2.0
    threshold: float = 0.5

    def min_distance_px(self, mpp: float) -> int:
        return max(1, int(round(self.min_distance_um / mpp)))


def find_peaks(fg: np.ndarray, min_distance: int, threshold: float) -> np.ndarray:
    """``(N, 2)`` int ``(row, col)`` peaks of a 2-D map, highest first (scikit-image)."""
    return peak_local_max(fg, min_distance=min_distance, threshold_abs=threshold, exclude_border=False)


def _spaced(coords: np.ndarray, values: np.ndarray, min_distance: int) -> np.ndarray:
    """Order peak candidates as peak_local_max does and drop tied neighbours."""
    order = np.argsort(-values, kind="stable")
    coords = coords[order]
    if min_distance > 1 and len(coords) > 1 and ensure_spacing is not None:
        coords = ensure_spacing(coords, spacing=min_distance, p_norm=np.inf)
    return coords


def find_peaks_torch(fg: torch.Tensor, min_distance: int, threshold: float) -> list[np.ndarray]:
    """Peaks of a batch ``(B, H, W)`` of maps; per map ``(N, 2)`` ``(row, col)``, highest first.

    Candidate detection runs on ``fg``'s device; the (rare) tie spacing on the CPU.
    """
    k = 2 * min_distance + 1
    # the square neighbourhood maximum as a row pass then a column pass: exactly equal, and
    # O(k) instead of O(k²) per pixel (3.6x faster at k = 21 on a 1024² map)
    pooled = F.max_pool2d(fg[:, None], kernel_size=(k, 1), stride=1, padding=(min_distance, 0))
    pooled = F.max_pool2d(pooled, kernel_size=(1, k), stride=1, padding=(0, min_distance))[:, 0]
    is_max = fg == pooled
    out = []
    for b in range(fg.shape[0]):
        if bool(is_max[b].all()):  # constant map: no peak
            out.append(np.zeros((0, 2), np.int64))
            continue
        cand = is_max[b] & (fg[b] > threshold)
        coords = torch.nonzero(cand).cpu().numpy()
        values = fg[b][cand].float().cpu().numpy()
        out.append(_spaced(coords, values, min_distance))
    return out


def detections_at(prob: np.ndarray, peaks: np.ndarray, classes: ClassSet) -> Points:
    """Detections at ``peaks`` (row, col) of a ``(1 + C, H, W)`` probability map."""
    if len(peaks) == 0:
        return Points.empty()
    r, c = peaks[:, 0], peaks[:, 1]
    cell_probs = prob[1:, r, c]  # (C, N)
    k = np.argmax(cell_probs, axis=0)
    ids = np.asarray(classes.ids)[k]
    conf = cell_probs[k, np.arange(len(k))]
    return Points(np.column_stack([c, r]).astype(np.float64), ids, np.clip(conf, 0.0, 1.0))


def decode_cells(prob: np.ndarray, classes: ClassSet, cfg: PeakConfig = PeakConfig(), mpp: float = 0.2) -> Points:
    """Detections (cell-frame pixels) from one ``(1 + C, H, W)`` probability map."""
    fg = 1.0 - prob[0]
    return detections_at(prob, find_peaks(fg, cfg.min_distance_px(mpp), cfg.threshold), classes)


def decode_cells_torch(prob: torch.Tensor, classes: ClassSet, cfg: PeakConfig = PeakConfig(), mpp: float = 0.2) -> list[Points]:
    """:func:`decode_cells` for a batch ``(B, 1 + C, H, W)`` on any device."""
    peaks = find_peaks_torch(1.0 - prob[:, 0], cfg.min_distance_px(mpp), cfg.threshold)
    prob_np = prob.float().cpu().numpy()
    return [detections_at(prob_np[b], p, classes) for b, p in enumerate(peaks)]
