"""Does a grown network win against what a user would build instead? The two-axis claim.

A growth configuration wins at a size only if both hold (issue 25, item 4):

* **at equal parameters** its mean test accuracy is at least ``margin`` above every baseline of about
  the same parameter count (within ``params_tolerance``): NNI's pruners of the full model, the plain
  networks (``uniform`` / ``plain_*``: uniform width multipliers of each family) and the width
  searches (the sample a user would keep: best validation accuracy under the budget);
* **at its FLOPs** it is not below the baselines' accuracy-vs-FLOPs front: the Pareto front of every
  baseline point (no other point both cheaper and more accurate), linearly interpolated in
  ``log(FLOPs)`` between front points, flat beyond the most expensive one.

The architecture claim is checked the same way at equal parameters: a grown architecture trained from
scratch for one round (arm ``scratch_round`` / ``<label>_scratch``) against the best plain network.
"""
from __future__ import annotations

import bisect
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

from nni_splitting.nni.summary import aggregate, number

__all__ = ["BASELINE_METHODS", "PLAIN_METHODS", "accuracy_front", "front_accuracy", "baseline_front", "search_pick", "claims",
           "claims_markdown"]

#: ``method`` column of the arms a user would run instead of growing (pruners, plain networks, searches).
BASELINE_METHODS = ("pruning", "width", "width_search")
#: ``method`` of the plain networks (uniform width multipliers of a family), the architecture claim's rivals.
PLAIN_METHODS = ("width",)


def accuracy_front(points: Sequence[Tuple[float, float]]) -> List[Tuple[float, float]]:
    """The Pareto front of ``(flops, accuracy)`` points: sorted by FLOPs, each more accurate than every
    cheaper point."""
    front: List[Tuple[float, float]] = []
    for flops, accuracy in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or accuracy > front[-1][1]:
            if front and front[-1][0] == flops:
                continue
            front.append((flops, accuracy))
    return front


def front_accuracy(front: Sequence[Tuple[float, float]], flops: float) -> Optional[float]:
    """The front's accuracy at ``flops``: interpolated in ``log(FLOPs)`` between its points, the best
    accuracy beyond the last one, ``None`` below the cheapest (no baseline that cheap)."""
    if not front or flops < front[0][0]:
        return None
    xs = [f for f, _ in front]
    i = bisect.bisect_right(xs, flops)
    if i >= len(front):
        return front[-1][1]
    (f0, a0), (f1, a1) = front[i - 1], front[i]
    t = (math.log(flops) - math.log(f0)) / (math.log(f1) - math.log(f0))
    return a0 + t * (a1 - a0)


def baseline_front(rows: List[Dict[str, Any]], summary: Optional[List[Dict[str, Any]]] = None
                   ) -> List[Tuple[float, float]]:
    """The baselines' accuracy-vs-FLOPs front: every baseline's mean over seeds (each search sample on its own)."""
    summary = aggregate(rows) if summary is None else summary
    return accuracy_front([(s["flops"], s["accuracy"]) for s in summary
                           if s["method"] in BASELINE_METHODS and s["method"] != "width_search" and s["flops"]]
                          + [(number(r["flops"]), number(r["accuracy"])) for r in rows
                             if r.get("method") == "width_search" and number(r.get("flops"))
                             and number(r.get("accuracy")) is not None])


def search_pick(rows: List[Dict[str, Any]], arm: str, max_params: float) -> Optional[Dict[str, Any]]:
    """A width search's pick at a budget: the trained sample with the best validation accuracy."""
    samples = [r for r in rows if r.get("arm") == arm and number(r.get("accuracy")) is not None
               and number(r.get("val_accuracy")) is not None and (number(r.get("params")) or math.inf) <= max_params]
    return max(samples, key=lambda r: number(r["val_accuracy"])) if samples else None


def _rivals(rows: List[Dict[str, Any]], summary: List[Dict[str, Any]], params: float, tolerance: float,
            methods: Sequence[str]) -> List[Tuple[str, float]]:
    """``(arm, mean accuracy)`` of every baseline of ``methods`` at about ``params`` parameters."""
    out = [(s["arm"], s["accuracy"]) for s in summary
           if s["method"] in methods and s["method"] != "width_search" and s["params"]
           and abs(s["params"] - params) <= tolerance * params]
    if "width_search" in methods:
        for arm in sorted({r["arm"] for r in rows if r.get("method") == "width_search"}):
            pick = search_pick(rows, arm, params * (1 + tolerance))
            if pick is not None:
                out.append((arm, number(pick["accuracy"])))
    return out


def claims(rows: List[Dict[str, Any]], margin: float = 0.01, params_tolerance: float = 0.1,
           growth_methods: Sequence[str] = ("splitting",)) -> List[Dict[str, Any]]:
    """One verdict per growth configuration and step, then per grown architecture from scratch.

    Each verdict has ``wins`` (``None`` when no baseline was measured at that size), ``wins_params``,
    ``wins_flops``, the best baseline at equal parameters and its accuracy, the front's accuracy at
    the grown network's FLOPs, and both margins (fractions).

    Parameters
    ----------
    rows
        ``results.csv`` rows (:func:`nni_splitting.nni.report.read_csv` or NNI's records).
    margin
        The accuracy (a fraction: 0.01 = 1 point) a growth configuration must beat the best baseline by
        at equal parameters.
    params_tolerance
        Baselines within this relative distance of the grown network's parameters count as equal.
    """
    summary = aggregate(rows)
    front = baseline_front(rows, summary)
    out = []
    for s in summary:
        growth = s["method"] in growth_methods
        architecture = s["method"] == "retrain" and not any(
            s["arm"].startswith(p) for p in ("l1_", "slim_", "fpgm_", "taylor_", "bn_slim_"))
        if not (growth or architecture) or not s["params"]:
            continue
        rivals = _rivals(rows, summary, s["params"], params_tolerance,
                         BASELINE_METHODS if growth else PLAIN_METHODS)
        best = max(rivals, key=lambda r: r[1]) if rivals else (None, None)
        at_flops = front_accuracy(front, s["flops"]) if growth and s["flops"] else None
        verdict = {"claim": "growth" if growth else "architecture", "arm": s["arm"], "step": s["step"],
                   "n": s["n"], "params": s["params"], "params_ratio": s["params_ratio"], "flops": s["flops"],
                   "accuracy": s["accuracy"], "accuracy_std": s["accuracy_std"],
                   "best_baseline": best[0], "best_baseline_accuracy": best[1],
                   "margin": None if best[1] is None else s["accuracy"] - best[1],
                   "front_accuracy": at_flops,
                   "front_margin": None if at_flops is None else s["accuracy"] - at_flops}
        needed = margin if growth else 0.0
        verdict["wins_params"] = verdict["margin"] is not None and verdict["margin"] >= needed - 1e-12
        verdict["wins_flops"] = (not growth) or verdict["front_margin"] is None or verdict["front_margin"] >= 0
        # no baseline at this size: no verdict (None), rather than a loss
        verdict["wins"] = None if best[0] is None else verdict["wins_params"] and verdict["wins_flops"]
        out.append(verdict)
    return out


def claims_markdown(rows: List[Dict[str, Any]], **options) -> str:
    """Markdown table of :func:`claims` (accuracies in %)."""
    verdicts = claims(rows, **options)
    if not verdicts:
        return ""

    def pct(value, signed=False):
        return "" if value is None else (f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}")

    lines = ["| claim | arm | step | n | params (%) | MMACs | test acc. (%) | best baseline at equal params | "
             "margin (pts) | baselines' FLOPs front (%) | margin (pts) | wins |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in verdicts:
        baseline = f"{v['best_baseline']} {pct(v['best_baseline_accuracy'])}" if v["best_baseline"] else "none"
        lines.append(f"| {v['claim']} | {v['arm']} | {v['step']} | {v['n']} | {pct(v['params_ratio'])} | "
                     f"{v['flops'] / 1e6:.2f} | {pct(v['accuracy'])} ± {pct(v['accuracy_std'] or 0)} | {baseline} | "
                     f"{pct(v['margin'], True)} | {pct(v['front_accuracy'])} | {pct(v['front_margin'], True)} | "
                     f"{'n/a' if v['wins'] is None else 'yes' if v['wins'] else 'no'} |")
    return "\n".join(lines)
