"""compute_splitting(position_samples=...): an unbiased estimate of the splitting matrices (exact layers)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from nni_splitting import compute_splitting
from nni_splitting.graph.handlers import Conv2dHandler, LayerHandler
from nni_splitting.core.matrix import depthwise_jacobian, depthwise_jacobian_at, neuron_inputs, neuron_inputs_at
from nni_splitting.models import build_model


def _tiny_mobilenet(seed, images, batches):
    """A 3-channel MobileNetV1 in fp64 and ``images`` random CIFAR-size inputs cut into ``batches``."""
    torch.manual_seed(seed)
    model = build_model("mobilenet_v1", widths=[3] * 14).double().eval()
    x = torch.randn(images, 3, 32, 32, dtype=torch.float64)
    y = torch.randint(0, 10, (images,))
    return model, list(zip(x.chunk(batches), y.chunk(batches)))


@pytest.fixture(scope="module")
def tiny():
    return _tiny_mobilenet(0, 6, 1)


@pytest.mark.parametrize("stride", [1, 2])
def test_depthwise_jacobian_at_equals_the_full_one_at_those_positions(stride):
    torch.manual_seed(stride)
    patches = torch.randn(3, 5, 64, dtype=torch.float64)
    slopes = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    dw = nn.Conv2d(4, 4, 3, stride=stride, padding=1, groups=4, bias=False).double()
    full = depthwise_jacobian(patches, slopes, None, dw, (8, 8), slice(1, 4))
    q = torch.tensor([0, 5, full.shape[-1] - 1])
    assert torch.allclose(depthwise_jacobian_at(patches, slopes, dw, (8, 8), slice(1, 4), q), full[..., q],
                          atol=1e-14)


def test_all_positions_is_the_exact_result(tiny):
    model, batches = tiny
    full = compute_splitting(model, nn.CrossEntropyLoss(), batches, method="exact", keep_matrices=True)
    same = compute_splitting(model, nn.CrossEntropyLoss(), batches, method="exact", keep_matrices=True,
                             position_samples=100_000)
    for name in full:
        assert torch.allclose(full[name].matrices, same[name].matrices, atol=1e-14)


def test_drawn_positions_average_to_the_exact_matrices(tiny):
    model, batches = tiny
    full = compute_splitting(model, nn.CrossEntropyLoss(), batches, method="exact", keep_matrices=True)
    draws = [compute_splitting(model, nn.CrossEntropyLoss(), batches, method="exact", keep_matrices=True,
                               position_samples=256, seed=seed) for seed in range(40)]
    checked = 0
    for name, reference in full.items():
        grid = reference.matrices.norm()
        if grid == 0:
            continue
        one = sum((d[name].matrices - reference.matrices).norm() for d in draws) / len(draws) / grid
        mean = torch.stack([d[name].matrices for d in draws]).mean(0)
        error = (mean - reference.matrices).norm() / grid
        # unbiased: the mean of 40 draws is ~1/sqrt(40) as far off as one draw (a bias would not shrink)
        assert error <= max(0.35 * one, 1e-12), (name, float(one), float(error))
        checked += int(one > 1e-12)
    assert checked >= 2  # the layers whose grid has more than 256 positions (32 x 32) were estimated


def test_bad_position_samples_are_refused(tiny):
    model, batches = tiny
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="position_samples"):
            compute_splitting(model, nn.CrossEntropyLoss(), batches, position_samples=bad)


@pytest.mark.parametrize("kernel, stride, padding, dilation, bias", [
    (3, 1, 1, 1, True), (3, 2, 1, 1, False), (1, 1, 0, 1, True), (5, 2, 3, 2, True), (3, 1, 0, 1, False)])
def test_gathered_conv_patches_equal_the_unfolded_ones(kernel, stride, padding, dilation, bias):
    """neuron_inputs_at gathers x~ at chosen positions (incl. padding taps) exactly as unfold finds them."""
    torch.manual_seed(kernel + stride)
    conv = nn.Conv2d(3, 4, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias).double()
    x = torch.randn(2, 3, 11, 9, dtype=torch.float64)
    full = neuron_inputs(x, conv)
    positions = torch.randperm(full.shape[2])[:7]
    assert torch.equal(neuron_inputs_at(x, conv, positions), full[:, :, positions])
    grid = positions[:6].reshape(2, 3)  # any index shape: [N, d, *shape]
    assert torch.equal(neuron_inputs_at(x, conv, grid), full[:, :, grid])


def test_sampled_positions_match_the_dense_computation_of_the_same_draw(tiny, monkeypatch):
    """The gathered path (x~ only at the drawn positions and their depthwise taps) sums the same terms as
    unfolding every position and indexing (the handlers' default): one draw, both ways, fp64."""
    model, batches = tiny
    gathered = compute_splitting(model, nn.CrossEntropyLoss(), batches, method="exact", keep_matrices=True,
                                 position_samples=7, seed=3)
    monkeypatch.setattr(Conv2dHandler, "neuron_inputs_at", LayerHandler.neuron_inputs_at)
    unfolded = compute_splitting(model, nn.CrossEntropyLoss(), batches, method="exact", keep_matrices=True,
                                 position_samples=7, seed=3)
    full = compute_splitting(model, nn.CrossEntropyLoss(), batches, method="exact", keep_matrices=True)
    for name in full:
        assert torch.allclose(gathered[name].matrices, unfolded[name].matrices, atol=1e-13), name
    assert any(not torch.allclose(gathered[n].matrices, full[n].matrices) for n in full)  # it did sample


def test_bfloat16_products_keep_the_matrices_and_the_ranking():
    """product_dtype="bfloat16" forms the second-order products in bfloat16 (shared pointwise features and the
    per-neuron depthwise Jacobians); the sums stay float32 and close to the float32 ones."""
    torch.manual_seed(1)
    model = build_model("mobilenet_v1", widths=[6] * 14).eval()
    batches = [(torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)))]
    exact = compute_splitting(model, nn.CrossEntropyLoss(), batches, method="exact", keep_matrices=True,
                              position_samples=16)
    low = compute_splitting(model, nn.CrossEntropyLoss(), batches, method="exact", keep_matrices=True,
                            position_samples=16, product_dtype="bfloat16")
    for name in exact:
        assert low[name].matrices.dtype == torch.float32
        scale = exact[name].matrices.norm()
        assert (low[name].matrices - exact[name].matrices).norm() <= 2e-2 * scale, name
    values = torch.cat([s.eigenvalues for s in exact.values()])
    values_low = torch.cat([s.eigenvalues for s in low.values()])
    ranks = torch.stack([values.argsort().argsort(), values_low.argsort().argsort()]).double()
    assert torch.corrcoef(ranks)[0, 1] > 0.99


@pytest.mark.parametrize("bad", ["nope", "int32", torch.int64, 3])
def test_bad_product_dtype_is_refused(tiny, bad):
    model, batches = tiny
    with pytest.raises(ValueError, match="product_dtype"):
        compute_splitting(model, nn.CrossEntropyLoss(), batches, product_dtype=bad)


def test_auto_keeps_wider_layers_exact_when_positions_are_sampled():
    """d = 101: fast under plain "auto" (d > 64), exact with position_samples (d <= 256)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    batches = [(torch.randn(32, 100, dtype=torch.float64), torch.randint(0, 3, (32,)))]
    plain = compute_splitting(model, nn.CrossEntropyLoss(), batches, method="auto")
    sampled = compute_splitting(model, nn.CrossEntropyLoss(), batches, method="auto", position_samples=16)
    assert plain["0"].method == "fast" and sampled["0"].method == "exact"
    assert torch.allclose(plain["0"].eigenvalues, sampled["0"].eigenvalues, rtol=1e-2, atol=1e-6)


@pytest.fixture(scope="module")
def tiny_batch():
    return _tiny_mobilenet(1, 24, 2)


@pytest.mark.parametrize("position_samples", [None, 64])
def test_drawn_images_average_to_the_exact_matrices(tiny_batch, position_samples):
    """image_fraction: a Poisson draw of images weighted 1/pi_n is unbiased (alone and with drawn positions),
    on every term (the depthwise ones included): 60 draws' mean is much closer than one draw (a bias would
    not shrink; 1/sqrt(60) = 0.13 of one draw's error is expected, 0.5 allowed for the draws' spread)."""
    model, batches = tiny_batch
    loss = nn.CrossEntropyLoss()
    full = compute_splitting(model, loss, batches, method="exact", keep_matrices=True)
    draws = [compute_splitting(model, loss, batches, method="exact", keep_matrices=True, image_fraction=0.4,
                               position_samples=position_samples, seed=seed) for seed in range(60)]
    checked = 0
    for name, reference in full.items():
        scale = reference.matrices.norm()
        if scale == 0:
            continue
        one = sum((d[name].matrices - reference.matrices).norm() for d in draws) / len(draws) / scale
        error = (torch.stack([d[name].matrices for d in draws]).mean(0) - reference.matrices).norm() / scale
        assert error <= max(0.5 * one, 1e-12), (name, float(one), float(error))
        checked += int(one > 1e-6)
    assert checked == len(full)  # every layer was estimated from a subset of the images


def test_image_fraction_is_reproducible_and_checked(tiny_batch):
    model, batches = tiny_batch
    loss = nn.CrossEntropyLoss()
    one, two = (compute_splitting(model, loss, batches, method="exact", image_fraction=0.5, seed=3) for _ in range(2))
    assert all(torch.equal(one[k].eigenvalues, two[k].eigenvalues) for k in one)
    for bad in (0, 1.5, True, "half"):
        with pytest.raises(ValueError, match="image_fraction"):
            compute_splitting(model, loss, batches, image_fraction=bad)
