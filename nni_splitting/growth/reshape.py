"""Any network's splittable widths, read and restored by layer name (no widths list, no model class).

A grown network of the user's own model is stored as its seed factory, the width of every splittable
layer (``{layer name: neurons}``, :func:`splittable_widths`) and its ``state_dict``.
:func:`resize_to` rebuilds it: the seed's neuron groups (the same ``torch.fx`` walk as the splitting)
are widened to the stored widths by the layer handlers' own surgery, duplicating neurons (``epsilon =
0``), so every producer, BatchNorm, depthwise conv and consumer gets its grown shape, and the stored
``state_dict`` then fits.
"""
from __future__ import annotations

import copy
from typing import Dict, Mapping

import torch
from torch import nn

from nni_splitting.graph import find_neuron_groups, handler_for, trace_model
from nni_splitting.growth.surgery import split_groups

__all__ = ["splittable_widths", "resize_to"]


def splittable_widths(model: nn.Module, example_input: torch.Tensor) -> Dict[str, int]:
    """``{layer name: number of neurons}`` of every splittable layer of ``model``, in graph order."""
    groups, _ = find_neuron_groups(trace_model(model, example_input))
    modules = dict(model.named_modules())
    return {name: handler_for(modules[name]).num_neurons(modules[name]) for name in groups}


def resize_to(model: nn.Module, example_input: torch.Tensor, widths: Mapping[str, int]) -> nn.Module:
    """A copy of ``model`` whose splittable layers have ``widths`` neurons (``{layer: n}``; each at least the
    seed's). Raises ``ValueError`` naming a layer that is not splittable in ``model`` or would shrink."""
    grown = copy.deepcopy(model)
    groups, excluded = find_neuron_groups(trace_model(grown, example_input))
    modules = dict(grown.named_modules())
    for name, wanted in widths.items():
        if name not in groups:
            reason = excluded.get(name, "no such layer")
            raise ValueError(f"cannot resize {name!r}: it is not a splittable layer of {type(model).__name__} ({reason})")
        handler = handler_for(modules[name])
        current = handler.num_neurons(modules[name])
        if int(wanted) < current:
            raise ValueError(f"cannot resize {name!r} from {current} to {wanted} neurons: growth only widens")
        while current < int(wanted):  # at most doubling per pass: every duplicated index must exist
            extra = min(int(wanted) - current, current)
            directions = torch.zeros(extra, handler.parameters_per_neuron(modules[name]))
            split_groups(modules, [(groups[name], list(range(extra)), directions)], 0.0)
            current += extra
    return grown
