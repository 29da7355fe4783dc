"""Tracing with torch.fx (shapes recorded) and the activation computed by a node."""
from __future__ import annotations

import copy
import logging
from typing import Optional

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.shape_prop import ShapeProp

from nni_splitting.graph.activations import DEFAULT_SURROGATE_BETA, ActivationSpec, activation_from_function, activation_from_module
from nni_splitting.graph.registry import handler_for

__all__ = ["trace_model", "activation_of_node"]

logger = logging.getLogger(__name__)


class _Tracer(fx.Tracer):
    """torch.fx's tracer, with every module that has a layer handler kept as one call (a leaf)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return handler_for(m) is not None or super().is_leaf_module(m, module_qualified_name)


def trace_model(model: nn.Module, example_input: torch.Tensor) -> fx.GraphModule:
    """Trace a copy of ``model`` with torch.fx, with in-place ops turned off and shapes recorded.

    In-place activations would overwrite the pre-activations the splitting matrix needs, so the copy
    has every ``inplace`` flag cleared. Node shapes are in ``node.meta['tensor_meta']``. Modules
    with a layer handler (:func:`~nni_splitting.graph.registry.register_layer_handler`) are leaves.
    """
    model = copy.deepcopy(model)
    for module in model.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
    try:
        tracer = _Tracer()
        graph = tracer.trace(model)
        graph_module = fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as error:  # fx raises many kinds of errors for untraceable code
        raise ValueError(
            f"torch.fx could not trace {type(model).__name__}: {error}. Splitting needs a model whose "
            "forward has no data-dependent Python control flow."
        ) from error
    for node in graph_module.graph.nodes:
        if node.kwargs.get("inplace") is True:
            node.kwargs = {**node.kwargs, "inplace": False}
    graph_module.recompile()
    graph_module.eval()
    with torch.no_grad():
        ShapeProp(graph_module).propagate(example_input)
    return graph_module


def activation_of_node(graph_module: fx.GraphModule, node: fx.Node,
                       surrogate_beta: float = DEFAULT_SURROGATE_BETA) -> Optional[ActivationSpec]:
    """The activation computed by ``node``, or ``None`` if it is not an elementwise activation."""
    if node.op == "call_module":
        return activation_from_module(graph_module.get_submodule(node.target), surrogate_beta)
    if node.op in ("call_function", "call_method"):
        return activation_from_function(node.target, tuple(node.args), dict(node.kwargs), surrogate_beta)
    return None
