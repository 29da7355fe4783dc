"""Energy-aware selection: which neurons to split under cost budgets, by linear programming.

Wang, Liu, Wu, et al., "Energy-Aware Neural Architecture Optimization with Fast Splitting
Steepest Descent" (2019, https://arxiv.org/abs/1910.03103), section 3: with splitting indexes
``lambda_i`` and the cost ``c_i`` of splitting neuron ``i`` (its increase of FLOPs or parameters,
measured by NNI's counter on the real model: :func:`nni_splitting.neuron_costs`), choose

    min_beta  sum_i beta_i * lambda_i
    s.t.      sum_{i in G} beta_i * c_i <= B_G      for every layer group G (its budget B_G),
              0 <= beta_i <= 1,                     (and optionally sum_i beta_i <= m)

over the neurons with ``lambda_i < threshold <= 0`` only (a neuron with ``lambda_i >= 0`` cannot
decrease the loss and is never a variable). The LP is solved by SciPy's HiGHS; its vertex solution
has at most one fractional ``beta_i`` per binding constraint: integral ``beta_i = 1`` are kept,
fractional ones dropped, and the budget left over is filled greedily by ``lambda_i / c_i``, so every
budget holds exactly. ``solver="greedy"`` (or HiGHS failing) uses the ``lambda_i / c_i`` ranking
alone. An infeasible problem (a negative budget: the model is already above it) raises
:class:`InfeasibleBudgetError` naming the groups.
"""
from __future__ import annotations

import logging
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .selection import _eigenvalues

__all__ = ["select_energy_aware", "energy_aware_plan", "InfeasibleBudgetError", "SOLVERS"]

logger = logging.getLogger(__name__)

SOLVERS = ("highs", "greedy")
_INTEGRAL = 1e-6  # beta_i >= 1 - this counts as 1


class InfeasibleBudgetError(ValueError):
    """No selection satisfies the budgets (some budget is negative: the model already exceeds it)."""


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
        budgets = {"all": budget}
        members = {"all": list(layers)}
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


def _greedy(candidates, members: Dict[str, List[str]], remaining: Dict[str, float], costs: Mapping[str, float],
            chosen: set, limit: Optional[int]) -> set:
    """Add candidates by ``lambda / cost`` (most negative first) while every budget they count in still holds."""
    layer_groups = {layer: [g for g, names in members.items() if layer in names] for layer in costs}
    for eigenvalue, layer, index in sorted(candidates, key=lambda c: (c[0] / costs[c[1]], c[0])):
        if (layer, index) in chosen:
            continue
        if limit is not None and len(chosen) >= limit:
            break
        cost = costs[layer]
        if all(cost <= remaining[g] * (1 + 1e-12) + 1e-12 for g in layer_groups[layer]):
            chosen.add((layer, index))
            for g in layer_groups[layer]:
                remaining[g] -= cost
    return chosen


def select_energy_aware(splits: Mapping[str, object], costs: Mapping[str, float],
                        budget: Union[float, Mapping[str, float]], groups: Optional[Mapping[str, Sequence[str]]] = None,
                        threshold: float = 0.0, max_splits: Optional[int] = None,
                        solver: str = "highs") -> Dict[str, List[int]]:
    """Pick the neurons to split that decrease the loss most within cost budgets (the LP above).

    Parameters
    ----------
    splits : dict
        ``{layer: LayerSplitting}`` from :func:`compute_splitting`, or ``{layer: eigenvalues}``.
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
        ``{layer: sorted neuron indices}`` (the format of :func:`select_neurons`), only layers with picks.

    Raises
    ------
    InfeasibleBudgetError
        When no selection (not even the empty one) fits the budgets.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r} is not one of {SOLVERS}")
    if not isinstance(threshold, (int, float)) or math.isnan(threshold) or threshold > 0:
        raise ValueError(f"threshold={threshold!r} must be <= 0: a neuron with lambda_min >= 0 cannot decrease the loss")
    if max_splits is not None and (isinstance(max_splits, bool) or int(max_splits) != max_splits or max_splits < 0):
        raise ValueError(f"max_splits={max_splits!r} must be a non-negative integer or None")
    layers = list(splits)
    missing = sorted(set(layers) - set(costs))
    if missing:
        raise ValueError(f"costs has no entry for layer(s) {missing}")
    bad = {k: costs[k] for k in layers
           if not (isinstance(costs[k], (int, float)) and math.isfinite(costs[k]) and costs[k] > 0)}
    if bad:
        raise ValueError(f"costs must be finite and > 0, got {bad}")
    members, budgets = _groups_and_budgets(layers, budget, groups)
    if any(v < 0 for v in budgets.values()):
        raise _infeasible(budgets, max_splits)
    candidates = [(eigenvalue, layer, index) for layer in layers
                  for index, eigenvalue in enumerate(_eigenvalues(splits[layer]))
                  if math.isfinite(eigenvalue) and eigenvalue < threshold]
    chosen: set = set()
    if candidates and solver == "highs":
        chosen = _solve_lp(candidates, members, budgets, costs, max_splits)
    remaining = dict(budgets)
    for layer, _ in chosen:
        for g, names in members.items():
            if layer in names:
                remaining[g] -= costs[layer]
    chosen = _greedy(candidates, members, remaining, costs, chosen, max_splits)
    plan: Dict[str, List[int]] = {}
    for layer, index in chosen:
        plan.setdefault(layer, []).append(index)
    ordered = {layer: sorted(plan[layer]) for layer in layers if layer in plan}
    spent = {g: budgets[g] - remaining[g] for g in budgets}
    logger.info("energy-aware selection (%s): %d of %d candidate neuron(s) in %d layer(s); cost %s of budget %s",
                solver, len(chosen), len(candidates), len(ordered), spent, budgets)
    return ordered


def _solve_lp(candidates, members: Dict[str, List[str]], budgets: Dict[str, float], costs: Mapping[str, float],
              max_splits: Optional[int]) -> set:
    """The LP relaxation by HiGHS; returns the neurons with ``beta_i = 1`` (empty set on solver failure)."""
    try:
        import numpy as np
        from scipy.optimize import linprog
        from scipy.sparse import coo_matrix
    except ImportError as error:  # SciPy is a dependency, but keep the greedy path usable without it
        logger.warning("SciPy unavailable (%s): greedy lambda/cost selection instead of the LP", error)
        return set()
    names = list(budgets)
    rows, cols, data = [], [], []
    for i, (_, layer, _) in enumerate(candidates):
        for r, g in enumerate(names):
            if layer in members[g]:
                rows.append(r)
                cols.append(i)
                data.append(costs[layer])
    b_ub = [budgets[g] for g in names]
    if max_splits is not None:
        rows += [len(names)] * len(candidates)
        cols += list(range(len(candidates)))
        data += [1.0] * len(candidates)
        b_ub.append(float(max_splits))
    a_ub = coo_matrix((data, (rows, cols)), shape=(len(b_ub), len(candidates))).tocsr()
    objective = np.array([c[0] for c in candidates], dtype=float)
    result = linprog(objective, A_ub=a_ub, b_ub=np.array(b_ub), bounds=(0.0, 1.0), method="highs")
    if result.status == 2:
        raise _infeasible(budgets, max_splits)
    if result.status != 0 or result.x is None:
        logger.warning("HiGHS did not solve the selection LP (status %d: %s): greedy lambda/cost selection instead",
                       result.status, result.message)
        return set()
    beta = result.x
    fractional = int(((beta > _INTEGRAL) & (beta < 1 - _INTEGRAL)).sum())
    logger.debug("LP optimum %.6g, %d fractional beta(s) dropped before the greedy fill", result.fun, fractional)
    return {(candidates[i][1], candidates[i][2]) for i in range(len(candidates)) if beta[i] >= 1 - _INTEGRAL}


def energy_aware_plan(model: torch.nn.Module, dummy_input: torch.Tensor, splits: Mapping[str, object],
                      budget: Union[float, Mapping[str, float]], kind: str = "flops",
                      groups: Optional[Mapping[str, Sequence[str]]] = None, **kwargs) -> Dict[str, List[int]]:
    """:func:`select_energy_aware` with per-neuron costs measured by NNI's counter on ``model``.

    ``kind`` is ``"flops"`` or ``"params"`` (see :func:`nni_splitting.neuron_costs`); other keyword
    arguments go to :func:`select_energy_aware`.
    """
    from .counting import neuron_costs

    costs = neuron_costs(model, dummy_input, kind=kind, layers=list(splits))
    return select_energy_aware(splits, costs, budget, groups=groups, **kwargs)
