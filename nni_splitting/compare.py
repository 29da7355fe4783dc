"""Splitting against its baselines in ONE NNI experiment: :class:`CompareTuner` and ``nni-splitting compare``.

The tuner is a :class:`~nni_splitting.tuner.SplittingTuner` whose trials run through
``python -m nni_splitting.arms`` (which dispatches on the ``arm`` parameter).  For each seed
(``beam`` lineages, training seed ``trial.seed + lineage``):

1. the splitting lineage grows as usual (seed network, then ``max_steps`` growth steps), and a
   ``full`` trial trains the full-width model at the same time;
2. once the lineage has stopped and the full model is trained, the tuner emits, for every step
   (= every parameter ratio the lineage reached), the other arms (``arms`` classArg):

   * pruners (``pruners``: l1, slim, fpgm, taylor, bn_slim) pruning the *full trial's checkpoint*
     to the step's parameter ratio, then fine-tuned (``finetune_epochs``);
   * ``random_split`` / ``new_neurons``: the seed grown with the same per-step, per-layer split
     counts as the lineage, at random (steps >= 1);
   * ``scratch``: the step's architecture trained from scratch for the lineage's total epochs (steps >= 1);
   * ``pruned_scratch``: when a pruner's trial has reported, its pruned architecture trained from
     scratch for the same epochs as ``scratch`` (arm ``<pruner>_scratch``);
   * ``uniform``: a uniform width multiplier at the step's parameter count, same epochs.

Every trial reports the same flat columns (``arm``, ``method``, ``seed``, ``params``, ``flops``,
``params_ratio``, ``epochs``, ``wall_time``, ...), so the dashboard's trial table compares them.
When all trials are done the tuner lowers ``maxTrialNumber`` and NNI ends ``DONE``.

``nni-splitting compare --config experiments/compare_digits.yml`` starts it with nnictl, waits,
writes ``results.csv`` / PNG / Markdown via :mod:`nni_splitting.report` (from NNI's REST records)
and stops the experiment by id.  Resume (``nnictl resume``) is not supported for comparisons.
"""
from __future__ import annotations

import argparse
import copy
import logging
import secrets
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

from . import lineage as lin
from .arms import GROWTH_ARMS, PRUNING_ARMS
from .lineage import Node
from .tuner import SplittingTuner

__all__ = ["CompareTuner", "COMPARE_ARGS", "DEFAULT_ARMS", "main"]

_logger = logging.getLogger("nni.tuner.compare")

DEFAULT_ARMS = ("pruning", "random_split", "new_neurons", "scratch", "pruned_scratch", "uniform")
#: classArgs of CompareTuner beyond SplittingTuner's.
COMPARE_ARGS = {"arms": list(DEFAULT_ARMS), "pruners": list(PRUNING_ARMS), "full_epochs": None,
                "finetune_epochs": None, "prune_training_steps": 50}


class CompareTuner(SplittingTuner):
    """Splitting lineages first, then every baseline arm at each ratio the lineages reached (see module doc)."""

    def __init__(self, arms=None, pruners=None, full_epochs=None, finetune_epochs=None, prune_training_steps=50,
                 **splitting_args):
        super().__init__(**splitting_args)
        self.arms = list(arms if arms is not None else DEFAULT_ARMS)
        self.pruners = list(pruners if pruners is not None else PRUNING_ARMS)
        bad = [a for a in self.arms if a not in DEFAULT_ARMS] + [p for p in self.pruners if p not in PRUNING_ARMS]
        if bad:
            raise ValueError(f"unknown arms/pruners {bad}; arms: {list(DEFAULT_ARMS)}, pruners: {list(PRUNING_ARMS)}")
        self.compare = {"full_epochs": full_epochs, "finetune_epochs": finetune_epochs,
                        "prune_training_steps": int(prune_training_steps)}
        self._emitted: set = set()   # lineages whose arms were queued
        _logger.info("CompareTuner arms %s, pruners %s, %s", self.arms, self.pruners, self.compare)

    # -- splitting trials carry arm and cumulative accounting
    def _params(self, node: Node, widths, width_multiplier, plan, parent: Optional[Node]) -> dict:
        settings = super()._params(node, widths, width_multiplier, plan, parent)
        result = (parent.result or {}) if parent else {}
        settings.update(arm="splitting", ancestor_epochs=result.get("epochs", 0),
                        ancestor_wall_time=result.get("wall_time", 0.0))
        return settings

    def _start(self):
        if self._started:
            return
        super()._start()
        for lineage in range(self.args.beam):
            self._add_arm(lineage, "full", 0, {"widths": None, "width_multiplier": 1.0})

    # -- arm nodes
    def _arm_params(self, lineage: int, arm: str, step: int, extra: dict) -> dict:
        settings = dict(self.args.trial)
        settings["seed"] = int(settings.get("seed", 0)) + lineage
        settings.update(model=self.args.model, arm=arm, lineage=lineage, step=step, epsilon=self.args.epsilon,
                        **{k: v for k, v in self.compare.items() if v is not None})
        settings.update(extra)
        return settings

    def _add_arm(self, lineage: int, arm: str, step: int, extra: dict):
        node = Node(f"{arm}-l{lineage}s{step}-{secrets.token_hex(3)}", -1 - lineage, step, 0, "")
        node.params = self._arm_params(lineage, arm, step, extra)
        node.params["node_id"] = node.node_id
        self._add(node)

    @staticmethod
    def _is_arm(node: Optional[Node]) -> bool:
        return node is not None and node.lineage < 0

    def _full(self, lineage: int) -> Optional[Node]:
        for node in self._nodes.values():
            if node.lineage == -1 - lineage and node.params.get("arm") == "full" and node.status == "succeeded":
                return node
        return None

    def _full_failed(self, lineage: int) -> bool:
        fulls = [n for n in self._nodes.values() if n.lineage == -1 - lineage and n.params.get("arm") == "full"]
        return bool(fulls) and all(n.status == "failed" for n in fulls)

    def _maybe_emit(self, lineage: int):
        """Queue the baselines of a lineage once it has stopped and its full model is trained (or failed)."""
        if lineage in self._emitted or lineage not in self._stopped:
            return
        full = self._full(lineage)
        if full is None and not self._full_failed(lineage):
            return
        self._emitted.add(lineage)
        steps = sorted((n for n in self._nodes.values() if n.lineage == lineage and n.status == "succeeded"),
                       key=lambda n: (n.step, n.attempt))
        by_step: Dict[int, Node] = {}
        for node in steps:
            by_step[node.step] = node
        chain = [by_step[k] for k in sorted(by_step)]
        if not chain:
            return
        seed_widths = [int(w) for w in str(chain[0].result.get("widths", "")).split(",") if w]
        counts: List[dict] = []
        for node in chain:
            result = node.result or {}
            if node.step > 0:
                plan = node.params.get("split_plan") or {}
                counts.append({layer: len(idx) for layer, idx in plan.items()})
            if "pruning" in self.arms and full is not None:
                for pruner in self.pruners:
                    self._add_arm(lineage, pruner, node.step, {
                        "full_checkpoint": full.result.get("checkpoint", ""),
                        "target_ratio": float(result["params"]) / float(full.result["params"]),
                        "prior_epochs": full.result.get("epochs", 0),
                        "prior_wall_time": full.result.get("wall_time", 0.0),
                        "matched_epochs": int(result.get("epochs") or 0) or None})
            if node.step > 0:
                for arm in GROWTH_ARMS:
                    if arm in self.arms:
                        self._add_arm(lineage, arm, node.step, {"widths_seed": seed_widths,
                                                                "split_counts": copy.deepcopy(counts)})
                if "scratch" in self.arms:
                    self._add_arm(lineage, "scratch", node.step, {
                        "widths": [int(w) for w in str(result.get("widths", "")).split(",") if w],
                        "total_epochs": int(result.get("epochs") or 0) or None})
            if "uniform" in self.arms:
                self._add_arm(lineage, "uniform", node.step, {"target_params": int(result["params"]),
                                                             "total_epochs": int(result.get("epochs") or 0) or None})
        _logger.info("lineage %d: queued the baselines of %d step(s)", lineage, len(chain))

    def _add_pruned_scratch(self, pruned: Node):
        """Queue the pruner's architecture, trained from scratch for the lineage's epochs at that ratio."""
        widths = [int(w) for w in str((pruned.result or {}).get("widths", "")).split(",") if w]
        if not widths:
            _logger.warning("pruner trial %s reported no widths: no pruned_scratch arm", pruned.node_id)
            return
        pruner = pruned.params["arm"]
        self._add_arm(-1 - pruned.lineage, "pruned_scratch", pruned.step, {
            "widths": widths, "total_epochs": pruned.params.get("matched_epochs"),
            "arm_label": f"{pruner}_scratch"})

    def _stop(self, lineage: int, reason: str):
        super()._stop(lineage, reason)
        if lineage >= 0:
            self._maybe_emit(lineage)

    def _failed(self, node: Node, why: str):
        if not self._is_arm(node):
            return super()._failed(node, why)
        node.status = "failed"
        _logger.warning("arm trial %s failed: %s", node.node_id, why)
        if node.params.get("arm") == "full":
            self._maybe_emit(-1 - node.lineage)
        self._save_state()

    def receive_trial_result(self, parameter_id, parameters, value, **kwargs):
        try:
            with self._lock:
                reported = self._nodes.get(value.get("node")) if isinstance(value, dict) else None
                node = reported or self._node_for(parameter_id, parameters)
                if self._is_arm(node):
                    node.trial_id = kwargs.get("trial_job_id") or node.trial_id
                    node.result = value if isinstance(value, dict) else {"default": value}
                    if node.status not in ("succeeded", "superseded"):
                        node.status = "succeeded"
                        _logger.info("arm trial %s succeeded: %s", node.node_id, node.result)
                        if node.params.get("arm") == "full":
                            self._maybe_emit(-1 - node.lineage)
                        elif node.params.get("arm") in PRUNING_ARMS and "pruned_scratch" in self.arms:
                            self._add_pruned_scratch(node)
                        self._save_state()
                    handled = True
                else:
                    handled = False
            if handled:
                self._flush()
                return
        except Exception:
            _logger.exception("CompareTuner.receive_trial_result failed for parameter id %s", parameter_id)
            return
        super().receive_trial_result(parameter_id, parameters, value, **kwargs)


# ---------------------------------------------------------------------------- the command


def _run(args) -> int:
    from . import experiment as ex
    from . import report

    config = ex.load_config(args.config)
    tuner = config.get("tuner") or {}
    class_args = dict(tuner.get("classArgs") or {})
    try:  # nnictl does not validate classArgs: build the tuner once here to fail early
        CompareTuner(**class_args).end_hook = None
    except (ValueError, TypeError) as error:
        print(f"nni-splitting compare: bad classArgs: {error}", file=sys.stderr)
        return 2
    experiment_id, port = ex.start(config, args.config, args.port, args.workdir)
    print(f"experiment {experiment_id} started; dashboard: http://localhost:{port}  (NNI's web server listens on "
          f"every interface of this machine)", flush=True)
    from .__main__ import _progress

    def on_end(base: str, final: str):
        rows = report.rows_from_rest(base, experiment_id)
        out = Path(args.out)
        report.write_outputs(rows, out, title=f"experiment {experiment_id}")
        print(report.markdown_summary(rows))
        print(f"wrote {out}/results.csv, {out}/results.md, {out}/compare.png")
        if args.screenshot:
            from subprocess import run
            run([sys.executable, str(Path(__file__).resolve().parents[1] / "scripts" / "screenshot_dashboard.py"),
                 "--port", str(port), "--out", args.screenshot], check=False)

    final = ex.run_until_done(experiment_id, port, args.timeout, on_end, keep=args.keep,
                              stopped_note=f"view later: nnictl view {experiment_id} --port {port}; "
                                           f"report: nni-splitting report {experiment_id}",
                              on_poll=_progress(time.time()))
    return 0 if final in ex.SUCCESS_STATES else 1


def main(argv=None) -> int:
    """``nni-splitting compare --config experiments/compare_digits.yml [--out results] [--port P]``."""
    parser = argparse.ArgumentParser(prog="nni-splitting compare",
                                     description="Run splitting and its baselines as one NNI experiment.")
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", default="results", help="folder for results.csv, results.md, compare.png")
    parser.add_argument("--port", type=int)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--workdir", help="experimentWorkingDirectory override")
    parser.add_argument("--keep", action="store_true", help="leave the experiment running (for the dashboard)")
    parser.add_argument("--screenshot", help="also save a screenshot of the dashboard's trial table here")
    args = parser.parse_args(argv)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
