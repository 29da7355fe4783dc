"""Selection rules by name (negative, per_cost, lowest_fraction, energy), the tuner's ranked plans, split counts,
the shared defaults, and SplittingGrower reaching every rule by name."""
import inspect

import pytest
import torch
import torch.nn as nn

from nni_splitting import SplittingGrower, apply_splits, compute_splitting, count_model, neuron_costs
from nni_splitting.common import defaults
from nni_splitting.growth.selection import (SELECTION_RULES, halve_plan, rank_plan, register_selection_rule, rule_options,
                                     select, select_energy_aware, select_lowest_fraction, select_neurons,
                                     split_count, trim_plan)


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 3)).eval()


def _data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.fixture(scope="module")
def real_splits():
    model = _cnn()
    x, y = _data()
    return model, (x, y), compute_splitting(model, nn.CrossEntropyLoss(), [(x, y)], method="exact")


def _picked(plan):
    return {(layer, i) for layer, idx in plan.items() for i in idx}


# ---------------------------------------------------------------- lowest_fraction on real splitting indexes
def test_lowest_fraction_takes_the_lowest_share_of_all_neurons_whatever_the_sign(real_splits):
    model, (x, y), splits = real_splits
    values = {(layer, i): float(v) for layer, s in splits.items() for i, v in enumerate(s.eigenvalues)}
    total = len(values)
    assert total == 6 + 8 + 5
    plan = select(splits, "lowest_fraction")  # default fraction 0.3
    chosen = _picked(plan)
    assert len(chosen) == round(defaults.FRACTION * total) == 6
    assert max(values[k] for k in chosen) <= min(values[k] for k in values if k not in chosen)
    assert all(idx == sorted(idx) for idx in plan.values()) and list(plan) == [k for k in splits if k in plan]
    # all neurons: the positive indexes the sign rule refuses are split too
    everything = select_lowest_fraction(splits, fraction=1.0)
    assert _picked(everything) == set(values)
    positive = {k for k, v in values.items() if v >= 0}
    assert positive, "the test model should have neurons with lambda >= 0"
    assert not _picked(select_neurons(splits)) & positive
    # max_splits alone is the count; with a fraction it caps it; max_per_layer caps each layer
    assert len(_picked(select(splits, "lowest_fraction", max_splits=2))) == 2
    assert len(_picked(select(splits, "lowest_fraction", fraction=0.5, max_splits=4))) == 4
    capped = select(splits, "lowest_fraction", fraction=0.5, max_per_layer=2)
    assert all(len(idx) <= 2 for idx in capped.values())
    # the plan is a valid surgery plan: epsilon = 0 keeps the function, and each layer grows by its picks
    grown = apply_splits(model, splits, everything, epsilon=0.0)
    with torch.no_grad():
        assert torch.allclose(grown(x), model(x), atol=1e-5)
    assert grown[0].out_channels == 12 and grown[3].out_channels == 16 and grown[7].out_features == 10


def test_lowest_fraction_bad_fraction(real_splits):
    _, _, splits = real_splits
    for bad in (0.0, 1.5, -0.1, True):
        with pytest.raises(ValueError, match=f"fraction={bad!r}"):
            select_lowest_fraction(splits, fraction=bad)
    assert select_lowest_fraction({}, fraction=0.3) == {}


# ---------------------------------------------------------------- the registry
def test_rules_by_name_match_their_functions(real_splits):
    model, (x, _), splits = real_splits
    assert set(SELECTION_RULES) >= {"negative", "per_cost", "lowest_fraction", "energy"}
    costs = neuron_costs(model, x[:1], kind="params")
    assert select(splits, "negative", max_splits=3) == select_neurons(splits, max_splits=3)
    assert select(splits) == select_neurons(splits)  # default rule: negative
    assert select(splits, "per_cost", costs=costs, max_splits=3) == select_neurons(splits, max_splits=3, costs=costs)
    budget = 3 * min(costs.values())
    energy = select(splits, "energy", costs=costs, budget=budget)
    assert energy == select_energy_aware(splits, costs, budget)
    assert sum(len(idx) * costs[layer] for layer, idx in energy.items()) <= budget
    # per-cost ranking prefers cheap layers: at equal count it never spends more than the plain ranking
    plain, cheap = select(splits, "negative", max_splits=2), select(splits, "per_cost", costs=costs, max_splits=2)
    spend = lambda plan: sum(len(idx) * costs[layer] for layer, idx in plan.items())  # noqa: E731
    assert spend(cheap) <= spend(plain)


def test_registry_errors_quote_the_bad_value():
    splits = {"a": [-1.0, 0.5]}
    with pytest.raises(ValueError, match="selection rule 'biggest' is not one of"):
        select(splits, "biggest")
    with pytest.raises(ValueError, match=r"'negative' takes no option\(s\) \['fraction'\]"):
        select(splits, "negative", fraction=0.3)
    with pytest.raises(ValueError, match=r"'per_cost' needs option\(s\) \['costs'\]"):
        select(splits, "per_cost")
    with pytest.raises(ValueError, match=r"'energy' needs option\(s\) \['budget'\]"):
        select(splits, "energy", costs={"a": 1.0})
    assert rule_options("lowest_fraction") == {"fraction": False, "max_splits": False, "max_per_layer": False}
    with pytest.raises(ValueError, match="'negative' exists"):
        register_selection_rule("negative", lambda splits: {})


def test_register_a_rule_and_reach_it_from_the_grower():
    def last_neuron(splits, max_splits=None):
        return {layer: [len(getattr(s, "eigenvalues", s)) - 1] for layer, s in list(splits.items())[:1]}

    register_selection_rule("last_neuron", last_neuron, replace=True)
    try:
        assert select({"a": [0.0, 1.0, 2.0]}, "last_neuron") == {"a": [2]}
        model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).eval()
        batches = [(torch.randn(16, 4), torch.randint(0, 3, (16,)))]
        grower = SplittingGrower(model, [{"op_types": ["Linear"], "selection": "last_neuron"}], batches=batches)
        grower.grow(steps=1)
        assert grower.history[0]["plan"] == {"0": [5]}
    finally:
        SELECTION_RULES.pop("last_neuron")


# ---------------------------------------------------------------- counts and the tuner's ranked plans
def test_split_count_one_rounding_and_range():
    assert split_count([10, 20], 0.3) == 9
    assert split_count([10, 20], None, 4) == 4
    assert split_count([1], 0.1) == 1  # at least one
    assert split_count(30) == round(defaults.GROW_RATIO * 30)
    assert split_count([5], 0.5) == 2 and split_count([7], 0.5) == 4  # round(), as the tuner does
    with pytest.raises(ValueError, match="not both"):
        split_count([3], 0.2, 4)
    for bad in (0.0, 1.5, -1):
        with pytest.raises(ValueError, match=f"grow_ratio={bad!r}"):
            split_count([3], bad)
    with pytest.raises(ValueError, match="max_splits=-1"):
        split_count([3], None, -1)


def test_rank_and_halve_plan():
    ranked = rank_plan({"a": [0, 2], "b": [1]}, {"a": [-1.0, 0, -3.0], "b": [0, -2.0]})
    assert ranked == [("a", 2), ("b", 1), ("a", 0)]
    assert halve_plan(ranked) == {"a": [2]}
    assert halve_plan([]) == {}
    assert halve_plan([("b", 3), ("a", 1), ("b", 0), ("a", 4)]) == {"b": [3], "a": [1]}
    # per unit cost: b's -2 at cost 1 beats a's -3 at cost 10; a layer without a cost costs 1
    assert rank_plan({"a": [2], "b": [1]}, {"a": [0, 0, -3.0], "b": [0, -2.0]}, {"a": 10.0}) == [("b", 1), ("a", 2)]


def test_trim_plan_fits_every_limit_and_the_exact_count():
    ranked = [("a", 0), ("b", 0), ("a", 1), ("b", 1)]
    unit = {"params": {"a": 10.0, "b": 4.0}, "flops": {"a": 1.0, "b": 50.0}}
    base = {"params": 100.0, "flops": 10.0}
    # params room 20, flops room 60: a0 (10, 1) fits, b0 (4, 50) fits, a1 would fit params (24 -> 34 > 20: no)
    assert trim_plan(ranked, base, unit, {"params": 120.0, "flops": 70.0}) == {"a": [0], "b": [0]}
    assert trim_plan(ranked, base, unit, {"params": 200.0}) == {"a": [0, 1], "b": [0, 1]}
    assert trim_plan(ranked, base, unit, {"params": 105.0}) == {"b": [0]}
    assert trim_plan(ranked, base, unit, {"params": 100.0}) == {}
    # the exact counter has the last word: the worst kept neurons go until it fits
    seen = []

    def exact(plan):
        seen.append(plan)
        return {"params": 100.0 + 30.0 * sum(map(len, plan.values()))}

    assert trim_plan(ranked, base, unit, {"params": 170.0}, exact=exact) == {"a": [0], "b": [0]}
    assert seen[0] == {"a": [0, 1], "b": [0, 1]}
    assert trim_plan(ranked, base, unit, {"params": 200.0}, exact=lambda plan: None) == {"a": [0, 1], "b": [0, 1]}


# ---------------------------------------------------------------- one default per option
def test_defaults_are_the_documented_ones_and_used():
    assert (defaults.EPSILON, defaults.GROW_RATIO, defaults.METHOD) == (0.1, 0.3, "auto")
    grower = inspect.signature(SplittingGrower).parameters
    assert grower["epsilon"].default == defaults.EPSILON and grower["method"].default == defaults.METHOD
    assert grower["threshold"].default == defaults.THRESHOLD and grower["selection"].default == defaults.SELECTION
    assert inspect.signature(select_neurons).parameters["threshold"].default == defaults.THRESHOLD
    for name in ("EPSILON", "GROW_RATIO", "METHOD"):
        assert f"``{name}``" in defaults.__doc__


# ---------------------------------------------------------------- the grower, every rule by name
def _mlp_grower(config, **kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 10), nn.Tanh(), nn.Linear(10, 3)).eval()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g))]
    return model, batches, SplittingGrower(model, [config], batches=batches, **kwargs)


def test_grower_default_count_is_the_shared_grow_ratio():
    model, batches, grower = _mlp_grower({"op_types": ["Linear"]}, threshold=0.0)
    splits = compute_splitting(model, nn.CrossEntropyLoss(), batches)
    negatives = int((splits["0"].eigenvalues < 0).sum())
    grower.grow(steps=1)
    assert grower.history[0]["splits"] == min(negatives, round(defaults.GROW_RATIO * 10))


def test_grower_lowest_fraction_splits_whatever_the_sign():
    model, batches, grower = _mlp_grower({"op_types": ["Linear"], "selection": "lowest_fraction", "fraction": 0.5})
    splits = compute_splitting(model, nn.CrossEntropyLoss(), batches)
    grown = grower.grow(steps=2)
    assert [h["splits"] for h in grower.history] == [5, round(0.5 * 15)]
    expected = select(splits, "lowest_fraction", fraction=0.5)
    assert grower.history[0]["plan"] == expected
    assert grown[0].out_features == 10 + 5 + 8
    # the grower-wide argument names the rule of configs that name none
    _, _, by_argument = _mlp_grower({"op_types": ["Linear"]}, selection="lowest_fraction")
    by_argument.grow(steps=1)
    assert by_argument.history[0]["plan"] == select(splits, "lowest_fraction")


@pytest.mark.parametrize("rule", ["per_cost", "energy"])
def test_grower_cost_rules_hold_the_budget(rule):
    model, batches, _ = _mlp_grower({"op_types": ["Linear"]})
    cost = neuron_costs(model, batches[0][0][:1], kind="params")["0"]  # 4 + 1 in, 3 out
    config = {"op_types": ["Linear"], "selection": rule, "cost": "params", "budget": 2.5 * cost}
    _, _, grower = _mlp_grower(config)
    grown = grower.grow(steps=1)
    before = count_model(model, batches[0][0][:1])[1]
    assert 0 < count_model(grown, batches[0][0][:1])[1] - before <= 2.5 * cost
    assert grower.history[0]["splits"] == 2


@pytest.mark.parametrize("config,match", [
    ({"selection": "nope"}, "selection rule 'nope' is not one of"),
    ({"fraction": 0.3}, r"\['fraction'\] do not apply to selection 'negative'"),
    ({"selection": "lowest_fraction", "grow_ratio": 0.3}, "takes fraction=, not grow_ratio=0.3"),
    ({"selection": "lowest_fraction", "fraction": 2.0}, "fraction=2.0"),
    ({"selection": "energy"}, r"'energy' needs option\(s\) \['budget'\]"),
    ({"selection": "energy", "budget": -1.0}, "infeasible"),
    ({"selection": "per_cost", "cost": "bytes"}, "cost='bytes'"),
    ({"cost": "params"}, "'cost' does not apply to selection 'negative'"),
    ({"grow_ratio": 1.5}, "grow_ratio=1.5"),
    ({"threshold": 0.2}, "threshold=0.2"),
    ({"grow_ratio": 0.2, "max_splits": 3}, "not both"),
])
def test_grower_config_errors_before_training(config, match):
    calls = []
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    with pytest.raises(ValueError, match=match):
        SplittingGrower(model, [{"op_types": ["Linear"], **config}], lambda m: calls.append(m),
                        batches=[(torch.randn(4, 4), torch.randint(0, 3, (4,)))])
    assert not calls
