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
output weights (``sum |w_i| <= 1 + 2a``); the default 1 gives ``w = (2, -1)``.

Three copies (``copies=3``; each split adds two neurons), under the same bounds ``sum |w_i| <= 1 + 2a``
and ``||delta_i|| <= epsilon``, the optimum is one of three schemes (derived here: the S3D paper's
full text could not be read from this machine; checked against a numerical optimum over every
three-copy scheme in ``tests/test_signed.py``):

* ``positive3``: ``w = ((1+a)/2, (1+a)/2, -a)``, ``delta = (+eps v_min, -eps v_min, 0)``: ``dL = eps^2 (1+a) lambda_min / 2``;
* ``signed3``: ``w = (1+a, -a/2, -a/2)``, ``delta = (0, +eps v_max, -eps v_max)``: ``dL = -eps^2 a lambda_max / 2``;
* ``mixed3``: ``w = ((1+a)/2, (1+a)/2, -a)``, ``delta = eps (g v_max +- b v_min, v_max)`` with ``g = a/(1+a)``,
  ``b = sqrt(1 - g^2)``: ``dL = eps^2 ((1+2a)/(1+a) lambda_min - a/(1+a) lambda_max) / 2``, which uses both ends of
  the spectrum at once and beats positive3 when ``a lambda_min + lambda_max > 0``.

The three-copy index is the least of the three, ``dL = epsilon^2 index / 2`` per split neuron.  (Four
copies, a ``+-v_min`` pair and a ``+-v_max`` pair, would reach ``(1+a) lambda_min - a lambda_max``; not
implemented.)  At ``a = 1`` positive3 and signed3 gain per *added* neuron exactly what their two-copy
forms gain; three copies concentrate the growth on fewer neurons, and mixed3 gains more.
"""
from __future__ import annotations

import copy
import math
from typing import Dict, Mapping, Sequence

import torch
import torch.nn as nn

from nni_splitting.common.defaults import EPSILON, check_epsilon
from nni_splitting.graph.handlers import replace_tensor
from nni_splitting.graph.registry import handler_for
from nni_splitting.core.splitting import LayerSplitting
from nni_splitting.growth.surgery import check_modules, split_groups, validate_plan

__all__ = ["SIGNED_WEIGHT", "COPIES", "SCHEMES", "signed_indexes", "signed_schemes", "scheme_choices",
           "apply_signed_splits", "predicted_change"]

#: ``a`` of the signed scheme's output weights ``(1 + a, -a)``.
SIGNED_WEIGHT = 1.0

#: Copies per split neuron that :func:`apply_signed_splits` can write.
COPIES = (2, 3)

#: Scheme names per ``copies``, in the order of :func:`scheme_choices`' codes.
SCHEMES = {2: ("positive", "signed"), 3: ("positive3", "signed3", "mixed3")}


def _check_weight(a) -> float:
    if isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or a <= 0:
        raise ValueError(f"signed weight a={a!r} must be a finite number > 0 (output weights (1 + a, -a))")
    return float(a)


def _largest(split: LayerSplitting):
    if split.max_eigenvalues is None or split.max_directions is None:
        raise ValueError(f"{split.layer}: the splitting results have no lambda_max / v_max (computed with "
                         f"fast_options={{'largest': False}} or saved by an older version): recompute them")
    return split.max_eigenvalues, split.max_directions


def _check_copies(copies) -> int:
    if isinstance(copies, bool) or copies not in COPIES:
        raise ValueError(f"copies={copies!r} must be one of {list(COPIES)} (offspring per split neuron)")
    return int(copies)


def _scheme_changes(split: LayerSplitting, a: float, copies: int) -> torch.Tensor:
    """``[n, schemes]``: ``2 dL / eps^2`` of each scheme of ``SCHEMES[copies]`` per neuron."""
    bottom = split.eigenvalues
    top = _largest(split)[0].to(bottom)
    if copies == 2:
        # positive: lambda_min;  signed (1+a, -a): -a/(1+a) lambda_max
        return torch.stack([bottom, -a / (1 + a) * top], dim=1)
    # positive3: (1+a) lambda_min;  signed3: -a lambda_max;  mixed3: ((1+2a) lambda_min - a lambda_max) / (1+a)
    return torch.stack([(1 + a) * bottom, -a * top, ((1 + 2 * a) * bottom - a * top) / (1 + a)], dim=1)


def signed_indexes(splits: Mapping[str, LayerSplitting], a: float = SIGNED_WEIGHT,
                   copies: int = 2) -> Dict[str, torch.Tensor]:
    """``{layer: index}`` per neuron, the best scheme's ``2 dL / eps^2``: ``min(lambda_min, -a/(1+a) lambda_max)``
    for two copies, ``min((1+a) lambda_min, -a lambda_max, ((1+2a) lambda_min - a lambda_max)/(1+a))`` for three."""
    a, copies = _check_weight(a), _check_copies(copies)
    return {name: _scheme_changes(split, a, copies).min(dim=1).values for name, split in splits.items()}


def scheme_choices(splits: Mapping[str, LayerSplitting], a: float = SIGNED_WEIGHT,
                   copies: int = 2) -> Dict[str, torch.Tensor]:
    """``{layer: code per neuron}``: the index into ``SCHEMES[copies]`` of each neuron's best scheme."""
    a, copies = _check_weight(a), _check_copies(copies)
    return {name: _scheme_changes(split, a, copies).argmin(dim=1) for name, split in splits.items()}


def signed_schemes(splits: Mapping[str, LayerSplitting], a: float = SIGNED_WEIGHT) -> Dict[str, torch.Tensor]:
    """``{layer: bool per neuron}``: True where the signed two-copy scheme beats the positive one."""
    return {name: codes == 1 for name, codes in scheme_choices(splits, a, 2).items()}


def predicted_change(splits: Mapping[str, LayerSplitting], plan: Mapping[str, Sequence[int]], epsilon: float,
                     a: float = SIGNED_WEIGHT, copies: int = 2) -> float:
    """Second-order loss change of :func:`apply_signed_splits` with this plan: ``sum eps^2 index / 2``."""
    indexes = signed_indexes({k: splits[k] for k in plan}, a, copies)
    return float(sum(0.5 * epsilon ** 2 * indexes[k][list(v)].sum() for k, v in plan.items()))


def _scale_channel_inputs(module: nn.Module, channel: int, block: int, factor: float) -> None:
    """Multiply the input columns of ``channel`` of a consumer (``block`` features per channel) by ``factor``."""
    weight = module.weight.detach().clone()
    weight[:, channel * block:(channel + 1) * block] *= factor
    replace_tensor(module, "weight", weight)


def _three_copies(code: int, v_min: torch.Tensor, v_max: torch.Tensor, a: float):
    """``(single offset, pair centre, pair half-step, single weight, pair weight)`` of a three-copy scheme:
    offspring ``theta + eps s`` (weight ``w_s``) and ``theta + eps (c +- u)`` (weight ``w_p`` each)."""
    zero = torch.zeros_like(v_min)
    if code == 0:  # positive3
        return zero, zero, v_min, -a, (1 + a) / 2
    if code == 1:  # signed3
        return zero, zero, v_max, 1 + a, -a / 2
    g = a / (1 + a)  # mixed3: (1+a) g = a keeps sum w_i delta_i = 0
    return v_max, g * v_max, math.sqrt(1 - g * g) * v_min, -a, (1 + a) / 2


def apply_signed_splits(model: nn.Module, splits: Mapping[str, LayerSplitting], plan: Mapping[str, Sequence[int]],
                        epsilon: float = EPSILON, a: float = SIGNED_WEIGHT, inplace: bool = False,
                        copies: int = 2) -> nn.Module:
    """Grow ``model`` by the neurons of ``plan``, each with its best scheme (see the module docstring).

    Two copies: offspring ``j`` (in place) and ``n + k`` (appended, ``k``-th of the layer's plan):
    ``positive``: ``theta +- eps v_min``, output weights halved; ``signed``: ``theta + eps a/(1+a) v_max``
    with output weight ``(1 + a)`` and ``theta + eps v_max`` with ``-a`` times the original output weights.
    Three copies: the single copy at ``j``, the pair at ``n + k`` and ``n + K + k`` (``K`` = the layer's
    number of splits); the layer grows by ``2 K``.
    """
    a, copies = _check_weight(a), _check_copies(copies)
    check_epsilon(epsilon)
    plan = validate_plan(splits, plan)
    codes = scheme_choices({k: splits[k] for k in plan}, a, copies)
    grown = model if inplace else copy.deepcopy(model)
    modules = dict(grown.named_modules())
    check_modules(modules, [splits[layer].group for layer in plan])  # as apply_splits does
    if copies == 3:
        _apply_three_copies(modules, splits, plan, codes, epsilon, a)
        return grown
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
                if int(codes[layer][j]) == 1:
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
                if int(codes[layer][j]) == 1:
                    for consumer in splits[layer].group.consumers:
                        module = modules[consumer.module]
                        _scale_channel_inputs(module, j, consumer.block, 2 * (1 + a))
                        _scale_channel_inputs(module, old[layer] + k, consumer.block, -2 * a)
    return grown


def _apply_three_copies(modules, splits, plan, codes, epsilon: float, a: float) -> None:
    """Two two-way splits per neuron, all in the producers' old input widths: ``j`` into ``theta + eps s`` (kept)
    and the pair centre ``theta + eps c`` (at ``n + k``), then the centre into ``theta + eps (c +- u)``; the
    output weights ``1/2, 1/4, 1/4`` this leaves are then scaled to ``w_s, w_p, w_p``."""
    first, second, weights = [], [], {}
    with torch.no_grad():
        for layer, indices in plan.items():
            producer, split = modules[layer], splits[layer]
            handler = handler_for(producer)
            theta = handler.neuron_parameters(producer).detach().clone()
            v_max = _largest(split)[1]
            n, rows_first, rows_second = int(split.num_neurons), [], []
            for j in indices:
                single, centre, half, w_single, w_pair = _three_copies(
                    int(codes[layer][j]), split.directions[j].to(theta), v_max[j].to(theta), a)
                theta[j] = theta[j] + epsilon * (single + centre) / 2  # j +- eps (single - centre)/2
                rows_first.append((single - centre) / 2)
                rows_second.append(half)
                weights[(layer, j)] = (w_single, w_pair)
            handler.set_neuron_parameters(producer, theta)
            first.append((split.group, list(indices), torch.stack(rows_first)))
            second.append((split.group, [n + k for k in range(len(indices))], torch.stack(rows_second)))
        split_groups(modules, first + second, epsilon)  # every producer's first split before its second
        for layer, indices in plan.items():
            n, count = int(splits[layer].num_neurons), len(indices)
            for k, j in enumerate(indices):
                w_single, w_pair = weights[(layer, j)]
                for consumer in splits[layer].group.consumers:
                    module = modules[consumer.module]
                    _scale_channel_inputs(module, j, consumer.block, 2 * w_single)
                    _scale_channel_inputs(module, n + k, consumer.block, 4 * w_pair)
                    _scale_channel_inputs(module, n + count + k, consumer.block, 4 * w_pair)
