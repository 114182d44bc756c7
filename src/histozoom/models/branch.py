"""One branch of the OCELOT family: DeepLabV3+ (ResNet encoder, output stride 16) cut at
its three injection points (OCELOT §5.1–5.3, Fig. 4; supplement B).

Stages and boundaries
---------------------
A branch runs in four stages; the map *after* each stage is a **boundary**, where the
cell–tissue family may concatenate extra channels (``POSITIONS``):

==========  ==========================================  ======  ==========================
position    raw map (before any concatenation)          stride  next module takes
==========  ==========================================  ======  ==========================
"input"     the image ``x``                             1       ``encoder``
"encoder"   deepest encoder features ``features[-1]``   16      ``aspp``
"aspp"      ASPP block output (ASPP + sep. conv+BN+ReLU) 16      ``decoder``
"decoder"   decoder output (before the head)            4       ``head`` (1×1 conv, ×4 up)
==========  ==========================================  ======  ==========================

Each stage is one submodule (``encoder``, ``aspp``, ``decoder``, ``head``), so a caller
can hook the boundaries: a forward hook on ``encoder`` sees the feature list, on ``aspp``
and ``decoder`` the raw maps at "aspp" and "decoder"; a forward *pre*-hook on the next
module sees the map after concatenation. ``extra_channels[pos]`` channels are added to
the input of the module after ``pos``.

The decoder is smp's ``DeepLabV3PlusDecoder`` re-assembled from its parts (``ASPP``,
``SeparableConv2d``): smp's ``decoder.aspp`` block is our ``aspp``; its ``up``, ``block1``
(1×1 conv of the stride-4 features to 48 channels) and ``block2`` (separable conv of the
concatenation) are our ``decoder``. With no extra channels the branch computes exactly
smp's ``DeepLabV3Plus`` (same modules, same order).

Encoders are built by ``segmentation_models_pytorch.encoders.get_encoder`` with random
initialisation; ImageNet weights come only from a local state-dict file
(:func:`load_encoder_weights`). Every ResNet block ends with ``nn.Dropout2d(p)``
(:func:`add_block_dropout`; supplement B, "spatial dropout at the end of each ResNet block").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from segmentation_models_pytorch.base import SegmentationHead
from segmentation_models_pytorch.base import initialization as smp_init
from segmentation_models_pytorch.decoders.deeplabv3.decoder import ASPP, SeparableConv2d
from segmentation_models_pytorch.encoders import encoders as smp_encoders
from segmentation_models_pytorch.encoders import get_encoder
from segmentation_models_pytorch.encoders.timm_universal import TimmUniversalEncoder
from timm.models.resnet import BasicBlock as TimmBasicBlock
from timm.models.resnet import Bottleneck as TimmBottleneck
from torchvision.models.resnet import BasicBlock, Bottleneck

from ..errors import InputError

POSITIONS: tuple[str, ...] = ("input", "encoder", "aspp", "decoder")
"""Injection boundaries in forward order (Fig. 4 a–d)."""

ENCODER_DEPTH = 5
"""Encoder stages of every branch (smp ``depth``): features at strides 1, 2, 4, …, 32."""


def encoder_size_multiple(output_stride: int, depth: int = ENCODER_DEPTH) -> int:
    """What input height and width must be divisible by for an smp encoder of ``depth``
    stages built at ``output_stride``: its total downsampling ``min(output_stride,
    2**depth)`` (smp's ``encoder.output_stride``). Every strided stage then halves the
    map exactly, so skip connections and the final upsampling meet the input size again."""
    return min(int(output_stride), 2 ** int(depth))


# ---------------------------------------------------------------------- encoder pieces
class _BlockDropout:
    """Mixin for torchvision ResNet blocks: the block output goes through ``self.dropout``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(super().forward(x))


class DropoutBasicBlock(_BlockDropout, BasicBlock):
    """torchvision ``BasicBlock`` followed by ``dropout`` (``nn.Dropout2d``); same parameters and keys."""


class DropoutBottleneck(_BlockDropout, Bottleneck):
    """torchvision ``Bottleneck`` followed by ``dropout`` (``nn.Dropout2d``); same parameters and keys."""


class DropoutTimmBasicBlock(_BlockDropout, TimmBasicBlock):
    """timm ``BasicBlock`` (``tu-`` ResNet encoders) followed by ``dropout``."""


class DropoutTimmBottleneck(_BlockDropout, TimmBottleneck):
    """timm ``Bottleneck`` (``tu-`` ResNet encoders) followed by ``dropout``."""


_WITH_DROPOUT = {BasicBlock: DropoutBasicBlock, Bottleneck: DropoutBottleneck,
                 TimmBasicBlock: DropoutTimmBasicBlock, TimmBottleneck: DropoutTimmBottleneck}


def add_block_dropout(encoder: nn.Module, p: float) -> int:
    """Append ``nn.Dropout2d(p)`` to every ResNet block (torchvision or timm BasicBlock /
    Bottleneck) of ``encoder``.

    The block keeps its parameters and state-dict keys (the dropout has none). Returns
    the number of blocks changed; raises ``ValueError`` when ``p > 0`` and there are none.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    blocks = [m for m in encoder.modules() if type(m) in _WITH_DROPOUT]
    if p > 0 and not blocks:
        raise ValueError(f"{type(encoder).__name__} has no ResNet blocks to add dropout to")
    for m in blocks:
        m.__class__ = _WITH_DROPOUT[type(m)]
        m.dropout = nn.Dropout2d(p)
    return len(blocks)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise InputError(path, "encoder weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(path, f"cannot read a state dict ({type(err).__name__}: {err})") from err
    for key in ("state_dict", "model"):
        if isinstance(sd, Mapping) and isinstance(sd.get(key), Mapping):
            sd = sd[key]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise InputError(path, "not a state dict (a mapping of names to tensors)")
    sd = dict(sd)
    for prefix in ("module.", "encoder."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> None:
    """Load a local state-dict file into a freshly built 3-input-channel ``encoder``.

    Accepts torchvision/timm-style ResNet state dicts (``conv1.weight``, ``layer1.0...``;
    ``fc.*`` is dropped; for ``tu-`` encoders the keys of the timm model), optionally nested
    under ``state_dict``/``model`` or prefixed with
    ``module.``/``encoder.``; ``.safetensors`` or ``torch.save`` files. Any missing,
    unexpected or mis-shaped key raises :class:`~histozoom.errors.InputError` naming the file.
    """
    path = Path(path)
    sd = _read_state_dict(path)
    sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    if isinstance(encoder, TimmUniversalEncoder):  # timm keys live under .model
        encoder = encoder.model
    own = encoder.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k} {tuple(sd[k].shape)} != {tuple(own[k].shape)}" for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatch", wrong)):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{label}: {', '.join(keys[:5])}{more}")
        raise InputError(path, f"weights do not fit encoder {type(encoder).__name__}: " + "; ".join(parts))
    nn.Module.load_state_dict(encoder, sd, strict=False)


def _set_in_channels(encoder: nn.Module, n: int, keep_weights: bool) -> None:
    """Give the encoder's first convolution ``n`` input channels.

    The new conv gets torchvision's ResNet initialisation (Kaiming normal, fan-out); with
    ``keep_weights`` the first ``min(n, 3)`` input channels then take the (pretrained) kernels.
    Unlike smp's ``patch_first_conv`` the RGB kernels are not rescaled, so injected channels
    start as an addition to the pretrained response.
    """
    if n == 3:
        return
    name, old = next((nm, m) for nm, m in encoder.named_modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3)
    new = nn.Conv2d(n, old.out_channels, old.kernel_size, old.stride, old.padding, old.dilation,
                    old.groups, old.bias is not None)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if keep_weights:
        with torch.no_grad():
            k = min(n, 3)
            new.weight[:, :k] = old.weight[:, :k]
            if old.bias is not None:
                new.bias.copy_(old.bias)
    parent = encoder.get_submodule(name.rpartition(".")[0]) if "." in name else encoder
    setattr(parent, name.rpartition(".")[2], new)
    encoder._in_channels = n
    out = getattr(encoder, "_out_channels", None)
    if out is not None and out[0] == 3:
        encoder._out_channels = [n] + list(out[1:])


def build_encoder(
    name: str = "resnet34",
    in_channels: int = 3,
    output_stride: int = 16,
    weights: str | Path | None = None,
    dropout: float = 0.0,
) -> nn.Module:
    """smp encoder (depth :data:`ENCODER_DEPTH` = 5) returning ``[x, s2, s4, s8, s16, s32-or-dilated]`` features.

    ``weights``: ``None`` (random init) or a local state-dict file for the 3-channel
    encoder; never downloads. ``dropout``: ``Dropout2d`` probability after every block.
    """
    enc = get_encoder(name, in_channels=3, depth=ENCODER_DEPTH, weights=None, output_stride=output_stride)
    if weights is not None:
        load_encoder_weights(enc, weights)
    _set_in_channels(enc, in_channels, keep_weights=weights is not None)
    add_block_dropout(enc, dropout)
    return enc


def encoder_channels(name: str) -> tuple[int, ...]:
    """Channels of the depth-5 feature list of smp encoder ``name`` (without building it
    when smp lists them)."""
    listed = smp_encoders.get(name, {}).get("params", {}).get("out_channels")
    if listed is not None:
        return tuple(listed)
    return tuple(get_encoder(name, depth=ENCODER_DEPTH, weights=None).out_channels)


def _cat(x: torch.Tensor, extras: Sequence[torch.Tensor] | torch.Tensor | None) -> torch.Tensor:
    if extras is None:
        return x
    if isinstance(extras, torch.Tensor):
        extras = [extras]
    return torch.cat([x, *extras], dim=1) if len(extras) else x


# ---------------------------------------------------------------------- staged running
class StagedRun:
    """Runs a branch boundary by boundary, so two branches can exchange maps between stages.

    ``raw = run.advance()`` runs the next stage and returns the raw map at that boundary
    (the positions come in ``POSITIONS`` order); ``run.concat(maps)`` appends channels to
    it (they must have its spatial size); ``run.finish()`` applies the head → logits.
    """

    def __init__(self, branch: nn.Module, x: torch.Tensor):
        self.branch = branch
        self.features: list[torch.Tensor] | None = None
        self._x = x
        self._next = 0

    @property
    def position(self) -> str:
        """The boundary reached last."""
        return POSITIONS[self._next - 1]

    def advance(self) -> torch.Tensor:
        pos = POSITIONS[self._next]
        b = self.branch
        if pos == "encoder":
            self.features = b.encode(self._x)
            self._x = self.features[-1]
        elif pos == "aspp":
            self._x = b.aspp(self._x)
        elif pos == "decoder":
            self._x = b.decode(self._x, self.features)
        self._next += 1
        return self._x

    def concat(self, extras: Sequence[torch.Tensor] | torch.Tensor | None) -> None:
        self._x = _cat(self._x, extras)

    def finish(self) -> torch.Tensor:
        if self._next != len(POSITIONS):
            raise RuntimeError(f"finish() before the last boundary (at {self.position!r})")
        return self.branch.head(self._x)


class StagedBranch(nn.Module):
    """Base class of the branches (:class:`DeepLabBranch`, :class:`~histozoom.models.unet.UNetBranch`):
    ``encode``, ``aspp``, ``decode``, ``head`` and ``forward``, run stage by stage by
    :class:`StagedRun`.

    Class attributes of a subclass: ``output_stride`` (the stride its encoder is built
    at), from which ``size_multiple`` follows (:func:`encoder_size_multiple`; input
    height and width must be multiples of it — the one place the branch's input
    constraint is stated), and ``strides`` (the map stride at each position). Set in
    ``__init__``: ``channels`` (raw channels at each position) and ``extra_channels``
    (channels concatenated at each position).
    """

    output_stride: int
    size_multiple: int
    channels: dict[str, int]
    extra_channels: dict[str, int]
    strides: dict[str, int]

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder feature list ``[x, s2, s4, s8, s16, deepest]`` for input ``x``."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor, extras: Mapping[str, torch.Tensor | Sequence[torch.Tensor]] | None = None) -> torch.Tensor:
        """Logits ``(B, classes, H, W)``; ``extras[pos]`` is concatenated at boundary ``pos``."""
        extras = extras or {}
        unknown = set(extras) - set(POSITIONS)
        if unknown:
            raise ValueError(f"unknown positions {sorted(unknown)}; expected {POSITIONS}")
        run = StagedRun(self, x)
        for pos in POSITIONS:
            run.advance()
            run.concat(extras.get(pos))
        return run.finish()


def check_extra_channels(extra_channels: Mapping[str, int] | None, allowed: Sequence[str]) -> dict[str, int]:
    """``{position: K}`` for every position of ``POSITIONS`` (0 where not given) from a
    branch's ``extra_channels`` argument; ``ValueError`` for an unknown position or for
    channels at a position outside ``allowed`` (the boundaries that branch can widen)."""
    extra = {pos: 0 for pos in POSITIONS}
    for pos, k in (extra_channels or {}).items():
        if pos not in POSITIONS:
            raise ValueError(f"unknown position {pos!r}; expected one of {POSITIONS}")
        if k and pos not in allowed:
            raise ValueError(f"this branch takes no extra channels at {pos!r} (allowed: {tuple(allowed)})")
        extra[pos] = int(k)
    return extra


class DeepLabV3PlusDecoderStage(nn.Module):
    """smp's DeepLabV3+ decoder after its ASPP block: upsample the ASPP map to the stride-4
    features, concatenate 48 channels from them (``block1``), fuse (``block2``).

    ``forward(aspp_out (B, C_aspp, H/16, W/16), high_res (B, C_s4, H/4, W/4)) -> (B, out, H/4, W/4)``.
    """

    def __init__(self, aspp_channels: int, highres_channels: int, out_channels: int):
        super().__init__()
        self.block1 = nn.Sequential(
            nn.Conv2d(highres_channels, 48, kernel_size=1, bias=False), nn.BatchNorm2d(48), nn.ReLU()
        )
        self.block2 = nn.Sequential(
            SeparableConv2d(aspp_channels + 48, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, aspp_out: torch.Tensor, high_res: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(aspp_out, size=high_res.shape[-2:], mode="bilinear", align_corners=True)
        return self.block2(torch.cat([up, self.block1(high_res)], dim=1))


class DeepLabBranch(StagedBranch):
    """DeepLabV3+ with an smp encoder at output stride 16, cut at ``POSITIONS``.

    Parameters
    ----------
    classes:
        Output channels of the head (logits at input resolution).
    in_channels:
        Image channels (3 for RGB); ``extra_channels["input"]`` more are concatenated to it.
    extra_channels:
        ``{position: K}`` channels concatenated at each boundary: the encoder takes
        ``in_channels + K_input``, ASPP ``C_enc + K_encoder`` (512 + K for ResNet-34), the
        decoder's high-level input ``decoder_channels + K_aspp``, the head
        ``decoder_channels + K_decoder``.
    encoder_weights:
        ``None`` or a local state-dict file (see :func:`load_encoder_weights`).
    dropout:
        ``Dropout2d`` probability at the end of every ResNet block.
    decoder_channels, atrous_rates, aspp_separable, aspp_dropout:
        As smp's ``DeepLabV3Plus`` (defaults equal).
    """

    output_stride = 16  # the last stage dilated
    size_multiple = encoder_size_multiple(output_stride)
    strides = {"input": 1, "encoder": 16, "aspp": 16, "decoder": 4}

    def __init__(
        self,
        classes: int,
        in_channels: int = 3,
        extra_channels: Mapping[str, int] | None = None,
        encoder_name: str = "resnet34",
        encoder_weights: str | Path | None = None,
        dropout: float = 0.1,
        decoder_channels: int = 256,
        atrous_rates: Sequence[int] = (12, 24, 36),
        aspp_separable: bool = True,
        aspp_dropout: float = 0.5,
    ):
        super().__init__()
        extra = check_extra_channels(extra_channels, POSITIONS)
        self.extra_channels = extra
        self.encoder = build_encoder(encoder_name, in_channels + extra["input"], self.output_stride,
                                     encoder_weights, dropout)
        enc_ch = self.encoder.out_channels
        self.channels = {"input": in_channels, "encoder": enc_ch[-1], "aspp": decoder_channels, "decoder": decoder_channels}
        self.aspp = nn.Sequential(
            ASPP(enc_ch[-1] + extra["encoder"], decoder_channels, tuple(atrous_rates), separable=aspp_separable,
                 dropout=aspp_dropout),
            SeparableConv2d(decoder_channels, decoder_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(decoder_channels),
            nn.ReLU(),
        )
        self.decoder = DeepLabV3PlusDecoderStage(decoder_channels + extra["aspp"], enc_ch[2], decoder_channels)
        self.head = SegmentationHead(decoder_channels + extra["decoder"], classes, kernel_size=1, upsampling=4)
        smp_init.initialize_decoder(self.aspp)
        smp_init.initialize_decoder(self.decoder)
        smp_init.initialize_head(self.head)

    @staticmethod
    def boundary_channels(in_channels: int, encoder_name: str, decoder_channels: int) -> dict[str, int]:
        """Raw channels at each position (before concatenation), without building a branch."""
        return {"input": in_channels, "encoder": encoder_channels(encoder_name)[-1],
                "aspp": decoder_channels, "decoder": decoder_channels}

    def decode(self, aspp_out: torch.Tensor, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Decoder output ``(B, decoder_channels, H/4, W/4)`` from the (concatenated) ASPP map
        and the encoder features (the stride-4 map ``features[2]`` is used)."""
        return self.decoder(aspp_out, features[2])
