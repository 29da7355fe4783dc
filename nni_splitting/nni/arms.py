"""Trial entry of the comparison experiment: ``python -m nni_splitting.nni.arms``.

One NNI trial runs one *arm* at one parameter ratio, chosen by the ``arm`` parameter (see
:data:`ARMS`); :class:`nni_splitting.nni.compare.CompareTuner` emits them.  Every trial reports a flat
final result with the same columns, so NNI's dashboard shows all arms in one sortable table:

``default`` (test accuracy; for the searched ``width`` arm the validation accuracy, which its
tuner maximises: no search selects on the test set), ``test_accuracy``, ``val_accuracy``, ``arm``,
``method`` (family), ``seed``, ``step``, ``params``, ``flops``, ``params_ratio``, ``flops_ratio`` (against the full-width model),
``epochs`` (all training epochs behind this network, ancestors / pre-training included),
``wall_time`` (seconds, likewise cumulative), ``mac_epochs`` (multiply-accumulates of one forward
pass x epochs: the training compute behind this network's own training), ``widths``, ``node``, ``lineage``.

Each arm is one :class:`ArmSpec` in :data:`ARM_SPECS` (run function, family, label, and the comparison's
rule of when to queue it, :mod:`nni_splitting.nni.arm_rules`): the comparison's arm switches, the
report's order and its labels derive from it, and :func:`register_arm` adds one.

Arms:

``splitting``
    One growth step of splitting steepest descent (delegates to :func:`nni_splitting.nni.trial.run_trial`).
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
    for the same total number of epochs as the lineage (``retrain_epochs: matched``, the
    compute-matched claim) or for one round's schedule (``retrain_epochs: round``: the paper's
    Fig. 3c-d architecture claim; reported as ``scratch_round``).
``pruned_scratch``
    A pruner's architecture (``widths`` of its trial) freshly initialised and trained for the lineage's
    total epochs at that ratio (the paper's Fig. 3c-d); reported as ``<pruner>_scratch``.
``uniform``
    A uniform width multiplier of the full model matched to ``target_params``
    (:func:`uniform_width_model`), same epochs as ``scratch`` (``uniform_round`` with one round's schedule).
``plain``
    A uniform width multiplier of another network family (``plain_model``, base widths ``plain_widths``,
    default that family's defaults, or the full model's widths for the full model's own family)
    matched to ``target_params`` and trained like ``uniform``; ratios stay against the comparison's
    full model. Reported as ``arm_label`` or ``plain_<plain_model>``: the small networks a user
    would build instead of growing one.
``width``
    Width search: widths from ``mult_<i>`` parameters (or ``widths``) (search_spaces/*.json with NNI's built-in
    tuners, or an ``nni.nas`` strategy through :mod:`nni_splitting.nni.nas`).  With
    ``max_params_ratio`` set, a sample above that fraction of the full model's parameters is not
    trained: it reports ``default = 0`` and ``over_budget = 1`` (the search's parameter budget).

Standalone: ``python -m nni_splitting.nni.arms --output-dir DIR --params '{"arm": "uniform", ...}'``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import nn

from nni_splitting.baselines import PRUNERS, add_new_neurons, prune_to_ratio, random_split, uniform_width_model, widths_from_params
from nni_splitting.nni.arm_rules import (Emission, StepView, after_pruner, emit_growth_baseline, emit_plain, emit_pruner, emit_scratch,
                        emit_uniform)
from nni_splitting.growth.checkpoint import load_checkpoint, save_checkpoint
from nni_splitting.growth.counting import count_model
from nni_splitting.common.data import dummy_input, load_dataset, make_loaders
from nni_splitting.models import build_model, current_widths, default_widths
from nni_splitting.common.training import evaluate
from nni_splitting.nni.trial import device_of, output_folder, full_widths, load_overrides, model_kwargs, resolve_params, run_trial, train_network

__all__ = ["ArmSpec", "StepView", "ARM_SPECS", "register_arm", "comparison_switches", "report_order", "ARMS", "FAMILIES", "PRUNING_ARMS", "GROWTH_ARMS", "COMPARE_DEFAULTS",
           "resolve_arm_params", "run_arm", "arm_label", "main"]

logger = logging.getLogger(__name__)

PRUNING_ARMS = tuple(PRUNERS)  # one arm per pruning method of nni_splitting.baselines
GROWTH_ARMS = ("random_split", "new_neurons")

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
    "target_params": None,        # uniform / plain: parameter count
    "plain_model": "",            # plain: the family (a registered model name)
    "plain_widths": None,         # plain: its base widths (default: the family's defaults)
    "split_counts": [],           # random_split / new_neurons: [{layer: count}] per step
    "total_epochs": None,         # scratch / uniform: epochs to train (default: seed_epochs + step * epochs)
    "strides": None,              # scratch: a depth-grown MobileNet's block strides (default: the model's own)
    "ancestor_epochs": 0,         # splitting: epochs of the ancestors
    "ancestor_wall_time": 0.0,
    "max_params_ratio": None,     # width: parameter budget (fraction of the full model) of a search
    "arm_label": "",              # the reported arm name (default: arm_label(arm, params)), e.g. "nas_tpe"
    "matched_epochs": None,       # pruners: the lineage's total epochs at this ratio (for pruned_scratch)
}


class ArmContext(NamedTuple):
    """What every arm's run function gets: resolved parameters, data, loaders, the model's keywords."""
    params: Dict[str, Any]
    data: Any
    loaders: Tuple[Any, Any, Any]
    dummy: torch.Tensor
    kwargs: Dict[str, Any]
    device: torch.device
    report: Callable[[dict], None]


class ArmOutcome(NamedTuple):
    """An arm's trained network, its validation accuracy, its epochs (cumulative) and extra columns."""
    model: nn.Module
    val_accuracy: Optional[float]
    epochs: float
    extra: Dict[str, Any]
    prior_wall_time: float = 0.0


class ArmSpec(NamedTuple):
    """One arm, everything about it in one entry of :data:`ARM_SPECS`.

    ``run(context) -> ArmOutcome`` trains it; ``family`` is its ``method`` column and ``label`` its
    report name (the report lists arms in registry order). For the comparison: ``switch`` is the name
    in the ``arms`` classArg that turns it on (``"pruning"`` for every pruner); ``emit(view)`` says
    what to queue at a reported growth step (None: not ready yet, asked again later); ``needs_full``
    asks for the trained full model first; ``after(params, result)`` queues trials when a trial of an
    arm in ``follows`` has succeeded (a pruned architecture from scratch).
    """
    run: Callable[[ArmContext], ArmOutcome]
    family: str
    label: str
    switch: str = ""
    emit: Optional[Callable[[StepView], Emission]] = None
    needs_full: bool = False
    follows: Tuple[str, ...] = ()
    after: Optional[Callable[[Dict[str, Any], Dict[str, Any]], List[Dict[str, Any]]]] = None


def _seed_epochs(p) -> int:
    return int(p["seed_epochs"] or p["epochs"])


def _retrain_epochs(p) -> int:
    """Epochs of a from-scratch arm: the lineage's total (compute-matched) or one round's schedule."""
    if p["retrain_epochs"] == "round":
        return int(p["epochs"])
    return int(p["total_epochs"] or (_seed_epochs(p) + int(p["step"]) * int(p["epochs"])))


def _train(ctx: ArmContext, model: nn.Module, epochs) -> float:
    return train_network(model, ctx.loaders, dict(ctx.params, step=1, seed_epochs=None), ctx.report, epochs=int(epochs))


def _run_full(ctx: ArmContext) -> ArmOutcome:
    model = build_model(ctx.params["model"], widths=full_widths(ctx.params), **ctx.kwargs).to(ctx.device)
    epochs = int(ctx.params["full_epochs"] or ctx.params["epochs"])
    return ArmOutcome(model, _train(ctx, model, epochs), epochs, {})


def _run_pruner(ctx: ArmContext) -> ArmOutcome:
    p = ctx.params
    if not p["full_checkpoint"]:
        raise ValueError(f"arm {p['arm']} needs full_checkpoint (the trained full-width model)")
    full, _ = load_checkpoint(p["full_checkpoint"])
    steps = int(p["prune_training_steps"])
    model, _ = prune_to_ratio(full, p["arm"], float(p["target_ratio"]), ctx.dummy, evaluator=ctx.loaders[0],
                              training_steps=steps, lr=0.01, seed=p["seed"])
    model = model.to(ctx.device)
    extra = {"pruned_val_accuracy": evaluate(model, ctx.loaders[1]), "target_ratio": float(p["target_ratio"])}
    finetune = int(p["finetune_epochs"] or p["epochs"])
    val = _train(ctx, model, finetune)
    trained_steps = steps / max(1, len(ctx.loaders[0])) if p["arm"] in ("slim", "taylor", "bn_slim") else 0.0
    return ArmOutcome(model, val, float(p["prior_epochs"] or 0) + trained_steps + finetune, extra,
                      float(p["prior_wall_time"] or 0))


def _run_growth_baseline(ctx: ArmContext) -> ArmOutcome:
    p = ctx.params
    model = build_model(p["model"], widths=list(p["widths_seed"]), **ctx.kwargs).to(ctx.device)
    val = _train(ctx, model, _seed_epochs(p))
    epochs = _seed_epochs(p)
    for k, counts in enumerate(p["split_counts"] or []):
        counts = {layer: int(c) for layer, c in counts.items() if int(c) > 0}
        model = model.cpu().eval()
        generator_seed = int(p["seed"]) * 1000 + k
        if p["arm"] == "random_split":
            model, _ = random_split(model, ctx.dummy, counts, epsilon=float(p["epsilon"]), seed=generator_seed)
        else:
            model, _ = add_new_neurons(model, ctx.dummy, counts, seed=generator_seed)
        model = model.to(ctx.device)
        val = _train(ctx, model, p["epochs"])
        epochs += int(p["epochs"])
    return ArmOutcome(model, val, epochs, {})


def _run_scratch(ctx: ArmContext) -> ArmOutcome:
    p = ctx.params
    if not p["widths"]:
        raise ValueError(f"arm {p['arm']} needs widths (the architecture to train from scratch)")
    depth = {"strides": list(p["strides"])} if p["strides"] else {}
    model = build_model(p["model"], widths=list(p["widths"]), **ctx.kwargs, **depth).to(ctx.device)
    epochs = _retrain_epochs(p)
    return ArmOutcome(model, _train(ctx, model, epochs), epochs, {})


def _run_uniform(ctx: ArmContext) -> ArmOutcome:
    model, multiplier = uniform_width_model(ctx.params["model"], int(ctx.params["target_params"]), ctx.dummy,
                                            base_widths=full_widths(ctx.params), **ctx.kwargs)
    model = model.to(ctx.device)
    epochs = _retrain_epochs(ctx.params)
    return ArmOutcome(model, _train(ctx, model, epochs), epochs, {"width_multiplier": multiplier})


def _run_plain(ctx: ArmContext) -> ArmOutcome:
    p = ctx.params
    family = p["plain_model"] or p["model"]
    if p["plain_widths"]:
        base = list(p["plain_widths"])
    else:
        base = full_widths(p) if family == p["model"] else default_widths(family)
    model, multiplier = uniform_width_model(family, int(p["target_params"]), ctx.dummy, base_widths=base,
                                            **model_kwargs(family, ctx.data))
    model = model.to(ctx.device)
    epochs = _retrain_epochs(p)
    return ArmOutcome(model, _train(ctx, model, epochs), epochs, {"width_multiplier": multiplier, "family": family})


def _run_width(ctx: ArmContext) -> ArmOutcome:
    p = ctx.params
    name = p["model"]
    widths = list(p["widths"]) if p["widths"] else widths_from_params(name, p)
    model = build_model(name, widths=widths, **ctx.kwargs)
    budget = p["max_params_ratio"]
    full_params = count_model(build_model(name, widths=full_widths(p), **ctx.kwargs).eval(), ctx.dummy)[1]
    ratio = count_model(model.eval(), ctx.dummy)[1] / full_params
    if budget is not None and ratio > float(budget):  # the search's parameter budget: not trained
        logger.info("width sample %s: %.2f%% of the full parameters > budget %.2f%%, not trained",
                    widths, 100 * ratio, 100 * float(budget))
        return ArmOutcome(model, None, 0.0, {"over_budget": 1})
    model = model.to(ctx.device)
    epochs = int(p["total_epochs"] or p["epochs"])
    return ArmOutcome(model, _train(ctx, model, epochs), epochs, {})


def _run_splitting(ctx: ArmContext) -> ArmOutcome:  # pragma: no cover - run_arm delegates to run_trial
    raise RuntimeError("the splitting arm runs through nni_splitting.nni.trial.run_trial")


#: name -> ArmSpec, in report order; ``method`` column = family.  An arm is one entry (:func:`register_arm`).
ARM_SPECS: Dict[str, ArmSpec] = {
    "splitting": ArmSpec(_run_splitting, "splitting", "splitting"),
    **{name: ArmSpec(_run_pruner, "pruning", name, "pruning", emit_pruner, needs_full=True) for name in PRUNING_ARMS},
    **{name: ArmSpec(_run_growth_baseline, "growth", name, name, emit_growth_baseline) for name in GROWTH_ARMS},
    "scratch": ArmSpec(_run_scratch, "retrain", "scratch", "scratch", emit_scratch),
    "pruned_scratch": ArmSpec(_run_scratch, "retrain", "pruned_scratch", "pruned_scratch",
                              follows=PRUNING_ARMS, after=after_pruner),
    "uniform": ArmSpec(_run_uniform, "width", "uniform", "uniform", emit_uniform),
    "plain": ArmSpec(_run_plain, "width", "plain", "plain", emit_plain),
    "width": ArmSpec(_run_width, "width_search", "width"),
    "full": ArmSpec(_run_full, "full", "full"),
}


def register_arm(name: str, spec: ArmSpec) -> None:
    """Add an arm: ``python -m nni_splitting.nni.arms`` runs it, the comparison queues it by ``spec.emit``
    when ``spec.switch`` is in its ``arms`` classArg, and the report lists it."""
    if not isinstance(spec, ArmSpec) or not callable(spec.run):
        raise ValueError(f"arm {name!r}: expected an ArmSpec with a run function, got {spec!r}")
    ARM_SPECS[name] = spec


def comparison_switches() -> Tuple[str, ...]:
    """The names the comparison's ``arms`` classArg accepts (every registered arm it can queue)."""
    return tuple(dict.fromkeys(spec.switch for spec in ARM_SPECS.values() if spec.switch and (spec.emit or spec.after)))


def report_order() -> List[str]:
    """Arm labels in report order: the registry's, each pruner's ``<pruner>_scratch`` after ``pruned_scratch``."""
    order = []
    for name, spec in ARM_SPECS.items():
        order.append(spec.label)
        if name == "pruned_scratch":
            order += [f"{p}_scratch" for p in PRUNING_ARMS]
    return order


#: arm -> family (the ``method`` column), for the arms registered when this module was imported
FAMILIES: Dict[str, str] = {name: spec.family for name, spec in ARM_SPECS.items()}
ARMS = tuple(ARM_SPECS)


def arm_label(arm: str, params: Dict[str, Any]) -> str:
    """The reported arm name: ``arm_label`` when given, else the spec's label, ``_round`` appended to the
    from-scratch arms trained with one round's schedule."""
    if params.get("arm_label"):
        return params["arm_label"]
    label = ARM_SPECS[arm].label
    if arm == "plain":
        return f"plain_{params.get('plain_model') or params.get('model')}"
    if arm in ("scratch", "uniform", "pruned_scratch") and params.get("retrain_epochs") == "round":
        label += "_round"
    return label


def resolve_arm_params(received: Optional[Dict[str, Any]], overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Comparison defaults, then NNI's parameters, then overrides; validated (``ValueError`` quoting the value)."""
    merged = {**COMPARE_DEFAULTS, **(received or {}), **(overrides or {})}
    if merged["arm"] not in ARM_SPECS:
        raise ValueError(f"arm must be one of {list(ARM_SPECS)}, got {merged['arm']!r}")
    budget = merged["max_params_ratio"]
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1):
        raise ValueError(f"max_params_ratio must be a fraction in (0, 1], got {budget!r}")
    return resolve_params(merged)


_resolve = resolve_arm_params  # the name older tests import


def run_arm(p: Dict[str, Any], output_dir: Path, report: Callable[[dict], None] = lambda r: None,
            trial_id: str = "STANDALONE", experiment_id: str = "STANDALONE") -> Dict[str, Any]:
    """Run one arm (parameters already resolved); return the flat final result."""
    arm = p["arm"]
    if arm not in ARM_SPECS:
        raise ValueError(f"arm must be one of {list(ARM_SPECS)}, got {arm!r}")
    started = time.time()
    if p["num_threads"]:
        torch.set_num_threads(p["num_threads"])
    if arm == "splitting":
        result = run_trial(p, output_dir, report, trial_id, experiment_id)
        own_epochs = _seed_epochs(p) if p["step"] == 0 else int(p["epochs"])
        result.update(arm=arm_label(arm, p), method="splitting", seed=p["seed"], test_accuracy=result["default"],
                      epochs=int(p["ancestor_epochs"] or 0) + own_epochs,
                      mac_epochs=float(result["flops"]) * own_epochs,
                      wall_time=float(p["ancestor_wall_time"] or 0) + (time.time() - started))
        return result

    data = load_dataset(p["dataset"], data_dir=p["data_dir"], val_fraction=p["val_fraction"],
                        per_class=p["per_class"], seed=p["data_seed"])
    torch.manual_seed(p["seed"])
    loaders = make_loaders(data, batch_size=p["batch_size"], seed=p["seed"], eval_batch_size=p["eval_batch_size"])
    ctx = ArmContext(p, data, loaders, dummy_input(data), model_kwargs(p["model"], data), device_of(p["device"]),
                     report)
    outcome = ARM_SPECS[arm].run(ctx)
    over_budget = bool(outcome.extra.get("over_budget"))
    test = None if over_budget else evaluate(outcome.model, loaders[2])
    model = outcome.model.cpu().eval()
    flops, n_params = count_model(model, ctx.dummy)
    ref_flops, ref_params = count_model(build_model(p["model"], widths=full_widths(p), **ctx.kwargs).eval(),
                                        ctx.dummy)
    widths = current_widths(model) if hasattr(model, "width_layers") else []
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = output_dir / "checkpoint.pt"
    if arm == "full":
        save_checkpoint(checkpoint, model, p["model"])
    own_epochs = float(outcome.epochs) - float(p["prior_epochs"] or 0) if arm in PRUNING_ARMS else float(outcome.epochs)
    seconds = time.time() - started
    result = {
        "default": (outcome.val_accuracy or 0.0) if arm == "width" else test, "test_accuracy": test,
        "val_accuracy": outcome.val_accuracy, "arm": arm_label(arm, p), "method": ARM_SPECS[arm].family, "seed": p["seed"],
        "step": p["step"], "params": n_params, "flops": flops, "params_ratio": n_params / ref_params,
        "flops_ratio": flops / ref_flops, "epochs": float(outcome.epochs), "mac_epochs": float(flops) * own_epochs,
        "wall_time": outcome.prior_wall_time + seconds, "seconds": seconds,
        "widths": ",".join(str(w) for w in widths), "node": p["node_id"],
        "strides": ",".join(str(v) for v in getattr(model, "config", {}).get("strides", [])),
        "lineage": p["lineage"], "checkpoint": str(checkpoint) if arm == "full" else "",
    }
    result.update(outcome.extra)
    return result


def main(argv=None) -> int:
    """Entry point of ``python -m nni_splitting.nni.arms``."""
    import nni  # deferred: importing this module (tests, scripts) must not start NNI's trial runtime

    parser = argparse.ArgumentParser(prog="python -m nni_splitting.nni.arms", description=__doc__.split("\n\n")[0])
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
            p = resolve_arm_params(received, load_overrides(args.params))
        except ValueError as error:
            print(f"nni_splitting.nni.arms: bad parameters: {error}", file=sys.stderr)
            return 2
        trial_id, experiment_id = nni.get_trial_id(), nni.get_experiment_id()
        output_dir = args.output_dir or output_folder(p["storage_path"], experiment_id, trial_id, "arm")
        logger.info("arm %s, parameters: %s", p["arm"], json.dumps(p, sort_keys=True, default=str))
        try:
            result = run_arm(p, Path(output_dir), nni.report_intermediate_result, trial_id, experiment_id)
        except FileNotFoundError as error:
            print(f"nni_splitting.nni.arms: {error}", file=sys.stderr)
            return 3
        except ValueError as error:  # e.g. a truncated full checkpoint (CheckpointError names the file)
            print(f"nni_splitting.nni.arms: {error}", file=sys.stderr)
            return 4
        nni.report_final_result(result)
        logger.info("final result: %s", json.dumps(result, sort_keys=True))
        return 0
    finally:
        package_logger.removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
