"""Width-configurable starting architectures for splitting steepest descent.

Each model is built from per-layer widths, so a grown network can be rebuilt
from ``current_widths(model)`` alone; ``model.width_layers()`` names (as in
``named_modules()``) the layers whose output sizes are the widths.  Models use
standard modules (plus :class:`RBFLayer`) and trace with ``torch.fx``.  CNNs are
``features`` (named blocks: :class:`ConvBNAct` with ``conv``/``bn``/``act``, or
depthwise-separable blocks with ``dw``/``pw``) then ``classifier`` (``pool``,
``flatten``, ``dropout``, ``fc``).  When a width layer grows, its consumers (and
the next depthwise conv) must grow too; that is up to the splitting code.
"""

from __future__ import annotations

import logging
import math
import operator
from collections import OrderedDict
from typing import Iterable, Sequence

import torch
from torch import nn

__all__ = [
    "ACTIVATIONS", "MODELS", "ConvBNAct", "WidthModel", "MobileNetV1", "VGG19BN", "DSCNN",
    "SmallCNN", "MLP", "RBFLayer", "RBFNet", "make_activation", "current_widths", "widths_of", "rebuild",
    "default_widths", "scale_widths", "build_model",
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


def _check_widths(widths, default: Sequence[int], fixed_depth: bool, owner: str) -> list[int]:
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


def _check_positive_int(value, what: str, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{owner}: {what} must be a positive int, got {value!r}")
    return value


def _init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan-out) init for convolutions, ones / zeros for batch norm."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
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


def _ds_block(in_channels: int, out_channels: int, stride, activation: str) -> nn.Sequential:
    """Depthwise 3x3 block ``dw`` then pointwise 1x1 block ``pw``."""
    return nn.Sequential(OrderedDict([
        ("dw", ConvBNAct(in_channels, in_channels, 3, stride=stride, groups=in_channels,
                         activation=activation)),
        ("pw", ConvBNAct(in_channels, out_channels, 1, activation=activation)),
    ]))


def _head(in_features: int, num_classes: int, pool: bool, dropout: float) -> nn.Sequential:
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
        self.widths: list[int] = _check_widths(widths, self.DEFAULT_WIDTHS, self.FIXED_DEPTH,
                                               type(self).__name__)
        self.config: dict = dict(config)

    def width_layers(self) -> list[str]:
        """``named_modules()`` names of the width layers, one per entry of ``widths``, in order."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"widths={self.widths}"


class _ConvNet(WidthModel):
    """Shared constructor and forward of the CNNs (``features`` then ``classifier``).

    Subclasses implement ``_layers(widths, in_channels, activation)`` (the named
    blocks of ``features``) and set ``HEAD_POOL``.
    """

    HEAD_POOL = True

    def __init__(self, widths, num_classes: int, in_channels: int, activation: str, dropout: float):
        owner = type(self).__name__
        _check_positive_int(num_classes, "num_classes", owner)
        _check_positive_int(in_channels, "in_channels", owner)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
                or not 0.0 <= dropout < 1.0:
            raise ValueError(f"{owner}: dropout must be in [0, 1), got {dropout!r}")
        make_activation(activation)  # validate before building anything
        super().__init__(widths, num_classes=num_classes, in_channels=in_channels,
                         activation=activation, dropout=float(dropout))
        self.features = nn.Sequential(OrderedDict(self._layers(self.widths, in_channels, activation)))
        self.classifier = _head(self.widths[-1], num_classes, self.HEAD_POOL, float(dropout))
        _init_weights(self)

    def _layers(self, widths: list[int], in_channels: int, activation: str) -> list:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


_COMMON_PARAMS = """
    num_classes, in_channels : int, optional
        Number of classes and input channels.
    activation : str, optional
        Activation name (default ``"relu"``), see :func:`make_activation`.
    dropout : float, optional
        Dropout before the final linear layer (default 0: no dropout module).
"""


class MobileNetV1(_ConvNet):
    """MobileNetV1 for 32x32 inputs (CIFAR variant: first conv with stride 1).

    Parameters
    ----------
    widths : list of int, optional
        14 widths (default ``[32, 64, 128, 128, 256, 256, 512 x6, 1024, 1024]``): the
        first 3x3 conv ``features.stem.conv``, then the pointwise convs
        ``features.block{{i}}.pw.conv`` of the 13 blocks (depthwise strides
        ``1,2,1,2,1,2,1,1,1,1,1,2,1``).{common}"""

    DEFAULT_WIDTHS = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)
    STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)

    def __init__(self, widths=None, num_classes: int = 10, in_channels: int = 3,
                 activation: str = "relu", dropout: float = 0.0):
        super().__init__(widths, num_classes, in_channels, activation, dropout)

    def _layers(self, w, in_channels, activation):
        layers = [("stem", ConvBNAct(in_channels, w[0], 3, stride=1, activation=activation))]
        for i, stride in enumerate(self.STRIDES, start=1):
            layers.append((f"block{i}", _ds_block(w[i - 1], w[i], stride, activation)))
        return layers

    def width_layers(self) -> list[str]:
        return ["features.stem.conv"] + [
            f"features.block{i}.pw.conv" for i in range(1, len(self.STRIDES) + 1)]


class VGG19BN(_ConvNet):
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


class DSCNN(_ConvNet):
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
            layers.append((f"block{i}", _ds_block(w[i - 1], w[i], 1, activation)))
        return layers

    def width_layers(self) -> list[str]:
        return ["features.stem.conv"] + [
            f"features.block{i}.pw.conv" for i in range(1, len(self.widths))]


class SmallCNN(_ConvNet):
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
    _cls.__doc__ = _cls.__doc__.format(common=_COMMON_PARAMS)
del _cls


class MLP(WidthModel):
    """Multi-layer perceptron: flatten, hidden linear layers with activations, classifier.

    Parameters
    ----------
    widths : list of int, optional
        Hidden widths, one or more (default ``[64]``); width layers ``features.fc{i}``.
    in_features, num_classes : int, optional
        Input features after flattening (default 64: 8x8 digits) and classes (10).
    activation : str, optional
        Activation name (default ``"relu"``).
    """

    DEFAULT_WIDTHS = (64,)
    FIXED_DEPTH = False

    def __init__(self, widths=None, in_features: int = 64, num_classes: int = 10,
                 activation: str = "relu"):
        _check_positive_int(in_features, "in_features", "MLP")
        _check_positive_int(num_classes, "num_classes", "MLP")
        make_activation(activation)
        super().__init__(widths, in_features=in_features, num_classes=num_classes,
                         activation=activation)
        layers: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
        prev = in_features
        for i, w in enumerate(self.widths, start=1):
            layers += [(f"fc{i}", nn.Linear(prev, w)), (f"act{i}", make_activation(activation))]
            prev = w
        self.features = nn.Sequential(OrderedDict(layers))
        self.classifier = nn.Sequential(OrderedDict([("fc", nn.Linear(prev, num_classes))]))

    def width_layers(self) -> list[str]:
        return [f"features.fc{i}" for i in range(1, len(self.widths) + 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class RBFLayer(nn.Module):
    """Gaussian radial basis functions on a 1-D input: ``[N, 1] -> [N, n]``.

    Neuron ``i`` computes ``exp(-(x - mu_i)^2 / (2 s_i^2))`` with learned centre
    ``mu_i = centers[i]`` and width ``s_i = exp(log_widths[i])``.

    Parameters
    ----------
    num_neurons : int
        Number of neurons ``n``.
    center_range : tuple of float, optional
        Centres start at the midpoints of ``n`` equal cells of this interval (default (-1, 1)).
    init_width : float, optional
        Initial ``s_i``; ``None`` (default) means ``(hi - lo) / (2 n)``.
    """

    in_features = 1

    def __init__(self, num_neurons: int, center_range=(-1.0, 1.0), init_width=None):
        super().__init__()
        _check_positive_int(num_neurons, "num_neurons", "RBFLayer")
        lo, hi = (float(v) for v in center_range)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"RBFLayer: center_range must be finite with lo < hi, got {center_range!r}")
        if init_width is None:
            init_width = (hi - lo) / (2 * num_neurons)
        if isinstance(init_width, bool) or not isinstance(init_width, (int, float)) \
                or not math.isfinite(init_width) or init_width <= 0:
            raise ValueError(f"RBFLayer: init_width must be a positive number, got {init_width!r}")
        cells = (torch.arange(num_neurons, dtype=torch.float32) + 0.5) / num_neurons
        self.centers = nn.Parameter(lo + (hi - lo) * cells)
        self.log_widths = nn.Parameter(torch.full((num_neurons,), math.log(init_width)))

    @property
    def out_features(self) -> int:
        """Number of neurons, read from the parameter shape."""
        return self.centers.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = torch.exp(self.log_widths)
        return torch.exp(-((x - self.centers) ** 2) / (2.0 * scale ** 2))

    def extra_repr(self) -> str:
        return f"in_features=1, out_features={self.out_features}"


class RBFNet(WidthModel):
    """1-D RBF network of the paper's toy experiment: ``f(x) = sum_i a_i phi_i(x)``.

    Parameters
    ----------
    widths : list of int, optional
        ``[n_neurons]`` (default ``[1]``); the width layer is ``rbf``.
    num_classes, in_features : int, optional
        Output dimension (default 1); input dimension (only 1 is supported).
    center_range, init_width : optional
        Initialisation of the :class:`RBFLayer`.
    bias : bool, optional
        Bias of ``output = nn.Linear(n, num_classes)`` whose weights are the ``a_i`` (default False).
    """

    DEFAULT_WIDTHS = (1,)

    def __init__(self, widths=None, num_classes: int = 1, in_features: int = 1,
                 center_range=(-1.0, 1.0), init_width=None, bias: bool = False):
        _check_positive_int(num_classes, "num_classes", "RBFNet")
        if in_features != 1:
            raise ValueError(f"RBFNet: only 1-D inputs are supported, got in_features={in_features!r}")
        super().__init__(widths, num_classes=num_classes, in_features=in_features,
                         center_range=tuple(center_range), init_width=init_width, bias=bias)
        self.rbf = RBFLayer(self.widths[0], center_range=center_range, init_width=init_width)
        self.output = nn.Linear(self.widths[0], num_classes, bias=bias)

    def width_layers(self) -> list[str]:
        return ["rbf"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.rbf(x))


#: Registry of model names to classes.
MODELS: dict[str, type[WidthModel]] = {
    "mobilenet_v1": MobileNetV1, "vgg19_bn": VGG19BN, "ds_cnn": DSCNN,
    "small_cnn": SmallCNN, "mlp": MLP, "rbf": RBFNet,
}


def _model_class(name: str) -> type[WidthModel]:
    key = name.lower().replace("-", "_") if isinstance(name, str) else None
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {sorted(MODELS)}")
    return MODELS[key]


def current_widths(model: nn.Module) -> list[int]:
    """Read the widths back from the module shapes.

    Parameters
    ----------
    model : torch.nn.Module
        A model with a ``width_layers()`` method (else ValueError).

    Returns
    -------
    list of int
        ``out_channels`` / ``out_features`` (else ``weight.shape[0]``) of each
        module named by ``model.width_layers()``.
    """
    if not callable(getattr(model, "width_layers", None)):
        raise ValueError(f"model of type {type(model).__name__!r} has no width_layers() method")
    return widths_of(model, model.width_layers())


def widths_of(model: nn.Module, width_layers: Sequence[str]) -> list[int]:
    """Output sizes (``out_channels``/``out_features``, else ``weight.shape[0]``) of the named modules."""
    widths = []
    for name in width_layers:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"width layer {name!r} not found in {type(model).__name__}") from None
        value = getattr(module, "out_channels", None) or getattr(module, "out_features", None)
        if value is None:
            weight = getattr(module, "weight", None)
            if not isinstance(weight, torch.Tensor):
                raise ValueError(f"cannot read the width of layer {name!r} ({type(module).__name__})")
            value = weight.shape[0]
        widths.append(int(value))
    return widths


def rebuild(model: WidthModel, widths=None) -> WidthModel:
    """A fresh (re-initialised) model of the class and config of ``model``.

    ``widths`` defaults to ``current_widths(model)``.
    """
    if not isinstance(model, WidthModel):
        raise ValueError(f"expected a WidthModel, got {type(model).__name__!r}")
    return type(model)(widths=current_widths(model) if widths is None else widths, **model.config)


def default_widths(name: str) -> list[int]:
    """Default (full-size) widths of the registered model ``name`` (ValueError if unknown)."""
    return list(_model_class(name).DEFAULT_WIDTHS)


def scale_widths(name_or_widths, multiplier: float) -> list[int]:
    """Widths times ``multiplier``, rounded, each at least 1.

    Parameters
    ----------
    name_or_widths : str or sequence of int
        A model name (its default widths are scaled) or explicit widths.
    multiplier : float
        Positive finite factor (e.g. 0.25 for a narrow seed network).
    """
    if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) \
            or not math.isfinite(multiplier) or multiplier <= 0:
        raise ValueError(f"multiplier must be a positive finite number, got {multiplier!r}")
    if isinstance(name_or_widths, str):
        widths = default_widths(name_or_widths)
    else:
        widths = _check_widths(name_or_widths, (), fixed_depth=False, owner="scale_widths")
    return [max(1, int(round(w * multiplier))) for w in widths]


def build_model(name: str, widths=None, **kwargs) -> WidthModel:
    """Build a registered model by name.

    Parameters
    ----------
    name : str
        A key of :data:`MODELS` (ValueError otherwise).
    widths : list of int, optional
        Per-layer widths (``None``: the default); ValueError for a wrong length or entry.
    **kwargs
        Other constructor arguments (``num_classes``, ``in_channels``, ``activation``...).
    """
    cls = _model_class(name)
    model = cls(widths=widths, **kwargs)
    logger.debug("built %s with widths %s", cls.__name__, model.widths)
    return model
