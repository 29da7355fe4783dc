"""SplittingGrower on models a user already has (torchvision's mobilenet_v2), with NNI's TorchEvaluator."""
import nni
import pytest
import torch
import torch.nn as nn
import torchvision
from nni.compression import TorchEvaluator

from nni_splitting.growth.grower import SplittingGrower


def _batches(n=3, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 32, 32, generator=g), torch.randint(0, 10, (size,), generator=g)) for _ in range(n)]


def test_grows_torchvision_mobilenet_v2_with_torch_evaluator():
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    batches = _batches()
    seen = {"steps": 0}

    def training_step(batch, model):
        x, y = batch
        return nn.functional.cross_entropy(model(x), y)

    def training_func(model, optimizers, training_step, lr_schedulers=None, max_steps=None, max_epochs=None):
        model.train()
        for batch in batches[:1]:
            optimizers.zero_grad()
            training_step(batch, model).backward()
            optimizers.step()
            seen["steps"] += 1
        model.eval()

    optimizer = nni.trace(torch.optim.SGD)(model.parameters(), lr=1e-3)
    evaluator = TorchEvaluator(training_func, optimizer, training_step, dummy_input=batches[0][0][:1])
    config_list = [{"op_types": ["Conv2d"], "max_splits": 6, "max_per_layer": 2},
                   {"op_names": ["features.18.0"], "exclude": True}]
    grower = SplittingGrower(model, config_list, evaluator, batches=batches)
    grown = grower.grow(steps=2)
    assert seen["steps"] == 2
    assert len(grower.history) == 2 and all(h["splits"] > 0 for h in grower.history)
    assert grower.history[1]["params"] > grower.history[0]["params"] > sum(p.numel() for p in model.parameters())
    assert all("features.18.0" not in h["plan"] for h in grower.history)
    with torch.no_grad():
        out = grown.eval()(batches[0][0])
    assert out.shape == (8, 10) and torch.isfinite(out).all()


def test_plain_training_function_and_bad_config():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 8), nn.Tanh(), nn.Linear(8, 10))
    calls = []
    grower = SplittingGrower(model, [{"op_types": ["Linear"], "grow_ratio": 0.5}], lambda m: calls.append(m),
                             batches=_batches(1))
    grown = grower.grow(steps=1)
    assert calls and grown[1].out_features == 8 + grower.history[0]["splits"]
    with pytest.raises(ValueError, match="unknown config key"):
        SplittingGrower(model, [{"op_type": ["Linear"]}], batches=_batches(1))
    with pytest.raises(ValueError, match="selects no splittable layer"):
        SplittingGrower(model, [{"op_types": ["Conv2d"]}], batches=_batches(1))
    with pytest.raises(ValueError, match="needs batches"):
        SplittingGrower(model, [{"op_types": ["Linear"]}])


def test_firefly_strategy_grows_digits_mlp_and_defaults_stay_s2d():
    from nni_splitting.common.data import load_dataset
    from nni_splitting.growth.firefly import FireflyLayer
    from nni_splitting.models import build_model
    from nni_splitting.growth.strategies import FireflyStrategy, S2DStrategy

    x, y = load_dataset("digits").train.tensors
    torch.manual_seed(0)
    model = build_model("mlp", widths=[6, 6])
    batches = [(x[i:i + 128], y[i:i + 128]) for i in range(0, 512, 128)]
    loss = lambda m: nn.functional.cross_entropy(m.eval()(x), y).item()  # noqa: E731
    seen = []
    grower = SplittingGrower(model, [{"op_types": ["Linear"], "grow_ratio": 0.25}], lambda m: seen.append(m),
                             batches=batches, strategy="firefly", strategy_options={"steps": 3, "new_neurons": 2})
    assert isinstance(grower.strategy, FireflyStrategy) and grower.strategy.epsilon == grower.epsilon
    grown = grower.grow(steps=2)
    assert len(seen) == 2 and [h["strategy"] for h in grower.history] == ["firefly", "firefly"]
    assert [h["splits"] for h in grower.history] == [3, 4]  # round(0.25 * 12), then round(0.25 * 15)
    widths = grown.features.fc1.out_features + grown.features.fc2.out_features
    assert widths == 12 + sum(h["splits"] for h in grower.history)
    assert grower.history[0]["min_eigenvalue"] < 0 and loss(grown) < loss(model)
    assert isinstance(grower._compute_splitting(grown)["features.fc1"], FireflyLayer)
    default = SplittingGrower(model, [{"op_types": ["Linear"]}], batches=batches)
    assert isinstance(default.strategy, S2DStrategy) and default.strategy.method == default.method
    with pytest.raises(ValueError, match="growth strategy 'nope'"):
        SplittingGrower(model, [{"op_types": ["Linear"]}], batches=batches, strategy="nope")
    with pytest.raises(ValueError, match="unknown Firefly option"):
        SplittingGrower(model, [{"op_types": ["Linear"]}], batches=batches, strategy="firefly",
                        strategy_options={"method": "fast"})
