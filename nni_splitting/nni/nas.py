"""NNI 3.0 NAS width search: an ``nni.nas`` multi-trial strategy over :class:`WidthSpace`.

The same per-layer width multipliers as the HPO search spaces (``search_spaces/*.json``), searched by
``nni.nas.strategy`` (``Random``, ``RegularizedEvolution``, ``TPE``) in a ``NasExperiment``.  Every
sample is one NNI trial that runs the comparison's ``width`` arm (:func:`nni_splitting.nni.arms.run_arm`):
trained from scratch with the same epochs and data, reported with the same flat columns (``arm`` =
``nas_<strategy>``), so ``nni-splitting report`` merges it with a comparison.  The strategy maximises
``default`` = the **validation** accuracy; samples above ``max_params_ratio`` of the full model's
parameters are not trained (``default = 0``): the search's parameter budget::

    from nni_splitting.nni.nas import run_nas_width_search
    experiment_id = run_nas_width_search("small_cnn", "tpe", max_trials=12, max_params_ratio=0.05,
                                         settings={"dataset": "digits", "epochs": 18})
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

from nni_splitting.nni.arms import resolve_arm_params, run_arm
from nni_splitting.common.data import load_dataset
from nni_splitting.models import current_widths
from nni_splitting.nni.rest import rest_url
from nni_splitting.nni.config import load_config, write_config
from nni_splitting.nni.report import read_csv, rows_from_rest, write_outputs
from nni_splitting.common.storage import trial_output_dir
from nni_splitting.nni.trial import model_kwargs
from nni_splitting.baselines.growth import WIDTH_CHOICES, width_model_space

__all__ = ["NAS_STRATEGIES", "evaluate_width_sample", "make_strategy", "run_nas_width_search"]

_logger = logging.getLogger(__name__)

#: strategy name -> class name in ``nni.nas.strategy``
NAS_STRATEGIES = {"random": "Random", "evolution": "RegularizedEvolution", "tpe": "TPE"}


def make_strategy(name: str, population_size: int = 8, sample_size: int = 4):
    """An ``nni.nas.strategy`` instance for ``name`` in :data:`NAS_STRATEGIES`."""
    if name not in NAS_STRATEGIES:
        raise ValueError(f"strategy must be one of {sorted(NAS_STRATEGIES)}, got {name!r}")
    import nni.nas.strategy as strategies  # deferred: nni.nas is heavy and optional

    if name == "evolution":
        return strategies.RegularizedEvolution(population_size=population_size, sample_size=sample_size,
                                               dedup=True)
    if name == "random":
        return strategies.Random(dedup=True)
    return strategies.TPE()


def evaluate_width_sample(model, settings: Mapping[str, Any]) -> Dict[str, Any]:
    """The evaluator of a NAS trial: train ``model``'s widths as the ``width`` arm and report the result.

    ``model`` is the frozen :class:`WidthSpace` the strategy sampled; ``settings`` are the arm's
    parameters (data set, epochs, ``max_params_ratio``, ``arm_label``, ...).
    """
    import nni  # deferred: NNI's trial runtime only where a trial runs

    params = resolve_arm_params({**dict(settings), "arm": "width", "widths": current_widths(model.net)})
    trial_id, experiment_id = nni.get_trial_id(), nni.get_experiment_id()
    output_dir = trial_output_dir(params["storage_path"] or None, experiment_id, trial_id,
                                  os.environ.get("NNI_OUTPUT_DIR")) or Path("runs") / f"nas-{trial_id}"
    result = run_arm(params, Path(output_dir), nni.report_intermediate_result, trial_id, experiment_id)
    nni.report_final_result(result)
    return result


def run_nas_width_search(model_name: str = "small_cnn", strategy: str = "tpe", max_trials: int = 12,
                         max_params_ratio: Optional[float] = None, settings: Optional[Mapping[str, Any]] = None,
                         choices: Sequence[float] = WIDTH_CHOICES, concurrency: int = 1, port: int = 8091,
                         name: Optional[str] = None, max_duration: str = "2h", keep: bool = False,
                         out: Optional[str] = None) -> str:
    """Run an ``nni.nas`` width search to its end and return its experiment id (stopped unless ``keep``).

    Parameters
    ----------
    model_name : str
        A model of :mod:`nni_splitting.models` (its default widths are the 1.0 multiplier).
    strategy : str
        ``"random"``, ``"evolution"`` or ``"tpe"`` (:data:`NAS_STRATEGIES`).
    max_trials : int
        Samples to train.
    max_params_ratio : float, optional
        Parameter budget as a fraction of the full model; larger samples are reported untrained.
    settings : dict, optional
        Trial settings of :mod:`nni_splitting.nni.trial` / :mod:`nni_splitting.nni.arms` (``dataset``,
        ``data_dir``, ``epochs``, ``lr``, ``num_threads``, ...); ``model`` is set from ``model_name``.
    choices : sequence of float
        Width multipliers per layer (default: the HPO spaces' choices).
    concurrency, port, name, max_duration
        The NNI experiment's ``trial_concurrency``, web/REST port, name and duration cap.
    keep : bool
        Leave the experiment running for its dashboard (stop it with ``nnictl stop ID``); note that
        ``nni.nas`` stops it when this Python process exits.
    out : str, optional
        Folder for ``results.csv`` / ``results.md`` / ``compare.png``, read from the experiment's REST
        API before it stops (NNI 3.0's ``nnictl view`` cannot serve a stopped NAS experiment later;
        ``nni-splitting report ID --merge OUT/results.csv`` puts it beside a comparison).
    """
    if not isinstance(max_trials, int) or max_trials < 1:
        raise ValueError(f"max_trials must be a positive int, got {max_trials!r}")
    if max_params_ratio is not None and not 0 < max_params_ratio <= 1:
        raise ValueError(f"max_params_ratio must be a fraction in (0, 1], got {max_params_ratio!r}")
    search = make_strategy(strategy)
    from nni.nas.evaluator import FunctionalEvaluator  # deferred: nni.nas (heavy, optional) only for a search
    from nni.nas.experiment import NasExperiment

    trial_settings = {**dict(settings or {}), "model": model_name, "arm": "width",
                      "arm_label": f"nas_{strategy}", "max_params_ratio": max_params_ratio}
    resolved = resolve_arm_params(trial_settings)  # bad settings fail here, not in every trial
    data = load_dataset(resolved["dataset"], data_dir=resolved["data_dir"], per_class=resolved["per_class"])
    space = width_model_space(model_name, choices, **model_kwargs(model_name, data))
    evaluator = FunctionalEvaluator(evaluate_width_sample, settings=trial_settings)
    experiment = NasExperiment(space, evaluator, search)
    experiment.config.experiment_name = name or f"nas-{strategy}-{model_name}"
    experiment.config.max_trial_number = max_trials
    experiment.config.trial_concurrency = concurrency
    experiment.config.max_experiment_duration = max_duration
    started = time.time()
    try:
        experiment.start(port=port)  # returns once the strategy has submitted its last sample ...
        status = experiment.get_status()
        while status not in ("DONE", "STOPPED", "ERROR"):  # ... which still has to train
            time.sleep(2)
            status = experiment.get_status()
        _logger.info("NAS width search %s (%s): %s after %.0f s", experiment.id, strategy, status,
                     time.time() - started)
        if out:
            rows = rows_from_rest(rest_url(port), experiment.id)
            write_outputs(rows, out, f"nni.nas {strategy} width search ({experiment.id})")
    finally:
        if not keep:
            experiment.stop()
    return experiment.id


def export_growth_config(results_csv, template, path, model_name: Optional[str] = None) -> Dict[str, Any]:
    """Write a growth experiment seeded with a search's top model: the sample with the best validation
    accuracy in ``results_csv`` (a search's ``results.csv``; over-budget samples are not candidates)
    becomes ``seed_widths`` of the ``template`` config (e.g. ``experiments/digits.yml``); returns the
    picked row. The written config runs with ``nni-splitting run --config PATH``, and ``nni-splitting
    report <its id> --merge results_csv`` tables both experiments together."""
    rows = [r for r in read_csv(results_csv) if r.get("widths") and r.get("val_accuracy") not in (None, "")]
    if not rows:
        raise ValueError(f"{results_csv} has no trained sample with widths to grow")
    best = max(rows, key=lambda r: float(r["val_accuracy"]))
    config = load_config(template)
    class_args = config["tuner"]["classArgs"]
    class_args["model"] = model_name or class_args.get("model")
    class_args["seed_widths"] = [int(w) for w in str(best["widths"]).split(",")]
    config["experimentName"] = f"grow-nas-top-{best.get('trial_id', '')}"
    write_config(config, path)
    _logger.info("growth config %s: seed %s (trial %s, validation accuracy %s)", path, class_args["seed_widths"],
                 best.get("trial_id"), best["val_accuracy"])
    return best
