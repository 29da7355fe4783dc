"""Find the splittable neurons of a PyTorch model from its torch.fx graph.

A *neuron group* is one layer whose handler's role is ``NEURONS`` (``nn.Linear``, ``nn.Conv2d`` with
``groups=1``, a registered kind) whose output channels are neurons, together with everything its channels pass through until they are mixed linearly again:

``producer -> [BatchNorm] -> activation -> [BatchNorm | pooling | dropout | flatten | depthwise conv
-> [BatchNorm] -> [activation]] -> consumers`` (Conv2d / Linear input channels).

Splitting a channel duplicates it along this whole path; the consumers get the duplicated channel's
input weights halved. Channels that reach anything else (a residual add, a concat, a reshape, the
model's output, a grouped convolution, ...) are coupled to other channels: such layers are left out
of the candidates and the reason is logged, never silently split. What each module does to the
channels is its layer handler's role (:mod:`nni_splitting.graph.handlers`), not a check here.
"""
from __future__ import annotations

import logging
import math
import operator
from typing import Dict, List, Optional, Tuple

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from nni_splitting.graph.activations import DEFAULT_SURROGATE_BETA, ActivationSpec
from nni_splitting.graph.group import Consumer, Excluded, NeuronGroup
from nni_splitting.graph.handlers import CHANNELWISE, DEPTHWISE, NEURONS, PASS, POOL, LayerHandler
from nni_splitting.graph.registry import handler_for
from nni_splitting.graph.trace import activation_of_node

__all__ = ["find_neuron_groups"]

logger = logging.getLogger(__name__)

# Functions traced by fx (modules are the handlers' job: nni_splitting.graph.handlers).
_PASS_FUNCTIONS = {F.dropout, F.dropout2d, torch.nn.functional.alpha_dropout}
_POOL_FUNCTIONS = {F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
_FLATTEN_FUNCTIONS = {torch.flatten}
_FLATTEN_METHODS = {"flatten", "view", "reshape"}


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
    """Walks the graph from one producer node and fills a :class:`NeuronGroup` (one job per method).

    Every module question goes to the module's layer handler (its role, whether and how it consumes
    the channels); only parameter-free functions (dropout, pooling, flatten) are recognized here.
    """

    def __init__(self, graph_module: fx.GraphModule, surrogate_beta: float):
        self.gm = graph_module
        self.beta = surrogate_beta

    def _module(self, node: fx.Node) -> Optional[nn.Module]:
        return self.gm.get_submodule(node.target) if node.op == "call_module" else None

    def _handler(self, node: fx.Node) -> Tuple[Optional[nn.Module], Optional[LayerHandler]]:
        module = self._module(node)
        return module, (handler_for(module) if module is not None else None)

    def _role(self, node: fx.Node) -> Optional[str]:
        module, handler = self._handler(node)
        if handler is not None:
            return handler.role(module)
        if node.op == "call_function" and node.target in _PASS_FUNCTIONS:
            return PASS
        if node.op == "call_function" and node.target in _POOL_FUNCTIONS:
            return POOL
        return None

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
            raise Excluded(f"{what} is used by {len(users)} ops ({names}) before its activation")
        return users[0]

    def _to_activation(self, start: fx.Node, what: str) -> Tuple[Optional[str], fx.Node, fx.Node, ActivationSpec]:
        """Follow ``start`` through an optional BatchNorm to the activation: (bn, pre-activation, activation node)."""
        bn, node = None, start
        while True:
            user = self._single_user(node, what)
            role = self._role(user)
            if role == CHANNELWISE and bn is None:
                bn, node = user.target, user
                continue
            if role == PASS:
                node = user
                continue
            spec = activation_of_node(self.gm, user, self.beta)
            if spec is None:
                raise Excluded(
                    f"{what} reaches {_describe(self.gm, user)} with no nonlinearity in between: its channels are "
                    "either coupled to others or linear (splitting matrix identically zero)"
                )
            return bn, node, user, spec

    def walk(self, producer: fx.Node) -> NeuronGroup:
        module, handler = self._handler(producer)
        input_node = producer.args[0]
        reason = handler.input_exclusion(module, _shape(input_node))
        if reason:
            raise Excluded(reason)
        pre_bn, preact, act, _ = self._to_activation(producer, f"the output of {producer.target}")
        group = NeuronGroup(producer.target, handler.kind, input_node.name, pre_bn, preact.name, act.name)
        if pre_bn is not None:
            group.followers.append(pre_bn)
        self._after_activation(group, act, block=None, after_depthwise=False)
        if not group.consumers:
            raise Excluded("its channels reach no Linear/Conv2d consumer")
        return group

    def _after_activation(self, group: NeuronGroup, node: fx.Node, block: Optional[int], after_depthwise: bool) -> None:
        """Visit every user of an activated channel tensor: pass-throughs, followers, consumers."""
        for user in node.users:
            module, handler = self._handler(user)
            role = self._role(user)
            if user.op == "call_module" and user.args[0] is not node:
                raise Excluded(f"its channels enter {_describe(self.gm, user)} other than as its input")
            if role == CHANNELWISE and block is None:
                group.followers.append(user.target)
                self._after_activation(group, user, block, after_depthwise)
            elif role == PASS or (role == POOL and block is None):
                self._after_activation(group, user, block, after_depthwise)
            elif block is None and self._flatten_block(user, node) is not None:
                self._after_activation(group, user, self._flatten_block(user, node), after_depthwise)
            elif role == NEURONS:
                consumed = handler.consumer_block(module, _shape(node), block)
                if consumed is None:
                    raise Excluded(f"its channels enter {user.target} with shape {list(_shape(node))}")
                group.consumers.append(Consumer(user.target, consumed))
            elif role == DEPTHWISE and block is None and not after_depthwise:
                self._through_depthwise(group, node, user)
            else:
                raise Excluded(f"its channels reach {_describe(self.gm, user)}")

    def _through_depthwise(self, group: NeuronGroup, node: fx.Node, depthwise: fx.Node) -> None:
        if len(node.users) != 1 or group.depthwise is not None:
            raise Excluded(f"its activated channels feed the depthwise conv {depthwise.target} and other ops too")
        group.depthwise = depthwise.target
        group.followers.append(depthwise.target)
        current = depthwise
        # Optional BatchNorm, then an optional activation: both belong to the neuron.
        users = list(current.users)
        if len(users) == 1 and self._role(users[0]) == CHANNELWISE:
            current = users[0]
            group.depthwise_bn = current.target
            group.followers.append(current.target)
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
        Only consider these producer names (by default every layer whose handler can make neurons:
        Linear, Conv2d and registered kinds).

    Returns
    -------
    groups : dict
        ``{layer name: NeuronGroup}`` in graph order.
    excluded : dict
        ``{layer name: reason}`` for every such layer that is not a candidate.
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
        handler = handler_for(module)
        # A grouped conv (role DEPTHWISE or None) is a producer candidate too, excluded with its reason.
        if handler is None or (handler.exclusion(module) is None and handler.role(module) != NEURONS):
            continue
        if layers is not None and node.target not in layers:
            continue
        try:
            if calls[node.target] > 1:
                raise Excluded(f"it is called {calls[node.target]} times in forward (shared weights)")
            reason = handler.exclusion(module)
            if reason:
                raise Excluded(reason)
            groups[node.target] = walker.walk(node)
        except Excluded as reason:
            excluded[node.target] = str(reason)
            logger.info("not a splitting candidate: %s: %s", node.target, reason)
    if layers is not None:
        unknown = sorted(set(layers) - set(groups) - set(excluded))
        if unknown:
            raise ValueError(f"unknown layer name(s) {unknown}: not Linear/Conv2d modules called in forward")
    return groups, excluded
