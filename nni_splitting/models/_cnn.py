"""The CNNs of the comparisons: MobileNetV1, VGG19-BN (CIFAR), DS-CNN (keyword spotting), a small CNN."""
from __future__ import annotations

import logging
from torch import nn

from nni_splitting.models._base import COMMON_PARAMS, ConvBNAct, ConvNet, ds_block

__all__ = ["MobileNetV1", "VGG19BN", "DSCNN", "SmallCNN"]

logger = logging.getLogger(__name__)


class MobileNetV1(ConvNet):
    """MobileNetV1 for 32x32 inputs (CIFAR variant: first conv with stride 1).

    Parameters
    ----------
    widths : list of int, optional
        14 widths (default ``[32, 64, 128, 128, 256, 256, 512 x6, 1024, 1024]``): the
        first 3x3 conv ``features.stem.conv``, then the pointwise convs
        ``features.block{{i}}.pw.conv`` of the 13 blocks (depthwise strides
        ``1,2,1,2,1,2,1,1,1,1,1,2,1``).
    strides : list of int, optional
        The blocks' depthwise strides (default the class's ``STRIDES``): one more block per entry, so
        ``widths`` then has ``len(strides) + 1`` entries. Depth growth
        (:func:`nni_splitting.growth.depth.deepen`) inserts stride-1 blocks this way; a non-default value
        is kept in ``config`` so checkpoints and :func:`~nni_splitting.models.rebuild` carry it.{common}"""

    DEFAULT_WIDTHS = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)
    STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)

    def __init__(self, widths=None, num_classes: int = 10, in_channels: int = 3,
                 activation: str = "relu", dropout: float = 0.0, strides=None):
        self.strides = self._check_strides(strides, widths)
        super().__init__(widths, num_classes, in_channels, activation, dropout)
        if self.strides != tuple(self.STRIDES):
            self.config["strides"] = list(self.strides)

    def _check_strides(self, strides, widths) -> tuple:
        owner = type(self).__name__
        if strides is None:
            return tuple(self.STRIDES)
        if isinstance(strides, (str, bytes)) or not isinstance(strides, (list, tuple)) or not strides \
                or any(isinstance(s, bool) or s not in (1, 2) for s in strides):
            raise ValueError(f"{owner}: strides must be a non-empty list of 1s and 2s, got {strides!r}")
        if widths is None and tuple(strides) != tuple(self.STRIDES):
            raise ValueError(f"{owner}: strides {list(strides)} need widths (len(strides) + 1 of them)")
        if widths is not None and len(list(widths)) != len(strides) + 1:
            raise ValueError(f"{owner}: {len(strides)} strides need {len(strides) + 1} widths, "
                             f"got {len(list(widths))}: {list(widths)!r}")
        return tuple(int(s) for s in strides)

    def _expected_depth(self) -> int:
        return len(self.strides) + 1

    def _layers(self, w, in_channels, activation):
        layers = [("stem", ConvBNAct(in_channels, w[0], 3, stride=1, activation=activation))]
        for i, stride in enumerate(self.strides, start=1):
            layers.append((f"block{i}", ds_block(w[i - 1], w[i], stride, activation)))
        return layers

    def width_layers(self) -> list[str]:
        return ["features.stem.conv"] + [
            f"features.block{i}.pw.conv" for i in range(1, len(self.strides) + 1)]


class VGG19BN(ConvNet):
    """VGG-19 with batch norm for 32x32 inputs (CIFAR style).

    Parameters
    ----------
    widths : list of int, optional
        The 16 conv widths ``features.conv{{i}}.conv`` (default ``[64, 64, 128, 128,
        256 x4, 512 x8]``); 2x2 max-pools ``features.pool{{j}}`` follow convs 2, 4,
        8, 12, 16, so a 32x32 input is 1x1 before ``nn.Flatten`` + ``nn.Linear``.{common}"""

    DEFAULT_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512)
    POOL_AFTER = (2, 4, 8, 12, 16)  # 1-based convs followed by a max-pool
    HEAD_POOL = False

    def __init__(self, widths=None, num_classes: int = 10, in_channels: int = 3,
                 activation: str = "relu", dropout: float = 0.0):
        super().__init__(widths, num_classes, in_channels, activation, dropout)

    def _layers(self, w, in_channels, activation):
        layers, prev = [], in_channels
        for i, width in enumerate(w, start=1):
            layers.append((f"conv{i}", ConvBNAct(prev, width, 3, activation=activation)))
            if i in self.POOL_AFTER:
                layers.append((f"pool{self.POOL_AFTER.index(i) + 1}", nn.MaxPool2d(2, 2)))
            prev = width
        return layers

    def width_layers(self) -> list[str]:
        return [f"features.conv{i}.conv" for i in range(1, len(self.widths) + 1)]


class DSCNN(ConvNet):
    """Depthwise-separable CNN for keyword spotting (like DS-CNN-S of "Hello Edge").

    Input: ``[N, in_channels, T, F]`` log-mel features (e.g. T=49 or 98, F=40).

    Parameters
    ----------
    widths : list of int, optional
        5 widths (default all 64): the first conv ``features.stem.conv`` (kernel
        10x4, stride 2x2, padding 5x1: 49x40 -> 25x20), then the pointwise convs
        ``features.block{{i}}.pw.conv`` of 4 stride-1 depthwise-separable blocks.{common}"""

    DEFAULT_WIDTHS = (64, 64, 64, 64, 64)

    def __init__(self, widths=None, num_classes: int = 12, in_channels: int = 1,
                 activation: str = "relu", dropout: float = 0.0):
        super().__init__(widths, num_classes, in_channels, activation, dropout)

    def _layers(self, w, in_channels, activation):
        layers = [("stem", ConvBNAct(in_channels, w[0], (10, 4), stride=(2, 2), padding=(5, 1),
                                     activation=activation))]
        for i in range(1, len(w)):
            layers.append((f"block{i}", ds_block(w[i - 1], w[i], 1, activation)))
        return layers

    def width_layers(self) -> list[str]:
        return ["features.stem.conv"] + [
            f"features.block{i}.pw.conv" for i in range(1, len(self.widths))]


class SmallCNN(ConvNet):
    """Small VGG-style CNN for 8x8 digits (also works on 28x28 inputs).

    Parameters
    ----------
    widths : list of int, optional
        3 widths (default ``[32, 64, 128]``) of ``features.conv{{i}}.conv``: conv1,
        conv2, 2x2 max-pool, conv3 (3x3, padding 1, BN, act), then global average
        pooling, flatten, linear.{common}"""

    DEFAULT_WIDTHS = (32, 64, 128)

    def __init__(self, widths=None, num_classes: int = 10, in_channels: int = 1,
                 activation: str = "relu", dropout: float = 0.0):
        super().__init__(widths, num_classes, in_channels, activation, dropout)

    def _layers(self, w, in_channels, activation):
        return [
            ("conv1", ConvBNAct(in_channels, w[0], 3, activation=activation)),
            ("conv2", ConvBNAct(w[0], w[1], 3, activation=activation)),
            ("pool", nn.MaxPool2d(2, 2)),
            ("conv3", ConvBNAct(w[1], w[2], 3, activation=activation)),
        ]

    def width_layers(self) -> list[str]:
        return ["features.conv1.conv", "features.conv2.conv", "features.conv3.conv"]


for _cls in (MobileNetV1, VGG19BN, DSCNN, SmallCNN):
    _cls.__doc__ = _cls.__doc__.format(common=COMMON_PARAMS)
del _cls
