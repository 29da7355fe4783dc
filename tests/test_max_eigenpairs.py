"""The largest eigenpair (lambda_max, v_max) of every S_j, exact and fast, against fp64 eigh; old split files."""
import pytest
import torch
import torch.nn as nn

from nni_splitting import compute_splitting, load_splits, save_splits
from nni_splitting.core.fast import check_fast_options
from nni_splitting.core.matrix import extreme_eigenpairs, max_eigenpairs, min_eigenpairs


def _models():
    torch.manual_seed(0)
    yield "mlp", nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)), (6,)
    yield "depthwise", nn.Sequential(
        nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4), nn.Tanh(),
        nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), nn.BatchNorm2d(4), nn.Tanh(),
        nn.Conv2d(4, 5, 3, padding=1), nn.Softplus(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3)), (3, 5, 5)


def _data(shape, n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _reference(matrices):
    values, vectors = torch.linalg.eigh(matrices.double())
    return values[:, -1], vectors[:, :, -1]


def _aligned(a, b):
    return (a * b).sum(1).abs()


@pytest.mark.parametrize("name,model,shape", list(_models()), ids=[m[0] for m in _models()])
def test_exact_and_fast_lambda_max_match_fp64_eigh(name, model, shape):
    model = model.double().eval()
    x, y = _data(shape)
    exact = compute_splitting(model, nn.CrossEntropyLoss(), [(x, y)], keep_matrices=True)
    fast = compute_splitting(model, nn.CrossEntropyLoss(), [(x, y)], method="fast",
                             fast_options={"tol": 1e-7, "max_iter": 300})
    for layer, split in exact.items():
        values, vectors = _reference(split.matrices)
        scale = float(values.abs().max())
        torch.testing.assert_close(split.max_eigenvalues, values, atol=1e-10 * scale, rtol=0)
        assert bool((_aligned(split.max_directions, vectors) > 1 - 1e-8).all())
        torch.testing.assert_close(fast[layer].max_eigenvalues, values, atol=1e-6 * scale, rtol=0)
        # v_max is defined up to sign; where the top gap is tiny the angle is loose, so weight by the gap
        gap = values - torch.linalg.eigvalsh(split.matrices)[:, -2]
        clear = gap > 1e-3 * scale
        assert bool(clear.any())
        assert bool((_aligned(fast[layer].max_directions, vectors)[clear] > 0.999).all())
        assert fast[layer].convergence["largest"]["num"] == split.num_neurons
        assert bool((split.max_eigenvalues >= split.eigenvalues).all())


def test_fast_largest_can_be_skipped():
    model, shape = next(iter(_models()))[1:]
    x, y = _data(shape)
    fast = compute_splitting(model.double().eval(), nn.CrossEntropyLoss(), [(x, y)], method="fast",
                             fast_options={"largest": False})
    assert all(s.max_eigenvalues is None and s.max_directions is None for s in fast.values())
    with pytest.raises(ValueError, match="largest='yes'"):
        check_fast_options({"largest": "yes"})


def test_extreme_eigenpairs_are_both_ends_of_eigh():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 7, 7, generator=g, dtype=torch.float64)
    low, low_v, high, high_v = extreme_eigenpairs(a)
    values = torch.linalg.eigvalsh(0.5 * (a + a.transpose(1, 2)))
    torch.testing.assert_close(low, values[:, 0])
    torch.testing.assert_close(high, values[:, -1])
    torch.testing.assert_close(min_eigenpairs(a)[0], low)
    torch.testing.assert_close(max_eigenpairs(a)[1], high_v)


def test_split_files_round_trip_and_old_files_load(tmp_path):
    model, shape = next(iter(_models()))[1:]
    x, y = _data(shape)
    splits = compute_splitting(model.double().eval(), nn.CrossEntropyLoss(), [(x, y)])
    save_splits(splits, tmp_path / "new.pt")
    again = load_splits(tmp_path / "new.pt")
    torch.testing.assert_close(again["0"].max_eigenvalues, splits["0"].max_eigenvalues)
    torch.testing.assert_close(again["0"].max_directions, splits["0"].max_directions)
    # A file written before the largest eigenpair existed: the old state_dict's keys only.
    old = {name: {"layer": s.layer, "eigenvalues": s.eigenvalues, "directions": s.directions,
                  "group": s.group.to_dict(), "activation": s.activation} for name, s in splits.items()}
    torch.save(old, str(tmp_path / "old.pt"))
    loaded = load_splits(tmp_path / "old.pt")
    assert loaded["0"].max_eigenvalues is None and loaded["0"].max_directions is None
    torch.testing.assert_close(loaded["0"].eigenvalues, splits["0"].eigenvalues)
    assert loaded["0"].group == splits["0"].group
