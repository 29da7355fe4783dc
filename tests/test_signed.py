"""Signed splitting (S3D, nni_splitting.growth.signed) against an fp64 reference, on real models and the digits data."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from nni_splitting import apply_splits, compute_splitting, select_neurons
from nni_splitting.common.data import load_dataset
from nni_splitting.models import build_model
from nni_splitting.growth.signed import (SCHEMES, apply_signed_splits, predicted_change, scheme_choices, signed_indexes,
                                   signed_schemes)


def _digits(n=256):
    x, y = load_dataset("digits").train.tensors
    return x[:n].double(), y[:n]


def _trained_mlp(activation, widths=(6,), steps=150, seed=0):
    torch.manual_seed(seed)
    x, y = _digits()
    model = build_model("mlp", widths=list(widths), activation=activation).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x, y


def _splitting_stable_toy():
    """A softplus MLP whose every S_j is positive semi-definite for the MSE loss on its own outputs - 1."""
    torch.manual_seed(1)
    x, _ = _digits()
    model = build_model("mlp", widths=[4], activation="softplus").double().eval()
    with torch.no_grad():
        model.classifier.fc.weight.abs_()
        target = model(x) - 1.0  # dL/df > 0 everywhere and positive output weights: dL/da_j > 0, sigma'' > 0
    return model, x, target


def _loss(model, x, y, loss_fn):
    with torch.no_grad():
        return float(loss_fn(model(x), y))


def test_largest_eigenpairs_match_an_fp64_reference():
    model, x, y = _trained_mlp("tanh")
    splits = compute_splitting(model, nn.CrossEntropyLoss(), [(x, y)], method="exact", keep_matrices=True)
    for split in splits.values():
        reference = torch.linalg.eigvalsh(split.matrices.double())
        assert torch.allclose(split.max_eigenvalues.double(), reference[:, -1], atol=1e-10, rtol=1e-8)
        residual = torch.einsum("nab,nb->na", split.matrices, split.max_directions) \
            - split.max_eigenvalues[:, None] * split.max_directions
        assert residual.norm(dim=1).max() < 1e-8


@pytest.mark.parametrize("scheme", ["signed", "positive"])
def test_predicted_loss_change_matches_the_measured_one(scheme):
    """dL = eps^2/2 * index to within 1% at small eps, for each scheme (fp64, tanh MLP, the same data)."""
    model, x, y = _trained_mlp("tanh", widths=(8,))
    loss_fn = nn.CrossEntropyLoss()
    splits = compute_splitting(model, loss_fn, [(x, y)], method="exact")
    layer = next(iter(splits))
    a = 1.0 if scheme == "signed" else 0.01  # a small a makes the signed split weak: S2D's split wins
    wanted = signed_schemes(splits, a)[layer] if scheme == "signed" else ~signed_schemes(splits, a)[layer]
    index = signed_indexes(splits, a)[layer]
    candidates = [j for j in range(len(index)) if bool(wanted[j]) and abs(float(index[j])) > 1e-4]
    assert candidates, f"no neuron prefers the {scheme} scheme here: {index.tolist()}"
    plan = {layer: candidates[:3]}
    eps = 1e-3
    before = _loss(model, x, y, loss_fn)
    grown = apply_signed_splits(model, splits, plan, epsilon=eps, a=a)
    measured = _loss(grown, x, y, loss_fn) - before
    predicted = predicted_change(splits, plan, eps, a)
    assert abs(measured - predicted) <= 0.01 * abs(predicted), (measured, predicted)
    if scheme == "positive":  # the positive scheme is S2D's split, exactly
        plain = apply_splits(model, splits, plan, epsilon=eps)
        assert all(torch.allclose(a, b) for a, b in zip(plain.state_dict().values(), grown.state_dict().values()))


def test_function_is_preserved_at_zero_epsilon_with_signed_output_weights():
    model, x, y = _trained_mlp("tanh")
    splits = compute_splitting(model, nn.CrossEntropyLoss(), [(x, y)], method="exact")
    layer = next(iter(splits))
    grown = apply_signed_splits(model, splits, {layer: list(range(6))}, epsilon=0.0, a=2.0)
    assert torch.allclose(grown(x), model(x), atol=1e-12)
    consumer = dict(grown.named_modules())[splits[layer].group.consumers[0].module]
    signed = signed_schemes(splits, a=2.0)[layer]
    original = dict(model.named_modules())[splits[layer].group.consumers[0].module].weight
    for j in range(6):  # signed pairs carry (1 + a) and -a of the original output weights
        if bool(signed[j]):
            assert torch.allclose(consumer.weight[:, j], 3 * original[:, j])
            assert torch.allclose(consumer.weight[:, 6 + j], -2 * original[:, j])


def test_consecutive_split_layers_take_their_directions_on_the_old_widths():
    """Both hidden layers of an MLP split at once (the second also consumes the first), as every
    round of the CIFAR protocol does: this failed with a size mismatch when the signed offsets were
    written after the consumers had been widened. At eps = 0 the function is kept; at a small eps
    the measured loss change is the sum of the predicted ones."""
    model, x, y = _trained_mlp("tanh", widths=(6, 5), steps=200)
    loss_fn = nn.CrossEntropyLoss()
    splits = compute_splitting(model, loss_fn, [(x, y)], method="exact")
    assert len(splits) == 2
    plan = {layer: list(range(split.num_neurons)) for layer, split in splits.items()}
    assert any(bool(s.any()) for s in signed_schemes(splits, 1.0).values())  # both schemes are in play
    grown = apply_signed_splits(model, splits, plan, epsilon=0.0, a=1.0)
    assert torch.allclose(grown(x), model(x), atol=1e-12)
    eps = 1e-3
    before = _loss(model, x, y, loss_fn)
    measured = _loss(apply_signed_splits(model, splits, plan, epsilon=eps, a=1.0), x, y, loss_fn) - before
    predicted = predicted_change(splits, plan, eps, 1.0)
    assert abs(measured - predicted) <= 0.02 * abs(predicted), (measured, predicted)


def test_signed_splitting_grows_a_network_that_is_splitting_stable_for_s2d():
    """Every lambda_min >= 0 (S2D stops); S3D's signed splits still lower the loss."""
    model, x, target = _splitting_stable_toy()
    loss_fn = nn.MSELoss()
    splits = compute_splitting(model, loss_fn, [(x, target)], method="exact")
    layer = next(iter(splits))
    assert float(splits[layer].eigenvalues.min()) >= -1e-12  # S_j is positive semi-definite
    # S2D: splitting-stable (lambda_min = 0 up to rounding, from the always-zero border pixels of digits)
    assert select_neurons(splits, threshold=-1e-9) == {}
    index = signed_indexes(splits)[layer]
    assert (index < 0).all() and bool(signed_schemes(splits)[layer].all())
    plan = select_neurons({layer: index}, max_splits=2, threshold=0.0)
    before = _loss(model, x, target, loss_fn)
    grown = apply_signed_splits(model, splits, plan, epsilon=0.2)
    assert _loss(grown, x, target, loss_fn) < before - 0.5 * abs(predicted_change(splits, plan, 0.2))


def test_bad_signed_input_is_refused():
    model, x, y = _trained_mlp("tanh", steps=1)
    splits = compute_splitting(model, nn.CrossEntropyLoss(), [(x, y)], method="exact",
                               fast_options={"largest": False})
    layer = next(iter(splits))
    with pytest.raises(ValueError, match="signed weight"):
        signed_indexes(splits, a=0)
    with pytest.raises(ValueError, match="epsilon"):
        apply_signed_splits(model, splits, {layer: [0]}, epsilon=-1)
    stripped = {layer: splits[layer]}
    stripped[layer].max_eigenvalues = None
    with pytest.raises(ValueError, match="lambda_max"):
        signed_indexes(stripped)


def test_grower_with_s3d_grows_where_s2d_is_stuck():
    """SplittingGrower(strategy='s3d') on the splitting-stable toy: S2D adds nothing, S3D adds neurons."""
    from nni_splitting import SplittingGrower
    model, x, target = _splitting_stable_toy()
    config = [{"op_types": ["Linear"], "max_splits": 2, "threshold": -1e-9}]
    grown = {}
    for strategy in ("s2d", "s3d"):
        grower = SplittingGrower(model, config, batches=[(x, target)], loss_fn=nn.MSELoss(), strategy=strategy,
                                 strategy_options={"method": "exact"}, epsilon=0.2)
        grown[strategy] = grower.step()
        assert grower.history[-1]["strategy"] == strategy
    assert grown["s2d"] is model or sum(p.numel() for p in grown["s2d"].parameters()) == \
        sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in grown["s3d"].parameters()) > sum(p.numel() for p in model.parameters())
    loss = nn.MSELoss()
    assert _loss(grown["s3d"], x, target, loss) < _loss(model, x, target, loss)


# ------------------------------------------------------------------ three copies


def _spectrum(lambda_min, lambda_max):
    from types import SimpleNamespace
    return SimpleNamespace(eigenvalues=torch.tensor([float(lambda_min)], dtype=torch.float64),
                           max_eigenvalues=torch.tensor([float(lambda_max)], dtype=torch.float64),
                           max_directions=torch.zeros(1, 3, dtype=torch.float64))


def _numerical_optimum(eigenvalues, a, copies, restarts=60, seed=0):
    """min sum_i w_i delta_i^T S delta_i over every `copies`-copy scheme with sum w_i = 1, sum w_i delta_i = 0,
    ||delta_i|| <= 1, sum |w_i| <= 1 + 2a (SLSQP from random starts): an independent check of the closed form."""
    import numpy as np
    from scipy.optimize import minimize
    rng = np.random.default_rng(seed)
    matrix, m, d = np.diag(eigenvalues), copies, len(eigenvalues)

    def parts(z):
        return z[:m], z[m:].reshape(m, d)

    def objective(z):
        w, delta = parts(z)
        return float(sum(wi * di @ matrix @ di for wi, di in zip(w, delta)))

    constraints = [{"type": "eq", "fun": lambda z: parts(z)[0].sum() - 1},
                   {"type": "eq", "fun": lambda z: (parts(z)[0][:, None] * parts(z)[1]).sum(0)},
                   {"type": "ineq", "fun": lambda z: 1 + 2 * a - np.sqrt(parts(z)[0] ** 2 + 1e-12).sum()},
                   {"type": "ineq", "fun": lambda z: 1 - (parts(z)[1] ** 2).sum(1)}]
    found = [minimize(objective, rng.normal(size=m + m * d), constraints=constraints, method="SLSQP",
                      options={"maxiter": 500}) for _ in range(restarts)]
    return min(r.fun for r in found if r.success)


@pytest.mark.parametrize("copies", [2, 3])
@pytest.mark.parametrize("a, spectrum", [(0.5, (-0.5, 0.3, 1.2)), (1.0, (-1.3, -0.2, 0.4)),
                                         (2.0, (-1.0, 0.1, 3.0)), (0.3, (0.27, 0.75, 1.6))])
def test_the_closed_form_schemes_are_the_optimum_over_every_scheme_with_that_many_copies(copies, a, spectrum):
    """Each mixed, signed and positive case: the index equals the best of all schemes found numerically."""
    closed = float(signed_indexes({"layer": _spectrum(min(spectrum), max(spectrum))}, a, copies)["layer"][0])
    assert closed == pytest.approx(min(0.0, _numerical_optimum(spectrum, a, copies)), abs=1e-5)


def _neurons_by_scheme(splits, layer, copies):
    """{scheme: (a, neurons that choose it at that a)} over a few weight bounds a."""
    found = {}
    for a in (0.05, 0.3, 1.0, 3.0, 10.0):
        codes = scheme_choices(splits, a, copies)[layer]
        index = signed_indexes(splits, a, copies)[layer]
        for code, name in enumerate(SCHEMES[copies]):
            picks = [j for j in range(len(codes)) if int(codes[j]) == code and abs(float(index[j])) > 1e-4]
            if picks and name not in found:
                found[name] = (a, picks[:3])
    return found


@pytest.mark.parametrize("scheme", ["positive3", "signed3", "mixed3"])
def test_three_copy_predicted_loss_change_matches_the_measured_one(scheme):
    """dL = eps^2/2 * index within 1% at small eps for each three-copy scheme (fp64, softplus MLP after a few
    steps: some of its neurons have lambda_max < |lambda_min|, where positive3 wins)."""
    model, x, y = _trained_mlp("softplus", widths=(8,), steps=5)
    loss_fn = nn.CrossEntropyLoss()
    splits = compute_splitting(model, loss_fn, [(x, y)], method="exact")
    layer = next(iter(splits))
    found = _neurons_by_scheme(splits, layer, 3)
    assert scheme in found, f"no neuron chooses {scheme} at any a: {sorted(found)}"
    a, picks = found[scheme]
    plan, eps = {layer: picks}, 1e-3
    before = _loss(model, x, y, loss_fn)
    grown = apply_signed_splits(model, splits, plan, epsilon=eps, a=a, copies=3)
    assert dict(grown.named_modules())[layer].out_features == splits[layer].num_neurons + 2 * len(picks)
    measured = _loss(grown, x, y, loss_fn) - before
    predicted = predicted_change(splits, plan, eps, a, copies=3)
    assert abs(measured - predicted) <= 0.01 * abs(predicted), (measured, predicted)


def test_three_copies_preserve_the_function_and_write_their_output_weights():
    """Both hidden layers split into three at once (the second consumes the first): at eps = 0 the function
    is kept and each copy carries w_i times the original output column; at small eps dL is as predicted."""
    model, x, y = _trained_mlp("tanh", widths=(6, 5), steps=200)
    loss_fn = nn.CrossEntropyLoss()
    splits = compute_splitting(model, loss_fn, [(x, y)], method="exact")
    plan = {layer: list(range(split.num_neurons)) for layer, split in splits.items()}
    a = 1.0
    grown = apply_signed_splits(model, splits, plan, epsilon=0.0, a=a, copies=3)
    assert torch.allclose(grown(x), model(x), atol=1e-12)
    last = list(splits)[-1]
    consumer_name = splits[last].group.consumers[0].module
    original = dict(model.named_modules())[consumer_name].weight
    written = dict(grown.named_modules())[consumer_name].weight
    n, codes = splits[last].num_neurons, scheme_choices(splits, a, 3)[last]
    weights = {0: (-a, (1 + a) / 2), 1: (1 + a, -a / 2), 2: (-a, (1 + a) / 2)}
    for j in range(n):
        single, pair = weights[int(codes[j])]
        assert torch.allclose(written[:, j], single * original[:, j])
        assert torch.allclose(written[:, n + j], pair * original[:, j])
        assert torch.allclose(written[:, 2 * n + j], pair * original[:, j])
    eps = 1e-3
    before = _loss(model, x, y, loss_fn)
    measured = _loss(apply_signed_splits(model, splits, plan, epsilon=eps, a=a, copies=3), x, y, loss_fn) - before
    predicted = predicted_change(splits, plan, eps, a, copies=3)
    assert abs(measured - predicted) <= 0.02 * abs(predicted), (measured, predicted)


def test_three_copies_lower_a_splitting_stable_loss_more_than_two():
    """On the toy where S2D is stuck: at the same eps and weight bound, three copies (signed3, -a lambda_max)
    lower the loss about (1 + a) times as much as the two-copy signed split (-a/(1+a) lambda_max)."""
    model, x, target = _splitting_stable_toy()
    loss_fn = nn.MSELoss()
    splits = compute_splitting(model, loss_fn, [(x, target)], method="exact")
    layer = next(iter(splits))
    assert all(SCHEMES[3][int(c)] == "signed3" for c in scheme_choices(splits, 1.0, 3)[layer])
    plan, before, drops = {layer: [0, 1]}, _loss(model, x, target, loss_fn), {}
    for copies in (2, 3):
        grown = apply_signed_splits(model, splits, plan, epsilon=0.05, copies=copies)
        drops[copies] = before - _loss(grown, x, target, loss_fn)
        assert drops[copies] == pytest.approx(-predicted_change(splits, plan, 0.05, copies=copies), rel=0.05)
    assert drops[3] > 1.8 * drops[2] > 0


def test_bad_copies_are_refused():
    model, x, y = _trained_mlp("tanh", steps=1)
    splits = compute_splitting(model, nn.CrossEntropyLoss(), [(x, y)], method="exact")
    for bad in (1, 4, True, "3"):
        with pytest.raises(ValueError, match="copies"):
            apply_signed_splits(model, splits, {next(iter(splits)): [0]}, copies=bad)


def test_grower_with_three_copy_s3d_adds_two_neurons_per_split():
    from nni_splitting import SplittingGrower
    model, x, target = _splitting_stable_toy()
    config = [{"op_types": ["Linear"], "max_splits": 2, "threshold": -1e-9}]
    grower = SplittingGrower(model, config, batches=[(x, target)], loss_fn=nn.MSELoss(), strategy="s3d",
                             strategy_options={"method": "exact", "copies": 3}, epsilon=0.2)
    grown = grower.step()
    hidden = [m for m in grown.modules() if isinstance(m, nn.Linear)][0]
    assert hidden.out_features == 4 + 2 * 2
    assert _loss(grown, x, target, nn.MSELoss()) < _loss(model, x, target, nn.MSELoss())
    with pytest.raises(ValueError, match="copies"):
        SplittingGrower(model, config, batches=[(x, target)], loss_fn=nn.MSELoss(), strategy="s3d",
                        strategy_options={"copies": 5}).step()
