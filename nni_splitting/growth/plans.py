"""Plans and the pieces every selection rule shares (Algorithm 1, step 3).

A *plan* is ``{layer: sorted neuron indices}``. Here: the checks of the rules' options, the
candidates below a threshold, the ranking (by ``lambda_i`` or ``lambda_i / c_i``), the one greedy
budget fill (``sum_{i in G} c_i <= B_G`` for every budget ``G``), ``split_count`` (``m*``) and the
tuner's ranked plans (:func:`rank_plan`, :func:`trim_plan`, :func:`halve_plan`). The rules themselves
are in :mod:`nni_splitting.growth.selection` (sign-based, by name) and :mod:`nni_splitting.growth.energy` (the LP).
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

import torch

from nni_splitting.common.defaults import GROW_RATIO

__all__ = [
    "Plan", "Pair", "SLACK", "eigenvalues_of", "check_threshold", "check_count", "check_costs", "candidates_below",
    "rank_pairs", "greedy_fill", "as_plan", "split_count", "rank_plan", "trim_plan", "halve_plan",
]

logger = logging.getLogger(__name__)

Plan = Dict[str, List[int]]
Pair = Tuple[str, int]
SLACK = 1e-12  # relative floating-point slack of a budget check


def eigenvalues_of(value) -> List[float]:
    """``LayerSplitting``, tensor or sequence -> list of floats."""
    if hasattr(value, "eigenvalues"):
        value = value.eigenvalues
    if isinstance(value, torch.Tensor):
        return [float(v) for v in value.detach().cpu().reshape(-1)]
    return [float(v) for v in value]


def check_threshold(threshold) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or math.isnan(threshold) or threshold > 0:
        raise ValueError(f"threshold={threshold!r} must be <= 0: a neuron with lambda_min >= 0 cannot decrease the loss")


def check_count(name: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or int(value) != value or value < 0):
        raise ValueError(f"{name}={value!r} must be a non-negative integer or None")


def check_costs(layers: Iterable[str], costs: Mapping[str, float]) -> None:
    layers = list(layers)
    missing = sorted(set(layers) - set(costs))
    if missing:
        raise ValueError(f"costs has no entry for layer(s) {missing}")
    bad = {k: costs[k] for k in layers
           if isinstance(costs[k], bool) or not isinstance(costs[k], (int, float))
           or not math.isfinite(costs[k]) or costs[k] <= 0}
    if bad:
        raise ValueError(f"costs must be finite and > 0, got {bad}")


def candidates_below(splits: Mapping[str, object], threshold: Optional[float]) -> List[Tuple[float, str, int]]:
    """``(lambda, layer, index)`` of every finite index below ``threshold`` (every finite one for ``None``)."""
    return [(value, layer, index) for layer, entry in splits.items()
            for index, value in enumerate(eigenvalues_of(entry))
            if math.isfinite(value) and (threshold is None or value < threshold)]


def rank_pairs(candidates: Iterable[Tuple[float, str, int]], cost: Optional[Callable[[str], float]] = None) -> List[Pair]:
    """Best first: most negative ``lambda`` (``lambda / cost(layer)`` when ``cost``), ties by ``lambda``."""
    def key(item):
        value, layer, _ = item
        return (value / cost(layer) if cost is not None else value, value)
    return [(layer, index) for _, layer, index in sorted(candidates, key=key)]


def greedy_fill(ranked: Sequence[Pair], weights: Mapping[str, Mapping[str, float]], limits: Mapping[str, float],
          spent: Dict[str, float], chosen: Optional[List[Pair]] = None, count: Optional[int] = None,
          max_per_layer: Union[None, int, Mapping[str, int]] = None) -> List[Pair]:
    """The one greedy budget fill: walk ``ranked`` and keep each neuron that still fits.

    ``weights[g][layer]`` is what one neuron of ``layer`` adds to budget ``g`` (a layer missing from
    ``weights[g]`` does not count in ``g``); ``spent`` (updated in place) starts at what is already
    used. At most ``count`` neurons in all (``chosen`` included), ``max_per_layer`` per layer.
    """
    kept = list(chosen or [])
    taken: Set[Pair] = set(kept)
    per_layer: Dict[str, int] = {}
    for layer, _ in kept:
        per_layer[layer] = per_layer.get(layer, 0) + 1
    for layer, index in ranked:
        if (layer, index) in taken:
            continue
        if count is not None and len(kept) >= count:
            break
        cap = max_per_layer.get(layer) if isinstance(max_per_layer, Mapping) else max_per_layer
        if cap is not None and per_layer.get(layer, 0) >= cap:
            continue
        step = {g: float(w[layer]) for g, w in weights.items() if layer in w}
        # sum_{i in G} c_i <= B_G for every budget G that the neuron counts in
        if all(spent[g] + c <= limits[g] + SLACK * max(1.0, abs(limits[g])) for g, c in step.items()):
            kept.append((layer, index))
            taken.add((layer, index))
            per_layer[layer] = per_layer.get(layer, 0) + 1
            for g, c in step.items():
                spent[g] += c
    return kept


def as_plan(pairs: Iterable[Pair], order: Optional[Iterable[str]] = None) -> Plan:
    """``{layer: sorted indices}`` in ``order`` (default: first appearance), without empty layers."""
    plan: Dict[str, List[int]] = {}
    for layer, index in pairs:
        plan.setdefault(str(layer), []).append(int(index))
    layers = [str(layer) for layer in order] if order is not None else list(plan)
    return {layer: sorted(plan[layer]) for layer in layers if plan.get(layer)}


def split_count(widths: Union[int, Sequence[int]], grow_ratio: Optional[float] = None,
                max_splits: Optional[int] = None) -> int:
    """Neurons to split in one step (``m*`` of Algorithm 1).

    ``max_splits`` when given; otherwise ``max(1, round(grow_ratio * n))`` with ``n`` the number of
    neurons (``widths``: a count or the widths of the layers) and ``grow_ratio`` in ``(0, 1]``
    (default :data:`nni_splitting.common.defaults.GROW_RATIO`). Giving both raises ``ValueError``.
    """
    if max_splits is not None and grow_ratio is not None:
        raise ValueError(f"give grow_ratio or max_splits, not both (got {grow_ratio!r} and {max_splits!r})")
    check_count("max_splits", max_splits)
    if max_splits is not None:
        return int(max_splits)
    ratio = GROW_RATIO if grow_ratio is None else grow_ratio
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ValueError(f"grow_ratio={ratio!r} must be in (0, 1]: a neuron splits at most once per step")
    total = int(widths) if isinstance(widths, (int, float)) else sum(int(w) for w in widths)
    return max(1, int(round(float(ratio) * total)))


# ---------------------------------------------------------------- ranked plans (the tuner's budget trimming)
def rank_plan(plan: Mapping[str, Sequence[int]], eigenvalues: Mapping[str, object],
              costs: Optional[Mapping[str, float]] = None) -> List[Pair]:
    """The plan's neurons, best first: most negative index (or index per unit cost when ``costs``).

    A layer missing from ``costs`` costs 1; ``eigenvalues`` is ``{layer: LayerSplitting or values}``.
    """
    values = {layer: eigenvalues_of(eigenvalues[layer]) for layer in plan}
    cost = (lambda layer: max(float(costs.get(layer, 1.0)), 1e-12)) if costs else None
    return rank_pairs(((values[layer][int(i)], layer, int(i)) for layer, idx in plan.items() for i in idx), cost)


def trim_plan(ranked: Sequence[Pair], base: Mapping[str, float], unit_costs: Mapping[str, Mapping[str, float]],
              limits: Mapping[str, float], exact: Optional[Callable[[Plan], Optional[Mapping[str, float]]]] = None
              ) -> Plan:
    """Keep the best neurons that fit the budget.

    Greedy (the one budget fill): walk ``ranked`` (best first, :func:`rank_plan`) and keep each neuron
    whose estimated totals (``base`` plus per-neuron ``unit_costs``) still fit; then, with an ``exact``
    counter, drop the worst kept neuron until the exact totals fit. The result never exceeds
    ``limits`` according to ``exact`` (or to the estimate when ``exact`` is None or returns None).

    Parameters
    ----------
    ranked : list of (layer, index)
        Candidate neurons, best first.
    base : dict
        The parent's totals, keys as in ``limits`` (e.g. ``{"params": 1e4, "flops": 2e6}``).
    unit_costs : dict
        ``{key: {layer: increase per split neuron}}`` for each key of ``limits`` (missing: 0).
    limits : dict
        Budget, e.g. ``{"params": 5e4}``.
    exact : callable, optional
        ``exact(plan) -> totals`` counting the child exactly, or None when it cannot.

    Returns
    -------
    dict
        ``{layer: sorted indices}``, possibly empty.
    """
    layers = {layer for layer, _ in ranked}
    weights = {k: {layer: float(unit_costs.get(k, {}).get(layer, 0.0)) for layer in layers} for k in limits}
    spent = {k: float(base.get(k, 0.0)) for k in limits}
    kept = greedy_fill(ranked, weights, {k: float(v) for k, v in limits.items()}, spent)
    while kept and exact is not None:
        counted = exact(as_plan(kept))
        if counted is None or not [k for k, v in limits.items() if k in counted and counted[k] > v]:
            break
        kept.pop()
    return as_plan(kept)


def halve_plan(ranked: Sequence[Pair]) -> Plan:
    """The better half (at least one) of a ranked plan; used for the fallback after two failures."""
    keep = max(1, len(ranked) // 2) if ranked else 0
    return as_plan(list(ranked)[:keep])
