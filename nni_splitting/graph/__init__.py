"""The graph layer: tracing, neuron groups and the layer-handler registry.

* :mod:`.trace`: :func:`trace_model` (torch.fx, shapes recorded; modules with a handler are leaves)
  and :func:`activation_of_node`.
* :mod:`.group`: :class:`NeuronGroup` / :class:`Consumer`, the coupled set that scoring, selection
  and surgery take.
* :mod:`.handlers`: one :class:`LayerHandler` per layer kind; :mod:`.registry`: :func:`register_layer_handler`,
  :func:`handler_for` (a layer class may also carry its own ``splitting_handler``).
* :mod:`.walk`: :func:`find_neuron_groups`, the walk from each producer along its channels.
"""
from nni_splitting.graph.group import Consumer, NeuronGroup
from nni_splitting.graph.handlers import (CHANNELWISE, DEPTHWISE, NEURONS, PASS, POOL, BatchNormHandler, Conv2dHandler,
                                          LayerHandler, LinearHandler, ParameterFreeHandler, replace_tensor)
from nni_splitting.graph.registry import handler_for, register_layer_handler
from nni_splitting.graph.trace import activation_of_node, trace_model
from nni_splitting.graph.walk import find_neuron_groups

__all__ = [
    "NeuronGroup", "Consumer", "trace_model", "find_neuron_groups", "activation_of_node",
    "LayerHandler", "LinearHandler", "Conv2dHandler", "BatchNormHandler", "ParameterFreeHandler",
    "register_layer_handler", "handler_for", "replace_tensor",
    "NEURONS", "CHANNELWISE", "DEPTHWISE", "PASS", "POOL",
]
