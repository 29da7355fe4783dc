"""Lineage bookkeeping of the splitting tuner: pure functions, no NNI, no torch.

A *node* is one trial of a growth lineage: the seed network (step 0) or a child grown from its
parent by one splitting step (Liu, Wu & Wang, "Splitting Steepest Descent for Growing Neural
Architectures", NeurIPS 2019, Algorithm 1).  Nodes are keyed by their own ``node_id`` (carried in
the trial parameters), never by NNI's parameter id, which restarts when an experiment is resumed.

The functions here decide *what* a child looks like (how many neurons, which ones survive a
budget, what its widths are); :mod:`nni_splitting.tuner` decides *when*.
"""
from __future__ import annotations

import math
import secrets
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = [
    "Node",
    "BUDGET_KEYS",
    "make_node_id",
    "parse_budget",
    "split_count",
    "plan_size",
    "clean_plan",
    "grown_widths",
    "rank_plan",
    "estimate_growth",
    "over_budget",
    "budget_totals",
    "budget_unit_costs",
    "trim_plan",
    "halve_plan",
    "lineage_tips",
]

#: Keys accepted in a budget: absolute NNI-counted totals or ratios against the full-size reference.
BUDGET_KEYS = ("params", "flops", "params_ratio", "flops_ratio")

Plan = Dict[str, List[int]]


@dataclass
class Node:
    """One trial of a lineage, as the tuner knows it.

    Attributes
    ----------
    node_id : str
        Our own id (also in the trial parameters as ``node_id``).
    lineage : int
        Index of the lineage (``0 .. beam-1``).
    step : int
        Number of splitting steps from the seed network (the seed is step 0).
    attempt : int
        0 for the first try, 1 for the retry after a failure, 2 for the fallback (halved plan).
    parent : str
        ``node_id`` of the parent node, ``""`` for a seed.
    params : dict
        The trial parameters that were (or will be) emitted.
    status : str
        ``"ready"`` (not yet sent), ``"running"``, ``"succeeded"``, ``"failed"`` or ``"superseded"``
        (a retry made unnecessary by a late success of the node it retried).
    trial_id : str
        NNI trial job id, once known.
    result : dict, optional
        The trial's final result (flat dict).
    info : dict, optional
        The trial's saved splitting-index file, once read.
    recovered : bool
        A trial NNI re-runs by itself after ``nnictl resume`` (it was running at the stop).
    """

    node_id: str
    lineage: int
    step: int
    attempt: int = 0
    parent: str = ""
    params: dict = field(default_factory=dict)
    status: str = "ready"
    trial_id: str = ""
    result: Optional[dict] = None
    info: Optional[dict] = None
    recovered: bool = False

    def to_dict(self) -> dict:
        """JSON-serialisable copy (without the bulky ``info``)."""
        state = asdict(self)
        state.pop("info")
        return state


def make_node_id(lineage: int, step: int) -> str:
    """A unique, readable node id such as ``"l0s2-9f3a1c"`` (lineage 0, step 2)."""
    return f"l{int(lineage)}s{int(step)}-{secrets.token_hex(3)}"


def parse_budget(budget) -> Dict[str, float]:
    """Normalise the ``budget`` classArg.

    Parameters
    ----------
    budget : None, number or dict
        ``None``: no budget.  A number: a parameter count.  A dict with keys from
        :data:`BUDGET_KEYS` (e.g. ``{"params": 2e5}`` or ``{"flops_ratio": 0.5}``).

    Returns
    -------
    dict
        ``{key: positive float}``; empty for no budget.

    Raises
    ------
    ValueError
        Quoting the bad value.
    """
    if budget is None:
        return {}
    if isinstance(budget, bool):
        raise ValueError(f"budget must be a number or a dict, got {budget!r}")
    if isinstance(budget, (int, float)):
        budget = {"params": budget}
    if not isinstance(budget, Mapping):
        raise ValueError(f"budget must be a number or a dict with keys {list(BUDGET_KEYS)}, got {budget!r}")
    result = {}
    for key, value in budget.items():
        if key not in BUDGET_KEYS:
            raise ValueError(f"budget key {key!r} is not one of {list(BUDGET_KEYS)}")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"budget[{key!r}] must be a positive number, got {value!r}")
        result[key] = float(value)
    return result


def split_count(widths: Sequence[int], grow_ratio: Optional[float], max_splits: Optional[int]) -> int:
    """Number of neurons to split in one step (``m*`` of Algorithm 1).

    ``max_splits`` when given; otherwise ``grow_ratio`` of the current number of neurons, at least 1.
    """
    if max_splits is not None:
        return int(max_splits)
    total = sum(int(w) for w in widths)
    return max(1, int(round(float(grow_ratio) * total)))


def plan_size(plan: Mapping[str, Sequence[int]]) -> int:
    """Total number of neurons in a plan."""
    return sum(len(v) for v in plan.values())


def clean_plan(plan: Mapping[str, Sequence[int]]) -> Plan:
    """Drop empty layers, make indices sorted plain ints (JSON-friendly)."""
    return {str(k): sorted(int(i) for i in v) for k, v in plan.items() if len(v)}


def grown_widths(widths: Sequence[int], width_layers: Sequence[str], plan: Mapping[str, Sequence[int]]) -> List[int]:
    """Widths after splitting: layer ``l`` gains ``len(plan[l])`` neurons.

    Raises
    ------
    ValueError
        If the plan names a layer that is not a width layer.
    """
    if len(widths) != len(width_layers):
        raise ValueError(f"{len(widths)} widths but {len(width_layers)} width layers: {list(width_layers)}")
    position = {name: i for i, name in enumerate(width_layers)}
    result = [int(w) for w in widths]
    for layer, indices in plan.items():
        if layer not in position:
            raise ValueError(f"plan layer {layer!r} is not a width layer; width layers: {list(width_layers)}")
        result[position[layer]] += len(indices)
    return result


def rank_plan(plan: Mapping[str, Sequence[int]], eigenvalues: Mapping[str, Sequence[float]],
              costs: Optional[Mapping[str, float]] = None) -> List[Tuple[str, int]]:
    """The plan's neurons, best first: most negative index (or index per unit cost when ``costs``)."""
    def score(item):
        layer, index = item
        value = float(eigenvalues[layer][index])
        if costs:
            value /= max(float(costs.get(layer, 1.0)), 1e-12)
        return value
    return sorted(((layer, int(i)) for layer, idx in plan.items() for i in idx), key=score)


def estimate_growth(plan: Mapping[str, Sequence[int]], costs: Mapping[str, float]) -> float:
    """First-order increase of a cost (params or FLOPs) from per-neuron costs of each layer."""
    return sum(len(idx) * float(costs.get(layer, 0.0)) for layer, idx in plan.items())


def over_budget(totals: Mapping[str, float], limits: Mapping[str, float]) -> List[str]:
    """Budget keys of ``limits`` that ``totals`` exceed (keys missing from ``totals`` are ignored)."""
    return [k for k, limit in limits.items() if k in totals and totals[k] > limit]


def trim_plan(ranked: Sequence[Tuple[str, int]], base: Mapping[str, float],
              unit_costs: Mapping[str, Mapping[str, float]], limits: Mapping[str, float],
              exact: Optional[Callable[[Plan], Optional[Mapping[str, float]]]] = None) -> Plan:
    """Keep the best neurons that fit the budget.

    Greedy: walk ``ranked`` (best first) and keep each neuron whose estimated cost still fits
    (``base`` plus per-neuron ``unit_costs``); then, when an ``exact`` counter is given, drop the
    worst kept neuron until the exact totals fit.  The result never exceeds ``limits`` according to
    ``exact`` (or to the estimate when ``exact`` is None or returns None).

    Parameters
    ----------
    ranked : list of (layer, index)
        Candidate neurons, best first (see :func:`rank_plan`).
    base : dict
        Current totals of the parent, keys as in ``limits`` (e.g. ``{"params": 1e4, "flops": 2e6}``).
    unit_costs : dict
        ``{key: {layer: increase per split neuron}}`` for each key of ``limits``.
    limits : dict
        Budget, e.g. ``{"params": 5e4}``.
    exact : callable, optional
        ``exact(plan) -> totals`` counting the child exactly, or None when it cannot.

    Returns
    -------
    dict
        ``{layer: sorted indices}``, possibly empty.
    """
    totals = {k: float(base.get(k, 0.0)) for k in limits}
    kept: List[Tuple[str, int]] = []
    for layer, index in ranked:
        step = {k: float(unit_costs.get(k, {}).get(layer, 0.0)) for k in limits}
        if all(totals[k] + step[k] <= limits[k] for k in limits):
            kept.append((layer, index))
            for k in limits:
                totals[k] += step[k]
    while kept and exact is not None:
        counted = exact(_as_plan(kept))
        if counted is None or not over_budget(counted, limits):
            break
        kept.pop()
    return _as_plan(kept)


def halve_plan(ranked: Sequence[Tuple[str, int]]) -> Plan:
    """The better half (at least one) of a ranked plan; used for the fallback after two failures."""
    keep = max(1, len(ranked) // 2) if ranked else 0
    return _as_plan(list(ranked)[:keep])


def budget_totals(info: Mapping) -> Dict[str, float]:
    """Totals of a trial's index file for budget keys: params, flops and their ratios to the reference."""
    totals = {"params": float(info["params"]), "flops": float(info["flops"])}
    reference = info.get("reference", {})
    for key in ("params", "flops"):
        if reference.get(key):
            totals[f"{key}_ratio"] = totals[key] / float(reference[key])
    return totals


def budget_unit_costs(info: Mapping) -> Dict[str, Dict[str, float]]:
    """Per-neuron cost of each layer for every budget key (ratios divide by the reference totals)."""
    costs = info.get("costs", {})
    unit = {key: dict(costs.get(key, {})) for key in ("params", "flops")}
    reference = info.get("reference", {})
    for key in ("params", "flops"):
        if reference.get(key):
            unit[f"{key}_ratio"] = {k: v / float(reference[key]) for k, v in unit[key].items()}
    return unit


def lineage_tips(nodes: Mapping[str, Node]) -> Dict[int, Node]:
    """The last good node of each lineage: the succeeded node with the highest step (latest attempt)."""
    tips: Dict[int, Node] = {}
    for node in nodes.values():
        if node.status != "succeeded":
            continue
        best = tips.get(node.lineage)
        if best is None or (node.step, node.attempt) > (best.step, best.attempt):
            tips[node.lineage] = node
    return tips


def _as_plan(items: Sequence[Tuple[str, int]]) -> Plan:
    plan: Plan = {}
    for layer, index in items:
        plan.setdefault(layer, []).append(int(index))
    return clean_plan(plan)
