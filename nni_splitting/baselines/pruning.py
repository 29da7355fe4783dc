"""Pruning arms: NNI 3.0's pruners, and network slimming, cut to a target parameter count.

A trained full-width model is pruned channel-wise until NNI's counter reports ``params_ratio`` of
its parameters, and the masks are physically applied with NNI's ``ModelSpeedup`` (with the
:mod:`nni_splitting.common.nni_compat` shim), so that parameter and FLOP counts are those of a real,
smaller dense network::

    pruned, info = prune_to_ratio(model, "l1", 0.5, dummy_input)
    pruned, info = prune_to_ratio(model, "taylor", 0.3, dummy_input, evaluator=train_loader)
    info.widths          # per width layer: retrain the architecture from scratch with build_model

Methods (:data:`PRUNERS`):

``"l1"``, ``"fpgm"``
    NNI's ``L1NormPruner`` / ``FPGMPruner`` (Li et al. 2017; He et al. 2019), no training.
``"slim"``
    NNI's ``SlimPruner`` as it is: it trains its own per-output-channel scaling factors on the conv
    weights with an L1 penalty (``regular_scale``) for ``training_steps`` steps through the
    evaluator, then ranks them. It does not rank BatchNorm gammas. NNI's ``unwrap_model`` drops
    the learned factors; with ``fold_slim_factors=True`` (default) they are multiplied into the
    weights first, so the pruned network computes what was trained.
``"taylor"``
    NNI's ``TaylorPruner`` (first-order Taylor importance ``(w * dL/dw)^2``, Molchanov et al.
    2019), accumulated over ``training_steps`` training steps through the evaluator.
``"bn_slim"``
    Network slimming as in the paper (Liu et al. 2017, "Bn-prune"): sparsity training with
    ``sparsity_penalty * sum |gamma|`` over every BatchNorm (through NNI's evaluator, ``patch_loss``),
    then one *global* threshold on ``|gamma|`` of the BatchNorm after each producer, turned into
    output-channel masks of that producer (and of the depthwise conv it feeds), then ``ModelSpeedup``.
    Every layer keeps at least its largest-gamma channel.

What is pruned: the output channels of every neuron group of :func:`nni_splitting.find_neuron_groups`
(a Linear/Conv2d producer whose channels pass through BN/activation/pooling/depthwise to Linear/Conv2d
consumers). The final classifier (its outputs are the model's output) is never pruned, and layers
whose channels are coupled to others (residual adds, concatenations) are left as they are (logged).
A MobileNet producer and the depthwise conv after it share one explicit ``dependency_group_id``,
so both keep the same channels (NNI's automatic grouping does not tie them).

Target: NNI pruners use one sparse ratio for every group (NNI keeps ``n - floor(n * r)`` channels);
``bn_slim`` uses the number of channels under the global threshold. Either knob is searched by
bisection over its discrete values on the *real post-speedup* parameter count, and the value whose
count is closest to the target is kept: the result is within one channel per layer of the target.
"""
from __future__ import annotations

import copy
import importlib
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from nni_splitting.growth.counting import count_model
from nni_splitting.graph import NeuronGroup, find_neuron_groups, handler_for, trace_model
from nni_splitting.models import current_widths, widths_of
import nni_splitting.common.nni_compat as nni_compat
from nni_splitting.common.nni_compat import bind_evaluator, capture_pruner_metrics, pruner_masks, ratio_spaces, speedup
from nni_splitting.common.training import seed_everything, torch_evaluator

__all__ = ["PRUNERS", "PrunerSpec", "PruneInfo", "prune_to_ratio", "prunable_groups", "pruning_config", "bn_slim_masks",
           "apply_masks", "widths_of"]

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class PrunerSpec:
    """One pruning method: the NNI 3.0 pruner class (by name in ``nni.compression.pruning``; ``None`` for
    network slimming, which is ours), whether it trains through an evaluator, and its extra keywords."""

    nni_class: Optional[str]
    trains: bool = False
    takes_regular_scale: bool = False


#: name -> PrunerSpec: every pruning method of :func:`prune_to_ratio` and of the comparison's pruner arms.
PRUNERS: Dict[str, PrunerSpec] = {
    "l1": PrunerSpec("L1NormPruner"),
    "slim": PrunerSpec("SlimPruner", trains=True, takes_regular_scale=True),
    "fpgm": PrunerSpec("FPGMPruner"),
    "taylor": PrunerSpec("TaylorPruner", trains=True),
    "bn_slim": PrunerSpec(None, trains=True),
}
TRAINING_PRUNERS = tuple(name for name, spec in PRUNERS.items() if spec.trains)

# A sparse ratio a hair above j / n, so that NNI's int(n * r) is exactly j despite rounding.
_RATIO_NUDGE = 1e-9


@dataclass
class PruneInfo:
    """What :func:`prune_to_ratio` did (JSON-able with :meth:`to_dict`).

    Attributes
    ----------
    method : str
        One of :data:`PRUNERS`.
    target_params, params, base_params : int
        Wanted, reached and original parameter counts (NNI's counter, ``mode="full"``).
    flops, base_flops : int
        Multiply-adds after and before.
    knob : float
        The searched value: the sparse ratio (NNI pruners) or the number of channels cut (``bn_slim``).
    layer_widths : dict
        ``{producer name: channels kept}`` for every pruned layer.
    widths : list of int or None
        ``current_widths`` of the pruned model when it is one of our width models (ModelSpeedup
        replaces modules in place under the same names, so the class and ``width_layers`` remain).
    searched : list of (knob, params)
        Every point evaluated by the bisection.
    seconds : dict
        Time spent training (pruners that train) and searching.
    """

    method: str
    target_params: int
    params: int
    base_params: int
    flops: int
    base_flops: int
    knob: float
    layer_widths: Dict[str, int]
    widths: Optional[List[int]] = None
    searched: List[Tuple[float, int]] = field(default_factory=list)
    seconds: Dict[str, float] = field(default_factory=dict)

    @property
    def params_ratio(self) -> float:
        return self.params / self.base_params

    def to_dict(self) -> dict:
        data = asdict(self)
        data["params_ratio"] = self.params_ratio
        return data


def prunable_groups(model: nn.Module, dummy_input: torch.Tensor,
                    layers: Optional[Sequence[str]] = None) -> Dict[str, NeuronGroup]:
    """The neuron groups whose output channels can be pruned (at least 2 channels), by producer name."""
    groups, excluded = find_neuron_groups(trace_model(model, dummy_input), list(layers) if layers is not None else None)
    for name, reason in excluded.items():
        logger.info("not pruned: %s: %s", name, reason)
    groups = {name: g for name, g in groups.items() if model.get_submodule(name).weight.shape[0] > 1}
    if not groups:
        raise ValueError(f"{type(model).__name__} has no prunable layer (excluded: {excluded})")
    return groups


def pruning_config(groups: Mapping[str, NeuronGroup], sparse_ratio: float) -> List[dict]:
    """NNI 3.0 ``config_list``: one entry per group, the producer and its depthwise conv sharing a dependency group."""
    if not 0.0 <= sparse_ratio < 1.0:
        raise ValueError(f"sparse_ratio={sparse_ratio!r} must be in [0, 1)")
    config = []
    for index, (name, group) in enumerate(groups.items()):
        entry: Dict[str, Any] = {"op_names": [name], "sparse_ratio": float(sparse_ratio)}
        if group.depthwise is not None:
            entry["op_names"].append(group.depthwise)
            entry["dependency_group_id"] = f"group{index}"
        config.append(entry)
    return config


def _channel_mask(module: nn.Module, keep: torch.Tensor) -> Dict[str, torch.Tensor]:
    """NNI-style masks ``{"weight": ..., "bias": ...}`` keeping the output channels where ``keep`` is true."""
    weight = module.weight
    keep = keep.to(weight.device, torch.float32)
    masks = {"weight": keep.reshape(-1, *([1] * (weight.dim() - 1))).expand_as(weight).to(weight.dtype).clone()}
    if getattr(module, "bias", None) is not None:
        masks["bias"] = keep.to(module.bias.dtype).clone()
    return masks


def apply_masks(model: nn.Module, masks: Mapping[str, Mapping[str, torch.Tensor]], dummy_input: torch.Tensor) -> nn.Module:
    """A copy of ``model`` physically shrunk by NNI's ``ModelSpeedup`` (shim applied); ``model`` is untouched."""
    pruned = copy.deepcopy(model)
    return speedup(pruned, dummy_input, {k: dict(v) for k, v in masks.items()})


def _check_ratio(params_ratio) -> float:
    if isinstance(params_ratio, bool) or not isinstance(params_ratio, (int, float)) or not 0 < params_ratio <= 1:
        raise ValueError(f"params_ratio={params_ratio!r} must be in (0, 1]")
    return float(params_ratio)


def _search(knobs: Sequence[float], masks_at: Callable[[float], dict], model: nn.Module, dummy_input: torch.Tensor,
            target: int, searched: List[Tuple[float, int]]) -> Tuple[float, nn.Module, int]:
    """Bisection over ``knobs`` (parameter count non-increasing along the list) for the count closest to ``target``."""
    counts: Dict[int, int] = {}

    def at(index: int) -> int:
        if index not in counts:
            pruned = apply_masks(model, masks_at(knobs[index]), dummy_input)
            counts[index] = count_model(pruned, dummy_input)[1]
            searched.append((float(knobs[index]), counts[index]))
            logger.debug("knob %s -> %d params", knobs[index], counts[index])
        return counts[index]

    last = len(knobs) - 1
    if at(last) > target:
        raise ValueError(f"cannot prune to {target} parameters: the smallest network this method reaches "
                         f"(one channel left in the narrowest layers) has {at(last)}")
    low, high = 0, last  # invariant: at(high) <= target; the answer's index is in [low, high]
    while low < high:
        middle = (low + high) // 2
        if at(middle) <= target:
            high = middle
        else:
            low = middle + 1
    best = high
    if high > 0 and abs(at(high - 1) - target) < abs(at(high) - target):
        best = high - 1
    # Only counts are kept during the search (full-size models are large): speed up the best once more.
    return float(knobs[best]), apply_masks(model, masks_at(knobs[best]), dummy_input), counts[best]


def _as_evaluator(evaluator, model: nn.Module, work: nn.Module, dummy_input: torch.Tensor, lr: float):
    """An NNI evaluator bound by parameter *names* to ``work`` (a copy of ``model``)."""
    from nni.compression.utils.evaluator import Evaluator


    if evaluator is None:
        raise ValueError("this pruner trains: pass evaluator= (an NNI Evaluator built for the model, or a "
                         "DataLoader of (inputs, targets))")
    if isinstance(evaluator, Evaluator):
        # NNI maps optimizer parameters by identity to names of the model the optimizer was built
        # on; we train a copy with the same names, so record the names on the original.
        bind_evaluator(evaluator, model)
        return evaluator
    if isinstance(evaluator, Iterable):
        built = torch_evaluator(work, evaluator, lr=lr, dummy_input=dummy_input)
        bind_evaluator(built, work)
        return built
    raise ValueError(f"evaluator must be an NNI Evaluator or a DataLoader, got {type(evaluator).__name__}")


def _nni_pruner(method: str, work: nn.Module, config: List[dict], evaluator, training_steps: int,
                regular_scale: float):
    """The NNI pruner of ``method`` (:data:`PRUNERS`) on ``work``."""
    spec = PRUNERS[method]
    cls = getattr(importlib.import_module("nni.compression.pruning"), spec.nni_class)
    if not spec.trains:
        return cls(work, config)
    extra = {"regular_scale": regular_scale} if spec.takes_regular_scale else {}
    return cls(work, config, evaluator, training_steps, **extra)


def _nni_prune(method: str, model: nn.Module, work: nn.Module, groups: Dict[str, NeuronGroup], dummy_input,
               evaluator, training_steps: int, regular_scale: float, fold_slim_factors: bool, lr: float, info_seconds):
    if method in TRAINING_PRUNERS:
        evaluator = _as_evaluator(evaluator, model, work, dummy_input, lr)
    pruner = _nni_pruner(method, work, pruning_config(groups, 0.5), evaluator, training_steps, regular_scale)
    captured = capture_pruner_metrics(pruner)  # kept for re-thresholding without re-training
    start = time.perf_counter()
    pruner.compress()
    info_seconds["train" if method in TRAINING_PRUNERS else "metrics"] = time.perf_counter() - start
    if "metrics" not in captured:
        raise RuntimeError(f"NNI's {type(pruner).__name__} generated no masks: did the evaluator's training "
                           f"function run {training_steps} optimizer steps?")
    if method == "slim" and fold_slim_factors:
        nni_compat.fold_slim_factors(pruner)
    pruner.unwrap_model()
    # Only the spaces pruned by ratio (weights); biases follow their weight through NNI's ``align``.
    spaces = ratio_spaces(pruner)

    def masks_at(ratio: float) -> dict:
        for space in spaces:
            space.sparse_ratio = float(ratio)
        masks = pruner_masks(pruner, captured["metrics"])
        # NNI returns metric-shaped masks (e.g. [C, 1, 1, 1]); ModelSpeedup wants the target's shape.
        return {name: {target: mask.expand_as(getattr(work.get_submodule(name), target)).clone()
                       for target, mask in per_target.items() if mask is not None}
                for name, per_target in masks.items()}

    sizes = sorted({work.get_submodule(name).weight.shape[0] for name in groups})
    knobs = sorted({0.0} | {j / n + _RATIO_NUDGE for n in sizes for j in range(1, n)})
    return knobs, masks_at


def bn_slim_masks(model: nn.Module, groups: Mapping[str, NeuronGroup], cut: int) -> Dict[str, Dict[str, torch.Tensor]]:
    """Masks cutting the ``cut`` channels of smallest ``|gamma|`` over all groups (global threshold).

    Each group is ranked by the BatchNorm right after its producer; the largest-gamma channel of
    every group is never cut. The producer and its depthwise conv get the same output-channel mask.
    """
    order, keep = _bn_order(model, groups)
    if not 0 <= cut <= len(order):
        raise ValueError(f"cut={cut!r} must be in [0, {len(order)}]")
    for name, channel in order[:cut]:
        keep[name][channel] = False
    masks = {}
    for name, group in groups.items():
        if name not in keep:
            continue
        masks[name] = _channel_mask(model.get_submodule(name), keep[name])
        if group.depthwise is not None:
            masks[group.depthwise] = _channel_mask(model.get_submodule(group.depthwise), keep[name])
    return masks


def _bn_order(model: nn.Module, groups: Mapping[str, NeuronGroup]):
    """Channels in increasing ``|gamma|`` (each group's largest left out), and all-true keep vectors."""
    scored, keep = [], {}
    for name, group in groups.items():
        bn = model.get_submodule(group.pre_bn) if group.pre_bn else None
        if bn is None or getattr(bn, "weight", None) is None:
            logger.info("bn_slim leaves %s as it is: no affine BatchNorm after it", name)
            continue
        gamma = bn.weight.detach().abs().cpu()
        keep[name] = torch.ones(gamma.numel(), dtype=torch.bool)
        protected = int(gamma.argmax())
        scored += [(float(gamma[c]), name, c) for c in range(gamma.numel()) if c != protected]
    if not keep:
        raise ValueError("bn_slim needs a BatchNorm after the pruned layers; none of "
                         f"{list(groups)} has one")
    scored.sort(key=lambda item: item[0])
    return [(name, channel) for _, name, channel in scored], keep


def _bn_slim(model: nn.Module, work: nn.Module, groups: Dict[str, NeuronGroup], dummy_input, evaluator,
             training_steps: int, sparsity_penalty: float, lr: float, info_seconds):
    evaluator = _as_evaluator(evaluator, model, work, dummy_input, lr)
    norms = [m for m in work.modules()  # every module with a per-channel scale: each BatchNorm's gamma
             if handler_for(m) is not None and handler_for(m).channel_scale(m) is not None]

    def penalty(loss, batch):  # network slimming: L1 on every BatchNorm scale
        return loss + sparsity_penalty * sum(handler_for(m).channel_scale(m).abs().sum() for m in norms)

    start = time.perf_counter()
    evaluator.bind_model(work)
    try:
        evaluator.patch_loss(penalty)
        evaluator.train(max_steps=training_steps)
    finally:
        evaluator.unbind_model()
    work.eval()
    info_seconds["train"] = time.perf_counter() - start
    order, _ = _bn_order(work, groups)
    return list(range(len(order) + 1)), lambda cut: bn_slim_masks(work, groups, int(cut))


def prune_to_ratio(model: nn.Module, method: str, params_ratio: float, dummy_input: torch.Tensor,
                   evaluator=None, training_steps: int = 100, regular_scale: float = 1.0,
                   sparsity_penalty: float = 1e-4, layers: Optional[Sequence[str]] = None,
                   fold_slim_factors: bool = True, lr: float = 0.01, seed: Optional[int] = 0
                   ) -> Tuple[nn.Module, PruneInfo]:
    """Prune a copy of ``model`` to ``params_ratio`` of its parameters and shrink it with ``ModelSpeedup``.

    Parameters
    ----------
    model : nn.Module
        A trained model; it is not modified.
    method : str
        One of :data:`PRUNERS` (see the module docstring).
    params_ratio : float
        Wanted ``params(pruned) / params(model)``, in ``(0, 1]``, counted by NNI's counter.
    dummy_input : Tensor
        An input batch for tracing, speedup and counting.
    evaluator : nni Evaluator or DataLoader, optional
        Needed by ``"slim"``, ``"taylor"``, ``"bn_slim"``: an NNI ``Evaluator`` built for ``model``
        (e.g. :func:`nni_splitting.common.training.torch_evaluator`), or a loader of ``(inputs, targets)``
        from which one is built (SGD, ``lr``, momentum 0.9).
    training_steps : int
        Training steps of the pruners that train (NNI's ``training_steps``; sparsity training for ``bn_slim``).
    regular_scale : float
        ``SlimPruner``'s penalty on its scaling factors (NNI's default 1).
    sparsity_penalty : float
        ``bn_slim``'s ``lambda`` of ``lambda * sum |gamma|`` (network slimming's 1e-4).
    layers : list of str, optional
        Only prune these producers (default: every prunable group).
    fold_slim_factors : bool
        ``"slim"`` only: multiply SlimPruner's learned factors into the weights before unwrapping.
    lr : float
        Learning rate of the evaluator built from a loader.
    seed : int, optional
        Seeds torch before any training.

    Returns
    -------
    pruned : nn.Module
        The physically smaller model (same class and module names as ``model``), in eval mode.
    info : PruneInfo
    """
    if method not in PRUNERS:
        raise ValueError(f"method={method!r} is not one of {list(PRUNERS)}")
    params_ratio = _check_ratio(params_ratio)
    if isinstance(training_steps, bool) or not isinstance(training_steps, int) or training_steps <= 0:
        raise ValueError(f"training_steps={training_steps!r} must be a positive int")
    if seed is not None:

        seed_everything(seed)
    was_training = model.training
    model.eval()
    try:
        base_flops, base_params = count_model(model, dummy_input)
        groups = prunable_groups(model, dummy_input, layers)
    finally:
        model.train(was_training)
    target = int(round(params_ratio * base_params))
    work = copy.deepcopy(model).eval()
    seconds: Dict[str, float] = {}
    if PRUNERS[method].nni_class is None:  # network slimming: our own ranking of BN gammas
        knobs, masks_at = _bn_slim(model, work, groups, dummy_input, evaluator, training_steps, sparsity_penalty,
                                   lr, seconds)
    else:
        knobs, masks_at = _nni_prune(method, model, work, groups, dummy_input, evaluator, training_steps,
                                     regular_scale, fold_slim_factors, lr, seconds)
    searched: List[Tuple[float, int]] = []
    start = time.perf_counter()
    knob, pruned, params = _search(knobs, masks_at, work, dummy_input, target, searched)
    seconds["search"] = time.perf_counter() - start
    pruned.eval()
    flops, _ = count_model(pruned, dummy_input)
    widths = None
    if callable(getattr(pruned, "width_layers", None)):

        widths = current_widths(pruned)
    info = PruneInfo(method, target, params, base_params, flops, base_flops, knob,
                     {name: int(pruned.get_submodule(name).weight.shape[0]) for name in groups},
                     widths, searched, seconds)
    logger.info("%s: %d -> %d parameters (target %d, ratio %.4f) at knob %s after %d speedups",
                method, base_params, params, target, info.params_ratio, knob, len(searched))
    return pruned, info
