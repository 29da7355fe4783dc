"""The small models: an MLP and the 1-D RBF network of the paper's toy experiment."""
from __future__ import annotations

import logging
import math
from collections import OrderedDict

import torch
from torch import nn

from nni_splitting.models._base import WidthModel, check_positive_int, make_activation

__all__ = ["MLP", "RBFLayer", "RBFNet"]

logger = logging.getLogger(__name__)


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
        check_positive_int(in_features, "in_features", "MLP")
        check_positive_int(num_classes, "num_classes", "MLP")
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
    #: Its splitting handler comes with the layer (imported when a graph walk first meets one).
    splitting_handler = "nni_splitting.paper.rbf_toy:RBFHandler"

    def __init__(self, num_neurons: int, center_range=(-1.0, 1.0), init_width=None):
        super().__init__()
        check_positive_int(num_neurons, "num_neurons", "RBFLayer")
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
        check_positive_int(num_classes, "num_classes", "RBFNet")
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
