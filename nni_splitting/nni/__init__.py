"""The NNI side of nni-splitting that is not the tuner: config files, nnictl, the REST API, printing.

* :mod:`~nni_splitting.nni.config`: read a config as nnictl does (paths and folder defaults absolute);
* :mod:`~nni_splitting.nni.nnictl`: create / resume / stop experiments (NNI's server on loopback);
* :mod:`~nni_splitting.nni.rest`: NNI's REST API (status, trials, waiting, ``maxTrialNumber``);
* :mod:`~nni_splitting.nni.table`: the lineage table and progress lines the CLI prints;
* :mod:`~nni_splitting.nni.screenshot`: a headless-Chromium screenshot of the dashboard.

The tuner and the CLI import these modules; they import neither.
"""
import logging

__all__ = ["config", "nnictl", "rest", "table"]

logger = logging.getLogger(__name__)
