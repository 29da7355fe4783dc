"""Signed splitting (S3D; Wu, Ye, Lei, Lee & Liu, arXiv 2003.10392): offspring with output weights of both signs.

Splitting neuron ``j`` into copies with output weights ``w_i`` (``sum w_i = 1``) and parameters
``theta + delta_i`` with ``sum w_i delta_i = 0`` changes the loss, to second order, by
``1/2 sum_i w_i delta_i^T S_j delta_i`` (Theorem 2.2 of Liu, Wu & Wang 2019, any weights).  With every
offspring moving at most ``epsilon`` (``||delta_i|| <= epsilon``) two two-copy schemes are optimal
at each end of ``S_j``'s spectrum:

* ``positive`` (S2D): ``w = (1/2, 1/2)``, ``delta = +-epsilon v_min``:
  ``dL = epsilon^2 lambda_min / 2``  -- a descent only when ``lambda_min < 0``;
* ``signed``: ``w = (1 + a, -a)`` (``a > 0``), ``delta_1 = epsilon a / (1 + a) v_max``,
  ``delta_2 = epsilon v_max`` (so ``w_1 delta_1 + w_2 delta_2 = 0``):
  ``dL = -epsilon^2 a / (1 + a) lambda_max / 2``  -- a descent whenever ``lambda_max > 0``,
  so a network that is splitting-stable for S2D (every ``lambda_min >= 0``) can still grow.

:func:`signed_indexes` puts both on one scale, the *signed splitting index*
``min(lambda_min, -a / (1 + a) lambda_max)`` (``dL = epsilon^2 index / 2`` for both), so every
selection rule (threshold, per-cost ranking, budgets, the energy LP) ranks positive and signed
splits together; :func:`apply_signed_splits` writes the chosen scheme per neuron (unequal, signed
output weights for ``signed``; the function is preserved at ``epsilon = 0``).  ``a`` bounds the
output weights (``|w_i| <= 1 + a``); the default 1 gives ``w = (2, -1)``.  The paper also derives
three-copy schemes; they are not implemented here.
"""
from __future__ import annotations

import copy
import math
from typing import Dict, Mapping, Sequence

import torch
import torch.nn as nn

from .defaults import EPSILON
from .graph.handlers import handler_for, replace_tensor
from .splitting import LayerSplitting
from .surgery import check_modules, split_groups, validate_plan

__all__ = ["SIGNED_WEIGHT", "signed_indexes", "signed_schemes", "apply_signed_splits", "predicted_change"]

#: ``a`` of the signed scheme's output weights ``(1 + a, -a)``.
SIGNED_WEIGHT = 1.0


def _check_weight(a) -> float:
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or a <= 0:
        raise ValueError(f"signed weight a={a!r} must be a finite number > 0 (output weights (1 + a, -a))")
    return float(a)


def _largest(split: LayerSplitting):
    if split.max_eigenvalues is None or split.max_directions is None:
        raise ValueError(f"{split.layer}: the splitting results have no lambda_max / v_max (computed with "
                         f"fast_options={{'largest': False}} or saved by an older version): recompute them")
    return split.max_eigenvalues, split.max_directions


def signed_indexes(splits: Mapping[str, LayerSplitting], a: float = SIGNED_WEIGHT) -> Dict[str, torch.Tensor]:
    """``{layer: min(lambda_min, -a/(1+a) lambda_max)}`` per neuron: ``epsilon^2 / 2`` times the best loss change."""
    a = _check_weight(a)
    out = {}
    for name, split in splits.items():
        top, _ = _largest(split)
        # dL = eps^2/2 * min(lambda_min, -a/(1+a) lambda_max)        (positive vs signed two-copy split)
        out[name] = torch.minimum(split.eigenvalues, -a / (1 + a) * top.to(split.eigenvalues))
    return out


def signed_schemes(splits: Mapping[str, LayerSplitting], a: float = SIGNED_WEIGHT) -> Dict[str, torch.Tensor]:
    """``{layer: bool per neuron}``: True where the signed scheme beats the positive one."""
    a = _check_weight(a)
    return {name: -a / (1 + a) * _largest(split)[0].to(split.eigenvalues) < split.eigenvalues
            for name, split in splits.items()}


def predicted_change(splits: Mapping[str, LayerSplitting], plan: Mapping[str, Sequence[int]], epsilon: float,
                     a: float = SIGNED_WEIGHT) -> float:
    """Second-order loss change of :func:`apply_signed_splits` with this plan: ``sum eps^2 index / 2``."""
    indexes = signed_indexes({k: splits[k] for k in plan}, a)
    return float(sum(0.5 * epsilon ** 2 * indexes[k][list(v)].sum() for k, v in plan.items()))


def _scale_channel_inputs(module: nn.Module, channel: int, block: int, factor: float) -> None:
    """Multiply the input columns of ``channel`` of a consumer (``block`` features per channel) by ``factor``."""
    weight = module.weight.detach().clone()
    weight[:, channel * block:(channel + 1) * block] *= factor
    replace_tensor(module, "weight", weight)


def apply_signed_splits(model: nn.Module, splits: Mapping[str, LayerSplitting], plan: Mapping[str, Sequence[int]],
                        epsilon: float = EPSILON, a: float = SIGNED_WEIGHT, inplace: bool = False) -> nn.Module:
    """Grow ``model`` by the neurons of ``plan``, each with its better scheme (see the module docstring).

    Offspring ``j`` (in place) and ``n + k`` (appended, ``k``-th of the layer's plan): ``positive``:
    ``theta +- eps v_min``, output weights halved; ``signed``: ``theta + eps a/(1+a) v_max`` with
    output weight ``(1 + a)`` and ``theta + eps v_max`` with ``-a`` times the original output weights.
    """
    a = _check_weight(a)
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not math.isfinite(epsilon) or epsilon < 0:
        raise ValueError(f"epsilon={epsilon!r} must be a finite number >= 0")
    plan = validate_plan(splits, plan)
    signed = signed_schemes({k: splits[k] for k in plan}, a)
    grown = model if inplace else copy.deepcopy(model)
    modules = dict(grown.named_modules())
    check_modules(modules, [splits[layer].group for layer in plan])  # as apply_splits does
    work = []
    with torch.no_grad():
        # Each pair as a centre and a symmetric split around it, on the producers' old input widths (a
        # producer may also consume a split layer): positive, centre theta and +- eps v_min; signed,
        # centre theta + eps (1+2a)/(2(1+a)) v_max and +- eps v_max / (2(1+a)), i.e. offspring
        # theta + eps a/(1+a) v_max (kept at j) and theta + eps v_max (appended).
        for layer, indices in plan.items():
            producer, split = modules[layer], splits[layer]
            handler = handler_for(producer)
            theta = handler.neuron_parameters(producer).detach().clone()
            _, top_directions = _largest(split)
            rows = []
            for j in indices:
                if bool(signed[layer][j]):
                    v = top_directions[j].to(theta)
                    theta[j] = theta[j] + epsilon * (1 + 2 * a) / (2 * (1 + a)) * v
                    rows.append(-v / (2 * (1 + a)))
                else:
                    rows.append(split.directions[j].to(theta))
            handler.set_neuron_parameters(producer, theta)
            work.append((split.group, list(indices), torch.stack(rows)))
        old = {layer: int(splits[layer].num_neurons) for layer in plan}
        split_groups(modules, work, epsilon)  # duplicates with halved output weights, consumers widened
        for layer, indices in plan.items():  # signed pairs: halves -> (1 + a) and -a
            for k, j in enumerate(indices):
                if bool(signed[layer][j]):
                    for consumer in splits[layer].group.consumers:
                        module = modules[consumer.module]
                        _scale_channel_inputs(module, j, consumer.block, 2 * (1 + a))
                        _scale_channel_inputs(module, old[layer] + k, consumer.block, -2 * a)
    return grown
