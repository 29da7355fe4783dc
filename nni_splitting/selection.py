"""Which neurons to split: threshold, top-m, per-layer caps and cost-aware ranking (Algorithm 1, step 3)."""
from __future__ import annotations

import logging
import math
from typing import Dict, List, Mapping, Optional, Sequence, Union

import torch

__all__ = ["select_neurons"]

logger = logging.getLogger(__name__)

Indexes = Union["LayerSplitting", torch.Tensor, Sequence[float]]  # noqa: F821 (LayerSplitting: duck-typed)


def _eigenvalues(value) -> List[float]:
    if hasattr(value, "eigenvalues"):
        value = value.eigenvalues
    if isinstance(value, torch.Tensor):
        return [float(v) for v in value.detach().cpu().reshape(-1)]
    return [float(v) for v in value]


def select_neurons(splits: Mapping[str, Indexes], max_splits: Optional[int] = None, threshold: float = 0.0,
                   max_per_layer: Union[None, int, Mapping[str, int]] = None,
                   costs: Optional[Mapping[str, float]] = None, budget: Optional[float] = None) -> Dict[str, List[int]]:
    """Pick the neurons to split: the most negative splitting indexes first.

    Parameters
    ----------
    splits : dict
        ``{layer: LayerSplitting}`` from :func:`compute_splitting`, or ``{layer: eigenvalues}``
        (a tensor or a list, e.g. read back from JSON).
    max_splits : int, optional
        At most this many neurons in total (``m*`` of Algorithm 1); all eligible ones if ``None``.
    threshold : float
        Only neurons with ``lambda_min < threshold`` are eligible (``lambda*`` of Algorithm 1, ``<= 0``).
    max_per_layer : int or dict, optional
        At most this many neurons per layer (one int for all layers, or per layer name).
    costs : dict, optional
        ``{layer: cost of splitting one of its neurons}`` (e.g. :func:`neuron_costs`, parameters or
        FLOPs). When given, neurons are ranked by ``lambda_min / cost``: loss decrease per unit cost.
    budget : float, optional
        Total cost not to exceed (needs ``costs``): neurons that no longer fit are skipped.

    Returns
    -------
    dict
        ``{layer: sorted neuron indices}``, only layers with at least one pick.
    """
    if not isinstance(threshold, (int, float)) or math.isnan(threshold) or threshold > 0:
        raise ValueError(f"threshold={threshold!r} must be <= 0: a neuron with lambda_min >= 0 cannot decrease the loss")
    if max_splits is not None and (int(max_splits) != max_splits or max_splits < 0):
        raise ValueError(f"max_splits={max_splits!r} must be a non-negative integer or None")
    if budget is not None and costs is None:
        raise ValueError("budget needs costs: pass costs={layer: cost per split neuron}")
    if costs is not None:
        missing = sorted(set(splits) - set(costs))
        if missing:
            raise ValueError(f"costs has no entry for layer(s) {missing}")
        bad = {k: v for k, v in costs.items() if k in splits and not (v > 0)}
        if bad:
            raise ValueError(f"costs must be > 0, got {bad}")
    candidates = []
    for layer, value in splits.items():
        for index, eigenvalue in enumerate(_eigenvalues(value)):
            if math.isfinite(eigenvalue) and eigenvalue < threshold:
                score = eigenvalue / costs[layer] if costs is not None else eigenvalue
                candidates.append((score, eigenvalue, layer, index))
    candidates.sort(key=lambda c: (c[0], c[1]))
    plan: Dict[str, List[int]] = {}
    spent, total = 0.0, 0
    for _, eigenvalue, layer, index in candidates:
        if max_splits is not None and total >= max_splits:
            break
        cap = max_per_layer.get(layer) if isinstance(max_per_layer, Mapping) else max_per_layer
        if cap is not None and len(plan.get(layer, [])) >= cap:
            continue
        if budget is not None and spent + costs[layer] > budget:
            continue
        plan.setdefault(layer, []).append(index)
        spent += costs[layer] if costs is not None else 0.0
        total += 1
    ordered = {layer: sorted(plan[layer]) for layer in splits if layer in plan}
    logger.info("selected %d neuron(s) to split in %d layer(s)", total, len(ordered))
    return ordered
