"""The NNI side of nni-splitting: the tuners, their scheduler, the trials and comparison arms, reports and the CLI.

* :mod:`~nni_splitting.nni.tuner` / :mod:`~nni_splitting.nni.compare`: ``SplittingTuner`` and ``CompareTuner``
  (thin NNI tuners over the pure :mod:`~nni_splitting.nni.scheduler`; classArgs in :mod:`~nni_splitting.nni.tuner_args`);
* :mod:`~nni_splitting.nni.trial` (growth trials; settings in :mod:`~nni_splitting.nni.settings`) and
  :mod:`~nni_splitting.nni.arms` (comparison arms, registered as :class:`~nni_splitting.nni.arms.ArmSpec`);
* :mod:`~nni_splitting.nni.report`, :mod:`~nni_splitting.nni.claims`, :mod:`~nni_splitting.nni.summary`: results
  tables, plots and claims; :mod:`~nni_splitting.nni.nas`: NNI HPO / NAS width searches;
* :mod:`~nni_splitting.nni.cli`: ``nni-splitting`` (run, compare, report, search, ...);
* :mod:`~nni_splitting.nni.config`: read a config as nnictl does (paths and folder defaults absolute);
* :mod:`~nni_splitting.nni.nnictl`: create / resume / stop experiments (NNI's server on loopback);
* :mod:`~nni_splitting.nni.rest`: NNI's REST API (status, trials, waiting, ``maxTrialNumber``);
* :mod:`~nni_splitting.nni.table`: the lineage table and progress lines the CLI prints;
* :mod:`~nni_splitting.nni.screenshot`: a headless-Chromium screenshot of the dashboard.

The helpers (config, nnictl, rest, table, screenshot) import none of the tuner modules.
"""
import logging

__all__ = ["config", "nnictl", "rest", "table"]

logger = logging.getLogger(__name__)
