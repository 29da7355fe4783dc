"""One growth step as an NNI trial: ``python -m nni_splitting.nni.trial``.

Contract with :class:`nni_splitting.nni.tuner.SplittingTuner` (the parameters from
``nni.get_next_parameter()``; missing keys take the defaults below):

1. load the data (a missing ``data_dir`` fails the trial at once with the data module's message);
2. build the seed network (``widths`` or ``width_multiplier`` of the model's default widths), or
   load the parent checkpoint and grow it with ``apply_splits`` along the parent's saved splitting
   directions (``parent_checkpoint``, ``parent_splits``, ``split_plan``, ``epsilon``);
3. train ``epochs`` epochs (SGD, cosine schedule), reporting validation accuracy every epoch;
4. evaluate on the test split (reported as ``default``; the validation split is what selects);
5. compute the splitting indexes of the trained network and the per-neuron costs;
6. save checkpoint, splits and ``splitting.json`` atomically into the output folder, then report
   the flat final result (accuracy, params, FLOPs, ratios against the full-size model, paths).

Standalone (no NNI): ``python -m nni_splitting.nni.trial --output-dir DIR [--params JSON|@file]``
trains the default seed network on the embedded digits data set.
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader

from nni_splitting.growth.checkpoint import CheckpointError, file_sha256
from nni_splitting.growth.counting import count_model, neuron_costs
from nni_splitting.common.data import dummy_input, load_dataset, make_loaders
from nni_splitting.models import build_model, current_widths, scale_widths
from nni_splitting.models.spec import build_seed, is_registered
from nni_splitting.growth.networks import load_network, network_widths, save_network
from nni_splitting.nni.settings import ARCH_DEFAULTS, TRAIN_DEFAULTS, check_train_settings, resolve_params
from nni_splitting.common.storage import INDEX_FILE, SPLITS_FILE, CHECKPOINT_FILE, atomic_save, atomic_write_json, trial_output_dir
from nni_splitting.growth.depth import grow_depth
from nni_splitting.growth.strategies import GrowthStrategy, split_batch_count, strategy_class
from nni_splitting.common.training import Recipe, evaluate, fit

__all__ = ["TRAIN_DEFAULTS", "ARCH_DEFAULTS", "check_train_settings", "resolve_params", "recipe_of", "model_kwargs",
           "full_widths", "build_network", "device_of", "load_overrides", "train_network", "split_loader", "run_trial", "output_folder", "main"]

_logger = logging.getLogger("nni_splitting.nni.trial")

def recipe_of(params: Dict[str, Any], epochs: Optional[int] = None) -> Recipe:
    """The training :class:`~nni_splitting.common.training.Recipe` of resolved parameters (``epochs`` overrides)."""
    return Recipe.from_dict({**params, "epochs": int(epochs if epochs is not None else params["epochs"])})


def full_widths(params: Dict[str, Any]) -> list:
    """Widths of the "full" model: ``full_width_multiplier`` times the model's default widths."""
    return scale_widths(params["model"], float(params["full_width_multiplier"]))


def model_kwargs(name: str, data) -> Dict[str, Any]:
    """Constructor keywords of model ``name`` for data set splits ``data`` (classes, input size)."""
    if name == "mlp":
        return {"in_features": int(math.prod(data.input_shape)), "num_classes": data.num_classes}
    if name == "rbf":
        return {"num_classes": data.num_classes}
    return {"num_classes": data.num_classes, "in_channels": data.in_channels}


def build_network(params: Dict[str, Any], data) -> nn.Module:
    """The network to train: a fresh seed, or the parent checkpoint grown by its split plan.

    Raises
    ------
    CheckpointError
        The parent checkpoint is missing, truncated or foreign (the message names the file).
    """
    name = params["model"]
    if not params["parent_checkpoint"]:
        if not is_registered(name):  # the user's own model: its factory builds the seed
            return build_seed(name, params["model_args"], params["weights"] or None)
        widths = params["widths"] or scale_widths(name, params["width_multiplier"] or 1.0)
        return build_model(name, widths=list(widths), **model_kwargs(name, data))
    parent, state = load_network(params["parent_checkpoint"])
    plan = {k: [int(i) for i in v] for k, v in (params["split_plan"] or {}).items()}
    strategy = trial_strategy(params)
    try:
        scores = strategy.load(params["parent_splits"])
    except CheckpointError:
        raise
    except Exception as error:  # truncated or foreign: a named error, like a checkpoint's
        raise CheckpointError(f"splits file {params['parent_splits']!r} is unreadable (truncated, or not a "
                              f"{params['growth_strategy']} file): {type(error).__name__}: {error}") from error
    grown = _check_grown(strategy.apply(parent, scores, plan), params, state)
    if params["depth_layers"]:  # then the new blocks, scored on the width-grown network
        batches = itertools.islice(split_loader(params, data), split_batch_count(params))
        grown, depth = grow_depth(grown, nn.CrossEntropyLoss(), batches, params["depth_layers"], float(params["epsilon"]),
                                  cost=params["depth_cost"])
        _logger.info("depth growth: scores %s; strides now %s", depth, list(grown.strides))
    return grown


def trial_strategy(params: Dict[str, Any]) -> GrowthStrategy:
    """The trial's growth strategy (``growth_strategy``: a registered name or an import path), built from its
    resolved parameters by the strategy's own :meth:`~nni_splitting.growth.strategies.GrowthStrategy.from_settings`."""
    return strategy_class(params["growth_strategy"]).from_settings(params)


def _check_grown(model: nn.Module, params: Dict[str, Any], state: dict) -> nn.Module:
    grown = network_widths(model, torch.zeros(1, *state["input_shape"]))[1] if "layer_widths" in state else \
        current_widths(model)
    if params["widths"] is not None and list(params["widths"]) != grown:
        raise RuntimeError(f"splitting {params['split_plan']} of widths {state['widths']} gave {grown}, "
                           f"but the tuner expected {params['widths']}")
    return model


def _growth_change(params: Dict[str, Any], model: nn.Module, example: torch.Tensor) -> Optional[float]:
    """Largest change of the outputs on ``example`` from the parent to the grown network before training
    (0 for function-preserving growth at ``epsilon: 0``); None for a seed or a network that cannot run it."""
    if not params["parent_checkpoint"]:
        return None
    try:
        parent, _ = load_network(params["parent_checkpoint"])
        batch = example.expand(8, *example.shape[1:]).clone().normal_(generator=torch.Generator().manual_seed(0))
        was_training = model.training
        model.eval()
        with torch.no_grad():
            change = float((model(batch) - parent.eval()(batch)).abs().max())
        model.train(was_training)
        return change
    except Exception as error:  # a diagnostic only: never fail the trial for it
        _logger.warning("could not compare the grown network with its parent: %s", error)
        return None


def device_of(name: str) -> torch.device:
    """``"auto"`` is CUDA when available, else the CPU; any other name is a torch device string."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train_network(model: nn.Module, loaders, params: Dict[str, Any], report: Callable[[dict], None],
                  epochs: Optional[int] = None) -> float:
    """Train by the parameters' recipe (``epochs``: default the step's own) and return the validation accuracy.

    With ``epochs=0`` nothing is trained; the validation accuracy is still measured.
    """
    train_loader, val_loader, _ = loaders
    if epochs is None:
        epochs = params["seed_epochs"] if params["step"] == 0 and params["seed_epochs"] else params["epochs"]
    if int(epochs) <= 0:
        return evaluate(model, val_loader)
    history = fit(model, train_loader, recipe_of(params, epochs), val_loader=val_loader, report=report,
                  seed=int(params["seed"]), progress=True)
    _logger.info("trained %d epochs in %.0f s; last-quarter loss change %s", int(epochs), history["seconds"],
                 None if history["loss_change"] is None else f"{100 * history['loss_change']:.1f}%")
    return history["val_accuracy"][-1]


def split_loader(params: Dict[str, Any], data) -> DataLoader:
    """Batches that the splitting matrices are averaged over: ``split_samples`` images when set,
    else ``split_batches`` batches (``compute_splitting``'s ``max_batches``)."""
    source = data.train if params["split_data"] == "train" else data.val
    generator = torch.Generator().manual_seed(params["seed"])
    return DataLoader(source, batch_size=params["split_batch_size"] or params["batch_size"], shuffle=True,
                      generator=generator)


def run_trial(params: Dict[str, Any], output_dir: Path, report_intermediate: Callable[[dict], None] = lambda r: None,
              trial_id: str = "STANDALONE", experiment_id: str = "STANDALONE") -> Dict[str, Any]:
    """Train, evaluate, score and save one network; return the flat final result (not reported here)."""

    started = time.time()
    if params["num_threads"]:
        torch.set_num_threads(params["num_threads"])
    data = load_dataset(params["dataset"], data_dir=params["data_dir"], val_fraction=params["val_fraction"],
                        per_class=params["per_class"], seed=params["data_seed"], dataset_args=params["dataset_args"])
    torch.manual_seed(params["seed"])
    dummy = dummy_input(data)
    model = build_network(params, data)
    growth_change = _growth_change(params, model, dummy)
    width_layers, widths = network_widths(model, dummy)
    model = model.to(device_of(params["device"]))
    _logger.info("node %s (lineage %s, step %s): %s with widths %s on %s", params["node_id"] or "-",
                 params["lineage"], params["step"], params["model"], widths, next(model.parameters()).device)
    loaders = make_loaders(data, batch_size=params["batch_size"], seed=params["seed"],
                           eval_batch_size=params["eval_batch_size"])
    val_acc = train_network(model, loaders, params, report_intermediate)
    test_acc = evaluate(model, loaders[2])
    train_seconds = time.time() - started

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint, splits_path, index_path = (output_dir / n for n in (CHECKPOINT_FILE, SPLITS_FILE, INDEX_FILE))
    model.eval()
    splits, costs, error, split_seconds = None, {}, "", None
    try:
        phase_started = time.time()
        strategy = trial_strategy(params)
        splits = strategy.score(model, nn.CrossEntropyLoss(), split_loader(params, data))
        split_seconds = time.time() - phase_started
        model = model.cpu()  # counting, costs and the checkpoint on the CPU
        costs = {kind: neuron_costs(model, dummy, kind=kind) for kind in ("params", "flops")}
        atomic_save(splits_path, lambda p: strategy.save(splits, p))
    except Exception as exc:  # keep the trained network and its accuracy; the tuner stops this lineage
        _logger.exception("computing the splitting indexes failed")
        error = f"{type(exc).__name__}: {exc}"
        splits, costs, model = None, {}, model.cpu()
    checkpoint_sha256 = save_network(checkpoint, model, params["model"], dummy, params["model_args"],
                                     node_id=params["node_id"], step=params["step"])
    flops, n_params = count_model(model, dummy)
    if is_registered(params["model"]):
        shape = {k: v for k, v in model.config.items() if k != "strides"}  # the full model keeps its depth
        reference = build_model(params["model"], widths=full_widths(params), **shape)
        reference_widths = list(reference.widths)
    else:  # the user's own model: the reference is the seed as its factory builds it
        reference = build_seed(params["model"], params["model_args"]).eval()
        reference_widths = network_widths(reference, dummy)[1]
    ref_flops, ref_params = count_model(reference, dummy)
    strategy = trial_strategy(params)
    indexes = strategy.indexes(splits) if splits else {}
    eigenvalues = {name: [float(v) for v in values] for name, values in indexes.items()}  # ranked by the tuner
    min_index = min((min(v) for v in eigenvalues.values() if v), default=None)
    info = {
        "node_id": params["node_id"], "trial_id": trial_id, "experiment_id": experiment_id,
        "lineage": params["lineage"], "step": params["step"], "parent": params["parent"],
        "parent_node": params["parent_node"], "split_plan": params["split_plan"],
        "model": params["model"], "model_config": dict(getattr(model, "config", {})), "widths": widths,
        "width_layers": width_layers, "input_shape": list(data.input_shape),
        "num_classes": data.num_classes, "eigenvalues": eigenvalues, "costs": costs,
        "params": n_params, "flops": flops, "reference": {"params": ref_params, "flops": ref_flops,
                                                          "widths": reference_widths},
        "accuracy": test_acc, "val_accuracy": val_acc, "checkpoint": str(checkpoint),
        "splits": str(splits_path) if splits is not None else "", "splitting_error": error,
        "added_per_split": int(strategy.added_per_split),
        "checkpoint_sha256": checkpoint_sha256,
        "splits_sha256": file_sha256(splits_path) if splits is not None else "",
    }
    atomic_write_json(index_path, info)
    result = {
        "default": test_acc, "val_accuracy": val_acc, "params": n_params, "flops": flops,
        "params_ratio": n_params / ref_params, "flops_ratio": flops / ref_flops, "step": params["step"],
        "method": "splitting", "parent": params["parent"], "node": params["node_id"], "lineage": params["lineage"],
        "attempt": params["attempt"], "n_split": params["n_split"], "widths": ",".join(str(w) for w in widths),
        "min_index": min_index, "growth_change": growth_change,
        "strides": ",".join(str(v) for v in getattr(model, "config", {}).get("strides", [])),
        "checkpoint": str(checkpoint), "splits": info["splits"], "indexes": str(index_path),
        "seconds": time.time() - started, "train_seconds": train_seconds, "split_seconds": split_seconds,
    }
    if error:
        result["splitting_error"] = error
    return result


def _parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m nni_splitting.nni.trial", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", help="where to write checkpoint.pt, splits.pt and splitting.json "
                                             "(default: $NNI_OUTPUT_DIR, or runs/standalone-<time>)")
    parser.add_argument("--params", help="JSON object (or @file) overriding the parameters, e.g. "
                                         "'{\"epochs\": 2, \"model\": \"mlp\"}'")
    return parser.parse_args(argv)


def load_overrides(text: Optional[str]) -> Dict[str, Any]:
    if not text:
        return {}
    if text.startswith("@"):
        text = Path(text[1:]).read_text(encoding="utf-8")
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"--params must be a JSON object, got {value!r}")
    return value


def main(argv=None) -> int:
    """Entry point of ``python -m nni_splitting.nni.trial``; returns the exit status."""
    import nni  # deferred: importing this module (tests, scripts) must not start NNI's trial runtime

    args = _parse_args(argv)
    received = nni.get_next_parameter() or {}  # first thing: see the parameter-queue note in docs/nni.md
    handler = logging.StreamHandler(sys.stdout)  # NNI sends a local trial's stdout to trial.log
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(name)s %(levelname)s: %(message)s", "%H:%M:%S"))
    package_logger = logging.getLogger("nni_splitting")
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.INFO)
    try:
        return _main(args, received)
    finally:
        package_logger.removeHandler(handler)


def output_folder(storage_path: str, experiment_id: str, trial_id: str, prefix: str) -> Path:
    """Where a trial (or arm) writes: under ``storage_path`` or ``$NNI_OUTPUT_DIR``; outside NNI a new
    ``runs/<prefix>-<time>`` folder."""
    folder = trial_output_dir(storage_path or None, experiment_id, trial_id, os.environ.get("NNI_OUTPUT_DIR"))
    return Path(folder) if folder is not None else Path("runs") / time.strftime(f"{prefix}-%Y%m%d-%H%M%S")


def _main(args, received: Dict[str, Any]) -> int:
    import nni  # deferred: standalone use of this module (tests, scripts) need not start NNI's trial runtime

    try:
        params = resolve_params(received, load_overrides(args.params))
    except ValueError as error:
        print(f"nni_splitting.nni.trial: bad parameters: {error}", file=sys.stderr)
        return 2
    trial_id, experiment_id = nni.get_trial_id(), nni.get_experiment_id()
    output_dir = args.output_dir or output_folder(params["storage_path"], experiment_id, trial_id, "standalone")
    _logger.info("parameters: %s", json.dumps(params, sort_keys=True))
    _logger.info("output folder: %s", output_dir)
    try:
        result = run_trial(params, Path(output_dir), nni.report_intermediate_result, trial_id, experiment_id)
    except FileNotFoundError as error:  # e.g. CIFAR-10 not in data_dir: say so at once, clearly
        print(f"nni_splitting.nni.trial: {error}", file=sys.stderr)
        _logger.error("%s", error)
        return 3
    except CheckpointError as error:  # a truncated or foreign parent checkpoint or splits file: the tuner falls back
        print(f"nni_splitting.nni.trial: {error}", file=sys.stderr)
        _logger.error("%s", error)
        return 4
    nni.report_final_result(result)
    _logger.info("final result: %s", json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
