"""Former home of the nnictl/REST helpers, kept so that old imports keep working (public names only).

The code now lives in :mod:`nni_splitting.nni`: :mod:`~nni_splitting.nni.config` (config files),
:mod:`~nni_splitting.nni.nnictl` (create / resume / stop), :mod:`~nni_splitting.nni.rest` (NNI's REST
API) and :mod:`~nni_splitting.nni.table` (the lineage table).  New code should import from there.
The classArgs check before a start (``validate_config``) moved to the CLI
(:func:`nni_splitting.cli.validate_config`), which may import the tuner.
"""
import logging

from .nni.config import is_splitting_tuner, load_config, write_config
from .nni.nnictl import create, free_port, nnictl_command, run_nnictl, run_until_done, start, stop, venv_env
from .nni.rest import (FINAL_STATES, SUCCESS_STATES, dispatcher_rest_url, finish_from_dispatcher, read_trials,
                       rest, rest_url, status, trial_parameters, wait)
from .nni.table import format_table, lineage_rows

__all__ = [
    "FINAL_STATES", "SUCCESS_STATES", "free_port", "nnictl_command", "run_nnictl", "venv_env", "load_config",
    "write_config", "is_splitting_tuner", "create", "start", "stop", "run_until_done", "rest_url", "rest",
    "status", "wait", "read_trials", "lineage_rows", "format_table", "dispatcher_rest_url", "trial_parameters",
    "finish_from_dispatcher",
]

logger = logging.getLogger(__name__)
