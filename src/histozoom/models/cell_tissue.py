"""The OCELOT cell–tissue model family, every variant from one config (OCELOT §4.2, §5, §6.4).

Inputs (batched, float):

* ``cell_img``   ``(B, C, Hc, Wc)``: the cell view (small FoV), cell frame.
* ``tissue_img`` ``(B, C, Ht, Wt)``: the tissue view (large FoV), tissue frame; any size
  (need not equal the cell size).
* ``windows``    ``(B, 4)`` window fractions ``(x0, y0, w, h)`` of the cell view inside the
  tissue extent, one row per sample (or a list of :class:`~histozoom.geometry.Placement`).
* ``tissue_mask`` ``(B, Ht, Wt)`` (or ``(B, 1, Ht, Wt)``) integer tissue ids, tissue frame
  (label leaking only).

Outputs (``dict``):

* ``"cell_logits"``  ``(B, n_cell_classes + 1, Hc, Wc)``: channel 0 = background, channel
  ``k`` = cell class id ``k`` (OCELOT: 1 = BC, 2 = TC). With ``cell_output="heatmap"``
  (Gaussian targets) ``(B, n_cell_classes, Hc, Wc)`` heatmap logits, channel ``k - 1`` =
  class id ``k``; :func:`cell_probability_map` turns either into the ``(1 + C)``
  probability map that decoding reads.
* ``"tissue_logits"`` ``(B, n_tissue_classes, Ht, Wt)`` when the model has a tissue branch:
  channel ``k`` = tissue class id ``k + 1`` (OCELOT: channel 0 = BG (1), channel 1 = CA (2));
  there is no channel for the ignore label 255 (unknown).

How the branches meet (all alignment through :mod:`histozoom.geometry`):

* tissue→cell: :func:`~histozoom.geometry.tissue_to_cell` — crop the window, resample to the
  cell map's size at that boundary (bilinear; nearest for label maps). Fig. 5a.
* cell→tissue: :func:`~histozoom.geometry.cell_to_tissue` — shrink into the window, zero
  elsewhere ("area"). Fig. 5b.

Variants (``CellTissueConfig`` fields; names in :mod:`histozoom.models.registry`):

* cell-only: ``tissue_branch=False``.
* tissue-label leaking (Fig. 3): ``leak_tissue_labels=True`` — the one-hot tissue mask
  (:func:`tissue_one_hot`) cropped to the window (nearest) is concatenated to the cell input.
* pred-to-{input, inter-1, inter-2, output} (Fig. 4): ``inject`` = "input" / "encoder" /
  "aspp" / "decoder" — the tissue branch's softmax, aligned to the cell map at that
  boundary, is concatenated there. The tissue branch runs first; gradients flow from the
  cell loss into it (end-to-end training).
* feature sharing (Fig. 5–6): ``sharing = (at encoder, at aspp, at decoder)``, each one of
  ``SHARE_MODES``; an exchange is a 3×3 conv + BN + ReLU on the source branch's raw map at
  that boundary, aligned into the other branch's frame and concatenated there. Both
  branches then run in lockstep.
* dataset ablation (Table 7): ``tissue_input="cell"`` — the tissue branch reads the cell
  view and the window is the full extent ``(0, 0, 1, 1)`` ("tissue labels without large
  FoV"; the tissue target is then the mask cropped to the cell view).
  ``tissue_supervised=False`` tells the trainer to drop the tissue loss ("large FoV
  without tissue labels"); the model itself is unchanged.

Concatenation order at a boundary: ``[raw, leaked labels, injected probabilities,
shared features]`` (only those present).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..config_fields import (
    MAX_CHANNELS,
    MAX_CLASSES,
    MAX_IN_CHANNELS,
    DictConfig,
    bool_problem,
    encoder_problem,
    int_problem,
    ints_problem,
    prob_problem,
    str_problem,
)
from ..errors import ConfigError
from ..geometry import Placement, cell_to_tissue, tissue_to_cell, window_tensor
from .branch import POSITIONS, DeepLabBranch, StagedRun
from .unet import UNetBranch

SHARE_MODES: tuple[str, ...] = ("none", "t2c", "c2t", "both")
"""Exchange at one boundary: none, tissue→cell, cell→tissue, or both directions."""

CELL_OUTPUTS: tuple[str, ...] = ("softmax", "heatmap", "probabilities")
"""What ``cell_logits`` holds, by a model's ``cell_output``: softmax logits over background +
classes; per-class heatmap logits (sigmoid); or already the ``(1 + C)`` probability map
(ensembles, :class:`~histozoom.inference.ensemble.EnsembleNet`)."""


def cell_probability_map(logits: torch.Tensor, cell_output: str = "softmax") -> torch.Tensor:
    """``(B, 1 + C, H, W)`` float32 cell map of a model's ``cell_logits``: for "softmax" its
    softmax; for "heatmap" channel ``1 + k`` = ``sigmoid(logits[:, k])`` and channel 0 = one
    minus their maximum (so decoding's foreground ``1 - p_0`` is the strongest heatmap);
    "probabilities" as given."""
    logits = logits.float()
    if cell_output == "softmax":
        return logits.softmax(dim=1)
    if cell_output == "heatmap":
        heat = logits.sigmoid()
        return torch.cat([1.0 - heat.amax(dim=1, keepdim=True), heat], dim=1)
    if cell_output == "probabilities":
        return logits
    raise ValueError(f"cell_output must be one of {CELL_OUTPUTS}, got {cell_output!r}")


SHARE_POSITIONS: tuple[str, ...] = ("encoder", "aspp", "decoder")
"""The three boundaries where feature sharing may happen (order of ``sharing``)."""

ARCHITECTURES = {"deeplabv3plus": DeepLabBranch, "unet": UNetBranch}


def all_sharing_configs() -> list[tuple[str, str, str]]:
    """The 4³ = 64 ``sharing`` triples of the paper's search (§5.3), in a fixed order."""
    return list(itertools.product(SHARE_MODES, repeat=len(SHARE_POSITIONS)))


def tissue_index(mask: torch.Tensor, n_classes: int, ignore_index: int = -100) -> torch.Tensor:
    """Channel index ``(B, H, W)`` (int64) of ``tissue_logits`` for a tissue-id mask
    ``(B, H, W)`` or ``(B, 1, H, W)``: id ``k + 1`` → ``k``; any other value (0, 255 =
    unknown) → ``ignore_index``. The one place that maps tissue ids to output channels.
    """
    if mask.dim() == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.dim() != 3:
        raise ValueError(f"tissue_mask must be (B, H, W) or (B, 1, H, W), got {tuple(mask.shape)}")
    idx = mask.long() - 1
    return idx.masked_fill((idx < 0) | (idx >= n_classes), ignore_index)


def tissue_one_hot(mask: torch.Tensor, n_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One-hot ``(B, n_classes, H, W)`` of a tissue-id mask (see :func:`tissue_index`):
    channel ``k`` is 1 where the id is ``k + 1``; unknown (255) and other values give all zeros.
    """
    idx = tissue_index(mask, n_classes, ignore_index=-1)
    ids = torch.arange(n_classes, device=mask.device).view(1, -1, 1, 1)
    return (idx.unsqueeze(1) == ids).to(dtype)


@dataclass(frozen=True)
class CellTissueConfig(DictConfig):
    """Everything that defines a cell–tissue model; saved as JSON next to its weights.

    Attributes
    ----------
    name: registry key of the variant this config came from (informational).
    n_cell_classes, n_tissue_classes: class counts (cell output has one more: background).
    in_channels: image channels of both views (3 = RGB).
    architecture: "deeplabv3plus" (paper) or "unet" (supplement C.1; only "input" injection).
    encoder_name: smp encoder name ("resnet34" in the paper).
    encoder_weights: ``None`` (random init) or a local ImageNet state-dict file for both
        branches' encoders; never downloaded.
    decoder_channels, atrous_rates, aspp_dropout: DeepLabV3+ width, ASPP rates, dropout
        in ASPP's projection (smp defaults). U-Net uses smp's default decoder.
    cell_dropout, tissue_dropout: ``Dropout2d`` probability after every ResNet block of
        each branch (supplement B: tissue 0.1; cell searched over 0.1/0.3/0.5).
    tissue_branch: whether the model has a tissue segmentation branch.
    leak_tissue_labels: concatenate the ground-truth tissue one-hot to the cell input.
    inject: ``None`` or the position ("input", "encoder", "aspp", "decoder") where the
        tissue softmax enters the cell branch.
    sharing: ``SHARE_MODES`` entry at ("encoder", "aspp", "decoder").
    share_channels: output channels of each exchange conv; ``None`` = the source map's.
    tissue_input: "tissue" (the large-FoV view) or "cell" (Table 7 ablation: the tissue
        branch reads the cell view; windows are the full extent).
    tissue_supervised: ``False`` = train without the tissue loss (Table 7 ablation); read
        by the trainer, the model does not use it.
    cell_output: "softmax" (background + classes, disk targets) or "heatmap" (one channel
        per class, Gaussian targets); see :func:`cell_probability_map`.
    """

    name: str = "cell-only"
    n_cell_classes: int = 2
    n_tissue_classes: int = 2
    in_channels: int = 3
    architecture: str = "deeplabv3plus"
    encoder_name: str = "resnet34"
    encoder_weights: str | None = None
    decoder_channels: int = 256
    atrous_rates: tuple[int, int, int] = (12, 24, 36)
    aspp_dropout: float = 0.5
    cell_dropout: float = 0.1
    tissue_dropout: float = 0.1
    tissue_branch: bool = False
    leak_tissue_labels: bool = False
    inject: str | None = None
    sharing: tuple[str, str, str] = ("none", "none", "none")
    share_channels: int | None = None
    tissue_input: str = "tissue"
    tissue_supervised: bool = True
    cell_output: str = "softmax"

    def __post_init__(self):
        # lists (JSON) become tuples; anything else is left for _problems to name
        for f in ("atrous_rates", "sharing"):
            if isinstance(getattr(self, f), list):
                object.__setattr__(self, f, tuple(getattr(self, f)))
        if isinstance(self.encoder_weights, os.PathLike):
            object.__setattr__(self, "encoder_weights", str(self.encoder_weights))
        problems = [p for p in self._field_problems() if p]
        if not problems:  # the combination checks assume well-typed fields
            problems = list(self._problems())
        if problems:
            raise ConfigError(f"CellTissueConfig {self.name!r}: " + "; ".join(problems))

    def _field_problems(self) -> Iterable[str | None]:
        """Each field's type and range, checked before anything is built (a checkpoint's
        ``config.json`` and ``--model-arg`` values are data). Bounds: :mod:`histozoom.config_fields`."""
        yield str_problem("name", self.name)
        yield str_problem("architecture", self.architecture)
        for f in ("n_cell_classes", "n_tissue_classes"):
            yield int_problem(f, getattr(self, f), 1, MAX_CLASSES)
        yield int_problem("in_channels", self.in_channels, 1, MAX_IN_CHANNELS)
        yield encoder_problem("encoder_name", self.encoder_name)
        yield str_problem("encoder_weights", self.encoder_weights, optional=True)
        yield int_problem("decoder_channels", self.decoder_channels, 1, MAX_CHANNELS)
        yield ints_problem("atrous_rates", self.atrous_rates, 1, 256, lengths=(3,))
        for f in ("aspp_dropout", "cell_dropout", "tissue_dropout"):
            yield prob_problem(f, getattr(self, f))
        for f in ("tissue_branch", "leak_tissue_labels", "tissue_supervised"):
            yield bool_problem(f, getattr(self, f))
        yield str_problem("inject", self.inject, optional=True)
        if not isinstance(self.sharing, tuple) or not all(isinstance(s, str) for s in self.sharing):
            yield f"sharing must be a list of {len(SHARE_POSITIONS)} strings from {SHARE_MODES}, got {self.sharing!r}"
        yield int_problem("share_channels", self.share_channels, 1, MAX_CHANNELS, optional=True)
        yield str_problem("tissue_input", self.tissue_input)
        yield str_problem("cell_output", self.cell_output)

    def _problems(self) -> Iterable[str]:
        if self.architecture not in ARCHITECTURES:
            yield f"architecture must be one of {tuple(ARCHITECTURES)}, got {self.architecture!r}"
        if self.inject is not None and self.inject not in POSITIONS:
            yield f"inject must be None or one of {POSITIONS}, got {self.inject!r}"
        if len(self.sharing) != len(SHARE_POSITIONS) or any(s not in SHARE_MODES for s in self.sharing):
            yield f"sharing must be {len(SHARE_POSITIONS)} entries from {SHARE_MODES}, got {self.sharing!r}"
        if (self.inject is not None or any(s != "none" for s in self.sharing)) and not self.tissue_branch:
            yield "inject/sharing need tissue_branch=True"
        if self.inject is not None and self.c2t_positions:
            yield "inject needs the whole tissue prediction before the cell branch runs, so no c2t sharing"
        if self.architecture == "unet" and (self.inject not in (None, "input") or any(s != "none" for s in self.sharing)):
            yield "the U-Net branch takes extra channels at 'input' only (no inter/output injection, no sharing)"
        if self.cell_output not in ("softmax", "heatmap"):
            yield f"cell_output must be 'softmax' or 'heatmap', got {self.cell_output!r}"
        if self.tissue_input not in ("tissue", "cell"):
            yield f"tissue_input must be 'tissue' or 'cell', got {self.tissue_input!r}"
        if self.tissue_input == "cell" and not (self.tissue_branch or self.leak_tissue_labels):
            yield "tissue_input='cell' needs a tissue branch or label leaking"

    # ------------------------------------------------------------------ derived
    @property
    def t2c_positions(self) -> tuple[str, ...]:
        """Boundaries with a tissue→cell exchange."""
        return tuple(p for p, s in zip(SHARE_POSITIONS, self.sharing) if s in ("t2c", "both"))

    @property
    def c2t_positions(self) -> tuple[str, ...]:
        """Boundaries with a cell→tissue exchange."""
        return tuple(p for p, s in zip(SHARE_POSITIONS, self.sharing) if s in ("c2t", "both"))

    @property
    def reads_tissue_view(self) -> bool:
        """Whether the model runs a branch on the tissue view (a tissue branch reading the
        large-FoV image; label leaking uses only the tissue *mask*)."""
        return self.tissue_branch and self.tissue_input == "tissue"

    @property
    def cell_size_multiple(self) -> int:
        """Cell-view height and width must be multiples of this, without building the
        model: the ``size_multiple`` of the branch class of ``architecture`` (both branches
        are of it). Equals the built model's property of the same name."""
        return ARCHITECTURES[self.architecture].size_multiple

    @property
    def tissue_size_multiple(self) -> int:
        """Tissue-view height and width must be multiples of this: the tissue branch's
        ``size_multiple``; 1 when no branch reads the tissue view."""
        return ARCHITECTURES[self.architecture].size_multiple if self.reads_tissue_view else 1

    @property
    def size_multiple(self) -> int:
        """A size for *both* views (``TrainConfig.size``, ``Predictor(size=...)``) must be a
        multiple of this: the least common multiple of the two views' multiples."""
        return math.lcm(self.cell_size_multiple, self.tissue_size_multiple)

    def build(self, pretrained: bool = True) -> CellTissueModel:
        """The model. ``pretrained=False`` skips loading ``encoder_weights`` (used when a
        checkpoint supplies all weights)."""
        return CellTissueModel(self, load_encoder_weights=pretrained)


def _exchange_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """The 'shallow convolutional layer with 3×3 kernel' of Fig. 5 (+ BN + ReLU)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class CellTissueModel(nn.Module):
    """Cell branch, optional tissue branch and the links between them, as ``config`` says.

    Submodules: ``cell`` and ``tissue`` (branches with ``encoder``/``aspp``/``decoder``/
    ``head``; ``tissue`` is ``None`` without a tissue branch), ``t2c`` and ``c2t``
    (``nn.ModuleDict`` position → exchange conv). See the module docstring for I/O.

    Input constraints (asked by trainers, predictors and the CLI; taken from the branches'
    ``size_multiple``): ``cell_size_multiple`` and ``tissue_size_multiple`` for each view,
    ``size_multiple`` for one size shared by both views.
    """

    def __init__(self, config: CellTissueConfig, load_encoder_weights: bool = True):
        super().__init__()
        self.config = cfg = config
        nt = cfg.n_tissue_classes
        cell_extra = {pos: 0 for pos in POSITIONS}
        tissue_extra = {pos: 0 for pos in POSITIONS}
        cell_extra["input"] += nt if cfg.leak_tissue_labels else 0
        if cfg.inject is not None:
            cell_extra[cfg.inject] += nt
        self.t2c = nn.ModuleDict()
        self.c2t = nn.ModuleDict()
        if cfg.t2c_positions or cfg.c2t_positions:
            raw = DeepLabBranch.boundary_channels(cfg.in_channels, cfg.encoder_name, cfg.decoder_channels)
            for links, extra, positions in ((self.t2c, cell_extra, cfg.t2c_positions),
                                            (self.c2t, tissue_extra, cfg.c2t_positions)):
                for pos in positions:
                    out = cfg.share_channels or raw[pos]
                    links[pos] = _exchange_conv(raw[pos], out)
                    extra[pos] += out
        self.cell_output = cfg.cell_output
        cell_channels = cfg.n_cell_classes + (1 if cfg.cell_output == "softmax" else 0)
        self.cell = self._branch(cell_channels, cell_extra, cfg.cell_dropout, load_encoder_weights)
        self.tissue = (self._branch(nt, tissue_extra, cfg.tissue_dropout, load_encoder_weights)
                       if cfg.tissue_branch else None)
        # Without cell→tissue links the tissue branch needs nothing from the cell branch, so
        # it runs first (its prediction is then available at every cell boundary).
        self.tissue_first = not cfg.c2t_positions

    def _branch(self, classes: int, extra: dict[str, int], dropout: float, load: bool) -> nn.Module:
        cfg = self.config
        common = dict(classes=classes, in_channels=cfg.in_channels, extra_channels=extra,
                      encoder_name=cfg.encoder_name, encoder_weights=cfg.encoder_weights if load else None,
                      dropout=dropout)
        if cfg.architecture == "unet":
            return UNetBranch(**common)
        return DeepLabBranch(**common, decoder_channels=cfg.decoder_channels,
                             atrous_rates=cfg.atrous_rates, aspp_dropout=cfg.aspp_dropout)

    # ------------------------------------------------------------------ input constraints
    @property
    def cell_size_multiple(self) -> int:
        """Cell-view height and width must be multiples of this (the cell branch's
        ``size_multiple``; with ``tissue_input="cell"`` also the tissue branch's)."""
        m = self.cell.size_multiple
        if self.tissue is not None and self.config.tissue_input == "cell":
            m = math.lcm(m, self.tissue.size_multiple)
        return m

    @property
    def tissue_size_multiple(self) -> int:
        """Tissue-view height and width must be multiples of this (the tissue branch's
        ``size_multiple``; 1 when no branch reads the tissue view)."""
        if self.tissue is None or self.config.tissue_input == "cell":
            return 1
        return self.tissue.size_multiple

    @property
    def size_multiple(self) -> int:
        """One size for both views must be a multiple of this (lcm of the two views')."""
        return math.lcm(self.cell_size_multiple, self.tissue_size_multiple)

    # ------------------------------------------------------------------ input checks
    def _check_image(self, x: torch.Tensor | None, label: str, branch: nn.Module) -> None:
        if x is None:
            raise ValueError(f"{self.config.name}: {label} is required")
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"{label} must be (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        m = branch.size_multiple
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"{self.config.name}: {label} height and width must be multiples of {m}, "
                             f"got {tuple(x.shape[-2:])}")

    def _windows(self, windows, batch: int, device) -> torch.Tensor:
        if self.config.tissue_input == "cell":
            return torch.tensor([[0.0, 0.0, 1.0, 1.0]], device=device).expand(batch, 4)
        if windows is None:
            raise ValueError(f"{self.config.name}: windows (B, 4) are required")
        win = window_tensor(windows, device=device)
        if win.shape != (batch, 4):
            raise ValueError(f"windows must be ({batch}, 4), got {tuple(win.shape)}")
        if bool((win[:, 2:] <= 0).any()):
            raise ValueError("window width and height must be > 0")
        return win

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        cell_img: torch.Tensor,
        tissue_img: torch.Tensor | None = None,
        windows: torch.Tensor | Iterable[Placement] | None = None,
        tissue_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``{"cell_logits", "tissue_logits"?}`` (see the module docstring for shapes).

        With ``tissue_input="cell"`` the tissue branch reads ``cell_img``; ``tissue_img``
        and ``windows`` are ignored. ``tissue_mask`` is used by label leaking only.
        """
        cfg = self.config
        self._check_image(cell_img, "cell_img", self.cell)
        batch = cell_img.shape[0]
        win = None
        if self.tissue is not None or cfg.leak_tissue_labels:
            win = self._windows(windows, batch, cell_img.device)
        if self.tissue is not None:
            if cfg.tissue_input == "cell":
                tissue_img = cell_img
            self._check_image(tissue_img, "tissue_img", self.tissue)
            if tissue_img.shape[0] != batch:
                raise ValueError(f"tissue_img batch {tissue_img.shape[0]} != cell_img batch {batch}")
        leak = None
        if cfg.leak_tissue_labels:
            if tissue_mask is None:
                raise ValueError(f"{cfg.name}: tissue_mask is required (label leaking)")
            leak = tissue_one_hot(tissue_mask.to(cell_img.device), cfg.n_tissue_classes, cell_img.dtype)

        cell = StagedRun(self.cell, cell_img)
        tissue = StagedRun(self.tissue, tissue_img) if self.tissue is not None else None
        t_raw: dict[str, torch.Tensor] = {}
        tissue_logits = probs = None
        if tissue is not None and self.tissue_first:
            for pos in POSITIONS:
                t_raw[pos] = tissue.advance()
            tissue_logits = tissue.finish()
            probs = tissue_logits.softmax(dim=1)
        if tissue is None or self.tissue_first:
            out = {"cell_logits": self._run_cell(cell, t_raw, probs, leak, win)}
            if tissue is not None:
                out["tissue_logits"] = tissue_logits
            return out
        for pos in POSITIONS:  # lockstep: features go both ways
            c_raw = cell.advance()
            t_raw[pos] = tissue.advance()
            cell.concat(self._into_cell(pos, c_raw.shape[-2:], t_raw, probs, leak, win))
            tissue.concat(self._into_tissue(pos, c_raw, t_raw[pos].shape[-2:], win))
        return {"cell_logits": cell.finish(), "tissue_logits": tissue.finish()}

    def _run_cell(self, cell: StagedRun, t_raw, probs, leak, win) -> torch.Tensor:
        for pos in POSITIONS:
            c_raw = cell.advance()
            cell.concat(self._into_cell(pos, c_raw.shape[-2:], t_raw, probs, leak, win))
        return cell.finish()

    # ------------------------------------------------------------------ the two branches apart (slides)
    @property
    def tissue_standalone(self) -> bool:
        """Whether the tissue branch predicts from the tissue view alone (no cell→tissue
        links, no ground-truth labels), so :meth:`tissue_probabilities` gives what the model
        was trained to predict, on any tissue tile of a slide."""
        cfg = self.config
        return (self.tissue is not None and self.tissue_first and not cfg.leak_tissue_labels
                and cfg.tissue_input == "tissue")

    @property
    def tissue_prediction_only(self) -> bool:
        """Whether the cell branch receives nothing from the tissue branch but its softmax
        (the pred-to-* variants): then the tissue branch can run once over a whole slide
        (:meth:`tissue_probabilities`) and each cell tile take its window of that map
        (:meth:`cell_logits_given_tissue`)."""
        return self.tissue_standalone and not self.t2c and self.config.inject is not None

    def tissue_probabilities(self, tissue_img: torch.Tensor) -> torch.Tensor:
        """``(B, n_tissue_classes, Ht, Wt)`` softmax of the tissue branch (tissue frame)."""
        if self.tissue is None:
            raise ValueError(f"{self.config.name} has no tissue branch")
        self._check_image(tissue_img, "tissue_img", self.tissue)
        return self.tissue(tissue_img).softmax(dim=1)

    def cell_logits_given_tissue(self, cell_img: torch.Tensor, tissue_probs: torch.Tensor,
                                 windows: torch.Tensor | Iterable[Placement]) -> torch.Tensor:
        """Cell logits with the tissue branch's softmax ``tissue_probs`` (any frame that
        ``windows`` locates the cell view in) injected as in :meth:`forward`; equal to
        ``forward(...)["cell_logits"]`` when ``tissue_probs`` is that forward's tissue
        softmax. Only for :attr:`tissue_prediction_only` models."""
        if not self.tissue_prediction_only:
            raise ValueError(f"{self.config.name}: the cell branch needs more than the tissue prediction")
        self._check_image(cell_img, "cell_img", self.cell)
        win = self._windows(windows, cell_img.shape[0], cell_img.device)
        return self._run_cell(StagedRun(self.cell, cell_img), {}, tissue_probs, None, win)

    def _into_cell(self, pos, size, t_raw, probs, leak, win) -> list[torch.Tensor]:
        """Tissue-frame maps aligned to the cell map of ``size`` at boundary ``pos``."""
        maps = []
        if pos == "input" and leak is not None:
            maps.append(tissue_to_cell(leak, win, tuple(size), mode="nearest"))
        if pos == self.config.inject:
            maps.append(tissue_to_cell(probs, win, tuple(size), mode="bilinear"))
        if pos in self.t2c:
            maps.append(tissue_to_cell(self.t2c[pos](t_raw[pos]), win, tuple(size), mode="bilinear"))
        return maps

    def _into_tissue(self, pos, c_raw, size, win) -> list[torch.Tensor]:
        """Cell-frame maps placed into the tissue map of ``size`` at boundary ``pos``."""
        if pos not in self.c2t:
            return []
        return [cell_to_tissue(self.c2t[pos](c_raw), win, tuple(size), mode="area")]
