"""Find the splittable neurons of a PyTorch model from its torch.fx graph.

A *neuron group* is one ``nn.Linear`` or ``nn.Conv2d`` (``groups=1``) layer whose output channels
are neurons, together with everything its channels pass through until they are mixed linearly again:

``producer -> [BatchNorm] -> activation -> [BatchNorm | pooling | dropout | flatten | depthwise conv
-> [BatchNorm] -> [activation]] -> consumers`` (Conv2d / Linear input channels).

Splitting a channel duplicates it along this whole path; the consumers get the duplicated channel's
input weights halved. Channels that reach anything else (a residual add, a concat, a reshape, the
model's output, a grouped convolution, ...) are coupled to other channels: such layers are left out
of the candidates and the reason is logged, never silently split.
"""
from __future__ import annotations

import copy
import logging
import math
import operator
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from .activations import DEFAULT_SURROGATE_BETA, ActivationSpec, activation_from_function, activation_from_module

__all__ = ["NeuronGroup", "Consumer", "trace_model", "find_neuron_groups", "activation_of_node"]

logger = logging.getLogger(__name__)

_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d)
_PASS_MODULES = (nn.Dropout, nn.Dropout2d, nn.Identity, nn.AlphaDropout)
_POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_PASS_FUNCTIONS = {F.dropout, F.dropout2d, torch.nn.functional.alpha_dropout}
_POOL_FUNCTIONS = {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
_FLATTEN_FUNCTIONS = {torch.flatten}
_FLATTEN_METHODS = {"flatten", "view", "reshape"}


@dataclass
class Consumer:
    """A layer that takes the group's channels as input features.

    ``block`` is the number of input features per channel: 1 for a Conv2d or a Linear fed directly,
    ``H * W`` for a Linear fed through a flatten of an ``[N, C, H, W]`` tensor.
    """

    module: str
    block: int = 1


@dataclass
class NeuronGroup:
    """The path of one layer's output channels through the network (JSON-able: module and node names).

    Attributes
    ----------
    layer : str
        The producer: the ``named_modules()`` name of the Linear/Conv2d whose outputs are the neurons.
    pre_bn : str or None
        BatchNorm between the producer and the activation (folded: ``c = gamma / sqrt(var + eps)``).
    activation_node : str
        fx node of the activation ``sigma`` (the neuron's nonlinearity).
    depthwise : str or None
        A depthwise conv the activated channels go through (its channel is copied on a split).
    depthwise_bn, depthwise_activation_node : str or None
        BatchNorm and activation after the depthwise conv (part of the neuron when present).
    followers : list of str
        Modules whose channel dimension follows the group and is duplicated on a split
        (BatchNorms after the activation, the depthwise conv and its BatchNorm).
    consumers : list of Consumer
        Layers whose input features are the group's channels.
    """

    layer: str
    kind: str
    input_node: str
    pre_bn: Optional[str]
    preactivation_node: str
    activation_node: str
    depthwise: Optional[str] = None
    depthwise_bn: Optional[str] = None
    depthwise_preactivation_node: Optional[str] = None
    depthwise_activation_node: Optional[str] = None
    followers: List[str] = field(default_factory=list)
    consumers: List[Consumer] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "NeuronGroup":
        data = dict(data)
        data["consumers"] = [Consumer(**c) for c in data.get("consumers", [])]
        return cls(**data)


class _Excluded(Exception):
    """Raised while walking a group's path: the layer is not a candidate, for the reason given."""


def trace_model(model: nn.Module, example_input: torch.Tensor) -> fx.GraphModule:
    """Trace a copy of ``model`` with torch.fx, with in-place ops turned off and shapes recorded.

    In-place activations would overwrite the pre-activations the splitting matrix needs, so the copy
    has every ``inplace`` flag cleared. Node shapes are in ``node.meta['tensor_meta']``.
    """
    model = copy.deepcopy(model)
    for module in model.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
    try:
        graph_module = fx.symbolic_trace(model)
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


def _shape(node: fx.Node) -> Tuple[int, ...]:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else ()


def _describe(graph_module: fx.GraphModule, node: fx.Node) -> str:
    if node.op == "call_module":
        return f"{node.target} ({type(graph_module.get_submodule(node.target)).__name__})"
    if node.op == "output":
        return "the model's output"
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    if node.target in (operator.add, operator.iadd, torch.add):
        return f"'{node.name}' (residual add)"
    if node.target in (torch.cat, torch.concat, torch.stack):
        return f"'{node.name}' (concat)"
    return f"'{node.name}' ({target})"


class _GroupWalker:
    """Walks the graph from one producer node and fills a :class:`NeuronGroup` (one job per method)."""

    def __init__(self, graph_module: fx.GraphModule, surrogate_beta: float):
        self.gm = graph_module
        self.beta = surrogate_beta

    def _module(self, node: fx.Node) -> Optional[nn.Module]:
        return self.gm.get_submodule(node.target) if node.op == "call_module" else None

    def _is_pass(self, node: fx.Node) -> bool:
        module = self._module(node)
        return isinstance(module, _PASS_MODULES) or (node.op == "call_function" and node.target in _PASS_FUNCTIONS)

    def _is_pool(self, node: fx.Node) -> bool:
        module = self._module(node)
        return isinstance(module, _POOL_MODULES) or (node.op == "call_function" and node.target in _POOL_FUNCTIONS)

    def _flatten_block(self, node: fx.Node, source: fx.Node) -> Optional[int]:
        """Features per channel if ``node`` flattens ``[N, C, *S]`` into ``[N, C * prod(S)]``."""
        module = self._module(node)
        is_flatten = (isinstance(module, nn.Flatten) or (node.op == "call_function" and node.target in _FLATTEN_FUNCTIONS)
                      or (node.op == "call_method" and node.target in _FLATTEN_METHODS))
        if not is_flatten:
            return None
        before, after = _shape(source), _shape(node)
        if len(before) >= 2 and len(after) == 2 and after[0] == before[0] and after[1] == math.prod(before[1:]):
            return math.prod(before[2:])
        return None

    def _single_user(self, node: fx.Node, what: str) -> fx.Node:
        users = list(node.users)
        if len(users) != 1:
            names = ", ".join(_describe(self.gm, u) for u in users) or "nothing"
            raise _Excluded(f"{what} is used by {len(users)} ops ({names}) before its activation")
        return users[0]

    def _to_activation(self, start: fx.Node, what: str) -> Tuple[Optional[str], fx.Node, fx.Node, ActivationSpec]:
        """Follow ``start`` through an optional BatchNorm to the activation: (bn, pre-activation, activation node)."""
        bn, node = None, start
        while True:
            user = self._single_user(node, what)
            module = self._module(user)
            if isinstance(module, _BATCHNORM) and bn is None:
                bn, node = user.target, user
                continue
            if self._is_pass(user):
                node = user
                continue
            spec = activation_of_node(self.gm, user, self.beta)
            if spec is None:
                raise _Excluded(
                    f"{what} reaches {_describe(self.gm, user)} with no nonlinearity in between: its channels are "
                    "either coupled to others or linear (splitting matrix identically zero)"
                )
            return bn, node, user, spec

    def walk(self, producer: fx.Node) -> NeuronGroup:
        module = self._module(producer)
        kind = "linear" if isinstance(module, nn.Linear) else "conv"
        input_node = producer.args[0]
        if kind == "linear" and len(_shape(input_node)) != 2:
            raise _Excluded(f"its input has shape {list(_shape(input_node))}; only [batch, features] inputs are supported")
        pre_bn, preact, act, _ = self._to_activation(producer, f"the output of {producer.target}")
        group = NeuronGroup(producer.target, kind, input_node.name, pre_bn, preact.name, act.name)
        if pre_bn is not None:
            group.followers.append(pre_bn)
        self._after_activation(group, act, block=None, after_depthwise=False)
        if not group.consumers:
            raise _Excluded("its channels reach no Linear/Conv2d consumer")
        return group

    def _after_activation(self, group: NeuronGroup, node: fx.Node, block: Optional[int], after_depthwise: bool) -> None:
        """Visit every user of an activated channel tensor: pass-throughs, followers, consumers."""
        for user in node.users:
            module = self._module(user)
            if user.op == "call_module" and user.args[0] is not node:
                raise _Excluded(f"its channels enter {_describe(self.gm, user)} other than as its input")
            if isinstance(module, _BATCHNORM) and block is None:
                group.followers.append(user.target)
                self._after_activation(group, user, block, after_depthwise)
            elif self._is_pass(user) or (self._is_pool(user) and block is None):
                self._after_activation(group, user, block, after_depthwise)
            elif block is None and self._flatten_block(user, node) is not None:
                self._after_activation(group, user, self._flatten_block(user, node), after_depthwise)
            elif isinstance(module, nn.Conv2d) and module.groups == 1 and block is None:
                group.consumers.append(Consumer(user.target, 1))
            elif isinstance(module, nn.Linear):
                if block is None and len(_shape(node)) != 2:
                    raise _Excluded(f"its channels enter {user.target} with shape {list(_shape(node))}")
                group.consumers.append(Consumer(user.target, block or 1))
            elif isinstance(module, nn.Conv2d) and self._is_depthwise(module) and block is None and not after_depthwise:
                self._through_depthwise(group, node, user)
            else:
                raise _Excluded(f"its channels reach {_describe(self.gm, user)}")

    @staticmethod
    def _is_depthwise(module: nn.Conv2d) -> bool:
        return module.groups == module.in_channels == module.out_channels and module.groups > 1

    def _through_depthwise(self, group: NeuronGroup, node: fx.Node, depthwise: fx.Node) -> None:
        if len(node.users) != 1 or group.depthwise is not None:
            raise _Excluded(f"its activated channels feed the depthwise conv {depthwise.target} and other ops too")
        group.depthwise = depthwise.target
        group.followers.append(depthwise.target)
        bn, current = None, depthwise
        # Optional BatchNorm, then an optional activation: both belong to the neuron.
        users = list(current.users)
        if len(users) == 1 and isinstance(self._module(users[0]), _BATCHNORM):
            bn, current = users[0].target, users[0]
            group.depthwise_bn = bn
            group.followers.append(bn)
        users = list(current.users)
        if len(users) == 1 and activation_of_node(self.gm, users[0], self.beta) is not None:
            group.depthwise_preactivation_node = current.name
            group.depthwise_activation_node = users[0].name
            current = users[0]
        self._after_activation(group, current, block=None, after_depthwise=True)


def find_neuron_groups(graph_module: fx.GraphModule, layers: Optional[List[str]] = None,
                       surrogate_beta: float = DEFAULT_SURROGATE_BETA) -> Tuple[Dict[str, NeuronGroup], Dict[str, str]]:
    """All neuron groups of a traced model, and the layers left out with the reason why.

    Parameters
    ----------
    graph_module : torch.fx.GraphModule
        From :func:`trace_model` (shapes recorded).
    layers : list of str, optional
        Only consider these producer names (all Linear/Conv2d layers by default).

    Returns
    -------
    groups : dict
        ``{layer name: NeuronGroup}`` in graph order.
    excluded : dict
        ``{layer name: reason}`` for every Linear/Conv2d that is not a candidate.
    """
    walker = _GroupWalker(graph_module, surrogate_beta)
    calls: Dict[str, int] = {}
    for node in graph_module.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    groups: Dict[str, NeuronGroup] = {}
    excluded: Dict[str, str] = {}
    for node in graph_module.graph.nodes:
        if node.op != "call_module":
            continue
        module = graph_module.get_submodule(node.target)
        if not isinstance(module, (nn.Linear, nn.Conv2d)) or (layers is not None and node.target not in layers):
            continue
        try:
            if calls[node.target] > 1:
                raise _Excluded(f"it is called {calls[node.target]} times in forward (shared weights)")
            if isinstance(module, nn.Conv2d) and module.groups != 1:
                raise _Excluded(
                    f"it is a grouped/depthwise conv (groups={module.groups}): its channels are split together "
                    "with the layer that feeds it"
                )
            groups[node.target] = walker.walk(node)
        except _Excluded as reason:
            excluded[node.target] = str(reason)
            logger.info("not a splitting candidate: %s: %s", node.target, reason)
    if layers is not None:
        unknown = sorted(set(layers) - set(groups) - set(excluded))
        if unknown:
            raise ValueError(f"unknown layer name(s) {unknown}: not Linear/Conv2d modules called in forward")
    return groups, excluded
