"""The Firefly candidates of one layer (:class:`FireflyLayer`) and their files (:func:`save_firefly`,
:func:`load_firefly`): what :func:`nni_splitting.growth.firefly.compute_firefly` returns and a trial hands to
its children; and how a plan over them grows the network (:func:`split_plan`, :func:`apply_firefly`)."""
from __future__ import annotations

import copy
import logging
import math
import numbers
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from nni_splitting.common.defaults import EPSILON
from nni_splitting.core.splitting import LayerSplitting
from nni_splitting.graph import NeuronGroup
from nni_splitting.growth.random_neurons import add_new_neurons
from nni_splitting.growth.surgery import apply_splits

__all__ = ["FireflyLayer", "save_firefly", "load_firefly", "split_plan", "apply_firefly", "check_positive",
           "expand_inputs", "CandidateLayout"]

logger = logging.getLogger(__name__)


@dataclass
class FireflyLayer:
    """The Firefly candidates of one layer: ``n`` splits (index ``j``) then ``K`` new neurons (index ``n + k``).

    Attributes
    ----------
    layer : str
        The producer's ``named_modules()`` name.
    group : NeuronGroup
        Its channels' path (what the surgery widens).
    split_scores, new_scores : Tensor ``[n]``, ``[K]``
        Predicted loss change of applying each candidate alone (negative: the loss falls).
    split_directions : Tensor ``[n, d]``
        Unit ``delta_j / epsilon`` (weights flattened, then bias: the layout of ``LayerSplitting``).
    new_inputs : Tensor ``[K, d]``
        Input weights ``a_k`` of the new neurons, same layout, in the layer's current input space.
    new_outputs : dict
        ``{consumer: Tensor [K, out, block]}``: outgoing weights ``h_k`` (a Conv2d consumer's block is its kernel).
    new_filters : dict
        ``{depthwise follower: Tensor [K, ...]}``: the new channels' depthwise filters.
    epsilon, new_epsilon : float
        ``||delta_j||`` and ``||h_k||``.
    example : Tensor
        One input (for tracing when new neurons are applied).
    """

    layer: str
    group: NeuronGroup
    split_scores: torch.Tensor
    new_scores: torch.Tensor
    split_directions: torch.Tensor
    new_inputs: torch.Tensor
    new_outputs: Dict[str, torch.Tensor] = field(default_factory=dict)
    new_filters: Dict[str, torch.Tensor] = field(default_factory=dict)
    epsilon: float = EPSILON
    new_epsilon: float = EPSILON
    example: Optional[torch.Tensor] = None

    @property
    def num_neurons(self) -> int:
        """The layer's current width ``n`` (what a grow ratio is a fraction of)."""
        return int(self.split_directions.shape[0])

    @property
    def eigenvalues(self) -> torch.Tensor:
        """All candidates' scores, splits then new neurons: what the selection rules rank."""
        return torch.cat([self.split_scores, self.new_scores])

    _TENSORS = ("split_scores", "new_scores", "split_directions", "new_inputs")

    def state_dict(self) -> dict:
        """Plain tensors and dicts (CPU), for ``torch.save`` and :meth:`from_state_dict`."""
        state = {name: getattr(self, name).detach().cpu() for name in self._TENSORS}
        state.update(layer=self.layer, group=self.group.to_dict(), epsilon=self.epsilon, new_epsilon=self.new_epsilon,
                     new_outputs={k: v.detach().cpu() for k, v in self.new_outputs.items()},
                     new_filters={k: v.detach().cpu() for k, v in self.new_filters.items()},
                     example=None if self.example is None else self.example.detach().cpu())
        return state

    @classmethod
    def from_state_dict(cls, state: dict) -> "FireflyLayer":
        return cls(state["layer"], NeuronGroup.from_dict(state["group"]), *(state[n] for n in cls._TENSORS),
                   dict(state["new_outputs"]), dict(state["new_filters"]), float(state["epsilon"]),
                   float(state["new_epsilon"]), state["example"])


def save_firefly(candidates: Mapping[str, FireflyLayer], path) -> None:
    """Save :func:`compute_firefly` results with ``torch.save`` (keyed by layer name, like ``save_splits``)."""
    torch.save({name: entry.state_dict() for name, entry in candidates.items()}, str(path))


def load_firefly(path) -> Dict[str, FireflyLayer]:
    """Load what :func:`save_firefly` wrote."""
    states = torch.load(str(path), map_location="cpu", weights_only=True)
    return {name: FireflyLayer.from_state_dict(state) for name, state in states.items()}


def check_positive(name: str, value, integer: bool = False, zero: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    ok = ok and (value >= 0 if zero else value > 0) and (not integer or int(value) == value)
    if not ok:
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{name}={value!r} must be {kind} {'>= 0' if zero else '> 0'}")


def expand_inputs(weights: torch.Tensor, split: Sequence[int], new: int) -> torch.Tensor:
    """The surgery's consumer widening on ``[rows, channels, block]``: halve split columns, append them, then zeros."""
    if not len(split) and not new:
        return weights
    index = torch.as_tensor(list(split), dtype=torch.long, device=weights.device)
    half = torch.ones(weights.shape[1], dtype=weights.dtype, device=weights.device)
    half[index] = 0.5
    halved = weights * half[None, :, None]
    zeros = weights.new_zeros(weights.shape[0], new, weights.shape[2])
    return torch.cat([halved, halved[:, index], zeros], dim=1)


class CandidateLayout:
    """Who feeds whom: each module's upstream group (and its block), each group's consumers."""

    def __init__(self, groups: Mapping[str, NeuronGroup], model: nn.Module):
        self.groups = groups
        self.upstream: Dict[str, Tuple[str, int]] = {}
        for name, group in groups.items():
            for consumer in group.consumers:
                self.upstream[consumer.module] = (name, consumer.block)
        self.widths = {name: model.get_submodule(name).weight.shape[0] for name in groups}

    def channels(self, module: str) -> Optional[int]:
        up = self.upstream.get(module)
        return self.widths[up[0]] if up else None


def split_plan(candidates: Mapping[str, FireflyLayer], plan: Mapping[str, Sequence[int]]
               ) -> Tuple[Dict[str, List[int]], Dict[str, List[int]]]:
    """A plan over candidate indices -> ``(splits {layer: [j]}, new neurons {layer: [k]})``, validated."""
    splits, new = {}, {}
    for layer, indices in plan.items():
        if layer not in candidates:
            raise ValueError(f"unknown layer {layer!r} in the plan; layers with candidates: {sorted(candidates)}")
        entry = candidates[layer]
        n, total = entry.num_neurons, entry.num_neurons + entry.new_scores.numel()
        if isinstance(indices, (str, bytes)) or not isinstance(indices, (list, tuple, range, torch.Tensor)):
            raise ValueError(f"the plan of layer {layer!r} is {indices!r}: expected a list of candidate indices")
        values = indices.tolist() if isinstance(indices, torch.Tensor) else list(indices)
        for i in values:
            if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= i < total:
                raise ValueError(f"candidate {i!r} of layer {layer!r} is not an integer in [0, {total})")
        if len(set(values)) != len(values):
            raise ValueError(f"the plan names a candidate of layer {layer!r} twice: {sorted(values)}")
        if any(i < n and math.isnan(float(entry.split_scores[i])) for i in values):
            raise ValueError(f"layer {layer!r} has no split candidates (computed without kinds='split')")
        if [i for i in values if i < n]:
            splits[layer] = sorted(int(i) for i in values if i < n)
        if [i for i in values if i >= n]:
            new[layer] = sorted(int(i) - n for i in values if i >= n)
    return splits, new


def apply_firefly(model: nn.Module, candidates: Mapping[str, FireflyLayer], plan: Mapping[str, Sequence[int]],
                  scale: float = 1.0) -> nn.Module:
    """Grow a copy of ``model`` by the chosen candidates (``{layer: candidate indices}``, e.g. from ``select``).

    Splits become ``theta_j +- scale * epsilon * direction_j`` (:func:`apply_splits`); new neurons are
    appended by :func:`add_new_neurons` and get input weights ``a_k`` and outgoing weights
    ``scale * h_k``. ``scale=0`` keeps the function exactly (duplicates and silent new neurons).
    """
    check_positive("scale", scale, zero=True)
    splits, new = split_plan(candidates, plan)
    grown = copy.deepcopy(model)
    if splits:
        results = {layer: LayerSplitting(layer, candidates[layer].split_scores, candidates[layer].split_directions,
                                         candidates[layer].group, "firefly") for layer in splits}
        eps = {candidates[layer].epsilon for layer in splits}
        if len(eps) > 1:
            raise ValueError(f"the candidates were computed with different epsilons {sorted(eps)}")
        grown = apply_splits(grown, results, splits, epsilon=scale * eps.pop(), inplace=True)
    if not new:
        return grown
    example = next(iter(candidates.values())).example
    parameter = next(grown.parameters())
    example = example.to(parameter.device)
    example = example.to(parameter.dtype) if example.is_floating_point() else example
    before = {layer: grown.get_submodule(layer).weight.shape[0] for layer in new}
    grown, _ = add_new_neurons(grown, example, {layer: len(k) for layer, k in new.items()}, seed=0,
                               outgoing="zero", layers=list(new))
    layout = CandidateLayout({layer: entry.group for layer, entry in candidates.items()}, model)
    with torch.no_grad():
        for layer, ks in new.items():
            entry, producer = candidates[layer], grown.get_submodule(layer)
            index = torch.tensor(ks)
            rows = slice(before[layer], before[layer] + len(ks))
            a = entry.new_inputs[index].to(producer.weight)
            has_bias = producer.bias is not None
            weights = a[:, :a.shape[1] - has_bias]
            up = layout.upstream.get(layer)
            grid = (weights.reshape(len(ks), layout.widths[up[0]], -1) if up else weights.reshape(len(ks), 1, -1))
            if up:
                grid = expand_inputs(grid, splits.get(up[0], []), len(new.get(up[0], [])))
            producer.weight[rows] = grid.reshape(len(ks), *producer.weight.shape[1:])
            if has_bias:
                producer.bias[rows] = a[:, -1]
            for follower, filters in entry.new_filters.items():
                grown.get_submodule(follower).weight[rows] = filters[index].to(producer.weight)
        for layer, ks in new.items():
            entry, index = candidates[layer], torch.tensor(ks)
            for consumer in entry.group.consumers:
                module = grown.get_submodule(consumer.module)
                h = scale * entry.new_outputs[consumer.module][index].to(module.weight).transpose(0, 1)
                pieces = [h] + ([h[torch.tensor(splits[consumer.module])]] if consumer.module in splits else [])
                total = module.weight.shape[0]
                pieces.append(h.new_zeros(total - sum(x.shape[0] for x in pieces), *h.shape[1:]))
                grid = module.weight.reshape(total, -1, h.shape[2])
                grid[:, grid.shape[1] - len(ks):] = torch.cat(pieces)
    logger.info("firefly growth: %d split(s), %d new neuron(s)", sum(map(len, splits.values())),
                sum(map(len, new.values())))
    return grown
