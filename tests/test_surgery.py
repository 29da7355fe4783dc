"""Function-preserving surgery on real architectures: the grown model computes the same function at eps = 0."""
import copy

import pytest
import torch
import torch.nn as nn
import torchvision

from nni_splitting import LayerSplitting, apply_splits, compute_splitting, find_neuron_groups, trace_model
from nni_splitting.models import build_model, current_widths, scale_widths


def _stub_splits(model, example):
    """Unit random directions for every candidate layer (eps = 0 makes them irrelevant to the function)."""
    groups, excluded = find_neuron_groups(trace_model(model, example))
    generator = torch.Generator().manual_seed(0)
    splits = {}
    for name, group in groups.items():
        layer = model.get_submodule(name)
        d = layer.weight[0].numel() + (layer.bias is not None)
        directions = torch.randn(layer.weight.shape[0], d, generator=generator)
        splits[name] = LayerSplitting(name, -torch.rand(layer.weight.shape[0], generator=generator),
                                      directions / directions.norm(dim=1, keepdim=True), group)
    return splits, excluded


def _expected_added_parameters(model, splits, plan):
    """Parameters one split adds, counted from the modules: producer row, follower channels, consumer columns."""
    added = 0
    for layer, indices in plan.items():
        group = splits[layer].group
        producer = model.get_submodule(layer)
        per_neuron = producer.weight[0].numel() + (producer.bias is not None)
        for follower in group.followers:
            module = model.get_submodule(follower)
            per_neuron += sum(p[0].numel() for p in module.parameters(recurse=False))
        for consumer in group.consumers:
            module = model.get_submodule(consumer.module)
            per_neuron += module.weight.shape[0] * consumer.block * (module.weight[0, 0].numel())
        added += per_neuron * len(indices)
        for consumer in group.consumers:  # a consumer that is split too: its new rows get the new columns
            module = model.get_submodule(consumer.module)
            added += len(plan.get(consumer.module, [])) * len(indices) * consumer.block * module.weight[0, 0].numel()
    return added


def _count(model):
    return sum(p.numel() for p in model.parameters())


def _plan_every_layer(splits, per_layer=3):
    generator = torch.Generator().manual_seed(1)
    return {name: sorted(torch.randperm(s.num_neurons, generator=generator)[:per_layer].tolist())
            for name, s in splits.items()}


CASES = {
    "mobilenet_v1": (lambda: build_model("mobilenet_v1", scale_widths("mobilenet_v1", 0.125)), (2, 3, 32, 32)),
    "vgg19_bn": (lambda: build_model("vgg19_bn", scale_widths("vgg19_bn", 0.125)), (2, 3, 32, 32)),
    "ds_cnn": (lambda: build_model("ds_cnn"), (2, 1, 49, 40)),
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), (2, 3, 32, 32)),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(num_classes=10), (2, 3, 32, 32)),
}


def _randomize_bn(model):
    generator = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=generator) * 0.1)


@pytest.mark.parametrize("name", list(CASES))
def test_function_preserved_at_zero_epsilon(name):
    factory, shape = CASES[name]
    torch.manual_seed(0)
    model = factory()
    _randomize_bn(model)
    model.eval()
    x = torch.randn(*shape)
    splits, excluded = _stub_splits(model, x)
    assert splits, excluded
    plan = _plan_every_layer(splits)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grown = apply_splits(model, splits, plan, epsilon=0.0).eval()
    with torch.no_grad():
        assert (grown(x) - model(x)).abs().max() <= 1e-5
    assert _count(grown) - _count(model) == _expected_added_parameters(model, splits, plan)
    for layer, indices in plan.items():
        assert grown.get_submodule(layer).weight.shape[0] == model.get_submodule(layer).weight.shape[0] + len(indices)
    for key, value in model.state_dict().items():  # the input model is untouched
        assert torch.equal(value, before[key])
    if hasattr(model, "width_layers"):  # the grown model is rebuilt from its widths alone
        rebuilt = type(model)(widths=current_widths(grown), num_classes=10, in_channels=shape[1]) \
            if name != "ds_cnn" else type(model)(widths=current_widths(grown))
        rebuilt.load_state_dict(grown.state_dict())


def test_residual_channels_are_left_out_with_a_reason(caplog):
    model = torchvision.models.resnet18(num_classes=10).eval()
    with caplog.at_level("INFO", logger="nni_splitting.graph"):
        splits, excluded = _stub_splits(model, torch.randn(1, 3, 32, 32))
    assert "layer1.0.conv1" in splits and "layer1.0.conv2" not in splits
    assert "residual add" in excluded["layer1.0.conv2"] and "residual add" in excluded["layer2.0.downsample.0"]
    assert "fc" in excluded  # the classifier's outputs are not neurons
    assert "layer1.0.conv2" in caplog.text


def test_grouped_conv_consumer_is_excluded():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2), nn.ReLU(),
                          nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 8, 8))
    splits, excluded = _stub_splits(model, torch.randn(1, 3, 8, 8))
    assert "0" in excluded and "grouped" in excluded["2"]


def test_split_real_model_and_train_step():
    """Exact splitting on a narrow MobileNetV1, grow, and the grown model trains."""
    torch.manual_seed(0)
    model = build_model("mobilenet_v1", scale_widths("mobilenet_v1", 1 / 16)).eval()
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    splits = compute_splitting(model, nn.CrossEntropyLoss(), [(x[:8], y[:8]), (x[8:], y[8:])])
    assert "features.0.0" in splits or len(splits) >= 10
    plan = {name: [0] for name in list(splits)[:4]}
    grown = apply_splits(model, splits, plan, epsilon=0.05).train()
    loss = nn.CrossEntropyLoss()(grown(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    assert current_widths(grown) != current_widths(model)


def _tiny_mlp_splits():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
    return model, data, compute_splitting(model, nn.CrossEntropyLoss(), data)


@pytest.mark.parametrize("bad", [[0.7], [True], [1, False], [torch.tensor(0.5)]])
def test_plan_indices_must_be_integers(bad):
    model, _, splits = _tiny_mlp_splits()
    with pytest.raises(ValueError, match="not an integer"):
        apply_splits(model, splits, {"0": bad})


def test_plan_of_an_int_instead_of_a_list_is_a_value_error():
    model, _, splits = _tiny_mlp_splits()
    with pytest.raises(ValueError, match="expected a list"):
        apply_splits(model, splits, {"0": 2})
    grown = apply_splits(model, splits, {"0": [2, torch.tensor(4)]})  # integer tensors are fine
    assert grown[0].out_features == 8


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model_is_split_in_float32(dtype):
    model, data, reference = _tiny_mlp_splits()
    half = copy.deepcopy(model).to(dtype)
    rounded = [(x.to(dtype), y) for x, y in data]
    splits = compute_splitting(half, nn.CrossEntropyLoss(), rounded)
    assert splits["0"].eigenvalues.dtype == torch.float32
    assert next(half.parameters()).dtype == dtype  # the user's model is untouched
    expected = compute_splitting(copy.deepcopy(half).float(), nn.CrossEntropyLoss(),
                                 [(x.float(), y) for x, y in rounded])["0"].eigenvalues
    assert torch.allclose(splits["0"].eigenvalues, expected, atol=1e-3)
    grown = apply_splits(half, splits, {"0": [0]})
    assert grown[0].weight.dtype == dtype and grown[0].out_features == 7
