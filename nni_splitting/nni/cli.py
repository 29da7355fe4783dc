"""The command line of nni-splitting: ``nni-splitting run|resume|compare|report|nas|register|show``.

``run --config experiments/digits.yml``
    Check the tuner's classArgs, ``nnictl create`` the experiment (this Python's ``bin`` first on
    ``PATH``, so trials run with it), print the dashboard URL, wait until growth is over, print the
    lineage table and stop the experiment by its id.  A run whose trials cannot even start (e.g. a
    missing ``trialCodeDirectory``) ends at once with the reason from NNI's ``nnimanager.log``; a
    run whose experiment is stopped from outside (``nnictl stop``) notices within seconds, prints
    the lineage so far and exits 1; so does a run in which a lineage ended early (its trials
    failed, or its checkpoints were corrupt), naming the lineage and why.  SIGINT, SIGTERM and
    SIGHUP stop the experiment the command started.
``resume ID``
    ``nnictl resume`` a stopped experiment (retried when NNI's "Tuner did not connect in 10 seconds"
    race is lost), then as ``run``.
``compare --config experiments/compare_digits.yml``
    Splitting and its baselines as one experiment (:class:`~nni_splitting.nni.compare.CompareTuner`);
    writes ``results.csv`` / ``.md`` / ``compare.png`` (:mod:`nni_splitting.nni.report`).
``report ID [ID ...]``
    The same outputs from NNI's records of finished comparison experiments.
``nas --model small_cnn --strategy tpe``
    An ``nni.nas`` width search with the comparison's trial settings.
``register``
    ``nnictl algo register --meta nni_splitting/registration.yml``: configs may then say
    ``tuner: {name: Splitting}``.
``show --port 8080``
    The lineage table of a running experiment.

NNI's dashboard and REST API have no authentication.  The commands that start NNI serve them on
127.0.0.1 only (:mod:`nni_splitting.nni.nnictl`); ``--public`` serves them on every interface.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Dict

import nni_splitting.nni.report as report
from nni_splitting.nni import nas
from nni_splitting.nni.compare import CompareClassArgsValidator
from nni_splitting.nni import nnictl, rest
from nni_splitting.nni.config import is_splitting_tuner, load_config
from nni_splitting.nni.history import experiment_folder, experiment_references
from nni_splitting.nni.watch import (PUBLIC_WARNING, print_dashboard, print_lineage,  # PUBLIC_WARNING: re-exported
                                     stopped_if_interrupted, watch_comparison, watch_growth)
from nni_splitting.nni.tuner_args import SplittingArguments, SplittingClassArgsValidator, check_own_seed, check_seed, model_known

__all__ = ["main", "build_parser", "validate_config", "REGISTRATION", "PUBLIC_WARNING"]

logger = logging.getLogger(__name__)

REGISTRATION = Path(__file__).resolve().parents[1] / "registration.yml"  # package data


def validate_config(config: Dict[str, Any], compare: bool = False) -> None:
    """Check the tuner's classArgs before starting (nnictl does not run validators for v2 configs), and
    that the seed network builds (:func:`~nni_splitting.nni.tuner_args.check_seed`).

    Parameters
    ----------
    config : dict
        The experiment config (:func:`~nni_splitting.nni.config.load_config`).
    compare : bool
        Check them as :class:`~nni_splitting.nni.compare.CompareTuner` classArgs.

    Raises
    ------
    ValueError
        With the validator's message.
    """
    tuner = config.get("tuner") or {}
    class_args = dict(tuner.get("classArgs") or {})
    try:
        if compare:
            CompareClassArgsValidator().validate_class_args(**class_args)
        elif is_splitting_tuner(tuner):
            SplittingClassArgsValidator().validate_class_args(**class_args)
        if compare or is_splitting_tuner(tuner):  # the seed network builds (e.g. as many widths as the model has)
            defaults = SplittingArguments()
            model = class_args.get("model", defaults.model)
            if model_known(model):
                check_seed(model, class_args.get("seed_widths", defaults.seed_widths))
            else:  # the user's own model: built, traced, and what growth leaves out said once
                code = str(config.get("trialCodeDirectory") or ".")  # where the trials import it from
                sys.path.insert(0, code)
                try:
                    excluded = check_own_seed(model, class_args.get("model_args"), class_args.get("weights"),
                                              class_args.get("trial"))
                finally:
                    sys.path.remove(code)
                for layer, reason in excluded.items():
                    print(f"not grown: {layer}: {reason}", file=sys.stderr, flush=True)
            # (the tuner looks in its own working directory too)
            for reference in experiment_references(class_args.get("continue_from")):
                experiment_folder(reference, workdir=config.get("experimentWorkingDirectory"))
    except (ValueError, TypeError) as error:
        raise ValueError(f"bad classArgs for the {'comparison' if compare else 'splitting'} tuner: {error}") from None


def _load(args, compare: bool = False) -> Dict[str, Any]:
    config = load_config(args.config)
    if args.workdir:
        config["experimentWorkingDirectory"] = str(Path(args.workdir).expanduser().resolve())
    validate_config(config, compare=compare)
    return config


def _run(args) -> int:
    config = _load(args)
    experiment_id, port = nnictl.start(config, args.config, args.port, public=args.public)
    with stopped_if_interrupted(experiment_id):
        print_dashboard(experiment_id, port, args.public)
        return watch_growth(args, experiment_id, port, config.get("experimentWorkingDirectory"), config)


def _resume(args) -> int:
    port = nnictl.resume(args.experiment, args.port, args.workdir, public=args.public)
    with stopped_if_interrupted(args.experiment):
        print_dashboard(args.experiment, port, args.public)
        return watch_growth(args, args.experiment, port, args.workdir)


def _compare(args) -> int:
    config = _load(args, compare=True)
    experiment_id, port = nnictl.start(config, args.config, args.port, public=args.public)
    with stopped_if_interrupted(experiment_id):
        return watch_comparison(args, config, experiment_id, port)


def _report(args) -> int:
    if not args.experiments and not args.merge:
        print("nni-splitting report: give experiment ids and/or --merge CSV files", file=sys.stderr)
        return 2
    rows = []
    for path in args.merge:
        try:
            got = report.read_csv(path)
        except (OSError, ValueError) as error:
            print(f"nni-splitting report: cannot read {path}: {error}", file=sys.stderr)
            return 1
        print(f"{path}: {len(got)} rows")
        rows += got
    for experiment_id in args.experiments:
        try:
            got = report.read_experiment(experiment_id, port=args.port if len(args.experiments) == 1 else None,
                                         workdir=args.workdir)
        except Exception as error:  # nnictl view / REST failures of every kind: the message, exit 1
            print(f"nni-splitting report: cannot read {experiment_id}: {nnictl.clean_output(str(error))}",
                  file=sys.stderr)
            return 1
        print(f"{experiment_id}: {len(got)} finished trials")
        rows += got
    if not rows:
        print("nni-splitting report: no finished trial with a result", file=sys.stderr)
        return 1
    paths = report.write_outputs(rows, args.out, args.title or ", ".join(args.experiments + args.merge))
    print(report.markdown_summary(rows))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _nas(args) -> int:
    settings = json.loads(args.settings)
    if not isinstance(settings, dict):
        raise ValueError(f"--settings must be a JSON object, got {args.settings!r}")
    # nni.nas starts NNI's node server itself, with this process's environment: the loopback preload
    os.environ.update({k: v for k, v in nnictl.venv_env(public=args.public).items()
                       if k in ("NODE_OPTIONS", "NNI_SPLITTING_BIND")})
    if args.public:
        print(PUBLIC_WARNING, file=sys.stderr, flush=True)
    experiment_id = nas.run_nas_width_search(args.model, args.strategy, args.trials, args.max_params_ratio,
                                             settings, concurrency=args.concurrency, port=args.port, out=args.out)
    print(f"experiment {experiment_id} (stopped); results in {args.out}")
    if args.grow_config:  # the search's top model as the seed of a growth experiment
        best = nas.export_growth_config(Path(args.out) / "results.csv", args.grow_template, args.grow_config,
                                        args.model)
        print(f"growth config {args.grow_config}: seed widths {best['widths']} (trial {best['trial_id']}); "
              f"nni-splitting run --config {args.grow_config}, then "
              f"nni-splitting report <its id> --merge {Path(args.out) / 'results.csv'}")
    return 0


def _register(args) -> int:
    proc = nnictl.run_nnictl(["algo", "register", "--meta", str(args.meta)], check=False)
    print(proc.stdout, end="")
    print(proc.stderr, end="", file=sys.stderr)
    return proc.returncode


def _show(args) -> int:
    base = rest.rest_url(args.port)
    try:
        print(f"status: {rest.status(base)['status']}")
        print_lineage(base)
    except rest.REST_ERRORS as error:
        print(f"nni-splitting: no NNI experiment answers on port {args.port}: {error}", file=sys.stderr)
        return 1
    return 0


def _experiment_options(parser: argparse.ArgumentParser, config: bool = True) -> None:
    if config:
        parser.add_argument("--config", required=True, help="NNI config, e.g. experiments/digits.yml")
    parser.add_argument("--port", type=int, help="web/REST port (default: a free one from 8080)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds to wait for the end before stopping the experiment (default: the config's "
                             "maxExperimentDuration + 10 minutes; none set: no limit)")
    parser.add_argument("--workdir", help="experimentWorkingDirectory override")
    parser.add_argument("--keep", action="store_true", help="do not stop the experiment at the end")
    parser.add_argument("--public", action="store_true",
                        help="serve NNI's dashboard/REST API on every interface (default: 127.0.0.1 only)")


def build_parser() -> argparse.ArgumentParser:
    """The ``nni-splitting`` argument parser (one subcommand per command of the module docstring)."""
    parser = argparse.ArgumentParser(prog="nni-splitting", description="Splitting steepest descent with NNI.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="start an experiment, wait, print the lineage, stop it")
    _experiment_options(run)
    run.set_defaults(func=_run)
    resume = commands.add_parser("resume", help="resume a stopped experiment, wait, print the lineage, stop it")
    resume.add_argument("experiment", help="experiment id")
    _experiment_options(resume, config=False)
    resume.set_defaults(func=_resume)
    compare = commands.add_parser("compare", help="splitting and its baselines as one experiment")
    _experiment_options(compare)
    compare.add_argument("--out", default="results", help="folder for results.csv, results.md, compare.png")
    compare.add_argument("--screenshot", help="also save a screenshot of the dashboard's trial table here")
    compare.set_defaults(func=_compare)
    rep = commands.add_parser("report", help="CSV, Markdown and PNG of comparison experiments from NNI's records")
    rep.add_argument("experiments", nargs="*", help="experiment ids (several: one table and one plot)")
    rep.add_argument("--merge", nargs="+", default=[], metavar="CSV",
                     help="also the rows of results.csv files written before (NNI 3.0 cannot serve a stopped "
                          "nni.nas experiment)")
    rep.add_argument("--out", default="results")
    rep.add_argument("--port", type=int, help="port of a running experiment (only with one id)")
    rep.add_argument("--workdir", help="experimentWorkingDirectory the experiments were created with")
    rep.add_argument("--title", default="")
    rep.set_defaults(func=_report)
    search = commands.add_parser("nas", help="an nni.nas width search with the comparison's trial settings")
    search.add_argument("--model", default="small_cnn")
    search.add_argument("--strategy", default="tpe", choices=sorted(nas.NAS_STRATEGIES))
    search.add_argument("--trials", type=int, default=12, help="samples (over-budget ones included)")
    search.add_argument("--max-params-ratio", type=float, help="parameter budget, fraction of the full model")
    search.add_argument("--settings", default="{}", help="trial settings as JSON, e.g. "
                        "'{\"dataset\": \"digits\", \"epochs\": 24, \"num_threads\": 1}'")
    search.add_argument("--concurrency", type=int, default=1)
    search.add_argument("--port", type=int, default=8091)
    search.add_argument("--out", default="results/nas", help="folder for results.csv, results.md, compare.png")
    search.add_argument("--public", action="store_true", help="serve NNI's dashboard on every interface")
    search.add_argument("--grow-config", help="also write a growth config seeded with the top model here")
    search.add_argument("--grow-template", default=str(Path(__file__).resolve().parents[2] / "experiments" /
                                                       "digits.yml"),
                        help="the growth config it is written from (default experiments/digits.yml)")
    search.set_defaults(func=_nas)
    register = commands.add_parser("register", help="register the tuner with nnictl as 'Splitting'")
    register.add_argument("--meta", default=str(REGISTRATION), help="registration meta file")
    register.set_defaults(func=_register)
    show = commands.add_parser("show", help="print the lineage table of a running experiment")
    show.add_argument("--port", type=int, default=8080)
    show.set_defaults(func=_show)
    return parser


def main(argv=None) -> int:
    """Entry point of ``nni-splitting`` / ``python -m nni_splitting``; returns the exit status.

    Exit status: 0 success, 1 the experiment failed, 2 bad input (missing or invalid config,
    bad classArgs or settings), printed as one line without a traceback.
    """
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        with nnictl.interrupt_on_signals():  # SIGTERM / SIGHUP: the same cleanup as Ctrl-C
            return args.func(args)
    except (FileNotFoundError, ValueError) as error:
        print(f"nni-splitting {args.command}: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # nnictl failed: its own message, no traceback
        print(f"nni-splitting {args.command}: {nnictl.clean_output(str(error))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:  # before or after the experiment's watch (which handles its own)
        print(f"nni-splitting {args.command}: interrupted" + (f" ({interrupt})" if str(interrupt) else ""),
              file=sys.stderr)
        return 130
