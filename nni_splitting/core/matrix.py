"""Splitting matrices, splitting indexes and splitting gradients as batched tensor functions.

Notation (Liu, Wu & Wang 2019). A neuron ``j`` with parameters ``theta_j`` (its weights flattened,
then its bias if any) computes at each position ``p`` of each input ``x``

    u_{j,p} = c_j * theta_j^T x~_p + shift_j,        a_{j,p} = sigma(u_{j,p}),

where ``x~_p`` is the input patch at ``p`` (a 1 appended for the bias) and ``c_j`` the folded
BatchNorm scale. Definition 2.1 (eq. 3), summed over positions, then reads

    S_j = E_x[ sum_p dL/da_{j,p} * sigma''(u_{j,p}) * c_j^2 * x~_p x~_p^T ].

When the activated channel goes through a depthwise conv ``K_j``, a BatchNorm ``c'_j`` and a second
activation ``sigma_2`` before it is mixed linearly, the neuron's output is
``b_{j,q} = sigma_2(c'_j * sum_k K_{j,k} a_{j,q+k} + shift'_j)`` and its Hessian adds

    S_j += E_x[ sum_q dL/db_{j,q} * sigma_2''(.) * c'_j^2 * J_{j,q} J_{j,q}^T ],
    J_{j,q} = c_j * sum_k K_{j,k} sigma'(u_{j,q+k}) x~_{q+k}      (the gradient of the depthwise output).

The splitting index is ``lambda_min(S_j)`` and the splitting gradient its unit eigenvector ``v_min``;
``lambda_max`` / ``v_max`` are kept too (signed splitting can move offspring along ``v_max``).
"""
from __future__ import annotations

import logging
from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from nni_splitting.graph.handlers import conv_taps
from nni_splitting.graph.registry import handler_for

__all__ = [
    "batchnorm_scale",
    "neuron_weights",
    "neuron_slopes",
    "neuron_inputs",
    "weighted_gram",
    "SUM_CHUNK_ELEMENTS",
    "depthwise_jacobian",
    "depthwise_jacobian_at",
    "depthwise_jacobian_from_taps",
    "depthwise_taps",
    "neuron_inputs_at",
    "values_at",
    "min_eigenpairs",
    "max_eigenpairs",
    "extreme_eigenpairs",
]

logger = logging.getLogger(__name__)

# Elements of the largest temporary a chunk may allocate (about 256 MiB in float64).
DEFAULT_CHUNK_ELEMENTS = 32 * 1024 * 1024

#: Chunk of the per-batch second-order sums of compute_splitting: temporaries of a few MiB stay in the
#: CPU's caches (the sums are bound by forming ``w f`` and ``f f^T``, not by the products).
SUM_CHUNK_ELEMENTS = 1024 * 1024


def batchnorm_scale(bn: Optional[nn.Module], channels: int, like: torch.Tensor) -> torch.Tensor:
    """Folded eval-mode BatchNorm scale ``c = gamma / sqrt(running_var + eps)`` (ones without a BatchNorm)."""
    if bn is None:
        return torch.ones(channels, dtype=like.dtype, device=like.device)
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(bn.running_var)
    return (gamma / torch.sqrt(bn.running_var + bn.eps)).to(like.dtype)


def _per_channel(scale: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``scale [O]`` shaped to broadcast along dimension 1 of ``like [N, O, ...]``."""
    return scale.to(like.dtype).view(1, -1, *([1] * (like.dim() - 2)))


def neuron_weights(upstream: torch.Tensor, preactivation: torch.Tensor, second: Callable[[torch.Tensor], torch.Tensor],
                   scale: torch.Tensor) -> torch.Tensor:
    """Per-position weights of eq. 3, ``w_{n,j,p} = dL/da_{j,p} * sigma''(u_{j,p}) * c_j^2`` (shape of ``u``).

    Used by both methods: the exact one sums ``w x~ x~^T`` (:func:`weighted_gram`), the fast one
    applies it matrix-free. The depthwise term's ``w'`` is the same function of the depthwise
    output's gradient, pre-activation, ``sigma_2''`` and BatchNorm scale ``c'``.

    Parameters
    ----------
    upstream : Tensor ``[N, O, ...]``
        ``dL/da`` at the activation's output.
    preactivation : Tensor ``[N, O, ...]``
        ``u``.
    second : callable
        ``sigma''`` (:attr:`ActivationSpec.second <nni_splitting.graph.activations.ActivationSpec.second>`).
    scale : Tensor ``[O]``
        The folded BatchNorm scale ``c`` (:func:`batchnorm_scale`).
    """
    return upstream.detach() * second(preactivation) * _per_channel(scale, preactivation) ** 2


def neuron_slopes(preactivation: torch.Tensor, first: Callable[[torch.Tensor], torch.Tensor],
                  scale: torch.Tensor) -> torch.Tensor:
    """``c_j * sigma'(u_{j,p})`` (shape of ``u``): the slopes inside ``J_{j,q}`` of the depthwise term."""
    return first(preactivation) * _per_channel(scale, preactivation)


def neuron_inputs(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """The inputs ``x~_p`` each neuron of ``layer`` sees: ``[N, d, P]`` (``d`` = weights per neuron (+1 bias)).

    For a Conv2d these are the unfolded patches, in the order of ``weight.view(out, -1)``; for a
    Linear, ``P = 1``. The layer's handler (:mod:`nni_splitting.graph.handlers`) computes them.
    """
    handler = handler_for(layer)
    if handler is None:
        raise ValueError(f"{type(layer).__name__} has no layer handler: register one with register_layer_handler")
    return handler.neuron_inputs(layer, x)


def values_at(tensor: torch.Tensor, positions: torch.Tensor, channels: slice = slice(None)) -> torch.Tensor:
    """``tensor[:, channels]`` (``[N, C, *grid]``) at the flat grid positions ``positions`` (any shape ``S``):
    ``[N, c, *S]``, by ``index_select`` on a 2-D view (several times faster than advanced indexing on the CPU)."""
    part = tensor.reshape(tensor.shape[0], tensor.shape[1], -1)[:, channels]
    rows = part.reshape(-1, part.shape[2]).index_select(1, positions.reshape(-1))
    return rows.reshape(part.shape[0], part.shape[1], *positions.shape)


def neuron_inputs_at(x: torch.Tensor, layer: nn.Module, positions: torch.Tensor) -> torch.Tensor:
    """:func:`neuron_inputs` at the output positions ``positions`` only (flat indices of any shape ``S``):
    ``[N, d, *S]``, gathered by the layer's handler without unfolding the whole grid."""
    handler = handler_for(layer)
    if handler is None:
        raise ValueError(f"{type(layer).__name__} has no layer handler: register one with register_layer_handler")
    return handler.neuron_inputs_at(layer, x, positions)


def weighted_gram(features: torch.Tensor, weights: torch.Tensor,
                  chunk_elements: int = DEFAULT_CHUNK_ELEMENTS, out: Optional[torch.Tensor] = None,
                  alpha: float = 1.0, product_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``G_j = sum_{n,p} w_{n,j,p} f_{n,:,p} f_{n,:,p}^T`` for every neuron ``j``: ``[O, d, d]``.

    Parameters
    ----------
    features : Tensor ``[N, d, P]``
        Shared by all neurons (``neuron_inputs``), or ``[N, O, d, P]`` with one set per neuron.
    weights : Tensor ``[N, O, P]``
        Per-sample, per-position weights (``dL/da * sigma''(u) * c^2``).
    chunk_elements : int
        Neurons are taken in chunks whose temporary ``w f`` has at most this many elements.
    out : Tensor ``[O, d, d]``, optional
        Accumulate ``alpha * G`` into it in place (no ``[O, d, d]`` temporary) and return it; by default
        a new zero tensor (so the result is ``alpha * G``).
    product_dtype : torch.dtype, optional
        Form the products of each chunk in this dtype (``torch.bfloat16``: AMX / AVX512-BF16 on the
        CPU, tensor cores on a GPU: the matrix product alone 3-6x faster on this CPU, the conversions
        not) and add each chunk's result to ``out`` in ``out``'s dtype. Default: ``out``'s dtype (exact up to float rounding).
    """
    n, o, p = weights.shape
    shared = features.dim() == 3
    d = features.shape[-2]
    if out is None:
        out = torch.zeros(o, d, d, dtype=weights.dtype, device=weights.device)
    low = product_dtype is not None and product_dtype != out.dtype
    if shared:
        return _shared_weighted_gram(features, weights, chunk_elements, out, alpha, product_dtype if low else None)
    rows_per_neuron = max(1, n * p * d)
    step = max(1, chunk_elements // rows_per_neuron)
    for start in range(0, o, step):
        stop = min(o, start + step)
        w = weights[:, start:stop].permute(1, 0, 2).reshape(stop - start, n * p, 1)  # [c, NP, 1]
        f = features[:, start:stop].permute(1, 0, 3, 2).reshape(stop - start, n * p, d)  # [c, NP, d]
        if low:  # the chunk's products in product_dtype, added in out's dtype
            f = f.to(product_dtype)
            out[start:stop].add_(torch.bmm((w.to(product_dtype) * f).transpose(1, 2), f), alpha=alpha)
        else:
            out[start:stop].baddbmm_((w * f).transpose(1, 2), f, alpha=alpha)  # += alpha (w f)^T f, in place
    return out


def _shared_weighted_gram(features: torch.Tensor, weights: torch.Tensor, chunk_elements: int, out: torch.Tensor,
                          alpha: float, product_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """:func:`weighted_gram` with one set of features for all neurons, as one matrix product over the
    rows ``r = (n, p)``: ``G[j, (a, b)] += sum_r w_{r,j} (f_r f_r^T)[a, b]``, ``[O, R] @ [R, d^2]`` (about twice
    as fast as one ``[d, R] @ [R, d]`` product per neuron on the CPU), the outer products in row chunks."""
    n, o, p = weights.shape
    d = features.shape[1]
    flat = features.permute(0, 2, 1).reshape(n * p, d)  # [R, d]
    w = weights.permute(0, 2, 1).reshape(n * p, o)  # [R, O]
    if product_dtype is not None:  # the outer products (the memory-bound half) and the product in product_dtype
        flat, w = flat.to(product_dtype), w.to(product_dtype)
    target = out.view(o, d * d)  # out is accumulated in place (a view: it must be contiguous)
    step = max(1, chunk_elements // (d * d))
    for start in range(0, n * p, step):
        f = flat[start:start + step]
        outer = (f[:, :, None] * f[:, None, :]).reshape(-1, d * d)
        if product_dtype is None:
            target.addmm_(w[start:start + step].t(), outer, alpha=alpha)
        else:
            target.add_(torch.mm(w[start:start + step].t(), outer), alpha=alpha)
    return out


def depthwise_jacobian(patches: torch.Tensor, first_derivative: torch.Tensor, scale: Optional[torch.Tensor],
                       depthwise: nn.Conv2d, output_size: Tuple[int, int], neurons: slice) -> torch.Tensor:
    """``J_{j,q} = c_j * sum_k K_{j,k} sigma'(u_{j,q+k}) x~_{q+k}`` for the neurons in ``neurons``.

    Parameters
    ----------
    patches : Tensor ``[N, d, P]``
        The producer's neuron inputs; ``P = H * W`` is the producer's output grid (``output_size``).
    first_derivative : Tensor ``[N, O, H, W]``
        ``sigma'(u)`` of the producer's activation.
    scale : Tensor ``[O]`` or None
        The folded BatchNorm scale ``c`` between the producer and its activation; ``None`` when
        ``first_derivative`` already holds the slopes ``c * sigma'(u)`` (:func:`neuron_slopes`).

    Returns
    -------
    Tensor ``[N, c, d, Q]``: the gradient of each depthwise output (``Q`` positions) w.r.t. ``theta_j``.
    """
    n, d, _ = patches.shape
    h, w = output_size
    grids = patches.reshape(n, 1, d, h, w)
    jacobians = []
    for j in range(neurons.start, neurons.stop):
        maps = grids[:, 0] * first_derivative[:, j:j + 1]  # [N, d, H, W]
        if scale is not None:
            maps = maps * scale[j]
        kernel = depthwise.weight[j:j + 1].detach().to(maps.dtype).expand(d, -1, -1, -1)
        out = F.conv2d(maps, kernel, stride=depthwise.stride, padding=depthwise.padding,
                       dilation=depthwise.dilation, groups=d)
        jacobians.append(out.reshape(n, d, -1))
    return torch.stack(jacobians, dim=1)


def depthwise_taps(depthwise: nn.Conv2d, input_size: Tuple[int, int], positions: torch.Tensor
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The depthwise conv's input positions read by its outputs ``positions`` (flat indices into its
    output grid): ``(taps, inside)``, both ``[Q, K]``; ``taps[q, k]`` is the flat index of ``q + k`` in
    the ``input_size`` grid (clamped), ``inside[q, k]`` is false where it falls in the zero padding."""
    taps, inside = conv_taps(tuple(input_size), tuple(depthwise.kernel_size), tuple(depthwise.stride),
                             tuple(depthwise.padding), tuple(depthwise.dilation), str(positions.device))
    return taps[positions], inside[positions]


def depthwise_jacobian_from_taps(inputs: torch.Tensor, slopes: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """``J_{j,q} = sum_k K_{j,k} s_{j,q+k} x~_{q+k}`` from values gathered at the taps: ``inputs``
    ``[N, d, Q, K]`` (``x~``), ``slopes`` ``[N, c, Q, K]`` (``c_j sigma'(u_j)``, zero in the padding),
    ``kernel`` ``[c, K]``. Returns ``[N, c, d, Q]``."""
    return torch.einsum("ncqk,ndqk->ncdq", slopes * kernel.to(slopes.dtype)[None, :, None, :], inputs)


def depthwise_jacobian_at(patches: torch.Tensor, slopes: torch.Tensor, depthwise: nn.Conv2d,
                          input_size: Tuple[int, int], neurons: slice, positions: torch.Tensor) -> torch.Tensor:
    """:func:`depthwise_jacobian` at the output positions ``positions`` only (flat indices into the
    depthwise output grid): ``J_{j,q} = sum_k K_{j,k} s_{j,q+k} x~_{q+k}`` gathered, not convolved.

    ``slopes`` are ``c_j sigma'(u_j)`` ``[N, O, H, W]`` (:func:`neuron_slopes`). Returns ``[N, c, d, len(positions)]``.
    """
    taps, inside = depthwise_taps(depthwise, input_size, positions)
    part = slopes[:, neurons].reshape(slopes.shape[0], -1, input_size[0] * input_size[1])
    kernel = depthwise.weight[neurons].detach().reshape(part.shape[1], -1)
    return depthwise_jacobian_from_taps(values_at(patches, taps), values_at(part, taps) * inside.to(part.dtype), kernel)


def extreme_eigenpairs(matrices: torch.Tensor, chunk: int = 256
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both ends of each spectrum from one ``eigh``: ``lambda_min, v_min, lambda_max, v_max`` (unit vectors).

    ``matrices`` is ``[O, d, d]``; it is symmetrized first. Returns ``([O], [O, d], [O], [O, d])``.
    ``v_max`` is what signed splitting needs (a neuron may also split along ``+-v_max``).
    """
    low, low_vectors, high, high_vectors = [], [], [], []
    for start in range(0, matrices.shape[0], chunk):
        block = matrices[start:start + chunk]
        block = 0.5 * (block + block.transpose(1, 2))
        eigenvalues, eigenvectors = torch.linalg.eigh(block)  # ascending
        low.append(eigenvalues[:, 0])
        low_vectors.append(eigenvectors[:, :, 0].clone())  # a view would keep all d x d eigenvectors alive
        high.append(eigenvalues[:, -1])
        high_vectors.append(eigenvectors[:, :, -1].clone())
        del block, eigenvectors
    return torch.cat(low), torch.cat(low_vectors), torch.cat(high), torch.cat(high_vectors)


def min_eigenpairs(matrices: torch.Tensor, chunk: int = 256) -> Tuple[torch.Tensor, torch.Tensor]:
    """Splitting indexes ``lambda_min(S_j)`` and splitting gradients ``v_min(S_j)`` (unit norm).

    ``matrices`` is ``[O, d, d]``; it is symmetrized first. Returns ``([O], [O, d])``.
    """
    values, vectors, _, _ = extreme_eigenpairs(matrices, chunk)
    return values, vectors


def max_eigenpairs(matrices: torch.Tensor, chunk: int = 256) -> Tuple[torch.Tensor, torch.Tensor]:
    """``lambda_max(S_j)`` and its unit eigenvector ``v_max(S_j)``: ``([O], [O, d])``."""
    _, _, values, vectors = extreme_eigenpairs(matrices, chunk)
    return values, vectors
