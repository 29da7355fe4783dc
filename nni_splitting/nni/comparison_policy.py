"""The comparison's :class:`~nni_splitting.nni.scheduler.Policy`: the baseline arms beside each splitting lineage.

For each seed (lineage ``i``, training seed ``trial.seed + i``) a ``full`` arm trains the full-width
model from the start when an active arm needs it (the pruners); as soon as a step of the lineage has
reported, every active arm's :class:`~nni_splitting.nni.arms.ArmSpec` says what to queue at that step
(its ``emit``: pruners of the full checkpoint to the step's ratio once the full model is trained,
``random_split`` / ``new_neurons`` with the lineage's per-step split counts, ``scratch`` with the
step's widths, ``uniform`` and ``plain`` at the step's parameter count), and when a trial of an arm
has succeeded, the arms that follow it queue theirs (``pruned_scratch``: the pruned architecture from
scratch, label ``<pruner>_scratch``). Arm nodes are :data:`~nni_splitting.nni.lineage.NodeKind.ARM` nodes
of the same :class:`~nni_splitting.nni.scheduler.Scheduler`; their ``lineage`` is the seed they belong to.
An arm added with :func:`~nni_splitting.nni.arms.register_arm` is queued here with no other edit.

Resumable (``nnictl resume``): the imported trials are growth steps and arms again
(:func:`~nni_splitting.nni.lineage.node_kind`), an arm already done or queued for its (seed, step, arm,
label) is never queued twice, and :meth:`ComparisonPolicy.start` queues what the imported steps lack.
"""
from __future__ import annotations

import copy
import logging
import secrets
from typing import Dict, List, Optional, Sequence

from nni_splitting.nni.arms import ARM_SPECS, PRUNING_ARMS, StepView, comparison_switches
from nni_splitting.nni.lineage import Node, NodeKind, NodeStatus
from nni_splitting.nni.scheduler import Policy, Scheduler, lineage_entry

__all__ = ["ComparisonPolicy", "DEFAULT_ARMS"]

logger = logging.getLogger(__name__)

#: The ``arms`` classArg's names when this module was imported (an arm registered later is accepted too).
DEFAULT_ARMS = comparison_switches()


def _widths(text) -> List[int]:
    return [int(w) for w in str(text or "").split(",") if w]


class ComparisonPolicy(Policy):
    """Queue the baseline arms of each lineage (see the module docstring); what each arm queues, and when,
    is its :class:`~nni_splitting.nni.arms.ArmSpec`'s ``emit`` / ``after``.

    Parameters
    ----------
    args
        The tuner's arguments (model, epsilon, beam, trial settings).
    arms, pruners
        Arm switches (:func:`~nni_splitting.nni.arms.comparison_switches`, default all) and pruners
        (:data:`nni_splitting.nni.arms.PRUNING_ARMS`, default all) to run.
    extra
        Settings every arm trial gets (``full_epochs``, ``finetune_epochs``, ``prune_training_steps``;
        None values are left out).
    baseline_steps
        The growth steps (0 = the seed) that get baselines; default: every step the lineage reaches.
    plain_families
        Other network families trained at each step's parameter count (arm ``plain``): mappings with
        ``model`` (a registered name), optional ``widths`` (the base widths the multiplier scales) and
        ``label`` (the reported arm, default ``plain_<model>``). Empty: no ``plain`` arm.
    """

    def __init__(self, args, arms: Optional[Sequence[str]] = None, pruners: Optional[Sequence[str]] = None,
                 extra: Optional[dict] = None, baseline_steps: Optional[Sequence[int]] = None,
                 plain_families: Optional[Sequence[dict]] = None):
        self.args = args
        switches = comparison_switches()
        self.arms = list(arms if arms is not None else switches)
        self.pruners = list(pruners if pruners is not None else PRUNING_ARMS)
        bad = [a for a in self.arms if a not in switches] + [p for p in self.pruners if p not in PRUNING_ARMS]
        if bad:
            raise ValueError(f"unknown arms/pruners {bad}; arms: {list(switches)}, pruners: {list(PRUNING_ARMS)}")
        self.extra = {k: v for k, v in (extra or {}).items() if v is not None}
        self.baseline_steps = None if baseline_steps is None else {int(k) for k in baseline_steps}
        self.options = {"plain_families": [dict(family) for family in (plain_families or [])]}
        self.queued: set = set()    # (lineage, step, arm, label) already queued

    def _active(self) -> List[str]:
        """The registered arms this comparison runs: switched on, and for pruners, chosen."""
        return [name for name, spec in ARM_SPECS.items() if spec.switch in self.arms
                and (name not in PRUNING_ARMS or name in self.pruners)]

    # ------------------------------------------------------------------ Policy hooks

    def start(self, scheduler: Scheduler) -> None:
        """Queue the full models; after ``nnictl resume``, also every arm the imported steps still lack."""
        if any(ARM_SPECS[name].needs_full for name in self._active()):  # the pruners start from the full model
            for lineage in range(self.args.beam):
                self._add(scheduler, lineage, "full", 0, {"widths": None, "width_multiplier": 1.0})
        for lineage in range(self.args.beam):
            self._emit(scheduler, lineage)
        for node in [n for n in scheduler.nodes.values() if n.kind == NodeKind.ARM and n.status == NodeStatus.SUCCEEDED]:
            self.arm_ended(scheduler, node)  # imported arms: what follows them (pruned_scratch) if not done yet

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
        elif node.status == NodeStatus.SUCCEEDED:
            for name in self._active():
                spec = ARM_SPECS[name]
                if spec.after is not None and arm in spec.follows:
                    for params in spec.after(node.params, node.result or {}):
                        self._add(scheduler, node.lineage, name, node.step, params)

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
        label = settings.get("arm_label", "")
        if any(n.kind == NodeKind.ARM and (n.lineage, n.step, n.params.get("arm"), n.params.get("arm_label", ""))
               == (lineage, step, arm, label) and (n.status == NodeStatus.SUCCEEDED or n.status.active)
               for n in scheduler.nodes.values()):
            logger.info("arm %s %s of lineage %d step %d is done or queued already (resumed experiment)",
                        arm, label, lineage, step)
            return
        scheduler.add_arm(lineage, f"{arm}-l{lineage}s{step}-{secrets.token_hex(3)}", step, settings)

    def _full(self, scheduler: Scheduler, lineage: int) -> Optional[Node]:
        return next((n for n in scheduler.nodes.values() if n.kind == NodeKind.ARM and n.lineage == lineage
                     and n.params.get("arm") == "full" and n.status == NodeStatus.SUCCEEDED), None)

    def _emit(self, scheduler: Scheduler, lineage: int) -> None:
        """Ask every active arm what to queue at each reported step of ``lineage`` (steps outside
        ``baseline_steps``, when given, get none); each (step, arm, label) is queued once."""
        full = self._full(scheduler, lineage)
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
            view = StepView(node.step, result, full.result if full is not None else None, list(seed_widths),
                            copy.deepcopy(counts), self.options)
            for name in self._active():
                spec = ARM_SPECS[name]
                if spec.emit is None or (lineage, node.step, name, "") in self.queued:
                    continue
                emitted = spec.emit(view)
                if emitted is None:
                    continue  # not ready (e.g. the full model is still training): asked again later
                self.queued.add((lineage, node.step, name, ""))
                for params in emitted:
                    self._add(scheduler, lineage, name, node.step, params)
