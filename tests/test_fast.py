"""Matrix-free splitting (method="fast") against the exact splitting matrices, and its memory bound."""
import logging

import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from nni_splitting import compute_splitting
from nni_splitting.core import splitting as splitting_module
from nni_splitting.core.fast import SplittingOperator, check_fast_options, lobpcg_min


def _randomize_bn(module):
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)


def _data(shape, classes=3, n=24, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=dtype), torch.randint(0, classes, (n,), generator=g)


def _models():
    """(name, model, input shape): Linear, convs with BN / stride / no bias, depthwise-separable blocks."""
    torch.manual_seed(0)
    yield "mlp", nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 3)), (12,)
    yield "conv", nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Tanh(),
        nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(4), nn.Softplus(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 3)), (2, 8, 8)
    yield "depthwise", nn.Sequential(
        nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4), nn.Tanh(),
        nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(4), nn.Tanh(),
        nn.Conv2d(4, 5, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3)), (3, 5, 5)
    yield "depthwise_stride2_bias_relu", nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6), nn.BatchNorm2d(6), nn.ReLU6(),
        nn.Conv2d(6, 5, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3)), (3, 7, 7)


def _capture_operators(monkeypatch):
    """Record the SplittingOperator of every layer compute_splitting solves (in graph order)."""
    operators = []
    solve = splitting_module.solve_min_eigenpairs

    def capture(operator, **options):
        operators.append(operator)
        return solve(operator, **options)

    monkeypatch.setattr(splitting_module, "solve_min_eigenpairs", capture)
    return operators


@pytest.mark.parametrize("name,model,shape", list(_models()), ids=[m[0] for m in _models()])
def test_matvec_equals_exact_matrix_times_vector(name, model, shape, monkeypatch):
    model = model.double()
    _randomize_bn(model)
    model.eval()
    x, y = _data(shape)
    batches = [(x[:10], y[:10]), (x[10:], y[10:])]  # two batches of different sizes: the mean is weighted
    exact = compute_splitting(model, nn.CrossEntropyLoss(), batches, keep_matrices=True)
    operators = _capture_operators(monkeypatch)
    compute_splitting(model, nn.CrossEntropyLoss(), batches, method="fast", fast_options={"max_iter": 2})
    assert len(operators) == len(exact)
    generator = torch.Generator().manual_seed(1)
    for operator, (layer, split) in zip(operators, exact.items()):
        matrices = split.matrices
        vectors = torch.randn(*matrices.shape[:2], 3, generator=generator, dtype=torch.float64)
        expected = matrices @ vectors
        assert torch.allclose(operator.matvec(vectors), expected, rtol=1e-9, atol=1e-12), layer
        subset = torch.tensor([matrices.shape[0] - 1, 0])  # a subset of neurons, in any order
        assert torch.allclose(operator.matvec(vectors[subset], subset), expected[subset], rtol=1e-9, atol=1e-12)


def _layer_spread(matrices):
    spectrum = torch.linalg.eigvalsh(matrices.double())
    return spectrum, float(spectrum[:, -1].max() - spectrum[:, 0].min())


def _compare(exact, fast):
    """Eigenvalues within 1% of the layer's spread; |cos| >= 0.99 where the eigen-gap exceeds 5% of the spread."""
    checked = 0
    for layer, split in exact.items():
        spectrum, spread = _layer_spread(split.matrices)
        error = (fast[layer].eigenvalues.double() - split.eigenvalues.double()).abs()
        assert float(error.max()) <= 0.01 * spread, (layer, float(error.max()), spread)
        gap = spectrum[:, 1] - spectrum[:, 0]
        wide = gap > 0.05 * (spectrum[:, -1] - spectrum[:, 0])
        cos = (fast[layer].directions.double() * split.directions.double()).sum(1).abs()
        assert bool((cos[wide] >= 0.99).all()), (layer, cos[wide].min())
        assert torch.allclose(fast[layer].directions.norm(dim=1).double(), torch.ones(len(cos), dtype=torch.float64))
        checked += int(wide.sum())
    return checked


@pytest.mark.parametrize("name,model,shape", list(_models()), ids=[m[0] for m in _models()])
def test_fast_matches_exact_on_small_layers(name, model, shape):
    model = model.double()
    _randomize_bn(model)
    model.eval()
    x, y = _data(shape, n=32)
    exact = compute_splitting(model, nn.CrossEntropyLoss(), [(x, y)], keep_matrices=True)
    fast = compute_splitting(model, nn.CrossEntropyLoss(), [(x, y)], method="fast")
    assert all(s.method == "fast" and s.matrices is None and s.convergence["converged"] == s.num_neurons
               for s in fast.values())
    assert _compare(exact, fast) > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_matches_exact_on_trained_relu_cnn(dtype):
    """d = 16 * 9 + 1 = 145 and 24 * 9 = 216 (no bias), ReLU (surrogate sigma''), a network briefly trained."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(24, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).to(dtype)
    x, y = _data((3, 8, 8), classes=4, n=96, seed=1, dtype=dtype)
    x = x + y[:, None, None, None].to(dtype)  # learnable
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(10):
        optimizer.zero_grad()
        nn.CrossEntropyLoss()(model(x), y).backward()
        optimizer.step()
    model.eval()
    batches = [(x[:48], y[:48]), (x[48:], y[48:])]
    exact = compute_splitting(model, nn.CrossEntropyLoss(), batches, method="exact", keep_matrices=True, layers=["3", "7"])
    fast = compute_splitting(model, nn.CrossEntropyLoss(), batches, method="fast", layers=["3", "7"])
    assert fast["3"].directions.shape == (24, 145) and fast["7"].directions.shape == (8, 216)
    assert fast["3"].eigenvalues.dtype == dtype and fast["3"].directions.dtype == dtype
    assert _compare(exact, fast) >= 10


def test_auto_picks_exact_for_small_d_and_fast_otherwise():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double().eval()
    x, y = _data((4,))
    splits = compute_splitting(model, nn.CrossEntropyLoss(), [(x, y)], method="auto", fast_options={"exact_max_d": 6})
    assert splits["0"].method == "exact" and splits["0"].convergence is None  # d = 5
    assert splits["2"].method == "fast" and splits["2"].convergence["num"] == 8  # d = 7
    exact = compute_splitting(model, nn.CrossEntropyLoss(), [(x, y)])
    assert torch.allclose(splits["0"].eigenvalues, exact["0"].eigenvalues)
    assert torch.allclose(splits["2"].eigenvalues, exact["2"].eigenvalues, atol=1e-6 * float(exact["2"].eigenvalues.abs().max()))
    default = compute_splitting(model, nn.CrossEntropyLoss(), [(x, y)], method="auto")
    assert {s.method for s in default.values()} == {"exact"}  # tiny layers: exact


def test_fast_several_passes_match_one_pass():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double().eval()
    x, y = _data((4,), n=32)
    batches = [(x[:16], y[:16]), (x[16:], y[16:])]
    one = compute_splitting(model, nn.CrossEntropyLoss(), batches, method="fast")
    # Each layer caches 32 * (4 + 6), 32 * (6 + 8) or 32 * (8 + 3) doubles (2560, 3584, 2816 bytes) and
    # LOBPCG takes 32 * 2 * d doubles per neuron (d = 9 at most: 4608 bytes, 3/4 of the work half): half
    # of 12288 bytes holds the first two layers' caches, not the third: two passes.
    two = compute_splitting(model, nn.CrossEntropyLoss(), iter(batches), method="fast", memory_limit=12288)
    for layer in one:
        assert torch.allclose(one[layer].eigenvalues, two[layer].eigenvalues)


def test_unconverged_neurons_are_reported(caplog):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 20), nn.Tanh(), nn.Linear(20, 3)).double().eval()
    x, y = _data((30,), n=64)
    with caplog.at_level(logging.WARNING, logger="nni_splitting.core.fast"):
        split = compute_splitting(model, nn.CrossEntropyLoss(), [(x, y)], method="fast",
                                  fast_options={"max_iter": 1, "tol": 1e-9})["0"]
    assert split.convergence["converged"] < 20 and split.convergence["iterations"] == 1
    assert "not converged" in caplog.text
    assert torch.isfinite(split.eigenvalues).all()


def test_fast_options_are_validated():
    assert check_fast_options(None)["block"] >= 1
    with pytest.raises(ValueError, match="tol=2"):
        check_fast_options({"tol": 2})
    with pytest.raises(ValueError, match="max_iter=0"):
        check_fast_options({"max_iter": 0})
    with pytest.raises(ValueError, match=r"unknown fast_options \['tolerance'\]"):
        check_fast_options({"tolerance": 1e-3})


def test_lobpcg_on_explicit_matrices():
    """The batched solver alone, on matrices with known spectra (a clustered bottom and a wide top)."""
    generator = torch.Generator().manual_seed(0)
    n, d = 16, 60
    q, _ = torch.linalg.qr(torch.randn(n, d, d, generator=generator, dtype=torch.float64))
    spectrum = torch.linspace(-1, 10, d, dtype=torch.float64).expand(n, d).clone()
    spectrum[:, 0] = -2 - torch.rand(n, generator=generator, dtype=torch.float64)
    matrices = q @ torch.diag_embed(spectrum) @ q.transpose(1, 2)

    def matvec(v, idx):
        return matrices[idx] @ v

    values, vectors, report = lobpcg_min(matvec, n, d, dtype=torch.float64, device=torch.device("cpu"), tol=1e-6, max_iter=200)
    assert report["converged"] == n
    assert torch.allclose(values, spectrum[:, 0], atol=1e-6)
    assert bool(((vectors * q[:, :, 0]).sum(1).abs() > 0.999).all())


# ---------------------------------------------------------------- memory: O(n d), never O(n d^2)
class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(value, torch.Tensor):
                self.largest = max(self.largest, value.numel())
        return out


def test_memory_is_linear_in_neurons_times_d():
    """d = 512 * 9 = 4608 and 512 neurons: one S would be 21M elements, all of them 10.9G; fast stays O(n d)."""
    torch.manual_seed(0)
    n, d = 512, 512 * 9
    model = nn.Sequential(nn.Conv2d(512, n, 3, padding=1, bias=False), nn.BatchNorm2d(n), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(n, 10)).eval()
    x, y = torch.randn(4, 512, 3, 3), torch.randint(0, 10, (4,))
    with _LargestTensor() as tracker:
        split = compute_splitting(model, nn.CrossEntropyLoss(), [(x[:2], y[:2]), (x[2:], y[2:])], method="fast",
                                  fast_options={"max_iter": 2, "block": 2})["0"]
    assert split.directions.shape == (n, d) and split.convergence["iterations"] == 2
    # The LOBPCG basis [X, W, P] is n * d * 3 * block elements; nothing may be quadratic in d.
    assert tracker.largest <= 6 * n * d, tracker.largest
    assert tracker.largest < d * d  # not even one splitting matrix


def test_fast_rejects_vectors_of_wrong_size():
    layer = nn.Linear(3, 2)
    operator = SplittingOperator(layer, torch.randn(5, 3), torch.randn(5, 2))
    with pytest.raises(ValueError, match="d=5"):
        operator.matvec(torch.randn(2, 5, 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fast_follows_the_model_to_cuda():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Tanh(), nn.Conv2d(8, 6, 3, padding=1),
                          nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)).double().eval()
    x, y = _data((3, 6, 6), n=16)
    cpu = compute_splitting(model, nn.CrossEntropyLoss(), [(x, y)], method="fast")
    gpu = compute_splitting(model.cuda(), nn.CrossEntropyLoss(), [(x, y)], method="fast")  # data moved to the model
    for layer in cpu:
        assert gpu[layer].eigenvalues.is_cuda and gpu[layer].directions.dtype == torch.float64
        assert torch.allclose(gpu[layer].eigenvalues.cpu(), cpu[layer].eigenvalues, atol=1e-8)
