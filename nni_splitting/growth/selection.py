"""Which neurons to split (Algorithm 1, step 3): every selection rule, reachable by name.

Rules (:data:`SELECTION_RULES`, called through :func:`select`; defaults in :mod:`nni_splitting.common.defaults`):

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
:func:`halve_plan` rank and halve a plan for the tuner's retries. The LP lives in :mod:`nni_splitting.growth.energy`,
the shared pieces (candidates, ranking, the greedy fill, ``split_count``, ranked plans) in
:mod:`nni_splitting.growth.plans`; both are re-exported here.
"""
from __future__ import annotations

import inspect
import logging
from typing import Callable, Dict, Mapping, Optional, Union

from nni_splitting.common.defaults import FRACTION, SELECTION, THRESHOLD
from nni_splitting.growth.energy import SOLVERS, InfeasibleBudgetError, energy_aware_plan, select_energy_aware
from nni_splitting.growth.plans import (Plan, as_plan, candidates_below, check_costs, check_count, check_threshold, eigenvalues_of,
                    greedy_fill, halve_plan, rank_pairs, rank_plan, split_count, trim_plan)

__all__ = [
    "select", "SELECTION_RULES", "register_selection_rule", "rule_options",
    "select_neurons", "select_negative", "select_per_cost", "select_lowest_fraction",
    "select_energy_aware", "energy_aware_plan", "InfeasibleBudgetError", "SOLVERS",
    "split_count", "rank_plan", "trim_plan", "halve_plan",
]

logger = logging.getLogger(__name__)


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
    check_threshold(threshold)
    check_count("max_splits", max_splits)
    if budget is not None and costs is None:
        raise ValueError("budget needs costs: pass costs={layer: cost per split neuron}")
    if costs is not None:
        check_costs(splits, costs)
    ranked = rank_pairs(candidates_below(splits, threshold), costs.__getitem__ if costs is not None else None)
    weights = {"budget": {layer: costs[layer] for layer in splits}} if budget is not None else {}
    limits = {"budget": float(budget)} if budget is not None else {}
    kept = greedy_fill(ranked, weights, limits, {k: 0.0 for k in limits}, count=max_splits, max_per_layer=max_per_layer)
    plan = as_plan(kept, order=splits)
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
        :data:`nni_splitting.common.defaults.FRACTION` unless ``max_splits`` is given alone.
    max_splits : int, optional
        A count instead of (alone) or a cap on (with ``fraction``) the fraction's count.
    max_per_layer : int or dict, optional
        At most this many neurons per layer.
    """
    check_count("max_splits", max_splits)
    if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
                                 or not 0 < fraction <= 1):
        raise ValueError(f"fraction={fraction!r} must be in (0, 1]")
    total = sum(len(eigenvalues_of(entry)) for entry in splits.values())
    if fraction is None and max_splits is not None:
        count = int(max_splits)
    else:
        count = max(1, int(round((FRACTION if fraction is None else fraction) * total))) if total else 0
        count = min(count, int(max_splits)) if max_splits is not None else count
    kept = greedy_fill(rank_pairs(candidates_below(splits, None)), {}, {}, {}, count=count, max_per_layer=max_per_layer)
    plan = as_plan(kept, order=splits)
    logger.info("lowest-fraction selection: %d of %d neuron(s) in %d layer(s)", len(kept), total, len(plan))
    return plan


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
        ``"negative"`` (default, :data:`nni_splitting.common.defaults.SELECTION`), ``"per_cost"``,
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
