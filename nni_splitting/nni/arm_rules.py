"""When the comparison queues each arm: the ``emit`` / ``after`` rules of the arm registry.

Each rule gets what the comparison knows of a reported growth step (:class:`StepView`) and returns
the parameters of the trials to queue there, or ``None`` while the arm is not ready yet (the pruners
wait for the trained full model). The registry (:data:`nni_splitting.nni.arms.ARM_SPECS`) names one rule
per arm.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, NamedTuple, Optional

__all__ = ["StepView", "Emission", "emit_pruner", "emit_growth_baseline", "emit_scratch", "emit_uniform", "emit_plain",
           "after_pruner"]

logger = logging.getLogger(__name__)


class StepView(NamedTuple):
    """What the comparison knows of one reported growth step when it asks an arm what to queue there."""
    step: int
    result: Dict[str, Any]               # the step's final result (params, widths, epochs, ...)
    full: Optional[Dict[str, Any]]       # the trained full model's result, None until it has reported
    seed_widths: List[int]               # the lineage's seed network
    split_counts: List[Dict[str, int]]   # per growth step up to this one: {layer: neurons split}
    options: Dict[str, Any]              # the comparison's settings (``plain_families``, ...)


#: What an arm queues at a step: trial parameters (one dict per trial), or None while it is not ready yet.
Emission = Optional[List[Dict[str, Any]]]


def lineage_epochs(view: StepView) -> Optional[int]:
    return int(view.result.get("epochs") or 0) or None


def emit_pruner(view: StepView) -> Emission:
    if view.full is None:
        return None  # the full model is still training
    return [{"full_checkpoint": view.full.get("checkpoint", ""),
             "target_ratio": float(view.result["params"]) / float(view.full["params"]),
             "prior_epochs": view.full.get("epochs", 0), "prior_wall_time": view.full.get("wall_time", 0.0),
             "matched_epochs": lineage_epochs(view)}]


def emit_growth_baseline(view: StepView) -> Emission:
    if view.step == 0:
        return []
    return [{"widths_seed": list(view.seed_widths), "split_counts": [dict(c) for c in view.split_counts]}]


def emit_scratch(view: StepView) -> Emission:
    if view.step == 0:
        return []
    widths = [int(w) for w in str(view.result.get("widths") or "").split(",") if w]
    strides = [int(s) for s in str(view.result.get("strides") or "").split(",") if s]  # a depth-grown network's
    return [{"widths": widths, "total_epochs": lineage_epochs(view), **({"strides": strides} if strides else {})}]


def emit_uniform(view: StepView) -> Emission:
    return [{"target_params": int(view.result["params"]), "total_epochs": lineage_epochs(view)}]


def emit_plain(view: StepView) -> Emission:
    return [{"target_params": int(view.result["params"]), "total_epochs": lineage_epochs(view),
             "arm_label": family.get("label") or f"plain_{family['model']}", "plain_model": family["model"],
             "plain_widths": family.get("widths")}
            for family in view.options.get("plain_families") or []]


def after_pruner(params: Dict[str, Any], result: Dict[str, Any]) -> List[Dict[str, Any]]:
    """A pruner's architecture from scratch, for the lineage's epochs at that ratio (``<pruner>_scratch``)."""
    widths = [int(w) for w in str(result.get("widths") or "").split(",") if w]
    if not widths:
        logger.warning("pruner trial %s reported no widths: no pruned_scratch arm", params.get("node_id"))
        return []
    return [{"widths": widths, "total_epochs": params.get("matched_epochs"), "arm_label": f"{params['arm']}_scratch"}]
