"""The activation registry: one entry per activation serves modules and traced functions alike."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nni_splitting.graph.activations import (Activation, ActivationSpec, activation_from_function, activation_from_module,
                                       register_activation)


@pytest.mark.parametrize("module,function,args,kwargs", [
    (nn.ReLU(), F.relu, (), {}),
    (nn.ReLU6(), F.relu6, (), {}),
    (nn.LeakyReLU(0.2), F.leaky_relu, (0.2,), {}),
    (nn.LeakyReLU(0.3), "leaky_relu_", (), {"negative_slope": 0.3}),
    (nn.Tanh(), torch.tanh, (), {}),
    (nn.Sigmoid(), "sigmoid", (), {}),
    (nn.Softplus(beta=2.0), F.softplus, (2.0,), {}),
    (nn.SiLU(), F.silu, (), {}),
    (nn.GELU(approximate="tanh"), F.gelu, (), {"approximate": "tanh"}),
])
def test_module_and_function_give_the_same_derivatives(module, function, args, kwargs):
    u = torch.linspace(-3, 8, 23, dtype=torch.float64)
    from_module = activation_from_module(module, surrogate_beta=4.0)
    from_function = activation_from_function(function, (None, *args), kwargs, surrogate_beta=4.0)
    assert from_module.name == from_function.name
    torch.testing.assert_close(from_module.first(u), from_function.first(u))
    torch.testing.assert_close(from_module.second(u), from_function.second(u))


def test_unknown_activations_are_none():
    assert activation_from_module(nn.Linear(2, 2)) is None
    assert activation_from_function("matmul", (), {}) is None
    assert activation_from_module(nn.ELU()).name == "elu"  # autograd entry: modules only


def test_register_a_new_activation_once_for_module_and_function():
    class Cube(nn.Module):
        def forward(self, x):
            return x ** 3

    def cube(x):
        return x ** 3

    register_activation(Activation("cube", lambda beta: ActivationSpec("cube", lambda u: 3 * u ** 2, lambda u: 6 * u),
                                   (Cube,), ("cube",)))
    u = torch.tensor([-1.0, 2.0], dtype=torch.float64)
    for spec in (activation_from_module(Cube()), activation_from_function(cube, (None,), {})):
        assert spec.name == "cube"
        torch.testing.assert_close(spec.second(u), 6 * u)
    with pytest.raises(ValueError, match="Activation"):
        register_activation("cube")
    assert math.isfinite(float(activation_from_module(nn.Tanh()).second(u).sum()))
