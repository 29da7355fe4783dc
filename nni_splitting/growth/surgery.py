"""Function-preserving network surgery: replace chosen neurons by two offspring (Algorithm 1, step 4).

Neuron ``j`` of a layer becomes ``theta_j + eps * v_j`` (kept at index ``j``) and
``theta_j - eps * v_j`` (appended after the layer's existing neurons). Everything on the channel's
path is widened to match: BatchNorms are duplicated (all four tensors), a depthwise conv's channel
is copied, and each consumer gets the original input column ``w`` replaced by ``w / 2`` twice, so
that with ``eps = 0`` the grown network computes exactly the same function.

The surgery loops over neuron groups and asks each module's layer handler
(:mod:`nni_splitting.graph.handlers`) to split its neurons, duplicate a channel or widen its inputs.
"""
from __future__ import annotations

import copy
import logging
import numbers
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from nni_splitting.common.defaults import EPSILON, check_epsilon
from nni_splitting.graph import LayerHandler, NeuronGroup, handler_for
from nni_splitting.core.splitting import LayerSplitting

__all__ = ["apply_splits", "check_modules", "split_group", "split_groups", "validate_plan"]

logger = logging.getLogger(__name__)


def validate_plan(splits: Mapping[str, LayerSplitting], plan: Mapping[str, Sequence[int]]) -> Dict[str, List[int]]:
    """Check a plan against splitting results; return it with sorted int indices (empty layers dropped).

    A plan is a mapping ``{layer: indices}``; the indices of a layer may be a list, tuple, range,
    1-D integer tensor or 1-D integer NumPy array.  Anything else is a ``ValueError`` quoting it.
    """
    if not isinstance(plan, Mapping):
        raise ValueError(f"the split plan must be a mapping {{layer name: [neuron indices]}}, "
                         f"got {type(plan).__name__}: {plan!r}")
    clean: Dict[str, List[int]] = {}
    for layer, indices in plan.items():
        if layer not in splits:
            raise ValueError(f"unknown layer {layer!r} in the split plan; layers with splitting results: {sorted(splits)}")
        size = splits[layer].num_neurons
        if isinstance(indices, np.ndarray):  # like a tensor: integer entries only (a float or bool array is refused)
            if indices.ndim > 1 or indices.dtype == np.bool_ or not np.issubdtype(indices.dtype, np.integer):
                raise ValueError(f"the plan of layer {layer!r} is a {indices.ndim}-D {indices.dtype} array "
                                 f"{indices!r}: expected a 1-D array of integer neuron indices")
            indices = [int(i) for i in indices.reshape(-1)]
        if isinstance(indices, (str, bytes)) or not isinstance(indices, (list, tuple, range, torch.Tensor)):
            raise ValueError(f"the plan of layer {layer!r} is {indices!r}: expected a list of neuron indices")
        values = []
        for i in (indices.tolist() if isinstance(indices, torch.Tensor) else indices):
            if isinstance(i, (bool, np.bool_)) or not isinstance(i, (numbers.Integral, torch.Tensor)) or (
                    isinstance(i, torch.Tensor) and (i.numel() != 1 or i.is_floating_point() or i.dtype == torch.bool)):
                raise ValueError(f"neuron index {i!r} of layer {layer!r} is not an integer")
            values.append(int(i))
        bad = [i for i in values if not 0 <= i < size]
        if bad:
            raise ValueError(f"neuron index {bad[0]} out of range for layer {layer!r}, which has {size} neurons")
        if len(set(values)) != len(values):
            raise ValueError(f"the plan names a neuron of layer {layer!r} twice: {sorted(values)}")
        if values:
            clean[layer] = sorted(values)
    return clean


def _handler(module: nn.Module, name: str) -> LayerHandler:
    handler = handler_for(module)
    if handler is None:
        raise ValueError(f"{name} ({type(module).__name__}) has no layer handler: register one with "
                         "nni_splitting.graph.register_layer_handler")
    return handler


def check_modules(modules: Mapping[str, nn.Module], groups: Iterable[NeuronGroup]) -> None:
    """``ValueError`` unless every module the groups name (producer, followers, consumers) is in ``modules``."""
    missing = sorted({n for g in groups for n in [g.layer, *g.followers, *(c.module for c in g.consumers)]}
                     - set(modules))
    if missing:
        raise ValueError(f"the model has no module(s) {missing} named in the splitting results")


def split_groups(modules: Mapping[str, nn.Module], work: Sequence[Tuple[NeuronGroup, List[int], torch.Tensor]],
                 epsilon: float) -> None:
    """Split ``(group, indices, directions)`` in place: every producer first, then followers and consumers.

    ``modules`` is the model's ``dict(named_modules())``. The order matters when a producer is also
    a consumer of another split group: its directions were computed on its old input width.
    """
    old_channels = []
    # Producers first: their directions were computed on the old input width of each layer. A group
    # may come twice (a three-copy split splits an offspring again): each entry keeps its own width.
    for group, indices, directions in work:
        module = modules[group.layer]
        handler = _handler(module, group.layer)
        old_channels.append(handler.num_neurons(module))
        handler.split_producer(module, indices, directions, epsilon)
    for (group, indices, _), old in zip(work, old_channels):
        for follower in group.followers:
            _handler(modules[follower], follower).duplicate_channels(modules[follower], indices)
        for consumer in group.consumers:
            module = modules[consumer.module]
            _handler(module, consumer.module).widen_consumer(module, indices, consumer.block, old)
        logger.info("split %d neuron(s) of %s: %d -> %d", len(indices), group.layer, old, old + len(indices))


def split_group(model: nn.Module, group: NeuronGroup, indices: Sequence[int], directions: torch.Tensor,
                epsilon: float, inplace: bool = False) -> nn.Module:
    """Split neurons ``indices`` of one group along ``directions`` (``[len(indices), d]``, rows need not be unit).

    The lower-level form of :func:`apply_splits` for neurons whose splitting results are not a
    :class:`LayerSplitting` (custom neurons, random directions). The ``+`` offspring keeps index ``j``,
    the ``-`` offspring is appended; returns the grown model (a copy unless ``inplace``).
    """
    epsilon = check_epsilon(epsilon)
    grown = model if inplace else copy.deepcopy(model)
    modules = dict(grown.named_modules())
    check_modules(modules, [group])
    size = _handler(modules[group.layer], group.layer).num_neurons(modules[group.layer])
    indices = [int(i) for i in indices]
    if any(not 0 <= i < size for i in indices) or len(set(indices)) != len(indices):
        raise ValueError(f"indices {indices!r} must be distinct neurons of {group.layer!r}, which has {size}")
    directions = torch.as_tensor(directions).reshape(len(indices), -1)
    split_groups(modules, [(group, indices, directions)], epsilon)
    return grown


def apply_splits(model: nn.Module, splits: Mapping[str, LayerSplitting], plan: Mapping[str, Sequence[int]],
                 epsilon: float = EPSILON, inplace: bool = False) -> nn.Module:
    """Grow ``model`` by splitting the neurons of ``plan`` along their splitting gradients.

    Parameters
    ----------
    model : nn.Module
        The model the splitting results were computed on.
    splits : dict of LayerSplitting
        From :func:`compute_splitting` (or :func:`load_splits`).
    plan : dict
        ``{layer name: [neuron indices]}``, e.g. from :func:`select_neurons`.
    epsilon : float
        Step size: offspring are ``theta +- epsilon * v_min``. ``0`` duplicates without changing the function.
    inplace : bool
        Modify ``model`` itself instead of a deep copy.

    Returns
    -------
    nn.Module
        The grown model; layer ``l`` has ``len(plan[l])`` more neurons, appended after the old ones.
    """
    epsilon = check_epsilon(epsilon)
    plan = validate_plan(splits, plan)
    grown = model if inplace else copy.deepcopy(model)
    modules = dict(grown.named_modules())
    check_modules(modules, [splits[layer].group for layer in plan])
    split_groups(modules, [(splits[layer].group, indices, splits[layer].directions[torch.tensor(indices)])
                            for layer, indices in plan.items()], epsilon)
    return grown
