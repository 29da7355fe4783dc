"""Energy-aware selection: the LP (HiGHS) and the greedy fallback respect every budget, never pick lambda >= 0."""
import itertools
import logging

import numpy as np
import pytest
import torch
import torch.nn as nn

from nni_splitting import compute_splitting, neuron_costs, select_neurons
from nni_splitting.growth.selection import InfeasibleBudgetError, energy_aware_plan, select_energy_aware


def _random_instance(seed, layers=5, width=40):
    rng = np.random.default_rng(seed)
    names = [f"l{i}" for i in range(layers)]
    splits = {name: rng.normal(-0.3, 1.0, width).tolist() for name in names}
    splits[names[0]][:3] = [0.0, 0.0, 0.0]  # exactly zero: never eligible
    costs = {name: float(rng.uniform(1, 20)) for name in names}
    groups = {"front": names[:3], "back": names[2:], "all": names}  # overlapping groups
    budgets = {"front": float(rng.uniform(10, 200)), "back": float(rng.uniform(10, 200)), "all": float(rng.uniform(50, 300))}
    return splits, costs, groups, budgets


def _spent(plan, costs, members):
    return sum(len(plan.get(layer, [])) * costs[layer] for layer in members)


@pytest.mark.parametrize("solver", ["highs", "greedy"])
@pytest.mark.parametrize("seed", range(8))
def test_budgets_hold_and_nonnegative_never_selected(seed, solver):
    splits, costs, groups, budgets = _random_instance(seed)
    plan = select_energy_aware(splits, costs, budgets, groups=groups, solver=solver)
    for group, members in groups.items():
        assert _spent(plan, costs, members) <= budgets[group] + 1e-9, group
    for layer, indices in plan.items():
        assert indices == sorted(set(indices))
        assert all(splits[layer][i] < 0 for i in indices)
    assert list(plan) == [layer for layer in splits if layer in plan]  # select_neurons' format and order
    # Nothing eligible is left out that would still fit every budget (the greedy fill is maximal).
    chosen = {(layer, i) for layer, idx in plan.items() for i in idx}
    for layer, values in splits.items():
        for i, value in enumerate(values):
            if value < 0 and (layer, i) not in chosen:
                assert any(_spent(plan, costs, m) + costs[layer] > budgets[g] + 1e-9
                           for g, m in groups.items() if layer in m)


def test_lp_is_optimal_when_integral():
    """Per-layer budgets of whole neurons: the LP optimum is integral, the m most negative of each layer."""
    splits = {"a": [-5.0, -1.0, 2.0, -3.0, -0.5], "b": [-0.2, -4.0, -4.5, 0.0]}
    costs = {"a": 2.0, "b": 3.0}
    plan = select_energy_aware(splits, costs, {"a": 4.0, "b": 3.0})
    assert plan == {"a": [0, 3], "b": [2]}


def test_overlapping_groups_bind_each_layer():
    """Two groups sharing a layer: a neuron counts against every group of its layer."""
    splits = {"shared": [-3.0, -3.0], "front": [-2.0, -2.0]}
    costs = {"shared": 1.0, "front": 1.0}
    groups = {"g1": ["shared", "front"], "g2": ["shared"]}
    budgets = {"g1": 2.0, "g2": 0.0}  # the shared layer has no room in g2
    plan = select_energy_aware(splits, costs, budgets, groups=groups)
    assert plan == {"front": [0, 1]}
    assert select_energy_aware(splits, costs, budgets, groups=groups, solver="greedy") == plan


def test_lp_objective_close_to_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(10):
        values = {"a": rng.normal(-1, 1, 4).tolist(), "b": rng.normal(-1, 1, 4).tolist()}
        costs = {"a": float(rng.uniform(1, 4)), "b": float(rng.uniform(1, 4))}
        budget = float(rng.uniform(2, 10))
        plan = select_energy_aware(values, costs, budget)
        got = sum(values[l][i] for l, idx in plan.items() for i in idx)
        items = [(l, i) for l in values for i in range(4) if values[l][i] < 0]
        best = 0.0
        for r in range(len(items) + 1):
            for subset in itertools.combinations(items, r):
                if sum(costs[l] for l, _ in subset) <= budget:
                    best = min(best, sum(values[l][i] for l, i in subset))
        # A vertex of the LP has at most one fractional beta (one budget): at most one neuron is lost.
        worst_single = min(min(v) for v in values.values())
        assert best <= got <= best - worst_single + 1e-12


def test_infeasible_budget_raises_clearly():
    splits = {"a": [-1.0, -2.0], "b": [-3.0]}
    with pytest.raises(InfeasibleBudgetError, match=r"infeasible.*'b': -5\.0"):
        select_energy_aware(splits, {"a": 1.0, "b": 1.0}, {"a": 3.0, "b": -5.0})
    with pytest.raises(ValueError, match="infeasible"):  # InfeasibleBudgetError is a ValueError
        select_energy_aware(splits, {"a": 1.0, "b": 1.0}, -1.0, solver="greedy")


def test_zero_budget_and_no_candidates_give_empty_plans():
    assert select_energy_aware({"a": [-1.0]}, {"a": 1.0}, 0.0) == {}
    assert select_energy_aware({"a": [0.5, 0.0]}, {"a": 1.0}, 10.0) == {}
    assert select_energy_aware({"a": [-1.0, -2.0]}, {"a": 1.0}, 10.0, threshold=-1.5) == {"a": [1]}
    assert select_energy_aware({"a": [-1.0, -2.0, -3.0]}, {"a": 1.0}, 10.0, max_splits=2) == {"a": [1, 2]}


def test_bad_arguments():
    splits = {"a": [-1.0], "b": [-2.0]}
    costs = {"a": 1.0, "b": 1.0}
    with pytest.raises(ValueError, match="solver='simplex'"):
        select_energy_aware(splits, costs, 1.0, solver="simplex")
    with pytest.raises(ValueError, match=r"no entry for layer\(s\) \['b'\]"):
        select_energy_aware(splits, {"a": 1.0}, 1.0)
    with pytest.raises(ValueError, match=r"costs must be finite and > 0, got \{'a': 0.0\}"):
        select_energy_aware(splits, {"a": 0.0, "b": 1.0}, 1.0)
    with pytest.raises(ValueError, match=r"layer\(s\) \['b'\] are in no budget group"):
        select_energy_aware(splits, costs, {"a": 1.0})
    with pytest.raises(ValueError, match=r"names layer\(s\) \['c'\]"):
        select_energy_aware(splits, costs, {"g": 1.0}, groups={"g": ["a", "b", "c"]})
    with pytest.raises(ValueError, match="threshold=0.1"):
        select_energy_aware(splits, costs, 1.0, threshold=0.1)


def test_highs_failure_falls_back_to_greedy(monkeypatch, caplog):
    import scipy.optimize

    class Failed:
        status, message, x, fun = 4, "numerical difficulties", None, None

    monkeypatch.setattr(scipy.optimize, "linprog", lambda *a, **k: Failed())
    splits = {"a": [-1.0, -2.0, -3.0]}
    with caplog.at_level(logging.WARNING, logger="nni_splitting.growth.selection"):
        plan = select_energy_aware(splits, {"a": 1.0}, 2.0)
    assert plan == {"a": [1, 2]} and "greedy" in caplog.text


def test_with_nni_counted_costs_on_a_real_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh(),
                          nn.Conv2d(4, 6, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(6, 10)).eval()
    x, y = torch.randn(16, 1, 6, 6), torch.randint(0, 10, (16,))
    splits = compute_splitting(model, nn.CrossEntropyLoss(), [(x, y)])
    dummy = torch.zeros(1, 1, 6, 6)
    costs = neuron_costs(model, dummy, kind="flops")
    budget = 2.5 * max(costs.values())
    plan = energy_aware_plan(model, dummy, splits, budget, kind="flops")
    assert sum(len(idx) * costs[layer] for layer, idx in plan.items()) <= budget
    for layer, indices in plan.items():
        assert all(float(splits[layer].eigenvalues[i]) < 0 for i in indices)
    # With one budget, the LP relaxation and the lambda/cost ranking agree.
    assert plan == select_neurons(splits, costs=costs, budget=budget)
