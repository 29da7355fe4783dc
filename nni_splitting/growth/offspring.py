"""How far apart a split's two offspring start: the step size's scale and symmetry breaking.

Splitting neuron ``j`` gives offspring ``theta_j + eps v_j`` and ``theta_j - eps v_j``
(:func:`nni_splitting.growth.surgery.apply_splits`).  With the official ``eps = 0.01`` and a unit ``v_j`` the
two stay near-duplicates under short training (issue 11); the two levers here are the ablations of
the CIFAR protocol, applied by a trial around the surgery:

* :func:`scale_directions` (``epsilon_scale``): ``"absolute"`` keeps ``eps * v_j``; ``"relative"``
  makes the step ``eps * ||theta_j|| * v_j``, i.e. the same fraction of every neuron's own size;
* :func:`break_symmetry` (``symmetry_breaking``): ``"none"``; ``"noise"`` adds
  ``N(0, (scale * ||theta_j|| / sqrt(d))^2)`` to each weight of the appended offspring only;
  ``"bn_scale"`` multiplies the BatchNorm scale of the appended offspring by ``1 + scale``.
  Both change the network's function (by design): the split is no longer function-preserving.
"""
from __future__ import annotations

import copy
import math
from typing import Dict, Mapping, Sequence

import torch
import torch.nn as nn

from nni_splitting.graph import handler_for
from nni_splitting.core.splitting import LayerSplitting

__all__ = ["EPSILON_SCALES", "SYMMETRY_BREAKING", "neuron_norms", "scale_directions", "break_symmetry"]

EPSILON_SCALES = ("absolute", "relative")
SYMMETRY_BREAKING = ("none", "noise", "bn_scale")


def neuron_norms(layer: nn.Module) -> torch.Tensor:
    """``||theta_j||`` of every output neuron of a Linear/Conv2d (weights flattened, then the bias)."""
    flat = layer.weight.detach().reshape(layer.weight.shape[0], -1)
    if getattr(layer, "bias", None) is not None:
        flat = torch.cat([flat, layer.bias.detach()[:, None]], dim=1)
    return flat.norm(dim=1)


def scale_directions(model: nn.Module, splits: Mapping[str, LayerSplitting], mode: str = "absolute"
                     ) -> Dict[str, LayerSplitting]:
    """The splits with ``directions[j]`` scaled by ``||theta_j||`` (``mode="relative"``), else unchanged."""
    if mode not in EPSILON_SCALES:
        raise ValueError(f"epsilon_scale={mode!r} is not one of {EPSILON_SCALES}")
    if mode == "absolute":
        return dict(splits)
    modules = dict(model.named_modules())
    scaled = {}
    for name, split in splits.items():
        if name not in modules:
            raise ValueError(f"the model has no layer {name!r} named in the splitting results")
        norms = neuron_norms(modules[name]).to(split.directions.dtype).to(split.directions.device)
        if norms.numel() != split.directions.shape[0]:
            raise ValueError(f"{name} has {norms.numel()} neurons but its splits have {split.directions.shape[0]}")
        scaled[name] = copy.copy(split)
        scaled[name].directions = split.directions * norms[:, None]  # eps ||theta_j|| v_j
    return scaled


def break_symmetry(grown: nn.Module, splits: Mapping[str, LayerSplitting], plan: Mapping[str, Sequence[int]],
                   old_widths: Mapping[str, int], mode: str = "none", scale: float = 0.1, seed: int = 0) -> nn.Module:
    """Perturb the appended offspring of every split neuron of ``grown`` in place; return ``grown``.

    ``old_widths[layer]`` is the layer's width before the split: its offspring of ``plan[layer][k]``
    is neuron ``old_widths[layer] + k`` (``apply_splits`` appends them in plan order).
    """
    if mode not in SYMMETRY_BREAKING:
        raise ValueError(f"symmetry_breaking={mode!r} is not one of {SYMMETRY_BREAKING}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
        raise ValueError(f"symmetry scale must be a finite number >= 0, got {scale!r}")
    if mode == "none" or scale == 0:
        return grown
    modules = dict(grown.named_modules())
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for layer, indices in plan.items():
            if not indices:
                continue
            new = torch.arange(old_widths[layer], old_widths[layer] + len(indices))
            if mode == "noise":
                producer = modules[layer]
                norms = neuron_norms(producer)[new]
                d = producer.weight[0].numel() + (1 if getattr(producer, "bias", None) is not None else 0)
                noise = torch.randn((len(new), *producer.weight.shape[1:]), generator=generator)
                std = (scale * norms / math.sqrt(d)).view(-1, *([1] * (producer.weight.dim() - 1)))
                producer.weight[new] += (noise.to(producer.weight) * std)
                continue
            scales = [handler_for(modules[f]).channel_scale(modules[f]) for f in splits[layer].group.followers
                      if handler_for(modules[f]) is not None]
            scales = [gamma for gamma in scales if gamma is not None]
            if not scales:
                raise ValueError(f"symmetry_breaking='bn_scale' needs a BatchNorm after {layer}; it has none")
            scales[0][new] *= 1 + scale
    return grown
