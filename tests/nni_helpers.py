"""The nnictl / REST helpers the end-to-end tests use, under one name (``import nni_helpers as ex``).

They live in :mod:`nni_splitting.nni`: :mod:`~nni_splitting.nni.config` (config files),
:mod:`~nni_splitting.nni.nnictl` (create / resume / stop), :mod:`~nni_splitting.nni.rest` (NNI's REST
API) and :mod:`~nni_splitting.nni.table` (the lineage table).
"""
import logging

from nni_splitting.nni.config import is_splitting_tuner, load_config, write_config
from nni_splitting.nni.nnictl import create, free_port, nnictl_command, run_nnictl, run_until_done, start, stop, venv_env
from nni_splitting.nni.rest import (FINAL_STATES, SUCCESS_STATES, dispatcher_rest_url, finish_from_dispatcher, read_trials,
                       rest, rest_url, status, trial_parameters, wait)
from nni_splitting.nni.table import format_table, lineage_rows

__all__ = [
    "FINAL_STATES", "SUCCESS_STATES", "free_port", "nnictl_command", "run_nnictl", "venv_env", "load_config",
    "write_config", "is_splitting_tuner", "create", "start", "stop", "run_until_done", "rest_url", "rest",
    "status", "wait", "read_trials", "lineage_rows", "format_table", "dispatcher_rest_url", "trial_parameters",
    "finish_from_dispatcher",
]

logger = logging.getLogger(__name__)
