"""The splitting matrix against an independent fp64 autograd reference (Definition 2.1, Theorem 2.3).

The reference never looks at the package's math: it builds the augmented network in which neuron j
is replaced by two copies theta_j +- delta, each with half of the outgoing weight, and takes the
Hessian of the loss w.r.t. delta at delta = 0. That Hessian *is* the splitting matrix S_j.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from nni_splitting import apply_splits, compute_splitting



def _randomize_bn(module):
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)


def _data(shape, classes, n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def _hessian_reference(loss_of_delta, d):
    return torch.autograd.functional.hessian(loss_of_delta, torch.zeros(d, dtype=torch.float64))


def _relative_error(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@pytest.mark.parametrize("activation", [nn.Tanh(), nn.Softplus(beta=2.0), nn.Sigmoid(), nn.SiLU(), nn.GELU()])
def test_mlp_matches_augmented_hessian(activation):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), activation, nn.Linear(5, 3)).double().eval()
    x, y = _data((4,), 3)
    loss_fn = nn.CrossEntropyLoss()
    splits = compute_splitting(model, loss_fn, [(x[:10], y[:10]), (x[10:], y[10:])], keep_matrices=True)
    assert list(splits) == ["0"]  # the classifier's outputs are not neurons
    first, second = model[0], model[2]
    for j in range(5):
        def loss_of(delta):
            w, b = first.weight[j], first.bias[j]
            plus = activation(x @ (w + delta[:4]) + b + delta[4])
            minus = activation(x @ (w - delta[:4]) + b - delta[4])
            hidden = activation(first(x))
            hidden = torch.cat([hidden[:, :j], (0.5 * (plus + minus))[:, None], hidden[:, j + 1:]], dim=1)
            return loss_fn(second(hidden), y)

        reference = _hessian_reference(loss_of, 5)
        assert _relative_error(splits["0"].matrices[j], reference) <= 1e-6
    eigenvalues = torch.linalg.eigvalsh(splits["0"].matrices)[:, 0]
    assert torch.allclose(splits["0"].eigenvalues, eigenvalues)
    assert torch.allclose(splits["0"].directions.norm(dim=1), torch.ones(5, dtype=torch.float64))


def _conv_net(pool=nn.MaxPool2d):
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1, bias=True), nn.BatchNorm2d(3), nn.Tanh(),
        nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4), nn.Softplus(),
        pool(2), nn.Flatten(), nn.Linear(4 * 2 * 2, 3),
    ).double()
    _randomize_bn(model)
    return model.eval()


def test_conv_net_matches_augmented_hessian():
    model = _conv_net()
    x, y = _data((2, 8, 8), 3)
    loss_fn = nn.CrossEntropyLoss()
    splits = compute_splitting(model, loss_fn, [(x, y)], keep_matrices=True)
    assert set(splits) == {"0", "3"}
    for layer_index, (act_index, d) in {0: (2, 19), 3: (5, 27)}.items():
        conv = model[layer_index]
        head, tail = model[:layer_index], model[act_index + 1:]
        block = model[layer_index + 1:act_index + 1]  # BN, activation
        for j in range(conv.out_channels):
            def loss_of(delta):
                inputs = head(x)
                weight = conv.weight.clone()
                weight_delta = torch.zeros_like(weight)
                weight_delta[j] = delta[: weight[0].numel()].reshape(weight[0].shape)
                bias = conv.bias
                bias_delta = torch.zeros(conv.out_channels, dtype=torch.float64)
                if bias is not None:
                    bias_delta[j] = delta[-1]
                plus = block(F.conv2d(inputs, weight + weight_delta, None if bias is None else bias + bias_delta,
                                      conv.stride, conv.padding))
                minus = block(F.conv2d(inputs, weight - weight_delta, None if bias is None else bias - bias_delta,
                                       conv.stride, conv.padding))
                return loss_fn(tail(0.5 * (plus + minus)), y)

            reference = _hessian_reference(loss_of, d)
            assert _relative_error(splits[str(layer_index)].matrices[j], reference) <= 1e-6, (layer_index, j)


def test_depthwise_separable_block_matches_augmented_hessian():
    """Pointwise -> BN -> tanh -> depthwise -> BN -> tanh -> pointwise: the neuron includes the depthwise channel."""
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4), nn.Tanh(),
        nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(4), nn.Tanh(),
        nn.Conv2d(4, 5, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3),
    ).double()
    _randomize_bn(model)
    model.eval()
    x, y = _data((3, 5, 5), 3)
    loss_fn = nn.CrossEntropyLoss()
    splits = compute_splitting(model, loss_fn, [(x, y)], keep_matrices=True)
    assert "0" in splits and "3" not in splits  # the depthwise conv is part of the pointwise neuron
    assert splits["0"].group.depthwise == "3"
    pointwise, block, tail = model[0], model[1:6], model[6:]
    for j in range(4):
        def loss_of(delta):
            weight_delta = torch.zeros_like(pointwise.weight)
            weight_delta[j] = delta.reshape(3, 1, 1)
            plus = block(F.conv2d(x, pointwise.weight + weight_delta))
            minus = block(F.conv2d(x, pointwise.weight - weight_delta))
            return loss_fn(tail(0.5 * (plus + minus)), y)

        reference = _hessian_reference(loss_of, 3)
        assert _relative_error(splits["0"].matrices[j], reference) <= 1e-6, j


def _loss(model, x, y):
    with torch.no_grad():
        return float(nn.CrossEntropyLoss()(model(x), y))


def _single_split(splits, layer, j, direction):
    from dataclasses import replace
    directions = splits[layer].directions.clone()
    directions[j] = direction
    return {layer: replace(splits[layer], directions=directions)}


@pytest.mark.parametrize("which", ["mlp", "conv"])
def test_theorem_2_3_loss_change(which):
    """Splitting along v_min changes the loss by eps^2 lambda_min / 2, and beats random directions."""
    if which == "mlp":
        torch.manual_seed(3)
        model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double().eval()
        x, y = _data((4,), 3, n=64)
        layer = "0"
    else:
        # Average pooling: with max pooling a step of 1e-3 can already move an argmax, where the
        # loss is not smooth and Theorem 2.3's expansion does not hold.
        model = _conv_net(pool=nn.AvgPool2d)
        x, y = _data((2, 8, 8), 3, n=32)
        layer = "3"
    splits = compute_splitting(model, nn.CrossEntropyLoss(), [(x, y)])
    eps = 1e-3
    base = _loss(model, x, y)
    j = int(splits[layer].eigenvalues.argmin())
    lam = float(splits[layer].eigenvalues[j])
    grown = apply_splits(model, splits, {layer: [j]}, epsilon=eps)
    change = _loss(grown, x, y) - base
    assert abs(change - eps ** 2 * lam / 2) <= 0.01 * abs(eps ** 2 * lam / 2)
    generator = torch.Generator().manual_seed(0)
    d = splits[layer].directions.shape[1]
    for _ in range(100):
        v = torch.randn(d, generator=generator, dtype=torch.float64)
        v /= v.norm()
        other = apply_splits(model, _single_split(splits, layer, j, v), {layer: [j]}, epsilon=eps)
        assert _loss(other, x, y) - base >= change - 1e-15
