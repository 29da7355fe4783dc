"""What the scheduler does when things go wrong: failed trials (retry, fall back, stop), parent files that
do not verify, results that never come (deadlines), and an experiment resumed with ``nnictl resume``.

:class:`FaultHandling` is one half of :class:`~nni_splitting.nni.scheduler.Scheduler` (which inherits it):
the events :meth:`~FaultHandling.failed`, :meth:`~FaultHandling.ended_without_result`,
:meth:`~FaultHandling.recover`, :meth:`~FaultHandling.recovered_state`, :meth:`~FaultHandling.tick` and
:meth:`~FaultHandling.import_finished`, on the scheduler's nodes, arguments and file checks.

* A failed or killed trial is retried with the same parameters ``retries`` times; if those fail too,
  the lineage falls back to its last good checkpoint (the parent) and tries once more with the better
  half of the plan; if that also fails the lineage stops early.
* Before a trial is used as a parent its checkpoint and splits file are checked against the SHA-256 its
  ``splitting.json`` stores; one that does not match is set aside and the lineage falls back to the
  nearest ancestor that matches (at most ``retries + 1`` times).  Other lineages go on.
* Resume: parameters carry ``node_id``, ``lineage``, ``step`` and the parent's paths, results the
  checkpoint and index paths, so :meth:`~FaultHandling.import_finished` rebuilds every lineage; a trial
  running at the stop is adopted when its finished work on disk verifies (``checkpoint_sha256``), waited
  on for ``resume_timeout`` seconds when NNI re-runs it, and retried otherwise.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional

import nni_splitting.nni.lineage as lin
from nni_splitting.nni.lineage import Node, NodeKind, NodeStatus

__all__ = ["FaultHandling", "ENDED_STATES", "RERUN_STATES"]

logger = logging.getLogger("nni_splitting.nni.scheduler")

#: NNI trial states after which a trial does nothing more.
ENDED_STATES = ("SUCCEEDED", "FAILED", "USER_CANCELED", "SYS_CANCELED", "EARLY_STOPPED")
#: REST states of a trial NNI 3.0 re-runs on resume (``addRecoveredTrialJob`` re-queues WAITING and
#: RUNNING trials and files the event ``ADD_RESUMED``, which the REST API then shows); others never run again.
RERUN_STATES = ("WAITING", "RUNNING", "ADD_RESUMED")


class FaultHandling:
    """Failure, verification, deadline and resume events of the :class:`~nni_splitting.nni.scheduler.Scheduler`
    (a mixin: it uses the scheduler's ``nodes``, ``args``, ``verify``, ``check_files``, deadlines and queue)."""

    def failed(self, node: Node, why: str) -> None:
        """``node``'s trial failed, was killed, or was given up: retry, fall back, or stop its lineage."""
        if node.status != NodeStatus.RUNNING:
            return
        node.status = NodeStatus.FAILED
        node.deadline = None
        logger.warning("%s (trial %s, attempt %d) failed: %s", node.node_id, node.trial_id or "?", node.attempt, why)
        if node.kind == NodeKind.ARM:
            self.policy.arm_ended(self, node)
        else:
            self._retry_or_stop(node)
        self._check_finished()

    def ended_without_result(self, node: Node, now: float) -> None:
        """``node``'s trial ended "SUCCEEDED" but its final result has not come (yet): give it a deadline."""
        if node.status == NodeStatus.RUNNING and node.result is None:
            node.deadline = now + self.result_grace_s

    def recover(self, trial_id: str, params: dict, state: str, now: float) -> Optional[Node]:
        """A trial that was running when the experiment stopped (``nnictl resume``).

        Finished, verified work on disk is adopted at once; a trial NNI re-runs (``state`` in
        :data:`RERUN_STATES`) is waited on until ``resume_timeout_s``; any other is retried.
        """
        known = self.nodes.get(params.get("node_id", ""))
        if known is not None and known.status == NodeStatus.SUCCEEDED:
            return known
        node = Node(params["node_id"], int(params.get("lineage", 0)), int(params.get("step", 0)),
                    int(params.get("attempt", 0)), params.get("parent_node") or "", dict(params),
                    status=NodeStatus.RUNNING, trial_id=trial_id or "", recovered=True, kind=lin.node_kind(params))
        self.nodes[node.node_id] = node
        if node.kind == NodeKind.ARM and state not in RERUN_STATES:  # an arm leaves no verifiable work: run it again
            node.status = NodeStatus.FAILED
            again = {k: v for k, v in params.items() if k != "node_id"}
            self.add_arm(node.lineage, f"{node.node_id}-again", node.step, again)
            logger.info("%s (trial %s) will not be re-run by NNI (state %s): queued again", node.node_id, trial_id, state)
            return node
        done = self.verify(node, trial_id) if node.kind == NodeKind.GROWTH else None
        if done is not None:
            logger.info("%s (trial %s): its finished work on disk is verified and adopted", node.node_id, trial_id)
            node.status, node.result = NodeStatus.SUCCEEDED, done
            self._supersede(node)
        elif state in RERUN_STATES:
            node.deadline = now + self.resume_timeout_s
            logger.info("NNI re-runs %s (trial %s) after the resume; waiting until %.0f s from now", node.node_id,
                        trial_id, self.resume_timeout_s)
        else:
            self._retry_or_stop(node, f"NNI will not re-run it after the resume (state {state})")
        return node

    def recovered_state(self, node: Node, state: str, now: float) -> None:
        """A polled NNI state of a recovered trial (whose end NNI does not report to the tuner)."""
        if node.status != NodeStatus.RUNNING or state not in ENDED_STATES:
            return
        if state != "SUCCEEDED":
            self.failed(node, f"re-run after resume ended {state}")
        elif node.deadline is None or node.deadline > now + self.result_grace_s:
            node.deadline = now + self.result_grace_s

    def tick(self, now: float, nni_busy: bool = False) -> List[Node]:
        """Handle expired deadlines; ``nni_busy``: NNI still has trials waiting or running.

        A node whose result did not come is given up only when NNI is idle (the result may be filed
        under another trial, see :mod:`nni_splitting.nni.tuner`); before giving up, finished and verified
        work on disk is adopted.  Returns the nodes given up.
        """
        given_up = []
        for node in [n for n in self.nodes.values() if n.status == NodeStatus.RUNNING and n.deadline is not None]:
            if node.deadline > now:
                continue
            if nni_busy and not node.recovered:
                node.deadline = now + self.result_grace_s
                continue
            done = self.verify(node, node.trial_id) if node.recovered else None
            if done is not None:
                logger.info("%s: finished work on disk verified and adopted at its deadline", node.node_id)
                self.succeeded(node, done, node.trial_id)
                continue
            given_up.append(node)
            self.failed(node, "recovered trial did not finish before its deadline" if node.recovered
                        else "its trial ended without a final result")
        return given_up

    def next_deadline(self) -> Optional[float]:
        """The earliest deadline of a running node, or None."""
        times = [n.deadline for n in self.nodes.values() if n.status == NodeStatus.RUNNING and n.deadline is not None]
        return min(times) if times else None

    def import_finished(self, entries) -> List[Node]:
        """Record finished trials (NNI's ``import_data``): ``[{"parameter", "value", "trialJobId"}]``.

        The trial's result names the node it really ran (``node``): NNI 3.0 may have filed the trial
        under another trial's parameters (first-in-first-out parameter queue), so the result wins.
        After :meth:`start`, lineages whose tip changed continue from it.
        """
        known = {e["parameter"]["node_id"]: e["parameter"] for e in entries
                 if isinstance(e.get("parameter"), dict) and "node_id" in e["parameter"]}
        imported = [node for node in (self._import(e, known) for e in entries) if node is not None]
        if self.started:
            tips = lin.lineage_tips(self.nodes)
            for lineage in sorted({n.lineage for n in imported if n.kind == NodeKind.GROWTH}):
                if lineage in tips and not self.busy(lineage) and lineage not in self.stopped:
                    self._advance(tips[lineage])
            for node in imported:  # an arm NNI re-ran after a resume: what follows it (e.g. pruned_scratch)
                if node.kind == NodeKind.ARM:
                    self.policy.arm_ended(self, node)
            self._check_finished()
        return imported

    def _readable(self, node: Node) -> bool:
        try:
            self._info(node)
            return True
        except (OSError, ValueError, KeyError) as error:
            logger.warning("cannot read the splitting indexes of %s: %s", node.node_id, error)
            return False

    def _retry_or_stop(self, node: Node, why: str = "") -> None:
        node.status = NodeStatus.FAILED
        if why:
            logger.warning("%s (trial %s) given up: %s", node.node_id, node.trial_id or "?", why)
        parent = self.nodes.get(node.parent) if node.parent else None
        if parent is not None and self._verified_parent(parent) is not parent:
            return  # the lineage fell back past the parent, or stopped
        if node.attempt < self.args.retries:
            retry = Node(lin.make_node_id(node.lineage, node.step), node.lineage, node.step, node.attempt + 1,
                         node.parent)
            retry.params = dict(node.params, node_id=retry.node_id, attempt=retry.attempt)
            logger.info("retrying %s as %s", node.node_id, retry.node_id)
            self.add(retry)
        elif node.attempt == self.args.retries and parent is not None and self._readable(parent):
            ranked = lin.rank_plan(node.params.get("split_plan", {}), parent.info["eigenvalues"])
            self.add(self._child(parent, lin.halve_plan(ranked), attempt=node.attempt + 1))
            logger.info("lineage %d falls back to %s (last good checkpoint) with half of the plan", node.lineage,
                        parent.node_id)
        else:
            last = f"; its last good trial is {parent.node_id}" if parent else ""
            self.stop(node.lineage, f"{node.attempt + 1} failed attempt(s) at step {node.step}{last}", early=True)

    def _verified_parent(self, parent: Node) -> Optional[Node]:
        """``parent`` when its files verify; otherwise it is set aside (``FAILED``, with a note) and the
        lineage falls back to the nearest ancestor that verifies (its child is queued again) or stops
        early.  Returns the node whose files verified, or None."""
        node, why = parent, ""
        while node is not None:
            try:
                problem = self.check_files(node, self._info(node))
            except (OSError, ValueError, KeyError) as error:
                problem = f"cannot read the splitting indexes of {node.node_id}: {error}"
            if problem is None:
                break
            why = why or problem
            node.status, node.note = NodeStatus.FAILED, f"set aside: {problem}"
            logger.warning("%s (trial %s) cannot be a parent: %s", node.node_id, node.trial_id or "?", problem)
            node = self.nodes.get(node.parent) if node.parent else None
        if node is parent:
            return node
        lineage = parent.lineage
        self._fallbacks[lineage] = self._fallbacks.get(lineage, 0) + 1
        if node is None:
            self.stop(lineage, f"{why}; no earlier checkpoint of the lineage verifies", early=True)
        elif self._fallbacks[lineage] > self.args.retries + 1:
            self.stop(lineage, f"{why}; gave up after {self._fallbacks[lineage] - 1} fall-back(s) past unusable "
                               f"files", early=True)
        else:
            logger.warning("lineage %d falls back to %s (step %d), the nearest ancestor whose files verify",
                           lineage, node.node_id, node.step)
            self._advance(node, verified=True)
        return node

    def _supersede(self, node: Node) -> None:
        """A retry / fallback of the same step as a succeeded ``node`` is no longer needed."""
        for other in self.nodes.values():
            if (other is not node and other.kind == NodeKind.GROWTH and other.status.active
                    and (other.lineage, other.step, other.parent) == (node.lineage, node.step, node.parent)):
                other.status = NodeStatus.SUPERSEDED
                logger.info("%s is superseded by %s", other.node_id, node.node_id)

    def _import(self, entry: dict, known: Dict[str, dict]) -> Optional[Node]:
        return lin.import_node(self.nodes, entry, known)
