"""Input normalisation of both views of a pair (``train --normalize``), applied before
resizing and augmentation in training and in the same way by every predictor (the
checkpoint records it).

* ``"percentile"`` (first place of OCELOT 2023): per image and per RGB channel, values
  are mapped linearly so that the 1st percentile becomes 0 and the 99th 255, clipped
  (a channel whose two percentiles are equal is left as it is).
* ``"macenko"``: Macenko stain normalisation. The stain matrix and the 99th-percentile
  stain concentrations are estimated on the **tissue view** (torchstain's
  ``NumpyMacenkoNormalizer.fit``, Io = 240, α = 1, β = 0.15); both views are then
  unmixed with that matrix and rebuilt with torchstain's reference H&E matrix and
  maximum concentrations, so the two views of a pair stay consistent with each other.
  A tissue view too empty to estimate stains from (fewer than :data:`MIN_STAINED_PIXELS`
  pixels above the optical-density cut) leaves the pair unchanged.
"""

from __future__ import annotations

import numpy as np

from ..pair import Pair

NORMALIZATIONS: tuple[str, ...] = ("none", "percentile", "macenko")
MACENKO_IO = 240.0
MACENKO_BETA = 0.15
MIN_STAINED_PIXELS = 100


def percentile_scale(img: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """``(H, W, 3)`` uint8 with each channel's ``low``/``high`` percentiles stretched to 0/255."""
    x = img.astype(np.float32)
    lo = np.percentile(x, low, axis=(0, 1))
    hi = np.percentile(x, high, axis=(0, 1))
    span = hi - lo
    ok = span > 0
    out = x.copy()
    out[..., ok] = (x[..., ok] - lo[ok]) / span[ok] * 255.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class MacenkoStains:
    """The stains of one image (``fit``) and the rebuilding of any image with them."""

    def __init__(self, reference_image: np.ndarray):
        from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

        ref = NumpyMacenkoNormalizer()
        self.he_ref, self.max_c_ref = ref.HERef.copy(), ref.maxCRef.copy()
        fitted = NumpyMacenkoNormalizer()
        fitted.fit(reference_image, Io=MACENKO_IO, alpha=1, beta=MACENKO_BETA)
        self.he, self.max_c = fitted.HERef, fitted.maxCRef

    def apply(self, img: np.ndarray) -> np.ndarray:
        """``img`` unmixed with the fitted stains, rebuilt with the reference stains (uint8)."""
        h, w, _ = img.shape
        od = -np.log((img.reshape(-1, 3).astype(np.float64) + 1.0) / MACENKO_IO)
        conc = np.linalg.lstsq(self.he, od.T, rcond=None)[0]
        conc *= (self.max_c_ref / self.max_c)[:, None]
        out = MACENKO_IO * np.exp(-self.he_ref @ conc)
        return np.clip(out.T, 0, 255).reshape(h, w, 3).astype(np.uint8)


def stained_pixels(img: np.ndarray) -> int:
    """Pixels whose optical density exceeds Macenko's β in every channel."""
    od = -np.log((img.reshape(-1, 3).astype(np.float64) + 1.0) / MACENKO_IO)
    return int(np.count_nonzero(~np.any(od < MACENKO_BETA, axis=1)))


def normalize_image(img: np.ndarray, method: str) -> np.ndarray:
    """One view normalised on its own (slide tiles): ``"none"`` or ``"percentile"``.
    Macenko needs the pair's tissue view (:func:`normalize_pair`)."""
    if method == "none":
        return img
    if method == "percentile":
        return percentile_scale(img)
    raise ValueError(f"normalisation {method!r} cannot be applied to one view alone")


def normalize_pair(pair: Pair, method: str) -> Pair:
    """``pair`` with both views normalised by ``method`` (:data:`NORMALIZATIONS`)."""
    if method == "none":
        return pair
    if method == "percentile":
        return pair.replace(cell_image=percentile_scale(pair.cell_image),
                            tissue_image=percentile_scale(pair.tissue_image))
    if method == "macenko":
        if stained_pixels(pair.tissue_image) < MIN_STAINED_PIXELS:
            return pair
        try:
            stains = MacenkoStains(pair.tissue_image)
        except (np.linalg.LinAlgError, ValueError, IndexError):
            return pair
        return pair.replace(cell_image=stains.apply(pair.cell_image), tissue_image=stains.apply(pair.tissue_image))
    raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {method!r}")
