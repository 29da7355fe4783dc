"""Trial entry of the comparison experiment: ``python -m nni_splitting.arms``.

One NNI trial runs one *arm* at one parameter ratio, chosen by the ``arm`` parameter (see
:data:`ARMS`); :class:`nni_splitting.compare.CompareTuner` emits them.  Every trial reports a flat
final result with the same columns, so NNI's dashboard shows all arms in one sortable table:

``default`` (test accuracy; for the searched ``width`` arm the validation accuracy, which its
tuner maximises: no search selects on the test set), ``test_accuracy``, ``val_accuracy``, ``arm``,
``method`` (family), ``seed``, ``step``, ``params``, ``flops``, ``params_ratio``, ``flops_ratio`` (against the full-width model),
``epochs`` (all training epochs behind this network, ancestors / pre-training included),
``wall_time`` (seconds, likewise cumulative), ``widths``, ``node``, ``lineage``.

Arms:

``splitting``
    One growth step of splitting steepest descent (delegates to :func:`nni_splitting.trial.run_trial`).
``full``
    The full-width model, trained ``full_epochs``; its checkpoint is what the pruners prune.
``l1``, ``slim``, ``fpgm``, ``taylor``, ``bn_slim``
    :func:`nni_splitting.baselines.prune_to_ratio` of the full model's checkpoint to
    ``target_ratio``, then ``finetune_epochs`` of fine-tuning.
``random_split``, ``new_neurons``
    From the seed network, replay the splitting lineage's per-step, per-layer split counts
    (``split_counts``) with random neurons / random directions (:func:`random_split`) or new
    randomly initialised neurons (:func:`add_new_neurons`), training the same epochs per step.
``scratch``
    The splitting lineage's architecture at this step (``widths``), freshly initialised and trained
    for the same total number of epochs as the lineage.
``pruned_scratch``
    A pruner's architecture (``widths`` of its trial) freshly initialised and trained for the lineage's
    total epochs at that ratio (the paper's Fig. 3c-d); reported as ``<pruner>_scratch``.
``uniform``
    A uniform width multiplier of the full model matched to ``target_params``
    (:func:`uniform_width_model`), same total epochs.
``width``
    Width search: widths from ``mult_<i>`` parameters (or ``widths``) (search_spaces/*.json with NNI's built-in
    tuners, or an ``nni.nas`` strategy through :mod:`nni_splitting.baselines.nas`).  With
    ``max_params_ratio`` set, a sample above that fraction of the full model's parameters is not
    trained: it reports ``default = 0`` and ``over_budget = 1`` (the search's parameter budget).

Standalone: ``python -m nni_splitting.arms --output-dir DIR --params '{"arm": "uniform", ...}'``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch

__all__ = ["ARMS", "FAMILIES", "COMPARE_DEFAULTS", "run_arm", "main"]

_logger = logging.getLogger("nni_splitting.arms")

PRUNING_ARMS = ("l1", "slim", "fpgm", "taylor", "bn_slim")
GROWTH_ARMS = ("random_split", "new_neurons")
#: arm -> family (the ``method`` column)
FAMILIES: Dict[str, str] = {"splitting": "splitting", "full": "full", **{a: "pruning" for a in PRUNING_ARMS},
                            "random_split": "growth", "new_neurons": "growth", "scratch": "retrain",
                            "pruned_scratch": "retrain",
                            "uniform": "width", "width": "width_search"}
ARMS = tuple(FAMILIES)

#: Keys of the comparison beyond the splitting trial's settings.
COMPARE_DEFAULTS: Dict[str, Any] = {
    "arm": "splitting",
    "full_epochs": None,          # default: epochs
    "finetune_epochs": None,      # default: epochs
    "prune_training_steps": 50,   # training steps of slim / taylor / bn_slim
    "full_checkpoint": "",        # pruners: checkpoint of the full trial
    "prior_epochs": 0,            # epochs behind the starting point (pruners: the full training)
    "prior_wall_time": 0.0,       # seconds likewise
    "target_ratio": None,         # pruners: params ratio
    "target_params": None,        # uniform: parameter count
    "split_counts": [],           # random_split / new_neurons: [{layer: count}] per step
    "total_epochs": None,         # scratch / uniform: epochs to train (default: seed_epochs + step * epochs)
    "ancestor_epochs": 0,         # splitting: epochs of the ancestors
    "ancestor_wall_time": 0.0,
    "max_params_ratio": None,     # width: parameter budget (fraction of the full model) of a search
    "arm_label": "",              # the reported arm name (default: arm), e.g. "nas_tpe", "l1_scratch"
    "matched_epochs": None,       # pruners: the lineage's total epochs at this ratio (for pruned_scratch)
}


def _resolve(received: Dict[str, Any], overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    from .trial import resolve_params
    merged = {**COMPARE_DEFAULTS, **(received or {}), **(overrides or {})}
    if merged["arm"] not in FAMILIES:
        raise ValueError(f"arm must be one of {list(FAMILIES)}, got {merged['arm']!r}")
    budget = merged["max_params_ratio"]
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1):
        raise ValueError(f"max_params_ratio must be a fraction in (0, 1], got {budget!r}")
    return resolve_params(merged)


def _train_epochs(model, loaders, p: Dict[str, Any], epochs: int, report: Callable[[dict], None]) -> float:
    from .trial import _train
    if epochs <= 0:
        from .trial import _accuracy
        return _accuracy(model, loaders[1])
    return _train(model, loaders, dict(p, epochs=int(epochs), step=1, seed_epochs=None), report)


def _seed_epochs(p) -> int:
    return int(p["seed_epochs"] or p["epochs"])


def run_arm(p: Dict[str, Any], output_dir: Path, report: Callable[[dict], None] = lambda r: None,
            trial_id: str = "STANDALONE", experiment_id: str = "STANDALONE") -> Dict[str, Any]:
    """Run one arm (parameters already resolved); return the flat final result."""
    arm = p["arm"]
    started = time.time()
    if p["num_threads"]:
        torch.set_num_threads(p["num_threads"])
    if arm == "splitting":
        from .trial import run_trial
        result = run_trial(p, output_dir, report, trial_id, experiment_id)
        own_epochs = _seed_epochs(p) if p["step"] == 0 else int(p["epochs"])
        result.update(arm="splitting", method="splitting", seed=p["seed"], test_accuracy=result["default"],
                      epochs=int(p["ancestor_epochs"] or 0) + own_epochs,
                      wall_time=float(p["ancestor_wall_time"] or 0) + (time.time() - started))
        return result

    from . import count_model
    from .baselines import add_new_neurons, prune_to_ratio, random_split, uniform_width_model, widths_from_params
    from .data import dummy_input, load_dataset, make_loaders
    from .models import build_model, current_widths, default_widths, scale_widths
    from .trial import _accuracy, _device, _model_kwargs

    data = load_dataset(p["dataset"], data_dir=p["data_dir"], val_fraction=p["val_fraction"],
                        per_class=p["per_class"], seed=p["data_seed"])
    torch.manual_seed(p["seed"])
    loaders = make_loaders(data, batch_size=p["batch_size"], seed=p["seed"], eval_batch_size=p["eval_batch_size"])
    dummy = dummy_input(data)
    kwargs = _model_kwargs(p["model"], data)
    device = _device(p["device"])
    name = p["model"]
    epochs = 0.0
    prior_wall = 0.0
    extra: Dict[str, Any] = {}
    matched = p["total_epochs"] or (_seed_epochs(p) + int(p["step"]) * int(p["epochs"]))

    if arm == "full":
        model = build_model(name, widths=None, **kwargs).to(device)
        epochs = p["full_epochs"] or p["epochs"]
        val = _train_epochs(model, loaders, p, epochs, report)
    elif arm in PRUNING_ARMS:
        if not p["full_checkpoint"]:
            raise ValueError(f"arm {arm} needs full_checkpoint (the trained full-width model)")
        state = torch.load(p["full_checkpoint"], map_location="cpu", weights_only=True)
        full = build_model(state["model"], widths=state["widths"], **state["model_config"])
        full.load_state_dict(state["state_dict"])
        steps = int(p["prune_training_steps"])
        model, info = prune_to_ratio(full, arm, float(p["target_ratio"]), dummy, evaluator=loaders[0],
                                     training_steps=steps, lr=0.01, seed=p["seed"])
        model = model.to(device)
        extra.update(pruned_val_accuracy=_accuracy(model, loaders[1]), target_ratio=float(p["target_ratio"]))
        finetune = p["finetune_epochs"] or p["epochs"]
        val = _train_epochs(model, loaders, p, finetune, report)
        trained_steps = steps / max(1, len(loaders[0])) if arm in ("slim", "taylor", "bn_slim") else 0.0
        epochs = float(p["prior_epochs"] or 0) + trained_steps + finetune
        prior_wall = float(p["prior_wall_time"] or 0)
    elif arm in GROWTH_ARMS:
        model = build_model(name, widths=list(p["widths_seed"]), **kwargs).to(device)
        val = _train_epochs(model, loaders, p, _seed_epochs(p), report)
        epochs = _seed_epochs(p)
        for k, counts in enumerate(p["split_counts"] or []):
            counts = {layer: int(c) for layer, c in counts.items() if int(c) > 0}
            model = model.cpu().eval()
            gen_seed = int(p["seed"]) * 1000 + k
            if arm == "random_split":
                model, _ = random_split(model, dummy, counts, epsilon=float(p["epsilon"]), seed=gen_seed)
            else:
                model, _ = add_new_neurons(model, dummy, counts, seed=gen_seed)
            model = model.to(device)
            val = _train_epochs(model, loaders, p, int(p["epochs"]), report)
            epochs += int(p["epochs"])
    elif arm in ("scratch", "pruned_scratch"):
        if not p["widths"]:
            raise ValueError(f"arm {arm} needs widths (the architecture to train from scratch)")
        model = build_model(name, widths=list(p["widths"]), **kwargs).to(device)
        val = _train_epochs(model, loaders, p, matched, report)
        epochs = matched
    elif arm == "uniform":
        model, mult = uniform_width_model(name, int(p["target_params"]), dummy, **kwargs)
        model = model.to(device)
        extra["width_multiplier"] = mult
        val = _train_epochs(model, loaders, p, matched, report)
        epochs = matched
    elif arm == "width":
        widths = list(p["widths"]) if p["widths"] else widths_from_params(name, p)
        model = build_model(name, widths=widths, **kwargs)
        budget = p["max_params_ratio"]
        full_params = count_model(build_model(name, widths=None, **kwargs).eval(), dummy)[1]
        ratio = count_model(model.eval(), dummy)[1] / full_params
        if budget is not None and ratio > float(budget):  # the search's parameter budget: not trained
            _logger.info("width sample %s: %.2f%% of the full parameters > budget %.2f%%, not trained",
                         widths, 100 * ratio, 100 * float(budget))
            val, epochs, extra["over_budget"] = None, 0.0, 1
        else:
            model = model.to(device)
            epochs = p["total_epochs"] or p["epochs"]
            val = _train_epochs(model, loaders, p, epochs, report)
    else:  # pragma: no cover - checked in _resolve
        raise ValueError(arm)

    test = None if extra.get("over_budget") else _accuracy(model, loaders[2])
    model = model.cpu().eval()
    flops, n_params = count_model(model, dummy)
    reference = build_model(name, widths=None, **kwargs)
    ref_flops, ref_params = count_model(reference.eval(), dummy)
    widths = current_widths(model) if hasattr(model, "width_layers") else []
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = output_dir / "checkpoint.pt"
    if arm == "full":
        torch.save({"model": name, "widths": widths, "model_config": dict(model.config),
                    "state_dict": model.state_dict()}, checkpoint)
    seconds = time.time() - started
    result = {
        "default": (val or 0.0) if arm == "width" else test, "test_accuracy": test, "val_accuracy": val,
        "arm": p["arm_label"] or arm, "method": FAMILIES[arm], "seed": p["seed"],
        "step": p["step"], "params": n_params, "flops": flops, "params_ratio": n_params / ref_params,
        "flops_ratio": flops / ref_flops, "epochs": float(epochs), "wall_time": prior_wall + seconds,
        "seconds": seconds, "widths": ",".join(str(w) for w in widths), "node": p["node_id"],
        "lineage": p["lineage"], "checkpoint": str(checkpoint) if arm == "full" else "",
    }
    result.update(extra)
    return result


def main(argv=None) -> int:
    """Entry point of ``python -m nni_splitting.arms``."""
    import nni
    from .storage import trial_output_dir
    from .trial import _load_overrides

    parser = argparse.ArgumentParser(prog="python -m nni_splitting.arms", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir")
    parser.add_argument("--params", help="JSON object (or @file) overriding the parameters")
    args = parser.parse_args(argv)
    received = nni.get_next_parameter() or {}
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s", "%H:%M:%S"))
    package_logger = logging.getLogger("nni_splitting")
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    try:
        try:
            p = _resolve(received, _load_overrides(args.params))
        except ValueError as error:
            print(f"nni_splitting.arms: bad parameters: {error}", file=sys.stderr)
            return 2
        trial_id, experiment_id = nni.get_trial_id(), nni.get_experiment_id()
        output_dir = args.output_dir or trial_output_dir(p["storage_path"] or None, experiment_id, trial_id,
                                                         os.environ.get("NNI_OUTPUT_DIR"))
        if output_dir is None:
            output_dir = Path("runs") / time.strftime("arm-%Y%m%d-%H%M%S")
        _logger.info("arm %s, parameters: %s", p["arm"], json.dumps(p, sort_keys=True, default=str))
        try:
            result = run_arm(p, Path(output_dir), nni.report_intermediate_result, trial_id, experiment_id)
        except FileNotFoundError as error:
            print(f"nni_splitting.arms: {error}", file=sys.stderr)
            return 3
        nni.report_final_result(result)
        _logger.info("final result: %s", json.dumps(result, sort_keys=True))
        return 0
    finally:
        package_logger.removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
