"""Small CIFAR networks a practitioner would pick: a six-block MobileNet and a ResNet-20.

They are the strong baselines of the CIFAR comparison (uniform width multipliers of each family at
every target size) and, the MobileNet, the family that growth is seeded from (its own shape at a
small width multiplier).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from nni_splitting.models._base import COMMON_PARAMS, ConvBNAct, ConvNet, make_activation
from nni_splitting.models._cnn import MobileNetV1

__all__ = ["MobileNetCifar", "ResNet20"]


class MobileNetCifar(MobileNetV1):
    """MobileNetV1's first six depthwise-separable blocks for 32x32 inputs: the plain small CIFAR
    MobileNet (stem 3x3 at stride 1, widths doubling at each stride: 32x32 -> 16 -> 8 -> 4).

    Parameters
    ----------
    widths : list of int, optional
        7 widths (default ``[32, 64, 128, 128, 256, 256, 512]``, 270k parameters, 18.6 M MACs): the
        stem ``features.stem.conv`` then the pointwise convs ``features.block{{i}}.pw.conv`` of the six
        blocks (depthwise strides ``1,2,1,2,1,2``). At width multiplier 0.75 (MobileNet's
        ``alpha = 0.75``, 152k parameters) it is the strong full model of the CIFAR CPU protocol.{common}"""

    DEFAULT_WIDTHS = (32, 64, 128, 128, 256, 256, 512)
    STRIDES = (1, 2, 1, 2, 1, 2)


class _BasicBlock(nn.Module):
    """``conv1 -> bn1 -> act1 -> conv2 -> bn2``, plus the shortcut (identity, or a 1x1 conv + BN projection
    when the stride or the width changes), then ``act2``."""

    def __init__(self, in_channels: int, inner: int, out_channels: int, stride: int, activation: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, inner, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.act1 = make_activation(activation)
        self.conv2 = nn.Conv2d(inner, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(OrderedDict([
                ("conv", nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)),
                ("bn", nn.BatchNorm2d(out_channels))]))
        self.act2 = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))) + self.shortcut(x))


class ResNet20(ConvNet):
    """ResNet-20 for CIFAR (He et al. 2016, section 4.2): a 3x3 stem, three stages of three basic
    blocks at strides 1, 2, 2, global average pooling; projection shortcuts where the shape changes.

    Parameters
    ----------
    widths : list of int, optional
        12 widths (default ``[16, 32, 64]`` then ``16 x3, 32 x3, 64 x3``: 272k parameters, 41 M MACs):
        the three stage widths (the stem conv and each stage's output, tied by the residual adds),
        then the inner width of each block (``features.stage{{s}}.{{b}}.conv1``, the only convs whose
        channels no residual add couples: the splittable ones).{common}"""

    DEFAULT_WIDTHS = (16, 32, 64, 16, 16, 16, 32, 32, 32, 64, 64, 64)
    STAGE_STRIDES = (1, 2, 2)
    BLOCKS = 3

    def __init__(self, widths=None, num_classes: int = 10, in_channels: int = 3,
                 activation: str = "relu", dropout: float = 0.0):
        super().__init__(widths, num_classes, in_channels, activation, dropout)

    def _layers(self, w, in_channels, activation):
        stages, inner = w[:3], w[3:]
        layers = [("stem", ConvBNAct(in_channels, stages[0], 3, activation=activation))]
        previous = stages[0]
        for s, (width, stride) in enumerate(zip(stages, self.STAGE_STRIDES)):
            blocks = []
            for b in range(self.BLOCKS):
                blocks.append((str(b), _BasicBlock(previous, inner[s * self.BLOCKS + b], width,
                                                   stride if b == 0 else 1, activation)))
                previous = width
            layers.append((f"stage{s + 1}", nn.Sequential(OrderedDict(blocks))))
        return layers

    def _head_width(self) -> int:
        return self.widths[2]

    def width_layers(self) -> list[str]:
        stage_outputs = ["features.stem.conv", "features.stage2.0.conv2", "features.stage3.0.conv2"]
        return stage_outputs + [f"features.stage{s + 1}.{b}.conv1" for s in range(3) for b in range(self.BLOCKS)]


for _cls in (MobileNetCifar, ResNet20):
    _cls.__doc__ = _cls.__doc__.format(common=COMMON_PARAMS)
del _cls
