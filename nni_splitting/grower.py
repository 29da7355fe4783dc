"""``SplittingGrower``: grow an existing model by splitting, in the style of NNI 3.0's pruners.

A user with a model from a NAS search or a pruner, and an NNI ``TorchEvaluator`` (or a plain
training function), grows it without nnictl::

    grower = SplittingGrower(model, [{"op_types": ["Conv2d"], "grow_ratio": 0.1}], evaluator,
                             batches=splitting_batches)
    grown = grower.grow(steps=3)

Each step runs the stages ``_train -> _compute_splitting -> _select -> _split``; a variant (random
splitting, new random neurons, ...) overrides one stage.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from .activations import DEFAULT_SURROGATE_BETA
from .counting import count_model
from .graph import find_neuron_groups, trace_model
from .selection import select_neurons
from .splitting import LayerSplitting, compute_splitting
from .surgery import apply_splits

__all__ = ["SplittingGrower", "resolve_config_list"]

logger = logging.getLogger(__name__)

_CONFIG_KEYS = {"op_types", "op_names", "exclude_op_names", "exclude", "max_splits", "grow_ratio", "max_per_layer"}


def resolve_config_list(model: nn.Module, config_list: Sequence[Mapping], candidates: Sequence[str]) -> List[dict]:
    """Resolve NNI-style configs into ``[{"layers": [...], "max_splits": int|None, "max_per_layer": int|None}]``.

    Each config selects layers by ``op_types`` (class names, e.g. ``"Conv2d"``) and/or ``op_names``,
    minus ``exclude_op_names``; ``{"exclude": True, ...}`` removes layers from every other config.
    ``max_splits`` (neurons per step for the config's layers) or ``grow_ratio`` (the same as a fraction
    of their current neurons) and ``max_per_layer`` set how much each step grows.
    """
    if not isinstance(config_list, (list, tuple)) or not config_list:
        raise ValueError(f"config_list must be a non-empty list of dicts, got {config_list!r}")
    modules = dict(model.named_modules())
    excluded: set = set()
    resolved = []
    for config in config_list:
        unknown = set(config) - _CONFIG_KEYS
        if unknown:
            raise ValueError(f"unknown config key(s) {sorted(unknown)} in {dict(config)}; known: {sorted(_CONFIG_KEYS)}")
        names = set(candidates)
        if "op_types" in config:
            names = {n for n in names if type(modules[n]).__name__ in config["op_types"]}
        if "op_names" in config:
            missing = sorted(set(config["op_names"]) - set(modules))
            if missing:
                raise ValueError(f"op_names {missing} are not modules of {type(model).__name__}")
            names &= set(config["op_names"])
        names -= set(config.get("exclude_op_names", []))
        if config.get("exclude"):
            excluded |= names
            continue
        if "max_splits" in config and "grow_ratio" in config:
            raise ValueError(f"give max_splits or grow_ratio, not both: {dict(config)}")
        ratio = config.get("grow_ratio")
        if ratio is not None and not 0 < ratio <= 1:
            raise ValueError(f"grow_ratio={ratio!r} must be in (0, 1]")
        resolved.append({"layers": [n for n in candidates if n in names], "max_splits": config.get("max_splits"),
                         "grow_ratio": ratio, "max_per_layer": config.get("max_per_layer")})
    for entry in resolved:
        entry["layers"] = [n for n in entry["layers"] if n not in excluded]
    resolved = [entry for entry in resolved if entry["layers"]]
    if not resolved:
        raise ValueError(f"config_list {list(config_list)} selects no splittable layer; candidates are {list(candidates)}")
    return resolved


class SplittingGrower:
    """Grow a model step by step with splitting steepest descent (Algorithm 1).

    Parameters
    ----------
    model : nn.Module
        The model to grow (not modified: each step works on a copy).
    config_list : list of dict
        NNI-style: ``op_types`` / ``op_names`` / ``exclude_op_names`` select layers; ``max_splits`` or
        ``grow_ratio`` (default 0.1) and ``max_per_layer`` set the growth per step.
    evaluator : nni.compression.TorchEvaluator or callable, optional
        Trains the model before each splitting phase: NNI's ``TorchEvaluator`` (its ``training_func``
        is called with ``max_epochs=train_epochs``) or ``fn(model)``. ``None``: no training.
    batches : iterable of (inputs, targets)
        Data for the splitting matrices (required).
    loss_fn : callable
        ``loss_fn(outputs, targets)``; cross-entropy by default.
    threshold, epsilon, method, surrogate_beta
        As in :func:`select_neurons`, :func:`apply_splits`, :func:`compute_splitting`.
    """

    def __init__(self, model: nn.Module, config_list: Sequence[Mapping], evaluator=None,
                 batches: Optional[Iterable] = None, loss_fn: Optional[Callable] = None, *, threshold: float = 0.0,
                 epsilon: float = 1e-2, method: str = "exact", surrogate_beta: float = DEFAULT_SURROGATE_BETA,
                 train_epochs: int = 1):
        if batches is None:
            raise ValueError("SplittingGrower needs batches=[(inputs, targets), ...] for the splitting matrices")
        self.batches = list(batches)
        if not self.batches:
            raise ValueError("batches is empty")
        self.model = model
        self.config_list = list(config_list)
        self.evaluator = evaluator
        self.loss_fn = loss_fn or nn.CrossEntropyLoss()
        self.threshold, self.epsilon, self.method = threshold, epsilon, method
        self.surrogate_beta = surrogate_beta
        self.train_epochs = train_epochs
        self.history: List[dict] = []
        self._evaluator_ready = False
        example = self.batches[0][0]
        groups, _ = find_neuron_groups(trace_model(model, example[:1]), surrogate_beta=surrogate_beta)
        self.configs = resolve_config_list(model, self.config_list, list(groups))
        select_neurons({}, threshold=threshold)  # validates the threshold now rather than after training

    # ---------------------------------------------------------------- stages
    def _train(self, model: nn.Module) -> nn.Module:
        if self.evaluator is None:
            return model
        if hasattr(self.evaluator, "bind_model"):  # an NNI Evaluator
            if not self._evaluator_ready:
                self.evaluator._init_optimizer_helpers(self.model)
                self._evaluator_ready = True
            self.evaluator.bind_model(model)
            try:
                self.evaluator.train(max_epochs=self.train_epochs)
            finally:
                self.evaluator.unbind_model()
            return model
        result = self.evaluator(model)
        return result if isinstance(result, nn.Module) else model

    def _compute_splitting(self, model: nn.Module) -> Dict[str, LayerSplitting]:
        layers = sorted({n for config in self.configs for n in config["layers"]})
        return compute_splitting(model, self.loss_fn, self.batches, method=self.method, layers=layers,
                                 surrogate_beta=self.surrogate_beta)

    def _select(self, splits: Dict[str, LayerSplitting]) -> Dict[str, List[int]]:
        plan: Dict[str, List[int]] = {}
        for config in self.configs:
            subset = {n: splits[n] for n in config["layers"] if n in splits and n not in plan}
            total = config["max_splits"]
            if total is None:
                ratio = config["grow_ratio"] if config["grow_ratio"] is not None else 0.1
                total = max(1, math.floor(ratio * sum(s.num_neurons for s in subset.values())))
            plan.update(select_neurons(subset, max_splits=total, threshold=self.threshold,
                                       max_per_layer=config["max_per_layer"]))
        return plan

    def _split(self, model: nn.Module, splits: Dict[str, LayerSplitting], plan: Dict[str, List[int]]) -> nn.Module:
        return apply_splits(model, splits, plan, epsilon=self.epsilon)

    # ---------------------------------------------------------------- loop
    def step(self, model: Optional[nn.Module] = None) -> nn.Module:
        """One growth step (train, score, select, split); returns the grown model."""
        model = self._train(model if model is not None else self.model)
        splits = self._compute_splitting(model)
        plan = self._select(splits)
        grown = self._split(model, splits, plan) if plan else model
        example = self.batches[0][0][:1]
        flops, params = count_model(grown, example)
        smallest = min(float(s.eigenvalues.min()) for s in splits.values())
        self.history.append({"step": len(self.history) + 1, "plan": plan, "splits": sum(map(len, plan.values())),
                             "min_eigenvalue": smallest, "params": params, "flops": flops})
        logger.info("growth step %d: %d split(s), min splitting index %.3g, %d params",
                    len(self.history), self.history[-1]["splits"], smallest, params)
        return grown

    def grow(self, steps: int = 1, final_training: bool = False) -> nn.Module:
        """Run ``steps`` growth steps; stop early at splitting stability (no index below the threshold)."""
        if int(steps) != steps or steps < 1:
            raise ValueError(f"steps={steps!r} must be a positive integer")
        model = self.model
        for _ in range(steps):
            model = self.step(model)
            if not self.history[-1]["plan"]:
                logger.info("splitting stable: no splitting index below %g; stopping", self.threshold)
                break
        return self._train(model) if final_training else model
