"""Parameters and FLOPs with NNI's own counter, and the cost of splitting one neuron of each layer."""
from __future__ import annotations

import logging
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from nni_splitting.graph import find_neuron_groups, trace_model
from nni_splitting.core.splitting import LayerSplitting
from nni_splitting.growth.surgery import apply_splits

__all__ = ["count_model", "neuron_costs", "COST_KINDS"]

logger = logging.getLogger(__name__)

COST_KINDS = ("params", "flops")


def count_model(model: nn.Module, dummy_input: torch.Tensor) -> Tuple[int, int]:
    """``(flops, params)`` of ``model`` by NNI's ``count_flops_params`` in ``mode="full"`` (BatchNorm included; FLOPs = multiply-adds)."""
    from nni.compression.utils.counter import count_flops_params

    was_training = model.training
    try:
        flops, params, _ = count_flops_params(model, dummy_input, verbose=False, mode="full")
    finally:
        model.train(was_training)
    return int(flops), int(params)


def neuron_costs(model: nn.Module, dummy_input: torch.Tensor, kind: str = "params",
                 layers: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """How much one split adds, per candidate layer, measured by NNI's counter on the real model.

    Each candidate layer is grown by one neuron (``epsilon = 0``) on a copy, and the increase of the
    counted parameters (``kind="params"``) or FLOPs (``kind="flops"``) is its cost.
    """
    if kind not in COST_KINDS:
        raise ValueError(f"kind={kind!r} is not one of {COST_KINDS}")
    parameter = next(model.parameters())
    dummy_input = dummy_input.to(parameter.device)
    if dummy_input.is_floating_point():
        dummy_input = dummy_input.to(parameter.dtype)
    groups, _ = find_neuron_groups(trace_model(model, dummy_input), list(layers) if layers is not None else None)
    base_flops, base_params = count_model(model, dummy_input)
    costs: Dict[str, float] = {}
    for name, group in groups.items():
        layer = model.get_submodule(name)
        d = layer.weight[0].numel() + (1 if layer.bias is not None else 0)
        stub = LayerSplitting(name, torch.zeros(layer.weight.shape[0]), torch.zeros(layer.weight.shape[0], d), group)
        grown = apply_splits(model, {name: stub}, {name: [0]}, epsilon=0.0)
        flops, params = count_model(grown, dummy_input)
        costs[name] = float(params - base_params if kind == "params" else flops - base_flops)
    return costs
