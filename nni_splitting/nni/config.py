"""Read, complete and write NNI v2 experiment configs (YAML) the way nnictl reads them.

Relative paths in a config are relative to the config file's folder, and NNI's defaults for
``trialCodeDirectory`` and a custom tuner's ``codeDirectory`` are that folder too.  Since the CLI
hands nnictl a *copy* of the config written elsewhere, :func:`load_config` makes every such path
absolute, defaults included; otherwise the copy's (temporary) folder would become the trials'
working directory.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict

import yaml

__all__ = ["load_config", "write_config", "is_splitting_tuner", "PATH_KEYS"]

logger = logging.getLogger(__name__)

#: Top-level keys holding a path relative to the config file.
PATH_KEYS = ("trialCodeDirectory", "searchSpaceFile", "experimentWorkingDirectory")


def load_config(path) -> Dict[str, Any]:
    """Read an NNI v2 YAML config; relative paths and NNI's folder defaults made absolute.

    Parameters
    ----------
    path : str or Path
        The config file.

    Returns
    -------
    dict
        The config with absolute ``trialCodeDirectory`` (default: the file's folder, as NNI's),
        ``searchSpaceFile``, ``experimentWorkingDirectory`` and, for a tuner given by
        ``className``, ``tuner.codeDirectory`` (default: the file's folder, as NNI's).

    Raises
    ------
    FileNotFoundError
        When ``path`` is not a file (the message names it).
    ValueError
        When the file is not a YAML mapping.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no config file {str(path)!r}")
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ValueError(f"config {str(path)!r} is not a YAML mapping: {config!r:.80}")
    base = path.parent

    def absolute(value):
        return str((base / Path(str(value)).expanduser()).resolve()) if value is not None else value

    config.setdefault("trialCodeDirectory", ".")
    for key in PATH_KEYS:
        if key in config:
            config[key] = absolute(config[key])
    tuner = config.get("tuner") or {}
    if "className" in tuner:
        tuner.setdefault("codeDirectory", ".")
    if "codeDirectory" in tuner:
        tuner["codeDirectory"] = absolute(tuner["codeDirectory"])
    return config


def write_config(config: Dict[str, Any], path) -> Path:
    """Write a config dict as YAML (absolute paths recommended, see :func:`load_config`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def is_splitting_tuner(tuner: Dict[str, Any]) -> bool:
    """True when a config's ``tuner`` section names the splitting tuner (registered name or class)."""
    return str(tuner.get("name", "")).lower() == "splitting" or \
        str(tuner.get("className", "")).endswith("SplittingTuner")
