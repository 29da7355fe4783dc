"""Splitting against its baselines in ONE NNI experiment: :class:`CompareTuner` (``nni-splitting compare`` in :mod:`nni_splitting.cli`).

The tuner is a :class:`~nni_splitting.tuner.SplittingTuner` with the comparison policy
(:mod:`nni_splitting.comparison_policy`) whose trials run through
``python -m nni_splitting.arms`` (which dispatches on the ``arm`` parameter).  For each seed
(``beam`` lineages, training seed ``trial.seed + lineage``):

1. the splitting lineage grows as usual (seed network, then ``max_steps`` growth steps), and a
   ``full`` trial trains the full-width model at the same time;
2. as soon as a step has reported (pruners: and the full model is trained), the tuner emits for
   that step (= its parameter ratio) the other arms (``arms`` classArg; ``baseline_steps``: only
   these steps, default all); growth trials go first whenever a slot is free:

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

import logging

from .arms import PRUNING_ARMS
from .comparison_policy import DEFAULT_ARMS, ComparisonPolicy
from .tuner import SplittingArguments, SplittingClassArgsValidator, SplittingTuner

__all__ = ["CompareTuner", "COMPARE_ARGS", "DEFAULT_ARMS"]

_logger = logging.getLogger("nni.tuner.compare")

#: classArgs of CompareTuner beyond SplittingTuner's.
COMPARE_ARGS = {"arms": list(DEFAULT_ARMS), "pruners": list(PRUNING_ARMS), "full_epochs": None,
                "finetune_epochs": None, "prune_training_steps": 50, "baseline_steps": None}


class CompareTuner(SplittingTuner):
    """Splitting lineages first, then every baseline arm at each ratio the lineages reached (see module doc).

    The same :class:`~nni_splitting.scheduler.Scheduler` as :class:`SplittingTuner`, with a
    :class:`~nni_splitting.comparison_policy.ComparisonPolicy`; nothing else differs.
    """

    def __init__(self, arms=None, pruners=None, full_epochs=None, finetune_epochs=None, prune_training_steps=50,
                 baseline_steps=None, **splitting_args):
        SplittingClassArgsValidator().validate_class_args(**splitting_args)
        args = SplittingArguments(**splitting_args)
        self.compare = {"full_epochs": full_epochs, "finetune_epochs": finetune_epochs,
                        "prune_training_steps": int(prune_training_steps)}
        if baseline_steps is not None and (not isinstance(baseline_steps, (list, tuple)) or not all(
                isinstance(k, int) and not isinstance(k, bool) and 0 <= k <= args.max_steps for k in baseline_steps)):
            raise ValueError(f"baseline_steps must be a list of growth steps 0..max_steps={args.max_steps}, "
                             f"got {baseline_steps!r}")
        self.comparison = ComparisonPolicy(args._replace(trial=dict(args.trial or {})), arms, pruners, self.compare,
                                           baseline_steps=baseline_steps)
        self.arms, self.pruners = self.comparison.arms, self.comparison.pruners
        super().__init__(policy=self.comparison, **splitting_args)
        _logger.info("CompareTuner arms %s, pruners %s, %s", self.arms, self.pruners, self.compare)
