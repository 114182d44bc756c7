"""Where the cell view sits in the tissue view, and moving maps and points between frames.

Frames
------
* **cell frame**: pixels of the cell (small-FoV, high-magnification) image,
  ``cell_size = (width, height)``.
* **tissue frame**: pixels of the stored tissue (large-FoV) image,
  ``tissue_size = (width, height)``.

Coordinates are continuous with the pixel-area convention: pixel ``i`` covers
``[i, i + 1)``, so its centre is ``i + 0.5``. Points (cell centres, detections) are
given as pixel indices ``(x, y)`` (the centre of pixel ``(x, y)``), as in the OCELOT
CSV/JSON files. This is the convention of ``torch.nn.functional.grid_sample`` with
``align_corners=False``, which implements the map operations below.

The two frame maps of the OCELOT paper (Fig. 5):

* tissue→cell (:func:`tissue_to_cell`): crop the window, resample it to the cell map size.
* cell→tissue (:func:`cell_to_tissue`): shrink the cell map to the window size and place it
  into a zero (or ``fill``) tissue map.

Both work on batched torch tensors ``(B, C, H, W)`` of any resolution (images, label maps,
feature maps at any stride), because the window is described by fractions of the tissue
extent (:meth:`Placement.fractions`), which do not change with resolution.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

Mode = Literal["bilinear", "nearest", "area"]


@dataclass(frozen=True)
class Placement:
    """The cell view's window inside the tissue image.

    Attributes
    ----------
    x0, y0, width, height:
        The window in tissue-frame pixels (continuous, may be fractional and may extend
        past the tissue image border).
    cell_size, tissue_size:
        ``(width, height)`` of the cell and tissue images in pixels.
    """

    x0: float
    y0: float
    width: float
    height: float
    cell_size: tuple[int, int]
    tissue_size: tuple[int, int]

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_centre(
        cls,
        centre_frac: tuple[float, float],
        cell_size: tuple[int, int],
        tissue_size: tuple[int, int],
        cell_mpp: float | tuple[float, float],
        tissue_mpp: float | tuple[float, float],
    ) -> Placement:
        """Window from its centre (fractions of the tissue image) and the two resolutions.

        The window spans ``cell_size * cell_mpp / tissue_mpp`` tissue pixels per side.
        """
        cmx, cmy = _pair(cell_mpp)
        tmx, tmy = _pair(tissue_mpp)
        w = cell_size[0] * cmx / tmx
        h = cell_size[1] * cmy / tmy
        cx = centre_frac[0] * tissue_size[0]
        cy = centre_frac[1] * tissue_size[1]
        return cls(cx - w / 2, cy - h / 2, w, h, tuple(cell_size), tuple(tissue_size))

    @classmethod
    def from_ocelot_metadata(
        cls, entry: Mapping, cell_size: tuple[int, int], tissue_size: tuple[int, int]
    ) -> Placement:
        """Placement from one OCELOT metadata entry.

        ``patch_x_offset``/``patch_y_offset`` are the window centre as a fraction of the
        tissue image; the window size comes from ``cell.resized_mpp_*`` and
        ``tissue.resized_mpp_*`` (the mpp of the stored images).
        """
        return cls.from_centre(
            (float(entry["patch_x_offset"]), float(entry["patch_y_offset"])),
            cell_size,
            tissue_size,
            (float(entry["cell"]["resized_mpp_x"]), float(entry["cell"]["resized_mpp_y"])),
            (float(entry["tissue"]["resized_mpp_x"]), float(entry["tissue"]["resized_mpp_y"])),
        )

    # ------------------------------------------------------------------ properties
    @property
    def centre(self) -> tuple[float, float]:
        """Window centre in tissue pixels."""
        return (self.x0 + self.width / 2, self.y0 + self.height / 2)

    @property
    def centre_frac(self) -> tuple[float, float]:
        """Window centre as a fraction of the tissue image (the metadata's offsets)."""
        cx, cy = self.centre
        return (cx / self.tissue_size[0], cy / self.tissue_size[1])

    @property
    def scale(self) -> tuple[float, float]:
        """Cell pixels per tissue pixel along x and y (4 for OCELOT)."""
        return (self.cell_size[0] / self.width, self.cell_size[1] / self.height)

    def fractions(self) -> tuple[float, float, float, float]:
        """``(x0, y0, width, height)`` of the window as fractions of the tissue image."""
        tw, th = self.tissue_size
        return (self.x0 / tw, self.y0 / th, self.width / tw, self.height / th)

    def window_int(self) -> tuple[int, int, int, int]:
        """``(x_start, y_start, x_end, y_end)``: the window rounded to whole tissue pixels."""
        return (
            int(round(self.x0)),
            int(round(self.y0)),
            int(round(self.x0 + self.width)),
            int(round(self.y0 + self.height)),
        )

    def inside_tissue(self, tol: float = 1.0) -> bool:
        """True when the window lies within the tissue image (up to ``tol`` pixels)."""
        tw, th = self.tissue_size
        return (
            self.x0 >= -tol
            and self.y0 >= -tol
            and self.x0 + self.width <= tw + tol
            and self.y0 + self.height <= th + tol
        )

    # ------------------------------------------------------------------ transforms
    def resized(self, cell_size: tuple[int, int], tissue_size: tuple[int, int]) -> Placement:
        """The same physical geometry for images resized to new pixel sizes."""
        sx = tissue_size[0] / self.tissue_size[0]
        sy = tissue_size[1] / self.tissue_size[1]
        return Placement(
            self.x0 * sx, self.y0 * sy, self.width * sx, self.height * sy,
            tuple(cell_size), tuple(tissue_size),
        )

    def flipped_lr(self) -> Placement:
        """The placement after flipping both images left-right."""
        return replace(self, x0=self.tissue_size[0] - self.x0 - self.width)

    def rot90(self, k: int = 1) -> Placement:
        """The placement after ``np.rot90(image, k)`` of both images (counter-clockwise)."""
        p = self
        for _ in range(k % 4):
            tw, th = p.tissue_size
            p = Placement(
                x0=p.y0,
                y0=tw - p.x0 - p.width,
                width=p.height,
                height=p.width,
                cell_size=(p.cell_size[1], p.cell_size[0]),
                tissue_size=(th, tw),
            )
        return p

    # ------------------------------------------------------------------ points
    def cell_to_tissue_points(self, xy: np.ndarray) -> np.ndarray:
        """Map ``(N, 2)`` cell-frame pixel positions to tissue-frame pixel positions."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        sx, sy = self.scale
        out = np.empty_like(xy)
        out[:, 0] = self.x0 + (xy[:, 0] + 0.5) / sx - 0.5
        out[:, 1] = self.y0 + (xy[:, 1] + 0.5) / sy - 0.5
        return out

    def tissue_to_cell_points(self, xy: np.ndarray) -> np.ndarray:
        """Map ``(N, 2)`` tissue-frame pixel positions to cell-frame pixel positions."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        sx, sy = self.scale
        out = np.empty_like(xy)
        out[:, 0] = (xy[:, 0] + 0.5 - self.x0) * sx - 0.5
        out[:, 1] = (xy[:, 1] + 0.5 - self.y0) * sy - 0.5
        return out

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        return {
            "x0": self.x0, "y0": self.y0, "width": self.width, "height": self.height,
            "cell_size": list(self.cell_size), "tissue_size": list(self.tissue_size),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> Placement:
        return cls(
            float(d["x0"]), float(d["y0"]), float(d["width"]), float(d["height"]),
            tuple(int(v) for v in d["cell_size"]), tuple(int(v) for v in d["tissue_size"]),
        )


def _pair(v: float | Sequence[float]) -> tuple[float, float]:
    if isinstance(v, (int, float)):
        return (float(v), float(v))
    a, b = v
    return (float(a), float(b))


# ---------------------------------------------------------------------- tensors of windows
def window_tensor(
    placements: Iterable[Placement] | torch.Tensor, device=None, dtype=torch.float32
) -> torch.Tensor:
    """``(B, 4)`` tensor of window fractions ``(x0, y0, w, h)`` for a batch.

    A tensor is passed through (moved to ``device``), so models accept either.
    """
    if isinstance(placements, torch.Tensor):
        return placements.to(device=device, dtype=dtype)
    rows = [p.fractions() for p in placements]
    return torch.tensor(rows, device=device, dtype=dtype).reshape(-1, 4)


def _theta_tissue_to_cell(win: torch.Tensor) -> torch.Tensor:
    """Affine (B, 2, 3) mapping cell-map normalised coords to tissue-map normalised coords."""
    x0, y0, w, h = win.unbind(-1)
    theta = torch.zeros(win.shape[0], 2, 3, dtype=win.dtype, device=win.device)
    theta[:, 0, 0] = w
    theta[:, 0, 2] = 2 * x0 + w - 1
    theta[:, 1, 1] = h
    theta[:, 1, 2] = 2 * y0 + h - 1
    return theta


def _theta_cell_to_tissue(win: torch.Tensor) -> torch.Tensor:
    """Affine (B, 2, 3) mapping tissue-map normalised coords to cell-map normalised coords."""
    x0, y0, w, h = win.unbind(-1)
    theta = torch.zeros(win.shape[0], 2, 3, dtype=win.dtype, device=win.device)
    theta[:, 0, 0] = 1 / w
    theta[:, 0, 2] = -(2 * x0 + w - 1) / w
    theta[:, 1, 1] = 1 / h
    theta[:, 1, 2] = -(2 * y0 + h - 1) / h
    return theta


def _sample(src: torch.Tensor, theta: torch.Tensor, size: tuple[int, int], mode: str, fill: float) -> torch.Tensor:
    """Resample ``src`` on the grid ``theta`` to ``size = (H, W)``; outside ``src`` → ``fill``.

    Integer maps (labels) are sampled as floats and rounded back to their dtype.
    """
    work = src if src.is_floating_point() else src.float()
    grid = F.affine_grid(theta.to(work.dtype), [src.shape[0], src.shape[1], size[0], size[1]], align_corners=False)
    gs_mode = "nearest" if mode == "nearest" else "bilinear"
    # Shifting by ``fill`` makes zero padding produce ``fill`` outside the source.
    out = F.grid_sample(work - fill if fill else work, grid, mode=gs_mode, padding_mode="zeros", align_corners=False)
    if fill:
        out = out + fill
    return out if src.is_floating_point() else out.round().to(src.dtype)


def tissue_to_cell(
    tissue_map: torch.Tensor,
    windows: torch.Tensor | Iterable[Placement],
    out_size: tuple[int, int],
    mode: Mode = "bilinear",
    fill: float = 0.0,
) -> torch.Tensor:
    """Crop each sample's window from ``tissue_map`` (B, C, Ht, Wt) and resample it to
    ``out_size = (H, W)`` of the cell map (Fig. 5a). Parts of the window outside the
    tissue map get ``fill``. ``mode="nearest"`` for label maps.
    """
    win = window_tensor(windows, device=tissue_map.device)
    return _sample(tissue_map, _theta_tissue_to_cell(win), out_size, mode, fill)


def cell_to_tissue(
    cell_map: torch.Tensor,
    windows: torch.Tensor | Iterable[Placement],
    out_size: tuple[int, int],
    mode: Mode = "area",
    fill: float = 0.0,
) -> torch.Tensor:
    """Shrink ``cell_map`` (B, C, Hc, Wc) to each window and place it into a tissue map of
    ``out_size = (H, W)`` filled with ``fill`` elsewhere (Fig. 5b: downsample + zero-pad).

    ``mode="area"`` averages cell pixels (anti-aliased downsampling) before placing,
    ``"bilinear"`` samples directly, ``"nearest"`` is for label maps.
    """
    win = window_tensor(windows, device=cell_map.device)
    src = cell_map
    if mode == "area":
        # Pre-shrink to about the window size in output pixels; geometry stays exact since
        # the affine map works in normalised coordinates that do not depend on map size.
        wpx = float(win[:, 2].max()) * out_size[1]
        hpx = float(win[:, 3].max()) * out_size[0]
        th, tw = max(1, math.ceil(hpx - 1e-3)), max(1, math.ceil(wpx - 1e-3))
        if th < cell_map.shape[-2] or tw < cell_map.shape[-1]:
            src = F.interpolate(cell_map.float() if not cell_map.is_floating_point() else cell_map,
                                size=(min(th, cell_map.shape[-2]), min(tw, cell_map.shape[-1])),
                                mode="area")
        mode = "bilinear"
    return _sample(src, _theta_cell_to_tissue(win), out_size, mode, fill)


# ---------------------------------------------------------------------- numpy conveniences
def _to_bchw(a: np.ndarray) -> tuple[torch.Tensor, bool]:
    arr = np.asarray(a)
    has_channels = arr.ndim == 3
    t = torch.from_numpy(np.require(arr, requirements=["C", "W"]))
    t = t.permute(2, 0, 1) if has_channels else t[None]
    return t[None], has_channels


def _from_bchw(t: torch.Tensor, has_channels: bool, dtype) -> np.ndarray:
    t = t[0]
    t = t.permute(1, 2, 0) if has_channels else t[0]
    out = t.numpy()
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        out = np.clip(np.round(out), info.min, info.max)
    return out.astype(dtype)


def tissue_to_cell_np(a: np.ndarray, placement: Placement, mode: Mode = "bilinear", fill: float = 0.0) -> np.ndarray:
    """:func:`tissue_to_cell` for one ``(H, W)`` or ``(H, W, C)`` numpy array; keeps its dtype."""
    t, ch = _to_bchw(a)
    t = t.float() if mode != "nearest" else t
    out = tissue_to_cell(t, [placement], (placement.cell_size[1], placement.cell_size[0]), mode, fill)
    return _from_bchw(out, ch, np.asarray(a).dtype)


def cell_to_tissue_np(a: np.ndarray, placement: Placement, mode: Mode = "area", fill: float = 0.0) -> np.ndarray:
    """:func:`cell_to_tissue` for one ``(H, W)`` or ``(H, W, C)`` numpy array; keeps its dtype."""
    t, ch = _to_bchw(a)
    t = t.float() if mode != "nearest" else t
    out = cell_to_tissue(t, [placement], (placement.tissue_size[1], placement.tissue_size[0]), mode, fill)
    return _from_bchw(out, ch, np.asarray(a).dtype)
