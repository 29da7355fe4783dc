"""Fig. 1 (toy RBF network): the RBF splitting matrix against the augmented network's Hessian, and the
properties the figure shows on a minimal run (1b: index and loss decrease are linearly related; 1c: the
decrease is largest along v_min; 1d: each split lowers the converged loss)."""
import numpy as np
import pytest
import torch

from nni_splitting.paper import rbf_toy as R
from nni_splitting.paper.figures import plot_rbf_figure


def _model(n=3, seed=0):
    x, _ = R.make_data(60)
    return R.random_rbf(n, x, torch.Generator().manual_seed(seed), amplitude_std=0.8)


def _augmented_loss(model, x, y, i):
    """L(delta): neuron i replaced by theta_i +- delta, each with outgoing weight a_i / 2 (written independently)."""
    mu = model.rbf.centers.detach()
    s = model.rbf.log_widths.detach().exp()
    a = model.output.weight.detach()[0]

    def bump(m, w):
        return torch.exp(-(x[:, 0] - m) ** 2 / (2 * w ** 2))

    def loss(delta):
        f = sum(a[k] * bump(mu[k], s[k]) for k in range(len(mu)) if k != i)
        plus = bump(mu[i] + delta[0], s[i] * torch.exp(delta[1]))
        minus = bump(mu[i] - delta[0], s[i] * torch.exp(-delta[1]))
        f = f + a[i] / 2 * (plus + minus)
        return 0.5 * ((f - y[:, 0]) ** 2).mean()

    return loss


@pytest.mark.parametrize("seed", [0, 1])
def test_splitting_matrix_is_the_augmented_hessian(seed):
    model = _model(seed=seed)
    x, y = R.make_data(60)
    splits = R.rbf_splitting(model, x, y)
    assert splits.matrices.shape == (3, 2, 2) and splits.matrices.dtype == torch.float64
    for i in range(3):
        reference = torch.autograd.functional.hessian(_augmented_loss(model, x, y, i), torch.zeros(2, dtype=torch.float64))
        torch.testing.assert_close(splits.matrices[i], reference, rtol=1e-9, atol=1e-12)
        values, _ = torch.linalg.eigh(reference)
        assert float(splits.eigenvalues[i]) == pytest.approx(float(values[0]), rel=1e-9, abs=1e-12)


def test_split_preserves_function_at_zero_and_follows_theorem_2_3():
    model = _model()
    x, y = R.make_data(60)
    with torch.no_grad():
        same = R.split_rbf(model, [0, 2], torch.ones(2, 2), epsilon=0.0)
        torch.testing.assert_close(same(x), model(x))
        assert same.rbf.out_features == 5
    splits = R.rbf_splitting(model, x, y)
    eps = 1e-3
    with torch.no_grad():
        for i in range(3):
            change = R.rbf_loss(R.split_rbf(model, [i], splits.directions[i][None], eps), x, y) - R.rbf_loss(model, x, y)
            assert float(change) == pytest.approx(eps ** 2 * float(splits.eigenvalues[i]) / 2, rel=1e-3, abs=1e-13)


def test_bad_arguments_raise_value_error():
    model = _model()
    with pytest.raises(ValueError, match=r"\[5\]"):
        R.split_rbf(model, [5], torch.ones(1, 2), 0.1)
    with pytest.raises(ValueError, match="'nope'"):
        R.grow("nope", *R.make_data(20))
    with pytest.raises(ValueError, match="'sgd'"):
        R.train_rbf(model, *R.make_data(20), iterations=1, optimizer="sgd")


def test_minimal_figure_1_properties(tmp_path):
    result = R.run_rbf_experiment(max_neurons=4, iterations=40, probe_neurons=3, n_points=100, seeds=(0,))
    # 1b: the loss decrease of splitting each neuron is linear in its splitting index
    probe = result["index_vs_decrease"]
    assert len(probe["index"]) == 3
    assert np.corrcoef(-probe["index"], probe["decrease"])[0, 1] > 0.9
    np.testing.assert_allclose(probe["decrease"], probe["predicted"], rtol=0.05, atol=1e-9)
    # 1c: the decrease is largest when splitting along v_min (angle 0)
    sweep = result["angle"]
    assert sweep["angle"][int(np.argmax(sweep["decrease"]))] == 0
    # 1d: alternating training and splitting lowers the converged loss at every growth step
    run = result["runs"]["splitting"][0]
    stage_ends = [run.losses[e - 1] for e in run.events] + [run.losses[-1]]
    assert all(b < a for a, b in zip(stage_ends, stage_ends[1:]))
    assert all(index < 0 for index in run.indexes)
    assert [m.rbf.out_features for m in run.models] == [1, 2, 3, 4]
    assert set(result["runs"]) == {"splitting", "random_split", "new_neuron", "boosting", "scratch"}
    assert all(len(r[0].losses) == 160 for r in result["runs"].values())
    path = plot_rbf_figure(result, tmp_path / "fig1.png")
    assert path.stat().st_size > 10_000
