"""Start, resume, watch and stop NNI experiments through ``nnictl`` (what a user would run).

Used by the CLI (:mod:`nni_splitting.nni.cli`) and the tests; imports neither torch nor the tuner.

Loopback: NNI 3.0's web server (dashboard and REST API, with no authentication) listens on every
interface and has no option to change that.  Unless ``public=True``, the node server is started
with ``NODE_OPTIONS=--require <nni_splitting/nni/loopback.js>``, a preload that makes every server
it opens listen on 127.0.0.1 (``NNI_SPLITTING_BIND``).  nnictl passes its environment to the node
process, so this works for ``nnictl create``, ``resume`` and ``view`` alike.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import nni_splitting.nni.rest as rest
from nni_splitting.nni.config import write_config

__all__ = [
    "LOOPBACK_PRELOAD",
    "LOOPBACK",
    "free_port",
    "venv_env",
    "nnictl_command",
    "run_nnictl",
    "create",
    "start",
    "resume",
    "stop",
    "experiment_dir",
    "trial_start_failure",
    "run_until_done",
    "clean_output",
    "stop_quietly",
    "interrupt_on_signals",
    "GONE",
]

logger = logging.getLogger(__name__)

#: The node preload that binds NNI's servers to loopback (shipped as package data).
LOOPBACK_PRELOAD = Path(__file__).with_name("loopback.js")
LOOPBACK = "127.0.0.1"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: nnimanager.log lines saying that a trial process could not be started at all.
_START_FAILURE = re.compile(r"(spawn\s+\S+\s+E[A-Z]+|\bEMFILE\b|\bENOENT\b|Failed to start trial|"
                            r"trial.*(?:start|spawn).*(?:fail|error))", re.IGNORECASE)
_TUNER_RACE = "Tuner did not connect"
#: Signals that end a command as Ctrl-C does (``timeout``, CI cancel, systemd, container stop, a closed terminal).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
#: :func:`run_until_done`'s status when the experiment stopped answering (stopped from outside).
GONE = rest.GONE


def clean_output(text: str) -> str:
    """nnictl's output as a message: colour codes and Python tracebacks removed (nnictl prints its own
    ``ERROR: ...`` line, then often a traceback of its own failure to go on, e.g. for an unknown id)."""
    kept, skipping, last_exception = [], False, ""
    for line in _ANSI.sub("", text).splitlines():
        if line.startswith("Traceback (most recent call last):"):
            skipping = True
            continue
        if skipping:
            if line[:1].isspace() or not line.strip():
                continue
            skipping, last_exception = False, line.strip()  # the exception line ends the traceback
            continue
        if line.strip():
            kept.append(line.rstrip())
    return "\n".join(kept) if kept else last_exception


class Interrupted(KeyboardInterrupt):
    """A stop signal (SIGTERM, SIGHUP) turned into Ctrl-C's exception, so that the same cleanup runs."""


@contextlib.contextmanager
def interrupt_on_signals(signals: Sequence[int] = STOP_SIGNALS):
    """Within the block, SIGTERM and SIGHUP raise :class:`Interrupted` (a ``KeyboardInterrupt``) like SIGINT.

    Only the main thread can install handlers; elsewhere this does nothing.  The old handlers come
    back at the end.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(number, frame):
        raise Interrupted(signal.Signals(number).name)

    previous = {}
    for number in signals:
        if number == signal.SIGINT and signal.getsignal(number) is not signal.default_int_handler:
            continue  # someone (e.g. a test runner) handles Ctrl-C: leave it
        previous[number] = signal.signal(number, interrupt if number != signal.SIGINT else signal.default_int_handler)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextlib.contextmanager
def _shielded(signals: Sequence[int] = STOP_SIGNALS):
    """Within the block, stop signals are held back (then re-raised once), so that a cleanup
    (``nnictl stop``) is not cut short by a second Ctrl-C / SIGTERM."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    previous = {n: signal.signal(n, lambda number, frame: pending.append(number)) for n in signals}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        if pending:
            logger.warning("%s received while stopping the experiment: ignored", signal.Signals(pending[0]).name)


def free_port(start: int = 8080, attempts: int = 200) -> int:
    """A TCP port (and the next one, which NNI also uses) where nothing listens and that can be bound.

    Both loopback and every interface are checked, so the port suits a ``--public`` run too.  (A
    race with another process is still possible; nnictl then fails with "port is used".)
    """
    for port in range(start, start + attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.2)
            if probe.connect_ex((LOOPBACK, port)) == 0:
                continue  # something answers on loopback
        try:
            for candidate in (port, port + 1):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind(("", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no free port in [{start}, {start + attempts})")


def _prepend(value: Optional[str], first: str, separator: str = os.pathsep) -> str:
    parts = [p for p in (value or "").split(separator) if p and p != first]
    return separator.join([first, *parts])


def venv_env(base: Optional[Dict[str, str]] = None, public: bool = False) -> Dict[str, str]:
    """Environment for nnictl: this interpreter's ``bin`` first on ``PATH``, the package importable.

    NNI runs ``trialCommand`` (``python -m nni_splitting.nni.trial``) through a shell with the manager's
    environment, so ``python`` must be the interpreter that has torch; and a tuner registered by
    name is imported by module name, so the folder holding ``nni_splitting`` goes on ``PYTHONPATH``
    (the checkout, or site-packages for an installed copy).  Unless ``public``, NNI's node server
    gets the loopback preload (module docstring).
    """
    env = dict(os.environ if base is None else base)
    env["PATH"] = _prepend(env.get("PATH"), str(Path(sys.executable).parent))
    env["PYTHONPATH"] = _prepend(env.get("PYTHONPATH"), str(Path(__file__).resolve().parents[2]))
    env.setdefault("PYTHONWARNINGS", "ignore:pkg_resources is deprecated")  # nnictl's import noise
    preload = f"--require={LOOPBACK_PRELOAD}"
    options = [o for o in env.get("NODE_OPTIONS", "").split() if o != preload]
    if public:
        env.pop("NNI_SPLITTING_BIND", None)
    else:
        options.append(preload)
        env["NNI_SPLITTING_BIND"] = LOOPBACK
    if options:
        env["NODE_OPTIONS"] = " ".join(options)
    else:
        env.pop("NODE_OPTIONS", None)
    return env


def nnictl_command() -> List[str]:
    """``nnictl`` next to this interpreter, else the one on ``PATH``, else ``python -m nni.tools.nnictl.nnictl``."""
    local = Path(sys.executable).parent / "nnictl"
    if local.exists():
        return [str(local)]
    found = shutil.which("nnictl")
    return [found] if found else [sys.executable, "-m", "nni.tools.nnictl.nnictl"]


def run_nnictl(args: Sequence[str], env: Optional[Dict[str, str]] = None, timeout: float = 120,
               check: bool = True, public: bool = False) -> subprocess.CompletedProcess:
    """Run ``nnictl ARGS`` with :func:`venv_env`; raise ``RuntimeError`` on failure when ``check``."""
    cmd = [*nnictl_command(), *args]
    logger.debug("running %s", cmd)
    proc = subprocess.run(cmd, env=venv_env(env, public=public), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"nnictl {' '.join(args)} failed ({proc.returncode}): "
                           f"{clean_output(proc.stdout + chr(10) + proc.stderr)}")
    return proc


def create(config_path, port: int, env: Optional[Dict[str, str]] = None, timeout: float = 180,
           public: bool = False) -> str:
    """``nnictl create --config CONFIG --port PORT``; returns the experiment id."""
    proc = run_nnictl(["create", "--config", str(config_path), "--port", str(port)], env=env, timeout=timeout,
                      check=False, public=public)
    text = _ANSI.sub("", proc.stdout + "\n" + proc.stderr)
    match = re.search(r"[Ee]xperiment [Ii][Dd][: ]+\s*([A-Za-z0-9]+)", text)
    if proc.returncode != 0 or not match:
        raise RuntimeError(f"nnictl create failed ({proc.returncode}):\n{text}")
    return match.group(1)


def start(config: Dict, name: str, port: Optional[int] = None, workdir: Optional[str] = None,
          attempts: int = 3, public: bool = False, check_s: float = 30.0) -> Tuple[str, int]:
    """Write ``config`` to a temporary file named ``name``, ``nnictl create`` it; return ``(id, port)``.

    The config must have absolute paths (:func:`~nni_splitting.nni.config.load_config`): the
    temporary file is deleted after ``nnictl create``.  ``workdir`` overrides
    ``experimentWorkingDirectory``.  Two races of a busy machine are retried, on another port: nnictl
    gives NNI's manager ~3 s to answer ("check-status"), and NNI gives the tuner 10 s to connect
    (the experiment then turns ``ERROR`` before any trial: it is stopped and created again).
    """
    if workdir:
        config = {**config, "experimentWorkingDirectory": str(Path(workdir).expanduser().resolve())}
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="nni-splitting-") as folder:
        path = write_config(config, Path(folder) / Path(name).name)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                experiment_id = create(path, port, public=public)
            except RuntimeError as error:
                if last or "check-status" not in str(error):
                    raise
                print(f"nnictl create: NNI's manager did not answer in time on port {port}; retrying", flush=True)
                port = free_port(start=port + 2)
                continue
            try:
                lost = _lost_tuner_race(rest.rest_url(port), check_s)
            except BaseException:  # Ctrl-C / SIGTERM while waiting for the tuner: leave nothing running
                stop_quietly(experiment_id)
                print(f"stopped {experiment_id}", flush=True)
                raise
            if not lost:
                return experiment_id, port
            stop(experiment_id)
            if last:
                raise RuntimeError(f"nnictl create: the tuner did not connect in time in {attempts} attempts "
                                   f"(last experiment {experiment_id}, stopped)")
            print(f"nnictl create: the tuner of {experiment_id} did not connect in time; stopped it, retrying "
                  f"({attempt + 1}/{attempts})", flush=True)
            port = free_port(start=port + 2)
    raise AssertionError("unreachable")


#: NNI's limit for the tuner to connect (10 s), with a margin.
_TUNER_LIMIT_S = 15.0


def _lost_tuner_race(base: str, wait_s: float) -> bool:
    """True when a new or resumed experiment ends in ERROR because the tuner did not connect in time."""
    started = time.time()
    deadline = started + wait_s
    while time.time() < deadline:
        try:
            answer = rest.status(base)
            running = answer.get("status") not in ("INITIALIZED", "UNKNOWN", "ERROR", None)
            # NNI says RUNNING before the tuner has connected: only a trial, or its 10 s limit passed, tells
            if running and (rest.rest(base, "trial-jobs") or time.time() - started > _TUNER_LIMIT_S):
                return False
        except rest.REST_ERRORS:
            time.sleep(1)
            continue
        errors = " ".join(str(e) for e in answer.get("errors") or [])
        if answer.get("status") == "ERROR":
            return _TUNER_RACE in errors
        time.sleep(1)
    return False


def resume(experiment_id: str, port: Optional[int] = None, workdir: Optional[str] = None, attempts: int = 3,
           public: bool = False, check_s: float = 30.0) -> int:
    """``nnictl resume ID --port P``, retried when NNI reports "Tuner did not connect in 10 seconds".

    On a loaded machine the dispatcher of a resumed experiment can start too slowly for NNI's
    10-second limit; the experiment then sits in ``ERROR``.  It is stopped and resumed again, up to
    ``attempts`` times.  Returns the port.
    """
    for attempt in range(attempts):
        port = port or free_port()
        args = ["resume", experiment_id, "--port", str(port)]
        if workdir:
            args += ["--experiment_dir", str(Path(workdir).expanduser().resolve())]
        run_nnictl(args, timeout=180, public=public)
        if not _lost_tuner_race(rest.rest_url(port), check_s):
            return port
        print(f"nnictl resume {experiment_id}: the tuner did not connect in time; retrying "
              f"({attempt + 1}/{attempts})", flush=True)
        stop(experiment_id)
        port = free_port(start=port + 2)
    raise RuntimeError(f"nnictl resume {experiment_id}: the tuner did not connect in {attempts} attempts")


def stop(experiment_id: str, env: Optional[Dict[str, str]] = None, timeout: float = 120) -> bool:
    """``nnictl stop ID``; True when nnictl succeeded."""
    try:
        proc = run_nnictl(["stop", experiment_id], env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        logger.warning("nnictl stop %s timed out", experiment_id)
        return False
    if proc.returncode != 0:
        logger.warning("nnictl stop %s failed: %s %s", experiment_id, proc.stdout, proc.stderr)
    return proc.returncode == 0


def stop_quietly(experiment_id: str) -> bool:
    """:func:`stop` with stop signals held back until it is done (a cleanup a second Ctrl-C must not cut short)."""
    with _shielded():
        return stop(experiment_id)


def experiment_dir(experiment_id: str, workdir: Optional[str] = None) -> Path:
    """``<experimentWorkingDirectory or ~/nni-experiments>/<id>``."""
    return Path(workdir or "~/nni-experiments").expanduser() / experiment_id


def trial_start_failure(folder: Path) -> Optional[str]:
    """The first ``nnimanager.log`` line saying that a trial process could not be started, else None.

    Parameters
    ----------
    folder : Path
        The experiment's folder (:func:`experiment_dir`).
    """
    log = Path(folder) / "log" / "nnimanager.log"
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if "ERROR" in line and _START_FAILURE.search(line):
            return line.strip()
    return None


def run_until_done(experiment_id: str, port: int, timeout: float, on_end: Callable[[str, str], Optional[str]],
                   keep: bool = False, stopped_note: str = "",
                   on_poll: Optional[Callable[[str, List[str]], Optional[str]]] = None,
                   gone_s: float = rest.GONE_S, pending: Optional[Callable[[], bool]] = None) -> str:
    """Wait for the experiment's end, call ``on_end(base, final)``, and stop it by id unless ``keep``.

    The experiment is stopped whatever happens (Ctrl-C, SIGTERM, SIGHUP, an error in ``on_end``;
    stop signals are held back while ``nnictl stop`` runs); ``on_end`` may return a replacement for
    the final status (e.g. ``"NO_SUCCESS"``).  ``on_poll`` may end the wait early (see
    :func:`~nni_splitting.nni.rest.wait`).  When NNI's server stops answering for ``gone_s`` seconds
    (``nnictl stop`` from elsewhere) the wait ends with :data:`GONE` and ``on_end`` is still called
    (its ``base`` no longer answers).  ``pending``: see :func:`~nni_splitting.nni.rest.wait`.  Returns the final status (``"INTERRUPTED"`` after a signal).
    """
    base = rest.rest_url(port)
    final = "UNKNOWN"
    with interrupt_on_signals():
        try:
            final = rest.wait(base, timeout=timeout, on_poll=on_poll, gone_s=gone_s, pending=pending)
            if final == GONE:
                print(f"experiment {experiment_id}: NNI stopped answering on port {port} (stopped from outside, "
                      f"e.g. by nnictl stop?)", file=sys.stderr, flush=True)
            else:
                print(f"experiment {experiment_id}: {final}", flush=True)
            final = on_end(base, final) or final
        except KeyboardInterrupt as interrupt:
            print(f"interrupted{f' ({interrupt})' if isinstance(interrupt, Interrupted) else ''}", file=sys.stderr,
                  flush=True)
            final = "INTERRUPTED"
        finally:
            with _shielded():
                note = f" ({stopped_note})" if stopped_note else ""
                if final == GONE:
                    stop(experiment_id)  # whatever is left of it (dispatcher, trials)
                    print(f"experiment {experiment_id} was stopped from outside{note}", flush=True)
                elif keep:
                    print(f"left running: nnictl stop {experiment_id}", flush=True)
                else:
                    stop(experiment_id)
                    print(f"stopped {experiment_id}{note}", flush=True)
    return final
