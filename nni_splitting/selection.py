"""Which neurons to split (Algorithm 1, step 3): every selection rule, reachable by name.

Rules (:data:`SELECTION_RULES`, called through :func:`select`; defaults in :mod:`nni_splitting.defaults`):

- ``"negative"``: the most negative indexes ``lambda_i < threshold <= 0``, at most ``m`` (Liu, Wu & Wang 2019, Alg. 1);
- ``"per_cost"``: the same ranked by ``lambda_i / c_i`` (loss decrease per unit cost), optionally within a budget;
- ``"lowest_fraction"``: the lowest ``fraction`` of all neurons by ``lambda_i`` whatever its sign (the official
  MobileNetV1 code splits the lowest 30% every round);
- ``"energy"``: the LP of Wang, Liu, Wu et al. 2019 (https://arxiv.org/abs/1910.03103, section 3),
  ``min_beta sum_i beta_i lambda_i  s.t.  sum_{i in G} beta_i c_i <= B_G, 0 <= beta_i <= 1``, by SciPy's HiGHS:
  integral ``beta_i = 1`` kept, fractional ones dropped, what is left of every budget filled greedily by
  ``lambda_i / c_i``, so every budget holds exactly; a negative budget raises :class:`InfeasibleBudgetError`.

All return a plan ``{layer: sorted neuron indices}`` (layers with picks, in the order of ``splits``). One greedy
fill trims every budget (:func:`trim_plan`, for the tuner's ranked plans, too); :func:`rank_plan` and
:func:`halve_plan` rank and halve a plan for the tuner's retries.
"""
from __future__ import annotations

import inspect
import logging
import math
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

import torch

from .counting import neuron_costs
from .defaults import FRACTION, GROW_RATIO, SELECTION, SOLVER, THRESHOLD

__all__ = [
    "select", "SELECTION_RULES", "register_selection_rule", "rule_options",
    "select_neurons", "select_negative", "select_per_cost", "select_lowest_fraction",
    "select_energy_aware", "energy_aware_plan", "InfeasibleBudgetError", "SOLVERS",
    "split_count", "rank_plan", "trim_plan", "halve_plan",
]

logger = logging.getLogger(__name__)

Plan = Dict[str, List[int]]
Pair = Tuple[str, int]
SOLVERS = ("highs", "greedy")
_INTEGRAL = 1e-6  # an LP beta_i >= 1 - this counts as 1
_SLACK = 1e-12  # relative floating-point slack of a budget check


class InfeasibleBudgetError(ValueError):
    """No selection satisfies the budgets (some budget is negative: the model already exceeds it)."""


# ---------------------------------------------------------------- shared pieces
def _eigenvalues(value) -> List[float]:
    """``LayerSplitting``, tensor or sequence -> list of floats."""
    if hasattr(value, "eigenvalues"):
        value = value.eigenvalues
    if isinstance(value, torch.Tensor):
        return [float(v) for v in value.detach().cpu().reshape(-1)]
    return [float(v) for v in value]


def _check_threshold(threshold) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or math.isnan(threshold) or threshold > 0:
        raise ValueError(f"threshold={threshold!r} must be <= 0: a neuron with lambda_min >= 0 cannot decrease the loss")


def _check_count(name: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or int(value) != value or value < 0):
        raise ValueError(f"{name}={value!r} must be a non-negative integer or None")


def _check_costs(layers: Iterable[str], costs: Mapping[str, float]) -> None:
    layers = list(layers)
    missing = sorted(set(layers) - set(costs))
    if missing:
        raise ValueError(f"costs has no entry for layer(s) {missing}")
    bad = {k: costs[k] for k in layers
           if isinstance(costs[k], bool) or not isinstance(costs[k], (int, float))
           or not math.isfinite(costs[k]) or costs[k] <= 0}
    if bad:
        raise ValueError(f"costs must be finite and > 0, got {bad}")


def _candidates(splits: Mapping[str, object], threshold: Optional[float]) -> List[Tuple[float, str, int]]:
    """``(lambda, layer, index)`` of every finite index below ``threshold`` (every finite one for ``None``)."""
    return [(value, layer, index) for layer, entry in splits.items()
            for index, value in enumerate(_eigenvalues(entry))
            if math.isfinite(value) and (threshold is None or value < threshold)]


def _rank(candidates: Iterable[Tuple[float, str, int]], cost: Optional[Callable[[str], float]] = None) -> List[Pair]:
    """Best first: most negative ``lambda`` (``lambda / cost(layer)`` when ``cost``), ties by ``lambda``."""
    def key(item):
        value, layer, _ = item
        return (value / cost(layer) if cost is not None else value, value)
    return [(layer, index) for _, layer, index in sorted(candidates, key=key)]


def _fill(ranked: Sequence[Pair], weights: Mapping[str, Mapping[str, float]], limits: Mapping[str, float],
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
        if all(spent[g] + c <= limits[g] + _SLACK * max(1.0, abs(limits[g])) for g, c in step.items()):
            kept.append((layer, index))
            taken.add((layer, index))
            per_layer[layer] = per_layer.get(layer, 0) + 1
            for g, c in step.items():
                spent[g] += c
    return kept


def _as_plan(pairs: Iterable[Pair], order: Optional[Iterable[str]] = None) -> Plan:
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
    (default :data:`nni_splitting.defaults.GROW_RATIO`). Giving both raises ``ValueError``.
    """
    if max_splits is not None and grow_ratio is not None:
        raise ValueError(f"give grow_ratio or max_splits, not both (got {grow_ratio!r} and {max_splits!r})")
    _check_count("max_splits", max_splits)
    if max_splits is not None:
        return int(max_splits)
    ratio = GROW_RATIO if grow_ratio is None else grow_ratio
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ValueError(f"grow_ratio={ratio!r} must be in (0, 1]: a neuron splits at most once per step")
    total = int(widths) if isinstance(widths, (int, float)) else sum(int(w) for w in widths)
    return max(1, int(round(float(ratio) * total)))


# ---------------------------------------------------------------- sign-based rules
def select_neurons(splits: Mapping[str, object], max_splits: Optional[int] = None, threshold: float = THRESHOLD,
                   max_per_layer: Union[None, int, Mapping[str, int]] = None,
                   costs: Optional[Mapping[str, float]] = None, budget: Optional[float] = None) -> Plan:
    """Pick the neurons to split: the most negative splitting indexes first.

    Parameters
    ----------
    splits : dict
        ``{layer: LayerSplitting}`` from :func:`compute_splitting`, or ``{layer: eigenvalues}``
        (a tensor or a list, e.g. read back from JSON).
    max_splits : int, optional
        At most this many neurons in total (``m*`` of Algorithm 1); all eligible ones if ``None``.
    threshold : float
        Only neurons with ``lambda_min < threshold`` are eligible (``lambda*`` of Algorithm 1, ``<= 0``).
    max_per_layer : int or dict, optional
        At most this many neurons per layer (one int for all layers, or per layer name).
    costs : dict, optional
        ``{layer: cost of splitting one of its neurons}`` (e.g. :func:`neuron_costs`, parameters or
        FLOPs). When given, neurons are ranked by ``lambda_min / cost``: loss decrease per unit cost.
    budget : float, optional
        Total cost not to exceed (needs ``costs``): neurons that no longer fit are skipped.

    Returns
    -------
    dict
        ``{layer: sorted neuron indices}``, only layers with at least one pick.
    """
    _check_threshold(threshold)
    _check_count("max_splits", max_splits)
    if budget is not None and costs is None:
        raise ValueError("budget needs costs: pass costs={layer: cost per split neuron}")
    if costs is not None:
        _check_costs(splits, costs)
    ranked = _rank(_candidates(splits, threshold), costs.__getitem__ if costs is not None else None)
    weights = {"budget": {layer: costs[layer] for layer in splits}} if budget is not None else {}
    limits = {"budget": float(budget)} if budget is not None else {}
    kept = _fill(ranked, weights, limits, {k: 0.0 for k in limits}, count=max_splits, max_per_layer=max_per_layer)
    plan = _as_plan(kept, order=splits)
    logger.info("selected %d neuron(s) to split in %d layer(s)", len(kept), len(plan))
    return plan


def select_negative(splits: Mapping[str, object], max_splits: Optional[int] = None, threshold: float = THRESHOLD,
                    max_per_layer: Union[None, int, Mapping[str, int]] = None) -> Plan:
    """Rule ``"negative"``: the ``max_splits`` most negative indexes below ``threshold`` (:func:`select_neurons`)."""
    return select_neurons(splits, max_splits=max_splits, threshold=threshold, max_per_layer=max_per_layer)


def select_per_cost(splits: Mapping[str, object], costs: Mapping[str, float], max_splits: Optional[int] = None,
                    threshold: float = THRESHOLD, max_per_layer: Union[None, int, Mapping[str, int]] = None,
                    budget: Optional[float] = None) -> Plan:
    """Rule ``"per_cost"``: indexes below ``threshold`` ranked by ``lambda / cost``, within ``budget`` if given."""
    return select_neurons(splits, max_splits=max_splits, threshold=threshold, max_per_layer=max_per_layer,
                          costs=costs, budget=budget)


def select_lowest_fraction(splits: Mapping[str, object], fraction: Optional[float] = None,
                           max_splits: Optional[int] = None,
                           max_per_layer: Union[None, int, Mapping[str, int]] = None) -> Plan:
    """Rule ``"lowest_fraction"``: the lowest ``fraction`` of all neurons by ``lambda``, whatever its sign.

    The official code's rule (0.3 every round): unlike ``"negative"`` it splits ``lambda >= 0`` too.

    Parameters
    ----------
    splits : dict
        ``{layer: LayerSplitting}`` or ``{layer: eigenvalues}``.
    fraction : float, optional
        In ``(0, 1]``: ``max(1, round(fraction * n))`` neurons of the ``n`` in ``splits``. Default
        :data:`nni_splitting.defaults.FRACTION` unless ``max_splits`` is given alone.
    max_splits : int, optional
        A count instead of (alone) or a cap on (with ``fraction``) the fraction's count.
    max_per_layer : int or dict, optional
        At most this many neurons per layer.
    """
    _check_count("max_splits", max_splits)
    if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
                                 or not 0 < fraction <= 1):
        raise ValueError(f"fraction={fraction!r} must be in (0, 1]")
    total = sum(len(_eigenvalues(entry)) for entry in splits.values())
    if fraction is None and max_splits is not None:
        count = int(max_splits)
    else:
        count = max(1, int(round((FRACTION if fraction is None else fraction) * total))) if total else 0
        count = min(count, int(max_splits)) if max_splits is not None else count
    kept = _fill(_rank(_candidates(splits, None)), {}, {}, {}, count=count, max_per_layer=max_per_layer)
    plan = _as_plan(kept, order=splits)
    logger.info("lowest-fraction selection: %d of %d neuron(s) in %d layer(s)", len(kept), total, len(plan))
    return plan


# ---------------------------------------------------------------- energy-aware LP
def _groups_and_budgets(layers: Sequence[str], budget, groups: Optional[Mapping[str, Sequence[str]]]
                        ) -> Tuple[Dict[str, List[str]], Dict[str, float]]:
    """Normalize ``budget``/``groups`` to ``{group: [layers]}`` and ``{group: budget}``."""
    if isinstance(budget, Mapping):
        budgets = {str(k): v for k, v in budget.items()}
        if groups is None:
            members = {k: [k] for k in budgets}  # one group per layer
        else:
            members = {str(k): list(v) for k, v in groups.items()}
            missing = sorted(set(members) - set(budgets))
            if missing:
                raise ValueError(f"group(s) {missing} have no budget; budget keys: {sorted(budgets)}")
            extra = sorted(set(budgets) - set(members))
            if extra:
                raise ValueError(f"budget key(s) {extra} are not groups; groups: {sorted(members)}")
    else:
        if groups is not None:
            raise ValueError("groups needs a budget per group: pass budget={group: value}")
        budgets, members = {"all": budget}, {"all": list(layers)}
    for key, value in budgets.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ValueError(f"budget of {key!r} is {value!r}; expected a number")
    known = set(layers)
    for key, names in members.items():
        unknown = sorted(set(names) - known)
        if unknown:
            raise ValueError(f"group {key!r} names layer(s) {unknown} that are not in splits ({sorted(known)})")
    covered = {name for names in members.values() for name in names}
    uncovered = [layer for layer in layers if layer not in covered]
    if uncovered:
        raise ValueError(f"layer(s) {uncovered} are in no budget group: add them to a group or leave them out of splits")
    return members, {k: float(v) for k, v in budgets.items()}


def _infeasible(budgets: Mapping[str, float], max_splits: Optional[int]) -> InfeasibleBudgetError:
    negative = {k: v for k, v in budgets.items() if v < 0}
    detail = (f"budget(s) {negative} are negative: the model already exceeds them, so even splitting nothing "
              "does not fit" if negative else f"budgets {dict(budgets)}, max_splits={max_splits}")
    return InfeasibleBudgetError(f"energy-aware selection is infeasible: {detail}. Raise the budget or grow another "
                                 "part of the network.")


def select_energy_aware(splits: Mapping[str, object], costs: Mapping[str, float],
                        budget: Union[float, Mapping[str, float]], groups: Optional[Mapping[str, Sequence[str]]] = None,
                        threshold: float = THRESHOLD, max_splits: Optional[int] = None,
                        solver: str = SOLVER) -> Plan:
    """Rule ``"energy"``: the neurons that decrease the loss most within cost budgets (the LP above).

    Parameters
    ----------
    splits : dict
        ``{layer: LayerSplitting}`` or ``{layer: eigenvalues}``.
    costs : dict
        ``{layer: cost of splitting one of its neurons}`` (> 0), e.g. ``neuron_costs(model, x, "flops")``.
    budget : float or dict
        A float: one budget for the total cost of all layers. A dict: ``{group: budget}``, the groups
        given by ``groups`` (or, without ``groups``, the keys are layer names: one budget per layer).
        Every layer of ``splits`` must be in at least one group.
    groups : dict, optional
        ``{group: [layers]}`` (groups may overlap; a neuron counts against every group of its layer).
    threshold : float
        Only neurons with ``lambda < threshold`` (``<= 0``) are candidates.
    max_splits : int, optional
        At most this many neurons in total.
    solver : {"highs", "greedy"}
        ``"highs"``: the LP with :func:`scipy.optimize.linprog`; ``"greedy"``: the ``lambda / cost`` ranking.

    Returns
    -------
    dict
        ``{layer: sorted neuron indices}``, only layers with picks.

    Raises
    ------
    InfeasibleBudgetError
        When no selection (not even the empty one) fits the budgets.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r} is not one of {SOLVERS}")
    _check_threshold(threshold)
    _check_count("max_splits", max_splits)
    layers = list(splits)
    _check_costs(layers, costs)
    members, budgets = _groups_and_budgets(layers, budget, groups)
    if any(v < 0 for v in budgets.values()):
        raise _infeasible(budgets, max_splits)
    candidates = _candidates(splits, threshold)
    weights = {g: {layer: float(costs[layer]) for layer in names} for g, names in members.items()}
    chosen = _solve_lp(candidates, weights, budgets, max_splits) if candidates and solver == "highs" else []
    spent = {g: sum(w[layer] for layer, _ in chosen if layer in w) for g, w in weights.items()}
    kept = _fill(_rank(candidates, costs.__getitem__), weights, budgets, spent, chosen=chosen, count=max_splits)
    plan = _as_plan(kept, order=layers)
    logger.info("energy-aware selection (%s): %d of %d candidate neuron(s) in %d layer(s); cost %s of budget %s",
                solver, len(kept), len(candidates), len(plan), spent, budgets)
    return plan


def _solve_lp(candidates, weights: Mapping[str, Mapping[str, float]], budgets: Mapping[str, float],
              max_splits: Optional[int]) -> List[Pair]:
    """The LP relaxation by HiGHS; returns the neurons with ``beta_i = 1`` (none on solver failure)."""
    try:  # deferred: SciPy is heavy and only the LP needs it; the greedy path works without it
        import numpy as np
        from scipy.optimize import linprog
        from scipy.sparse import coo_matrix
    except ImportError as error:
        logger.warning("SciPy unavailable (%s): greedy lambda/cost selection instead of the LP", error)
        return []
    names = list(budgets)
    rows, cols, data = [], [], []
    for i, (_, layer, _) in enumerate(candidates):
        for r, g in enumerate(names):
            if layer in weights[g]:
                rows.append(r)
                cols.append(i)
                data.append(weights[g][layer])
    b_ub = [budgets[g] for g in names]
    if max_splits is not None:  # sum_i beta_i <= m
        rows += [len(names)] * len(candidates)
        cols += list(range(len(candidates)))
        data += [1.0] * len(candidates)
        b_ub.append(float(max_splits))
    a_ub = coo_matrix((data, (rows, cols)), shape=(len(b_ub), len(candidates))).tocsr()
    objective = np.array([c[0] for c in candidates], dtype=float)  # min sum_i beta_i * lambda_i
    result = linprog(objective, A_ub=a_ub, b_ub=np.array(b_ub), bounds=(0.0, 1.0), method="highs")
    if result.status == 2:
        raise _infeasible(budgets, max_splits)
    if result.status != 0 or result.x is None:
        logger.warning("HiGHS did not solve the selection LP (status %d: %s): greedy lambda/cost selection instead",
                       result.status, result.message)
        return []
    beta = result.x
    fractional = int(((beta > _INTEGRAL) & (beta < 1 - _INTEGRAL)).sum())
    logger.debug("LP optimum %.6g, %d fractional beta(s) dropped before the greedy fill", result.fun, fractional)
    return [(candidates[i][1], candidates[i][2]) for i in range(len(candidates)) if beta[i] >= 1 - _INTEGRAL]


def energy_aware_plan(model: torch.nn.Module, dummy_input: torch.Tensor, splits: Mapping[str, object],
                      budget: Union[float, Mapping[str, float]], kind: str = "flops",
                      groups: Optional[Mapping[str, Sequence[str]]] = None, **kwargs) -> Plan:
    """:func:`select_energy_aware` with per-neuron costs measured by NNI's counter on ``model``.

    ``kind`` is ``"flops"`` or ``"params"`` (see :func:`nni_splitting.neuron_costs`); other keyword
    arguments go to :func:`select_energy_aware`.
    """
    costs = neuron_costs(model, dummy_input, kind=kind, layers=list(splits))
    return select_energy_aware(splits, costs, budget, groups=groups, **kwargs)


# ---------------------------------------------------------------- ranked plans (the tuner's budget trimming)
def rank_plan(plan: Mapping[str, Sequence[int]], eigenvalues: Mapping[str, object],
              costs: Optional[Mapping[str, float]] = None) -> List[Pair]:
    """The plan's neurons, best first: most negative index (or index per unit cost when ``costs``).

    A layer missing from ``costs`` costs 1; ``eigenvalues`` is ``{layer: LayerSplitting or values}``.
    """
    values = {layer: _eigenvalues(eigenvalues[layer]) for layer in plan}
    cost = (lambda layer: max(float(costs.get(layer, 1.0)), 1e-12)) if costs else None
    return _rank(((values[layer][int(i)], layer, int(i)) for layer, idx in plan.items() for i in idx), cost)


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
    kept = _fill(ranked, weights, {k: float(v) for k, v in limits.items()}, spent)
    while kept and exact is not None:
        counted = exact(_as_plan(kept))
        if counted is None or not [k for k, v in limits.items() if k in counted and counted[k] > v]:
            break
        kept.pop()
    return _as_plan(kept)


def halve_plan(ranked: Sequence[Pair]) -> Plan:
    """The better half (at least one) of a ranked plan; used for the fallback after two failures."""
    keep = max(1, len(ranked) // 2) if ranked else 0
    return _as_plan(list(ranked)[:keep])


# ---------------------------------------------------------------- rules by name
#: ``{name: rule(splits, **options) -> plan}``; add one with :func:`register_selection_rule`.
SELECTION_RULES: Dict[str, Callable[..., Plan]] = {"negative": select_negative, "per_cost": select_per_cost,
                                                   "lowest_fraction": select_lowest_fraction,
                                                   "energy": select_energy_aware}


def register_selection_rule(name: str, rule: Callable[..., Plan], replace: bool = False) -> None:
    """Make ``rule(splits, **options) -> plan`` reachable as ``select(splits, name, ...)``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"rule name={name!r} must be a non-empty string")
    if name in SELECTION_RULES and not replace:
        raise ValueError(f"selection rule {name!r} exists; pass replace=True to replace it")
    if not callable(rule):
        raise ValueError(f"rule={rule!r} is not callable")
    SELECTION_RULES[name] = rule


def _rule(name: str) -> Callable[..., Plan]:
    if name not in SELECTION_RULES:
        raise ValueError(f"selection rule {name!r} is not one of {sorted(SELECTION_RULES)}")
    return SELECTION_RULES[name]


def rule_options(name: str) -> Dict[str, bool]:
    """``{option: required}`` of a rule's keyword options (everything but ``splits``)."""
    parameters = list(inspect.signature(_rule(name)).parameters.values())[1:]
    return {p.name: p.default is inspect.Parameter.empty for p in parameters
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def select(splits: Mapping[str, object], rule: str = SELECTION, **options) -> Plan:
    """Pick the neurons to split with the rule named ``rule`` (see :data:`SELECTION_RULES`).

    Parameters
    ----------
    splits : dict
        ``{layer: LayerSplitting}`` or ``{layer: eigenvalues}``.
    rule : str
        ``"negative"`` (default, :data:`nni_splitting.defaults.SELECTION`), ``"per_cost"``,
        ``"lowest_fraction"``, ``"energy"`` or a registered name.
    **options
        The rule's own keyword arguments (:func:`rule_options`), e.g. ``max_splits``, ``threshold``,
        ``costs``, ``budget``, ``fraction``.

    Raises ``ValueError`` for an unknown rule, an option the rule does not take, or a required one missing.
    """
    accepted = rule_options(rule)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"selection rule {rule!r} takes no option(s) {unknown}; its options: {sorted(accepted)}")
    missing = sorted(k for k, required in accepted.items() if required and options.get(k) is None)
    if missing:
        raise ValueError(f"selection rule {rule!r} needs option(s) {missing}")
    return _rule(rule)(splits, **options)
