"""Selection rules, eval-mode BatchNorm folding, the ReLU surrogate, NNI's counter and bad-input errors."""
import logging
import math

import pytest
import torch
import torch.nn as nn

from nni_splitting import apply_splits, compute_splitting, neuron_costs, select_neurons, count_model
from nni_splitting.graph.activations import activation_from_module
from nni_splitting.core.matrix import batchnorm_scale


def _data(n=32, features=4, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, features, generator=g), torch.randint(0, classes, (n,), generator=g)


def _mlp(activation=None, bn=False):
    torch.manual_seed(0)
    layers = [nn.Linear(4, 6)] + ([nn.BatchNorm1d(6)] if bn else []) + [activation or nn.Tanh(), nn.Linear(6, 3)]
    return nn.Sequential(*layers).eval()


# ---------------------------------------------------------------- selection
def test_select_top_m_threshold_and_caps():
    splits = {"a": torch.tensor([-5.0, -1.0, 0.5, -3.0]), "b": [-4.0, -0.1, 0.0, -2.0]}
    assert select_neurons(splits, max_splits=3) == {"a": [0, 3], "b": [0]}
    assert select_neurons(splits, threshold=-2.5) == {"a": [0, 3], "b": [0]}
    assert select_neurons(splits, max_per_layer=1) == {"a": [0], "b": [0]}
    assert select_neurons(splits, max_per_layer={"a": 0}) == {"b": [0, 3, 1]} or \
        select_neurons(splits, max_per_layer={"a": 0}) == {"b": [0, 1, 3]}
    plan = select_neurons(splits)
    chosen = [(l, i) for l, idx in plan.items() for i in idx]
    assert ("b", 2) not in chosen and ("a", 2) not in chosen  # lambda >= threshold never picked
    with pytest.raises(ValueError, match="threshold=0.5"):
        select_neurons(splits, threshold=0.5)


def test_select_cost_aware_and_budget():
    splits = {"cheap": [-1.0, -1.0], "dear": [-3.0]}
    assert select_neurons(splits, max_splits=1) == {"dear": [0]}
    assert select_neurons(splits, max_splits=1, costs={"cheap": 1.0, "dear": 10.0}) == {"cheap": [0]}
    assert select_neurons(splits, costs={"cheap": 1.0, "dear": 10.0}, budget=2.5) == {"cheap": [0, 1]}
    with pytest.raises(ValueError, match="budget needs costs"):
        select_neurons(splits, budget=1.0)


def test_select_on_real_splits_never_picks_nonnegative():
    model = _mlp()
    x, y = _data()
    splits = compute_splitting(model, nn.CrossEntropyLoss(), [(x, y)])
    plan = select_neurons(splits, threshold=0.0)
    for layer, indices in plan.items():
        assert all(float(splits[layer].eigenvalues[i]) < 0 for i in indices)


# ---------------------------------------------------------------- BN folding and surrogate
def test_eval_mode_batchnorm_is_folded():
    """A BatchNorm before the activation equals a Linear with weights scaled by c = gamma / sqrt(var + eps)."""
    torch.manual_seed(0)
    with_bn = _mlp(bn=True).double()
    bn = with_bn[1]
    bn.running_var.uniform_(0.5, 2.0)
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    c = batchnorm_scale(bn, 6, bn.running_var)
    assert torch.allclose(c, bn.weight / torch.sqrt(bn.running_var + bn.eps))
    folded = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double().eval()
    folded[0].weight.data = with_bn[0].weight * c[:, None]
    folded[0].bias.data = (with_bn[0].bias - bn.running_mean) * c + bn.bias
    folded[2].load_state_dict(with_bn[3].state_dict())
    x, y = _data()
    x = x.double()
    s_bn = compute_splitting(with_bn, nn.CrossEntropyLoss(), [(x, y)], keep_matrices=True)["0"].matrices
    s_folded = compute_splitting(folded, nn.CrossEntropyLoss(), [(x, y)], keep_matrices=True)["0"].matrices
    # theta_folded = D theta with D = diag(c_j, ..., c_j, c_j) on weights, and the bias picks up the BN shift:
    # S_bn = c_j^2 S_folded (same x~ x~^T, sigma'' at the same pre-activation).
    assert torch.allclose(s_bn, s_folded * (c ** 2)[:, None, None], rtol=1e-8, atol=1e-12)
    assert with_bn.training is False and with_bn[1].running_var.shape == (6,)


def test_training_mode_model_is_scored_in_eval_mode():
    model = _mlp(bn=True).train()
    x, y = _data()
    splits = compute_splitting(model, nn.CrossEntropyLoss(), [(x, y)])
    assert model.training  # untouched
    assert splits["0"].eigenvalues.shape == (6,)


@pytest.mark.parametrize("module,beta", [(nn.ReLU(), 3.0), (nn.ReLU(), 10.0), (nn.ReLU6(), 3.0), (nn.LeakyReLU(0.1), 3.0)])
def test_relu_surrogate_is_softplus_second_derivative(module, beta):
    spec = activation_from_module(module, surrogate_beta=beta)
    assert spec.surrogate and f"softplus-{beta:g}" in spec.name
    u = torch.linspace(-4, 4, 101, dtype=torch.float64)
    s = torch.sigmoid(beta * u)
    expected = beta * s * (1 - s)
    if isinstance(module, nn.LeakyReLU):
        expected = (1 - module.negative_slope) * expected
    if isinstance(module, nn.ReLU6):
        s6 = torch.sigmoid(beta * (u - 6))
        expected = expected - beta * s6 * (1 - s6)
    assert torch.allclose(spec.second(u), expected)
    # the surrogate's integral over a kink is the kink's height (1 - slope)
    wide = torch.linspace(-20, 20, 40001, dtype=torch.float64)
    height = 1 - getattr(module, "negative_slope", 0.0)
    if not isinstance(module, nn.ReLU6):
        assert math.isclose(float(torch.trapezoid(spec.second(wide), wide)), height, rel_tol=1e-3)


@pytest.mark.parametrize("module", [nn.Tanh(), nn.Sigmoid(), nn.Softplus(beta=2.0), nn.SiLU(), nn.GELU(), nn.ELU()])
def test_exact_second_derivatives_match_autograd(module):
    spec = activation_from_module(module)
    assert not spec.surrogate
    u = torch.linspace(-3, 3, 61, dtype=torch.float64, requires_grad=True)
    (first,) = torch.autograd.grad(module(u).sum(), u, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), u)
    assert torch.allclose(spec.first(u.detach()), first.detach(), atol=1e-10)
    assert torch.allclose(spec.second(u.detach()), second, atol=1e-10)


def test_relu_beta_is_configurable():
    model = _mlp(activation=nn.ReLU())
    x, y = _data()
    a = compute_splitting(model, nn.CrossEntropyLoss(), [(x, y)], surrogate_beta=3.0)["0"].eigenvalues
    b = compute_splitting(model, nn.CrossEntropyLoss(), [(x, y)], surrogate_beta=30.0)["0"].eigenvalues
    assert not torch.allclose(a, b)
    assert "softplus-3" in compute_splitting(model, nn.CrossEntropyLoss(), [(x, y)])["0"].activation


def test_float64_in_float64_out():
    model = _mlp().double()
    x, y = _data()
    splits = compute_splitting(model, nn.CrossEntropyLoss(), [(x, y)])
    assert splits["0"].eigenvalues.dtype == torch.float64 and splits["0"].directions.dtype == torch.float64


# ---------------------------------------------------------------- NNI's counter
def test_neuron_costs_are_measured_with_nni_counter():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(6, 10)).eval()
    dummy = torch.randn(1, 1, 8, 8)
    costs = neuron_costs(model, dummy, kind="params")
    # conv0 row (9 + 1 bias) + BN (2) + conv3 column (6 * 9) = 66; conv3 row (36 + 1) + linear column (10) = 47
    assert costs == {"0": 66.0, "3": 47.0}
    flops = neuron_costs(model, dummy, kind="flops")
    flops_base, params_base = count_model(model, dummy)
    assert params_base == sum(p.numel() for p in model.parameters())
    assert flops["0"] > 0 and flops["3"] > 0
    with pytest.raises(ValueError, match="kind='bytes'"):
        neuron_costs(model, dummy, kind="bytes")


# ---------------------------------------------------------------- bad input
def test_nothing_splittable():
    x, y = _data()
    with pytest.raises(ValueError, match="nothing splittable"):
        compute_splitting(nn.Sequential(nn.Linear(4, 3)), nn.CrossEntropyLoss(), [(x, y)])


def test_unknown_layer_and_bad_index_and_epsilon():
    model = _mlp()
    x, y = _data()
    splits = compute_splitting(model, nn.CrossEntropyLoss(), [(x, y)])
    with pytest.raises(ValueError, match="unknown layer 'features.9'"):
        apply_splits(model, splits, {"features.9": [0]})
    with pytest.raises(ValueError, match="neuron index 6 out of range"):
        apply_splits(model, splits, {"0": [6]})
    with pytest.raises(ValueError, match="epsilon=-0.1"):
        apply_splits(model, splits, {"0": [0]}, epsilon=-0.1)
    with pytest.raises(ValueError, match=r"unknown layer name\(s\) \['nope'\]"):
        compute_splitting(model, nn.CrossEntropyLoss(), [(x, y)], layers=["nope"])


def test_nan_loss_and_empty_data_and_unknown_method():
    model = _mlp()
    x, y = _data()
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        compute_splitting(model, nn.CrossEntropyLoss(), [(x, y), (bad, y)])
    with pytest.raises(ValueError, match="batches is empty"):
        compute_splitting(model, nn.CrossEntropyLoss(), [])
    with pytest.raises(ValueError, match="method='newton'"):
        compute_splitting(model, nn.CrossEntropyLoss(), [(x, y)], method="newton")
    fast = compute_splitting(model, nn.CrossEntropyLoss(), [(x, y)], method="fast")["0"]
    assert torch.allclose(fast.directions.norm(dim=1), torch.ones(6), atol=1e-5)


def test_chunked_passes_match_single_pass(caplog):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 20), nn.Tanh(), nn.Linear(20, 3)).double().eval()
    x, y = _data()
    x = x.double()
    batches = [(x[:16], y[:16]), (x[16:], y[16:])]
    full = compute_splitting(model, nn.CrossEntropyLoss(), batches, method="exact", keep_matrices=True, layers=["0"])["0"]
    # d = 5: a matrix is 200 bytes; a batch of 16 unfolds to 16 * 5 doubles (640 bytes, held 4 times while
    # it is added): 5120 bytes is the least limit, its data half holds 12 neurons' running sums: 2 passes.
    with caplog.at_level(logging.INFO, logger="nni_splitting.core.splitting"):
        chunked = compute_splitting(model, nn.CrossEntropyLoss(), iter(batches), method="exact", keep_matrices=True,
                                    layers=["0"], memory_limit=5120)["0"]
    assert "2 passes over the data" in caplog.text
    assert torch.allclose(full.matrices, chunked.matrices)
    assert torch.allclose(full.eigenvalues, chunked.eigenvalues)
