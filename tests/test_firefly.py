"""Firefly growth (nni_splitting.growth.firefly) and the growth strategies, on real models and the digits data.

The measured quantity of the ranking test: the training-batch loss after applying one candidate
alone (its fitted perturbation at full scale, ``apply_firefly(model, c, {layer: [i]})``) minus the
loss before, on the batches that scored it.
"""
import copy
import math

import pytest
import torch
import torch.nn as nn
from scipy.stats import spearmanr

from nni_splitting.baselines.growth import add_new_neurons
from nni_splitting.common.data import load_dataset
from nni_splitting.growth.firefly import apply_firefly, compute_firefly, load_firefly, save_firefly
from nni_splitting.models import build_model
from nni_splitting.growth.selection import select
from nni_splitting.core.splitting import compute_splitting
from nni_splitting.growth.strategies import (STRATEGIES, FireflyStrategy, GrowthStrategy, S2DStrategy, make_strategy,
                                      register_strategy)
from nni_splitting.growth.surgery import apply_splits

LOSS = nn.CrossEntropyLoss()


@pytest.fixture(scope="module")
def digits():
    x, y = load_dataset("digits").train.tensors
    return x, y


def _batches(x, y, size=256, seed=0):
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return [(x[order[i:i + size]], y[order[i:i + size]]) for i in range(0, len(x), size)]


def _loss(model, batches):
    with torch.no_grad():
        total = sum(LOSS(model.eval()(a), b).item() * len(b) for a, b in batches)
    return total / sum(len(b) for _, b in batches)


def _train(model, x, y, steps, lr=0.05, seed=0, full_batch=False):
    model = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(steps):
        index = slice(None) if full_batch else torch.randint(0, len(x), (64,), generator=generator)
        optimizer.zero_grad()
        LOSS(model(x[index]), y[index]).backward()
        optimizer.step()
    return model.eval()


def _tanh_mlp(x, y):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.Tanh(), nn.Linear(12, 10), nn.Tanh(),
                          nn.Linear(10, 10)).double()
    return _train(model, x.double(), y, 200, lr=0.1, full_batch=True)


def _conv_model():
    """conv -> BN -> tanh -> depthwise -> BN -> tanh -> 1x1 conv -> BN -> tanh -> flatten -> linear (block 64)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.Tanh(),
        nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(4), nn.Tanh(),
        nn.Conv2d(4, 5, 1), nn.BatchNorm2d(5), nn.Tanh(), nn.Flatten(), nn.Linear(5 * 64, 10)).double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


def test_scores_rank_the_measured_loss_change_fp64(digits):
    x, y = digits
    model = _tanh_mlp(x, y)
    batches = _batches(x.double(), y)
    candidates = compute_firefly(model, LOSS, batches, epsilon=1e-2, steps=20, score_batches=len(batches),
                                 new_neurons=4)
    base = _loss(model, batches)
    predicted, measured, kinds = [], [], []
    for layer, entry in candidates.items():
        for index in range(entry.eigenvalues.numel()):
            predicted.append(float(entry.eigenvalues[index]))
            measured.append(_loss(apply_firefly(model, candidates, {layer: [index]}), batches) - base)
            kinds.append(index < entry.num_neurons)
    assert len(predicted) == 12 + 10 + 2 * 4
    assert spearmanr(predicted, measured).statistic >= 0.8
    for kind in (True, False):  # within the splits and within the new neurons too
        p = [v for v, k in zip(predicted, kinds) if k == kind]
        m = [v for v, k in zip(measured, kinds) if k == kind]
        assert spearmanr(p, m).statistic >= 0.8
    best = max(range(len(predicted)), key=lambda i: -predicted[i])
    assert measured[best] < 0 and abs(measured[best] - predicted[best]) < 0.1 * abs(predicted[best])


def test_split_scores_approach_the_splitting_index(digits):
    """A fitted split's score is epsilon^2 delta^T S delta / 2 >= epsilon^2 lambda_min / 2, and close to it."""
    x, y = digits
    model = _tanh_mlp(x, y)
    batches = _batches(x.double(), y)
    eps = 1e-2
    candidates = compute_firefly(model, LOSS, batches, epsilon=eps, kinds=["split"], steps=40,
                                 score_batches=len(batches))
    exact = compute_splitting(model, LOSS, batches, method="exact")
    for layer, entry in candidates.items():
        bound = eps ** 2 * exact[layer].eigenvalues / 2
        assert torch.all(entry.split_scores >= bound - 1e-9)
        best = int(torch.argmin(bound))
        assert float(entry.split_scores[best]) < 0.5 * float(bound[best])  # found most of the descent
        assert entry.new_scores.numel() == 0


def test_function_preserved_at_zero_scale_and_single_candidates_match_their_scores(tmp_path):
    x, y = load_dataset("digits").train.tensors
    x, y = x[:200].double(), y[:200]
    model = _conv_model()
    batches = [(x[:100], y[:100]), (x[100:], y[100:])]
    candidates = compute_firefly(model, LOSS, batches, epsilon=1e-3, new_neurons=2, steps=4, score_batches=2)
    assert list(candidates) == ["0", "6"]  # the depthwise conv is a follower of "0"; "10" is the classifier
    everything = {layer: list(range(entry.eigenvalues.numel())) for layer, entry in candidates.items()}
    silent = apply_firefly(model, candidates, everything, scale=0.0)
    assert silent[0].out_channels == 4 + 4 + 2 and silent[3].groups == 10 and silent[10].in_features == (5 + 5 + 2) * 64
    with torch.no_grad():
        assert torch.allclose(silent(x), model(x), atol=1e-12, rtol=0)
    base = _loss(model, batches)
    for layer, entry in candidates.items():
        for index in (int(torch.argmin(entry.split_scores)), entry.num_neurons + int(torch.argmin(entry.new_scores))):
            predicted = float(entry.eigenvalues[index])
            measured = _loss(apply_firefly(model, candidates, {layer: [index]}), batches) - base
            assert predicted < 0 and measured == pytest.approx(predicted, rel=0.1)
    grown = apply_firefly(model, candidates, everything)
    save_firefly(candidates, tmp_path / "firefly.pt")
    again = apply_firefly(model, load_firefly(tmp_path / "firefly.pt"), everything)
    for a, b in zip(grown.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert model[0].out_channels == 4 and sum(p.numel() for p in grown.parameters()) == sum(
        p.numel() for p in silent.parameters())


def _grow_pair(model, x, y, seed, count):
    batches = _batches(x, y, size=128, seed=100 + seed)
    candidates = compute_firefly(model, LOSS, batches, seed=seed)
    plan = select(candidates, "negative", max_splits=count)
    firefly = apply_firefly(model, candidates, plan)
    random_new, _ = add_new_neurons(model, x[:1], {layer: len(v) for layer, v in plan.items()}, seed=seed)
    sizes = [sum(p.numel() for p in m.parameters()) for m in (firefly, random_new)]
    assert sizes[0] == sizes[1] > sum(p.numel() for p in model.parameters())
    return firefly, random_new


def test_growth_on_digits_beats_random_new_neurons_at_equal_params(digits):
    x, y = digits
    after, tuned = [], []
    for seed in range(3):
        torch.manual_seed(seed)
        model = _train(build_model("mlp", widths=[6, 6], activation="relu"), x, y, 300, seed=seed)
        firefly, random_new = _grow_pair(model, x, y, seed, count=4)
        losses = [_loss(m, [(x, y)]) for m in (model, firefly, random_new)]
        assert losses[1] < losses[2] - 0.01 and losses[2] == pytest.approx(losses[0], abs=1e-6)
        after.append(losses[1:])
        # the same short full-batch fine-tune of both
        tuned.append([_loss(_train(m, x, y, 20, full_batch=True), [(x, y)]) for m in (firefly, random_new)])
    assert sum(a for a, _ in after) < sum(b for _, b in after)
    assert sum(a for a, _ in tuned) < sum(b for _, b in tuned)


def test_growth_of_a_batchnorm_cnn_on_digits(digits):
    x, y = digits
    torch.manual_seed(0)
    model = _train(build_model("small_cnn", widths=[4, 4, 4], in_channels=1), x, y, 150)
    firefly, random_new = _grow_pair(model, x, y, seed=0, count=4)
    assert _loss(firefly, [(x, y)]) < _loss(random_new, [(x, y)]) - 0.05


def test_bad_input_raises_value_errors(digits):
    x, y = digits
    model = build_model("mlp", widths=[4])
    batches = [(x[:32], y[:32])]
    for kwargs, match in [({"epsilon": 0}, "epsilon=0"), ({"epsilon": float("nan")}, "epsilon=nan"),
                          ({"new_epsilon": -1.0}, "new_epsilon=-1.0"), ({"kinds": "split"}, "kinds='split'"),
                          ({"kinds": ["split", "grow"]}, "kinds="), ({"steps": 0}, "steps=0"),
                          ({"steps": 1.5}, "steps=1.5"), ({"score_scale": 2.0}, "score_scale=2.0"),
                          ({"new_neurons": 5}, "exceeds the layer's width"), ({"new_neurons": -1}, "new_neurons"),
                          ({"new_neurons": {"nope": 1}}, "nope"), ({"layers": ["classifier.fc"]}, "nothing to grow"),
                          ({"lr": True}, "lr=True")]:
        with pytest.raises(ValueError, match=match):
            compute_firefly(model, LOSS, batches, **kwargs)
    with pytest.raises(ValueError, match="batches is empty"):
        compute_firefly(model, LOSS, [])
    with pytest.raises(ValueError, match="expected an"):
        compute_firefly(model, LOSS, [x[:4]])
    candidates = compute_firefly(model, LOSS, batches, new_neurons=1, steps=1)
    for plan, match in [({"nope": [0]}, "unknown layer 'nope'"), ({"features.fc1": [5]}, r"5 of layer .* \[0, 5\)"),
                        ({"features.fc1": [0, 0]}, "twice"), ({"features.fc1": [True]}, "True"),
                        ({"features.fc1": 3}, "expected a list")]:
        with pytest.raises(ValueError, match=match):
            apply_firefly(model, candidates, plan)
    with pytest.raises(ValueError, match="scale=-1"):
        apply_firefly(model, candidates, {"features.fc1": [0]}, scale=-1)
    only_new = compute_firefly(model, LOSS, batches, kinds=["new"], new_neurons=1, steps=1)
    assert math.isnan(float(only_new["features.fc1"].split_scores[0]))
    with pytest.raises(ValueError, match="no split candidates"):
        apply_firefly(model, only_new, {"features.fc1": [0]})
    assert apply_firefly(model, only_new, {"features.fc1": [4]}).features.fc1.out_features == 5


def test_strategies_by_name_and_s2d_is_todays_path(digits):
    x, y = digits
    assert {"s2d", "firefly"} <= set(STRATEGIES)
    model = _train(build_model("mlp", widths=[6]), x, y, 50)
    batches = [(x[:128], y[:128])]
    s2d = make_strategy("s2d", epsilon=0.1, method="exact")
    grown = s2d.grow(model, LOSS, batches, "lowest_fraction", fraction=0.5)
    splits = compute_splitting(model, LOSS, batches, method="exact")
    reference = apply_splits(model, splits, select(splits, "lowest_fraction", fraction=0.5), epsilon=0.1)
    for a, b in zip(grown.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)
    firefly = make_strategy("firefly", epsilon=0.05, steps=2, new_neurons=2)
    assert isinstance(firefly, FireflyStrategy) and firefly.name == "firefly"
    grown = firefly.grow(model, LOSS, batches, "negative", max_splits=2)
    assert grown.features.fc1.out_features == 8
    assert make_strategy(s2d) is s2d and isinstance(s2d, S2DStrategy)
    with pytest.raises(ValueError, match="'nope' is not one of"):
        make_strategy("nope")
    with pytest.raises(ValueError, match="unknown Firefly option"):
        make_strategy("firefly", method="fast")
    with pytest.raises(ValueError, match="cannot be given with a strategy instance"):
        make_strategy(s2d, epsilon=1.0)
    with pytest.raises(ValueError, match="exists"):
        register_strategy("s2d", S2DStrategy)
    with pytest.raises(ValueError, match="not a GrowthStrategy"):
        register_strategy("mine", dict)

    class Mine(S2DStrategy):
        name = "mine"

    register_strategy("mine", Mine)
    try:
        assert isinstance(make_strategy("mine"), GrowthStrategy)
    finally:
        STRATEGIES.pop("mine")


def test_greedy_top_under_a_parameter_budget(digits):
    from nni_splitting.growth.counting import neuron_costs

    x, y = digits
    model = _train(build_model("mlp", widths=[6, 6]), x, y, 50)
    costs = neuron_costs(model, x[:1], kind="params")
    assert costs == {"features.fc1": 64 + 1 + 6, "features.fc2": 6 + 1 + 10}
    candidates = compute_firefly(model, LOSS, [(x[:256], y[:256]), (x[256:512], y[256:512])])
    plan = select(candidates, "per_cost", costs=costs, budget=100)
    grown = apply_firefly(model, candidates, plan)
    added = sum(p.numel() for p in grown.parameters()) - sum(p.numel() for p in model.parameters())
    # marginal costs: a new fc1 neuron also feeds each fc2 neuron added in the same step (one weight each)
    cross = len(plan.get("features.fc1", [])) * len(plan.get("features.fc2", []))
    assert 0 < added == sum(costs[k] * len(v) for k, v in plan.items()) + cross <= 100 + cross
    ranked = sorted(float(v) / costs[k] for k, e in candidates.items() for v in e.eigenvalues)
    chosen = [float(candidates[k].eigenvalues[i]) / costs[k] for k, v in plan.items() for i in v]
    assert min(chosen) == ranked[0]  # the best loss decrease per parameter is in
