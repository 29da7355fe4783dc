"""Command line of nni-splitting.

``nni-splitting run --config experiments/digits.yml``
    Check the tuner's classArgs, start the experiment with ``nnictl create`` (this Python's ``bin``
    first on ``PATH``, so trials run with it), print the dashboard URL, wait until growth is over,
    print the lineage table (step, trial id, widths, parameters, FLOPs, accuracy) and stop the
    experiment by its id.
``nni-splitting show --port 8080``
    Print the lineage table of a running experiment.
``nni-splitting compare --config experiments/compare_digits.yml``
    Splitting and its baselines as one experiment (:mod:`nni_splitting.compare`).
``nni-splitting report ID [ID ...]``
    CSV / Markdown / PNG of comparison experiments from NNI's records (:mod:`nni_splitting.report`).
``nni-splitting register``
    ``nnictl algo register --meta nni_splitting/registration.yml``: configs may then say
    ``tuner: {name: Splitting}``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["main"]

REGISTRATION = Path(__file__).with_name("registration.yml")
_DASHBOARD_NOTE = ("NNI's web server listens on every network interface of this machine, not only on "
                   "localhost, and cannot be bound to 127.0.0.1: use a firewall or a trusted network.")


def _progress(started: float):
    last = {}

    def report(state, trials):
        summary = {s: trials.count(s) for s in sorted(set(trials))}
        if (state, summary) != (last.get("state"), last.get("summary")):
            counts = ", ".join(f"{n} {s.lower()}" for s, n in summary.items()) or "no trial yet"
            print(f"[{time.time() - started:6.0f}s] {state}: {counts}", flush=True)
            last.update(state=state, summary=summary)
    return report


def _best(rows):
    done = [r for r in rows if r["status"] == "SUCCEEDED" and isinstance(r.get("val_acc"), (int, float))]
    return max(done, key=lambda r: (r["val_acc"], -(r.get("params") or 0)), default=None)


def _print_lineage(base: str) -> bool:
    """Print the lineage table; True when at least one trial succeeded."""
    from .experiment import format_table, lineage_rows, read_trials

    rows = lineage_rows(read_trials(base))
    print(format_table(rows))
    best = _best(rows)
    if best is not None:
        print(f"best by validation accuracy: trial {best['trial']} (lineage {best['lineage']}, step {best['step']}, "
              f"widths {best['widths']}, {best['params']} params): test accuracy {best['test_acc']:.4f}")
    return best is not None


def _run(args) -> int:
    from . import experiment as ex

    config = ex.load_config(args.config)
    try:
        ex.validate_config(config)
    except ValueError as error:
        print(f"nni-splitting: {error}", file=sys.stderr)
        return 2
    if args.workdir:
        config["experimentWorkingDirectory"] = str(Path(args.workdir).expanduser().resolve())
    experiment_id, port = ex.start(config, args.config, args.port)
    print(f"experiment {experiment_id} started; dashboard: http://localhost:{port}\n  ({_DASHBOARD_NOTE})", flush=True)

    def on_end(base: str, final: str):
        if not _print_lineage(base):
            folder = Path(config.get("experimentWorkingDirectory", "~/nni-experiments")).expanduser() / experiment_id
            print(f"no trial succeeded: see {folder}/environments/local-env/trials/*/trial.stderr and "
                  f"{folder}/log/dispatcher.log", file=sys.stderr)
            final = "NO_SUCCESS"
        for error in ex.status(base).get("errors") or []:
            print(f"NNI error: {error}", file=sys.stderr)
        return final

    final = ex.run_until_done(experiment_id, port, args.timeout, on_end, keep=args.keep,
                              stopped_note=f"resume with: nnictl resume {experiment_id} --port {port}",
                              on_poll=_progress(time.time()))
    return 0 if final in ex.SUCCESS_STATES else 1


def _show(args) -> int:
    import urllib.error

    from .experiment import rest_url, status

    base = rest_url(args.port)
    try:
        print(f"status: {status(base)['status']}")
        _print_lineage(base)
    except (urllib.error.URLError, ConnectionError) as error:
        print(f"nni-splitting: no NNI experiment answers on port {args.port}: {error}", file=sys.stderr)
        return 1
    return 0


def _register(args) -> int:
    import subprocess

    from .experiment import nnictl_command, venv_env

    proc = subprocess.run([*nnictl_command(), "algo", "register", "--meta", str(args.meta)], env=venv_env(),
                          capture_output=True, text=True)
    print(proc.stdout, end="")
    print(proc.stderr, end="", file=sys.stderr)
    return proc.returncode


def main(argv=None) -> int:
    """Entry point of ``nni-splitting`` / ``python -m nni_splitting``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("compare", "report", "nas"):  # comparison commands have their own parsers
        if argv[0] == "compare":
            from . import compare
            return compare.main(argv[1:])
        if argv[0] == "nas":
            from .baselines import nas
            return nas.main(argv[1:])
        from . import report
        return report.main(argv[1:])
    parser = argparse.ArgumentParser(prog="nni-splitting", description="Splitting steepest descent with NNI.",
                                     epilog="also: compare --config CONFIG, report ID [ID ...], nas --model M --strategy S (see their -h)")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="start an experiment, wait, print the lineage, stop it")
    run.add_argument("--config", required=True, help="NNI config, e.g. experiments/digits.yml")
    run.add_argument("--port", type=int, help="web/REST port (default: a free one from 8080)")
    run.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the end of growth")
    run.add_argument("--workdir", help="experimentWorkingDirectory override")
    run.add_argument("--keep", action="store_true", help="do not stop the experiment at the end")
    run.set_defaults(func=_run)
    show = commands.add_parser("show", help="print the lineage table of a running experiment")
    show.add_argument("--port", type=int, default=8080)
    show.set_defaults(func=_show)
    register = commands.add_parser("register", help="register the tuner with nnictl as 'Splitting'")
    register.add_argument("--meta", default=str(REGISTRATION), help="registration meta file")
    register.set_defaults(func=_register)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
