"""Growth and width baselines of the paper: random splitting, new neurons, from scratch, width multipliers.

* :func:`random_split` — *random splitting* (Net2Net / NASH style): split randomly chosen neurons
  along random unit directions with the same ``epsilon`` as splitting steepest descent. It reuses
  :func:`nni_splitting.apply_splits` with :class:`~nni_splitting.LayerSplitting` objects whose
  directions are random (:func:`random_splits`).
* :func:`add_new_neurons` — *new neurons*: append freshly, randomly initialised neurons. The
  layers get their extra neurons at random, exactly as :func:`random_split` picks them. Each new
  neuron gets random incoming weights (``init``), a fresh BatchNorm channel (``gamma=1, beta=0``,
  running mean 0, variance 1) and, behind a depthwise conv, a random depthwise filter. Its
  *outgoing* weights (the consumers' input columns) are zero by default (``outgoing="zero"``), so
  the grown network computes exactly the same function, as splitting with ``epsilon=0`` does;
  ``outgoing="random"`` draws them like the consumer's existing weights instead (function changes).
  It reuses the surgery's widening (:func:`apply_splits` with ``epsilon=0`` duplicates neurons and
  widens every module on their path) and then overwrites the duplicated values.
* :func:`reinitialize` — the final architecture *trained from scratch*: same widths, fresh init.
* :func:`uniform_width_model` — a *uniform width multiplier* (MobileNet's alpha) on the default
  widths, bisected to a target parameter count.
* :func:`width_search_space` / :func:`widths_from_params` — per-layer width multipliers in NNI's HPO
  search-space syntax (the JSON files in ``search_spaces/``) for NNI's TPE / Random / Evolution tuners;
  :func:`width_model_space` — the same space as an ``nni.nas`` ``ModelSpace`` (``WidthSpace``).
"""
from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from nni_splitting.models import WidthModel, build_model, default_widths, rebuild, scale_widths
from nni_splitting.growth.counting import count_model
from nni_splitting.growth.random_neurons import NEW_NEURON_INITS, add_new_neurons, random_split, random_splits

__all__ = ["random_splits", "random_split", "add_new_neurons", "reinitialize", "uniform_width_model",
           "width_search_space", "widths_from_params", "load_search_space", "validate_width_space",
           "width_model_space", "NEW_NEURON_INITS", "WIDTH_CHOICES", "SEARCH_SPACE_MODELS", "SEARCH_SPACE_DIR"]

logger = logging.getLogger(__name__)

WIDTH_CHOICES = (0.0625, 0.125, 0.25, 0.5, 0.75, 1.0)  # 1/16: down to the ultra-small models splitting grows
#: finer choices where the budgets sit between 1/16 and 1/2 of the defaults (the strong CIFAR family: 10-30 %
#: of its x0.75 full model is about 0.2-0.4 of its default widths)
MODEL_WIDTH_CHOICES = {"mobilenet_cifar": (0.0625, 0.125, 0.1875, 0.25, 0.3125, 0.375, 0.5, 0.75, 1.0)}
SEARCH_SPACE_MODELS = ("small_cnn", "mobilenet_v1", "mobilenet_cifar", "vgg19_bn")
#: ``search_spaces/`` shipped as package data (nni_splitting/search_spaces/).
SEARCH_SPACE_DIR = Path(__file__).resolve().parents[1] / "search_spaces"  # package data

Count = Union[int, Mapping[str, int]]


def reinitialize(model: nn.Module, seed: Optional[int] = 0) -> nn.Module:
    """The same architecture, freshly initialised (for training a found architecture from scratch).

    One of our width models is rebuilt with :func:`nni_splitting.models.rebuild` (``build_model``'s
    init, at its current widths); any other model is copied and every module's ``reset_parameters``
    is called.
    """

    if seed is not None:
        torch.manual_seed(int(seed))
    if isinstance(model, WidthModel):
        return rebuild(model)
    fresh = copy.deepcopy(model)
    for module in fresh.modules():
        if callable(getattr(module, "reset_parameters", None)):
            module.reset_parameters()
    return fresh


def uniform_width_model(model_name: str, target_params: int, dummy_input: torch.Tensor, base_widths=None,
                        iterations: int = 40, **model_kwargs) -> Tuple[nn.Module, float]:
    """The uniform width multiplier whose model is closest to ``target_params`` (NNI's counter).

    Bisection on the multiplier ``m`` of ``scale_widths(base_widths, m)`` (widths rounded, at least 1);
    ``base_widths`` defaults to the model's default widths. Returns ``(model, m)``; the model is freshly
    initialised (``build_model``).
    """

    if isinstance(target_params, bool) or not isinstance(target_params, int) or target_params <= 0:
        raise ValueError(f"target_params={target_params!r} must be a positive int")
    base = list(base_widths) if base_widths is not None else default_widths(model_name)
    cache: Dict[float, Tuple[nn.Module, int]] = {}

    def build(m: float) -> int:
        if m not in cache:
            model = build_model(model_name, widths=scale_widths(base, m), **model_kwargs)
            cache[m] = (model, count_model(model.eval(), dummy_input)[1])
        return cache[m][1]

    low = 1e-6
    high = 1.0
    while build(high) < target_params:
        high *= 2
        if high > 1024:
            raise ValueError(f"no width multiplier up to 1024 reaches {target_params} parameters")
    if build(low) > target_params:
        logger.warning("even width 1 everywhere has %d > %d parameters", build(low), target_params)
        return cache[low][0], low
    for _ in range(iterations):  # invariant: build(low) <= target <= build(high)
        middle = (low + high) / 2
        if build(middle) <= target_params:
            low = middle
        else:
            high = middle
    best = low if abs(build(low) - target_params) <= abs(build(high) - target_params) else high
    return cache[best][0], best


# ---------------------------------------------------------------------------- width search spaces


def width_search_space(model_name: str, choices: Optional[Sequence[float]] = None) -> dict:
    """NNI HPO search space of per-layer width multipliers: ``{"mult_<i>": {"_type": "choice", "_value": [...]}}``.

    One key per width layer of ``model_name`` (``mult_0`` is the first entry of its widths); ``choices``
    default to the model's own (:data:`MODEL_WIDTH_CHOICES`), else :data:`WIDTH_CHOICES`.
    """
    if choices is None:
        choices = MODEL_WIDTH_CHOICES.get(model_name, WIDTH_CHOICES)

    values = [float(c) for c in choices]
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        raise ValueError(f"choices={list(choices)!r} must be positive numbers")
    return {f"mult_{i}": {"_type": "choice", "_value": values} for i in range(len(default_widths(model_name)))}


def validate_width_space(space: Mapping, model_name: Optional[str] = None) -> None:
    """Raise ``ValueError`` unless ``space`` is valid NNI search-space syntax (NNI's own validator) of ``mult_<i>`` keys."""
    from nni.common.hpo_utils import format_search_space, validate_search_space

    validate_search_space(dict(space), raise_exception=True)
    format_search_space(dict(space))
    if model_name is not None:
        expected = set(width_search_space(model_name))
        if set(space) != expected:
            raise ValueError(f"search space keys {sorted(space)} are not {sorted(expected)} for {model_name!r}")


def load_search_space(model_name: str, directory: Union[str, Path, None] = None) -> dict:
    """Read and validate ``<directory>/<model_name>.json`` (default: the checkout's ``search_spaces/``)."""
    path = Path(directory or SEARCH_SPACE_DIR) / f"{model_name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no search space {path}; known: {sorted(p.stem for p in path.parent.glob('*.json'))}")
    space = json.loads(path.read_text())
    validate_width_space(space, model_name)
    return space


def widths_from_params(model_name: str, params: Mapping, base_widths: Optional[Sequence[int]] = None) -> List[int]:
    """Widths of a sampled parameter set: ``round(base_widths[i] * params["mult_<i>"])``, at least 1.

    Keys other than ``mult_<i>`` (e.g. a learning rate in the same search space) are ignored.
    ``base_widths`` defaults to the model's default widths.
    """

    base = list(base_widths) if base_widths is not None else default_widths(model_name)
    if not isinstance(params, Mapping):
        raise ValueError(f"params must be a dict of mult_<i> values, got {params!r}")
    missing = [f"mult_{i}" for i in range(len(base)) if f"mult_{i}" not in params]
    extra = sorted(k for k in params if str(k).startswith("mult_") and k not in {f"mult_{i}" for i in range(len(base))})
    if missing or extra:
        raise ValueError(f"{model_name} has {len(base)} width layers: missing {missing}, unexpected {extra} in {dict(params)}")
    widths = []
    for i, width in enumerate(base):
        value = params[f"mult_{i}"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"mult_{i}={value!r} must be a positive number")
        widths.append(max(1, int(round(width * value))))
    return widths


# ---------------------------------------------------------------------------- NNI NAS model space

_WIDTH_SPACE_CLASS = None


def _width_space_class():
    """Create :class:`WidthSpace` on first use: ``nni.nas`` imports pytorch-lightning (seconds)."""
    global _WIDTH_SPACE_CLASS
    if _WIDTH_SPACE_CLASS is not None:
        return _WIDTH_SPACE_CLASS
    import nni
    from nni.mutable import ensure_frozen
    from nni.nas.nn.pytorch import ModelSpace
    from nni.nas.space import model_context


    class WidthSpace(ModelSpace):
        """NNI 3.0 model space: ``model_name`` with one ``nni.choice("mult_<i>", choices)`` per width layer.

        The same space as :func:`width_search_space`, for ``nni.nas`` multi-trial strategies
        (``Random``, ``RegularizedEvolution``, ``TPE``). ``space.freeze(sample)`` or ``space.random()``
        gives a concrete space whose ``net`` is ``build_model(model_name, widths_from_params(...))``.
        """

        def __init__(self, model_name: str = "small_cnn", choices: Sequence[float] = WIDTH_CHOICES, **model_kwargs):
            super().__init__()
            self._arguments = (model_name, tuple(float(c) for c in choices), dict(model_kwargs))
            sample = {}
            for key, spec in width_search_space(model_name, choices).items():
                sample[key] = ensure_frozen(self.add_mutable(nni.choice(key, spec["_value"])), strict=False)
            self.net = build_model(model_name, widths=widths_from_params(model_name, sample), **model_kwargs)

        def freeze(self, sample):
            with model_context(sample):
                name, choices, kwargs = self._arguments
                return type(self)(name, choices, **kwargs)

        def forward(self, x):
            return self.net(x)

    WidthSpace.__module__ = __name__  # importable (and picklable) as nni_splitting.baselines.growth.WidthSpace
    _WIDTH_SPACE_CLASS = WidthSpace
    return WidthSpace


def width_model_space(model_name: str = "small_cnn", choices: Sequence[float] = WIDTH_CHOICES, **model_kwargs):
    """An NNI 3.0 ``ModelSpace`` of per-layer width multipliers (see ``WidthSpace``); imports ``nni.nas``."""
    return _width_space_class()(model_name, choices, **model_kwargs)


def __getattr__(name: str):  # ``from nni_splitting.baselines.growth import WidthSpace`` without importing nni at import
    if name == "WidthSpace":
        return _width_space_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
