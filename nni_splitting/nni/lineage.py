"""Lineage bookkeeping of the splitting tuner: the node record and pure functions, no NNI.

A *node* is one trial of a growth lineage: the seed network (step 0) or a child grown from its
parent by one splitting step (Liu, Wu & Wang, "Splitting Steepest Descent for Growing Neural
Architectures", NeurIPS 2019, Algorithm 1).  Nodes are keyed by their own ``node_id`` (carried in
the trial parameters), never by NNI's parameter id, which restarts when an experiment is resumed.

The functions here decide *what* a child looks like (how many neurons, which ones survive a
budget, what its widths are); :mod:`nni_splitting.nni.scheduler` decides *when*.  Plan ranking and budget
trimming and ``split_count`` are :mod:`nni_splitting.growth.selection`'s (re-exported here).
"""
from __future__ import annotations

import math
import secrets
import enum
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

from nni_splitting.growth.energy import select_energy_aware
from nni_splitting.growth.selection import halve_plan, rank_plan, select_lowest_fraction, select_neurons, split_count, trim_plan

#: What a Policy's hooks get: the :class:`nni_splitting.nni.scheduler.Scheduler` calling them (not imported here:
#: the scheduler imports this module).
SchedulerLike = Any

__all__ = [
    "node_kind",
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
    "lineage_entry",
    "Policy",
    "choose_plan",
    "lineage_costs",
    "trial_params",
    "import_node",
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
    note : str
        Why a node that had succeeded was set aside (``FAILED``): its checkpoint or splits file
        does not verify against the SHA-256 in its ``splitting.json``.
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
    note: str = ""

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


def lineage_entry(args, lineage: int) -> dict:
    """The ``lineage_settings`` entry of ``lineage`` (a copy; {} when none)."""
    entries = getattr(args, "lineage_settings", None) or []
    return dict(entries[lineage]) if lineage < len(entries) else {}


class Policy:
    """What the scheduler does besides growing lineages; the default does nothing more.

    Called by the scheduler (with its state up to date): :meth:`start` once before the seeds are
    handed out, :meth:`growth_params` for every growth node's parameters, :meth:`step_succeeded`
    when a growth node reported (after its child was queued), :meth:`lineage_stopped` when a lineage
    stops, :meth:`arm_ended` when an arm node succeeded or failed.
    """

    def start(self, scheduler: SchedulerLike) -> None:
        """Queue nodes that run beside the lineages from the start."""

    def growth_params(self, node: Node, parent: Optional[Node]) -> dict:
        """Extra trial parameters of a growth node."""
        return {}

    def step_succeeded(self, scheduler: SchedulerLike, node: Node) -> None:
        """A growth node (one step of a lineage) reported its result."""

    def lineage_stopped(self, scheduler: SchedulerLike, lineage: int) -> None:
        """A lineage stopped (``scheduler.stopped[lineage]`` says why)."""

    def arm_ended(self, scheduler: SchedulerLike, node: Node) -> None:
        """An arm node succeeded or failed (``node.status``)."""


def lineage_costs(args, info: Mapping, lineage: int = 0) -> Optional[dict]:
    """Per-neuron costs ranking the plans of ``lineage`` (its ``cost`` setting), None for ``"none"``."""
    cost = lineage_entry(args, lineage).get("cost", args.cost)
    if cost == "none":
        return None
    return info.get("costs", {}).get(cost) or None


def choose_plan(args, info: Mapping, lineage: int = 0) -> Plan:
    """The plan of a succeeded node's child: ``m*`` of Algorithm 1, the most negative ``lambda_min``
    below ``lambda*`` (``threshold``), or the lowest ones (``selection="lowest_fraction"``); ``"energy"``: the
    energy-aware LP spending the FLOPs (or the lineage's ``cost``) that those ``m*`` splits would add."""
    m = split_count(info["widths"], args.grow_ratio, args.max_splits)
    per_split = int(info.get("added_per_split", 1))  # three-copy splits add two neurons: grow_ratio counts added ones
    if per_split > 1 and args.max_splits is None:
        m = max(1, -(-m // per_split))
    eigenvalues = {k: v for k, v in info["eigenvalues"].items() if k in set(info["width_layers"])}
    selection = lineage_entry(args, lineage).get("selection", getattr(args, "selection", "negative"))
    if selection == "lowest_fraction":
        return clean_plan(select_lowest_fraction(eigenvalues, max_splits=m, max_per_layer=args.max_per_layer))
    if selection == "energy":  # the LP of Wang et al. 2019, budget = what the count rule's m* splits would add
        costs = lineage_costs(args, info, lineage) or info.get("costs", {}).get("flops") or {}
        counted = select_neurons(eigenvalues, max_splits=m, threshold=args.threshold, max_per_layer=args.max_per_layer)
        budget = estimate_growth(counted, costs)
        if not counted or budget <= 0:
            return {}
        return clean_plan(select_energy_aware({k: v for k, v in eigenvalues.items() if k in costs}, costs, budget,
                                              threshold=args.threshold))
    plan = select_neurons(eigenvalues, max_splits=m, threshold=args.threshold, max_per_layer=args.max_per_layer,
                          costs=lineage_costs(args, info, lineage))
    return clean_plan(plan)


def trial_params(args, node: Node, widths, width_multiplier, plan: Plan, parent: Optional[Node]) -> dict:
    """The trial parameters of a growth node: training settings (the lineage's own over ``trial``),
    architecture, lineage keys and the parent's files (as the parent's trial reported them)."""
    own = lineage_entry(args, node.lineage)
    settings = dict(args.trial)
    settings.setdefault("growth_strategy", getattr(args, "strategy", "s2d"))
    settings.update({k: v for k, v in own.items() if k not in ("epsilon", "selection", "cost")})
    settings["seed"] = int(settings.get("seed", 0)) + (0 if "seed" in own else node.lineage)
    info = (parent.info or {}) if parent else {}
    result = (parent.result or {}) if parent else {}
    settings.update(
        model=args.model, model_args=dict(getattr(args, "model_args", None) or {}),
        weights=getattr(args, "weights", None) or "", widths=widths, width_multiplier=width_multiplier,
        node_id=node.node_id, lineage=node.lineage, step=node.step, attempt=node.attempt,
        parent=parent.trial_id if parent else "", parent_node=parent.node_id if parent else "",
        parent_checkpoint=result.get("checkpoint", info.get("checkpoint", "")) if parent else "",
        parent_splits=result.get("splits", info.get("splits", "")) if parent else "",
        split_plan=plan, n_split=plan_size(plan), epsilon=own.get("epsilon", args.epsilon), grow_ratio=args.grow_ratio,
        split_method=args.method, storage_path=args.storage_path or "",
    )
    return settings


def node_kind(params: Mapping[str, Any]) -> NodeKind:
    """A comparison arm when the trial's parameters name an arm other than ``splitting``, else a growth step."""
    return NodeKind.ARM if params.get("arm") not in (None, "", "splitting") else NodeKind.GROWTH


def import_node(nodes: Dict[str, Node], entry: dict, known: Mapping[str, dict]) -> Optional[Node]:
    """Record one finished trial of NNI's ``import_data`` in ``nodes`` (SUCCEEDED); the node, or None when
    it was known as succeeded already or has no ``node_id``.  ``known``: parameters by node id."""
    params, value = entry.get("parameter"), entry.get("value")
    value = value if isinstance(value, dict) else {"default": value}
    params = params if isinstance(params, dict) else {}
    node_id = value.get("node") or params.get("node_id")
    if not node_id:
        logger.warning("import_data: skipping a trial without node_id: %s", entry)
        return None
    node = nodes.get(node_id)
    if node is not None and node.status == NodeStatus.SUCCEEDED:
        return None
    if node is None:
        params = known.get(node_id) or {"node_id": node_id, "lineage": value.get("lineage", 0),
                                        "step": value.get("step", 0), "attempt": value.get("attempt", 0)}
        node = Node(node_id, int(params.get("lineage", 0)), int(params.get("step", 0)),
                    int(params.get("attempt", 0)), params.get("parent_node") or "", dict(params),
                    kind=node_kind(params))
        nodes[node_id] = node
    node.trial_id = entry.get("trialJobId") or node.trial_id
    node.result, node.status, node.deadline, node.note = value, NodeStatus.SUCCEEDED, None, ""
    logger.info("imported %s (trial %s, lineage %d, step %d)", node.node_id, node.trial_id, node.lineage, node.step)
    return node
