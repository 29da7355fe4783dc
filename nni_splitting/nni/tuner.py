"""Splitting steepest descent as an NNI tuner: grow a network by splitting its most useful neurons.

Paper: Liu, Wu & Wang, "Splitting Steepest Descent for Growing Neural Architectures", NeurIPS 2019
(https://arxiv.org/abs/1910.02366), Algorithm 1.  Official code: https://github.com/klightz/splitting

Each trial (:mod:`nni_splitting.nni.trial`) trains one network, computes the splitting index
``lambda_min`` of every neuron and saves them next to its checkpoint.  When a trial succeeds the
tuner reads that file, picks the neurons to split (top ``m`` by most negative index below
``threshold``, optionally per unit of cost and within a budget) and emits the grown network as the
next trial, whose parent is the finished one.  ``beam`` lineages grow side by side, each from its
own random initialisation.

The tuner is a thin NNI adapter (parameter-id map, ``st_callback`` pushes, ``import_data`` replay,
classArgs) over the pure, thread-free :class:`~nni_splitting.nni.scheduler.Scheduler` (lineage state
machine, growth, retry and recovery policies); lineage maths is :mod:`nni_splitting.nni.lineage`, paths
are :mod:`nni_splitting.common.storage`, NNI's REST API and trial outputs are :mod:`nni_splitting.nni.dispatcher`.

NNI specifics (see docs/nni.md): a child cannot be emitted before its parent finished, so
``generate_parameters`` raises ``NoMoreTrialError`` and keeps the parameter id; the child is pushed
later through ``st_callback``.  Results, trial ends and requests come on two threads, so state is
guarded by a lock.  Every entry point catches and logs its exceptions, because an exception kills
NNI's dispatcher without any visible error.  When growth is over the tuner lowers the experiment's
``maxTrialNumber`` to the number of trials it created, through the REST API, so that NNI reaches
``DONE`` instead of idling in ``TUNER_NO_MORE_TRIAL``.
"""
from __future__ import annotations

import copy
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Callable, Dict, List, Optional

import nni
import torch
from nni.tuner import Tuner

import nni_splitting.nni.lineage as lin
from nni_splitting.growth.counting import count_model
from nni_splitting.common.defaults import EPSILON, GROW_RATIO, METHOD
from nni_splitting.nni.lineage import Node, NodeStatus
from nni_splitting.models import build_model
from nni_splitting.nni.dispatcher import DispatcherClient, check_node_files, index_candidates, verified_result
from nni_splitting.nni.history import experiment_folder, experiment_references, finished_trials
from nni_splitting.nni.scheduler import RESUME_TIMEOUT_S, Policy, Scheduler
from nni_splitting.common.storage import StorageMap, atomic_write_json, read_json
from nni_splitting.nni.tuner_args import COSTS, SplittingArguments, SplittingClassArgsValidator  # the classArgs (re-exported)

__all__ = ["SplittingTuner", "SplittingArguments", "SplittingClassArgsValidator", "COSTS", "exact_counter"]

logger = logging.getLogger(__name__)
# A child of NNI's "nni" logger, so the messages land in the experiment's dispatcher.log.
_logger = logging.getLogger("nni.tuner.splitting")

#: ``grow_ratio`` used when neither ``grow_ratio`` nor ``max_splits`` is given.
DEFAULT_GROW_RATIO = GROW_RATIO
#: Seconds between REST polls of the trials NNI re-runs itself after a resume.
RECOVERED_POLL_S = 10.0


def _experiment_id() -> Optional[str]:
    """The experiment's id as the dispatcher can know it: NNI 3.0 starts the tuner without
    ``NNI_EXP_ID``, but its ``NNI_CHECKPOINT_DIRECTORY`` is ``<experiment dir>/checkpoint``."""
    if os.environ.get("NNI_EXP_ID"):
        return os.environ["NNI_EXP_ID"]
    checkpoints = os.environ.get("NNI_CHECKPOINT_DIRECTORY")
    return Path(checkpoints).parent.name if checkpoints else None


class SplittingTuner(Tuner):
    """Grows networks by splitting steepest descent, one trial per growth step.

    Lifecycle of a lineage: the seed trial (step 0) trains the seed network; each succeeded trial
    is the parent of the next (step + 1), grown by the neurons :func:`~nni_splitting.select_neurons`
    picks from its splitting indexes.  A lineage stops at ``max_steps``, when no index is below
    ``threshold`` (splitting stability) or when the budget leaves no room.

    Failures (retry, fall back to the last good or verified checkpoint, stop early) and resume
    (:meth:`import_data` rebuilds every lineage; running trials adopted when verified, waited on or
    retried) are the scheduler's (:mod:`nni_splitting.nni.faults`); the lineages that stopped early,
    and why, are in the state file (``ended_early``) and in the CLI's final table.

    Parameters are those of :class:`SplittingArguments`; ``policy`` (not a classArg) is the
    scheduler's :class:`~nni_splitting.nni.scheduler.Policy` (the comparison passes its own).
    """

    def __init__(self, model: str = "small_cnn", model_args: Optional[dict] = None, weights: Optional[str] = None,
                 seed_widths=0.25, max_steps: int = 4,
                 grow_ratio: Optional[float] = None, max_splits: Optional[int] = None,
                 max_per_layer: Optional[int] = None, threshold: float = 0.0, epsilon: float = EPSILON,
                 method: str = METHOD, selection: str = "negative", strategy: str = "s2d", cost: str = "none",
                 budget=None, beam: int = 1, retries: int = 1,
                 trial: Optional[dict] = None, storage_path: Optional[str] = None,
                 local_storage_path: Optional[str] = None, resume_timeout: float = RESUME_TIMEOUT_S,
                 lineage_settings: Optional[List[dict]] = None, continue_from=None,
                 policy: Optional[Policy] = None, **unknown):
        kwargs = dict(model=model, model_args=model_args, weights=weights, seed_widths=seed_widths, max_steps=max_steps, grow_ratio=grow_ratio,
                      max_splits=max_splits, max_per_layer=max_per_layer, threshold=threshold, epsilon=epsilon,
                      method=method, selection=selection, strategy=strategy, cost=cost, budget=budget, beam=beam,
                      retries=retries, trial=trial,
                      storage_path=storage_path, local_storage_path=local_storage_path,
                      resume_timeout=resume_timeout, lineage_settings=lineage_settings, continue_from=continue_from)
        SplittingClassArgsValidator().validate_class_args(**kwargs, **unknown)
        if policy is not None and not isinstance(policy, Policy):
            raise ValueError(f"policy must be a nni_splitting.nni.scheduler.Policy, got {policy!r}")
        if grow_ratio is None and max_splits is None:
            kwargs["grow_ratio"] = DEFAULT_GROW_RATIO
        kwargs["trial"] = dict(trial or {})
        self.args = SplittingArguments(**kwargs)
        self.limits = lin.parse_budget(budget)
        local = local_storage_path or storage_path
        self.storage = StorageMap(storage_path, str(Path(local).expanduser()) if local else None)
        _logger.info("SplittingTuner arguments: %s", self.args._asdict())
        _logger.info("training seed %s (+ lineage index)", self.args.trial.get("seed", 0))
        self.scheduler = Scheduler(self.args, self.limits, read_index=lambda path: read_json(self.storage.to_local(path)),
                                   counter=exact_counter, verify=self._verify, policy=policy,
                                   resume_timeout_s=float(resume_timeout), check_files=self._check_files)
        self.client = DispatcherClient()
        self._lock = threading.RLock()
        self._param_nodes: Dict[int, str] = {}    # NNI parameter id (this session) -> node id
        self._waiting: deque = deque()            # parameter ids NNI asked for that we could not fill
        self._send: Optional[Callable[[int, dict], None]] = None
        self._watching = False                    # a thread handles deadlines and polls recovered trials
        self._ended = False
        self.end_hook: Optional[Callable[["SplittingTuner"], None]] = _end_experiment
        # before NNI's own import_data (nnictl resume of this experiment)
        for reference in experiment_references(continue_from):
            folder = experiment_folder(reference)
            imported = self.scheduler.import_finished(finished_trials(folder))
            _logger.info("continuing experiment %s: %d finished trial(s) imported", folder, len(imported))

    @property
    def finished(self) -> bool:
        """Growth (and every arm) is over."""
        return self.scheduler.finished

    @property
    def result_grace_s(self) -> float:
        """Seconds a trial that ended "SUCCEEDED" has to deliver its final result."""
        return self.scheduler.result_grace_s

    @result_grace_s.setter
    def result_grace_s(self, value: float) -> None:
        self.scheduler.result_grace_s = float(value)

    # ------------------------------------------------------------------ NNI entry points

    def update_search_space(self, search_space):
        if search_space:
            _logger.warning("SplittingTuner ignores the search space %s (the architecture comes from splitting)",
                            search_space)

    def generate_parameters(self, parameter_id, **kwargs):
        params = self.generate_multiple_parameters([parameter_id], **kwargs)
        if not params:
            raise nni.NoMoreTrialError("growth finished" if self.finished else "waiting for a parent trial to finish")
        return params[0]

    def generate_multiple_parameters(self, parameter_id_list, **kwargs):
        if kwargs.get("st_callback") is not None:
            self._send = kwargs["st_callback"]
        try:
            with self._lock:
                if not self.scheduler.started:
                    self.scheduler.start(self.client.recovered_trials(), time.time())
                result = []
                for parameter_id in parameter_id_list:
                    node = self.scheduler.pop_ready()
                    if node is None:
                        if not self.finished:
                            self._waiting.append(parameter_id)
                        continue
                    result.append(self._assign(parameter_id, node))
                self._after_event()
            return result
        except Exception:  # never let an exception kill the dispatcher
            _logger.exception("SplittingTuner.generate_multiple_parameters failed")
            return []

    def receive_trial_result(self, parameter_id, parameters, value, **kwargs):
        try:
            with self._lock:
                node = self._node_for(parameter_id, parameters)
                reported = self.scheduler.nodes.get(value.get("node")) if isinstance(value, dict) else None
                if reported is not None and reported is not node:
                    # NNI 3.0's local training service hands parameters out first-in-first-out, so a
                    # trial may run the parameters NNI filed under another one (trials starting
                    # together, or a trial killed before it asked).  The trial's report says what ran;
                    # its parameter id, which NNI takes from the trial, is the true one too.
                    _logger.warning("trial %s ran %s although NNI filed it under parameter id %s (%s): "
                                    "using the node the trial reports", kwargs.get("trial_job_id"),
                                    reported.node_id, parameter_id, node.node_id if node else "unknown")
                    node = reported
                if node is None:
                    _logger.warning("result for unknown parameter id %s ignored: %s", parameter_id, value)
                    return
                self.scheduler.succeeded(node, value, kwargs.get("trial_job_id") or "")
                self._after_event()
            self._flush()
        except Exception:
            _logger.exception("SplittingTuner.receive_trial_result failed for parameter id %s", parameter_id)

    def trial_end(self, parameter_id, success, **kwargs):
        try:
            with self._lock:
                node = self._node_for(parameter_id, None)
                if node is None or node.status != NodeStatus.RUNNING:
                    return
                if success:  # the final metric may still be on its way
                    self.scheduler.ended_without_result(node, time.time())
                else:
                    self.scheduler.failed(node, "trial failed or was killed")
                self._after_event()
            self._flush()
        except Exception:
            _logger.exception("SplittingTuner.trial_end failed for parameter id %s", parameter_id)

    def import_data(self, data):
        """Rebuild the lineages from finished trials (``nnictl resume``); after the start, the final
        results of trials NNI re-ran arrive here too, not in :meth:`receive_trial_result`."""
        try:
            with self._lock:
                self.scheduler.import_finished(data)
                self._after_event()
            self._flush()
        except Exception:
            _logger.exception("SplittingTuner.import_data failed")

    def state(self) -> dict:
        """JSON-serialisable summary of all nodes and why each lineage stopped."""
        with self._lock:
            return self.scheduler.state()

    # ------------------------------------------------------------------ adapter internals

    def _assign(self, parameter_id: int, node: Node) -> dict:
        self._param_nodes[parameter_id] = node.node_id
        _logger.info("parameter id %s -> %s", parameter_id, node.node_id)
        return copy.deepcopy(node.params)

    def _node_for(self, parameter_id, parameters) -> Optional[Node]:
        node_id = self._param_nodes.get(parameter_id)
        if node_id is None and isinstance(parameters, dict):  # NNI may hand '' as parameters: prefer our map
            node_id = parameters.get("node_id")
        return self.scheduler.nodes.get(node_id) if node_id else None

    def _verify(self, node: Node, trial_id: Optional[str]) -> Optional[dict]:
        """Finished work of ``node``'s trial on disk, verified by its checkpoint's SHA-256; else None."""
        for path in index_candidates(trial_id, self.args.storage_path, self.storage, _experiment_id()):
            result = verified_result(path, node.node_id, self.storage)
            if result is not None:
                return result
        return None

    def _check_files(self, node: Node, info: dict) -> Optional[str]:
        return check_node_files(node.node_id, node.trial_id, info, self.storage)

    def _after_event(self):
        """Lock held: save the state, start the watcher when a deadline is pending, end when finished."""
        self._save_state()
        if self.scheduler.next_deadline() is not None and not self._watching:
            self._watching = True
            threading.Thread(target=self._watch, name="splitting-deadlines", daemon=True).start()
        if self.finished and not self._ended:
            self._ended = True
            self._waiting.clear()
            if self.end_hook is not None:
                threading.Thread(target=self.end_hook, args=(self,), name="splitting-end", daemon=True).start()

    def _watch(self):
        """Deadlines and recovered trials: poll NNI's state of recovered trials, tick the scheduler."""
        while True:
            try:
                with self._lock:
                    deadline = self.scheduler.next_deadline()
                    if deadline is None:
                        self._watching = False
                        return
                threading.Event().wait(max(0.01, min(RECOVERED_POLL_S, deadline - time.time())))
                with self._lock:
                    recovered = [n for n in self.scheduler.nodes.values()
                                 if n.recovered and n.status == NodeStatus.RUNNING]
                    due = self.scheduler.next_deadline()
                states = {n.node_id: self.client.trial_state(n.trial_id) for n in recovered}
                busy = due is not None and due <= time.time() and self.client.active_trials() > 0
                with self._lock:
                    now = time.time()
                    for node in recovered:
                        self.scheduler.recovered_state(node, states[node.node_id], now)
                    self.scheduler.tick(now, nni_busy=busy)
                    self._after_event()
                self._flush()
            except Exception:
                _logger.exception("SplittingTuner: handling deadlines failed")
                threading.Event().wait(RECOVERED_POLL_S)

    def _flush(self):
        """Push ready nodes to the parameter ids NNI is waiting on (outside the lock)."""
        pushes = []
        with self._lock:
            while self._waiting and self._send is not None:
                node = self.scheduler.pop_ready()
                if node is None:
                    break
                parameter_id = self._waiting.popleft()
                pushes.append((parameter_id, self._assign(parameter_id, node)))
            self._after_event()
        for parameter_id, params in pushes:
            _logger.info("sending %s with parameter id %s", params["node_id"], parameter_id)
            self._send(parameter_id, params)

    def _save_state(self):
        folder = os.environ.get("NNI_CHECKPOINT_DIRECTORY")
        if not folder:
            return
        try:
            atomic_write_json(Path(folder) / "splitting_tuner.json", self.scheduler.state())
        except Exception:
            _logger.exception("could not write the tuner state to %s", folder)


def exact_counter(info: dict) -> Callable[[dict], Optional[Dict[str, float]]]:
    """``plan -> totals`` counting the grown model with NNI's counter; None when it cannot be built."""
    def count(plan: dict) -> Optional[Dict[str, float]]:
        try:
            widths = lin.grown_widths(info["widths"], info["width_layers"], plan, info.get("added_per_split", 1))
            model = build_model(info["model"], widths=widths, **info.get("model_config", {}))
            flops, params = count_model(model, torch.zeros(1, *info["input_shape"]))
        except Exception as error:  # unknown model, missing fields: fall back to the estimate
            _logger.debug("exact count unavailable (%s); using per-neuron costs", error)
            return None
        return lin.budget_totals(dict(info, params=params, flops=flops))
    return count


def _end_experiment(tuner: SplittingTuner) -> None:
    """Let NNI reach DONE: lower maxTrialNumber to the number of trials (needs the dispatcher's env)."""
    try:
        count = tuner.client.finish()
        if count is not None:
            _logger.info("maxTrialNumber set to %d trials so that the experiment ends DONE", count)
    except Exception:
        _logger.exception("could not set maxTrialNumber; the experiment stays in TUNER_NO_MORE_TRIAL "
                          "(growth is finished all the same)")
