"""Start, watch, read back and stop NNI experiments of the splitting tuner (used by the CLI and tests).

Everything goes through ``nnictl`` (so what runs is what a user runs) and NNI's REST API under
``http://localhost:PORT/api/v1/nni/``.  Helpers here import neither torch nor the tuner.

Completion: when growth is over the tuner lowers the experiment's ``maxTrialNumber`` to the number
of trials it created (REST ``PUT /experiment?update_type=MAX_TRIAL_NUM``), so NNI ends ``DONE`` once
the last trial has exited.  :func:`wait` returns on ``DONE`` / ``STOPPED`` / ``ERROR``, and as a
fallback when NNI sits in ``TUNER_NO_MORE_TRIAL``/``NO_MORE_TRIAL`` with no trial waiting or running
for ``settle_s`` seconds (e.g. the REST call failed).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

__all__ = [
    "FINAL_STATES",
    "free_port",
    "nnictl_command",
    "venv_env",
    "load_config",
    "write_config",
    "validate_config",
    "create",
    "stop",
    "rest_url",
    "rest",
    "status",
    "wait",
    "read_trials",
    "lineage_rows",
    "format_table",
    "dispatcher_rest_url",
    "trial_parameters",
    "finish_from_dispatcher",
]

logger = logging.getLogger(__name__)

#: Experiment states after which nothing more happens.
FINAL_STATES = ("DONE", "STOPPED", "ERROR")
_IDLE_STATES = ("TUNER_NO_MORE_TRIAL", "NO_MORE_TRIAL")
_ACTIVE_TRIAL_STATES = ("WAITING", "RUNNING", "UNKNOWN")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def free_port(start: int = 8080, attempts: int = 200) -> int:
    """A TCP port where nothing listens on loopback and that can be bound on every interface.

    NNI's web server binds all interfaces, so both are checked.  (A race with another process is
    still possible; nnictl then fails with "port is used".)
    """
    for port in range(start, start + attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.2)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                continue  # something answers on loopback
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("", port))
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # NNI also uses port + 1
                sock.bind(("", port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no free port in [{start}, {start + attempts})")


def _prepend(value: Optional[str], first: str) -> str:
    parts = [p for p in (value or "").split(os.pathsep) if p and p != first]
    return os.pathsep.join([first, *parts])


def venv_env(base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Environment for nnictl: this interpreter's ``bin`` first on ``PATH``, this package on ``PYTHONPATH``.

    NNI runs ``trialCommand`` (``python -m nni_splitting.trial``) through a shell with the manager's
    environment, so ``python`` must be the interpreter that has torch; and a tuner registered by
    name is imported by module name, so the package must be importable even when not installed.
    """
    env = dict(os.environ if base is None else base)
    env["PATH"] = _prepend(env.get("PATH"), str(Path(sys.executable).parent))
    env["PYTHONPATH"] = _prepend(env.get("PYTHONPATH"), str(Path(__file__).resolve().parent.parent))
    env.setdefault("PYTHONWARNINGS", "ignore:pkg_resources is deprecated")  # nnictl's import noise
    return env


def nnictl_command() -> List[str]:
    """``nnictl`` next to this interpreter, else the one on ``PATH``, else ``python -m nni.tools.nnictl.nnictl``."""
    local = Path(sys.executable).parent / "nnictl"
    if local.exists():
        return [str(local)]
    found = shutil.which("nnictl")
    return [found] if found else [sys.executable, "-m", "nni.tools.nnictl.nnictl"]


def _nnictl(args: Sequence[str], env: Optional[Dict[str, str]] = None, timeout: float = 120,
            check: bool = True) -> subprocess.CompletedProcess:
    cmd = [*nnictl_command(), *args]
    logger.debug("running %s", cmd)
    proc = subprocess.run(cmd, env=venv_env(env), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def load_config(path) -> Dict[str, Any]:
    """Read an NNI v2 YAML config, making relative paths absolute (relative to the file, as NNI does)."""
    import yaml

    path = Path(path).resolve()
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    base = path.parent

    def absolute(value):
        return str((base / Path(value).expanduser()).resolve()) if value is not None else value

    for key in ("trialCodeDirectory", "searchSpaceFile", "experimentWorkingDirectory"):
        if key in config:
            config[key] = absolute(config[key])
    tuner = config.get("tuner") or {}
    if "codeDirectory" in tuner:
        tuner["codeDirectory"] = absolute(tuner["codeDirectory"])
    return config


def write_config(config: Dict[str, Any], path) -> Path:
    """Write a config dict as YAML (absolute paths recommended, see :func:`load_config`)."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _is_splitting_tuner(tuner: Dict[str, Any]) -> bool:
    return str(tuner.get("name", "")).lower() == "splitting" or \
        str(tuner.get("className", "")).endswith("SplittingTuner")


def validate_config(config: Dict[str, Any]) -> None:
    """Check the tuner's classArgs before starting (nnictl does not run validators for v2 configs).

    Raises
    ------
    ValueError
        With the validator's message.
    """
    tuner = config.get("tuner") or {}
    if not _is_splitting_tuner(tuner):
        return
    from .tuner import SplittingClassArgsValidator
    try:
        SplittingClassArgsValidator().validate_class_args(**(tuner.get("classArgs") or {}))
    except ValueError as error:
        raise ValueError(f"bad classArgs for the splitting tuner: {error}") from None


def create(config_path, port: int, env: Optional[Dict[str, str]] = None, timeout: float = 180) -> str:
    """``nnictl create --config CONFIG --port PORT``; returns the experiment id."""
    proc = _nnictl(["create", "--config", str(config_path), "--port", str(port)], env=env, timeout=timeout,
                   check=False)
    text = _ANSI.sub("", proc.stdout + "\n" + proc.stderr)
    match = re.search(r"[Ee]xperiment [Ii][Dd][: ]+\s*([A-Za-z0-9]+)", text)
    if proc.returncode != 0 or not match:
        raise RuntimeError(f"nnictl create failed ({proc.returncode}):\n{text}")
    return match.group(1)


def stop(experiment_id: str, env: Optional[Dict[str, str]] = None, timeout: float = 120) -> bool:
    """``nnictl stop ID``; True when nnictl succeeded."""
    try:
        proc = _nnictl(["stop", experiment_id], env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        logger.warning("nnictl stop %s timed out", experiment_id)
        return False
    if proc.returncode != 0:
        logger.warning("nnictl stop %s failed: %s %s", experiment_id, proc.stdout, proc.stderr)
    return proc.returncode == 0


def rest_url(port: int, prefix: Optional[str] = None, host: str = "localhost") -> str:
    """Base URL of NNI's REST API."""
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


def _trial_states(base: str) -> List[str]:
    return [t.get("status", "") for t in rest(base, "trial-jobs") or []]


def wait(base: str, timeout: float = 600, poll: float = 3.0, min_succeeded: Optional[int] = None,
         settle_s: float = 20.0, on_poll=None) -> str:
    """Wait until the experiment has finished (see the module docstring) or ``min_succeeded`` trials succeeded.

    Returns
    -------
    str
        The last status, or ``"TIMEOUT"``.
    """
    deadline = time.time() + timeout
    idle_since = None
    last = "UNKNOWN"
    while time.time() < deadline:
        try:
            last = status(base)["status"]
            states = _trial_states(base)
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError) as error:
            logger.debug("REST not answering yet: %s", error)
            time.sleep(poll)
            continue
        if on_poll is not None:
            on_poll(last, states)
        if last in FINAL_STATES:
            return last
        if min_succeeded is not None and states.count("SUCCEEDED") >= min_succeeded:
            return last
        if last in _IDLE_STATES and states and not any(s in _ACTIVE_TRIAL_STATES for s in states):
            idle_since = idle_since or time.time()
            if time.time() - idle_since >= settle_s:
                return last
        else:
            idle_since = None
        time.sleep(poll)
    return "TIMEOUT"


def start(config: Dict[str, Any], name: str, port: Optional[int] = None, workdir: Optional[str] = None,
          attempts: int = 3) -> tuple:
    """Write ``config`` to a temporary file named ``name``, ``nnictl create`` it; return ``(id, port)``.

    ``workdir`` overrides ``experimentWorkingDirectory``.  nnictl gives NNI's manager ~3 s to answer;
    on a busy machine that fails ("check-status"), so it is retried on another port.
    """
    import tempfile

    if workdir:
        config = {**config, "experimentWorkingDirectory": str(Path(workdir).expanduser().resolve())}
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="nni-splitting-") as folder:
        path = write_config(config, Path(folder) / Path(name).name)
        for attempt in range(attempts):
            try:
                return create(path, port), port
            except RuntimeError as error:
                if attempt == attempts - 1 or "check-status" not in str(error):
                    raise
                print(f"nnictl create: NNI's manager did not answer in time on port {port}; retrying", flush=True)
                port = free_port(start=port + 2)
    raise AssertionError("unreachable")


#: final statuses a command reports as success
SUCCESS_STATES = ("DONE", "TUNER_NO_MORE_TRIAL", "NO_MORE_TRIAL")


def run_until_done(experiment_id: str, port: int, timeout: float, on_end, keep: bool = False,
                   stopped_note: str = "", on_poll=None) -> str:
    """Wait for the experiment's end, call ``on_end(base, final)``, and stop it by id unless ``keep``.

    The experiment is stopped whatever happens (Ctrl-C, an error in ``on_end``); ``on_end`` may
    return a replacement for the final status (e.g. ``"NO_SUCCESS"``).  Returns the final status.
    """
    base = rest_url(port)
    final = "UNKNOWN"
    try:
        final = wait(base, timeout=timeout, on_poll=on_poll)
        print(f"experiment {experiment_id}: {final}")
        final = on_end(base, final) or final
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        if keep:
            print(f"left running: nnictl stop {experiment_id}")
        else:
            stop(experiment_id)
            print(f"stopped {experiment_id}" + (f" ({stopped_note})" if stopped_note else ""))
    return final


def _loads_twice(value):
    value = json.loads(value) if isinstance(value, str) else value
    return json.loads(value) if isinstance(value, str) else value


def read_trials(base: str) -> List[Dict[str, Any]]:
    """Trials with their parameters and final results: ``[{"id", "status", "parameters", "result"}]``."""
    trials = []
    for job in rest(base, "trial-jobs") or []:
        parameters = trial_parameters(job)
        result = None
        for metric in job.get("finalMetricData") or []:
            result = _loads_twice(metric.get("data"))
        trials.append({"id": job.get("trialJobId") or job.get("id"), "status": job.get("status"),
                       "sequence": job.get("sequenceId"), "parameters": parameters, "result": result})
    trials.sort(key=lambda t: (t["sequence"] if t["sequence"] is not None else 1 << 30))
    return trials


def lineage_rows(trials: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per trial, ordered by lineage and step, for the lineage table.

    A trial's own result (``lineage``, ``step``, ``parent``, ``widths``, ``n_split``) wins over NNI's
    record of its parameters: NNI 3.0's local training service hands parameters to trials
    first-in-first-out, so with several trials starting together (or a trial killed before it read
    its parameters) NNI may file a trial under another trial's parameters.
    """
    rows = []
    for trial in trials:
        params, result = trial["parameters"] or {}, trial["result"] or {}

        def pick(key, param_key=None):
            return result[key] if key in result else params.get(param_key or key, "")

        rows.append({
            "lineage": pick("lineage"), "step": pick("step"), "trial": trial["id"], "parent": pick("parent"),
            "status": trial["status"],
            "widths": result.get("widths") or ",".join(str(w) for w in params.get("widths") or []),
            "splits": pick("n_split"), "params": result.get("params"), "flops": result.get("flops"),
            "val_acc": result.get("val_accuracy"), "test_acc": result.get("default"),
        })
    rows.sort(key=lambda r: (str(r["lineage"]), r["step"] if isinstance(r["step"], int) else -1))
    return rows


def format_table(rows: List[Dict[str, Any]]) -> str:
    """Plain-text table of :func:`lineage_rows`."""
    columns = ["lineage", "step", "trial", "parent", "status", "widths", "splits", "params", "flops", "val_acc",
               "test_acc"]

    def cell(value):
        if isinstance(value, float):
            return f"{value:.4f}"
        return "" if value is None else str(value)

    table = [columns] + [[cell(r.get(c)) for c in columns] for r in rows]
    sizes = [max(len(line[i]) for line in table) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(s) for v, s in zip(line, sizes)).rstrip() for line in table)


def dispatcher_rest_url(env: Optional[Dict[str, str]] = None) -> Optional[str]:
    """REST base URL seen from inside NNI's dispatcher (from ``NNI_TUNER_COMMAND_CHANNEL``), else None."""
    channel = (env if env is not None else os.environ).get("NNI_TUNER_COMMAND_CHANNEL")
    if not channel:
        return None
    parsed = urllib.parse.urlparse(channel)  # ws://localhost:PORT[/prefix]/tuner
    prefix = parsed.path.rsplit("/tuner", 1)[0]
    return f"http://{parsed.netloc}{prefix}/api/v1/nni"


def trial_parameters(job: Dict[str, Any]) -> Dict[str, Any]:
    """The parameters of a REST ``trial-jobs`` entry (``{}`` when it has none)."""
    parameters = {}
    for hyper in job.get("hyperParameters") or []:
        packed = json.loads(hyper) if isinstance(hyper, str) else hyper
        parameters = packed.get("parameters") or parameters
    return parameters if isinstance(parameters, dict) else {}


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
