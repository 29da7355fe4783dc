"""Splitting against its baselines in ONE NNI experiment: :class:`CompareTuner` and ``nni-splitting compare``.

The tuner is a :class:`~nni_splitting.tuner.SplittingTuner` with the comparison policy
(:mod:`nni_splitting.comparison_policy`) whose trials run through
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
import logging
import sys
import time
from pathlib import Path

from .arms import PRUNING_ARMS
from .comparison_policy import DEFAULT_ARMS, ComparisonPolicy
from .tuner import SplittingArguments, SplittingClassArgsValidator, SplittingTuner

__all__ = ["CompareTuner", "COMPARE_ARGS", "DEFAULT_ARMS", "main"]

_logger = logging.getLogger("nni.tuner.compare")

DEFAULT_ARMS = ("pruning", "random_split", "new_neurons", "scratch", "pruned_scratch", "uniform")
#: classArgs of CompareTuner beyond SplittingTuner's.
COMPARE_ARGS = {"arms": list(DEFAULT_ARMS), "pruners": list(PRUNING_ARMS), "full_epochs": None,
                "finetune_epochs": None, "prune_training_steps": 50}


class CompareTuner(SplittingTuner):
    """Splitting lineages first, then every baseline arm at each ratio the lineages reached (see module doc).

    The same :class:`~nni_splitting.scheduler.Scheduler` as :class:`SplittingTuner`, with a
    :class:`~nni_splitting.comparison_policy.ComparisonPolicy`; nothing else differs.
    """

    def __init__(self, arms=None, pruners=None, full_epochs=None, finetune_epochs=None, prune_training_steps=50,
                 **splitting_args):
        SplittingClassArgsValidator().validate_class_args(**splitting_args)
        args = SplittingArguments(**splitting_args)
        self.compare = {"full_epochs": full_epochs, "finetune_epochs": finetune_epochs,
                        "prune_training_steps": int(prune_training_steps)}
        self.comparison = ComparisonPolicy(args._replace(trial=dict(args.trial or {})), arms, pruners, self.compare)
        self.arms, self.pruners = self.comparison.arms, self.comparison.pruners
        super().__init__(policy=self.comparison, **splitting_args)
        _logger.info("CompareTuner arms %s, pruners %s, %s", self.arms, self.pruners, self.compare)


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
