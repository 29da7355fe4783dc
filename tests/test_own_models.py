"""The user's own seed (issue 27): a model named by an importable factory or a torchvision name, optional
weights, the user's own data factory, a grown network rebuilt by layer name; each bad input a clear error."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from nni_splitting.common.data import load_dataset, make_loaders
from nni_splitting.models.spec import build_seed, check_traceable, load_weights
from nni_splitting.growth.reshape import resize_to, splittable_widths

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the trials import experiments.own_model from the repository root likewise
CIFAR = torch.randn(2, 3, 32, 32)


def test_factory_and_torchvision_seeds_build_and_load_weights(tmp_path):
    own = build_seed("experiments.own_model:small_net", {"width": 3})
    assert type(own).__name__ == "SmallNet" and own.conv1.out_channels == 3
    resnet = build_seed("torchvision.models.resnet18", {"num_classes": 10})
    assert resnet.fc.out_features == 10
    path = tmp_path / "w.pt"
    torch.save(own.state_dict(), path)
    again = build_seed("experiments.own_model:small_net", {"width": 3}, weights=str(path))
    assert all(torch.equal(a, b) for a, b in zip(own.state_dict().values(), again.state_dict().values()))


@pytest.mark.parametrize("spec,args,match", [
    ("no_such_package.nets:build", {}, "cannot import module 'no_such_package.nets'"),
    ("experiments.own_model:missing", {}, "has no attribute 'missing'"),
    ("experiments.own_model:SmallNet.forward", {}, "failed with model_args"),
    ("experiments.own_model:digits_splits", {}, "returned a tuple, not a torch.nn.Module"),
    ("experiments.own_model:small_net", {"colour": 1}, "unexpected keyword argument 'colour'"),
    ("mobilenet_v9", {}, "unknown model 'mobilenet_v9'"),
])
def test_bad_model_specs_say_what_is_wrong(spec, args, match):
    with pytest.raises(ValueError, match=match):
        build_seed(spec, args)


def test_weights_that_do_not_fit_name_the_file_and_the_keys(tmp_path):
    model = build_seed("experiments.own_model:small_net", {"width": 3})
    wrong = tmp_path / "wide.pt"
    torch.save(build_seed("experiments.own_model:small_net", {"width": 4}).state_dict(), wrong)
    with pytest.raises(ValueError, match=r"wide.pt.*shapes differ: bn1.bias \(4,\) vs the model.s \(3,\)"):
        load_weights(model, str(wrong))
    pickled = tmp_path / "module.pt"
    torch.save(model, pickled)  # a whole pickled module: refused by weights_only=True
    with pytest.raises(ValueError, match="weights_only=True"):
        load_weights(model, str(pickled))
    with pytest.raises(ValueError, match="does not exist"):
        load_weights(model, str(tmp_path / "none.pt"))


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), _Branchy())

    def forward(self, x):
        return self.body(x)


class _Branchy(nn.Module):
    def forward(self, x):
        return x if x.sum() > 0 else -x  # control flow on a tensor's value


def test_an_untraceable_model_names_the_failing_module():
    with pytest.raises(ValueError, match=r"failed in module 'body.1' \(_Branchy\).*control flow"):
        check_traceable(_DataDependent())
    assert check_traceable(build_seed("torchvision.models.mobilenet_v2", {"num_classes": 10})) is not None


@pytest.mark.parametrize("spec", ["torchvision.models.resnet18", "torchvision.models.mobilenet_v2"])
def test_a_grown_network_is_rebuilt_from_the_seed_and_its_layer_widths(spec):
    """The trial's rebuild: seed factory + {layer: width} + state_dict, nothing about the class known."""
    seed = build_seed(spec, {"num_classes": 10}).eval()
    widths = splittable_widths(seed, CIFAR)
    grown_widths = {name: width + 3 + i for i, (name, width) in enumerate(widths.items())}
    grown = resize_to(seed, CIFAR, grown_widths).eval()
    with torch.no_grad():  # duplicated neurons (epsilon 0): the same function
        torch.testing.assert_close(grown(CIFAR), seed(CIFAR), rtol=1e-4, atol=1e-4)
    for parameter in grown.parameters():
        parameter.data.normal_()
    rebuilt = resize_to(build_seed(spec, {"num_classes": 10}), CIFAR, grown_widths).eval()
    rebuilt.load_state_dict(grown.state_dict())
    assert splittable_widths(rebuilt, CIFAR) == grown_widths
    with torch.no_grad():
        assert torch.equal(rebuilt(CIFAR), grown(CIFAR))
    first = next(iter(widths))
    with pytest.raises(ValueError, match="growth only widens"):
        resize_to(seed, CIFAR, {first: widths[first] - 1})
    with pytest.raises(ValueError, match="not a splittable layer"):
        resize_to(seed, CIFAR, {"fc": 20})


def test_the_users_data_factory_is_a_data_set():
    data = load_dataset("experiments.own_model:digits_splits", dataset_args={"val_fraction": 0.1})
    assert data.num_classes == 10 and data.input_shape == (1, 8, 8) and data.in_channels == 1
    assert len(data.train) + len(data.val) + len(data.test) == 1797
    train, _, _ = make_loaders(data, batch_size=32)
    inputs, targets = next(iter(train))
    assert inputs.shape == (32, 1, 8, 8) and targets.dtype == torch.int64
    with pytest.raises(ValueError, match=r"must return \(train, val, test\)"):
        load_dataset("experiments.own_model:small_net")
    with pytest.raises(ValueError, match="cannot import module"):
        load_dataset("nowhere.data:make")
