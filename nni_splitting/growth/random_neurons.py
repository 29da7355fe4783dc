"""Neurons added at random: random splits (Net2Net / NASH style) and fresh new neurons.

* :func:`random_splits` / :func:`random_split` — split randomly chosen neurons along random unit
  directions with the same ``epsilon`` as splitting steepest descent (:func:`~nni_splitting.growth.surgery.apply_splits`
  with :class:`~nni_splitting.core.splitting.LayerSplitting` objects whose directions are random).
* :func:`add_new_neurons` — append freshly, randomly initialised neurons (random incoming weights,
  a fresh BatchNorm channel, a random depthwise filter behind a depthwise conv); their outgoing weights
  are zero by default (``outgoing="zero"``: the function is preserved, as splitting with ``epsilon=0``).

Firefly's new-neuron candidates are built with :func:`add_new_neurons`; the comparison's baselines
(:mod:`nni_splitting.baselines.growth`) use both.
"""
from __future__ import annotations

import copy
import logging
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from nni_splitting.common.defaults import EPSILON
from nni_splitting.core.splitting import LayerSplitting
from nni_splitting.graph import CHANNELWISE, DEPTHWISE, NeuronGroup, find_neuron_groups, handler_for, trace_model
from nni_splitting.growth.surgery import apply_splits

__all__ = ["random_splits", "random_split", "add_new_neurons", "NEW_NEURON_INITS", "OUTGOING"]

logger = logging.getLogger(__name__)

NEW_NEURON_INITS = ("match", "kaiming", "default")
OUTGOING = ("zero", "random")

Count = Union[int, Mapping[str, int]]


def _generator(seed: Optional[int]) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(int(seed) if seed is not None else int(torch.seed() % (2 ** 63)))
    return generator


def _groups(model: nn.Module, example_input: torch.Tensor, layers: Optional[Sequence[str]]) -> Dict[str, NeuronGroup]:
    groups, excluded = find_neuron_groups(trace_model(model, example_input), list(layers) if layers is not None else None)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no layer that can grow (excluded: {excluded})")
    return groups


def _neuron_size(layer: nn.Module) -> int:
    """``d``: weights per neuron (flattened) plus the bias, as in :class:`LayerSplitting`."""
    return layer.weight[0].numel() + (1 if getattr(layer, "bias", None) is not None else 0)


def _random_plan(model: nn.Module, groups: Mapping[str, NeuronGroup], n: Count,
                 generator: torch.Generator) -> Dict[str, List[int]]:
    """Distinct random neurons: ``n`` uniformly over all candidate neurons, or ``{layer: count}``."""
    widths = {name: model.get_submodule(name).weight.shape[0] for name in groups}
    if isinstance(n, Mapping):
        unknown = sorted(set(n) - set(groups))
        if unknown:
            raise ValueError(f"layer(s) {unknown} cannot grow; candidates are {list(groups)}")
        plan = {}
        for name, count in n.items():
            if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= widths[name]:
                raise ValueError(f"{count!r} neurons for {name!r}: must be an int in [0, {widths[name]}] (its width)")
            if count:
                plan[name] = sorted(torch.randperm(widths[name], generator=generator)[:count].tolist())
        return {name: plan[name] for name in groups if name in plan}
    total = sum(widths.values())
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= total:
        raise ValueError(f"n={n!r} must be an int in [0, {total}] (all candidate neurons) or a {{layer: count}} dict")
    names = list(groups)
    offsets = torch.tensor([0] + [widths[k] for k in names]).cumsum(0)
    plan: Dict[str, List[int]] = {}
    for flat in sorted(torch.randperm(total, generator=generator)[:n].tolist()):
        layer = int(torch.searchsorted(offsets, torch.tensor(flat), right=True)) - 1
        plan.setdefault(names[layer], []).append(flat - int(offsets[layer]))
    return plan


def random_splits(model: nn.Module, example_input: torch.Tensor, n: Count, seed: Optional[int] = 0,
                  layers: Optional[Sequence[str]] = None) -> Tuple[Dict[str, LayerSplitting], Dict[str, List[int]]]:
    """Random splitting "results" and a random plan, for :func:`apply_splits`.

    Every candidate neuron gets a direction drawn uniformly on the unit sphere (a normalised Gaussian
    vector over its weights and bias); the splitting indexes are NaN (none was computed).

    Parameters
    ----------
    model : nn.Module
    example_input : Tensor
        An input batch for tracing.
    n : int or dict
        How many neurons to split: uniformly over all candidate neurons, or ``{layer: count}`` (e.g.
        the per-layer counts of a splitting plan, to grow the same architecture).
    seed : int, optional
        Seed of the choice and the directions (``None``: nondeterministic).
    layers : list of str, optional
        Restrict the candidates to these producers.

    Returns
    -------
    splits : dict of LayerSplitting
    plan : dict
        ``{layer: sorted neuron indices}``.
    """
    generator = _generator(seed)
    groups = _groups(model, example_input, layers)
    plan = _random_plan(model, groups, n, generator)
    splits = {}
    for name, group in groups.items():
        layer = model.get_submodule(name)
        count = layer.weight.shape[0]
        directions = torch.randn(count, _neuron_size(layer), generator=generator, dtype=torch.float64)
        directions = (directions / directions.norm(dim=1, keepdim=True)).to(layer.weight.dtype)
        splits[name] = LayerSplitting(name, torch.full((count,), float("nan")), directions, group, "random")
    return splits, plan


def random_split(model: nn.Module, example_input: torch.Tensor, n: Count, epsilon: float = EPSILON,
                 seed: Optional[int] = 0, layers: Optional[Sequence[str]] = None) -> Tuple[nn.Module, Dict[str, List[int]]]:
    """Split ``n`` random neurons along random unit directions (a copy of ``model``; see :func:`random_splits`)."""
    splits, plan = random_splits(model, example_input, n, seed=seed, layers=layers)
    return apply_splits(model, splits, plan, epsilon=epsilon), plan


def _fresh(like: torch.Tensor, count: int, init: str, generator: torch.Generator, reference: torch.Tensor) -> torch.Tensor:
    """``count`` new rows shaped like ``like[0]``, drawn by ``init`` (``reference``: the layer's existing weights)."""
    shape = (count, *like.shape[1:])
    fan_in = max(1, like[0].numel())
    if init == "match" and reference.numel() > 1 and float(reference.std()) > 0:
        std = float(reference.float().std())
        return torch.randn(shape, generator=generator).mul_(std).to(like.dtype)
    if init == "default":  # PyTorch's Conv/Linear reset_parameters: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        bound = 1.0 / math.sqrt(fan_in)
        return torch.rand(shape, generator=generator).mul_(2 * bound).sub_(bound).to(like.dtype)
    # "kaiming" (fan-out, ReLU gain; what build_model uses for convs), and "match" without a scale to match
    fan_out = max(1, like.shape[0] * math.prod(like.shape[2:]))
    return torch.randn(shape, generator=generator).mul_(math.sqrt(2.0 / fan_out)).to(like.dtype)


def _set_rows(module: nn.Module, name: str, rows: slice, value: torch.Tensor) -> None:
    with torch.no_grad():
        getattr(module, name)[rows] = value.to(getattr(module, name).device)


def add_new_neurons(model: nn.Module, example_input: torch.Tensor, n: Count, seed: Optional[int] = 0,
                    init: str = "match", outgoing: str = "zero", layers: Optional[Sequence[str]] = None
                    ) -> Tuple[nn.Module, Dict[str, int]]:
    """Append ``n`` new, randomly initialised neurons (a copy of ``model``; see the module docstring).

    Parameters
    ----------
    model : nn.Module
    example_input : Tensor
        An input batch for tracing.
    n : int or dict
        How many new neurons: spread at random like :func:`random_split` (a layer gets at most its
        current width in one call), or ``{layer: count}``.
    seed : int, optional
        Seed of the layer choice and of the new weights.
    init : {"match", "kaiming", "default"}
        Incoming weights of a new neuron: ``"match"`` Gaussian with the standard deviation of the
        layer's existing weights; ``"kaiming"`` Gaussian with ``sqrt(2 / fan_out)`` (``build_model``'s
        conv init); ``"default"`` PyTorch's ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``. Biases start at 0.
    outgoing : {"zero", "random"}
        The consumers' weights from new neurons: zero (same function) or ``"match"``-style random.
    layers : list of str, optional
        Restrict the candidates to these producers.

    Returns
    -------
    grown : nn.Module
    added : dict
        ``{layer: number of new neurons}``.
    """
    if init not in NEW_NEURON_INITS:
        raise ValueError(f"init={init!r} is not one of {NEW_NEURON_INITS}")
    if outgoing not in OUTGOING:
        raise ValueError(f"outgoing={outgoing!r} is not one of {OUTGOING}")
    generator = _generator(seed)
    groups = _groups(model, example_input, layers)
    plan = _random_plan(model, groups, n, generator)
    if not plan:
        return copy.deepcopy(model), {}
    # 1. Duplicate the chosen neurons with the surgery (eps = 0): every module on their path is widened.
    stubs = {name: LayerSplitting(name, torch.zeros(model.get_submodule(name).weight.shape[0]),
                                  torch.zeros(model.get_submodule(name).weight.shape[0],
                                              _neuron_size(model.get_submodule(name))), groups[name])
             for name in plan}
    grown = apply_splits(model, stubs, plan, epsilon=0.0)
    old = {name: model.get_submodule(name).weight.shape[0] for name in plan}
    # 2. Consumers: put back the original (un-halved) columns; new channels' columns zero or random.
    for name in plan:
        for consumer in groups[name].consumers:
            original = model.get_submodule(consumer.module).weight.detach()
            module = grown.get_submodule(consumer.module)
            rows, columns = original.shape[0], old[name] * consumer.block
            with torch.no_grad():
                module.weight[:rows, :columns] = original.to(module.weight.device)
                extra = module.weight[:, columns:]
                if outgoing == "zero":
                    extra.zero_()
                else:
                    extra.copy_(_fresh(extra.transpose(0, 1), extra.shape[1], "match", generator,
                                       original).transpose(0, 1))
    # 3. New neurons' incoming weights, BatchNorm channels and depthwise filters: fresh.
    for name, group in groups.items():
        if name not in plan:
            continue
        new = slice(old[name], old[name] + len(plan[name]))
        producer = grown.get_submodule(name)
        reference = model.get_submodule(name).weight.detach()
        _set_rows(producer, "weight", new, _fresh(producer.weight.detach(), len(plan[name]), init, generator, reference))
        if producer.bias is not None:
            _set_rows(producer, "bias", new, torch.zeros(len(plan[name])))
        for follower in group.followers:
            module = grown.get_submodule(follower)
            handler = handler_for(module)
            role = handler.role(module) if handler is not None else None
            if role == CHANNELWISE:  # e.g. a BatchNorm: the new channels pass through unchanged
                for attribute, value in handler.fresh_channel_values(module).items():
                    _set_rows(module, attribute, new, torch.full((len(plan[name]),), value))
            elif role == DEPTHWISE:  # the depthwise conv: fresh filters like the producer's
                reference = model.get_submodule(follower).weight.detach()
                _set_rows(module, "weight", new, _fresh(module.weight.detach(), len(plan[name]), init, generator, reference))
                if module.bias is not None:
                    _set_rows(module, "bias", new, torch.zeros(len(plan[name])))
    added = {name: len(indices) for name, indices in plan.items()}
    logger.info("added new neurons %s (init=%s, outgoing=%s)", added, init, outgoing)
    return grown, added
