"""Lineage bookkeeping of the splitting tuner: the node record and pure functions, no NNI.

A *node* is one trial of a growth lineage: the seed network (step 0) or a child grown from its
parent by one splitting step (Liu, Wu & Wang, "Splitting Steepest Descent for Growing Neural
Architectures", NeurIPS 2019, Algorithm 1).  Nodes are keyed by their own ``node_id`` (carried in
the trial parameters), never by NNI's parameter id, which restarts when an experiment is resumed.

The functions here decide *what* a child looks like (how many neurons, which ones survive a
budget, what its widths are); :mod:`nni_splitting.scheduler` decides *when*.  Plan ranking and budget
trimming and ``split_count`` are :mod:`nni_splitting.selection`'s (re-exported here).
"""
from __future__ import annotations

import math
import secrets
import enum
import logging
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

from .selection import halve_plan, rank_plan, split_count, trim_plan

__all__ = [
    "Node",
    "NodeStatus",
    "NodeKind",
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

logger = logging.getLogger(__name__)


class NodeStatus(str, enum.Enum):
    """Where a node is in its life: ``READY -> RUNNING -> SUCCEEDED | FAILED``, or ``SUPERSEDED``
    (a retry made unnecessary by a late success of the node it retried)."""

    READY = "ready"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SUPERSEDED = "superseded"

    @property
    def active(self) -> bool:
        """Not finished yet (queued or running)."""
        return self in (NodeStatus.READY, NodeStatus.RUNNING)


class NodeKind(str, enum.Enum):
    """A growth node (a step of a splitting lineage) or an arm node (a baseline of the comparison)."""

    GROWTH = "growth"
    ARM = "arm"


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
    status : NodeStatus
        Where the node is in its life (see :class:`NodeStatus`).
    trial_id : str
        NNI trial job id, once known.
    result : dict, optional
        The trial's final result (flat dict).
    info : dict, optional
        The trial's saved splitting-index file, once read.
    recovered : bool
        A trial NNI re-runs by itself after ``nnictl resume`` (it was running at the stop).
    kind : NodeKind
        Growth step of a lineage, or a comparison arm (``lineage`` is then the seed it belongs to).
    deadline : float, optional
        Time (the scheduler's clock) after which a running node without a result is given up.
    """

    node_id: str
    lineage: int
    step: int
    attempt: int = 0
    parent: str = ""
    params: dict = field(default_factory=dict)
    status: NodeStatus = NodeStatus.READY
    trial_id: str = ""
    result: Optional[dict] = None
    info: Optional[dict] = None
    recovered: bool = False
    kind: NodeKind = NodeKind.GROWTH
    deadline: Optional[float] = None

    def to_dict(self) -> dict:
        """JSON-serialisable copy (without the bulky ``info``)."""
        state = asdict(self)
        state.pop("info")
        state["status"], state["kind"] = NodeStatus(self.status).value, NodeKind(self.kind).value
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


def plan_size(plan: Mapping[str, Sequence[int]]) -> int:
    """Total number of neurons in a plan."""
    return sum(len(v) for v in plan.values())


def clean_plan(plan: Mapping[str, Sequence[int]]) -> Plan:
    """Drop empty layers, make indices sorted plain ints (JSON-friendly)."""
    return {str(k): sorted(int(i) for i in v) for k, v in plan.items() if len(v)}


def grown_widths(widths: Sequence[int], width_layers: Sequence[str], plan: Mapping[str, Sequence[int]],
                 added_per_split: int = 1) -> List[int]:
    """Widths after splitting: layer ``l`` gains ``added_per_split * len(plan[l])`` neurons (2 for a
    three-copy split, the index file's ``added_per_split``).

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
        result[position[layer]] += int(added_per_split) * len(indices)
    return result


def estimate_growth(plan: Mapping[str, Sequence[int]], costs: Mapping[str, float]) -> float:
    """First-order increase of a cost (params or FLOPs) from per-neuron costs of each layer."""
    return sum(len(idx) * float(costs.get(layer, 0.0)) for layer, idx in plan.items())


def over_budget(totals: Mapping[str, float], limits: Mapping[str, float]) -> List[str]:
    """Budget keys of ``limits`` that ``totals`` exceed (keys missing from ``totals`` are ignored)."""
    return [k for k, limit in limits.items() if k in totals and totals[k] > limit]


def budget_totals(info: Mapping) -> Dict[str, float]:
    """Totals of a trial's index file for budget keys: params, flops and their ratios to the reference."""
    totals = {"params": float(info["params"]), "flops": float(info["flops"])}
    reference = info.get("reference", {})
    for key in ("params", "flops"):
        if reference.get(key):
            totals[f"{key}_ratio"] = totals[key] / float(reference[key])
    return totals


def budget_unit_costs(info: Mapping) -> Dict[str, Dict[str, float]]:
    """Per-split cost of each layer for every budget key (ratios divide by the reference totals): the cost of
    one neuron times the neurons a split adds (``added_per_split``, 2 for three copies)."""
    costs, per_split = info.get("costs", {}), float(info.get("added_per_split", 1))
    unit = {key: {k: per_split * v for k, v in costs.get(key, {}).items()} for key in ("params", "flops")}
    reference = info.get("reference", {})
    for key in ("params", "flops"):
        if reference.get(key):
            unit[f"{key}_ratio"] = {k: v / float(reference[key]) for k, v in unit[key].items()}
    return unit


def lineage_tips(nodes: Mapping[str, Node]) -> Dict[int, Node]:
    """The last good node of each lineage: the succeeded node with the highest step (latest attempt)."""
    tips: Dict[int, Node] = {}
    for node in nodes.values():
        if node.kind != NodeKind.GROWTH or node.status != NodeStatus.SUCCEEDED:
            continue
        best = tips.get(node.lineage)
        if best is None or (node.step, node.attempt) > (best.step, best.attempt):
            tips[node.lineage] = node
    return tips
