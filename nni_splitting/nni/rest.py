"""A small client of NNI's REST API (``http://127.0.0.1:PORT/api/v1/nni/``), used by the tuner and the CLI.

No subprocess, no torch, no tuner: plain ``urllib`` calls, the waiting loop and the decoding of NNI's
trial records.  The nnictl side lives in :mod:`nni_splitting.nni.nnictl`.

Completion: when growth is over the tuner lowers the experiment's ``maxTrialNumber`` to the number
of trials it created (:func:`finish_from_dispatcher`, REST ``PUT /experiment?update_type=MAX_TRIAL_NUM``),
so NNI ends ``DONE`` once the last trial has exited.  :func:`wait` returns on ``DONE`` / ``STOPPED`` /
``ERROR``, and as a fallback when NNI sits in ``TUNER_NO_MORE_TRIAL``/``NO_MORE_TRIAL`` with no trial
waiting or running for ``settle_s`` seconds (e.g. the REST call failed).  It returns :data:`GONE` when
nothing listens on the port any more for ``gone_s`` seconds (the connection is refused: the
experiment was stopped from outside, e.g. ``nnictl stop``); a server that is slow to answer (a
timeout on a busy machine) is waited for.
"""
from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Dict, List, Optional

__all__ = [
    "FINAL_STATES",
    "GONE",
    "GONE_S",
    "refused",
    "SUCCESS_STATES",
    "REST_ERRORS",
    "rest_url",
    "rest",
    "status",
    "trial_states",
    "wait",
    "read_trials",
    "decode_metric",
    "trial_parameters",
    "dispatcher_rest_url",
    "finish_from_dispatcher",
]

logger = logging.getLogger(__name__)

#: Experiment states after which nothing more happens.
FINAL_STATES = ("DONE", "STOPPED", "ERROR")
#: Final statuses a command reports as success.
SUCCESS_STATES = ("DONE", "TUNER_NO_MORE_TRIAL", "NO_MORE_TRIAL")
#: Trial statuses of a trial that ended otherwise than SUCCEEDED (it may still have reported its final result).
ENDED_WITHOUT_SUCCESS = ("FAILED", "USER_CANCELED", "SYS_CANCELED", "EARLY_STOPPED")
#: What a REST call raises while NNI's server is not (or no longer) answering.
REST_ERRORS = (urllib.error.URLError, ConnectionError, TimeoutError, ValueError)
IDLE_STATES = ("TUNER_NO_MORE_TRIAL", "NO_MORE_TRIAL")
#: :func:`wait`'s status when NNI's server is gone (connections refused for ``gone_s`` seconds).
GONE = "GONE"
#: Seconds of refused connections after which :func:`wait` gives the experiment up (a few polls).
GONE_S = 10.0
#: Before NNI ever answered, refused connections are waited for at least this long (a slow start).
FIRST_ANSWER_S = 60.0
#: Idle seconds accepted as the end while the tuner says it has work pending (its grace period for a
#: missing result, 60 s, plus its polling, plus a margin).
PENDING_SETTLE_S = 180.0
ACTIVE_TRIAL_STATES = ("WAITING", "RUNNING", "UNKNOWN")


def rest_url(port: int, prefix: Optional[str] = None, host: str = "127.0.0.1") -> str:
    """Base URL of NNI's REST API on ``host:port`` (loopback by default, where the CLI serves it)."""
    prefix = f"/{prefix.strip('/')}" if prefix else ""
    return f"http://{host}:{port}{prefix}/api/v1/nni"


def rest(base: str, path: str, method: str = "GET", body: Any = None, timeout: float = 10) -> Any:
    """One REST call; returns the decoded JSON (or None for an empty answer)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{base}/{path.lstrip('/')}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        text = answer.read().decode()
    return json.loads(text) if text.strip() else None


def status(base: str) -> Dict[str, Any]:
    """``check-status``: ``{"status": ..., "errors": [...]}``."""
    return rest(base, "check-status")


def trial_states(base: str) -> List[str]:
    """The status of every trial NNI knows (``WAITING``, ``RUNNING``, ``SUCCEEDED``, ...)."""
    return [t.get("status", "") for t in rest(base, "trial-jobs") or []]


def refused(error: BaseException) -> bool:
    """Whether a REST error means that nothing listens on the port (connection refused or reset)."""
    reason = getattr(error, "reason", error)  # urllib wraps the socket error in URLError.reason
    return isinstance(reason, (ConnectionRefusedError, ConnectionResetError))


def wait(base: str, timeout: float = 600, poll: float = 3.0, min_succeeded: Optional[int] = None,
         settle_s: float = 20.0, on_poll: Optional[Callable[[str, List[str]], Optional[str]]] = None,
         gone_s: Optional[float] = GONE_S, pending: Optional[Callable[[], bool]] = None,
         pending_settle_s: float = PENDING_SETTLE_S) -> str:
    """Wait until the experiment has finished (see the module docstring) or ``min_succeeded`` trials succeeded.

    ``on_poll(status, trial_states)`` is called after each successful poll; when it returns a string,
    waiting ends with that string as the status (e.g. ``"TRIALS_CANNOT_START"``).  ``gone_s``: seconds
    of refused connections (at least :data:`FIRST_ANSWER_S` before NNI's first answer) after which
    the experiment is given up as :data:`GONE`; None waits until ``timeout`` whatever happens.
    ``pending()``: the tuner still has work (its state file says it has not finished, e.g. a trial
    whose result did not come is about to be retried after its grace period): the idle fallback
    then waits ``pending_settle_s`` instead of ``settle_s``.

    Returns
    -------
    str
        The last status, :data:`GONE`, or ``"TIMEOUT"``.
    """
    deadline = time.time() + timeout
    idle_since = None
    refused_since = None
    answered = False
    last = "UNKNOWN"
    while time.time() < deadline:
        try:
            last = status(base)["status"]
            states = trial_states(base)
        except REST_ERRORS as error:
            if refused(error):
                refused_since = refused_since or time.time()
                limit = gone_s if answered else max(gone_s or 0.0, FIRST_ANSWER_S)
                if gone_s is not None and time.time() - refused_since >= limit:
                    logger.warning("NNI at %s refuses connections for %.0f s: the experiment is gone", base,
                                   time.time() - refused_since)
                    return GONE
            else:
                refused_since = None
            logger.debug("REST not answering: %s", error)
            time.sleep(min(poll, 1.0) if refused_since else poll)
            continue
        answered, refused_since = True, None
        if on_poll is not None:
            verdict = on_poll(last, states)
            if verdict:
                return verdict
        if last in FINAL_STATES:
            return last
        if min_succeeded is not None and states.count("SUCCEEDED") >= min_succeeded:
            return last
        if last in IDLE_STATES and states and not any(s in ACTIVE_TRIAL_STATES for s in states):
            idle_since = idle_since or time.time()
            if time.time() - idle_since >= (pending_settle_s if pending is not None and pending() else settle_s):
                return last
        else:
            idle_since = None
        time.sleep(poll)
    return "TIMEOUT"


def decode_metric(value):
    """A metric's ``data`` as NNI stores it (JSON encoded twice), decoded."""
    value = json.loads(value) if isinstance(value, str) else value
    return json.loads(value) if isinstance(value, str) else value


def trial_parameters(job: Dict[str, Any]) -> Dict[str, Any]:
    """The parameters of a REST ``trial-jobs`` entry (``{}`` when it has none)."""
    parameters = {}
    for hyper in job.get("hyperParameters") or []:
        packed = json.loads(hyper) if isinstance(hyper, str) else hyper
        parameters = packed.get("parameters") or parameters
    return parameters if isinstance(parameters, dict) else {}


def read_trials(base: str) -> List[Dict[str, Any]]:
    """Trials with their parameters and final results: ``[{"id", "status", "sequence", "parameters", "result"}]``.

    Metric ``data`` is JSON encoded twice by NNI, hence the double decoding.  NNI 3.0's ``trial-jobs``
    lists the final result of ``SUCCEEDED`` trials only; a trial killed after it reported (whose result
    the tuner received and used) gets its result from ``metric-data`` instead.
    """
    trials = []
    for job in rest(base, "trial-jobs") or []:
        result = None
        metrics = job.get("finalMetricData")
        if not metrics and job.get("status") in ENDED_WITHOUT_SUCCESS:
            metrics = [m for m in rest(base, f"metric-data/{job.get('trialJobId') or job.get('id')}") or []
                       if m.get("type") == "FINAL"]
        for metric in metrics or []:
            result = decode_metric(metric.get("data"))
        trials.append({"id": job.get("trialJobId") or job.get("id"), "status": job.get("status"),
                       "sequence": job.get("sequenceId"), "parameters": trial_parameters(job), "result": result})
    trials.sort(key=lambda t: (t["sequence"] if t["sequence"] is not None else 1 << 30))
    return trials


def dispatcher_rest_url(env: Optional[Dict[str, str]] = None) -> Optional[str]:
    """REST base URL seen from inside NNI's dispatcher (from ``NNI_TUNER_COMMAND_CHANNEL``), else None."""
    channel = (env if env is not None else os.environ).get("NNI_TUNER_COMMAND_CHANNEL")
    if not channel:
        return None
    parsed = urllib.parse.urlparse(channel)  # ws://localhost:PORT[/prefix]/tuner
    prefix = parsed.path.rsplit("/tuner", 1)[0]
    return f"http://{parsed.netloc}{prefix}/api/v1/nni"


def finish_from_dispatcher(env: Optional[Dict[str, str]] = None) -> Optional[int]:
    """From inside NNI's dispatcher: set ``maxTrialNumber`` to the number of trials so NNI ends ``DONE``.

    Returns the number of trials, or None (doing nothing) outside a dispatcher.
    """
    base = dispatcher_rest_url(env)
    if base is None:
        return None
    count = len(rest(base, "trial-jobs") or [])
    profile = rest(base, "experiment") or {}
    current = (profile.get("params") or {}).get("maxTrialNumber")
    if count and (current is None or current > count):
        rest(base, "experiment?update_type=MAX_TRIAL_NUM", method="PUT", body={"params": {"maxTrialNumber": count}})
    return count
