"""Growth strategies: one interface, ``score candidates -> select under a budget -> apply``, by name.

* ``"s2d"`` (:class:`S2DStrategy`): splitting steepest descent (Liu, Wu & Wang 2019): the scores
  are the splitting indexes ``lambda_min`` of :func:`~nni_splitting.core.splitting.compute_splitting`,
  a split moves the loss by ``epsilon**2 lambda_min / 2``; applied by :func:`~nni_splitting.growth.surgery.apply_splits`.
* ``"firefly"`` (:class:`FireflyStrategy`): Firefly descent (Wu, Liu, Stone & Liu 2020): splits and new
  neurons with fitted perturbations, scored by the predicted loss change
  ``<p_c, grad_{p_c} L> / k_c`` (:func:`~nni_splitting.growth.firefly.compute_firefly`); applied by
  :func:`~nni_splitting.growth.firefly.apply_firefly`.

Both return scores keyed by layer whose ``eigenvalues`` (lower is better, negative means the loss
falls) and ``num_neurons`` are what every rule of :mod:`nni_splitting.growth.selection` ranks, so one
selection (count, ratio, cost budget, energy LP) serves both::

    strategy = make_strategy("firefly", epsilon=0.05)
    scores = strategy.score(model, loss_fn, batches)
    plan = strategy.select(scores, "per_cost", costs=neuron_costs(model, x), budget=20_000)
    grown = strategy.apply(model, scores, plan)

Add one with :func:`register_strategy`, or name its class by import path (``"package.module:MyStrategy"``)
wherever a strategy name goes (``growth_strategy`` of a trial, ``strategy`` of the tuner): trials run
:meth:`GrowthStrategy.from_settings`, :meth:`~GrowthStrategy.score`, :meth:`~GrowthStrategy.save` and
:meth:`~GrowthStrategy.indexes` after training and :meth:`~GrowthStrategy.load` and
:meth:`~GrowthStrategy.apply` when they grow their parent; the tuner ranks the indexes and counts
``added_per_split`` neurons per split.
"""
from __future__ import annotations

import abc
import inspect
import logging
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Type, Union

import torch.nn as nn

from nni_splitting.graph.activations import DEFAULT_SURROGATE_BETA
from nni_splitting.common.defaults import EPSILON, GROW_RATIO, METHOD, SELECTION
from nni_splitting.growth.firefly import apply_firefly, compute_firefly, load_firefly, save_firefly
from nni_splitting.common.importing import import_object, is_import_path
from nni_splitting.growth.offspring import break_symmetry, scale_directions
from nni_splitting.growth.selection import select
from nni_splitting.growth.signed import COPIES as SIGNED_COPIES
from nni_splitting.growth.signed import SIGNED_WEIGHT, apply_signed_splits, signed_indexes
from nni_splitting.core.splitting import compute_splitting, load_splits, save_splits
from nni_splitting.growth.surgery import apply_splits

__all__ = ["GrowthStrategy", "S2DStrategy", "S3DStrategy", "FireflyStrategy", "STRATEGIES", "register_strategy",
           "make_strategy", "strategy_class", "split_batch_count"]

logger = logging.getLogger(__name__)

Plan = Dict[str, List[int]]


class GrowthStrategy(abc.ABC):
    """How a model grows by one step: :meth:`score`, then :meth:`select`, then :meth:`apply`.

    Subclasses implement :meth:`score` (called once per growth step, on the trained model) and
    :meth:`apply` (called with the plan :meth:`select` returned); :meth:`select` runs a rule of
    :mod:`nni_splitting.growth.selection` on the scores and rarely needs overriding.
    """

    #: The registry name (``STRATEGIES[name]``).
    name: str = ""
    #: Neurons one split adds (the tuner's ``grow_ratio`` counts added neurons).
    added_per_split: int = 1

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> "GrowthStrategy":
        """The strategy of a trial, from its resolved parameters (``epsilon``, ``seed``, ``step``, the
        ``split_*`` settings, ...). Default: the constructor's ``epsilon`` when it takes one."""
        if "epsilon" in inspect.signature(cls).parameters:
            return cls(epsilon=float(settings.get("epsilon", EPSILON)))
        return cls()

    @abc.abstractmethod
    def score(self, model: nn.Module, loss_fn: Callable, batches: Iterable,
              layers: Optional[Sequence[str]] = None) -> Dict[str, object]:
        """``{layer: scores}``: each with ``eigenvalues`` (one per candidate, lower is better) and ``num_neurons``."""

    def select(self, scores: Mapping[str, object], rule: str = SELECTION, **options) -> Plan:
        """``{layer: candidate indices}`` by the selection rule ``rule`` (:func:`nni_splitting.growth.selection.select`)."""
        return select(scores, rule, **options)

    @abc.abstractmethod
    def apply(self, model: nn.Module, scores: Mapping[str, object], plan: Mapping[str, Sequence[int]]) -> nn.Module:
        """The grown copy of ``model``."""

    def indexes(self, scores: Mapping[str, object]) -> Dict[str, List[float]]:
        """``{layer: [one number per candidate]}`` that selection ranks (lower is better), as plain floats."""
        return {name: [float(v) for v in getattr(score, "eigenvalues", score)] for name, score in scores.items()}

    def save(self, scores: Mapping[str, object], path: Union[str, Path]) -> None:
        """Write ``scores`` for the child trial's :meth:`load` (default: :func:`~nni_splitting.core.splitting.save_splits`)."""
        save_splits(dict(scores), path)

    def load(self, path: Union[str, Path]) -> Dict[str, object]:
        """Read what :meth:`save` wrote."""
        return load_splits(path)

    def grow(self, model: nn.Module, loss_fn: Callable, batches: Iterable, rule: str = SELECTION,
             layers: Optional[Sequence[str]] = None, **options) -> nn.Module:
        """One step of the three stages (``options`` go to the rule); an empty plan returns ``model`` itself."""
        scores = self.score(model, loss_fn, list(batches), layers=layers)
        plan = self.select(scores, rule, **options)
        return self.apply(model, scores, plan) if plan else model

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


class S2DStrategy(GrowthStrategy):
    """Splitting steepest descent: ``lambda_min`` scores, split along ``v_min`` with step ``epsilon``.

    ``method``, ``surrogate_beta`` and ``options`` (``max_batches``, ``memory_limit``, ``fast_options``, ...)
    go to :func:`compute_splitting`; ``epsilon`` to :func:`apply_splits`. ``epsilon_scale`` (``"relative"``:
    each direction times ``||theta_j||``) and ``symmetry_breaking`` / ``symmetry_scale`` / ``symmetry_seed``
    (on the appended offspring) are :mod:`nni_splitting.growth.offspring`'s.
    """

    name = "s2d"

    def __init__(self, epsilon: float = EPSILON, method: str = METHOD,
                 surrogate_beta: float = DEFAULT_SURROGATE_BETA, epsilon_scale: str = "absolute",
                 symmetry_breaking: str = "none", symmetry_scale: float = 0.1, symmetry_seed: int = 0, **options):
        self.epsilon, self.method, self.surrogate_beta, self.options = epsilon, method, surrogate_beta, dict(options)
        self.epsilon_scale, self.symmetry_breaking = epsilon_scale, symmetry_breaking
        self.symmetry_scale, self.symmetry_seed = symmetry_scale, symmetry_seed

    @classmethod
    def _splitting_settings(cls, settings: Mapping[str, Any]) -> Dict[str, Any]:
        return {"epsilon": float(settings["epsilon"]), "method": settings["split_method"],
                "max_batches": split_batch_count(settings), "position_samples": settings["split_positions"],
                "seed": int(settings["seed"]), "product_dtype": settings["split_product_dtype"],
                "image_fraction": settings["split_image_fraction"]}

    @classmethod
    def from_settings(cls, settings):
        return cls(**cls._splitting_settings(settings), epsilon_scale=settings["epsilon_scale"],
                   symmetry_breaking=settings["symmetry_breaking"], symmetry_scale=float(settings["symmetry_scale"]),
                   symmetry_seed=int(settings["seed"]) + int(settings["step"]))

    def score(self, model, loss_fn, batches, layers=None):
        return compute_splitting(model, loss_fn, batches, method=self.method, layers=layers,
                                 surrogate_beta=self.surrogate_beta, **self.options)

    def apply(self, model, scores, plan):
        old_widths = {layer: int(scores[layer].num_neurons) for layer in plan if layer in scores}
        grown = apply_splits(model, scale_directions(model, scores, self.epsilon_scale), plan, epsilon=self.epsilon)
        return break_symmetry(grown, scores, plan, old_widths, self.symmetry_breaking, float(self.symmetry_scale),
                              seed=self.symmetry_seed)


class S3DStrategy(S2DStrategy):
    """Signed splitting (:mod:`nni_splitting.growth.signed`): ranks each neuron by its best scheme's ``2 dL / eps^2``
    (two copies: ``min(lambda_min, -a/(1+a) lambda_max)``), splits it by that scheme (positive, or signed output
    weights ``(1 + a, -a)``; with ``copies=3`` positive3 / signed3 / mixed3, two added neurons per split).

    Options as :class:`S2DStrategy` (``lambda_max`` is always computed), plus ``a`` and ``copies`` (2 or 3).
    """

    name = "s3d"

    def __init__(self, epsilon: float = EPSILON, method: str = METHOD,
                 surrogate_beta: float = DEFAULT_SURROGATE_BETA, a: float = SIGNED_WEIGHT, copies: int = 2,
                 **options):
        fast_options = dict(options.pop("fast_options", None) or {}, largest=True)
        super().__init__(epsilon, method, surrogate_beta, fast_options=fast_options, **options)
        if isinstance(copies, bool) or copies not in SIGNED_COPIES:
            raise ValueError(f"copies={copies!r} must be one of {list(SIGNED_COPIES)}")
        self.a, self.copies = a, int(copies)
        self.added_per_split = self.copies - 1

    @classmethod
    def from_settings(cls, settings):
        return cls(**cls._splitting_settings(settings), copies=int(settings["s3d_copies"]))

    def indexes(self, scores):  # the best scheme's 2 dL / eps^2: one scale for every scheme
        return super().indexes(signed_indexes(scores, self.a, self.copies)) if scores else {}

    def select(self, scores, rule=SELECTION, **options):
        return select(signed_indexes(scores, self.a, self.copies), rule, **options)  # every scheme on one scale

    def apply(self, model, scores, plan):
        return apply_signed_splits(model, scores, plan, epsilon=self.epsilon, a=self.a, copies=self.copies)


_FIREFLY_OPTIONS = ("new_epsilon", "new_neurons", "grow_ratio", "kinds", "steps", "score_batches", "lr", "input_scale", "seed",
                    "max_batches")


class FireflyStrategy(GrowthStrategy):
    """Firefly descent: splits and new neurons, fitted perturbations, first-order scores.

    ``epsilon`` and ``options`` (:data:`_FIREFLY_OPTIONS`: ``new_epsilon``, ``new_neurons``, ``grow_ratio``,
    ``kinds``, ``steps``, ``score_batches``, ``lr``, ``input_scale``, ``seed``, ``max_batches``) go to
    :func:`compute_firefly`; ``scale`` to :func:`apply_firefly` (``0``: function preserved).
    """

    name = "firefly"

    def __init__(self, epsilon: float = EPSILON, scale: float = 1.0, **options):
        unknown = sorted(set(options) - set(_FIREFLY_OPTIONS))
        if unknown:
            raise ValueError(f"unknown Firefly option(s) {unknown}; known: {sorted(_FIREFLY_OPTIONS)}")
        self.epsilon, self.scale, self.options = epsilon, scale, dict(options)

    @classmethod
    def from_settings(cls, settings):
        return cls(epsilon=float(settings["epsilon"]), seed=int(settings["seed"]),
                   max_batches=split_batch_count(settings), grow_ratio=float(settings.get("grow_ratio", GROW_RATIO)))

    def save(self, scores, path):
        save_firefly(dict(scores), path)

    def load(self, path):
        return load_firefly(path)

    def score(self, model, loss_fn, batches, layers=None):
        return compute_firefly(model, loss_fn, batches, layers=layers, epsilon=self.epsilon, **self.options)

    def apply(self, model, scores, plan):
        return apply_firefly(model, scores, plan, scale=self.scale)


#: ``{name: strategy class}``; add one with :func:`register_strategy`.
STRATEGIES: Dict[str, Type[GrowthStrategy]] = {"s2d": S2DStrategy, "s3d": S3DStrategy, "firefly": FireflyStrategy}


def register_strategy(name: str, strategy: Type[GrowthStrategy], replace: bool = False) -> None:
    """Make ``make_strategy(name, ...)`` (and ``SplittingGrower(strategy=name)``) build ``strategy``.

    Registered in this process only: for NNI trials (other processes) name the class by import path instead.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"strategy name={name!r} must be a non-empty string")
    if name in STRATEGIES and not replace:
        raise ValueError(f"growth strategy {name!r} exists; pass replace=True to replace it")
    if not (isinstance(strategy, type) and issubclass(strategy, GrowthStrategy)):
        raise ValueError(f"strategy={strategy!r} is not a GrowthStrategy subclass")
    STRATEGIES[name] = strategy


def strategy_class(name: str) -> Type[GrowthStrategy]:
    """The strategy class of a registered ``name`` or of an import path ``"package.module:Class"``."""
    if isinstance(name, str) and name in STRATEGIES:
        return STRATEGIES[name]
    if is_import_path(name):
        value = import_object(name, "growth strategy")
        if not (isinstance(value, type) and issubclass(value, GrowthStrategy)):
            raise ValueError(f"growth strategy {name!r} is a {type(value).__name__}, not a GrowthStrategy subclass")
        return value
    raise ValueError(f"growth strategy {name!r} is not one of {sorted(STRATEGIES)} "
                     f"(or a GrowthStrategy named 'package.module:Class')")


def make_strategy(strategy: Union[str, GrowthStrategy], **options) -> GrowthStrategy:
    """A strategy by name or import path (``options`` to its constructor) or an instance as it is (then no options)."""
    if isinstance(strategy, GrowthStrategy):
        if options:
            raise ValueError(f"options {sorted(options)} cannot be given with a strategy instance {strategy!r}")
        return strategy
    return strategy_class(strategy)(**options)


def split_batch_count(settings: Mapping[str, Any]) -> Optional[int]:
    """Batches a trial's scores average over: ``split_samples`` images when set, else ``split_batches``."""
    if settings.get("split_samples"):
        size = settings.get("split_batch_size") or settings["batch_size"]
        return max(1, -(-int(settings["split_samples"]) // int(size)))
    return settings.get("split_batches")
