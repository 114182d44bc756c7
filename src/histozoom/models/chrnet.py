"""CHR-Net (Gao et al., MICCAI 2021): nuclei instance segmentation and ccRCC grading.

One config (:class:`ChrNetConfig`) builds every variant of the paper's Table 1–2; the
registry names are in :mod:`histozoom.models.registry` (``chrnet``, ``chrnet-shr``,
``chrnet-mhr``, ``chrnet-mhr-udist``, ``chrnet-mhr-wdist``, ``unet-nuclei``).

Input and outputs
-----------------
``model(image)`` with ``image`` ``(B, in_channels, H, W)`` float, ``H`` and ``W``
multiples of ``model.size_multiple`` (= ``config.size_multiple``, 32: the encoder's total
stride; ``ValueError`` otherwise). It returns a ``dict``; every map is at ``H × W``:

* ``"class_logits"`` ``(B, n_classes + 1, H, W)``: channel 0 = background, channel ``k``
  = nucleus class id ``k`` (ccRCC: 1 = G1, 2 = G2, 3 = G3, 4 = endothelial). Always.
* ``"task_logits"``: a list with one ``(B, len(groups) + 1, H, W)`` tensor per
  cross-category task (``task_groups``; channel 0 = background, channel ``g + 1`` =
  merged class ``groups[g]``) when ``classification == "two-task"``; ``[]`` otherwise.
* ``"binary_logits"`` ``(B, 1, H, W)``: nucleus-vs-background logit (W-Net stage 1),
  when ``segmentation == "wnet"``.
* ``"distance"`` ``(B, 1, H, W)`` in ``[0, 1]`` (a sigmoid): the DIST distance map
  (:func:`histozoom.data.nuclei.targets.distance_map`), when ``segmentation`` is
  ``"udist"`` or ``"wnet"``.

Architecture (§2; choices where the paper is silent are marked *ours*)
--------------------------------------------------------------------------
* **Backbone encoder** (:class:`GCResNetEncoder`): an smp ResNet (ResNet-34 in the paper;
  :func:`~histozoom.models.branch.build_encoder`, output stride 32, optional local
  ImageNet weights and ``Dropout2d`` after every block) returning
  ``[x, s2, s4, s8, s16, s32]`` (strides 1, 2, 4, 8, 16, 32; ResNet-34 channels
  3, 64, 64, 128, 256, 512). With ``global_context`` a GCNet block
  (:class:`GlobalContextBlock`, Cao et al. 2019) follows *each encoder stage*
  ``layer1..layer4`` (*ours*: per stage, not per residual block; the stage output with
  the block applied is both the feature map and the next stage's input). The block's
  last conv starts at zero, so it starts as the identity and pretrained weights keep
  their meaning.
* **Segmentation branch**: an smp ``UnetDecoder`` (``decoder_channels``) on the encoder
  with a 3×3 head. ``"udist"``: the head regresses the distance map directly (sigmoid).
  ``"wnet"``: the head gives the binary logit; the lightweight U-Net (:class:`LUNet`,
  ``lunet_channels``, its own encoder–decoder with skip connections) takes
  ``sigmoid(binary_logits)`` and regresses the distance map. Not detached: ``L_dist``
  also trains the binary decoder and the encoder.
* **HRFE** (:class:`HRFE`, one per task; HRNet-style): ``len(hrfe_channels)`` parallel
  streams; stream ``j`` has ``hrfe_channels[j]`` channels at stride ``2**(j+1)`` of the
  input (default 32 @ 1/2, 64 @ 1/4, 128 @ 1/8). Each of ``hrfe_stages`` stages runs
  ``hrfe_blocks`` res-blocks (torchvision ``BasicBlock``: two 3×3 convs + shortcut, as
  in the backbone) per stream, then an exchange unit: stream ``i`` receives the sum of
  all streams, lower-resolution ones by 1×1 conv + BN + bilinear upsampling,
  higher-resolution ones by a chain of stride-2 3×3 conv + BN (ReLU between), then ReLU.
  Output: all streams upsampled to stream 0, concatenated, 1×1 conv + BN + ReLU,
  ``Dropout2d(head_dropout)``, 1×1 conv → logits at 1/2, bilinear upsampling to ``H × W``.
* **Composite connections** (CBNet, accelerated version): stream ``j`` (stride
  ``2**(j+1)``) takes encoder feature ``features[j + 2]`` (stride ``2**(j+2)``, the
  adjacent higher level: s4 → stream 1/2, s8 → stream 1/4, s16 → stream 1/8) through a
  1×1 conv + BN and ×2 bilinear upsampling (*ours*: conv before upsampling, cheaper and
  equal in eval mode). Each HRFE has its own connections; they form the streams' inputs
  (once, before the first stage; *ours*).
* **Auxiliary input**: each HRFE sees the image at its task's magnification: the image
  area-downsampled by ``task_aux_scales[t]`` per side (task 1, G1+G2 merged: 4 → the
  100x view, 1/16 of the pixels as in §2.2; task 2: 1 → the 400x image itself). A stem
  (3×3 conv + BN + ReLU, twice; the first conv has stride 2 when the auxiliary image is
  finer than stream 0) maps it to ``hrfe_channels[0]`` channels, bilinearly resized to
  stream 0's size, and added to stream 0's composite input (then ReLU). The single-HRFE
  variant (SHR) uses the image itself (scale 1; *ours*).
* **Head fusion** (two-task): the softmax probability maps of both tasks (at ``H × W``)
  are concatenated and a 1×1 conv gives ``class_logits``. *Ours*: it starts as the
  consistency rule ``score(k) = p1(group of k in task 1) + p2(group of k in task 2)``
  (ones at those weights, zeros elsewhere, zero bias). SHR: the HRFE predicts
  ``class_logits`` directly.
* **U-Net baseline** (``architecture="unet"``, Table 1): smp U-Net on the same encoder
  family with ``n_classes + 1`` outputs; only ``class_logits`` (and ``task_logits = []``).

Loss (:class:`ChrNetLoss`, Eq. 1): ``λ_bc·BCE(binary) + λ_dist·L1(distance) +
λ_mc1·CE(task 1) + λ_mc2·CE(task 2) + λ_mcf·CE(classes)``, λ = (1, 2, 1, 1, 1).
Task targets come from the class map through ``task_groups``
(:func:`targets_for_config`, :func:`merge_task_targets`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from segmentation_models_pytorch.base import SegmentationHead
from segmentation_models_pytorch.base import initialization as smp_init
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
from torchvision.models.resnet import BasicBlock

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
from .branch import build_encoder, encoder_size_multiple

__all__ = [
    "ARCHITECTURES",
    "CLASSIFICATIONS",
    "SEGMENTATIONS",
    "CCRCC_TASK_GROUPS",
    "LOSS_TERMS",
    "DEFAULT_LOSS_WEIGHTS",
    "ChrNetConfig",
    "ChrNet",
    "ChrNetLoss",
    "GCResNetEncoder",
    "GlobalContextBlock",
    "HRFE",
    "LUNet",
    "task_groups_from_scheme",
    "merge_task_targets",
    "targets_for_config",
]

ARCHITECTURES: tuple[str, ...] = ("chrnet", "unet")
CLASSIFICATIONS: tuple[str, ...] = ("single", "two-task")
SEGMENTATIONS: tuple[str, ...] = ("none", "udist", "wnet")
AUX_SCALES: tuple[int, ...] = (1, 2, 4, 8, 16)
ENCODER_OUTPUT_STRIDE = 32
"""Every variant's encoder runs undilated (the U-Net decoders need all five stages)."""

CCRCC_TASK_GROUPS: tuple[tuple[tuple[int, ...], ...], ...] = (((1, 2), (3,), (4,)), ((1,), (2, 3), (4,)))
"""The ccRCC cross-category tasks: task 1 merges G1+G2, task 2 merges G2+G3
(as :data:`histozoom.data.nuclei.records.CCRCC`'s merges)."""

TaskGroups = tuple[tuple[tuple[int, ...], ...], ...]


def task_groups_from_scheme(scheme: Any, merges: Sequence[str] | None = None) -> TaskGroups:
    """``task_groups`` from a :class:`~histozoom.data.nuclei.records.NucleiClassScheme`:
    the groups of its merges named ``merges`` (default: all of them, in order)."""
    chosen = scheme.merges if merges is None else tuple(scheme.merge(m) for m in merges)
    return tuple(tuple(tuple(g) for g in m.groups) for m in chosen)


# ====================================================================== config
@dataclass(frozen=True)
class ChrNetConfig(DictConfig):
    """Everything that defines a CHR-Net variant; saved as JSON next to its weights.

    Attributes
    ----------
    name: registry key of the variant (informational).
    architecture: "chrnet" or "unet" (the 5-class U-Net baseline of Table 1; needs
        ``classification="single"`` and ``segmentation="none"``).
    n_classes: nucleus classes, ids ``1..n_classes`` (class outputs have one more channel,
        0 = background).
    in_channels: image channels (3 = RGB).
    classification: "single" (SHR: one HRFE predicts the class map) or "two-task" (MHR:
        one HRFE per cross-category task + head fusion).
    segmentation: "none", "udist" (U-Net regresses the distance map from the image) or
        "wnet" (binary map, then LU-Net → distance map).
    task_groups: the two cross-category tasks; ``task_groups[t][g]`` lists the class ids
        merged into task ``t``'s class ``g + 1``. Each task covers ``1..n_classes`` exactly
        once. Checked (and used) only with ``classification="two-task"``.
    task_aux_scales: per task, how much the auxiliary image is downsampled per side
        (4 = the 100x view of a 400x image, 1 = the image itself); one of 1, 2, 4, 8, 16.
    encoder_name: smp ResNet encoder name ("resnet34" in the paper). Without
        ``global_context`` any smp encoder of depth 5 works.
    encoder_weights: ``None`` (random init) or a local state-dict file; never downloaded.
    encoder_dropout: ``Dropout2d`` probability after every encoder block.
    global_context: a GCNet block after each encoder stage (layer1..layer4).
    gc_reduction: GCNet bottleneck ratio (channels // gc_reduction, at least 1).
    decoder_channels: the 5 U-Net decoder widths (segmentation branch; U-Net baseline).
    lunet_channels: LU-Net widths per level (level ``i`` at stride ``2**i``).
    hrfe_channels: HRFE stream widths (stream ``j`` at stride ``2**(j+1)``; at most 4).
    hrfe_blocks: res-blocks per stream per stage. hrfe_stages: stages (each ends with an
        exchange unit).
    head_dropout: ``Dropout2d`` before each HRFE's classifier conv.
    """

    name: str = "chrnet"
    architecture: str = "chrnet"
    n_classes: int = 4
    in_channels: int = 3
    classification: str = "two-task"
    segmentation: str = "wnet"
    task_groups: TaskGroups = CCRCC_TASK_GROUPS
    task_aux_scales: tuple[int, int] = (4, 1)
    encoder_name: str = "resnet34"
    encoder_weights: str | None = None
    encoder_dropout: float = 0.0
    global_context: bool = True
    gc_reduction: int = 16
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    lunet_channels: tuple[int, ...] = (16, 32, 64)
    hrfe_channels: tuple[int, ...] = (32, 64, 128)
    hrfe_blocks: int = 2
    hrfe_stages: int = 2
    head_dropout: float = 0.0

    def __post_init__(self):
        try:
            object.__setattr__(self, "task_groups", tuple(tuple(tuple(int(c) for c in g) for g in t)
                                                         for t in self.task_groups))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"ChrNetConfig {self.name!r}: task_groups must be nested sequences of ints ({err})") from None
        for f in ("task_aux_scales", "decoder_channels", "lunet_channels", "hrfe_channels"):
            if isinstance(getattr(self, f), list):  # JSON; anything else is left for _field_problems to name
                object.__setattr__(self, f, tuple(getattr(self, f)))
        if isinstance(self.encoder_weights, os.PathLike):
            object.__setattr__(self, "encoder_weights", str(self.encoder_weights))
        problems = [p for p in self._field_problems() if p]
        if not problems:  # the combination checks assume well-typed fields
            problems = list(self._problems())
        if problems:
            raise ConfigError(f"ChrNetConfig {self.name!r}: " + "; ".join(problems))

    def _field_problems(self) -> Iterable[str | None]:
        """Each field's type and range, checked before anything is built (a checkpoint's
        ``config.json`` and ``--model-arg`` values are data). Bounds: :mod:`histozoom.config_fields`."""
        for f in ("name", "architecture", "classification", "segmentation"):
            yield str_problem(f, getattr(self, f))
        yield int_problem("n_classes", self.n_classes, 1, MAX_CLASSES)
        yield int_problem("in_channels", self.in_channels, 1, MAX_IN_CHANNELS)
        yield ints_problem("task_aux_scales", self.task_aux_scales, 1, max(AUX_SCALES))
        yield encoder_problem("encoder_name", self.encoder_name)
        yield str_problem("encoder_weights", self.encoder_weights, optional=True)
        for f in ("encoder_dropout", "head_dropout"):
            yield prob_problem(f, getattr(self, f))
        yield bool_problem("global_context", self.global_context)
        yield int_problem("gc_reduction", self.gc_reduction, 1, MAX_CHANNELS)
        for f in ("decoder_channels", "lunet_channels", "hrfe_channels"):
            yield ints_problem(f, getattr(self, f), 1, MAX_CHANNELS)
        yield int_problem("hrfe_blocks", self.hrfe_blocks, 1, 64)
        yield int_problem("hrfe_stages", self.hrfe_stages, 1, 64)

    def _problems(self) -> Iterable[str]:
        for field, allowed in (("architecture", ARCHITECTURES), ("classification", CLASSIFICATIONS),
                               ("segmentation", SEGMENTATIONS)):
            if getattr(self, field) not in allowed:
                yield f"{field} must be one of {allowed}, got {getattr(self, field)!r}"
        if self.architecture == "unet" and (self.classification, self.segmentation) != ("single", "none"):
            yield "architecture 'unet' needs classification='single' and segmentation='none'"
        if self.n_classes < 1 or self.in_channels < 1:
            yield "n_classes and in_channels must be >= 1"
        if self.classification == "two-task":
            yield from self._task_problems()
        if len(self.task_aux_scales) != 2 or any(s not in AUX_SCALES for s in self.task_aux_scales):
            yield f"task_aux_scales must be two of {AUX_SCALES}, got {self.task_aux_scales}"
        for field in ("encoder_dropout", "head_dropout"):
            if not 0.0 <= getattr(self, field) < 1.0:
                yield f"{field} must be in [0, 1), got {getattr(self, field)}"
        if len(self.decoder_channels) != 5:
            yield f"decoder_channels needs 5 entries (one per encoder level), got {self.decoder_channels}"
        if not 1 <= len(self.lunet_channels) <= 6:
            yield f"lunet_channels needs 1..6 entries, got {self.lunet_channels}"
        if not 1 <= len(self.hrfe_channels) <= 4:
            yield f"hrfe_channels needs 1..4 entries (streams at 1/2..1/16), got {self.hrfe_channels}"
        if min(self.decoder_channels + self.lunet_channels + self.hrfe_channels, default=0) < 1:
            yield "channel counts must be >= 1"
        if self.hrfe_blocks < 1 or self.hrfe_stages < 1 or self.gc_reduction < 1:
            yield "hrfe_blocks, hrfe_stages and gc_reduction must be >= 1"

    def _task_problems(self) -> Iterable[str]:
        if len(self.task_groups) != 2:
            yield f"task_groups needs 2 tasks, got {len(self.task_groups)}"
        want = list(range(1, self.n_classes + 1))
        for t, groups in enumerate(self.task_groups, start=1):
            flat = sorted(c for g in groups for c in g)
            if flat != want or any(not g for g in groups):
                yield (f"task {t} groups {groups} must be non-empty and cover class ids "
                       f"1..{self.n_classes} exactly once")

    # ------------------------------------------------------------------ derived
    @property
    def n_tasks(self) -> int:
        """Number of HRFEs (2 for "two-task", 1 for "single", 0 for the U-Net)."""
        if self.architecture == "unet":
            return 0
        return len(self.task_groups) if self.classification == "two-task" else 1

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (every variant): the encoder's
        total stride (:func:`~histozoom.models.branch.encoder_size_multiple` of
        :data:`ENCODER_OUTPUT_STRIDE`), which the U-Net decoders' skip connections need.
        The built model's ``size_multiple`` is this."""
        return encoder_size_multiple(ENCODER_OUTPUT_STRIDE)

    @property
    def aux_scales(self) -> tuple[int, ...]:
        """Auxiliary downsampling of each HRFE (SHR: the image itself)."""
        return self.task_aux_scales if self.classification == "two-task" else (1,)

    @classmethod
    def from_scheme(cls, scheme: Any, merges: Sequence[str] | None = None, **fields: Any) -> ChrNetConfig:
        """A config whose ``n_classes`` and ``task_groups`` come from a
        :class:`~histozoom.data.nuclei.records.NucleiClassScheme` (ids must be 1..n)."""
        ids = sorted(int(i) for i in scheme.classes.ids)
        if ids != list(range(1, len(ids) + 1)):
            raise ValueError(f"scheme {scheme.name!r}: class ids must be 1..n, got {ids}")
        return cls(**{"n_classes": len(ids), "task_groups": task_groups_from_scheme(scheme, merges), **fields})

    def build(self, pretrained: bool = True) -> ChrNet:
        """The model. ``pretrained=False`` skips loading ``encoder_weights``."""
        return ChrNet(self, load_encoder_weights=pretrained)


# ====================================================================== building blocks
def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, relu: bool = True) -> nn.Sequential:
    """Conv (no bias) + BN (+ ReLU)."""
    layers = [nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class GlobalContextBlock(nn.Module):
    """GCNet context block (Cao et al. 2019), "add" fusion.

    ``w = softmax_HW(conv_mask(x))`` (1×1 conv C→1), ``context = Σ_p w_p x_p`` (B, C, 1, 1),
    ``out = x + conv2(ReLU(LayerNorm(conv1(context))))`` with conv1: C → C // reduction,
    conv2 back to C (both 1×1 with bias); LayerNorm over ``(C // reduction, 1, 1)``.
    ``conv2`` starts at zero (the block starts as the identity).
    """

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.conv_mask = nn.Conv2d(channels, 1, kernel_size=1)
        self.transform = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.LayerNorm([hidden, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )
        nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.conv_mask.bias)
        nn.init.zeros_(self.transform[-1].weight)
        nn.init.zeros_(self.transform[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        weights = self.conv_mask(x).reshape(b, 1, -1).softmax(dim=-1)  # (B, 1, HW)
        context = torch.bmm(x.reshape(b, c, -1), weights.transpose(1, 2)).view(b, c, 1, 1)
        return x + self.transform(context)


class GCResNetEncoder(nn.Module):
    """An smp encoder (``body``), optionally with a GC block after each ResNet stage.

    ``forward(x) -> [x, s2, s4, s8, s16, s32]``. With ``gc`` the body must be a
    torchvision-style smp ResNet (``conv1``, ``bn1``, ``relu``, ``maxpool``, ``layer1..4``);
    ``gc[k]`` follows ``layer{k+1}``.
    """

    STAGES = ("layer1", "layer2", "layer3", "layer4")

    def __init__(self, body: nn.Module, global_context: bool, reduction: int = 16):
        super().__init__()
        self.body = body
        self.gc = None
        if global_context:
            missing = [a for a in ("conv1", "bn1", "relu", "maxpool", *self.STAGES) if not hasattr(body, a)]
            if missing:
                raise ValueError(f"global_context needs a ResNet-style smp encoder; {type(body).__name__} lacks {missing}")
            self.gc = nn.ModuleList(GlobalContextBlock(c, reduction) for c in body.out_channels[2:])

    @property
    def out_channels(self) -> tuple[int, ...]:
        return tuple(self.body.out_channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.gc is None:
            return self.body(x)
        b = self.body
        features = [x]
        x = b.relu(b.bn1(b.conv1(x)))
        features.append(x)
        x = b.maxpool(x)
        for name, gc in zip(self.STAGES, self.gc):
            x = gc(getattr(b, name)(x))
            features.append(x)
        return features


class LUNet(nn.Module):
    """Lightweight U-Net: ``(B, in, H, W) -> (B, out, H, W)`` (raw, no activation).

    Level ``i`` works at stride ``2**i`` with ``channels[i]`` channels: a simple-block
    (two 3×3 conv + BN + ReLU); 2×2 max-pooling between levels. Each decoder-block
    upsamples (bilinear), concatenates the skip and applies a simple-block. 1×1 conv head.
    """

    def __init__(self, in_channels: int = 1, channels: Sequence[int] = (16, 32, 64), out_channels: int = 1):
        super().__init__()
        ch = list(channels)
        self.down = nn.ModuleList(
            nn.Sequential(conv_bn(cin, cout), conv_bn(cout, cout)) for cin, cout in zip([in_channels] + ch[:-1], ch)
        )
        self.up = nn.ModuleList(
            nn.Sequential(conv_bn(ch[i + 1] + ch[i], ch[i]), conv_bn(ch[i], ch[i])) for i in reversed(range(len(ch) - 1))
        )
        self.head = nn.Conv2d(ch[0], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = block(torch.cat([_resize(x, skip.shape[-2:]), skip], dim=1))
        return self.head(x)


class _Exchange(nn.Module):
    """HRNet multi-resolution fusion: ``out_i = ReLU(Σ_j f_ij(x_j))``."""

    def __init__(self, channels: Sequence[int]):
        super().__init__()
        n = len(channels)
        self.paths = nn.ModuleList()
        for i in range(n):
            row = nn.ModuleList()
            for j in range(n):
                if j == i:
                    row.append(nn.Identity())
                elif j > i:  # lower resolution → 1×1 conv + BN, upsampled in forward
                    row.append(conv_bn(channels[j], channels[i], kernel=1, relu=False))
                else:  # higher resolution → (i - j) stride-2 3×3 convs
                    steps = [conv_bn(channels[j], channels[j], stride=2) for _ in range(i - j - 1)]
                    steps.append(conv_bn(channels[j], channels[i], stride=2, relu=False))
                    row.append(nn.Sequential(*steps))
            self.paths.append(row)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        out = []
        for i, row in enumerate(self.paths):
            size = xs[i].shape[-2:]
            out.append(F.relu(sum(_resize(f(x), size) for f, x in zip(row, xs))))
        return out


class HRFE(nn.Module):
    """High-resolution feature extractor of one task (module docstring: "HRFE",
    "Composite connections", "Auxiliary input").

    ``forward(image, features) -> logits (B, classes, H, W)``; ``features`` is the
    encoder's ``[x, s2, s4, s8, s16, s32]``.
    """

    def __init__(self, encoder_channels: Sequence[int], channels: Sequence[int], classes: int,
                 in_channels: int = 3, aux_scale: int = 1, blocks: int = 2, stages: int = 2,
                 dropout: float = 0.0):
        super().__init__()
        self.aux_scale = aux_scale
        self.strides = tuple(2 ** (j + 1) for j in range(len(channels)))
        self.composite = nn.ModuleList(
            conv_bn(encoder_channels[j + 2], c, kernel=1, relu=False) for j, c in enumerate(channels)
        )
        stem_stride = 2 if aux_scale < self.strides[0] else 1
        self.aux_stem = nn.Sequential(conv_bn(in_channels, channels[0], stride=stem_stride),
                                      conv_bn(channels[0], channels[0]))
        self.stages = nn.ModuleList()
        for _ in range(stages):
            streams = nn.ModuleList(nn.Sequential(*(BasicBlock(c, c) for _ in range(blocks))) for c in channels)
            self.stages.append(nn.ModuleDict({"streams": streams, "exchange": _Exchange(channels)}))
        total = sum(channels)
        self.head = nn.Sequential(conv_bn(total, total, kernel=1), nn.Dropout2d(dropout),
                                  nn.Conv2d(total, classes, kernel_size=1))

    def auxiliary_image(self, image: torch.Tensor) -> torch.Tensor:
        """The task's view: ``image`` area-downsampled by ``aux_scale`` per side (the mean of
        each ``aux_scale``² block when the sides divide, as a plain pooling that exports to ONNX)."""
        s = self.aux_scale
        if s == 1:
            return image
        if image.shape[-2] % s == 0 and image.shape[-1] % s == 0:
            return F.avg_pool2d(image, s)
        return F.interpolate(image, scale_factor=1 / s, mode="area")

    def forward(self, image: torch.Tensor, features: Sequence[torch.Tensor]) -> torch.Tensor:
        h, w = image.shape[-2:]
        sizes = [(h // s, w // s) for s in self.strides]
        xs = [_resize(conv(features[j + 2]), sizes[j]) for j, conv in enumerate(self.composite)]
        xs[0] = xs[0] + _resize(self.aux_stem(self.auxiliary_image(image)), sizes[0])
        xs = [F.relu(x) for x in xs]
        for stage in self.stages:
            xs = [stream(x) for stream, x in zip(stage["streams"], xs)]
            xs = stage["exchange"](xs)
        fused = torch.cat([_resize(x, sizes[0]) for x in xs], dim=1)
        return _resize(self.head(fused), (h, w))


def _fusion_init(conv: nn.Conv2d, task_groups: TaskGroups, n_classes: int) -> None:
    """Ones where task ``t``'s channel holds class ``k`` (background → background)."""
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        offset = 0
        for groups in task_groups:
            lut = _lookup(groups, n_classes)
            for k in range(n_classes + 1):
                conv.weight[k, offset + int(lut[k]), 0, 0] = 1.0
            offset += len(groups) + 1


# ====================================================================== the model
class ChrNet(nn.Module):
    """CHR-Net and its ablations / the U-Net baseline, as ``config`` says (module docstring).

    Submodules: ``encoder`` (:class:`GCResNetEncoder`); U-Net baseline: ``decoder``,
    ``head``; CHR-Net: ``seg_decoder`` + ``seg_head`` (segmentation != "none"), ``lunet``
    ("wnet"), ``hrfe`` (``nn.ModuleList``, one per task), ``fusion`` (two-task, 1×1 conv).
    """

    def __init__(self, config: ChrNetConfig, load_encoder_weights: bool = True):
        super().__init__()
        self.config = cfg = config
        body = build_encoder(cfg.encoder_name, cfg.in_channels, ENCODER_OUTPUT_STRIDE,
                             cfg.encoder_weights if load_encoder_weights else None, cfg.encoder_dropout)
        self.encoder = GCResNetEncoder(body, cfg.global_context, cfg.gc_reduction)
        enc_ch = self.encoder.out_channels
        n_out = cfg.n_classes + 1
        if cfg.architecture == "unet":
            self.decoder = UnetDecoder(encoder_channels=enc_ch, decoder_channels=cfg.decoder_channels, n_blocks=5)
            self.head = SegmentationHead(cfg.decoder_channels[-1], n_out, kernel_size=3)
            smp_init.initialize_decoder(self.decoder)
            smp_init.initialize_head(self.head)
            return
        self.seg_decoder = self.seg_head = self.lunet = self.fusion = None
        if cfg.segmentation != "none":
            self.seg_decoder = UnetDecoder(encoder_channels=enc_ch, decoder_channels=cfg.decoder_channels, n_blocks=5)
            self.seg_head = SegmentationHead(cfg.decoder_channels[-1], 1, kernel_size=3)
            smp_init.initialize_decoder(self.seg_decoder)
            smp_init.initialize_head(self.seg_head)
        if cfg.segmentation == "wnet":
            self.lunet = LUNet(1, cfg.lunet_channels, 1)
        if cfg.classification == "two-task":
            outs = [len(g) + 1 for g in cfg.task_groups]
        else:
            outs = [n_out]
        self.hrfe = nn.ModuleList(
            HRFE(enc_ch, cfg.hrfe_channels, k, cfg.in_channels, scale, cfg.hrfe_blocks, cfg.hrfe_stages, cfg.head_dropout)
            for k, scale in zip(outs, cfg.aux_scales)
        )
        if cfg.classification == "two-task":
            self.fusion = nn.Conv2d(sum(outs), n_out, kernel_size=1)
            _fusion_init(self.fusion, cfg.task_groups, cfg.n_classes)

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (see ``ChrNetConfig.size_multiple``)."""
        return self.config.size_multiple

    def _check(self, image: torch.Tensor) -> None:
        c = self.config.in_channels
        if image.dim() != 4 or image.shape[1] != c:
            raise ValueError(f"{self.config.name}: image must be (B, {c}, H, W), got {tuple(image.shape)}")
        h, w = image.shape[-2:]
        m = self.size_multiple
        if h % m or w % m:
            raise ValueError(f"{self.config.name}: image height and width must be multiples of "
                             f"{m}, got {h}x{w}")

    def forward(self, image: torch.Tensor) -> dict[str, Any]:
        """``{"class_logits", "task_logits", "binary_logits"?, "distance"?}`` (module docstring)."""
        self._check(image)
        features = self.encoder(image)
        cfg = self.config
        if cfg.architecture == "unet":
            return {"class_logits": self.head(self.decoder(features)), "task_logits": []}
        logits = [hrfe(image, features) for hrfe in self.hrfe]
        if self.fusion is None:
            out: dict[str, Any] = {"class_logits": logits[0], "task_logits": []}
        else:
            fused = self.fusion(torch.cat([t.softmax(dim=1) for t in logits], dim=1))
            out = {"class_logits": fused, "task_logits": logits}
        if self.seg_decoder is not None:
            seg = self.seg_head(self.seg_decoder(features))
            if self.lunet is not None:
                out["binary_logits"] = seg
                seg = self.lunet(torch.sigmoid(seg))
            out["distance"] = torch.sigmoid(seg)
        return out


# ====================================================================== targets and loss
def _lookup(groups: Sequence[Sequence[int]], n_classes: int, device: torch.device | str | None = None) -> torch.Tensor:
    lut = torch.zeros(n_classes + 1, dtype=torch.long, device=device)
    for g, members in enumerate(groups, start=1):
        for c in members:
            lut[int(c)] = g
    return lut


def merge_task_targets(classes: torch.Tensor, task_groups: TaskGroups, n_classes: int) -> list[torch.Tensor]:
    """One merged map per task from a class map (any shape, integer ids ``0..n_classes``).

    Class ``c`` becomes ``g + 1`` where ``c in groups[g]``; background 0 stays 0; any value
    outside ``0..n_classes`` (an ignore index such as -100 or 255) is kept as it is.
    """
    classes = classes.long()
    inside = (classes >= 0) & (classes <= n_classes)
    safe = classes.clamp(0, n_classes)
    return [torch.where(inside, _lookup(g, n_classes, classes.device)[safe], classes) for g in task_groups]


def targets_for_config(config: ChrNetConfig, classes: torch.Tensor) -> list[torch.Tensor]:
    """The ``"tasks"`` targets of ``config``'s model for a class map (``[]`` unless two-task)."""
    if config.n_tasks < 2:
        return []
    return merge_task_targets(classes, config.task_groups, config.n_classes)


LOSS_TERMS: tuple[str, ...] = ("bc", "dist", "mc1", "mc2", "mcf")
DEFAULT_LOSS_WEIGHTS: dict[str, float] = {"bc": 1.0, "dist": 2.0, "mc1": 1.0, "mc2": 1.0, "mcf": 1.0}
"""Eq. 1: λ_dist = 2, the others 1."""


class ChrNetLoss(nn.Module):
    """Eq. 1 of the paper; ``loss(outputs, targets) -> (total, parts)``.

    ``targets``: ``"binary"`` (B, H, W) {0, 1}, ``"distance"`` (B, H, W) float in [0, 1],
    ``"classes"`` (B, H, W) int64 ids ``0..n_classes``, ``"tasks"`` list of (B, H, W) int64
    merged maps (:func:`targets_for_config`). Terms: ``bc`` = BCE-with-logits of
    ``binary_logits``, ``dist`` = L1 of ``distance``, ``mc1``/``mc2`` = cross-entropy of
    ``task_logits[0/1]``, ``mcf`` = cross-entropy of ``class_logits`` (all means over
    pixels; CE skips ``ignore_index``). A term whose output is absent is skipped; a
    present output without its target raises ``KeyError``. ``parts`` holds the
    *unweighted*, detached value of every computed term; ``total`` is the weighted sum.

    ``weights``: a mapping (missing terms keep :data:`DEFAULT_LOSS_WEIGHTS`) or five numbers
    in :data:`LOSS_TERMS` order.
    """

    def __init__(self, weights: Mapping[str, float] | Sequence[float] | None = None, ignore_index: int = -100):
        super().__init__()
        w = dict(DEFAULT_LOSS_WEIGHTS)
        if isinstance(weights, Mapping):
            unknown = sorted(set(weights) - set(LOSS_TERMS))
            if unknown:
                raise ValueError(f"unknown loss terms {unknown}; known: {LOSS_TERMS}")
            w.update({k: float(v) for k, v in weights.items()})
        elif weights is not None:
            weights = [float(v) for v in weights]
            if len(weights) != len(LOSS_TERMS):
                raise ValueError(f"weights needs {len(LOSS_TERMS)} numbers {LOSS_TERMS}, got {len(weights)}")
            w = dict(zip(LOSS_TERMS, weights))
        self.weights = w
        self.ignore_index = ignore_index

    def forward(self, outputs: Mapping[str, Any], targets: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms: dict[str, torch.Tensor] = {}
        if outputs.get("binary_logits") is not None:
            logits = outputs["binary_logits"][:, 0]
            terms["bc"] = F.binary_cross_entropy_with_logits(logits, targets["binary"].to(logits.dtype))
        if outputs.get("distance") is not None:
            dist = outputs["distance"][:, 0]
            terms["dist"] = F.l1_loss(dist, targets["distance"].to(dist.dtype))
        task_logits = outputs.get("task_logits") or []
        if task_logits:
            tasks = targets["tasks"]
            if len(tasks) != len(task_logits):
                raise ValueError(f"{len(task_logits)} task outputs but {len(tasks)} task targets")
            for t, (logits, target) in enumerate(zip(task_logits, tasks), start=1):
                terms[f"mc{t}"] = F.cross_entropy(logits, target.long(), ignore_index=self.ignore_index)
        if outputs.get("class_logits") is not None:
            terms["mcf"] = F.cross_entropy(outputs["class_logits"], targets["classes"].long(),
                                           ignore_index=self.ignore_index)
        if not terms:
            raise ValueError("no loss term: outputs hold none of binary_logits, distance, task_logits, class_logits")
        total = sum(self.weights[k] * v for k, v in terms.items())
        return total, {k: v.detach() for k, v in terms.items()}
