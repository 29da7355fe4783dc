"""The splitting tuner's state machine: pure, thread-free, no NNI (unit-tested with fake trial results).

Paper: Liu, Wu & Wang, "Splitting Steepest Descent for Growing Neural Architectures", NeurIPS 2019,
Algorithm 1: train, compute the splitting index ``lambda_min`` of every neuron, split the ``m*``
most negative ones (below ``lambda*``), repeat.  Each pass is one trial (a *node*).

:class:`Scheduler` decides which node runs next.  It is driven by events (:meth:`Scheduler.succeeded`,
:meth:`Scheduler.failed`, :meth:`Scheduler.ended_without_result`, :meth:`Scheduler.import_finished`,
:meth:`Scheduler.recover`, :meth:`Scheduler.tick`) and hands out ready nodes (:meth:`Scheduler.pop_ready`).
Time is a number the caller passes in (``now``), so deadlines are testable without sleeping.
The NNI adapter (:mod:`nni_splitting.nni.tuner`) owns the lock, the parameter-id map and any thread.

Policies:

* **growth**: a succeeded node's child splits ``split_count`` neurons picked by
  :func:`~nni_splitting.select_neurons` (threshold, cost-aware ranking), trimmed to the budget;
  a lineage stops at ``max_steps``, at a splitting-stable point or when the budget is reached;
* **retry / fallback**: a failed node is retried ``retries`` times with the same parameters, then
  the lineage falls back to the parent with the better half of the plan, then stops;
* **verified parents**: before a node is used as a parent (its child queued, retried or halved)
  its files are checked (``check_files``: the SHA-256 of checkpoint and splits stored in
  ``splitting.json``); a node that fails is set aside and the lineage falls back to the nearest
  ancestor that verifies, at most ``retries + 1`` times per lineage.  A lineage that stops because
  of failures or unusable files is listed in :attr:`Scheduler.ended_early` with the reason;
* **recovery** (``nnictl resume``): a trial NNI re-runs gets a deadline; work it already finished
  on disk is adopted only when verified (``checkpoint_sha256`` in ``splitting.json``), anything
  else is retried;
* **arms** (the comparison): a :class:`Policy` adds :data:`~nni_splitting.nni.lineage.NodeKind.ARM`
  nodes; see :mod:`nni_splitting.nni.comparison_policy`.
"""
from __future__ import annotations

import logging
from collections import Counter, deque
from typing import Any, Callable, Dict, List, Mapping, Optional

import nni_splitting.nni.lineage as lin
from nni_splitting.nni.faults import ENDED_STATES, RERUN_STATES, FaultHandling  # (the states: re-exported)
from nni_splitting.nni.lineage import Node, NodeKind, NodeStatus, Policy, lineage_entry  # (Policy, lineage_entry: re-exported)

__all__ = ["Scheduler", "Policy", "lineage_entry", "RESULT_GRACE_S", "RESUME_TIMEOUT_S", "ENDED_STATES", "RERUN_STATES"]

logger = logging.getLogger(__name__)

#: Seconds to wait for a final result after a trial ended "SUCCEEDED" before counting it as failed.
RESULT_GRACE_S = 60.0
#: Seconds a trial NNI re-runs after a resume may take before it is given up and retried.
RESUME_TIMEOUT_S = 1800.0

Reader = Callable[[str], dict]
Verifier = Callable[[Node, Optional[str]], Optional[dict]]
#: ``check_files(node, info) -> None``, or why ``node``'s files cannot be used as a parent.
FileCheck = Callable[[Node, dict], Optional[str]]


class Scheduler(FaultHandling):
    """Lineages of growth nodes (and, through a :class:`Policy`, arm nodes) as a state machine.

    Parameters
    ----------
    args
        The tuner's arguments (:class:`nni_splitting.nni.tuner.SplittingArguments`, ``grow_ratio`` or
        ``max_splits`` set).
    limits
        The parsed budget (:func:`nni_splitting.nni.lineage.parse_budget`).
    read_index
        ``read_index(path) -> dict``: the trial's ``splitting.json`` (path as the trial reported it).
    counter
        ``counter(info) -> (plan -> totals or None)``: exact budget count of a child, or None.
    verify
        ``verify(node, trial_id) -> result or None``: finished, verified work of a node on disk.
    check_files
        ``check_files(node, info) -> None or why``: whether a succeeded node's files can be used as
        a parent (default: always).
    policy
        A :class:`Policy`; default: growth only.
    result_grace_s, resume_timeout_s
        Deadlines (see :data:`RESULT_GRACE_S`, :data:`RESUME_TIMEOUT_S`).
    """

    def __init__(self, args, limits: Mapping[str, float], read_index: Reader,
                 counter: Optional[Callable[[dict], Callable]] = None, verify: Optional[Verifier] = None,
                 policy: Optional[Policy] = None, result_grace_s: float = RESULT_GRACE_S,
                 resume_timeout_s: float = RESUME_TIMEOUT_S, check_files: Optional[FileCheck] = None):
        self.args = args
        self.limits = dict(limits)
        self.read_index = read_index
        self.counter = counter
        self.verify = verify or (lambda node, trial_id: None)
        self.check_files = check_files or (lambda node, info: None)
        self.policy = policy or Policy()
        self.result_grace_s = result_grace_s
        self.resume_timeout_s = resume_timeout_s
        self.nodes: Dict[str, Node] = {}
        self.stopped: Dict[int, str] = {}
        self.ended_early: Dict[int, str] = {}     # lineages stopped by failures or unusable files, and why
        self._fallbacks: Dict[int, int] = {}      # falls back past unusable files, per lineage
        self.started = False
        self.finished = False
        self._ready: deque = deque()

    # ------------------------------------------------------------------ queue

    def add(self, node: Node) -> Node:
        """Queue ``node`` (status READY)."""
        self.nodes[node.node_id] = node
        node.status = NodeStatus.READY
        self._ready.append(node.node_id)
        logger.info("queued %s: %s lineage %d step %d attempt %d, widths %s, %d split(s)", node.node_id,
                    node.kind.value, node.lineage, node.step, node.attempt, node.params.get("widths"),
                    node.params.get("n_split", 0))
        return node

    def add_arm(self, lineage: int, node_id: str, step: int, params: dict) -> Node:
        """Queue an arm node of seed ``lineage`` (its trial parameters ``params``)."""
        node = Node(node_id, lineage, step, 0, "", dict(params, node_id=node_id), kind=NodeKind.ARM)
        return self.add(node)

    def pop_ready(self) -> Optional[Node]:
        """The next ready node, now RUNNING; None when nothing is ready.

        Growth nodes go first, in queue order, then arm nodes: a lineage's steps run one after the
        other (the experiment's critical path), arms can fill any free slot.  Arms go round the
        lineages (the next one of the lineage with the fewest arms handed out so far), so a comparison
        stopped early has every seed's first baselines rather than all of one seed's.
        """
        waiting = [self.nodes.get(n) for n in self._ready]
        waiting = [n for n in waiting if n is not None and n.status == NodeStatus.READY]
        node = next((n for n in waiting if n.kind == NodeKind.GROWTH), None)
        if node is None and waiting:
            handed_out = Counter(n.lineage for n in self.nodes.values()
                                 if n.kind == NodeKind.ARM and n.status != NodeStatus.READY)
            node = min(waiting, key=lambda n: handed_out[n.lineage])  # min keeps queue order on ties
        self._ready = deque(n.node_id for n in waiting if n is not node)
        if node is not None:
            node.status = NodeStatus.RUNNING
        return node

    def has_ready(self) -> bool:
        """Whether a node waits to be handed out."""
        return any(self.nodes[n].status == NodeStatus.READY for n in self._ready if n in self.nodes)

    # ------------------------------------------------------------------ events

    def start(self, recovered=(), now: float = 0.0) -> None:
        """Seed the lineages (or continue imported ones); ``recovered``: ``(trial_id, params, state)`` of
        trials that were running when the experiment stopped.  Idempotent."""
        if self.started:
            return
        self.started = True
        for trial_id, params, state in recovered:
            self.recover(trial_id, params, state, now)
        tips = lin.lineage_tips(self.nodes)
        for lineage in range(self.args.beam):
            if self.busy(lineage):
                continue
            if lineage in tips:
                logger.info("lineage %d resumes from %s (step %d)", lineage, tips[lineage].node_id,
                            tips[lineage].step)
                self._advance(tips[lineage])
            else:
                self.add(self._seed(lineage))
        self.policy.start(self)
        self._check_finished()

    def succeeded(self, node: Node, result: Any, trial_id: str = "") -> None:
        """``node``'s trial reported its final result."""
        node.trial_id = trial_id or node.trial_id
        node.result = result if isinstance(result, dict) else {"default": result}
        node.deadline = None
        if node.status in (NodeStatus.SUCCEEDED, NodeStatus.SUPERSEDED):
            return
        node.status = NodeStatus.SUCCEEDED
        logger.info("%s (trial %s) succeeded: %s", node.node_id, node.trial_id, node.result)
        if node.kind == NodeKind.ARM:
            self.policy.arm_ended(self, node)
        else:
            self._supersede(node)
            # A late success of an older node of a lineage that has already moved on is kept, not grown.
            if lin.lineage_tips(self.nodes).get(node.lineage) is node and not self.busy(node.lineage):
                self.ended_early.pop(node.lineage, None)
                if self.stopped.pop(node.lineage, None):
                    logger.info("lineage %d continues from %s", node.lineage, node.node_id)
                self._advance(node)
            self.policy.step_succeeded(self, node)
        self._check_finished()

    # ------------------------------------------------------------------ queries

    def busy(self, lineage: int) -> bool:
        """Whether a growth node of ``lineage`` is queued or running."""
        return any(n.kind == NodeKind.GROWTH and n.lineage == lineage and n.status.active for n in self.nodes.values())

    def chain(self, lineage: int) -> List[Node]:
        """The succeeded growth nodes of ``lineage``, one per step (the latest attempt), by step."""
        by_step: Dict[int, Node] = {}
        for node in sorted((n for n in self.nodes.values() if n.kind == NodeKind.GROWTH and n.lineage == lineage
                            and n.status == NodeStatus.SUCCEEDED), key=lambda n: (n.step, n.attempt)):
            by_step[node.step] = node
        return [by_step[k] for k in sorted(by_step)]

    def state(self) -> dict:
        """JSON-serialisable summary of all nodes and why each lineage stopped."""
        return {"finished": self.finished, "stopped": {str(k): v for k, v in self.stopped.items()},
                "ended_early": {str(k): v for k, v in self.ended_early.items()},
                "nodes": [n.to_dict() for n in self.nodes.values()], "args": self.args._asdict()}

    # ------------------------------------------------------------------ growth policy

    def stop(self, lineage: int, reason: str, early: bool = False) -> None:
        """Stop growing ``lineage``; ``early``: because of failures (listed in :attr:`ended_early`)."""
        self.stopped[lineage] = reason
        if early:
            self.ended_early[lineage] = reason
        else:
            self.ended_early.pop(lineage, None)
        (logger.warning if early else logger.info)("lineage %d stops%s: %s", lineage, " early" if early else "", reason)
        self.policy.lineage_stopped(self, lineage)

    def _advance(self, parent: Node, verified: bool = False) -> None:
        """Queue the child of a succeeded node (after checking its files, unless ``verified``), or stop its lineage."""
        lineage, args = parent.lineage, self.args
        if parent.step >= args.max_steps:
            return self.stop(lineage, f"max_steps={args.max_steps} reached")
        try:
            info = self._info(parent)
        except (OSError, ValueError, KeyError) as error:
            return self.stop(lineage, f"cannot read the splitting indexes of {parent.node_id}: {error}", early=True)
        if info.get("splitting_error"):
            return self.stop(lineage, f"{parent.node_id} could not compute splitting indexes: "
                                      f"{info['splitting_error']}", early=True)
        if not verified and self._verified_parent(parent) is not parent:
            return
        plan = self._select(info, lineage)
        if not plan:
            low = min((min(v) for v in info["eigenvalues"].values() if len(v)), default=float("nan"))
            return self.stop(lineage, f"splitting-stable: no index below threshold={args.threshold} "
                                      f"(lowest {low:.4g})")
        if self.limits:
            base = lin.budget_totals(info)
            if lin.over_budget(base, self.limits):
                return self.stop(lineage, f"budget {self.limits} reached ({base})")
            ranked = lin.rank_plan(plan, info["eigenvalues"], self._costs(info, lineage))
            exact = self.counter(info) if self.counter else None
            plan = lin.trim_plan(ranked, base, lin.budget_unit_costs(info), self.limits, exact=exact)
            if not plan:
                return self.stop(lineage, f"budget {self.limits}: no neuron fits")
        self.add(self._child(parent, plan))

    def _select(self, info: dict, lineage: int = 0) -> dict:
        return lin.choose_plan(self.args, info, lineage)

    def _costs(self, info: dict, lineage: int = 0) -> Optional[dict]:
        return lin.lineage_costs(self.args, info, lineage)

    def _info(self, node: Node) -> dict:
        if node.info is None:
            path = (node.result or {}).get("indexes")
            if not path:
                raise KeyError(f"the result of {node.node_id} has no 'indexes' path: {node.result}")
            node.info = self.read_index(path)
        return node.info

    # ------------------------------------------------------------------ retry / fallback policy

    # ------------------------------------------------------------------ nodes and parameters

    def _seed(self, lineage: int) -> Node:
        node = Node(lin.make_node_id(lineage, 0), lineage, 0, 0)
        widths = self.args.seed_widths
        explicit = isinstance(widths, (list, tuple))
        node.params = self._params(node, widths=list(widths) if explicit else None,
                                   width_multiplier=None if explicit else widths, plan={}, parent=None)
        return node

    def _child(self, parent: Node, plan: dict, attempt: int = 0) -> Node:
        info = parent.info
        node = Node(lin.make_node_id(parent.lineage, parent.step + 1), parent.lineage, parent.step + 1, attempt,
                    parent.node_id)
        widths = lin.grown_widths(info["widths"], info["width_layers"], plan, info.get("added_per_split", 1))
        node.params = self._params(node, widths=widths, width_multiplier=None, plan=plan, parent=parent)
        return node

    def _params(self, node: Node, widths, width_multiplier, plan, parent: Optional[Node]) -> dict:
        settings = lin.trial_params(self.args, node, widths, width_multiplier, plan, parent)
        settings.update(self.policy.growth_params(node, parent))
        return settings

    def _check_finished(self) -> None:
        if self.finished or not self.started:
            return
        if any(n.status.active for n in self.nodes.values()):
            return
        self.finished = True
        done = [n for n in self.nodes.values() if n.status == NodeStatus.SUCCEEDED]
        logger.info("growth finished: %d succeeded trial(s); %s", len(done),
                    "; ".join(f"lineage {k}: {v}" for k, v in sorted(self.stopped.items())) or "no lineage")
