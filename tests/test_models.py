"""Tests of nni_splitting.models: shapes, tracing, widths round trip, validation."""

import math

import pytest
import torch
import torch.fx
from torch import nn

from nni_splitting.models import (
    ACTIVATIONS, DSCNN, MLP, MODELS, MobileNetV1, RBFLayer, RBFNet, SmallCNN, VGG19BN, WidthModel,
    build_model, current_widths, default_widths, make_activation, rebuild, scale_widths,
)

# name -> (narrow widths, input shape, expected output shape)
CASES = {
    "mobilenet_v1": (scale_widths("mobilenet_v1", 1 / 8), (2, 3, 32, 32), (2, 10)),
    "mobilenet_cifar": (scale_widths("mobilenet_cifar", 1 / 8), (2, 3, 32, 32), (2, 10)),
    "resnet20": (scale_widths("resnet20", 1 / 2), (2, 3, 32, 32), (2, 10)),
    "vgg19_bn": (scale_widths("vgg19_bn", 1 / 8), (2, 3, 32, 32), (2, 10)),
    "ds_cnn": ([8, 8, 16, 8, 4], (2, 1, 49, 40), (2, 12)),
    "small_cnn": ([4, 8, 16], (2, 1, 8, 8), (2, 10)),
    "mlp": ([16, 7], (2, 64), (2, 10)),
    "rbf": ([3], (5, 1), (5, 1)),
}

DEFAULTS = {
    "mobilenet_v1": [32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024],
    "vgg19_bn": [64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512],
    "ds_cnn": [64] * 5,
    "mobilenet_cifar": [32, 64, 128, 128, 256, 256, 512],
    "resnet20": [16, 32, 64, 16, 16, 16, 32, 32, 32, 64, 64, 64],
    "small_cnn": [32, 64, 128],
    "mlp": [64],
    "rbf": [1],
}


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_registry_names():
    assert set(MODELS) == set(CASES)
    assert MODELS["mobilenet_v1"] is MobileNetV1 and MODELS["vgg19_bn"] is VGG19BN
    assert MODELS["ds_cnn"] is DSCNN and MODELS["small_cnn"] is SmallCNN
    assert MODELS["mlp"] is MLP and MODELS["rbf"] is RBFNet
    assert MODELS["mobilenet_cifar"].__name__ == "MobileNetCifar" and MODELS["resnet20"].__name__ == "ResNet20"


@pytest.mark.parametrize("name", sorted(CASES))
def test_default_widths(name):
    model = build_model(name)
    assert model.widths == DEFAULTS[name] == default_widths(name)
    assert current_widths(model) == DEFAULTS[name]
    assert len(model.width_layers()) == len(DEFAULTS[name])


@pytest.mark.parametrize("name", sorted(CASES))
def test_narrow_forward_trace_and_widths(name):
    widths, in_shape, out_shape = CASES[name]
    torch.manual_seed(0)
    model = build_model(name, widths=widths).eval()
    assert isinstance(model, WidthModel)
    assert model.widths == list(widths)
    x = torch.randn(*in_shape)
    with torch.no_grad():
        y = model(x)
    assert y.shape == out_shape
    assert torch.isfinite(y).all()

    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        assert torch.allclose(traced(x), y, atol=1e-6)
    # Pooling is done by modules, never by functional calls.
    funcs = [str(n.target) for n in traced.graph.nodes if n.op == "call_function"]
    assert not any("pool" in f for f in funcs), funcs

    layers = model.width_layers()
    assert len(layers) == len(widths)
    modules = dict(model.named_modules())
    for layer_name, w in zip(layers, widths):
        module = modules[layer_name]
        assert isinstance(module, (nn.Conv2d, nn.Linear, RBFLayer))
        if isinstance(module, nn.Conv2d):
            assert module.groups == 1
    assert current_widths(model) == list(widths)


@pytest.mark.parametrize("name", sorted(CASES))
def test_rebuild_from_current_widths(name):
    widths = CASES[name][0]
    model = build_model(name, widths=widths, num_classes=7)
    again = type(model)(widths=current_widths(model), **model.config)
    assert _shapes(again) == _shapes(model)
    assert _shapes(rebuild(model)) == _shapes(model)
    bigger = rebuild(model, [w + 1 for w in widths])
    assert current_widths(bigger) == [w + 1 for w in widths]


def test_current_widths_follows_replaced_modules():
    model = SmallCNN(widths=[4, 8, 16])
    # Widen conv2 from 8 to 11 channels, as splitting code would (same module names).
    model.features.conv2.conv = nn.Conv2d(4, 11, 3, padding=1, bias=False)
    model.features.conv2.bn = nn.BatchNorm2d(11)
    model.features.conv3.conv = nn.Conv2d(11, 16, 3, padding=1, bias=False)
    assert current_widths(model) == [4, 11, 16]
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    rebuilt = type(model)(widths=current_widths(model), **model.config)
    assert _shapes(rebuilt) == _shapes(model)

    mlp = MLP(widths=[5])
    mlp.features.fc1 = nn.Linear(64, 9)
    mlp.classifier.fc = nn.Linear(9, 10)
    assert current_widths(mlp) == [9]
    assert _shapes(rebuild(mlp)) == _shapes(mlp)


def test_mobilenet_strides_and_layout():
    model = MobileNetV1(widths=scale_widths("mobilenet_v1", 1 / 16))
    feats = model.features(torch.randn(1, 3, 32, 32))
    assert feats.shape[-2:] == (2, 2)  # four stride-2 blocks
    assert model.width_layers()[0] == "features.stem.conv"
    assert model.features.stem.conv.stride == (1, 1)
    strides = [model.features.get_submodule(f"block{i}.dw.conv").stride[0] for i in range(1, 14)]
    assert strides == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]
    dw = model.features.block3.dw.conv
    assert dw.groups == dw.in_channels == dw.out_channels == model.widths[2]


def test_vgg_and_dscnn_feature_shapes():
    vgg = VGG19BN(widths=[2] * 16)
    assert len([m for m in vgg.modules() if isinstance(m, nn.MaxPool2d)]) == 5
    assert vgg.features(torch.randn(1, 3, 32, 32)).shape == (1, 2, 1, 1)
    ds = DSCNN(widths=[6, 5, 4, 3, 2])
    assert ds.features(torch.randn(1, 1, 49, 40)).shape == (1, 2, 25, 20)
    assert ds(torch.randn(3, 1, 98, 40)).shape == (3, 12)


def test_small_cnn_on_28x28():
    assert SmallCNN(widths=[3, 4, 5])(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("name", ["mobilenet_v1", "vgg19_bn", "ds_cnn", "small_cnn"])
def test_convs_have_no_bias_and_bn_is_standard(name):
    model = build_model(name, widths=CASES[name][0])
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(m.bias is None for m in convs)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_activations(activation):
    model = SmallCNN(widths=[2, 3, 4], activation=activation)
    acts = [m for m in model.modules() if isinstance(m, ACTIVATIONS[activation])]
    assert len(acts) == 3
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    mlp = MLP(widths=[3, 3], activation=activation.upper())
    assert len([m for m in mlp.modules() if isinstance(m, ACTIVATIONS[activation])]) == 2


def test_mlp_layout_and_custom_sizes():
    mlp = MLP(widths=[10, 20, 30], in_features=784, num_classes=3)
    assert mlp.width_layers() == ["features.fc1", "features.fc2", "features.fc3"]
    assert mlp(torch.randn(4, 1, 28, 28)).shape == (4, 3)
    assert isinstance(mlp.features[0], nn.Flatten)


def test_rbf_matches_formula():
    torch.manual_seed(0)
    net = RBFNet(widths=[4], center_range=(-2.0, 2.0))
    assert torch.allclose(net.rbf.centers.detach(), torch.tensor([-1.5, -0.5, 0.5, 1.5]))
    assert torch.allclose(net.rbf.log_widths.exp().detach(), torch.full((4,), 0.5))
    assert net.rbf.out_features == 4 and net.output.bias is None
    with torch.no_grad():
        net.rbf.centers.copy_(torch.tensor([-1.0, 0.0, 0.3, 2.0]))
        net.rbf.log_widths.copy_(torch.log(torch.tensor([0.5, 1.0, 2.0, 0.1])))
        net.output.weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 3.0]]))
    x = torch.linspace(-3, 3, 7).unsqueeze(1)
    mu, s, a = [-1.0, 0.0, 0.3, 2.0], [0.5, 1.0, 2.0, 0.1], [1.0, -2.0, 0.5, 3.0]
    expected = [sum(a[i] * math.exp(-(float(v) - mu[i]) ** 2 / (2 * s[i] ** 2)) for i in range(4))
                for v in x[:, 0]]
    assert torch.allclose(net(x)[:, 0], torch.tensor(expected), atol=1e-6)
    # Gradients reach centres and widths.
    net(x).sum().backward()
    assert net.rbf.centers.grad is not None and net.rbf.log_widths.grad is not None
    # One neuron starts in the middle of the range.
    assert RBFNet().rbf.centers.item() == 0.0


def test_scale_widths():
    assert scale_widths("small_cnn", 0.5) == [16, 32, 64]
    assert scale_widths("mobilenet_v1", 1 / 8)[:3] == [4, 8, 16]
    assert scale_widths([3, 10, 1], 0.1) == [1, 1, 1]
    assert scale_widths((4, 6), 1.5) == [6, 9]
    for bad in (0, -1.0, float("nan"), float("inf"), "2"):
        with pytest.raises(ValueError, match="multiplier"):
            scale_widths("mlp", bad)
    with pytest.raises(ValueError, match="resnet"):
        scale_widths("resnet", 0.5)


def test_bad_names_and_widths():
    with pytest.raises(ValueError, match="'resnet50'") as err:
        build_model("resnet50")
    assert "mobilenet_v1" in str(err.value)  # lists the known names
    with pytest.raises(ValueError, match=r"\[1, 2\]"):
        build_model("small_cnn", widths=[1, 2])
    with pytest.raises(ValueError, match="-3"):
        build_model("small_cnn", widths=[4, -3, 8])
    with pytest.raises(ValueError, match=r"\b0\b"):
        SmallCNN(widths=[4, 0, 8])
    with pytest.raises(ValueError, match="2.5"):
        MLP(widths=[2.5])
    with pytest.raises(ValueError, match="True"):
        MLP(widths=[True])
    with pytest.raises(ValueError, match="'abc'"):
        MLP(widths="abc")
    with pytest.raises(ValueError, match=r"\[\]"):
        MLP(widths=[])
    with pytest.raises(ValueError, match="'swish2'"):
        build_model("mlp", activation="swish2")
    with pytest.raises(ValueError, match="'swish2'"):
        make_activation("swish2")
    with pytest.raises(ValueError, match="num_classes"):
        VGG19BN(widths=[2] * 16, num_classes=0)
    with pytest.raises(ValueError, match="1.5"):
        DSCNN(dropout=1.5)
    with pytest.raises(ValueError, match="in_features=2"):
        RBFNet(in_features=2)
    with pytest.raises(ValueError, match="width_layers"):
        current_widths(nn.Linear(2, 3))


def test_numpy_and_tensor_widths_accepted():
    import numpy as np

    model = SmallCNN(widths=np.array([2, 3, 4]))
    assert model.widths == [2, 3, 4] and all(type(w) is int for w in model.widths)
    assert SmallCNN(widths=torch.tensor([2, 3, 4])).widths == [2, 3, 4]


def test_dropout_module_optional():
    assert not any(isinstance(m, nn.Dropout) for m in SmallCNN(widths=[2, 3, 4]).modules())
    model = SmallCNN(widths=[2, 3, 4], dropout=0.2)
    assert isinstance(model.classifier.dropout, nn.Dropout)
    assert model.config["dropout"] == 0.2
    torch.fx.symbolic_trace(model)
