"""The comparison's :class:`~nni_splitting.scheduler.Policy`: the baseline arms beside each splitting lineage.

For each seed (lineage ``i``, training seed ``trial.seed + i``) a ``full`` arm trains the full-width
model from the start; as soon as a step of the lineage has reported (and, for the pruners, the full
model is trained), that step (= its parameter ratio) gets the other arms: pruners of the full
checkpoint to the step's ratio, ``random_split`` / ``new_neurons`` with the lineage's per-step
split counts, ``scratch`` with the step's widths, ``uniform`` at the step's parameter count, and,
when a pruner's trial has reported, ``pruned_scratch`` (its architecture from scratch, arm label
``<pruner>_scratch``).  Arm nodes are :data:`~nni_splitting.lineage.NodeKind.ARM` nodes of the same
:class:`~nni_splitting.scheduler.Scheduler`; their ``lineage`` is the seed they belong to.
"""
from __future__ import annotations

import copy
import logging
import secrets
from typing import Dict, List, Optional, Sequence

from .arms import GROWTH_ARMS, PRUNING_ARMS
from .lineage import Node, NodeKind, NodeStatus
from .scheduler import Policy, Scheduler, lineage_entry

__all__ = ["ComparisonPolicy", "DEFAULT_ARMS"]

logger = logging.getLogger(__name__)

DEFAULT_ARMS = ("pruning", "random_split", "new_neurons", "scratch", "pruned_scratch", "uniform", "plain")


def _widths(text) -> List[int]:
    return [int(w) for w in str(text or "").split(",") if w]


class ComparisonPolicy(Policy):
    """Queue the baseline arms of each lineage (see the module docstring).

    Parameters
    ----------
    args
        The tuner's arguments (model, epsilon, beam, trial settings).
    arms, pruners
        Arms (:data:`DEFAULT_ARMS`) and pruners (:data:`nni_splitting.arms.PRUNING_ARMS`) to run.
    baseline_steps
        The growth steps (0 = the seed) that get baselines; default: every step the lineage reaches.
    plain_families
        Other network families trained at each step's parameter count (arm ``plain``): mappings with
        ``model`` (a registered name), optional ``widths`` (the base widths the multiplier scales) and
        ``label`` (the reported arm, default ``plain_<model>``). Empty: no ``plain`` arm.
    extra
        Settings every arm trial gets (``full_epochs``, ``finetune_epochs``, ``prune_training_steps``;
        None values are left out).
    """

    def __init__(self, args, arms: Optional[Sequence[str]] = None, pruners: Optional[Sequence[str]] = None,
                 extra: Optional[dict] = None, baseline_steps: Optional[Sequence[int]] = None,
                 plain_families: Optional[Sequence[dict]] = None):
        self.args = args
        self.arms = list(arms if arms is not None else DEFAULT_ARMS)
        self.pruners = list(pruners if pruners is not None else PRUNING_ARMS)
        bad = [a for a in self.arms if a not in DEFAULT_ARMS] + [p for p in self.pruners if p not in PRUNING_ARMS]
        if bad:
            raise ValueError(f"unknown arms/pruners {bad}; arms: {list(DEFAULT_ARMS)}, pruners: {list(PRUNING_ARMS)}")
        self.extra = {k: v for k, v in (extra or {}).items() if v is not None}
        self.baseline_steps = None if baseline_steps is None else {int(k) for k in baseline_steps}
        self.plain_families = [dict(family) for family in (plain_families or [])]
        self.queued: set = set()    # (lineage, step, arm) already queued

    # ------------------------------------------------------------------ Policy hooks

    def start(self, scheduler: Scheduler) -> None:
        if "pruning" not in self.arms:
            return  # the converged full model is the pruners' start, nothing else needs it
        for lineage in range(self.args.beam):
            self._add(scheduler, lineage, "full", 0, {"widths": None, "width_multiplier": 1.0})

    def growth_params(self, node: Node, parent: Optional[Node]) -> dict:
        result = (parent.result or {}) if parent else {}
        return {"arm": "splitting", "ancestor_epochs": result.get("epochs", 0),
                "ancestor_wall_time": result.get("wall_time", 0.0)}

    def step_succeeded(self, scheduler: Scheduler, node: Node) -> None:
        self._emit(scheduler, node.lineage)

    def lineage_stopped(self, scheduler: Scheduler, lineage: int) -> None:
        self._emit(scheduler, lineage)

    def arm_ended(self, scheduler: Scheduler, node: Node) -> None:
        arm = node.params.get("arm")
        if arm == "full":
            self._emit(scheduler, node.lineage)
        elif node.status == NodeStatus.SUCCEEDED and arm in PRUNING_ARMS and "pruned_scratch" in self.arms:
            self._add_pruned_scratch(scheduler, node)

    # ------------------------------------------------------------------ arms

    def _add(self, scheduler: Scheduler, lineage: int, arm: str, step: int, extra: dict) -> None:
        settings = dict(self.args.trial)
        own = lineage_entry(self.args, lineage)
        # a lineage's own seed (lineage_settings) seeds its baselines too; else trial.seed + lineage
        settings["seed"] = int(own["seed"]) if "seed" in own else int(settings.get("seed", 0)) + lineage
        settings.update(model=self.args.model, arm=arm, lineage=lineage, step=step, epsilon=self.args.epsilon,
                        **self.extra)
        if arm == "scratch" and own.get("arm_label"):
            # a labelled lineage's architecture from scratch is reported beside it, e.g. firefly_scratch
            settings["arm_label"] = f"{own['arm_label']}_scratch"
        settings.update(extra)
        scheduler.add_arm(lineage, f"{arm}-l{lineage}s{step}-{secrets.token_hex(3)}", step, settings)

    def _fulls(self, scheduler: Scheduler, lineage: int) -> List[Node]:
        return [n for n in scheduler.nodes.values() if n.kind == NodeKind.ARM and n.lineage == lineage
                and n.params.get("arm") == "full"]

    def _once(self, lineage: int, step: int, arm: str) -> bool:
        """True the first time ``arm`` is asked for at (``lineage``, ``step``)."""
        key = (lineage, step, arm)
        if key in self.queued:
            return False
        self.queued.add(key)
        return True

    def _emit(self, scheduler: Scheduler, lineage: int) -> None:
        """Queue the baselines of every step of ``lineage`` that has reported, each arm once.

        Arms that need only the step (``scratch``, ``uniform``, ``random_split``, ``new_neurons``) are
        queued as soon as the step reported; pruners once the full model is trained as well.  Steps
        outside ``baseline_steps`` (when given) get none.
        """
        fulls = self._fulls(scheduler, lineage)
        full = next((n for n in fulls if n.status == NodeStatus.SUCCEEDED), None)
        counts: List[Dict[str, int]] = []
        seed_widths: List[int] = []
        for node in scheduler.chain(lineage):
            result = node.result or {}
            if node.step == 0:
                seed_widths = _widths(result.get("widths"))
            else:
                counts.append({layer: len(idx) for layer, idx in (node.params.get("split_plan") or {}).items()})
            if self.baseline_steps is not None and node.step not in self.baseline_steps:
                continue
            epochs = int(result.get("epochs") or 0) or None
            if "pruning" in self.arms and full is not None:
                for pruner in self.pruners:
                    if self._once(lineage, node.step, pruner):
                        self._add(scheduler, lineage, pruner, node.step, {
                            "full_checkpoint": full.result.get("checkpoint", ""),
                            "target_ratio": float(result["params"]) / float(full.result["params"]),
                            "prior_epochs": full.result.get("epochs", 0),
                            "prior_wall_time": full.result.get("wall_time", 0.0), "matched_epochs": epochs})
            if node.step > 0:
                for arm in GROWTH_ARMS:
                    if arm in self.arms and self._once(lineage, node.step, arm):
                        self._add(scheduler, lineage, arm, node.step, {"widths_seed": seed_widths,
                                                                       "split_counts": copy.deepcopy(counts)})
                if "scratch" in self.arms and self._once(lineage, node.step, "scratch"):
                    self._add(scheduler, lineage, "scratch", node.step, {"widths": _widths(result.get("widths")),
                                                                         "total_epochs": epochs})
            if "uniform" in self.arms and self._once(lineage, node.step, "uniform"):
                self._add(scheduler, lineage, "uniform", node.step, {"target_params": int(result["params"]),
                                                                     "total_epochs": epochs})
            for family in self.plain_families if "plain" in self.arms else []:
                label = family.get("label") or f"plain_{family['model']}"
                if self._once(lineage, node.step, label):
                    self._add(scheduler, lineage, "plain", node.step, {
                        "target_params": int(result["params"]), "total_epochs": epochs, "arm_label": label,
                        "plain_model": family["model"], "plain_widths": family.get("widths")})

    def _add_pruned_scratch(self, scheduler: Scheduler, pruned: Node) -> None:
        """Queue the pruner's architecture, trained from scratch for the lineage's epochs at that ratio."""
        widths = _widths((pruned.result or {}).get("widths"))
        if not widths:
            logger.warning("pruner trial %s reported no widths: no pruned_scratch arm", pruned.node_id)
            return
        self._add(scheduler, pruned.lineage, "pruned_scratch", pruned.step, {
            "widths": widths, "total_epochs": pruned.params.get("matched_epochs"),
            "arm_label": f"{pruned.params['arm']}_scratch"})
