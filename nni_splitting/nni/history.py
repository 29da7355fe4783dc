"""The finished trials of an earlier NNI experiment, read from its own database, so that a new experiment
continues it (the tuners' ``continue_from`` classArg): its lineages grow on from their tips up to the
new ``max_steps``, and nothing it finished runs again.

NNI 3.0 keeps an experiment's records in ``<experimentWorkingDirectory>/<id>/db/nni.sqlite``: the table
``TrialJobEvent`` (a trial's events; the one that hands it its parameters carries them in ``data``) and
``MetricData`` (``FINAL`` rows: the trial's final result, JSON encoded twice).  The experiment may be
stopped: nothing here needs its manager.
"""
from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any, Dict, List, Optional

from nni_splitting.nni.rest import decode_metric

__all__ = ["experiment_references", "experiment_folder", "finished_trials"]


def experiment_references(continue_from) -> List[str]:
    """``continue_from`` (None, one experiment id or folder, or a list of them) as a list, oldest first."""
    return [continue_from] if isinstance(continue_from, str) else list(continue_from or [])


def experiment_folder(reference: str, workdir: Optional[str] = None) -> Path:
    """The folder of the experiment ``reference``: a path to it, or an experiment id looked up in ``workdir``,
    in the working directory of the experiment this process belongs to (``NNI_CHECKPOINT_DIRECTORY``) and in
    ``~/nni-experiments``.  ``ValueError`` naming the places looked at when none holds its database."""
    if not isinstance(reference, str) or not reference:
        raise ValueError(f"continue_from must be an experiment id or folder, got {reference!r}")
    candidates = [Path(reference).expanduser()]
    if os.sep not in reference:
        checkpoints = os.environ.get("NNI_CHECKPOINT_DIRECTORY")  # <workdir>/<this id>/checkpoint
        for folder in (workdir, Path(checkpoints).parent.parent if checkpoints else None, "~/nni-experiments"):
            if folder:
                candidates.append(Path(folder).expanduser() / reference)
    for candidate in candidates:
        if (candidate / "db" / "nni.sqlite").is_file():
            return candidate.resolve()
    raise ValueError(f"no NNI experiment {reference!r}: none of {[str(c) for c in candidates]} has db/nni.sqlite")


def finished_trials(folder) -> List[Dict[str, Any]]:
    """``[{"parameter", "value", "trialJobId"}]`` (the entries of NNI's ``import_data``) of every trial of the
    experiment in ``folder`` that reported a final result, whatever its end (a trial killed after it
    reported counts: the result and the files it names are there), in the order they started."""
    path = Path(folder) / "db" / "nni.sqlite"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as database:
        events = database.execute("SELECT trialJobId, data FROM TrialJobEvent WHERE data IS NOT NULL "
                                  "ORDER BY timestamp").fetchall()
        finals = database.execute("SELECT trialJobId, data FROM MetricData WHERE type = 'FINAL' "
                                  "ORDER BY timestamp").fetchall()
    parameters: Dict[str, Any] = {}
    for trial_id, data in events:
        try:
            record = json.loads(data)
        except (TypeError, ValueError):
            continue
        if isinstance(record, dict) and isinstance(record.get("parameters"), dict):
            parameters.setdefault(trial_id, record["parameters"])
    results = {}
    for trial_id, data in finals:
        results.setdefault(trial_id, decode_metric(data))
    return [{"parameter": parameters[trial_id], "value": results[trial_id], "trialJobId": trial_id}
            for trial_id in parameters if trial_id in results]
