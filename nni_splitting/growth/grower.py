"""``SplittingGrower``: grow an existing model by splitting, in the style of NNI 3.0's pruners.

A user with a model from a NAS search or a pruner, and an NNI ``TorchEvaluator`` (or a plain
training function), grows it without nnictl::

    grower = SplittingGrower(model, [{"op_types": ["Conv2d"], "grow_ratio": 0.3}], evaluator,
                             batches=splitting_batches)
    grown = grower.grow(steps=3)

or with another selection rule by name (:data:`nni_splitting.growth.selection.SELECTION_RULES`)::

    grower = SplittingGrower(model, [{"op_types": ["Conv2d"], "selection": "lowest_fraction",
                                      "fraction": 0.3}], evaluator, batches=splitting_batches)
    grown = grower.grow(steps=3)

or with Firefly growth (splits and new neurons, :mod:`nni_splitting.growth.firefly`) as the strategy
(:mod:`nni_splitting.growth.strategies`; ``method`` stays the splitting matrices' solver of ``"s2d"``)::

    grower = SplittingGrower(model, [{"op_types": ["Conv2d"], "grow_ratio": 0.3}], evaluator,
                             batches=splitting_batches, strategy="firefly", strategy_options={"steps": 20})
    grown = grower.grow(steps=3)

Each step runs the stages ``_train -> _compute_splitting -> _select -> _split``; a variant (random
splitting, new random neurons, ...) overrides one stage.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import torch.nn as nn

from nni_splitting.graph.activations import DEFAULT_SURROGATE_BETA
from nni_splitting.growth.counting import count_model, neuron_costs
from nni_splitting.common.defaults import EPSILON, METHOD, SELECTION, THRESHOLD
from nni_splitting.graph import find_neuron_groups, trace_model
from nni_splitting.common.nni_compat import bind_evaluator
from nni_splitting.growth.selection import rule_options, select, split_count
from nni_splitting.core.splitting import LayerSplitting
from nni_splitting.growth.strategies import GrowthStrategy, S2DStrategy, make_strategy, strategy_class

__all__ = ["SplittingGrower", "resolve_config_list"]

logger = logging.getLogger(__name__)

_LAYER_KEYS = {"op_types", "op_names", "exclude_op_names", "exclude"}
_COUNT_KEYS = {"max_splits", "grow_ratio"}
#: Config keys passed to the selection rule as its options of the same name.
_RULE_KEYS = {"max_per_layer", "threshold", "fraction", "budget", "groups", "solver"}
_CONFIG_KEYS = _LAYER_KEYS | _COUNT_KEYS | _RULE_KEYS | {"selection", "cost"}
#: Rules whose own option limits the count: no default ``grow_ratio`` cap is added to them.
_SELF_LIMITED = {"lowest_fraction", "energy"}


def resolve_config_list(model: nn.Module, config_list: Sequence[Mapping], candidates: Sequence[str],
                        selection: str = SELECTION, cost: str = "flops", threshold: float = THRESHOLD) -> List[dict]:
    """Resolve NNI-style configs into ``[{"layers": [...], "selection": rule, "options": {...}, ...}]``.

    Each config selects layers by ``op_types`` (class names, e.g. ``"Conv2d"``) and/or ``op_names``,
    minus ``exclude_op_names``; ``{"exclude": True, ...}`` removes layers from every other config.
    ``selection`` names the rule (:data:`nni_splitting.growth.selection.SELECTION_RULES`; default the
    grower's). ``max_splits`` (neurons per step for the config's layers) or ``grow_ratio`` (the same
    as a fraction of their current neurons, default :data:`nni_splitting.common.defaults.GROW_RATIO` for
    ``"negative"`` and ``"per_cost"``) set how much each step grows; ``max_per_layer``,
    ``threshold``, ``fraction`` (``"lowest_fraction"``), ``budget``, ``groups`` and ``solver``
    (``"energy"``, ``"per_cost"``) go to the rule; ``cost`` (``"params"`` or ``"flops"``) is what
    NNI's counter measures for the rules that take ``costs``. ``selection``, ``cost`` and
    ``threshold`` here are the defaults of configs that do not set them.
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
        resolved.append(_resolve_selection(config, [n for n in candidates if n in names], selection, cost, threshold))
    for entry in resolved:
        entry["layers"] = [n for n in entry["layers"] if n not in excluded]
    resolved = [entry for entry in resolved if entry["layers"]]
    if not resolved:
        raise ValueError(f"config_list {list(config_list)} selects no splittable layer; candidates are {list(candidates)}")
    for entry in resolved:  # a dry run on empty indexes checks the rule's options before any training
        dry = {"costs": {n: 1.0 for n in entry["layers"]}} if entry["cost"] else {}
        select({n: [] for n in entry["layers"]}, entry["selection"], **entry["options"], **dry,
               **({"max_splits": 0} if entry["counted"] else {}))
    return resolved


def _resolve_selection(config: Mapping, layers: List[str], default_rule: str, default_cost: str,
                       default_threshold: float) -> dict:
    """The rule, its static options and the count setting of one config."""
    rule = config.get("selection", default_rule)
    accepted = rule_options(rule)  # ValueError for an unknown rule
    options = {key: config[key] for key in _RULE_KEYS if key in config}
    bad = sorted(set(options) - set(accepted))
    if bad:
        raise ValueError(f"config key(s) {bad} do not apply to selection {rule!r} (its options: {sorted(accepted)})")
    if "threshold" in accepted:
        options.setdefault("threshold", default_threshold)
    if "max_splits" in config and "grow_ratio" in config:
        raise ValueError(f"give max_splits or grow_ratio, not both: {dict(config)}")
    if "max_splits" not in accepted and _COUNT_KEYS & set(config):
        raise ValueError(f"selection {rule!r} takes no count; drop {sorted(_COUNT_KEYS & set(config))}")
    if rule == "lowest_fraction" and "grow_ratio" in config:
        raise ValueError(f"selection 'lowest_fraction' takes fraction=, not grow_ratio={config['grow_ratio']!r}")
    ratio = config.get("grow_ratio")
    if ratio is not None:
        split_count(1, ratio)  # ValueError quoting a ratio outside (0, 1]
    counted = "max_splits" in accepted and (bool(_COUNT_KEYS & set(config)) or rule not in _SELF_LIMITED)
    cost = config.get("cost", default_cost) if "costs" in accepted else None
    if "cost" in config and cost is None:
        raise ValueError(f"config key 'cost' does not apply to selection {rule!r}: it takes no costs")
    if cost is not None and cost not in ("params", "flops"):
        raise ValueError(f"cost={cost!r} must be 'params' or 'flops'")
    return {"layers": layers, "selection": rule, "options": options, "counted": counted, "cost": cost,
            "max_splits": config.get("max_splits"), "grow_ratio": ratio}


class SplittingGrower:
    """Grow a model step by step with splitting steepest descent (Algorithm 1).

    Parameters
    ----------
    model : nn.Module
        The model to grow (not modified: each step works on a copy).
    config_list : list of dict
        NNI-style: ``op_types`` / ``op_names`` / ``exclude_op_names`` select layers; ``selection``
        names the rule and ``max_splits`` or ``grow_ratio``, ``max_per_layer``, ``fraction``,
        ``budget``, ... set the growth per step (see :func:`resolve_config_list`).
    evaluator : nni.compression.TorchEvaluator or callable, optional
        Trains the model before each splitting phase: NNI's ``TorchEvaluator`` (its ``training_func``
        is called with ``max_epochs=train_epochs``) or ``fn(model)``. ``None``: no training.
    batches : iterable of (inputs, targets)
        Data for the splitting matrices (required).
    loss_fn : callable
        ``loss_fn(outputs, targets)``; cross-entropy by default.
    selection : str
        Rule of the configs that name none: ``"negative"``, ``"per_cost"``, ``"lowest_fraction"``,
        ``"energy"`` or a registered one (:func:`nni_splitting.growth.selection.select`).
    cost : {"flops", "params"}
        What a split costs for the rules that take costs (measured by NNI's counter each step).
    threshold, epsilon, method, surrogate_beta
        As in :func:`select_neurons`, :func:`apply_splits`, :func:`compute_splitting`; defaults from
        :mod:`nni_splitting.common.defaults`.
    strategy : str or GrowthStrategy
        How candidates are scored and applied (:data:`nni_splitting.growth.strategies.STRATEGIES`):
        ``"s2d"`` (default: splitting steepest descent with ``epsilon``, ``method`` and
        ``surrogate_beta``), ``"firefly"`` (splits and new neurons with fitted perturbations,
        ``epsilon`` their norm) or an instance. The selection (``config_list``) is the same for all.
    strategy_options : dict, optional
        More keyword arguments of the named strategy (e.g. Firefly's ``steps``, ``new_neurons``, ``kinds``).
    """

    def __init__(self, model: nn.Module, config_list: Sequence[Mapping], evaluator=None,
                 batches: Optional[Iterable] = None, loss_fn: Optional[Callable] = None, *,
                 selection: str = SELECTION, cost: str = "flops", threshold: float = THRESHOLD,
                 epsilon: float = EPSILON, method: str = METHOD, surrogate_beta: float = DEFAULT_SURROGATE_BETA,
                 train_epochs: int = 1, strategy: Union[str, GrowthStrategy] = "s2d",
                 strategy_options: Optional[Mapping] = None):
        if batches is None:
            raise ValueError("SplittingGrower needs batches=[(inputs, targets), ...] for the splitting matrices")
        self.batches = list(batches)
        if not self.batches:
            raise ValueError("batches is empty")
        self.model = model
        self.config_list = list(config_list)
        self.evaluator = evaluator
        self.loss_fn = loss_fn or nn.CrossEntropyLoss()
        self.selection, self.cost = selection, cost
        self.threshold, self.epsilon, self.method = threshold, epsilon, method
        self.surrogate_beta = surrogate_beta
        self.train_epochs = train_epochs
        self.strategy = self._make_strategy(strategy, dict(strategy_options or {}))
        self.history: List[dict] = []
        self._evaluator_ready = False
        example = self.batches[0][0]
        groups, _ = find_neuron_groups(trace_model(model, example[:1]), surrogate_beta=surrogate_beta)
        self.configs = resolve_config_list(model, self.config_list, list(groups), selection=selection, cost=cost,
                                           threshold=threshold)

    def _make_strategy(self, strategy, options: dict) -> GrowthStrategy:
        if isinstance(strategy, GrowthStrategy):
            return make_strategy(strategy, **options)
        defaults = {"epsilon": self.epsilon}
        if issubclass(strategy_class(strategy), S2DStrategy):  # S2D, S3D and their subclasses
            defaults.update(method=self.method, surrogate_beta=self.surrogate_beta)
        return make_strategy(strategy, **{**defaults, **options})

    # ---------------------------------------------------------------- stages
    def _train(self, model: nn.Module) -> nn.Module:
        if self.evaluator is None:
            return model
        if hasattr(self.evaluator, "bind_model"):  # an NNI Evaluator
            if not self._evaluator_ready:
                bind_evaluator(self.evaluator, self.model, always=True)
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
        """The strategy's scores of the configs' layers (``LayerSplitting`` for ``"s2d"``)."""
        layers = sorted({n for config in self.configs for n in config["layers"]})
        return self.strategy.score(model, self.loss_fn, self.batches, layers=layers)

    def _select(self, splits: Dict[str, LayerSplitting], model: Optional[nn.Module] = None) -> Dict[str, List[int]]:
        """Each config's rule on its layers (a layer claimed by an earlier config is not offered again)."""
        plan: Dict[str, List[int]] = {}
        for config in self.configs:
            subset = {n: splits[n] for n in config["layers"] if n in splits and n not in plan}
            if not subset:
                continue
            options = dict(config["options"])
            if config["counted"]:
                options["max_splits"] = split_count([s.num_neurons for s in subset.values()], config["grow_ratio"],
                                                    config["max_splits"])
            if config["cost"]:
                options["costs"] = neuron_costs(model if model is not None else self.model,
                                                self.batches[0][0][:1], kind=config["cost"], layers=list(subset))
            plan.update(self.strategy.select(subset, config["selection"], **options))
        return plan

    def _split(self, model: nn.Module, splits: Dict[str, LayerSplitting], plan: Dict[str, List[int]]) -> nn.Module:
        return self.strategy.apply(model, splits, plan)

    # ---------------------------------------------------------------- loop
    def step(self, model: Optional[nn.Module] = None) -> nn.Module:
        """One growth step (train, score, select, split); returns the grown model."""
        model = self._train(model if model is not None else self.model)
        splits = self._compute_splitting(model)
        plan = self._select(splits, model)
        grown = self._split(model, splits, plan) if plan else model
        example = self.batches[0][0][:1]
        flops, params = count_model(grown, example)
        values = [float(v) for s in splits.values() for v in s.eigenvalues.reshape(-1) if not math.isnan(float(v))]
        smallest = min(values) if values else math.nan
        self.history.append({"step": len(self.history) + 1, "plan": plan, "splits": sum(map(len, plan.values())),
                             "min_eigenvalue": smallest, "params": params, "flops": flops,
                             "strategy": self.strategy.name})
        logger.info("growth step %d (%s): %d neuron(s) added, min score %.3g, %d params", len(self.history),
                    self.strategy.name, self.history[-1]["splits"], smallest, params)
        return grown

    def grow(self, steps: int = 1, final_training: bool = False) -> nn.Module:
        """Run ``steps`` growth steps; stop early at splitting stability (no index below the threshold)."""
        if int(steps) != steps or steps < 1:
            raise ValueError(f"steps={steps!r} must be a positive integer")
        model = self.model
        for _ in range(steps):
            model = self.step(model)
            if not self.history[-1]["plan"]:
                logger.info("no candidate selected (threshold %g): stable under %s; stopping", self.threshold,
                            self.strategy.name)
                break
        return self._train(model) if final_training else model
