"""Firefly growth (Wu, Liu, Stone & Liu, "Firefly Neural Architecture Descent", NeurIPS 2020).

Every splittable layer (the :class:`~nni_splitting.graph.NeuronGroup` layers of
:func:`~nni_splitting.core.splitting.compute_splitting`) gets two kinds of candidates in one *augmented*
network, built by the public surgery, that computes the model's function at zero perturbation:

* **split** ``j``: ``sigma(theta_j x) -> 1/2 sigma((theta_j + delta_j) x) + 1/2 sigma((theta_j - delta_j) x)``,
  ``||delta_j|| = epsilon``;
* **new** ``k``: ``f(x) + h_k sigma(a_k x)``, input weights ``a_k`` (as large as the layer's neurons)
  and outgoing weights ``h_k`` (the consumers' new columns, ``||h_k|| = new_epsilon``) from zero.

A few normalised gradient steps on the perturbations, projected on their spheres (one batch each),
fit them to the loss; then each candidate ``c`` is scored by the first-order effect of its gate
(``q = t p`` with a small ``t``: the candidates do not interact), divided by the order ``k_c`` of
its leading term (a split is even in ``delta``: ``k = 2``; a new neuron linear in ``h``: ``k = 1``)::

    Delta L_c ~= <q_c, grad_{q_c} L(f_q)> / (k_c t^k_c)

the predicted loss change of applying ``c`` alone (for a split ``delta^T S delta / 2``: the S2D
index along ``delta``, without an eigen-decomposition). Any rule of :mod:`nni_splitting.growth.selection`
keeps the best under a count or cost budget (:attr:`FireflyLayer.eigenvalues`), and
:func:`apply_firefly` applies them with :func:`~nni_splitting.growth.surgery.apply_splits` (splits) and
:func:`~nni_splitting.growth.random_neurons.add_new_neurons` (new neurons, then given ``a`` and ``h``);
``scale=0`` keeps the function exactly.
"""
from __future__ import annotations

import copy
import itertools
import logging
import math
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.func import functional_call

from nni_splitting.growth.random_neurons import add_new_neurons
from nni_splitting.common.defaults import EPSILON, GROW_RATIO
from nni_splitting.growth.firefly_layer import (CandidateLayout, FireflyLayer, apply_firefly, check_positive, expand_inputs,
                                                 load_firefly, save_firefly, split_plan)
from nni_splitting.graph import DEPTHWISE, NeuronGroup, find_neuron_groups, handler_for, trace_model
from nni_splitting.core.splitting import LayerSplitting, materialize_batches
from nni_splitting.growth.surgery import apply_splits

__all__ = ["FireflyLayer", "compute_firefly", "apply_firefly", "split_plan", "save_firefly", "load_firefly", "KINDS",
           "SCORE_SCALE"]

logger = logging.getLogger(__name__)

KINDS = ("split", "new")
#: Default gate ``t`` of the scores (see :func:`compute_firefly`).
SCORE_SCALE = 1e-2


class _Augmented:
    """The model with every candidate in it; ``params(p)`` maps perturbations to its weights."""

    def __init__(self, model: nn.Module, groups: Dict[str, NeuronGroup], example: torch.Tensor,
                 split: bool, new: Dict[str, int], seed: int):
        self.layout = CandidateLayout(groups, model)
        self.split, self.new = split, new
        widths = self.layout.widths
        augmented = copy.deepcopy(model).eval()
        if split:
            stubs = {name: LayerSplitting(name, torch.zeros(widths[name]),
                                          torch.zeros_like(_neuron_rows(model.get_submodule(name))), g)
                     for name, g in groups.items()}
            augmented = apply_splits(augmented, stubs, {name: list(range(widths[name])) for name in groups},
                                     epsilon=0.0, inplace=True)
        counts = {name: k for name, k in new.items() if k}
        if counts:
            augmented, _ = add_new_neurons(augmented, example, counts, seed=seed, outgoing="zero", layers=list(counts))
        self.model = augmented.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.rows = {name: widths[name] * (2 if split else 1) for name in groups}  # first new row
        with torch.no_grad():  # new rows come from the perturbations only
            for name, k in counts.items():
                layer = self.model.get_submodule(name)
                layer.weight[self.rows[name]:] = 0
                if layer.bias is not None:
                    layer.bias[self.rows[name]:] = 0
        self.modules = sorted(set(groups) | set(self.layout.upstream))

    def _inputs(self, module: str, flat: torch.Tensor) -> torch.Tensor:
        """Weights over ``module``'s original inputs ``[r, d_w]`` -> its augmented input columns ``[r, C', block]``."""
        channels = self.layout.channels(module)
        if channels is None:
            return flat.reshape(flat.shape[0], 1, -1)
        up = self.layout.upstream[module][0]
        weights = flat.reshape(flat.shape[0], channels, -1)
        return expand_inputs(weights, range(channels) if self.split else [], self.new.get(up, 0))

    def params(self, p: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        out = {}
        for name in self.modules:
            layer = self.model.get_submodule(name)
            base = layer.weight
            rows = base.shape[0]
            weight = base.reshape(rows, -1)
            has_bias = layer.bias is not None
            if name in self.layout.groups:
                n, parts, biases = self.layout.widths[name], [], []
                if self.split:
                    delta = p[f"delta:{name}"]
                    dw = self._inputs(name, delta[:, :delta.shape[1] - has_bias]).reshape(n, -1)
                    parts += [dw, -dw]
                    biases += [delta[:, -1], -delta[:, -1]] if has_bias else []
                else:
                    parts.append(weight.new_zeros(n, weight.shape[1]))
                    biases += [weight.new_zeros(n)] if has_bias else []
                if self.new.get(name):
                    a = p[f"input:{name}"]
                    parts.append(self._inputs(name, a[:, :a.shape[1] - has_bias]).reshape(a.shape[0], -1))
                    biases += [a[:, -1]] if has_bias else []
                weight = weight + torch.cat(parts)
                if has_bias:
                    out[f"{name}.bias"] = layer.bias + torch.cat(biases)
            up = self.layout.upstream.get(name)
            if up and self.new.get(up[0]):
                h = p[f"output:{up[0]}:{name}"]  # [K, out, block] over the consumer's original rows
                h = h.transpose(0, 1)
                pieces = [h] + ([h] if name in self.layout.groups and self.split else [])
                pieces.append(h.new_zeros(rows - sum(x.shape[0] for x in pieces), *h.shape[1:]))
                columns = torch.cat(pieces)
                grid = weight.reshape(rows, -1, h.shape[2])
                fill = torch.cat([grid.new_zeros(rows, grid.shape[1] - h.shape[1], h.shape[2]), columns], dim=1)
                weight = (grid + fill).reshape(rows, -1)
            out[f"{name}.weight"] = weight.reshape(base.shape)
        return out

    def loss(self, p, loss_fn, inputs, targets) -> torch.Tensor:
        return loss_fn(functional_call(self.model, self.params(p), (inputs,)), targets)


def _neuron_rows(layer: nn.Module) -> torch.Tensor:
    flat = layer.weight.detach().reshape(layer.weight.shape[0], -1)
    return torch.cat([flat, layer.bias.detach()[:, None]], dim=1) if layer.bias is not None else flat


def _effective_norms(model: nn.Module, group: NeuronGroup) -> torch.Tensor:
    """``||theta_j||`` times the BatchNorm scale ``|gamma_j| / sqrt(var_j + eps)`` of the layer's pre-activation BN."""
    norms = _neuron_rows(model.get_submodule(group.layer)).norm(dim=1)
    if group.pre_bn:
        bn = model.get_submodule(group.pre_bn)
        if bn.running_var is not None:
            scale = 1.0 / torch.sqrt(bn.running_var.detach() + bn.eps)
            norms = norms * (scale * bn.weight.detach().abs() if bn.weight is not None else scale)
    return norms


def _unit(rows: torch.Tensor) -> torch.Tensor:
    norms = rows.norm(dim=-1, keepdim=True)
    return torch.where(norms > 0, rows / norms.clamp_min(torch.finfo(rows.dtype).tiny), rows)


def compute_firefly(model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    batches: Iterable, *, layers: Optional[Sequence[str]] = None, epsilon: float = EPSILON,
                    new_epsilon: Optional[float] = None, new_neurons=None, grow_ratio: float = GROW_RATIO,
                    kinds: Sequence[str] = KINDS, steps: Optional[int] = None, score_batches: Optional[int] = None, lr: float = 0.5,
                    input_scale: float = 1.0, score_scale: float = SCORE_SCALE, seed: int = 0,
                    max_batches: Optional[int] = None) -> Dict[str, FireflyLayer]:
    """Score the Firefly candidates (splits and new neurons) of every splittable layer.

    Parameters
    ----------
    model : nn.Module
        Traceable by torch.fx; not modified (an eval-mode copy is augmented).
    loss_fn : callable
        ``loss_fn(outputs, targets)``, the mean loss of a batch.
    batches : iterable of (inputs, targets)
        The budget: by default the first ``ceil(B / 2)`` batches fit the perturbations (one
        gradient step each) and the rest (the same batch when ``B = 1``) score them: one pass.
    layers : list of str, optional
        Only these producers.
    epsilon, new_epsilon : float
        ``||delta_j||`` of a split and ``||h_k||`` of a new neuron's outgoing weights (default ``epsilon``).
    new_neurons : int or dict, optional
        New-neuron candidates per layer (``{layer: K}`` or one int); default
        ``max(1, round(grow_ratio * n))``. Ignored without ``"new"`` in ``kinds``.
    grow_ratio : float
        The default ``new_neurons`` per layer as a fraction of its width (the tuner's ``grow_ratio``).
    kinds : sequence of {"split", "new"}
        Which candidates to consider.
    steps, score_batches : int, optional
        Gradient steps on the perturbations and batches for the scores (see ``batches``).
    lr : float
        Step of the normalised, projected gradient descent as a fraction of each perturbation's norm.
    input_scale : float
        Norm of a new neuron's input weights relative to the mean norm of the layer's neurons (each
        times its BatchNorm scale ``|gamma| / sqrt(var + eps)`` when a BatchNorm follows the layer: a new
        channel's BatchNorm is the identity), so that its pre-activation is as large as theirs.
    score_scale : float
        The gate ``t`` at which the fitted perturbations are scored (all at once), in ``(0, 1]``: small
        enough that candidates do not interact, the score extrapolates ``t -> 1`` by the candidate's order.
    seed : int
        Seed of the initial perturbations.

    Returns
    -------
    dict
        ``{layer: FireflyLayer}`` in graph order.
    """
    check_positive("epsilon", epsilon)
    new_epsilon = epsilon if new_epsilon is None else new_epsilon
    check_positive("new_epsilon", new_epsilon)
    check_positive("lr", lr)
    check_positive("input_scale", input_scale)
    check_positive("score_scale", score_scale)
    if score_scale > 1:
        raise ValueError(f"score_scale={score_scale!r} must be in (0, 1]")
    if isinstance(kinds, str) or not kinds or set(kinds) - set(KINDS):
        raise ValueError(f"kinds={kinds!r} must be a non-empty list of {KINDS}")
    if max_batches is not None:
        check_positive("max_batches", max_batches, integer=True)
    data = materialize_batches(batches, max_batches, owner="Firefly")
    for name, value in (("steps", steps), ("score_batches", score_batches)):
        if value is not None:
            check_positive(name, value, integer=True)
    fit = int(steps) if steps is not None else max(1, math.ceil(len(data) / 2))
    scoring = data[fit:] if len(data) > fit else data
    if score_batches is not None:
        scoring = list(itertools.islice(itertools.cycle(data[fit:] + data[:fit]), int(score_batches)))
    parameter = next(model.parameters(), None)
    if parameter is None:
        raise ValueError(f"{type(model).__name__} has no parameters: nothing to grow")
    dtype, device = parameter.dtype, parameter.device

    def prepare(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device)
        return x.to(dtype) if x.is_floating_point() else x

    example = prepare(data[0][0][:1])
    groups, excluded = find_neuron_groups(trace_model(model, example), list(layers) if layers is not None else None)
    if not groups:
        reasons = "; ".join(f"{k}: {v}" for k, v in excluded.items()) or "it has no Linear/Conv2d layer"
        raise ValueError(f"{type(model).__name__} has nothing to grow ({reasons})")
    widths = {name: model.get_submodule(name).weight.shape[0] for name in groups}
    counts = _new_counts(new_neurons, widths, grow_ratio) if "new" in kinds else {name: 0 for name in groups}
    augmented = _Augmented(model, groups, example, "split" in kinds, counts, seed)
    generator = torch.Generator().manual_seed(int(seed))
    p: Dict[str, torch.Tensor] = {}
    radius: Dict[str, float] = {}
    for name in groups:
        rows = _neuron_rows(model.get_submodule(name))
        if "split" in kinds:
            p[f"delta:{name}"] = epsilon * _unit(torch.randn(rows.shape, generator=generator, dtype=torch.float64))
            radius[f"delta:{name}"] = epsilon
        if counts[name]:
            scale = input_scale * (float(_effective_norms(model, groups[name]).mean()) or 1.0)
            p[f"input:{name}"] = scale * _unit(torch.randn(counts[name], rows.shape[1], generator=generator,
                                                           dtype=torch.float64))
            radius[f"input:{name}"] = scale
            for consumer in groups[name].consumers:
                weight = model.get_submodule(consumer.module).weight
                block = weight[0].numel() // widths[name]
                p[f"output:{name}:{consumer.module}"] = torch.zeros(counts[name], weight.shape[0], block,
                                                                    dtype=torch.float64)
    p = {k: v.to(dtype=dtype, device=device).requires_grad_(True) for k, v in p.items()}

    def gradients(batch, values: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        loss = augmented.loss(values, loss_fn, prepare(batch[0]), batch[1].to(device))
        grads = torch.autograd.grad(loss, list(values.values()), allow_unused=True)
        return {k: (g if g is not None else torch.zeros_like(values[k])) for k, g in zip(values, grads)}

    spheres = {f"delta:{n}": [f"delta:{n}"] for n in groups if f"delta:{n}" in p}
    spheres.update({f"input:{n}": [f"input:{n}"] for n in groups if f"input:{n}" in p})
    for name in groups:  # ||h_k|| = new_epsilon jointly over the layer's consumers
        keys = [k for k in p if k.startswith(f"output:{name}:")]
        if keys:
            spheres[f"output:{name}"], radius[f"output:{name}"] = keys, new_epsilon
    for step in range(fit):
        _descend(p, gradients(data[step % len(data)], p), spheres, radius, lr / math.sqrt(1.0 + step))
    totals, samples = _score(p, scoring, gradients, score_scale)
    results: Dict[str, FireflyLayer] = {}
    for name, group in groups.items():
        n = widths[name]
        d = _neuron_rows(model.get_submodule(name)).shape[1]
        split_scores = totals[f"delta:{name}"] / samples if "split" in kinds else torch.full((n,), math.nan)
        directions = (p[f"delta:{name}"].detach() / epsilon if "split" in kinds
                      else torch.zeros(n, d, dtype=dtype, device=device))
        keys = [k for k in totals if k.startswith(f"output:{name}:")]
        new_scores = sum((totals[k] for k in keys), torch.zeros(counts[name], dtype=torch.float64)) / samples
        outputs = {k.split(":", 2)[2]: p[k].detach().clone() for k in keys}
        inputs = p[f"input:{name}"].detach().clone() if counts[name] else torch.zeros(0, d, dtype=dtype, device=device)
        filters = {}
        for follower in group.followers:
            module = augmented.model.get_submodule(follower)
            if counts[name] and handler_for(module) is not None and handler_for(module).role(module) == DEPTHWISE:
                filters[follower] = module.weight.detach()[augmented.rows[name]:].clone()
        results[name] = FireflyLayer(name, group, split_scores.to(torch.float64), new_scores, directions, inputs,
                                     outputs, filters, float(epsilon), float(new_epsilon), example.detach().cpu())
    logger.info("firefly: %d layer(s), %d split and %d new-neuron candidate(s), %d fit + %d score batch(es)",
                len(results), sum(widths.values()) if "split" in kinds else 0, sum(counts.values()), fit, len(scoring))
    return results


def _descend(p: Dict[str, torch.Tensor], grads: Dict[str, torch.Tensor], spheres: Mapping[str, List[str]],
             radius: Mapping[str, float], rate: float) -> None:
    """One normalised gradient step per candidate row, projected back on its sphere ``||p_c|| = r``."""
    with torch.no_grad():
        for sphere, keys in spheres.items():
            rows = p[keys[0]].shape[0]
            flat = torch.cat([p[k].reshape(rows, -1) for k in keys], dim=1)
            grad = torch.cat([grads[k].reshape(rows, -1) for k in keys], dim=1)
            moved = radius[sphere] * _unit(flat - rate * radius[sphere] * _unit(grad))
            offset = 0
            for k in keys:
                size = p[k][0].numel()
                p[k].copy_(moved[:, offset:offset + size].reshape(p[k].shape))
                offset += size


def _score(p: Dict[str, torch.Tensor], scoring: Sequence, gradients: Callable, t: float
           ) -> Tuple[Dict[str, torch.Tensor], int]:
    """Sums over ``scoring`` of each candidate's predicted loss change (times the batch size), and the sample count."""
    # All candidates at the gate t (q = t p: no interactions), extrapolated to t = 1 by the candidate's order k:
    # Delta L_c ~= <q_c, grad_{q_c} L(f_q)> / (k_c t^k_c)   (k = 2 for a split delta, 1 for a new neuron's h)
    gated = {k: k.startswith(("delta:", "output:")) for k in p}
    totals = {k: torch.zeros(v.shape[0], dtype=torch.float64) for k, v in p.items() if gated[k]}
    samples = 0
    for batch in scoring:
        values = {k: (t * v.detach() if gated[k] else v.detach()).requires_grad_(True) for k, v in p.items()}
        grads = gradients(batch, values)
        size = int(batch[1].shape[0]) if batch[1].dim() else 1
        samples += size
        for key in totals:
            order = 2 if key.startswith("delta:") else 1
            value = (values[key].detach() * grads[key]).reshape(p[key].shape[0], -1).sum(1)
            totals[key] += size * value.double().cpu() / (order * t ** order)
    return totals, samples


def _new_counts(new_neurons, widths: Mapping[str, int], grow_ratio: float = GROW_RATIO) -> Dict[str, int]:
    if new_neurons is None:
        return {name: max(1, int(round(grow_ratio * n))) for name, n in widths.items()}
    if isinstance(new_neurons, Mapping):
        unknown = sorted(set(new_neurons) - set(widths))
        if unknown:
            raise ValueError(f"new_neurons names layer(s) {unknown} that cannot grow; candidates are {list(widths)}")
        counts = {name: new_neurons.get(name, 0) for name in widths}
    else:
        counts = {name: new_neurons for name in widths}
    for name, k in counts.items():
        check_positive(f"new_neurons[{name!r}]", k, integer=True, zero=True)
        if k > widths[name]:
            raise ValueError(f"new_neurons[{name!r}]={k} exceeds the layer's width ({widths[name]}) in one step")
    return {name: int(k) for name, k in counts.items()}
