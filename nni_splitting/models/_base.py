"""Building blocks of the width models: activations, validation, ConvBNAct, the WidthModel and ConvNet bases."""
from __future__ import annotations

import logging
import operator
from collections import OrderedDict
from typing import Iterable, Sequence

import torch
from torch import nn

__all__ = [
    "ACTIVATIONS", "make_activation", "check_widths", "check_positive_int", "init_weights", "ConvBNAct", "ds_block",
    "head", "WidthModel", "ConvNet", "COMMON_PARAMS",
]

logger = logging.getLogger(__name__)

#: Activation names accepted by the ``activation`` argument of every model.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "tanh": nn.Tanh,
    "softplus": nn.Softplus, "gelu": nn.GELU, "sigmoid": nn.Sigmoid, "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
}


def make_activation(name: str) -> nn.Module:
    """Return a new (not in-place) activation module.

    Parameters
    ----------
    name : str
        A key of :data:`ACTIVATIONS` (case-insensitive); ValueError otherwise.
    """
    key = name.lower() if isinstance(name, str) else None
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[key]()


def check_widths(widths, default: Sequence[int], fixed_depth: bool, owner: str) -> list[int]:
    """Validate ``widths`` (``None`` means ``default``) and return a list of int."""
    if widths is None:
        return [int(w) for w in default]
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Iterable):
        raise ValueError(f"{owner}: widths must be a sequence of positive ints, got {widths!r}")
    widths = list(widths)
    out = []
    for w in widths:
        try:
            if isinstance(w, bool):
                raise TypeError
            w_int = operator.index(w)
        except TypeError:
            raise ValueError(f"{owner}: widths must be positive ints, got {w!r} in {widths!r}") from None
        if w_int <= 0:
            raise ValueError(f"{owner}: widths must be positive, got {w!r} in {widths!r}")
        out.append(int(w_int))
    if fixed_depth and len(out) != len(default):
        raise ValueError(f"{owner}: expected {len(default)} widths, got {len(out)}: {out!r}")
    if not out:
        raise ValueError(f"{owner}: widths must not be empty, got {widths!r}")
    return out


def check_positive_int(value, what: str, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{owner}: {what} must be a positive int, got {value!r}")
    return value


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan-out) init for convolutions (4-D weights), ones / zeros for batch norm (running stats)."""
    for m in model.modules():
        weight = getattr(m, "weight", None)
        if not isinstance(weight, torch.Tensor):
            continue
        if weight.dim() == 4:
            nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif getattr(m, "running_var", None) is not None and weight.dim() == 1:
            nn.init.ones_(weight)
            nn.init.zeros_(m.bias)


class ConvBNAct(nn.Sequential):
    """``conv`` (``nn.Conv2d``, no bias) -> ``bn`` (``nn.BatchNorm2d``) -> ``act``.

    Arguments are those of ``nn.Conv2d`` plus ``activation`` (a name, see
    :func:`make_activation`); ``padding=None`` means ``kernel_size // 2``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1,
                 padding=None, groups: int = 1, activation: str = "relu"):
        if padding is None:
            padding = (kernel_size // 2 if isinstance(kernel_size, int)
                       else tuple(k // 2 for k in kernel_size))
        super().__init__(OrderedDict([
            ("conv", nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                               padding=padding, groups=groups, bias=False)),
            ("bn", nn.BatchNorm2d(out_channels)),
            ("act", make_activation(activation)),
        ]))


def ds_block(in_channels: int, out_channels: int, stride, activation: str) -> nn.Sequential:
    """Depthwise 3x3 block ``dw`` then pointwise 1x1 block ``pw``."""
    return nn.Sequential(OrderedDict([
        ("dw", ConvBNAct(in_channels, in_channels, 3, stride=stride, groups=in_channels,
                         activation=activation)),
        ("pw", ConvBNAct(in_channels, out_channels, 1, activation=activation)),
    ]))


def head(in_features: int, num_classes: int, pool: bool, dropout: float) -> nn.Sequential:
    """Classifier: optional global average ``pool``, ``flatten``, optional ``dropout``, ``fc``."""
    layers = [("pool", nn.AdaptiveAvgPool2d(1))] if pool else []
    layers.append(("flatten", nn.Flatten()))
    if dropout:
        layers.append(("dropout", nn.Dropout(dropout)))
    layers.append(("fc", nn.Linear(in_features, num_classes)))
    return nn.Sequential(OrderedDict(layers))


class WidthModel(nn.Module):
    """Base class of the width-configurable models.

    ``self.widths`` holds the widths given at construction (stale once external
    code swaps width layers: use :func:`current_widths`); ``self.config`` holds
    the other constructor arguments, so ``type(model)(widths=current_widths(model),
    **model.config)`` (:func:`rebuild`) rebuilds the architecture.  Subclasses set
    ``DEFAULT_WIDTHS``, ``FIXED_DEPTH`` (``widths`` must have
    ``len(DEFAULT_WIDTHS)`` entries) and implement :meth:`width_layers`.
    """

    DEFAULT_WIDTHS: tuple[int, ...] = ()
    FIXED_DEPTH: bool = True

    def __init__(self, widths, **config):
        super().__init__()
        fixed = self.FIXED_DEPTH and self._expected_depth() == len(self.DEFAULT_WIDTHS)
        self.widths: list[int] = check_widths(widths, self.DEFAULT_WIDTHS, fixed, type(self).__name__)
        self.config: dict = dict(config)

    def _expected_depth(self) -> int:
        """Entries ``widths`` must have when ``FIXED_DEPTH`` (a subclass whose depth is configurable checks it)."""
        return len(self.DEFAULT_WIDTHS)

    def width_layers(self) -> list[str]:
        """``named_modules()`` names of the width layers, one per entry of ``widths``, in order."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"widths={self.widths}"


class ConvNet(WidthModel):
    """Shared constructor and forward of the CNNs (``features`` then ``classifier``).

    Subclasses implement ``_layers(widths, in_channels, activation)`` (the named
    blocks of ``features``) and set ``HEAD_POOL``.
    """

    HEAD_POOL = True

    def __init__(self, widths, num_classes: int, in_channels: int, activation: str, dropout: float):
        owner = type(self).__name__
        check_positive_int(num_classes, "num_classes", owner)
        check_positive_int(in_channels, "in_channels", owner)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
                or not 0.0 <= dropout < 1.0:
            raise ValueError(f"{owner}: dropout must be in [0, 1), got {dropout!r}")
        make_activation(activation)  # validate before building anything
        super().__init__(widths, num_classes=num_classes, in_channels=in_channels,
                         activation=activation, dropout=float(dropout))
        self.features = nn.Sequential(OrderedDict(self._layers(self.widths, in_channels, activation)))
        self.classifier = head(self._head_width(), num_classes, self.HEAD_POOL, float(dropout))
        init_weights(self)

    def _head_width(self) -> int:
        """Channels that reach the classifier (the last width unless a subclass says otherwise)."""
        return self.widths[-1]

    def _layers(self, widths: list[int], in_channels: int, activation: str) -> list:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


COMMON_PARAMS = """
    num_classes, in_channels : int, optional
        Number of classes and input channels.
    activation : str, optional
        Activation name (default ``"relu"``), see :func:`make_activation`.
    dropout : float, optional
        Dropout before the final linear layer (default 0: no dropout module).
"""
