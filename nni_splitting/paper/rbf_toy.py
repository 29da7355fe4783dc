"""The paper's toy experiment (Fig. 1): a 1-D RBF network grown from one neuron by splitting.

Neuron ``i`` of :class:`~nni_splitting.models.RBFNet` computes
``phi(x; theta_i) = exp(-(x - mu_i)^2 / (2 s_i^2))`` with ``theta_i = (mu_i, log s_i)`` (the
``centers`` and ``log_widths`` of :class:`~nni_splitting.models.RBFLayer`); its outgoing weight
``a_i`` is column ``i`` of the ``output`` Linear, so ``f(x) = sum_i a_i phi(x; theta_i)``. The loss is
``L = mean_n (f(x_n) - y_n)^2 / 2`` on a fixed grid of a fixed target function. Everything runs in
float64 with full-batch L-BFGS.

The paper's Appendix B.1 (the exact target) is not in our text extract; :data:`TARGET` is our own
sum of five positive Gaussian bumps of different widths on ``[-2.5, 2.5]``: five neurons could
represent it exactly, but a greedy growth from one broad neuron has to find them.

Functions: :func:`rbf_splitting` (splitting matrices by autograd, Definition 2.1),
:func:`split_rbf` (Algorithm 1, step 4, for RBF neurons), :func:`train_rbf` (step 1),
:func:`grow` (the splitting method and the baselines of Fig. 1d), :func:`index_vs_decrease`
(Fig. 1b) and :func:`angle_sweep` (Fig. 1c). :func:`run_rbf_experiment` runs them all.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from nni_splitting.graph import replace_tensor
from nni_splitting.models import RBFNet
from nni_splitting.growth.selection import select_neurons
from nni_splitting.core.splitting import LayerSplitting
from nni_splitting.growth.surgery import split_group
from nni_splitting.paper.neurons import CustomNeuronHandler, custom_group, custom_layer_splitting, custom_splitting_matrices

__all__ = [
    "TARGET", "METHODS", "target_function", "make_data", "rbf_neuron", "rbf_loss", "rbf_splitting",
    "split_rbf", "add_rbf_neuron", "random_rbf", "train_rbf", "GrowthRun", "grow", "train_scratch",
    "index_vs_decrease", "angle_sweep", "run_rbf_experiment",
]

logger = logging.getLogger(__name__)

#: The target ``f*(x) = sum_k a_k exp(-(x - c_k)^2 / (2 s_k^2))``: (centres, widths, amplitudes).
TARGET = (
    (-1.2, -0.6, 0.0, 0.5, 1.1),
    (0.30, 0.25, 0.30, 0.20, 0.35),
    (1.0, 0.6, 1.2, 0.5, 0.9),
)
#: Growth methods of Fig. 1d (plus "scratch", trained by :func:`train_scratch`).
METHODS = ("splitting", "random_split", "new_neuron", "boosting")
DTYPE = torch.float64


def target_function(x: torch.Tensor) -> torch.Tensor:
    """The fixed target ``f*(x)`` of :data:`TARGET`, same shape as ``x``."""
    centres, widths, amplitudes = (torch.tensor(v, dtype=x.dtype) for v in TARGET)
    return (amplitudes * torch.exp(-(x[..., None] - centres) ** 2 / (2 * widths ** 2))).sum(-1)


def make_data(n: int = 200, low: float = -2.5, high: float = 2.5) -> Tuple[torch.Tensor, torch.Tensor]:
    """``n`` evenly spaced inputs on ``[low, high]`` and the target there: two ``[n, 1]`` float64 tensors."""
    if n < 2 or not low < high:
        raise ValueError(f"need n >= 2 and low < high, got n={n!r}, low={low!r}, high={high!r}")
    x = torch.linspace(low, high, n, dtype=DTYPE)[:, None]
    return x, target_function(x)


def rbf_neuron(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``phi(x; theta) = exp(-(x - mu)^2 / (2 exp(2 log s)))`` for ``theta = (mu, log s)``: ``[N]``."""
    return torch.exp(-(x[:, 0] - theta[0]) ** 2 / (2 * torch.exp(2 * theta[1])))


def rbf_loss(model: RBFNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``L = mean (f(x) - y)^2 / 2``."""
    return 0.5 * ((model(x) - y) ** 2).mean()


def _theta(model: RBFNet) -> torch.Tensor:
    return torch.stack([model.rbf.centers.detach(), model.rbf.log_widths.detach()], dim=1)


def rbf_splitting(model: RBFNet, x: torch.Tensor, y: torch.Tensor) -> LayerSplitting:
    """Splitting indexes and gradients of every RBF neuron (layer name ``"rbf"``), with matrices.

    ``S_i = Hess_theta sum_n g_{n,i} phi(x_n; theta)`` at ``theta_i`` with ``g = dL/dphi``
    (Definition 2.1; ``g`` includes the outgoing weight ``a_i``).
    """
    phi = model.rbf(x)
    loss = 0.5 * ((model.output(phi) - y) ** 2).mean()
    (upstream,) = torch.autograd.grad(loss, phi)
    matrices = custom_splitting_matrices(rbf_neuron, _theta(model), x, upstream)
    return custom_layer_splitting("rbf", matrices, kind="rbf", consumers=["output"])


class RBFHandler(CustomNeuronHandler):
    """Layer handler of :class:`~nni_splitting.models.RBFLayer`: neuron ``i`` is ``theta_i = (mu_i, log s_i)``."""

    kind = "rbf"

    def neuron_parameters(self, module):
        return torch.stack([module.centers.detach(), module.log_widths.detach()], dim=1)

    def set_neuron_parameters(self, module, theta):
        replace_tensor(module, "centers", theta[:, 0])
        replace_tensor(module, "log_widths", theta[:, 1])


#: The RBF layer's neuron group in :class:`~nni_splitting.models.RBFNet`: its outputs feed ``output``.
RBF_GROUP = custom_group("rbf", "rbf", consumers=["output"])


def _rebuild(model: RBFNet, theta: torch.Tensor, weight: torch.Tensor) -> RBFNet:
    grown = RBFNet(widths=[theta.shape[0]], **model.config).to(DTYPE)
    with torch.no_grad():
        grown.rbf.centers.copy_(theta[:, 0])
        grown.rbf.log_widths.copy_(theta[:, 1])
        grown.output.weight.copy_(weight)
        if model.output.bias is not None:
            grown.output.bias.copy_(model.output.bias)
    return grown


def split_rbf(model: RBFNet, indices: Sequence[int], directions: torch.Tensor, epsilon: float) -> RBFNet:
    """Split neurons ``indices`` into ``theta_i +- epsilon v_i`` with halved outgoing weights ``a_i / 2``.

    The ``+`` offspring keeps index ``i``; the ``-`` offspring is appended. ``directions`` is
    ``[len(indices), 2]`` (rows need not be unit). Returns a new float64 model (Algorithm 1, step 4).
    """
    n = model.rbf.out_features
    indices = [int(i) for i in indices]
    if any(not 0 <= i < n for i in indices) or len(set(indices)) != len(indices):
        raise ValueError(f"indices {indices!r} must be distinct neurons of an RBF layer with {n} neurons")
    directions = torch.as_tensor(directions, dtype=DTYPE).reshape(len(indices), 2)
    grown = split_group(model, RBF_GROUP, indices, directions, epsilon).to(DTYPE)  # RBFHandler + Linear widening
    grown.widths = [grown.rbf.out_features]
    return grown


def add_rbf_neuron(model: RBFNet, mu: float, log_width: float, amplitude: float) -> RBFNet:
    """A copy of ``model`` with one more neuron ``(mu, log s)`` of outgoing weight ``amplitude``."""
    theta = torch.cat([_theta(model), torch.tensor([[mu, log_width]], dtype=DTYPE)])
    extra = torch.full((model.output.weight.shape[0], 1), float(amplitude), dtype=DTYPE)
    return _rebuild(model, theta, torch.cat([model.output.weight.detach(), extra], dim=1))


def random_rbf(neurons: int, x: torch.Tensor, generator: torch.Generator, amplitude_std: float = 0.1) -> RBFNet:
    """An RBF network with random centres ``U(x range)``, widths ``exp U(log 0.1, log 1)``, weights ``N(0, std^2)``."""
    lo, hi = float(x.min()), float(x.max())
    model = RBFNet(widths=[neurons], center_range=(lo, hi)).to(DTYPE)
    with torch.no_grad():
        model.rbf.centers.copy_(lo + (hi - lo) * torch.rand(neurons, generator=generator, dtype=DTYPE))
        model.rbf.log_widths.copy_(math.log(0.1) + math.log(10.0) * torch.rand(neurons, generator=generator, dtype=DTYPE))
        model.output.weight.copy_(amplitude_std * torch.randn(1, neurons, generator=generator, dtype=DTYPE))
    return model


def train_rbf(model: RBFNet, x: torch.Tensor, y: torch.Tensor, iterations: int,
                trainable_from: int = 0, optimizer: str = "lbfgs", lr: float = 0.02) -> List[float]:
    """Full-batch training for ``iterations`` iterations; the loss after each one.

    ``optimizer="lbfgs"`` (strong Wolfe line search) or ``"adam"`` (step ``lr``).
    ``trainable_from = k`` freezes neurons ``0..k-1`` (centre, width and outgoing weight), as
    gradient boosting does.
    """
    params = [model.rbf.centers, model.rbf.log_widths, model.output.weight]
    if optimizer == "lbfgs":
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=1, history_size=50, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-12, tolerance_change=1e-15)
    elif optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr)
    else:
        raise ValueError(f"optimizer={optimizer!r} is not 'lbfgs' or 'adam'")

    def closure():
        opt.zero_grad()
        loss = rbf_loss(model, x, y)
        loss.backward()
        if trainable_from:
            for p in params:
                p.grad[..., :trainable_from] = 0.0
        return loss

    losses = []
    for _ in range(iterations):
        opt.step(closure)
        with torch.no_grad():
            losses.append(float(rbf_loss(model, x, y)))
    return losses


@dataclass
class GrowthRun:
    """One growth curve of Fig. 1d.

    Attributes
    ----------
    method : str
        One of :data:`METHODS` or ``"scratch"``.
    losses : list of float
        Training loss after every L-BFGS iteration.
    events : list of int
        Iterations at which the network grew (the "cliff points").
    models : list of RBFNet
        The trained network at the end of every stage (``models[k]`` has ``k + 1`` neurons, except for scratch).
    indexes : list of float
        The splitting index of the neuron that was split at each growth (splitting only).
    """

    method: str
    losses: List[float] = field(default_factory=list)
    events: List[int] = field(default_factory=list)
    models: List[RBFNet] = field(default_factory=list)
    indexes: List[float] = field(default_factory=list)


def _grow_once(method: str, model: RBFNet, x: torch.Tensor, y: torch.Tensor, epsilon: float,
               generator: torch.Generator, run: GrowthRun) -> RBFNet:
    n = model.rbf.out_features
    if method == "splitting":
        splits = rbf_splitting(model, x, y)
        plan = select_neurons({"rbf": splits}, max_splits=1, threshold=0.0).get("rbf")
        if not plan:  # splitting stable: split the least stable neuron anyway to reach the target size
            plan = [int(splits.eigenvalues.argmin())]
            logger.info("all %d neurons are splitting stable (min index %.3g); splitting the smallest anyway",
                        n, float(splits.eigenvalues.min()))
        run.indexes.append(float(splits.eigenvalues[plan[0]]))
        return split_rbf(model, plan, splits.directions[plan], epsilon)
    if method == "random_split":
        index = int(torch.randint(n, (1,), generator=generator))
        direction = torch.randn(1, 2, generator=generator, dtype=DTYPE)
        return split_rbf(model, [index], direction / direction.norm(), epsilon)
    fresh = random_rbf(1, x, generator)
    mu, log_width = float(fresh.rbf.centers.detach()[0]), float(fresh.rbf.log_widths.detach()[0])
    if method == "new_neuron":
        return add_rbf_neuron(model, mu, log_width, float(fresh.output.weight.detach()[0, 0]))
    if method == "boosting":  # start the new neuron at the least-squares weight on the residual
        with torch.no_grad():
            residual = (y - model(x))[:, 0]
            phi = rbf_neuron(x, torch.tensor([mu, log_width], dtype=DTYPE))
            amplitude = float((residual * phi).sum() / (phi * phi).sum().clamp_min(1e-12))
        return add_rbf_neuron(model, mu, log_width, amplitude)
    raise ValueError(f"method={method!r} is not one of {METHODS}")


def grow(method: str, x: torch.Tensor, y: torch.Tensor, max_neurons: int = 8, iterations: int = 150,
         epsilon: float = 0.5, seed: int = 0, start: Optional[RBFNet] = None) -> GrowthRun:
    """Alternate ``iterations`` L-BFGS iterations with one growth, from 1 neuron to ``max_neurons``.

    Parameters
    ----------
    method : str
        ``"splitting"`` (the neuron with the smallest splitting index, along ``v_min``),
        ``"random_split"`` (a random neuron along a random unit direction), ``"new_neuron"`` (a new
        randomly initialised neuron, trained with the others), ``"boosting"`` (a new neuron fitted
        to the residual while the old ones stay frozen, Frank-Wolfe style).
    epsilon : float
        Splitting step size in ``(mu, log s)`` space.
    start : RBFNet, optional
        The 1-neuron starting network (default: centre 0, width 1, weight 0.5), shared by all methods.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {METHODS}")
    if max_neurons < 1 or iterations < 1:
        raise ValueError(f"max_neurons={max_neurons!r} and iterations={iterations!r} must be >= 1")
    generator = torch.Generator().manual_seed(seed)
    model = start if start is not None else _default_start(x)
    model = _rebuild(model, _theta(model), model.output.weight.detach())
    run = GrowthRun(method)
    while True:
        frozen = model.rbf.out_features - 1 if method == "boosting" else 0
        run.losses += train_rbf(model, x, y, iterations, trainable_from=frozen)
        run.models.append(model)
        if model.rbf.out_features >= max_neurons:
            return run
        model = _grow_once(method, model, x, y, epsilon, generator, run)
        run.events.append(len(run.losses))


def _default_start(x: torch.Tensor) -> RBFNet:
    model = RBFNet(widths=[1], center_range=(float(x.min()), float(x.max()))).to(DTYPE)
    with torch.no_grad():
        model.rbf.centers.fill_(0.0)
        model.rbf.log_widths.fill_(0.0)
        model.output.weight.fill_(0.5)
    return model


def train_scratch(x: torch.Tensor, y: torch.Tensor, neurons: int = 8, iterations: int = 1200,
                  seed: int = 0) -> GrowthRun:
    """Baseline (scratch): a randomly initialised network of the final size, trained as long as the others."""
    model = random_rbf(neurons, x, torch.Generator().manual_seed(seed))
    run = GrowthRun("scratch")
    run.losses = train_rbf(model, x, y, iterations)
    run.models.append(model)
    return run


def index_vs_decrease(model: RBFNet, x: torch.Tensor, y: torch.Tensor, epsilon: float = 0.02,
                      count: int = 5) -> Dict[str, np.ndarray]:
    """Fig. 1b: for the ``count`` smallest splitting indexes, the actual loss change of splitting that neuron.

    Each neuron is split alone along its ``v_min`` with step ``epsilon`` (no retraining). Theorem 2.3
    predicts a change of ``epsilon^2 lambda_min / 2``.

    Returns
    -------
    dict of arrays
        ``neuron``, ``index`` (``lambda_min``), ``decrease`` (``L - L_split``, positive = better) and
        ``predicted`` (``-epsilon^2 lambda_min / 2``).
    """
    splits = rbf_splitting(model, x, y)
    order = torch.argsort(splits.eigenvalues)[:count]
    with torch.no_grad():
        base = float(rbf_loss(model, x, y))
        decrease = [base - float(rbf_loss(split_rbf(model, [int(i)], splits.directions[i][None], epsilon), x, y))
                    for i in order]
    index = splits.eigenvalues[order].numpy()
    return {"neuron": order.numpy(), "index": index, "decrease": np.array(decrease),
            "predicted": -epsilon ** 2 * index / 2}


def angle_sweep(model: RBFNet, x: torch.Tensor, y: torch.Tensor, epsilon: float = 0.02,
                angles_deg: Optional[Sequence[float]] = None) -> Dict[str, np.ndarray]:
    """Fig. 1c: loss decrease of splitting the most splittable neuron along ``cos a v_min + sin a v_2``.

    ``v_2`` is the other eigenvector of the 2x2 splitting matrix, so the angle to ``v_min`` is ``|a|``.
    Theory: the change is ``epsilon^2 (lambda_min cos^2 a + lambda_2 sin^2 a) / 2``.
    """
    angles = np.asarray(angles_deg if angles_deg is not None else np.arange(-90, 91, 10), dtype=float)
    splits = rbf_splitting(model, x, y)
    neuron = int(splits.eigenvalues.argmin())
    values, vectors = torch.linalg.eigh(splits.matrices[neuron])
    with torch.no_grad():
        base = float(rbf_loss(model, x, y))
        decrease = []
        for angle in np.deg2rad(angles):
            direction = math.cos(angle) * vectors[:, 0] + math.sin(angle) * vectors[:, 1]
            decrease.append(base - float(rbf_loss(split_rbf(model, [neuron], direction[None], epsilon), x, y)))
    rad = np.deg2rad(angles)
    predicted = -epsilon ** 2 * (float(values[0]) * np.cos(rad) ** 2 + float(values[1]) * np.sin(rad) ** 2) / 2
    return {"angle": angles, "decrease": np.array(decrease), "predicted": predicted, "neuron": np.array([neuron])}


def run_rbf_experiment(max_neurons: int = 8, iterations: int = 150, epsilon: float = 0.5,
                       probe_epsilon: float = 0.02, probe_neurons: int = 7, n_points: int = 200,
                       seeds: Sequence[int] = (0,)) -> dict:
    """All of Fig. 1: growth curves of every method (per seed), then 1b and 1c on the splitting run.

    1b and 1c probe the splitting run's trained network with ``probe_neurons`` neurons (7 in the
    paper: the step 7 -> 8), with step ``probe_epsilon``.
    """
    if not 1 <= probe_neurons <= max_neurons:
        raise ValueError(f"probe_neurons={probe_neurons!r} must be in [1, max_neurons={max_neurons}]")
    x, y = make_data(n_points)
    runs: Dict[str, List[GrowthRun]] = {m: [] for m in (*METHODS, "scratch")}
    for seed in seeds:
        for method in METHODS:
            runs[method].append(grow(method, x, y, max_neurons, iterations, epsilon, seed=seed))
            logger.info("%-12s seed %d: final loss %.3e", method, seed, runs[method][-1].losses[-1])
        runs["scratch"].append(train_scratch(x, y, max_neurons, iterations * max_neurons, seed=seed))
    probe = runs["splitting"][0].models[probe_neurons - 1]
    return {"x": x, "y": y, "runs": runs, "final": runs["splitting"][0].models[-1],
            "index_vs_decrease": index_vs_decrease(probe, x, y, probe_epsilon),
            "angle": angle_sweep(probe, x, y, probe_epsilon),
            "config": {"max_neurons": max_neurons, "iterations": iterations, "epsilon": epsilon,
                       "probe_epsilon": probe_epsilon, "probe_neurons": probe_neurons, "n_points": n_points,
                       "seeds": list(seeds)}}
