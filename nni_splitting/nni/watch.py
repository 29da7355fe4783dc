"""Watching a running experiment from the command line: the dashboard line, progress, the lineage table
at the end, why each lineage stopped, and the exit status (``nni-splitting run|resume|compare``).
"""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

import nni_splitting.nni.report as report
from nni_splitting.nni import nnictl, rest
from nni_splitting.nni.table import best_row, format_table, lineage_rows, progress_printer

__all__ = ["print_dashboard", "print_lineage", "watch_growth", "watch_comparison", "stopped_if_interrupted", "lineage_endings",
           "tuner_pending", "duration_seconds", "wait_limit", "NO_LIMIT_S", "PUBLIC_WARNING", "CANNOT_START",
           "ENDED_EARLY", "TUNER_STATE"]

PUBLIC_WARNING = ("WARNING: --public: NNI's dashboard and REST API (no authentication: anyone who can reach "
                  "this port can change or stop the experiment) listen on every network interface.")

#: ``on_poll`` verdict when NNI cannot start trial processes.
CANNOT_START = "TRIALS_CANNOT_START"

#: Final status of a run in which a lineage ended early (failed trials, corrupt checkpoints): exit 1.
ENDED_EARLY = "LINEAGES_ENDED_EARLY"

#: The tuner's state file in ``<experiment dir>/checkpoint/`` (:class:`~nni_splitting.nni.tuner.SplittingTuner`).
TUNER_STATE = "splitting_tuner.json"

def print_dashboard(experiment_id: str, port: int, public: bool) -> None:
    if public:
        print(PUBLIC_WARNING, file=sys.stderr, flush=True)
        print(f"experiment {experiment_id} started; dashboard: http://<this machine>:{port}", flush=True)
    else:
        print(f"experiment {experiment_id} started; dashboard: http://{nnictl.LOOPBACK}:{port} (this machine "
              f"only; from elsewhere: ssh -N -L {port}:127.0.0.1:{port} <this machine>)", flush=True)

def start_check(folder: Path):
    """An ``on_poll`` check that ends the wait when NNI logs that trial processes cannot be started."""
    def check(state, trials):
        if "RUNNING" in trials or "SUCCEEDED" in trials:
            return None
        reason = nnictl.trial_start_failure(folder)
        if reason is None:
            return None
        hint = (" (the trials' working directory, trialCodeDirectory, is missing)"
                if "spawn" in reason and "ENOENT" in reason else "")
        print(f"nni-splitting: NNI cannot start the trials: {reason}{hint}\n  (see {folder}/log/nnimanager.log)",
              file=sys.stderr, flush=True)
        return CANNOT_START
    return check

def print_lineage(base: str) -> bool:
    """Print the lineage table; True when at least one trial succeeded."""
    rows = lineage_rows(rest.read_trials(base))
    print(format_table(rows))
    best = best_row(rows)
    if best is not None:
        print(f"best by validation accuracy: trial {best['trial']} (lineage {best['lineage']}, step {best['step']}, "
              f"widths {best['widths']}, {best['params']} params): test accuracy {best['test_acc']:.4f}")
    return best is not None

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

#: Waiting without a duration to go by (a week): the experiment's own limit ends it first.
NO_LIMIT_S = 7 * 86400.0

def duration_seconds(value) -> Optional[float]:
    """NNI's ``maxExperimentDuration`` (``"300m"``, ``"2h"``, ``"45s"``, ``"1d"`` or a number of seconds) in seconds."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip().lower()
    unit = _DURATION_UNITS.get(text[-1:])
    try:
        return float(text[:-1]) * unit if unit else float(text)
    except ValueError:
        raise ValueError(f"maxExperimentDuration={value!r} is not a duration such as '300m' or '2h'") from None

def wait_limit(args, config: Optional[Dict[str, Any]] = None) -> float:
    """``--timeout``, else the experiment's own duration + 10 minutes (so the CLI never cuts a run short)."""
    if args.timeout is not None:
        return float(args.timeout)
    duration = duration_seconds((config or {}).get("maxExperimentDuration"))
    return NO_LIMIT_S if duration is None else duration + 600.0

def lineage_endings(folder: Path) -> Dict[str, Any]:
    """``{"stopped": {lineage: why}, "ended_early": {lineage: why}}`` from the tuner's state file ({} when absent)."""
    try:
        state = json.loads((Path(folder) / "checkpoint" / TUNER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}

def tuner_pending(folder: Path):
    """``pending()`` for :func:`~nni_splitting.nni.rest.wait`: the tuner's state file exists and says growth is
    not finished (NNI may look idle while the tuner waits out a missing result before retrying)."""
    def pending() -> bool:
        state = lineage_endings(folder)
        return bool(state) and not state.get("finished", True)
    return pending

def print_endings(folder: Path) -> Dict[str, str]:
    """Print why each lineage stopped; return the lineages that ended early (failures, corrupt files)."""
    state = lineage_endings(folder)
    early = {str(k): str(v) for k, v in (state.get("ended_early") or {}).items()}
    for lineage, why in sorted((state.get("stopped") or {}).items()):
        print(f"lineage {lineage}: {'ENDED EARLY: ' if str(lineage) in early else ''}{why}")
    for lineage, why in sorted(early.items()):
        print(f"nni-splitting: lineage {lineage} ended early: {why}", file=sys.stderr)
    return early

def watch_growth(args, experiment_id: str, port: int, workdir: Optional[str],
                  config: Optional[Dict[str, Any]] = None) -> int:
    folder = nnictl.experiment_dir(experiment_id, workdir)
    base = rest.rest_url(port)
    seen: Dict[str, Any] = {"trials": []}  # the last trials read: the lineage so far if NNI goes away
    progress = progress_printer(time.time(), start_check(folder))

    def on_poll(state, trials):
        try:
            seen["trials"] = rest.read_trials(base)
        except rest.REST_ERRORS:
            pass
        return progress(state, trials)

    def on_end(base: str, final: str):
        if final == CANNOT_START:
            return final
        if final == nnictl.GONE:
            print("the lineage so far:")
            print(format_table(lineage_rows(seen["trials"])))
            print_endings(folder)
            return final
        if not print_lineage(base):
            print(f"no trial succeeded: see {folder}/environments/local-env/trials/*/trial.stderr and "
                  f"{folder}/log/dispatcher.log", file=sys.stderr)
            final = "NO_SUCCESS"
        for error in rest.status(base).get("errors") or []:
            print(f"NNI error: {error}", file=sys.stderr)
        if print_endings(folder) and final in rest.SUCCESS_STATES:
            final = ENDED_EARLY
        if tuner_pending(folder)():
            print("nni-splitting: the tuner had not finished growth when NNI went idle (see "
                  f"{folder}/log/dispatcher.log)", file=sys.stderr)
            final = "TUNER_UNFINISHED" if final in rest.SUCCESS_STATES else final
        return final

    final = nnictl.run_until_done(experiment_id, port, wait_limit(args, config), on_end, keep=args.keep,
                                  stopped_note=f"resume with: nni-splitting resume {experiment_id}",
                                  on_poll=on_poll, pending=tuner_pending(folder))
    return 0 if final in rest.SUCCESS_STATES else 1

@contextlib.contextmanager
def stopped_if_interrupted(experiment_id: str):
    """A stop signal outside :func:`~nni_splitting.nni.nnictl.run_until_done` (which handles its own)
    still stops the experiment this command started."""
    try:
        yield
    except KeyboardInterrupt:
        nnictl.stop_quietly(experiment_id)
        print(f"stopped {experiment_id}", flush=True)
        raise

def watch_comparison(args, config: Dict[str, Any], experiment_id: str, port: int) -> int:
    print_dashboard(experiment_id, port, args.public)
    folder = nnictl.experiment_dir(experiment_id, config.get("experimentWorkingDirectory"))

    def on_end(base: str, final: str):
        if final in (CANNOT_START, nnictl.GONE):
            return final
        rows = report.rows_from_rest(base, experiment_id)
        out = Path(args.out)
        report.write_outputs(rows, out, title=f"experiment {experiment_id}")
        print(report.markdown_summary(rows))
        print(f"wrote {out}/results.csv, {out}/results.md, {out}/compare.png")
        if args.screenshot:
            subprocess.run([sys.executable, "-m", "nni_splitting.nni.screenshot", "--port", str(port),
                            "--out", args.screenshot], check=False)
        return None

    final = nnictl.run_until_done(experiment_id, port, wait_limit(args, config), on_end, keep=args.keep,
                                  stopped_note=f"view later: nnictl view {experiment_id} --port {port}; "
                                               f"report: nni-splitting report {experiment_id}",
                                  on_poll=progress_printer(time.time(), start_check(folder)),
                                  pending=tuner_pending(folder))
    return 0 if final in rest.SUCCESS_STATES else 1
