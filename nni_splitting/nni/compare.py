"""Splitting against its baselines in ONE NNI experiment: :class:`CompareTuner` (``nni-splitting compare`` in :mod:`nni_splitting.nni.cli`).

The tuner is a :class:`~nni_splitting.nni.tuner.SplittingTuner` with the comparison policy
(:mod:`nni_splitting.nni.comparison_policy`) whose trials run through
``python -m nni_splitting.nni.arms`` (which dispatches on the ``arm`` parameter).  For each seed
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
writes ``results.csv`` / PNG / Markdown via :mod:`nni_splitting.nni.report` (from NNI's REST records)
and stops the experiment by id.  ``nni-splitting resume ID`` (``nnictl resume``) continues a stopped
comparison: finished growth steps and arms are kept, the missing ones are queued (no arm runs twice).
"""
from __future__ import annotations

import logging

from nni_splitting.nni.arms import PRUNING_ARMS, comparison_switches
from nni_splitting.nni.comparison_policy import DEFAULT_ARMS, ComparisonPolicy
from nni_splitting.models import check_widths, model_class
from nni_splitting.nni.tuner import SplittingTuner
from nni_splitting.nni.tuner_args import SplittingArguments, SplittingClassArgsValidator

__all__ = ["CompareTuner", "CompareClassArgsValidator", "COMPARE_ARGS", "DEFAULT_ARMS"]

_logger = logging.getLogger("nni.tuner.compare")

#: classArgs of CompareTuner beyond SplittingTuner's.
COMPARE_ARGS = {"arms": list(DEFAULT_ARMS), "pruners": list(PRUNING_ARMS), "full_epochs": None,
                "finetune_epochs": None, "prune_training_steps": 50, "baseline_steps": None,
                "plain_families": None}


def _check_names(kind: str, value, known) -> None:
    if value is None:
        return
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{kind} must be a list of names, got {value!r}")
    bad = [v for v in value if v not in known]
    if bad:
        raise ValueError(f"unknown {kind} {bad}; known: {list(known)}")


def _check_families(families) -> None:
    """``plain_families``: a list of ``{model, widths?, label?}`` with registered model names."""
    if families is None:
        return
    if not isinstance(families, (list, tuple)):
        raise ValueError(f"plain_families must be a list of {{model, widths, label}} mappings, got {families!r}")
    for family in families:
        if not isinstance(family, dict) or "model" not in family or set(family) - {"model", "widths", "label"}:
            raise ValueError(f"each plain_families entry is a mapping with model (and optional widths, label), "
                             f"got {family!r}")
        model_class(family["model"])  # ValueError naming the known models
        if family.get("widths") is not None:
            check_widths(family["widths"], model_class(family["model"]).DEFAULT_WIDTHS,
                         model_class(family["model"]).FIXED_DEPTH, f"plain_families[{family['model']}]")
        if family.get("label") is not None and not (isinstance(family["label"], str) and family["label"]):
            raise ValueError(f"plain_families label must be a non-empty string, got {family['label']!r}")


class CompareClassArgsValidator(SplittingClassArgsValidator):
    """Checks the ``classArgs`` of :class:`CompareTuner` (:data:`COMPARE_ARGS` + SplittingTuner's);
    raises ``ValueError`` quoting the bad value.  Building no model, it is cheap."""

    def validate_class_args(self, **kwargs):
        own = {k: kwargs.pop(k) for k in list(kwargs) if k in COMPARE_ARGS}
        super().validate_class_args(**kwargs)
        _check_names("arms", own.get("arms"), comparison_switches())  # arms registered since import too
        _check_names("pruners", own.get("pruners"), PRUNING_ARMS)
        for key in ("full_epochs", "finetune_epochs", "prune_training_steps"):
            value = own.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{key} must be an int >= 1, got {value!r}")
        _check_families(own.get("plain_families"))
        steps, max_steps = own.get("baseline_steps"), kwargs.get("max_steps", SplittingArguments().max_steps)
        if steps is not None and (not isinstance(steps, (list, tuple)) or not all(
                isinstance(k, int) and not isinstance(k, bool) and 0 <= k <= max_steps for k in steps)):
            raise ValueError(f"baseline_steps must be a list of growth steps 0..max_steps={max_steps}, got {steps!r}")


class CompareTuner(SplittingTuner):
    """Splitting lineages first, then every baseline arm at each ratio the lineages reached (see module doc).

    The same :class:`~nni_splitting.nni.scheduler.Scheduler` as :class:`SplittingTuner`, with a
    :class:`~nni_splitting.nni.comparison_policy.ComparisonPolicy`; nothing else differs.
    """

    def __init__(self, arms=None, pruners=None, full_epochs=None, finetune_epochs=None, prune_training_steps=50,
                 baseline_steps=None, plain_families=None, **splitting_args):
        CompareClassArgsValidator().validate_class_args(
            arms=arms, pruners=pruners, full_epochs=full_epochs, finetune_epochs=finetune_epochs,
            prune_training_steps=prune_training_steps, baseline_steps=baseline_steps,
            plain_families=plain_families, **splitting_args)
        args = SplittingArguments(**splitting_args)
        self.compare = {"full_epochs": full_epochs, "finetune_epochs": finetune_epochs,
                        "prune_training_steps": int(prune_training_steps)}
        self.comparison = ComparisonPolicy(args._replace(trial=dict(args.trial or {})), arms, pruners, self.compare,
                                           baseline_steps=baseline_steps, plain_families=plain_families)
        self.arms, self.pruners = self.comparison.arms, self.comparison.pruners
        super().__init__(policy=self.comparison, **splitting_args)
        _logger.info("CompareTuner arms %s, pruners %s, %s", self.arms, self.pruners, self.compare)
