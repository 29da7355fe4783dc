"""The layer-handler registry: a new layer kind registered with one handler is split end to end.

The kind is a "scaled linear" unit ``u = g * (W x + b)`` with a fixed gain buffer ``g`` (not an
``nn.Linear`` subclass, so nothing of Linear's handler applies). Its reference is the augmented
network of Definition 2.1 in fp64 autograd: neuron j replaced by ``theta_j +- delta`` with halved
outgoing weights; the Hessian in ``delta`` at 0 is ``S_j``.
"""
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nni_splitting import apply_splits, compute_splitting, find_neuron_groups, trace_model
from nni_splitting.graph import NEURONS, LayerHandler, handler_for, register_layer_handler, replace_tensor
from nni_splitting.graph.handlers import LinearHandler


class ScaledLinear(nn.Module):
    """``gain * (x W^T + b)``: a layer kind the package does not know."""

    def __init__(self, in_features, out_features, gain=1.7):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / in_features ** 0.5)
        self.bias = nn.Parameter(0.1 * torch.randn(out_features))
        self.register_buffer("gain", torch.tensor(float(gain)))

    def forward(self, x):
        return self.gain * F.linear(x, self.weight, self.bias)


class ScaledLinearHandler(LayerHandler):
    """The one handler that makes ScaledLinear splittable: theta_j = (W_j, b_j), x~ = g [x, 1]."""

    kind = "scaled_linear"
    default_role = NEURONS

    def input_exclusion(self, module, shape):
        return None if len(shape) == 2 else f"input shape {list(shape)}"

    def consumer_block(self, module, shape, block):
        return block if block is not None else (1 if len(shape) == 2 else None)

    def neuron_parameters(self, module):
        return torch.cat([module.weight.detach(), module.bias.detach()[:, None]], dim=1)

    def set_neuron_parameters(self, module, theta):
        replace_tensor(module, "weight", theta[:, :-1])
        replace_tensor(module, "bias", theta[:, -1])

    def neuron_inputs(self, module, x):
        return module.gain * torch.cat([x, torch.ones_like(x[:, :1])], dim=1).unsqueeze(-1)

    def widen_consumer(self, module, indices, block, old_channels):
        weight = module.weight.detach().clone()
        weight[:, indices] = weight[:, indices] / 2
        replace_tensor(module, "weight", torch.cat([weight, weight[:, indices]], dim=1))


register_layer_handler(ScaledLinear, ScaledLinearHandler())


def _model():
    torch.manual_seed(0)
    return nn.Sequential(ScaledLinear(4, 6), nn.Tanh(), ScaledLinear(6, 5, gain=0.8), nn.Sigmoid(),
                         nn.Linear(5, 3)).double().eval()


def _data(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _augmented_reference(model, x, y, layer, j):
    """S_j of layer ``layer`` ("0" or "2") by autograd on the augmented network (Definition 2.1)."""
    index = int(layer)
    producer, activation = model[index], model[index + 1]
    theta = torch.cat([producer.weight[j], producer.bias[j:j + 1]]).detach()

    def loss_of(delta):
        h = x
        for k, module in enumerate(model):
            if k == index:
                out = module(h)
                plus = producer.gain * (h @ (theta[:-1] + delta[:-1]) + theta[-1] + delta[-1])
                minus = producer.gain * (h @ (theta[:-1] - delta[:-1]) + theta[-1] - delta[-1])
                h = (out, plus, minus)
            elif k == index + 1:
                out, plus, minus = h
                a = activation(out)
                mixed = 0.5 * (activation(plus) + activation(minus))
                h = torch.cat([a[:, :j], mixed[:, None], a[:, j + 1:]], dim=1)
            else:
                h = module(h)
        return nn.CrossEntropyLoss()(h, y)

    return torch.autograd.functional.hessian(loss_of, torch.zeros(theta.numel(), dtype=torch.float64))


def test_registered_kind_is_a_traced_leaf_and_forms_groups():
    model = _model()
    x, _ = _data()
    graph_module = trace_model(model, x)
    assert [n.target for n in graph_module.graph.nodes if n.op == "call_module"][:1] == ["0"]
    groups, excluded = find_neuron_groups(graph_module)
    assert set(groups) == {"0", "2"} and "4" in excluded
    assert groups["0"].kind == "scaled_linear" and [c.module for c in groups["0"].consumers] == ["2"]
    assert [c.module for c in groups["2"].consumers] == ["4"]


def test_exact_splitting_matrix_of_the_new_kind_matches_augmented_hessian():
    model = _model()
    x, y = _data()
    splits = compute_splitting(model, nn.CrossEntropyLoss(), [(x[:16], y[:16]), (x[16:], y[16:])], keep_matrices=True)
    for layer in ("0", "2"):
        for j in range(splits[layer].num_neurons):
            reference = _augmented_reference(model, x, y, layer, j)
            error = (splits[layer].matrices[j] - reference).norm() / reference.norm()
            assert float(error) <= 1e-6, (layer, j)


def test_fast_method_on_the_new_kind_uses_the_handler_products():
    model = _model()
    x, y = _data()
    exact = compute_splitting(model, nn.CrossEntropyLoss(), [(x, y)])
    fast = compute_splitting(model, nn.CrossEntropyLoss(), [(x, y)], method="fast", fast_options={"tol": 1e-8,
                                                                                                  "max_iter": 200})
    for layer in exact:
        scale = float(exact[layer].eigenvalues.abs().max())
        torch.testing.assert_close(fast[layer].eigenvalues, exact[layer].eigenvalues, atol=1e-5 * scale, rtol=0)
        torch.testing.assert_close(fast[layer].max_eigenvalues, exact[layer].max_eigenvalues, atol=1e-5 * scale,
                                   rtol=0)


def test_new_kind_is_split_function_preservingly_and_follows_theorem_2_3():
    model = _model()
    x, y = _data()
    loss_fn = nn.CrossEntropyLoss()
    splits = compute_splitting(model, loss_fn, [(x, y)])
    plan = {"0": [1, 4], "2": [0]}
    same = apply_splits(model, splits, plan, epsilon=0.0)
    assert same[0].weight.shape == (8, 4) and same[2].weight.shape == (6, 8) and same[4].weight.shape == (3, 6)
    with torch.no_grad():
        torch.testing.assert_close(same(x), model(x))
        base = loss_fn(model(x), y)
        eps = 1e-3
        for layer, j in (("0", 2), ("2", 3)):
            grown = apply_splits(model, splits, {layer: [j]}, epsilon=eps)
            change = loss_fn(grown(x), y) - base
            assert float(change) == pytest.approx(eps ** 2 * float(splits[layer].eigenvalues[j]) / 2, rel=2e-3,
                                                  abs=1e-13)
    assert model[0].weight.shape == (6, 4)  # copied, not in place


def test_registry_lookup_by_class_and_subclass():
    class MyLinear(nn.Linear):
        pass

    assert isinstance(handler_for(MyLinear(2, 3)), LinearHandler)
    assert isinstance(handler_for(ScaledLinear(2, 3)), ScaledLinearHandler)
    assert handler_for(nn.Tanh()) is None
    with pytest.raises(ValueError, match="nn.Module subclass"):
        register_layer_handler(int, ScaledLinearHandler())
    with pytest.raises(ValueError, match="LayerHandler"):
        register_layer_handler(ScaledLinear, object())


def test_a_layer_class_carries_its_own_handler():
    """Issue 26: a handler declared on the layer class (an instance, or an import path) comes with the layer."""
    class CarriedLinear(ScaledLinear):
        splitting_handler = ScaledLinearHandler()

    assert handler_for(CarriedLinear(2, 3)) is CarriedLinear.splitting_handler
    # the paper's RBF layer names its handler by path: a fresh interpreter that never imports the paper
    # module still finds it when it meets the layer
    code = ("import sys; from nni_splitting.models import build_model; from nni_splitting.graph import handler_for;"
            "assert 'nni_splitting.paper.rbf_toy' not in sys.modules;"
            "h = handler_for(build_model('rbf', widths=[3]).rbf); print(type(h).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "RBFHandler", out.stderr[-2000:]
