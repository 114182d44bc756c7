"""U-Net cell branch (OCELOT supplement Table C.1 baseline) with the staged branch interface.

smp's ``Unet`` parts (``UnetDecoder``, ``SegmentationHead``) on an encoder from
:func:`~histozoom.models.branch.build_encoder` (output stride 32, ``Dropout2d`` after every
ResNet block, optional local weights). It has no ASPP: the "aspp" stage is the identity, so
only the "input" boundary takes extra channels (label leaking / pred-to-input work with it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn as nn
from segmentation_models_pytorch.base import SegmentationHead
from segmentation_models_pytorch.base import initialization as smp_init
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder

from .branch import (
    StagedBranch,
    build_encoder,
    check_extra_channels,
    encoder_size_multiple,
)


class UNetBranch(StagedBranch):
    """U-Net (smp defaults: decoder channels 256-128-64-32-16, batch norm, 3×3 head).

    ``forward(x (B, in_channels + K_input, H, W)) -> logits (B, classes, H, W)``; ``H`` and
    ``W`` must be multiples of ``size_multiple`` (32: the skip connections need every one
    of the five encoder stages to halve the map exactly).
    """

    output_stride = 32
    size_multiple = encoder_size_multiple(output_stride)
    strides = {"input": 1, "encoder": 32, "aspp": 32, "decoder": 1}

    def __init__(
        self,
        classes: int,
        in_channels: int = 3,
        extra_channels: Mapping[str, int] | None = None,
        encoder_name: str = "resnet34",
        encoder_weights: str | Path | None = None,
        dropout: float = 0.1,
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    ):
        super().__init__()
        extra = check_extra_channels(extra_channels, ("input",))
        self.extra_channels = extra
        self.encoder = build_encoder(encoder_name, in_channels + extra["input"], self.output_stride,
                                     encoder_weights, dropout)
        enc_ch = self.encoder.out_channels
        self.channels = {"input": in_channels, "encoder": enc_ch[-1], "aspp": enc_ch[-1], "decoder": decoder_channels[-1]}
        self.aspp = nn.Identity()
        self.decoder = UnetDecoder(encoder_channels=enc_ch, decoder_channels=tuple(decoder_channels),
                                   n_blocks=len(decoder_channels))
        self.head = SegmentationHead(decoder_channels[-1], classes, kernel_size=3)
        smp_init.initialize_decoder(self.decoder)
        smp_init.initialize_head(self.head)

    def decode(self, center: torch.Tensor, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Decoder output ``(B, decoder_channels[-1], H, W)``; ``center`` replaces the deepest features."""
        return self.decoder([*features[:-1], center])
