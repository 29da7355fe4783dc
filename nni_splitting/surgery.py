"""Function-preserving network surgery: replace chosen neurons by two offspring (Algorithm 1, step 4).

Neuron ``j`` of a layer becomes ``theta_j + eps * v_j`` (kept at index ``j``) and
``theta_j - eps * v_j`` (appended after the layer's existing neurons). Everything on the channel's
path is widened to match: BatchNorms are duplicated (all four tensors), a depthwise conv's channel
is copied, and each consumer gets the original input column ``w`` replaced by ``w / 2`` twice, so
that with ``eps = 0`` the grown network computes exactly the same function.
"""
from __future__ import annotations

import copy
import logging
import math
import numbers
from typing import Dict, List, Mapping, Sequence

import torch
import torch.nn as nn

from .graph import NeuronGroup
from .splitting import LayerSplitting

__all__ = ["apply_splits", "validate_plan"]

logger = logging.getLogger(__name__)


def validate_plan(splits: Mapping[str, LayerSplitting], plan: Mapping[str, Sequence[int]]) -> Dict[str, List[int]]:
    """Check a plan against splitting results; return it with sorted int indices (empty layers dropped)."""
    clean: Dict[str, List[int]] = {}
    for layer, indices in plan.items():
        if layer not in splits:
            raise ValueError(f"unknown layer {layer!r} in the split plan; layers with splitting results: {sorted(splits)}")
        size = splits[layer].num_neurons
        if isinstance(indices, (str, bytes)) or not isinstance(indices, (list, tuple, range, torch.Tensor)):
            raise ValueError(f"the plan of layer {layer!r} is {indices!r}: expected a list of neuron indices")
        values = []
        for i in (indices.tolist() if isinstance(indices, torch.Tensor) else indices):
            if isinstance(i, bool) or not isinstance(i, (numbers.Integral, torch.Tensor)) or (
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


def _replace(module: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(module, name)
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(value.detach().clone(), requires_grad=old.requires_grad))
    else:
        setattr(module, name, value.detach().clone())


def _split_producer(layer: nn.Module, indices: List[int], directions: torch.Tensor, epsilon: float) -> None:
    """theta_j <- theta_j + eps v_j; append theta_j - eps v_j (weights flattened, then bias)."""
    weight = layer.weight.detach()
    flat = weight.reshape(weight.shape[0], -1)
    theta = torch.cat([flat, layer.bias.detach()[:, None]], dim=1) if layer.bias is not None else flat
    if directions.shape[1] != theta.shape[1]:
        raise ValueError(
            f"splitting directions have length {directions.shape[1]} but the neurons of {layer} have "
            f"{theta.shape[1]} parameters: the splits were computed on a different architecture"
        )
    step = epsilon * directions.to(theta.dtype).to(theta.device)
    index = torch.tensor(indices, device=theta.device)
    plus, minus = theta[index] + step, theta[index] - step
    theta = theta.clone()
    theta[index] = plus
    theta = torch.cat([theta, minus], dim=0)
    width = flat.shape[1]
    _replace(layer, "weight", theta[:, :width].reshape(theta.shape[0], *weight.shape[1:]))
    if layer.bias is not None:
        _replace(layer, "bias", theta[:, width])
    if isinstance(layer, nn.Linear):
        layer.out_features = theta.shape[0]
    else:
        layer.out_channels = theta.shape[0]


def _duplicate_channels(module: nn.Module, indices: List[int]) -> None:
    """Copy channels ``indices`` of a BatchNorm or depthwise conv to the end of its channel dimension."""
    index = torch.tensor(indices)
    names = ["weight", "bias", "running_mean", "running_var"]
    for name in names:
        tensor = getattr(module, name, None)
        if isinstance(tensor, torch.Tensor):
            _replace(module, name, torch.cat([tensor.detach(), tensor.detach()[index.to(tensor.device)]], dim=0))
    if isinstance(module, nn.Conv2d):
        channels = module.weight.shape[0]
        module.in_channels = module.out_channels = module.groups = channels
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        module.num_features += len(indices)
    else:
        raise ValueError(f"cannot duplicate channels of {type(module).__name__}")


def _widen_consumer(layer: nn.Module, indices: List[int], block: int, old_channels: int) -> None:
    """Halve the input columns of the split channels and append the halved copies (blocks of ``block``)."""
    weight = layer.weight.detach()
    expected = old_channels * block
    if weight.shape[1] != expected:
        raise ValueError(f"{layer} takes {weight.shape[1]} input features, expected {expected} "
                         f"({old_channels} channels x {block}): the model does not match its splitting results")
    columns = torch.cat([torch.arange(j * block, (j + 1) * block) for j in indices]).to(weight.device)
    weight = weight.clone()
    weight[:, columns] = weight[:, columns] / 2
    weight = torch.cat([weight, weight[:, columns]], dim=1)
    _replace(layer, "weight", weight)
    if isinstance(layer, nn.Linear):
        layer.in_features = weight.shape[1]
    else:
        layer.in_channels = weight.shape[1]


def apply_splits(model: nn.Module, splits: Mapping[str, LayerSplitting], plan: Mapping[str, Sequence[int]],
                 epsilon: float = 1e-2, inplace: bool = False) -> nn.Module:
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
    if not isinstance(epsilon, (int, float)) or not math.isfinite(epsilon) or epsilon < 0:
        raise ValueError(f"epsilon={epsilon!r} must be a finite number >= 0")
    plan = validate_plan(splits, plan)
    grown = model if inplace else copy.deepcopy(model)
    modules = dict(grown.named_modules())
    groups: Dict[str, NeuronGroup] = {layer: splits[layer].group for layer in plan}
    missing = sorted({n for g in groups.values() for n in [g.layer, *g.followers, *(c.module for c in g.consumers)]}
                     - set(modules))
    if missing:
        raise ValueError(f"the model has no module(s) {missing} named in the splitting results")
    old_channels = {layer: modules[layer].weight.shape[0] for layer in plan}
    # Producers first: their directions were computed on the old input width of each layer.
    for layer, indices in plan.items():
        directions = splits[layer].directions[torch.tensor(indices)]
        _split_producer(modules[layer], indices, directions, float(epsilon))
    for layer, indices in plan.items():
        for follower in groups[layer].followers:
            _duplicate_channels(modules[follower], indices)
        for consumer in groups[layer].consumers:
            _widen_consumer(modules[consumer.module], indices, consumer.block, old_channels[layer])
        logger.info("split %d neuron(s) of %s: %d -> %d", len(indices), layer, old_channels[layer],
                    old_channels[layer] + len(indices))
    return grown
