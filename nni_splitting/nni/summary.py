"""The comparison's rows summarised: mean and standard deviation over seeds per arm and step.

Shared by the report (tables, plots) and the claims (:mod:`nni_splitting.nni.claims`).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["number", "mean_std", "arm_key", "is_search", "aggregate"]

def number(value) -> Optional[float]:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def mean_std(values: List[float]):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def arm_key(arm: str, order: Sequence[str] = ()):
    """Sort key of an arm label: its place in ``order`` (e.g. :func:`nni_splitting.nni.arms.report_order`),
    labels not in it last, by name."""
    order = list(order)
    return (order.index(arm) if arm in order else len(order), arm)


def is_search(row: Dict[str, Any]) -> bool:
    """A width-search sample (HPO or ``nni.nas``): each one is its own point, not a step of a lineage."""
    return row.get("method") == "width_search" or row.get("arm") == "width"


def aggregate(rows: List[Dict[str, Any]], order: Sequence[str] = ()) -> List[Dict[str, Any]]:
    """Mean and standard deviation over seeds per (arm, step) (width search: per trial), arms in ``order``."""
    groups: Dict[tuple, List[dict]] = defaultdict(list)
    for row in rows:
        if number(row.get("accuracy")) is None:
            continue
        key = (row["arm"], row["trial_id"]) if is_search(row) else (row["arm"], row["step"])
        groups[key].append(row)
    out = []
    for (arm, step), members in groups.items():
        summary = {"arm": arm, "method": members[0].get("method"), "step": step, "n": len(members)}
        for column in ("accuracy", "params_ratio", "params", "flops", "epochs", "wall_time", "val_accuracy",
                       "total_mac_epochs"):
            summary[column], summary[column + "_std"] = mean_std([number(m.get(column)) for m in members])
        out.append(summary)
    out.sort(key=lambda s: (arm_key(s["arm"], order), s["params_ratio"] or 0))
    return out
