"""The fast method's per-layer data, gathered batch by batch from ``compute_splitting``'s recorded pass.

:class:`FastLayerData` turns one neuron group's recorded values (its input, pre-activations and the
loss gradient at its activation, see :mod:`nni_splitting.core.splitting`) into the buffers of a
:class:`~nni_splitting.core.fast.SplittingOperator`: ``x``, ``w = dL/da * sigma''(u) * c^2``
(:func:`~nni_splitting.core.matrix.neuron_weights`, the same function the exact method sums) and, with a
depthwise conv, ``c * sigma'(u)`` and ``w'``. It knows the graph (node names, module dicts), so
:mod:`nni_splitting.core.fast` stays the operator and the solver.
"""
from __future__ import annotations

import logging
import math
from typing import Dict, Optional

import torch
import torch.nn as nn

from nni_splitting.core.fast import FAST_DEFAULTS, SplittingOperator
from nni_splitting.core.matrix import batchnorm_scale, neuron_slopes, neuron_weights

__all__ = ["FastLayerData"]

logger = logging.getLogger(__name__)


class FastLayerData:
    """Accumulates one layer's data over the batches of :func:`compute_splitting` (no ``d x d`` matrix).

    Buffers for all ``total`` samples are allocated at the first batch and filled in place, so the
    peak is the data itself: ``N * (C H W + O H' W')`` elements (plus ``2 O Q`` with a depthwise conv).
    """

    def __init__(self, group, modules: Dict[str, nn.Module], spec, spec2, total: int,
                 chunk_elements: int = FAST_DEFAULTS["chunk_elements"]):
        self.group, self.modules, self.spec, self.spec2, self.total = group, modules, spec, spec2, total
        self.layer = modules[group.layer]
        self.chunk_elements = chunk_elements
        self.filled = 0
        self.buffers: Dict[str, torch.Tensor] = {}

    @staticmethod
    def estimate_bytes(group, nodes: Dict[str, "torch.fx.Node"], modules: Dict[str, nn.Module], total: int,
                       element_bytes: int) -> int:
        """Bytes the cached data of ``group`` will take for ``total`` samples (from the traced shapes)."""
        def per_sample(name: Optional[str]) -> int:
            meta = nodes[name].meta.get("tensor_meta") if name else None
            shape = tuple(getattr(meta, "shape", ()))
            return math.prod(shape[1:]) if len(shape) > 1 else 0

        elements = per_sample(group.input_node) + per_sample(group.preactivation_node)
        if group.depthwise_activation_node:
            elements += per_sample(group.preactivation_node) + per_sample(group.depthwise_preactivation_node)
        return total * elements * element_bytes

    def _store(self, key: str, value: torch.Tensor, batch: int) -> None:
        if key not in self.buffers:
            self.buffers[key] = torch.zeros(self.total, *value.shape[1:], dtype=value.dtype, device=value.device)
        self.buffers[key][self.filled:self.filled + batch] = value

    def add(self, values: Dict[str, torch.Tensor], gradients: Dict[str, Optional[torch.Tensor]], batch_size: int) -> None:
        """Append one batch: ``values``/``gradients`` as recorded by ``compute_splitting``'s pass."""
        group = self.group
        x = values[group.input_node]
        u = values[group.preactivation_node]
        n, channels = u.shape[:2]
        share = batch_size / self.total  # the batch's weight in the mean over all samples
        scale = batchnorm_scale(self.modules.get(group.pre_bn) if group.pre_bn else None, channels, u)
        gradient = gradients[group.activation_node]
        # w_{n,j,p} = dL/da_{j,p} * sigma''(u_{j,p}) * c_j^2                         (eq. 3, term 1)
        weights = torch.zeros_like(u) if gradient is None else neuron_weights(gradient, u, self.spec.second, scale) * share
        self._store("inputs", x, n)
        self._store("weights", weights, n)
        if group.depthwise_activation_node and gradients.get(group.depthwise_activation_node) is not None:
            u2 = values[group.depthwise_preactivation_node]
            scale2 = batchnorm_scale(self.modules.get(group.depthwise_bn) if group.depthwise_bn else None, channels, u2)
            g2 = gradients[group.depthwise_activation_node]
            # w'_{n,j,q} = dL/db_{j,q} * sigma_2''(u'_{j,q}) * c'_j^2; slopes c_j sigma'(u) build J^T v (term 2)
            self._store("weights2", neuron_weights(g2, u2, self.spec2.second, scale2) * share, n)
            self._store("slopes", neuron_slopes(u, self.spec.first, scale), n)
        self.filled += n

    def operator(self) -> SplittingOperator:
        """The :class:`SplittingOperator` over everything added (call after the last batch)."""
        if self.filled != self.total:
            raise ValueError(f"{self.group.layer}: {self.filled} samples recorded, expected {self.total}")
        depthwise = self.modules[self.group.depthwise] if "weights2" in self.buffers else None
        return SplittingOperator(self.layer, self.buffers["inputs"], self.buffers["weights"], depthwise,
                                 self.buffers.get("slopes"), self.buffers.get("weights2"), self.chunk_elements)
