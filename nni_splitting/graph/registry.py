"""The layer-handler registry: which :class:`~nni_splitting.graph.handlers.LayerHandler` answers for a module.

:func:`register_layer_handler` adds a layer kind (subclasses of a registered class use its handler unless
they have their own); :func:`handler_for` finds a module's handler, including one its class declares as
``splitting_handler``. The built-in kinds (Linear, Conv2d, BatchNorm, dropout / identity, pooling) are
registered here.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch.nn as nn

from nni_splitting.common.importing import import_object
from nni_splitting.graph.handlers import (POOL, PASS, BatchNormHandler, Conv2dHandler, LayerHandler, LinearHandler,
                                          ParameterFreeHandler)

__all__ = ["register_layer_handler", "handler_for"]

_HANDLERS: Dict[type, LayerHandler] = {}


def register_layer_handler(cls: type, handler: LayerHandler) -> LayerHandler:
    """Make ``handler`` the handler of module class ``cls`` (and of its subclasses without their own)."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"register_layer_handler needs an nn.Module subclass, got {cls!r}")
    if not isinstance(handler, LayerHandler):
        raise ValueError(f"the handler of {cls.__name__} must be a LayerHandler, got {handler!r}")
    _HANDLERS[cls] = handler
    return handler


def handler_for(module: nn.Module) -> Optional[LayerHandler]:
    """The handler of ``module``'s class (the most specific registered base class), or ``None``.

    A layer class may carry its own: a ``splitting_handler`` class attribute, a :class:`LayerHandler` or the
    import path of one (``"package.module:Handler"``, imported on first use), so that the handler comes
    with the model that uses the layer instead of with whatever module happened to be imported first.
    """
    for cls in type(module).__mro__:
        handler = _HANDLERS.get(cls)
        if handler is not None:
            return handler
        declared = cls.__dict__.get("splitting_handler")
        if declared is not None:
            return register_layer_handler(cls, _declared_handler(cls, declared))
    return None


def _declared_handler(cls: type, declared) -> LayerHandler:
    if isinstance(declared, str):
        declared = import_object(declared, f"splitting_handler of {cls.__name__}")
    if isinstance(declared, type) and issubclass(declared, LayerHandler):
        declared = declared()
    return declared


register_layer_handler(nn.Linear, LinearHandler())
register_layer_handler(nn.Conv2d, Conv2dHandler())
for _bn in (nn.BatchNorm1d, nn.BatchNorm2d):
    register_layer_handler(_bn, BatchNormHandler())
for _cls in (nn.Dropout, nn.Dropout2d, nn.Identity, nn.AlphaDropout):
    register_layer_handler(_cls, ParameterFreeHandler(PASS))
for _cls in (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d):
    register_layer_handler(_cls, ParameterFreeHandler(POOL))
