"""Depth growth (nni_splitting.growth.depth): identity blocks, their first-order scores, and the trial's
``depth_layers`` option end to end on the embedded digits data (a grown MobileNet, its checkpoint, the
scratch arm rebuilding the deeper architecture)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from nni_splitting.growth.checkpoint import load_checkpoint, save_checkpoint
from nni_splitting.growth.depth import block_params, deepen, depth_scores, grow_depth
from nni_splitting.models import build_model, current_widths
from nni_splitting.nni.arms import resolve_arm_params, run_arm
from nni_splitting.nni.trial import resolve_params, run_trial

SEED_WIDTHS = [4, 8, 16, 16, 32, 32, 64]


def _trained_looking(seed: int = 0) -> nn.Module:
    """A seed-shaped MobileNet whose batch norms carry non-trivial statistics and affine parameters."""
    torch.manual_seed(seed)
    model = build_model("mobilenet_cifar", widths=SEED_WIDTHS)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def _batch(n: int = 32, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def test_deepen_keeps_the_function_and_numbers_the_blocks():
    model = _trained_looking()
    x, y = _batch()
    deeper, names = deepen(model, [0, 3, 6], [(x, y)])
    assert names == {0: "features.block1", 3: "features.block5", 6: "features.block9"}
    assert list(deeper.strides) == [1, 1, 2, 1, 1, 2, 1, 2, 1]
    assert current_widths(deeper) == [4, 4, 8, 16, 16, 16, 32, 32, 64, 64]
    assert deeper.config["strides"] == list(deeper.strides)
    with torch.no_grad():
        assert torch.allclose(deeper(x), model(x), atol=1e-5)
        # an old block moved under its new number with its weights
        assert torch.equal(deeper.features.block6.pw.conv.weight, model.features.block4.pw.conv.weight)
    # the new batch norms hold this batch's statistics: in training mode on it the new blocks are the identity too
    with torch.no_grad():
        assert torch.allclose(deeper.train()(x), model.train()(x), atol=1e-4)


def test_deepen_refuses_what_it_cannot_grow():
    with pytest.raises(ValueError, match="MobileNet"):
        deepen(build_model("small_cnn", widths=[4, 4, 4]), [0])
    with pytest.raises(ValueError, match="ReLU"):
        deepen(build_model("mobilenet_cifar", widths=SEED_WIDTHS, activation="silu"), [0])
    with pytest.raises(ValueError, match="positions"):
        deepen(build_model("mobilenet_cifar", widths=SEED_WIDTHS), [7])
    with pytest.raises(ValueError, match="strides"):
        build_model("mobilenet_cifar", widths=SEED_WIDTHS, strides=[1, 2, 1])


def test_scores_in_one_network_equal_each_insertion_alone():
    """Every new block is the identity, so the gradient of one does not depend on the others: the scores
    computed with a block at every position equal those of inserting each block alone."""
    model = _trained_looking()
    batches = [_batch(seed=s) for s in (1, 2)]
    epsilon = 0.05
    scores = depth_scores(model, nn.CrossEntropyLoss(), batches, epsilon)
    assert sorted(scores) == list(range(7)) and all(v <= 0 for v in scores.values())
    for position in (0, 4, 6):
        alone, names = deepen(model, [position], batches)
        block = alone.get_submodule(names[position])
        weights = [block.dw.conv.weight, block.pw.conv.weight]
        loss = sum(nn.CrossEntropyLoss()(alone(x), y) for x, y in batches) / len(batches)
        grads = torch.autograd.grad(loss, weights)
        expected = -epsilon * float(torch.sqrt(sum((g ** 2).sum() for g in grads)))
        assert scores[position] == pytest.approx(expected, rel=1e-4, abs=1e-12)


def test_grow_depth_inserts_the_best_per_parameter():
    model = _trained_looking()
    batches = [_batch()]
    same, none = grow_depth(model, nn.CrossEntropyLoss(), batches, 0, 0.01)
    assert same is model and none == {}
    grown, scores = grow_depth(model, nn.CrossEntropyLoss(), batches, 2, 0.01)
    per_param = {p: s / block_params(SEED_WIDTHS[p]) for p, s in scores.items()}
    best = sorted(per_param, key=per_param.get)[:2]
    assert len(grown.strides) == 8
    expected, _ = deepen(model, best)
    assert list(grown.strides) == list(expected.strides) and current_widths(grown) == current_widths(expected)
    deepest, _ = grow_depth(model, nn.CrossEntropyLoss(), batches, 1, 0.01, cost="none")
    expected, _ = deepen(model, [min(scores, key=scores.get)])
    assert current_widths(deepest) == current_widths(expected)
    with pytest.raises(ValueError, match="count"):
        grow_depth(model, nn.CrossEntropyLoss(), batches, -1, 0.01)
    with pytest.raises(ValueError, match="cost"):
        grow_depth(model, nn.CrossEntropyLoss(), batches, 1, 0.01, cost="flops")


def test_deeper_checkpoint_round_trip(tmp_path):
    deeper, _ = deepen(_trained_looking(), [2])
    save_checkpoint(tmp_path / "deep.pt", deeper, "mobilenet_cifar")
    loaded, state = load_checkpoint(tmp_path / "deep.pt")
    x, _ = _batch(4)
    assert state["model_config"]["strides"] == [1, 2, 1, 2, 1, 2, 1][:3] + [1, 2, 1, 2]
    with torch.no_grad():
        assert torch.allclose(loaded(x), deeper(x), atol=1e-6)


def test_trial_grows_depth_and_the_scratch_arm_rebuilds_it(tmp_path):
    """depth_layers=1: the child trial applies its width plan, then one identity block; it reports the
    strides; the scratch arm trains the same architecture (same parameter count) from scratch."""
    fast = {"epochs": 1, "split_batches": 2, "num_threads": 1, "model": "mobilenet_cifar",
            "growth_strategy": "firefly"}
    seed = run_trial(resolve_params({}, dict(fast, widths=[2, 4, 4, 4, 4, 4, 8], node_id="l0s0-depth")),
                     tmp_path / "seed")
    info = json.loads(Path(seed["indexes"]).read_text())
    layer = info["width_layers"][1]
    child_params = resolve_params({}, dict(fast, step=1, node_id="l0s1-depth", parent_checkpoint=seed["checkpoint"],
                                           parent_splits=seed["splits"], split_plan={layer: [0]},
                                           widths=[2, 5, 4, 4, 4, 4, 8], depth_layers=1))
    child = run_trial(child_params, tmp_path / "child")
    strides = [int(s) for s in child["strides"].split(",")]
    widths = [int(w) for w in child["widths"].split(",")]
    assert len(strides) == 7 and strides.count(2) == 3 and len(widths) == 8
    assert json.loads(Path(child["indexes"]).read_text())["model_config"]["strides"] == strides
    assert seed["strides"] == ""  # a network of the default depth reports none
    scratch = run_arm(resolve_arm_params({}, dict(fast, arm="scratch", step=1, widths=widths, strides=strides,
                                                  total_epochs=1)), tmp_path / "scratch")
    assert scratch["params"] == child["params"] and scratch["strides"] == child["strides"]
    with pytest.raises(ValueError, match="depth_layers"):
        resolve_params({}, {"depth_layers": -1})
    with pytest.raises(ValueError, match="depth_cost"):
        resolve_params({}, {"depth_cost": "flops"})
