"""The offspring levers of the CIFAR protocol's ablations (nni_splitting.growth.offspring), on a real small CNN and digits."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from nni_splitting import apply_splits, compute_splitting
from nni_splitting.common.data import load_dataset
from nni_splitting.models import build_model
from nni_splitting.growth.offspring import break_symmetry, neuron_norms, scale_directions
from nni_splitting.nni.trial import check_train_settings


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    data = load_dataset("digits")
    x, y = data.train.tensors
    model = build_model("small_cnn", widths=[4, 6, 8], in_channels=1, num_classes=10).eval()
    splits = compute_splitting(model, nn.CrossEntropyLoss(), [(x[:128], y[:128])])
    layer = next(iter(splits))
    return model, splits, {layer: [0, 2]}, layer


def _offspring(grown, layer, old, k, j):
    weight = dict(grown.named_modules())[layer].weight.detach().reshape(grown.state_dict()[f"{layer}.weight"].shape[0], -1)
    return weight[j], weight[old + k]


def test_relative_epsilon_is_a_fraction_of_the_neurons_norm(setup):
    model, splits, plan, layer = setup
    old = splits[layer].num_neurons
    eps = 0.05
    norms = neuron_norms(dict(model.named_modules())[layer])
    for mode, expected in (("absolute", torch.ones_like(norms)), ("relative", norms)):
        grown = apply_splits(model, scale_directions(model, splits, mode), plan, epsilon=eps)
        for k, j in enumerate(plan[layer]):
            plus, minus = _offspring(grown, layer, old, k, j)
            producer = dict(grown.named_modules())[layer]
            has_bias = producer.bias is not None
            gap = torch.cat([plus, producer.bias[j:j + 1].detach()]) - torch.cat([minus, producer.bias[old + k:old + k + 1].detach()]) \
                if has_bias else plus - minus
            assert gap.norm().item() == pytest.approx(2 * eps * expected[j].item(), rel=1e-4)  # |2 eps s_j v_j|
    assert scale_directions(model, splits, "absolute")[layer] is splits[layer]  # nothing copied


def test_noise_moves_only_the_appended_offspring_and_changes_the_function(setup):
    model, splits, plan, layer = setup
    old = splits[layer].num_neurons
    plain = apply_splits(model, splits, plan, epsilon=0.01)
    noisy = break_symmetry(apply_splits(model, splits, plan, epsilon=0.01), splits, plan, {layer: old}, "noise", 0.2)
    w_plain, w_noisy = (dict(m.named_modules())[layer].weight.detach() for m in (plain, noisy))
    assert torch.equal(w_plain[:old], w_noisy[:old])
    moved = (w_noisy[old:] - w_plain[old:]).flatten(1).norm(dim=1)
    assert (moved > 0).all()
    norms = neuron_norms(dict(plain.named_modules())[layer])[old:]
    assert ((moved / norms) < 0.6).all()  # about scale * ||theta||, not wild
    x = torch.randn(5, 1, 8, 8)
    assert not torch.allclose(plain(x), noisy(x))
    again = break_symmetry(apply_splits(model, splits, plan, epsilon=0.01), splits, plan, {layer: old}, "noise", 0.2)
    assert torch.equal(dict(again.named_modules())[layer].weight, dict(noisy.named_modules())[layer].weight)  # seeded


def test_bn_scale_perturbs_one_offspring_scale(setup):
    model, splits, plan, layer = setup
    old = splits[layer].num_neurons
    bn = next(f for f in splits[layer].group.followers if "bn" in f or "norm" in f)
    plain = apply_splits(model, splits, plan, epsilon=0.01)
    grown = break_symmetry(apply_splits(model, splits, plan, epsilon=0.01), splits, plan, {layer: old}, "bn_scale", 0.1)
    g_plain, g_grown = (dict(m.named_modules())[bn].weight.detach() for m in (plain, grown))
    assert torch.equal(g_plain[:old], g_grown[:old])
    assert torch.allclose(g_grown[old:], 1.1 * g_plain[old:])


def test_bad_offspring_settings_are_refused(setup):
    model, splits, plan, layer = setup
    with pytest.raises(ValueError, match="epsilon_scale"):
        scale_directions(model, splits, "percent")
    with pytest.raises(ValueError, match="symmetry_breaking"):
        break_symmetry(model, splits, plan, {layer: 4}, "jitter")
    with pytest.raises(ValueError, match="symmetry scale"):
        break_symmetry(model, splits, plan, {layer: 4}, "noise", -1)
    with pytest.raises(ValueError, match="trial.symmetry_breaking"):
        check_train_settings({"symmetry_breaking": "jitter"})
    with pytest.raises(ValueError, match="trial.epsilon_scale"):
        check_train_settings({"epsilon_scale": 2})
