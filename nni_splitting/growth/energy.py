"""Energy-aware selection: the LP of Wang, Liu, Wu et al. 2019 (https://arxiv.org/abs/1910.03103, section 3).

``min_beta sum_i beta_i lambda_i  s.t.  sum_{i in G} beta_i c_i <= B_G, 0 <= beta_i <= 1``, solved by SciPy's
HiGHS: integral ``beta_i = 1`` kept, fractional ones dropped, what is left of every budget filled greedily
by ``lambda_i / c_i`` (:func:`nni_splitting.growth.plans.greedy_fill`), so every budget holds exactly; a negative
budget raises :class:`InfeasibleBudgetError`. Reachable by name as ``select(splits, "energy", costs=...,
budget=...)`` (:mod:`nni_splitting.growth.selection`, which re-exports these names).
"""
from __future__ import annotations

import logging
import math
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from nni_splitting.growth.counting import neuron_costs
from nni_splitting.common.defaults import SOLVER, THRESHOLD
from nni_splitting.growth.plans import Pair, Plan, as_plan, candidates_below, check_costs, check_count, check_threshold, greedy_fill, rank_pairs

__all__ = ["select_energy_aware", "energy_aware_plan", "InfeasibleBudgetError", "SOLVERS"]

logger = logging.getLogger(__name__)

SOLVERS = ("highs", "greedy")
_INTEGRAL = 1e-6  # an LP beta_i >= 1 - this counts as 1


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
    check_threshold(threshold)
    check_count("max_splits", max_splits)
    layers = list(splits)
    check_costs(layers, costs)
    members, budgets = _groups_and_budgets(layers, budget, groups)
    if any(v < 0 for v in budgets.values()):
        raise _infeasible(budgets, max_splits)
    candidates = candidates_below(splits, threshold)
    weights = {g: {layer: float(costs[layer]) for layer in names} for g, names in members.items()}
    chosen = _solve_lp(candidates, weights, budgets, max_splits) if candidates and solver == "highs" else []
    spent = {g: sum(w[layer] for layer, _ in chosen if layer in w) for g, w in weights.items()}
    kept = greedy_fill(rank_pairs(candidates, costs.__getitem__), weights, budgets, spent, chosen=chosen, count=max_splits)
    plan = as_plan(kept, order=layers)
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
