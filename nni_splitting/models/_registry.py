"""The model registry by name and the widths helpers (read, scale, rebuild)."""
from __future__ import annotations

import logging
import math
from typing import Sequence

import torch
from torch import nn

from nni_splitting.models._base import WidthModel, check_widths
from nni_splitting.models._cifar import MobileNetCifar, ResNet20
from nni_splitting.models._cnn import DSCNN, VGG19BN, MobileNetV1, SmallCNN
from nni_splitting.models._small import MLP, RBFNet

__all__ = ["MODELS", "model_class", "current_widths", "widths_of", "rebuild", "default_widths", "scale_widths",
           "build_model"]

logger = logging.getLogger(__name__)


#: Registry of model names to classes.
MODELS: dict[str, type[WidthModel]] = {
    "mobilenet_v1": MobileNetV1, "mobilenet_cifar": MobileNetCifar, "resnet20": ResNet20, "vgg19_bn": VGG19BN,
    "ds_cnn": DSCNN,
    "small_cnn": SmallCNN, "mlp": MLP, "rbf": RBFNet,
}


def model_class(name: str) -> type[WidthModel]:
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
    return list(model_class(name).DEFAULT_WIDTHS)


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
        widths = check_widths(name_or_widths, (), fixed_depth=False, owner="scale_widths")
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
    cls = model_class(name)
    model = cls(widths=widths, **kwargs)
    logger.debug("built %s with widths %s", cls.__name__, model.widths)
    return model
