"""Splitting steepest descent as an NNI tuner: grow a network by splitting its most useful neurons.

Paper: Liu, Wu & Wang, "Splitting Steepest Descent for Growing Neural Architectures", NeurIPS 2019
(https://arxiv.org/abs/1910.02366), Algorithm 1.  Official code: https://github.com/klightz/splitting

Each trial (:mod:`nni_splitting.trial`) trains one network, computes the splitting index
``lambda_min`` of every neuron and saves them next to its checkpoint.  When a trial succeeds the
tuner reads that file, picks the neurons to split (top ``m`` by most negative index below
``threshold``, optionally per unit of cost and within a budget) and emits the grown network as the
next trial, whose parent is the finished one.  ``beam`` lineages grow side by side, each from its
own random initialisation.

The tuner is thin: lineage maths is in :mod:`nni_splitting.lineage`, neuron selection is
:func:`nni_splitting.select_neurons`, paths are :mod:`nni_splitting.storage`.

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
import math
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Union

import nni
from nni import ClassArgsValidator
from nni.tuner import Tuner

from . import lineage as lin
from .lineage import Node
from .storage import StorageMap, atomic_write_json, read_json

__all__ = ["SplittingTuner", "SplittingArguments", "SplittingClassArgsValidator", "COSTS"]

# A child of NNI's "nni" logger, so the messages land in the experiment's dispatcher.log.
_logger = logging.getLogger("nni.tuner.splitting")

#: Values of the ``cost`` classArg.
COSTS = ("none", "params", "flops")
#: ``grow_ratio`` used when neither ``grow_ratio`` nor ``max_splits`` is given.
DEFAULT_GROW_RATIO = 0.3
#: Seconds to wait for a final result after a trial ended "SUCCEEDED" before counting it as failed.
RESULT_GRACE_S = 60.0
#: Seconds between REST polls of the trials NNI re-runs itself after a resume.
RECOVERED_POLL_S = 10.0
_ENDED = ("SUCCEEDED", "FAILED", "USER_CANCELED", "SYS_CANCELED", "EARLY_STOPPED")


class SplittingArguments(NamedTuple):
    """Arguments of :class:`SplittingTuner` (the ``classArgs`` of the experiment config).

    Parameters
    ----------
    model
        Registered model name (:data:`nni_splitting.models.MODELS`), e.g. ``"mobilenet_v1"``.
    seed_widths
        Widths of the seed network: a list of ints, or a float multiplier of the model's default
        (full-size) widths.  Default 0.25.
    max_steps
        Growth steps per lineage (the seed is step 0, so a lineage has up to ``max_steps + 1`` trials).
    grow_ratio, max_splits
        Neurons split per step: ``max_splits``, or ``grow_ratio`` times the current number of
        neurons (default 0.3 when neither is set).  At most one may be set.
    max_per_layer
        Cap of split neurons per layer and step.
    threshold
        Only neurons with splitting index below this (<= 0) are split; when none is, the lineage
        has reached a splitting-stable point and stops.
    epsilon
        Splitting step size: offspring weights are ``theta +- epsilon * v_min``.
    method
        ``compute_splitting`` method used by the trials (``"exact"``, ``"fast"``, ``"auto"``).
    cost
        ``"none"``: rank by index; ``"params"`` / ``"flops"``: rank by index per added parameter /
        FLOP (the trial's ``neuron_costs``).
    budget
        None, a parameter count, or a dict with keys ``params``, ``flops``, ``params_ratio``,
        ``flops_ratio``: no child exceeds it (plans are trimmed with per-neuron costs and checked
        with NNI's counter).
    beam
        Number of lineages grown in parallel, lineage ``i`` with training seed ``trial.seed + i``.
    retries
        Retries of a failed trial from the same parent before falling back (see :class:`SplittingTuner`).
    trial
        Training settings passed to every trial (see :data:`nni_splitting.trial.TRAIN_DEFAULTS`).
    storage_path, local_storage_path
        Shared folder where trials write (worker view) and the same folder on the tuner's machine
        (default: same path).  Unset: trials write to ``$NNI_OUTPUT_DIR`` (local training service).
    """

    model: str = "small_cnn"
    seed_widths: Union[List[int], float, None] = 0.25
    max_steps: int = 4
    grow_ratio: Optional[float] = None
    max_splits: Optional[int] = None
    max_per_layer: Optional[int] = None
    threshold: float = 0.0
    epsilon: float = 0.1
    method: str = "exact"
    cost: str = "none"
    budget: Any = None
    beam: int = 1
    retries: int = 1
    trial: Optional[dict] = None
    storage_path: Optional[str] = None
    local_storage_path: Optional[str] = None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class SplittingClassArgsValidator(ClassArgsValidator):
    """Checks the ``classArgs`` of :class:`SplittingTuner`; raises ``ValueError`` quoting the bad value."""

    def validate_class_args(self, **kwargs):
        known = SplittingArguments._fields
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise ValueError(f"unknown classArgs {unknown} for SplittingTuner; known: {list(known)}")
        args = SplittingArguments(**kwargs)

        from .models import MODELS
        if not isinstance(args.model, str) or args.model.lower().replace("-", "_") not in MODELS:
            raise ValueError(f"model must be one of {sorted(MODELS)}, got {args.model!r}")
        widths = args.seed_widths
        if isinstance(widths, (list, tuple)):
            if not widths or not all(_is_int(w) and w > 0 for w in widths):
                raise ValueError(f"seed_widths must be positive ints, got {widths!r}")
        elif widths is not None and not (_is_number(widths) and widths > 0):
            raise ValueError(f"seed_widths must be a list of ints or a positive multiplier, got {widths!r}")
        if not (_is_int(args.max_steps) and args.max_steps >= 0):
            raise ValueError(f"max_steps must be an int >= 0, got {args.max_steps!r}")
        if args.grow_ratio is not None and args.max_splits is not None:
            raise ValueError(f"give grow_ratio or max_splits, not both "
                             f"(got {args.grow_ratio!r} and {args.max_splits!r})")
        if args.grow_ratio is not None and not (_is_number(args.grow_ratio) and 0 < args.grow_ratio <= 10):
            raise ValueError(f"grow_ratio must be a number in (0, 10], got {args.grow_ratio!r}")
        for key in ("max_splits", "max_per_layer"):
            value = getattr(args, key)
            if value is not None and not (_is_int(value) and value >= 1):
                raise ValueError(f"{key} must be an int >= 1, got {value!r}")
        if not (_is_number(args.threshold) and args.threshold <= 0):
            raise ValueError(f"threshold must be a number <= 0 (only loss-decreasing splits), got {args.threshold!r}")
        if not (_is_number(args.epsilon) and args.epsilon >= 0):
            raise ValueError(f"epsilon must be a finite number >= 0, got {args.epsilon!r}")
        from .splitting import METHODS
        if args.method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {args.method!r}")
        if args.cost not in COSTS:
            raise ValueError(f"cost must be one of {list(COSTS)}, got {args.cost!r}")
        lin.parse_budget(args.budget)
        if not (_is_int(args.beam) and args.beam >= 1):
            raise ValueError(f"beam must be an int >= 1, got {args.beam!r}")
        if not (_is_int(args.retries) and 0 <= args.retries <= 10):
            raise ValueError(f"retries must be an int in [0, 10], got {args.retries!r}")
        if args.trial is not None and not isinstance(args.trial, dict):
            raise ValueError(f"trial must be a dict of training settings, got {args.trial!r}")
        from .trial import check_train_settings
        check_train_settings(args.trial or {})
        for key in ("storage_path", "local_storage_path"):
            value = getattr(args, key)
            if value is not None and not (isinstance(value, str) and value):
                raise ValueError(f"{key} must be a non-empty path string, got {value!r}")
        if args.local_storage_path and not args.storage_path:
            raise ValueError("local_storage_path needs storage_path (the same folder as the trials see it)")


class SplittingTuner(Tuner):
    """Grows networks by splitting steepest descent, one trial per growth step.

    Lifecycle of a lineage: the seed trial (step 0) trains the seed network; each succeeded trial
    is the parent of the next (step + 1), grown by the neurons :func:`~nni_splitting.select_neurons`
    picks from its splitting indexes.  A lineage stops at ``max_steps``, when no index is below
    ``threshold`` (splitting stability) or when the budget leaves no room.

    Failures: a failed or killed trial is retried with the same parameters ``retries`` times; if
    those fail too, the lineage falls back to its last good checkpoint (the parent) and tries once
    more with the better half of the plan; if that also fails the lineage stops.  Other lineages
    and the experiment go on.

    Resume: parameters carry ``node_id``, ``lineage``, ``step`` and the parent's paths; results
    carry the checkpoint and index paths, so :meth:`import_data` rebuilds every lineage and growth
    continues from each lineage's last succeeded trial.

    Parameters are those of :class:`SplittingArguments`.
    """

    def __init__(self, model: str = "small_cnn", seed_widths=0.25, max_steps: int = 4,
                 grow_ratio: Optional[float] = None, max_splits: Optional[int] = None,
                 max_per_layer: Optional[int] = None, threshold: float = 0.0, epsilon: float = 0.1,
                 method: str = "exact", cost: str = "none", budget=None, beam: int = 1, retries: int = 1,
                 trial: Optional[dict] = None, storage_path: Optional[str] = None,
                 local_storage_path: Optional[str] = None, **unknown):
        kwargs = dict(model=model, seed_widths=seed_widths, max_steps=max_steps, grow_ratio=grow_ratio,
                      max_splits=max_splits, max_per_layer=max_per_layer, threshold=threshold, epsilon=epsilon,
                      method=method, cost=cost, budget=budget, beam=beam, retries=retries, trial=trial,
                      storage_path=storage_path, local_storage_path=local_storage_path)
        SplittingClassArgsValidator().validate_class_args(**kwargs, **unknown)
        if grow_ratio is None and max_splits is None:
            kwargs["grow_ratio"] = DEFAULT_GROW_RATIO
        kwargs["trial"] = dict(trial or {})
        self.args = SplittingArguments(**kwargs)
        self.limits = lin.parse_budget(budget)
        local = local_storage_path or storage_path
        self.storage = StorageMap(storage_path, str(Path(local).expanduser()) if local else None)
        _logger.info("SplittingTuner arguments: %s", self.args._asdict())
        _logger.info("training seed %s (+ lineage index)", self.args.trial.get("seed", 0))

        self._lock = threading.RLock()
        self._nodes: Dict[str, Node] = {}
        self._param_nodes: Dict[int, str] = {}    # NNI parameter id (this session) -> node id
        self._ready: deque = deque()              # node ids waiting for a parameter id
        self._waiting: deque = deque()            # parameter ids NNI asked for that we could not fill
        self._stopped: Dict[int, str] = {}        # lineage -> why it stopped
        self._send: Optional[Callable[[int, dict], None]] = None
        self._started = False
        self._watching = False                    # a thread polls trials NNI re-runs after a resume
        self.finished = False
        self.result_grace_s = RESULT_GRACE_S
        self.end_hook: Optional[Callable[["SplittingTuner"], None]] = _end_experiment

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
                self._start()
                result = []
                for parameter_id in parameter_id_list:
                    node = self._pop_ready()
                    if node is None:
                        if not self.finished:
                            self._waiting.append(parameter_id)
                        continue
                    result.append(self._assign(parameter_id, node))
                self._check_finished()
            return result
        except Exception:  # never let an exception kill the dispatcher
            _logger.exception("SplittingTuner.generate_multiple_parameters failed")
            return []

    def receive_trial_result(self, parameter_id, parameters, value, **kwargs):
        try:
            with self._lock:
                node = self._node_for(parameter_id, parameters)
                reported = self._nodes.get(value.get("node")) if isinstance(value, dict) else None
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
                node.trial_id = kwargs.get("trial_job_id") or node.trial_id
                node.result = value if isinstance(value, dict) else {"default": value}
                if node.status in ("succeeded", "superseded"):
                    return
                self._succeeded(node)
            self._flush()
        except Exception:
            _logger.exception("SplittingTuner.receive_trial_result failed for parameter id %s", parameter_id)

    def trial_end(self, parameter_id, success, **kwargs):
        try:
            with self._lock:
                node = self._node_for(parameter_id, None)
                if node is None or node.status != "running":
                    return
                if success:
                    if node.result is None:  # the final metric may still be on its way
                        timer = threading.Timer(self.result_grace_s, self._no_result, args=(node.node_id,))
                        timer.daemon = True
                        timer.start()
                    return
                self._failed(node, "trial failed or was killed")
            self._flush()
        except Exception:
            _logger.exception("SplittingTuner.trial_end failed for parameter id %s", parameter_id)

    def import_data(self, data):
        """Rebuild the lineages from finished trials (``nnictl resume``)."""
        try:
            with self._lock:
                known = {e["parameter"]["node_id"]: e["parameter"] for e in data
                         if isinstance(e.get("parameter"), dict) and "node_id" in e["parameter"]}
                imported = [node for node in (self._import(e, known) for e in data) if node is not None]
                if self._started:
                    # final results of trials NNI re-ran after a resume arrive here, not in receive_trial_result
                    tips = lin.lineage_tips(self._nodes)
                    for lineage in sorted({node.lineage for node in imported}):
                        if lineage in tips and not self._busy(lineage) and lineage not in self._stopped:
                            self._advance(tips[lineage])
                self._save_state()
            self._flush()
        except Exception:
            _logger.exception("SplittingTuner.import_data failed")

    # ------------------------------------------------------------------ state changes (lock held)

    def _start(self):
        if self._started:
            return
        self._started = True
        for trial_id, params in self._recovered_trials():
            self._adopt(trial_id, params)
        tips = lin.lineage_tips(self._nodes)
        for lineage in range(self.args.beam):
            if self._busy(lineage):
                continue
            if lineage in tips:
                tip = tips[lineage]
                _logger.info("lineage %d resumes from %s (step %d)", lineage, tip.node_id, tip.step)
                self._advance(tip)
            else:
                self._add(self._seed_node(lineage))

    def _recovered_trials(self) -> List[tuple]:
        """Trials that were running when the experiment stopped: NNI re-runs them itself on resume.

        Their final results come through :meth:`import_data`, but NNI does not report their end to
        the tuner, so they are watched through the REST API (:meth:`_watch_recovered`).
        """
        from .experiment import dispatcher_rest_url, rest, trial_parameters
        base = dispatcher_rest_url()
        if base is None:
            return []
        try:
            jobs = rest(base, "trial-jobs") or []
        except Exception as error:
            _logger.warning("cannot list trials through the REST API (%s): trials re-run after a resume "
                            "will not be tracked", error)
            return []
        return [(job.get("trialJobId"), trial_parameters(job)) for job in jobs
                if job.get("status") not in _ENDED and "node_id" in trial_parameters(job)]

    def _adopt(self, trial_id: str, params: dict):
        node = self._nodes.get(params["node_id"])
        if node is not None and node.status == "succeeded":
            return
        node = Node(params["node_id"], int(params.get("lineage", 0)), int(params.get("step", 0)),
                    int(params.get("attempt", 0)), params.get("parent_node") or "", dict(params),
                    status="running", trial_id=trial_id or "", recovered=True)
        self._nodes[node.node_id] = node
        _logger.info("NNI re-runs %s (trial %s) after the resume; waiting for it", node.node_id, trial_id)
        if not self._watching:
            self._watching = True
            threading.Thread(target=self._watch_recovered, name="splitting-recovered", daemon=True).start()

    def _watch_recovered(self):
        """Poll the trials NNI re-runs after a resume; a failed one is handled like :meth:`trial_end`."""
        from .experiment import dispatcher_rest_url, rest
        base = dispatcher_rest_url()
        ended_at: Dict[str, float] = {}
        while base is not None:
            threading.Event().wait(RECOVERED_POLL_S)
            try:
                with self._lock:
                    watched = [n for n in self._nodes.values() if n.recovered and n.status == "running"]
                    if not watched:
                        self._watching = False
                        return
                for node in watched:
                    job = rest(base, f"trial-jobs/{node.trial_id}") or {}
                    state = job.get("status", "")
                    if state not in _ENDED:
                        continue
                    ended_at.setdefault(node.node_id, time.time())
                    late = time.time() - ended_at[node.node_id] > self.result_grace_s
                    with self._lock:
                        if node.status == "running" and (state != "SUCCEEDED" or late):
                            self._failed(node, f"re-run after resume ended {state} without a result")
                    self._flush()
            except Exception:
                _logger.exception("SplittingTuner: watching re-run trials failed")

    def _seed_node(self, lineage: int, attempt: int = 0) -> Node:
        node = Node(lin.make_node_id(lineage, 0), lineage, 0, attempt)
        widths = self.args.seed_widths
        node.params = self._params(node, widths=list(widths) if isinstance(widths, (list, tuple)) else None,
                                   width_multiplier=None if isinstance(widths, (list, tuple)) else widths,
                                   plan={}, parent=None)
        return node

    def _params(self, node: Node, widths, width_multiplier, plan, parent: Optional[Node]) -> dict:
        settings = dict(self.args.trial)
        settings["seed"] = int(settings.get("seed", 0)) + node.lineage
        info = (parent.info or {}) if parent else {}
        result = (parent.result or {}) if parent else {}
        settings.update(
            model=self.args.model, widths=widths, width_multiplier=width_multiplier,
            node_id=node.node_id, lineage=node.lineage, step=node.step, attempt=node.attempt,
            parent=parent.trial_id if parent else "", parent_node=parent.node_id if parent else "",
            parent_checkpoint=result.get("checkpoint", info.get("checkpoint", "")) if parent else "",
            parent_splits=result.get("splits", info.get("splits", "")) if parent else "",
            split_plan=plan, n_split=lin.plan_size(plan), epsilon=self.args.epsilon,
            split_method=self.args.method, storage_path=self.args.storage_path or "",
        )
        return settings

    def _add(self, node: Node):
        self._nodes[node.node_id] = node
        node.status = "ready"
        self._ready.append(node.node_id)
        _logger.info("queued %s: lineage %d step %d attempt %d, widths %s, %d split(s)", node.node_id, node.lineage,
                     node.step, node.attempt, node.params.get("widths"), node.params.get("n_split", 0))

    def _pop_ready(self) -> Optional[Node]:
        while self._ready:
            node = self._nodes.get(self._ready.popleft())
            if node is not None and node.status == "ready":
                return node
        return None

    def _assign(self, parameter_id: int, node: Node) -> dict:
        node.status = "running"
        self._param_nodes[parameter_id] = node.node_id
        _logger.info("parameter id %s -> %s", parameter_id, node.node_id)
        return copy.deepcopy(node.params)

    def _node_for(self, parameter_id, parameters) -> Optional[Node]:
        node_id = self._param_nodes.get(parameter_id)
        if node_id is None and isinstance(parameters, dict):  # NNI may hand '' as parameters: prefer our map
            node_id = parameters.get("node_id")
        return self._nodes.get(node_id) if node_id else None

    def _busy(self, lineage: int) -> bool:
        return any(n.lineage == lineage and n.status in ("ready", "running") for n in self._nodes.values())

    def _stop(self, lineage: int, reason: str):
        self._stopped[lineage] = reason
        _logger.info("lineage %d stops: %s", lineage, reason)

    def _succeeded(self, node: Node):
        node.status = "succeeded"
        _logger.info("%s (trial %s) succeeded: %s", node.node_id, node.trial_id, node.result)
        for other in self._nodes.values():  # a retry / fallback of the same step is no longer needed
            if other is not node and other.status in ("ready", "running") and (other.lineage, other.step,
                                                                              other.parent) == (node.lineage,
                                                                                                node.step,
                                                                                                node.parent):
                other.status = "superseded"
                _logger.info("%s is superseded by %s", other.node_id, node.node_id)
        self._save_state()
        # A late success of an older node of a lineage that has already moved on is kept, not grown.
        tip = lin.lineage_tips(self._nodes).get(node.lineage)
        if tip is node and not self._busy(node.lineage):
            if self._stopped.pop(node.lineage, None):
                _logger.info("lineage %d continues from %s", node.lineage, node.node_id)
            self._advance(node)

    def _no_result(self, node_id: str):
        """A trial NNI filed under ``node_id`` ended "SUCCEEDED" without a result a while ago.

        Either the result got lost, or NNI filed the trial under the wrong parameters (its parameter
        queue, see :meth:`receive_trial_result`) and the node is still being trained by another
        trial: so the node only counts as failed once NNI has no trial waiting or running.
        """
        try:
            if self._active_trials():
                timer = threading.Timer(self.result_grace_s, self._no_result, args=(node_id,))
                timer.daemon = True
                timer.start()
                return
            with self._lock:
                node = self._nodes.get(node_id)
                if node is None or node.status != "running" or node.result is not None:
                    return
                self._failed(node, "its trial ended without a final result")
            self._flush()
        except Exception:
            _logger.exception("SplittingTuner: handling the missing result of %s failed", node_id)

    @staticmethod
    def _active_trials() -> int:
        """Number of NNI trials waiting or running (0 when the REST API is not reachable)."""
        from .experiment import dispatcher_rest_url, rest
        base = dispatcher_rest_url()
        if base is None:
            return 0
        try:
            return sum(job.get("status") not in _ENDED for job in rest(base, "trial-jobs") or [])
        except Exception as error:
            _logger.warning("cannot list trials through the REST API: %s", error)
            return 0

    def _failed(self, node: Node, why: str):
        node.status = "failed"
        parent = self._nodes.get(node.parent) if node.parent else None
        _logger.warning("%s (trial %s, attempt %d) failed: %s", node.node_id, node.trial_id or "?", node.attempt, why)
        if node.attempt < self.args.retries:
            retry = Node(lin.make_node_id(node.lineage, node.step), node.lineage, node.step, node.attempt + 1,
                         node.parent)
            retry.params = dict(node.params, node_id=retry.node_id, attempt=retry.attempt)
            _logger.info("retrying %s as %s", node.node_id, retry.node_id)
            self._add(retry)
        elif node.attempt == self.args.retries and parent is not None and self._readable(parent):
            ranked = lin.rank_plan(node.params.get("split_plan", {}), parent.info["eigenvalues"])
            self._add(self._child(parent, lin.halve_plan(ranked), attempt=node.attempt + 1))
            _logger.info("lineage %d falls back to %s (last good checkpoint) with half of the plan", node.lineage,
                         parent.node_id)
        else:
            last = f"; its last good trial is {parent.node_id}" if parent else ""
            self._stop(node.lineage, f"{node.attempt + 1} failed attempt(s) at step {node.step}{last}")
        self._save_state()

    def _advance(self, parent: Node):
        """Queue the child of a succeeded node, or stop its lineage."""
        lineage = parent.lineage
        if parent.step >= self.args.max_steps:
            return self._stop(lineage, f"max_steps={self.args.max_steps} reached")
        try:
            info = self._load_info(parent)
        except (OSError, ValueError, KeyError) as error:
            return self._stop(lineage, f"cannot read the splitting indexes of {parent.node_id}: {error}")
        if info.get("splitting_error"):
            return self._stop(lineage, f"{parent.node_id} could not compute splitting indexes: "
                                       f"{info['splitting_error']}")
        plan = self._select(info)
        if not plan:
            low = min((min(v) for v in info["eigenvalues"].values() if len(v)), default=float("nan"))
            return self._stop(lineage, f"splitting-stable: no index below threshold={self.args.threshold} "
                                       f"(lowest {low:.4g})")
        if self.limits:
            base = lin.budget_totals(info)
            if lin.over_budget(base, self.limits):
                return self._stop(lineage, f"budget {self.limits} reached ({base})")
            ranked = lin.rank_plan(plan, info["eigenvalues"], self._costs(info))
            plan = lin.trim_plan(ranked, base, lin.budget_unit_costs(info), self.limits, exact=_exact_counter(info))
            if not plan:
                return self._stop(lineage, f"budget {self.limits}: no neuron fits")
        self._add(self._child(parent, plan))

    def _child(self, parent: Node, plan: dict, attempt: int = 0) -> Node:
        info = parent.info
        node = Node(lin.make_node_id(parent.lineage, parent.step + 1), parent.lineage, parent.step + 1, attempt,
                    parent.node_id)
        widths = lin.grown_widths(info["widths"], info["width_layers"], plan)
        node.params = self._params(node, widths=widths, width_multiplier=None, plan=plan, parent=parent)
        return node

    def _select(self, info: dict) -> dict:
        from . import select_neurons
        m = lin.split_count(info["widths"], self.args.grow_ratio, self.args.max_splits)
        eigenvalues = {k: v for k, v in info["eigenvalues"].items() if k in set(info["width_layers"])}
        plan = select_neurons(eigenvalues, max_splits=m, threshold=self.args.threshold,
                              max_per_layer=self.args.max_per_layer, costs=self._costs(info))
        return lin.clean_plan(plan)

    def _costs(self, info: dict) -> Optional[dict]:
        if self.args.cost == "none":
            return None
        return info.get("costs", {}).get(self.args.cost) or None

    def _readable(self, node: Node) -> bool:
        try:
            self._load_info(node)
            return True
        except (OSError, ValueError, KeyError) as error:
            _logger.warning("cannot read the splitting indexes of %s: %s", node.node_id, error)
            return False

    def _load_info(self, node: Node) -> dict:
        if node.info is None:
            path = (node.result or {}).get("indexes")
            if not path:
                raise KeyError(f"the result of {node.node_id} has no 'indexes' path: {node.result}")
            node.info = read_json(self.storage.to_local(path))
        return node.info

    def _import(self, entry: dict, known: Dict[str, dict]) -> Optional[Node]:
        """Record one finished trial; ``known`` maps node ids to the parameters exported with them.

        The trial's result names the node it really ran (``node``): NNI 3.0 may have filed the trial
        under another trial's parameters (first-in-first-out parameter queue), so the result wins.
        """
        params, value = entry.get("parameter"), entry.get("value")
        value = value if isinstance(value, dict) else {"default": value}
        params = params if isinstance(params, dict) else {}
        node_id = value.get("node") or params.get("node_id")
        if not node_id:
            _logger.warning("import_data: skipping a trial without node_id: %s", entry)
            return None
        node = self._nodes.get(node_id)
        if node is not None and node.status == "succeeded":
            return None
        if node is None:
            params = known.get(node_id) or {"node_id": node_id, "lineage": value.get("lineage", 0),
                                            "step": value.get("step", 0), "attempt": value.get("attempt", 0)}
            node = Node(node_id, int(params.get("lineage", 0)), int(params.get("step", 0)),
                        int(params.get("attempt", 0)), params.get("parent_node") or "", dict(params))
            self._nodes[node_id] = node
        node.trial_id = entry.get("trialJobId") or node.trial_id
        node.result = value
        node.status = "succeeded"
        _logger.info("imported %s (trial %s, lineage %d, step %d)", node.node_id, node.trial_id, node.lineage,
                     node.step)
        return node

    # ------------------------------------------------------------------ sending and finishing

    def _flush(self):
        """Push ready children to the parameter ids NNI is waiting on (outside the lock)."""
        pushes = []
        with self._lock:
            while self._ready and self._waiting and self._send is not None:
                node = self._pop_ready()
                if node is None:
                    break
                parameter_id = self._waiting.popleft()
                pushes.append((parameter_id, self._assign(parameter_id, node)))
            self._check_finished()
        for parameter_id, params in pushes:
            _logger.info("sending %s with parameter id %s", params["node_id"], parameter_id)
            self._send(parameter_id, params)

    def _check_finished(self):
        if self.finished or not self._started:
            return
        if any(n.status in ("ready", "running") for n in self._nodes.values()):
            return
        self.finished = True
        self._waiting.clear()
        done = [n for n in self._nodes.values() if n.status == "succeeded"]
        _logger.info("growth finished: %d succeeded trial(s); %s", len(done),
                     "; ".join(f"lineage {k}: {v}" for k, v in sorted(self._stopped.items())) or "no lineage")
        self._save_state()
        if self.end_hook is not None:
            threading.Thread(target=self.end_hook, args=(self,), name="splitting-end", daemon=True).start()

    def state(self) -> dict:
        """JSON-serialisable summary of all nodes and why each lineage stopped."""
        with self._lock:
            return {"finished": self.finished, "stopped": {str(k): v for k, v in self._stopped.items()},
                    "nodes": [n.to_dict() for n in self._nodes.values()], "args": self.args._asdict()}

    def _save_state(self):
        folder = os.environ.get("NNI_CHECKPOINT_DIRECTORY")
        if not folder:
            return
        try:
            atomic_write_json(Path(folder) / "splitting_tuner.json", self.state())
        except Exception:
            _logger.exception("could not write the tuner state to %s", folder)


def _exact_counter(info: dict) -> Callable[[dict], Optional[Dict[str, float]]]:
    """``plan -> totals`` counting the grown model with NNI's counter; None when it cannot be built."""
    def count(plan: dict) -> Optional[Dict[str, float]]:
        try:
            import torch
            from . import count_model
            from .models import build_model
            widths = lin.grown_widths(info["widths"], info["width_layers"], plan)
            model = build_model(info["model"], widths=widths, **info.get("model_config", {}))
            flops, params = count_model(model, torch.zeros(1, *info["input_shape"]))
        except Exception as error:  # unknown model, missing fields: fall back to the estimate
            _logger.debug("exact count unavailable (%s); using per-neuron costs", error)
            return None
        return lin.budget_totals(dict(info, params=params, flops=flops))
    return count


def _end_experiment(tuner: SplittingTuner) -> None:
    """Let NNI reach DONE: lower maxTrialNumber to the number of trials (needs the dispatcher's env)."""
    from .experiment import finish_from_dispatcher
    try:
        count = finish_from_dispatcher()
        if count is not None:
            _logger.info("maxTrialNumber set to %d trials so that the experiment ends DONE", count)
    except Exception:
        _logger.exception("could not set maxTrialNumber; the experiment stays in TUNER_NO_MORE_TRIAL "
                          "(growth is finished all the same)")
