"""What the splitting tuner reads inside NNI's dispatcher: its REST API and the trials' files on disk.

:class:`DispatcherClient` asks NNI's REST API (:mod:`nni_splitting.nni.rest`) the few things the
tuner needs; :func:`verified_result` rebuilds the final result of a trial from its
``splitting.json`` when its checkpoint matches the SHA-256 the trial stored there (work cut off
mid-write is not adopted after ``nnictl resume``).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import List, Optional, Tuple

from nni_splitting.growth.checkpoint import file_sha256
from nni_splitting.nni import rest as nni_rest
from nni_splitting.nni.scheduler import ENDED_STATES
from nni_splitting.common.storage import INDEX_FILE, StorageMap, read_json, trial_output_dir

__all__ = ["DispatcherClient", "verified_result", "check_node_files", "index_candidates"]

logger = logging.getLogger(__name__)
_logger = logging.getLogger("nni.tuner.splitting")  # lands in the experiment's dispatcher.log


class DispatcherClient:
    """What the tuner asks NNI's REST API from inside the dispatcher (nothing outside one).

    Tests replace the tuner's ``client`` with a fake of the same four methods.
    """

    def __init__(self, base: Optional[str] = None):
        self.base = base if base is not None else nni_rest.dispatcher_rest_url()

    def active_trials(self) -> int:
        """Number of NNI trials waiting or running (0 when the REST API is not reachable)."""
        if self.base is None:
            return 0
        try:
            return sum(job.get("status") not in ENDED_STATES for job in nni_rest.rest(self.base, "trial-jobs") or [])
        except Exception as error:
            _logger.warning("cannot list trials through the REST API: %s", error)
            return 0

    def recovered_trials(self) -> List[Tuple[str, dict, str]]:
        """``(trial id, parameters, state)`` of trials not ended when the experiment was resumed."""
        if self.base is None:
            return []
        try:
            jobs = nni_rest.rest(self.base, "trial-jobs") or []
        except Exception as error:
            _logger.warning("cannot list trials through the REST API (%s): trials re-run after a resume "
                            "will not be tracked", error)
            return []
        return [(job.get("trialJobId"), nni_rest.trial_parameters(job), job.get("status", ""))
                for job in jobs if job.get("status") not in ENDED_STATES
                and "node_id" in nni_rest.trial_parameters(job)]

    def trial_state(self, trial_id: str) -> str:
        """NNI's state of one trial ("" when unknown)."""
        if self.base is None or not trial_id:
            return ""
        return (nni_rest.rest(self.base, f"trial-jobs/{trial_id}") or {}).get("status", "")

    def finish(self) -> Optional[int]:
        """Let NNI reach DONE: lower maxTrialNumber to the number of trials."""
        return nni_rest.finish_from_dispatcher()


def verified_result(index_path, node_id: str, storage: Optional[StorageMap] = None) -> Optional[dict]:
    """The final result of a finished trial rebuilt from its ``splitting.json``, or None.

    Only when the file names ``node_id``, and its checkpoint exists with the SHA-256 the trial
    stored (``checkpoint_sha256``), and its splits file exists: work cut off mid-write is not adopted.
    """
    storage = storage or StorageMap()
    try:
        info = read_json(index_path)
        checkpoint = storage.to_local(info["checkpoint"])
        if info.get("node_id") != node_id or not info.get("checkpoint_sha256"):
            return None
        if file_sha256(checkpoint) != info["checkpoint_sha256"]:
            _logger.warning("%s: checkpoint %s does not match its SHA-256: not adopted", node_id, checkpoint)
            return None
        if info.get("splits") and not Path(storage.to_local(info["splits"])).is_file():
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {"default": info.get("accuracy"), "val_accuracy": info.get("val_accuracy"), "params": info["params"],
            "flops": info["flops"], "step": info.get("step"), "lineage": info.get("lineage"), "node": node_id,
            "parent": info.get("parent", ""), "method": "splitting", "adopted": True,
            "widths": ",".join(str(w) for w in info.get("widths", [])), "checkpoint": info["checkpoint"],
            "splits": info.get("splits", ""), "indexes": storage.to_trial(str(index_path))}


def check_node_files(node_id: str, trial_id: Optional[str], info: dict, storage: StorageMap) -> Optional[str]:
    """None when a node's checkpoint and splits file match the SHA-256 its trial stored in ``splitting.json``
    (files of older trials, without one, pass), else why they do not."""
    for key, what in (("checkpoint", "checkpoint"), ("splits", "splits file")):
        expected = info.get(f"{key}_sha256")
        if not info.get(key) or not expected:
            continue
        path = storage.to_local(info[key])
        try:
            actual = file_sha256(path)
        except OSError as error:
            return f"the {what} {path!r} of {node_id} cannot be read: {error}"
        if actual != expected:
            return (f"the {what} {path!r} of {node_id} (trial {trial_id or '?'}) does not match the "
                    f"SHA-256 in its {INDEX_FILE} (truncated or changed after it was written)")
    return None


def index_candidates(trial_id: Optional[str], storage_path: Optional[str], storage: StorageMap,
                     experiment_id: Optional[str]) -> List[Path]:
    """Where a trial's ``splitting.json`` may be: under the shared ``storage_path``, or (local training
    service) ``<experiment dir>/environments/<env>/trials/<trial id>/``."""
    if not trial_id:
        return []
    if storage_path:
        folder = trial_output_dir(storage_path, experiment_id, trial_id, None)
        return [Path(storage.to_local(str(folder / INDEX_FILE)))] if folder else []
    checkpoints = os.environ.get("NNI_CHECKPOINT_DIRECTORY")
    if not checkpoints:
        return []
    return sorted(Path(checkpoints).parent.glob(f"environments/*/trials/{trial_id}/{INDEX_FILE}"))
