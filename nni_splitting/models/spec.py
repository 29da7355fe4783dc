"""The seed of a growth experiment named in a config: a registered model, the user's own factory or a
torchvision model, optionally with trained weights.

``model:`` takes a name of :data:`~nni_splitting.models.MODELS` (``mobilenet_v1``), an importable
factory (``my_package.nets:build``, called with ``model_args``) or a torchvision model
(``torchvision.models.resnet18``, ``model_args`` e.g. ``{num_classes: 10}``). ``weights:`` is a
``state_dict`` file read with ``weights_only=True``. Every bad input is a ``ValueError`` that says
what is wrong and what to do.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

import torch
import torch.fx as fx
from torch import nn

from nni_splitting.common.importing import import_callable, is_import_path
from nni_splitting.models._registry import MODELS, build_model

__all__ = ["is_registered", "build_seed", "load_weights", "check_traceable"]


def is_registered(spec: str) -> bool:
    """True when ``spec`` names a model of :data:`MODELS` (built from a widths list)."""
    return isinstance(spec, str) and spec.lower().replace("-", "_") in MODELS


def build_seed(spec: str, model_args: Optional[Mapping[str, Any]] = None, weights: Optional[str] = None) -> nn.Module:
    """The network named by ``spec`` (see the module docstring), built with ``model_args``, weights loaded.

    Raises
    ------
    ValueError
        ``spec`` is neither registered nor importable, the factory fails or returns no ``nn.Module``,
        or ``weights`` does not fit the model.
    """
    args = dict(model_args or {})
    if is_registered(spec):
        model = build_model(spec, **args)
    elif is_import_path(spec):
        factory = import_callable(spec, "model")
        try:
            model = factory(**args)
        except Exception as error:
            raise ValueError(f"model {spec!r} failed with model_args {args}: {type(error).__name__}: {error}") from error
        if not isinstance(model, nn.Module):
            raise ValueError(f"model {spec!r} returned a {type(model).__name__}, not a torch.nn.Module")
    else:
        raise ValueError(f"unknown model {spec!r}: give a registered name ({sorted(MODELS)}), an importable "
                         f"factory 'package.module:function' or a torchvision model 'torchvision.models.resnet18'")
    if weights:
        load_weights(model, weights)
    return model


def load_weights(model: nn.Module, path: str) -> nn.Module:
    """Load a ``state_dict`` file (or a checkpoint dict holding one under ``state_dict``) into ``model``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file {str(path)!r} does not exist")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"weights file {str(path)!r} is unreadable with weights_only=True "
                         f"({type(error).__name__}: {error}); save it with torch.save(model.state_dict(), path)") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights file {str(path)!r} holds a {type(state).__name__}, not a state_dict of tensors")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        details = [f"{len(missing)} missing (e.g. {missing[:3]})" if missing else "",
                   f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})" if unexpected else "",
                   "shapes differ: " + ", ".join(f"{k} {tuple(state[k].shape)} vs the model's {tuple(expected[k].shape)}"
                                                 for k in wrong[:3]) if wrong else ""]
        raise ValueError(f"weights file {str(path)!r} does not match {type(model).__name__}: "
                         + "; ".join(d for d in details if d))
    model.load_state_dict(state)
    return model


class _PathTracer(fx.Tracer):
    """torch.fx's tracer, remembering the module being traced (for the error message)."""

    def __init__(self):
        super().__init__()
        self.failed_in = None  # the innermost module whose forward raised

    def call_module(self, m: nn.Module, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = self.path_of_module(m)
            raise


def check_traceable(model: nn.Module) -> fx.GraphModule:
    """``torch.fx.symbolic_trace`` of ``model``; a ``ValueError`` naming the module whose ``forward``
    fx could not trace (and the error), with what to do about it."""
    tracer = _PathTracer()
    try:
        graph = tracer.trace(model)
    except Exception as error:
        where = tracer.failed_in or ""
        where = f"module {where!r} ({type(model.get_submodule(where)).__name__})" if where else \
            f"the top-level forward of {type(model).__name__}"
        raise ValueError(
            f"torch.fx cannot trace {type(model).__name__}: it failed in {where}: {type(error).__name__}: {error}. "
            f"Splitting reads the network's graph: remove data-dependent Python control flow (if / for on tensor "
            f"values, .item(), len() of a tensor) from that forward, or wrap it with torch.fx.wrap so it stays "
            f"one call") from error
    return fx.GraphModule(tracer.root, graph, type(model).__name__)
