"""Baseline arms: NNI pruners / network slimming to a parameter target, random and new growth, width spaces."""
import copy
import json

import pytest
import torch
import torch.nn as nn

from nni_splitting import count_model, neuron_costs
from nni_splitting.baselines import (PRUNERS, SEARCH_SPACE_MODELS, add_new_neurons, bn_slim_masks, load_search_space,
                                     prunable_groups, prune_to_ratio, pruning_config, random_split, random_splits,
                                     reinitialize, uniform_width_model, validate_width_space, width_search_space,
                                     widths_from_params, widths_of)
from nni_splitting.baselines.growth import SEARCH_SPACE_DIR
from nni_splitting.common.data import load_dataset, make_loaders
from nni_splitting.models import build_model, current_widths, default_widths, rebuild, scale_widths
from nni_splitting.common.training import train


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs on a shared CPU: more threads only spin
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    splits = load_dataset("digits")
    train_loader, _, _ = make_loaders(splits, batch_size=64, seed=0)
    return train_loader, splits.train.tensors[0][:4]


@pytest.fixture(scope="module")
def trained_small_cnn(digits):
    torch.manual_seed(0)
    model = build_model("small_cnn", widths=[16, 32, 64])
    train(model, digits[0], epochs=2, lr=0.05, seed=0, progress=False)
    return model


def _mobilenet():
    torch.manual_seed(0)
    return build_model("mobilenet_v1", widths=scale_widths("mobilenet_v1", 1 / 16)).eval()  # [2, 4, 8, ..., 64]


def _random_batches(n=3, shape=(8, 3, 32, 32)):
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(*shape, generator=generator), torch.randint(0, 10, (shape[0],), generator=generator))
            for _ in range(n)]


def _check_pruned(model, pruned, info, x, ratio):
    base_flops, base_params = count_model(model, x)
    flops, params = count_model(pruned, x)
    assert (info.params, info.base_params, info.flops) == (params, base_params, flops)
    assert info.target_params == round(ratio * base_params) and params < base_params and flops < base_flops
    # Within one channel per layer of the target: the search stops at neighbouring channel counts.
    assert abs(params - info.target_params) <= sum(neuron_costs(pruned, x).values())
    assert type(pruned) is type(model) and info.widths == current_widths(pruned)
    assert info.layer_widths == dict(zip(model.width_layers(), info.widths))
    assert pruned.classifier.fc.out_features == model.classifier.fc.out_features  # classifier never pruned
    with torch.no_grad():
        assert pruned.eval()(x).shape == (len(x), 10)
    # The pruned architecture can be rebuilt from its widths and trained from scratch.
    assert count_model(rebuild(pruned).eval(), x)[1] == params


@pytest.mark.parametrize("method", PRUNERS)
def test_pruners_shrink_small_cnn_to_the_target(method, trained_small_cnn, digits):
    loader, x = digits
    pruned, info = prune_to_ratio(trained_small_cnn, method, 0.4, x, evaluator=loader, training_steps=10)
    _check_pruned(trained_small_cnn, pruned, info, x, 0.4)
    assert info.method == method and len(info.searched) >= 2
    assert current_widths(trained_small_cnn) == [16, 32, 64]  # the input model is untouched


@pytest.mark.parametrize("method", PRUNERS)
def test_pruners_keep_mobilenet_depthwise_pairs_together(method):
    model, batches = _mobilenet(), _random_batches()
    x = batches[0][0][:2]
    pruned, info = prune_to_ratio(model, method, 0.5, x, evaluator=batches, training_steps=3)
    _check_pruned(model, pruned, info, x, 0.5)
    widths = current_widths(pruned)
    if method != "bn_slim":  # one sparse ratio r everywhere: NNI keeps n - floor(n r) channels, no union with the dw mask
        assert widths == [n - int(n * info.knob) for n in current_widths(model)]
    for i in range(1, 14):  # each depthwise conv has exactly the channels of the layer that feeds it
        depthwise = pruned.get_submodule(f"features.block{i}.dw.conv")
        assert depthwise.in_channels == depthwise.out_channels == depthwise.groups == widths[i - 1]


def test_an_nni_evaluator_built_for_the_model_trains_a_copy(trained_small_cnn, digits):
    from nni_splitting.common.training import torch_evaluator

    loader, x = digits
    before = {k: v.clone() for k, v in trained_small_cnn.state_dict().items()}
    for method in ("taylor", "bn_slim"):
        evaluator = torch_evaluator(trained_small_cnn, loader, lr=0.01)
        pruned, info = prune_to_ratio(trained_small_cnn, method, 0.5, x, evaluator=evaluator, training_steps=4)
        assert abs(info.params_ratio - 0.5) < 0.1 and info.seconds["train"] > 0
    for name, value in trained_small_cnn.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_slim_factors_are_folded_into_the_weights():
    """NNI's unwrap drops SlimPruner's trained factors; folding keeps the function that was trained."""
    from nni.compression.pruning import SlimPruner

    from nni_splitting.common.nni_compat import fold_slim_factors as _fold_slim_factors
    from nni_splitting.common.training import torch_evaluator

    torch.manual_seed(0)
    model, x = build_model("small_cnn", widths=[8, 16, 32]).eval(), torch.randn(4, 1, 8, 8)
    data = [(torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))) for _ in range(3)]
    pruner = SlimPruner(model, pruning_config(prunable_groups(model, x), 0.5), torch_evaluator(model, data), 5)
    pruner.compress()
    pruner.update_masks({name: {t: torch.ones_like(m) for t, m in masks.items() if m is not None}
                         for name, masks in pruner.get_masks().items()})
    with torch.no_grad():
        trained = model.eval()(x)
        unfolded = copy.deepcopy(pruner)
        unfolded.unwrap_model()
        assert not torch.allclose(unfolded.bound_model(x), trained, atol=1e-4)
        _fold_slim_factors(pruner)
        pruner.unwrap_model()
        torch.testing.assert_close(model(x), trained)


def test_bn_slim_threshold_is_global_and_keeps_a_channel_per_layer():
    model = build_model("small_cnn", widths=[4, 4, 4]).eval()
    x = torch.randn(2, 1, 8, 8)
    groups = prunable_groups(model, x)
    with torch.no_grad():
        model.features.conv1.bn.weight.copy_(torch.tensor([0.01, 0.02, 0.03, 0.04]))
        model.features.conv2.bn.weight.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
        model.features.conv3.bn.weight.copy_(torch.tensor([0.5, -5.0, 0.05, 6.0]))
    masks = bn_slim_masks(model, groups, cut=4)
    kept = {name: m["weight"][:, 0, 0, 0].tolist() for name, m in masks.items()}
    assert kept == {"features.conv1.conv": [0, 0, 0, 1],  # smallest |gamma| first, the largest is protected
                    "features.conv2.conv": [1, 1, 1, 1],
                    "features.conv3.conv": [1, 1, 0, 1]}
    with pytest.raises(ValueError, match="cut"):
        bn_slim_masks(model, groups, cut=100)


def test_pruning_errors(trained_small_cnn, digits):
    x = digits[1]
    with pytest.raises(ValueError, match="method"):
        prune_to_ratio(trained_small_cnn, "l2", 0.5, x)
    with pytest.raises(ValueError, match="params_ratio"):
        prune_to_ratio(trained_small_cnn, "l1", 1.5, x)
    with pytest.raises(ValueError, match="evaluator"):
        prune_to_ratio(trained_small_cnn, "taylor", 0.5, x)
    with pytest.raises(ValueError, match="cannot prune to"):
        prune_to_ratio(trained_small_cnn, "l1", 0.001, x)
    mlp = build_model("mlp", widths=[32, 16])
    with pytest.raises(ValueError, match="BatchNorm"):
        prune_to_ratio(mlp, "bn_slim", 0.5, x, evaluator=digits[0], training_steps=2)
    pruned, info = prune_to_ratio(mlp, "l1", 0.5, x)  # Linear producers work too
    assert info.widths == widths_of(pruned, mlp.width_layers()) and max(info.widths) < 32


# ---------------------------------------------------------------------------- growth


def _mobilenet_with_stats():
    model = _mobilenet()
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, 32, 32))  # non-trivial BatchNorm statistics
    return model.eval()


@pytest.mark.parametrize("name", ["small_cnn", "mobilenet", "mlp"])
def test_random_split_preserves_function_at_eps_0_and_grows(name, trained_small_cnn):
    model = {"small_cnn": trained_small_cnn, "mobilenet": _mobilenet_with_stats(),
             "mlp": build_model("mlp", widths=[16, 8])}[name].eval()
    x = torch.randn(4, 3, 32, 32) if name == "mobilenet" else torch.randn(4, 1, 8, 8)
    params = count_model(model, x)[1]
    grown, plan = random_split(model, x, 6, epsilon=0.0, seed=1)
    assert sum(map(len, plan.values())) == 6
    assert [grown.get_submodule(k).weight.shape[0] - model.get_submodule(k).weight.shape[0] for k in plan] == \
        [len(v) for v in plan.values()]
    assert count_model(grown, x)[1] > params
    with torch.no_grad():
        torch.testing.assert_close(grown(x), model(x), rtol=1e-5, atol=1e-5)
        moved, same_plan = random_split(model, x, 6, epsilon=0.5, seed=1)
        assert same_plan == plan and not torch.allclose(moved(x), model(x), atol=1e-6)


def test_random_splits_directions_and_per_layer_counts(trained_small_cnn):
    x = torch.randn(2, 1, 8, 8)
    splits, plan = random_splits(trained_small_cnn, x, {"features.conv1.conv": 2, "features.conv3.conv": 5}, seed=3)
    assert {k: len(v) for k, v in plan.items()} == {"features.conv1.conv": 2, "features.conv3.conv": 5}
    for name, split in splits.items():
        assert torch.allclose(split.directions.norm(dim=1), torch.ones(split.num_neurons))
        assert torch.isnan(split.eigenvalues).all()
    again, _ = random_splits(trained_small_cnn, x, {"features.conv1.conv": 2, "features.conv3.conv": 5}, seed=3)
    assert torch.equal(again["features.conv2.conv"].directions, splits["features.conv2.conv"].directions)
    with pytest.raises(ValueError, match="width"):
        random_splits(trained_small_cnn, x, {"features.conv1.conv": 17})
    with pytest.raises(ValueError, match="cannot grow"):
        random_splits(trained_small_cnn, x, {"classifier.fc": 1})


@pytest.mark.parametrize("name", ["small_cnn", "mobilenet", "mlp"])
def test_new_neurons_zero_outgoing_preserve_function(name, trained_small_cnn):
    model = {"small_cnn": trained_small_cnn, "mobilenet": _mobilenet_with_stats(),
             "mlp": build_model("mlp", widths=[16, 8])}[name].eval()
    x = torch.randn(4, 3, 32, 32) if name == "mobilenet" else torch.randn(4, 1, 8, 8)
    grown, added = add_new_neurons(model, x, 9, seed=2)
    assert sum(added.values()) == 9
    assert count_model(grown, x)[1] > count_model(model, x)[1]
    with torch.no_grad():
        torch.testing.assert_close(grown(x), model(x), rtol=1e-5, atol=1e-5)
        noisy, _ = add_new_neurons(model, x, 9, seed=2, outgoing="random")
        assert not torch.allclose(noisy(x), model(x), atol=1e-6)
    for layer, count in added.items():  # the new neurons are not copies of old ones
        weight = grown.get_submodule(layer).weight.detach()
        old = model.get_submodule(layer).weight.shape[0]
        new_rows = weight[old:].reshape(count, -1)
        assert new_rows.abs().sum() > 0
        old_rows = weight[:old].reshape(old, -1)
        assert torch.cdist(new_rows, old_rows).min() > 1e-4


def test_new_neuron_channels_are_fresh(trained_small_cnn):
    x = torch.randn(2, 1, 8, 8)
    grown, added = add_new_neurons(trained_small_cnn, x, {"features.conv2.conv": 3}, init="kaiming")
    assert added == {"features.conv2.conv": 3}
    bn = grown.features.conv2.bn
    assert torch.equal(bn.weight[32:], torch.ones(3)) and torch.equal(bn.running_var[32:], torch.ones(3))
    assert torch.equal(bn.weight[:32], trained_small_cnn.features.conv2.bn.weight)
    consumer = grown.features.conv3.conv.weight
    assert torch.equal(consumer[:, 32:], torch.zeros(64, 3, 3, 3))
    assert torch.equal(consumer[:, :32], trained_small_cnn.features.conv3.conv.weight)
    with pytest.raises(ValueError, match="init"):
        add_new_neurons(trained_small_cnn, x, 1, init="zeros")


def test_reinitialize_and_uniform_width(trained_small_cnn):
    x = torch.randn(2, 1, 8, 8)
    fresh = reinitialize(trained_small_cnn, seed=0)
    assert current_widths(fresh) == current_widths(trained_small_cnn)
    assert not torch.equal(fresh.features.conv1.conv.weight, trained_small_cnn.features.conv1.conv.weight)
    generic = reinitialize(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), seed=0)
    assert generic[1].weight.shape == (10, 64)
    target = 20000
    model, multiplier = uniform_width_model("small_cnn", target, x)
    params = count_model(model, x)[1]
    assert 0 < multiplier < 1 and current_widths(model) == scale_widths("small_cnn", multiplier)
    assert abs(params - target) <= sum(neuron_costs(model, x).values())


# ---------------------------------------------------------------------------- width search spaces


@pytest.mark.parametrize("name", SEARCH_SPACE_MODELS)
def test_search_space_files_are_valid_nni_spaces(name):
    from nni.common.hpo_utils import validate_search_space

    space = json.loads((SEARCH_SPACE_DIR / f"{name}.json").read_text())
    assert validate_search_space(space, raise_exception=True)
    assert space == width_search_space(name) == load_search_space(name)
    assert len(space) == len(default_widths(name))
    smallest = widths_from_params(name, {k: min(v["_value"]) for k, v in space.items()})
    largest = widths_from_params(name, {k: max(v["_value"]) for k, v in space.items()})
    assert largest == default_widths(name) and all(1 <= w for w in smallest)
    build_model(name, widths=smallest)


def test_nni_tuner_samples_give_valid_widths():
    from nni.algorithms.hpo.random_tuner import RandomTuner

    tuner = RandomTuner(seed=0)
    tuner.update_search_space(load_search_space("small_cnn"))
    for parameter_id in range(5):
        params = tuner.generate_parameters(parameter_id)
        widths = widths_from_params("small_cnn", params)
        assert widths == [max(1, round(w * params[f"mult_{i}"])) for i, w in enumerate([32, 64, 128])]
        with torch.no_grad():
            assert build_model("small_cnn", widths=widths)(torch.randn(1, 1, 8, 8)).shape == (1, 10)


def test_widths_from_params_errors_and_invalid_spaces():
    assert widths_from_params("small_cnn", {"mult_0": 0.5, "mult_1": 0.01, "mult_2": 1, "lr": 0.1}) == [16, 1, 128]
    with pytest.raises(ValueError, match="missing"):
        widths_from_params("small_cnn", {"mult_0": 0.5})
    with pytest.raises(ValueError, match="unexpected"):
        widths_from_params("small_cnn", {"mult_0": 1, "mult_1": 1, "mult_2": 1, "mult_3": 1})
    with pytest.raises(ValueError, match="positive"):
        widths_from_params("small_cnn", {"mult_0": 0, "mult_1": 1, "mult_2": 1})
    with pytest.raises(ValueError):
        validate_width_space({"mult_0": {"_type": "choise", "_value": [1]}})
    with pytest.raises(ValueError, match="keys"):
        validate_width_space(width_search_space("small_cnn"), "vgg19_bn")


def test_nas_model_space_builds_and_freezes():
    from nni_splitting.baselines.growth import WidthSpace, width_model_space

    space = width_model_space("small_cnn")
    assert isinstance(space, WidthSpace) and sorted(space.simplify()) == ["mult_0", "mult_1", "mult_2"]
    frozen = space.freeze({"mult_0": 0.5, "mult_1": 0.25, "mult_2": 1.0})
    assert current_widths(frozen.net) == [16, 16, 128]
    assert frozen(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    sampled = space.random()
    assert len(current_widths(sampled.net)) == 3
