"""Splitting matrices of custom neurons (RBF units, prototypes) by autograd.

:func:`nni_splitting.compute_splitting` handles Linear/Conv2d neurons followed by an activation.
The paper's toy RBF network and the prototype network have neurons ``phi(x; theta_i)`` that are
nonlinear in their own parameters. For them Definition 2.1 / eq. (7) reads

    S_i = E_x[ dL/dphi_i(x) * Hess_theta phi(x; theta_i) ]
        = Hess_theta ( sum_n g_{n,i} phi(x_n; theta) ) at theta = theta_i,   g = dL/dphi detached,

with ``L`` the mean loss over the batch (so ``g`` already holds the ``1/N``). The Hessian of the
``g``-weighted sum is computed per neuron with ``torch.func.hessian`` and batched over neurons with
``torch.func.vmap``.
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import torch

from nni_splitting.graph import NEURONS, Consumer, LayerHandler, NeuronGroup
from nni_splitting.core.matrix import extreme_eigenpairs
from nni_splitting.core.splitting import LayerSplitting

__all__ = ["custom_splitting_matrices", "custom_layer_splitting", "custom_group", "CustomNeuronHandler"]

logger = logging.getLogger(__name__)

NeuronFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def custom_splitting_matrices(neuron_fn: NeuronFn, theta: torch.Tensor, inputs: torch.Tensor,
                              upstream: torch.Tensor) -> torch.Tensor:
    """Splitting matrices ``S_i`` of ``n`` neurons of one kind: ``[n, d, d]``.

    Parameters
    ----------
    neuron_fn : callable
        ``neuron_fn(inputs, theta_i) -> [N]``: one neuron's output on the batch, for its parameter
        vector ``theta_i`` of shape ``[d]``. Must be written with differentiable torch ops.
    theta : Tensor ``[n, d]``
        The neurons' parameters, one row per neuron.
    inputs : Tensor ``[N, ...]``
        What the neurons see (the same for all of them).
    upstream : Tensor ``[N, n]``
        ``g_{n,i} = dL/dphi_i(x_n)`` for the batch's mean loss ``L``.
    """
    if theta.dim() != 2:
        raise ValueError(f"theta must be [n_neurons, d], got shape {list(theta.shape)}")
    if upstream.dim() != 2 or upstream.shape[1] != theta.shape[0] or upstream.shape[0] != inputs.shape[0]:
        raise ValueError(f"upstream must be [N={inputs.shape[0]}, n={theta.shape[0]}], got {list(upstream.shape)}")
    theta, upstream, inputs = theta.detach(), upstream.detach(), inputs.detach()

    def weighted_output(theta_i: torch.Tensor, g_i: torch.Tensor) -> torch.Tensor:
        # sum_n g_{n,i} phi(x_n; theta_i): its Hessian in theta_i is S_i            (Definition 2.1)
        return (g_i * neuron_fn(inputs, theta_i)).sum()

    matrices = torch.func.vmap(torch.func.hessian(weighted_output), in_dims=(0, 1))(theta, upstream)
    return 0.5 * (matrices + matrices.transpose(1, 2))


class CustomNeuronHandler(LayerHandler):
    """Layer handler of custom neurons: splittable by the surgery, not found by ``compute_splitting``.

    Their splitting matrices come from :func:`custom_splitting_matrices` (the neuron is nonlinear in
    its own parameters, so eq. 3's ``x~ x~^T`` form does not apply). A subclass gives
    :meth:`~nni_splitting.graph.LayerHandler.neuron_parameters` and
    :meth:`~nni_splitting.graph.LayerHandler.set_neuron_parameters`; register it with
    :func:`~nni_splitting.graph.register_layer_handler` and :func:`~nni_splitting.apply_splits`
    splits the neurons (``theta_j +- eps v_j``) and widens their consumers (``w_j / 2`` twice).
    """

    default_role = NEURONS

    def exclusion(self, module):
        return "custom neurons: their splitting matrices come from nni_splitting.paper.neurons"


def custom_group(name: str, kind: str, consumers: Sequence[str] = ()) -> NeuronGroup:
    """The :class:`NeuronGroup` of a custom neuron layer ``name`` whose outputs feed ``consumers`` directly."""
    return NeuronGroup(layer=name, kind=kind, input_node="", pre_bn=None, preactivation_node="", activation_node="",
                       consumers=[Consumer(c) for c in consumers])


def custom_layer_splitting(name: str, matrices: torch.Tensor, kind: str, keep_matrices: bool = True,
                           consumers: Sequence[str] = ()) -> LayerSplitting:
    """Wrap custom splitting matrices as the product's :class:`~nni_splitting.LayerSplitting`.

    The eigen-decomposition is the product's :func:`~nni_splitting.core.matrix.extreme_eigenpairs`, so the
    result plugs into :func:`~nni_splitting.select_neurons`; with the layer's ``consumers`` named
    (and a :class:`CustomNeuronHandler` registered for its class) it plugs into
    :func:`~nni_splitting.apply_splits` too.
    """
    eigenvalues, directions, top, top_directions = extreme_eigenpairs(matrices)
    return LayerSplitting(name, eigenvalues, directions, custom_group(name, kind, consumers), activation=kind,
                          matrices=matrices if keep_matrices else None, max_eigenvalues=top, max_directions=top_directions)
