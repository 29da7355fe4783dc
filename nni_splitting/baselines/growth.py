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

from ..defaults import EPSILON
from ..models import WidthModel, build_model, default_widths, rebuild, scale_widths
from ..counting import count_model
from ..graph import CHANNELWISE, DEPTHWISE, NeuronGroup, find_neuron_groups, handler_for, trace_model
from ..splitting import LayerSplitting
from ..surgery import apply_splits

__all__ = ["random_splits", "random_split", "add_new_neurons", "reinitialize", "uniform_width_model",
           "width_search_space", "widths_from_params", "load_search_space", "validate_width_space",
           "width_model_space", "NEW_NEURON_INITS", "WIDTH_CHOICES", "SEARCH_SPACE_MODELS", "SEARCH_SPACE_DIR"]

logger = logging.getLogger(__name__)

NEW_NEURON_INITS = ("match", "kaiming", "default")
OUTGOING = ("zero", "random")
WIDTH_CHOICES = (0.0625, 0.125, 0.25, 0.5, 0.75, 1.0)  # 1/16: down to the ultra-small models splitting grows
#: finer choices where the budgets sit between 1/16 and 1/2 of the defaults (the strong CIFAR family: 10-30 %
#: of its x0.75 full model is about 0.2-0.4 of its default widths)
MODEL_WIDTH_CHOICES = {"mobilenet_cifar": (0.0625, 0.125, 0.1875, 0.25, 0.3125, 0.375, 0.5, 0.75, 1.0)}
SEARCH_SPACE_MODELS = ("small_cnn", "mobilenet_v1", "mobilenet_cifar", "vgg19_bn")
#: ``search_spaces/`` shipped as package data (nni_splitting/search_spaces/).
SEARCH_SPACE_DIR = Path(__file__).resolve().parents[1] / "search_spaces"  # package data

Count = Union[int, Mapping[str, int]]


def _generator(seed: Optional[int]) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(int(seed) if seed is not None else int(torch.seed() % (2 ** 63)))
    return generator


def _groups(model: nn.Module, example_input: torch.Tensor, layers: Optional[Sequence[str]]) -> Dict[str, NeuronGroup]:
    groups, excluded = find_neuron_groups(trace_model(model, example_input), list(layers) if layers is not None else None)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no layer that can grow (excluded: {excluded})")
    return groups


def _neuron_size(layer: nn.Module) -> int:
    """``d``: weights per neuron (flattened) plus the bias, as in :class:`LayerSplitting`."""
    return layer.weight[0].numel() + (1 if getattr(layer, "bias", None) is not None else 0)


def _random_plan(model: nn.Module, groups: Mapping[str, NeuronGroup], n: Count,
                 generator: torch.Generator) -> Dict[str, List[int]]:
    """Distinct random neurons: ``n`` uniformly over all candidate neurons, or ``{layer: count}``."""
    widths = {name: model.get_submodule(name).weight.shape[0] for name in groups}
    if isinstance(n, Mapping):
        unknown = sorted(set(n) - set(groups))
        if unknown:
            raise ValueError(f"layer(s) {unknown} cannot grow; candidates are {list(groups)}")
        plan = {}
        for name, count in n.items():
            if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= widths[name]:
                raise ValueError(f"{count!r} neurons for {name!r}: must be an int in [0, {widths[name]}] (its width)")
            if count:
                plan[name] = sorted(torch.randperm(widths[name], generator=generator)[:count].tolist())
        return {name: plan[name] for name in groups if name in plan}
    total = sum(widths.values())
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= total:
        raise ValueError(f"n={n!r} must be an int in [0, {total}] (all candidate neurons) or a {{layer: count}} dict")
    names = list(groups)
    offsets = torch.tensor([0] + [widths[k] for k in names]).cumsum(0)
    plan: Dict[str, List[int]] = {}
    for flat in sorted(torch.randperm(total, generator=generator)[:n].tolist()):
        layer = int(torch.searchsorted(offsets, torch.tensor(flat), right=True)) - 1
        plan.setdefault(names[layer], []).append(flat - int(offsets[layer]))
    return plan


def random_splits(model: nn.Module, example_input: torch.Tensor, n: Count, seed: Optional[int] = 0,
                  layers: Optional[Sequence[str]] = None) -> Tuple[Dict[str, LayerSplitting], Dict[str, List[int]]]:
    """Random splitting "results" and a random plan, for :func:`apply_splits`.

    Every candidate neuron gets a direction drawn uniformly on the unit sphere (a normalised Gaussian
    vector over its weights and bias); the splitting indexes are NaN (none was computed).

    Parameters
    ----------
    model : nn.Module
    example_input : Tensor
        An input batch for tracing.
    n : int or dict
        How many neurons to split: uniformly over all candidate neurons, or ``{layer: count}`` (e.g.
        the per-layer counts of a splitting plan, to grow the same architecture).
    seed : int, optional
        Seed of the choice and the directions (``None``: nondeterministic).
    layers : list of str, optional
        Restrict the candidates to these producers.

    Returns
    -------
    splits : dict of LayerSplitting
    plan : dict
        ``{layer: sorted neuron indices}``.
    """
    generator = _generator(seed)
    groups = _groups(model, example_input, layers)
    plan = _random_plan(model, groups, n, generator)
    splits = {}
    for name, group in groups.items():
        layer = model.get_submodule(name)
        count = layer.weight.shape[0]
        directions = torch.randn(count, _neuron_size(layer), generator=generator, dtype=torch.float64)
        directions = (directions / directions.norm(dim=1, keepdim=True)).to(layer.weight.dtype)
        splits[name] = LayerSplitting(name, torch.full((count,), float("nan")), directions, group, "random")
    return splits, plan


def random_split(model: nn.Module, example_input: torch.Tensor, n: Count, epsilon: float = EPSILON,
                 seed: Optional[int] = 0, layers: Optional[Sequence[str]] = None) -> Tuple[nn.Module, Dict[str, List[int]]]:
    """Split ``n`` random neurons along random unit directions (a copy of ``model``; see :func:`random_splits`)."""
    splits, plan = random_splits(model, example_input, n, seed=seed, layers=layers)
    return apply_splits(model, splits, plan, epsilon=epsilon), plan


def _fresh(like: torch.Tensor, count: int, init: str, generator: torch.Generator, reference: torch.Tensor) -> torch.Tensor:
    """``count`` new rows shaped like ``like[0]``, drawn by ``init`` (``reference``: the layer's existing weights)."""
    shape = (count, *like.shape[1:])
    fan_in = max(1, like[0].numel())
    if init == "match" and reference.numel() > 1 and float(reference.std()) > 0:
        std = float(reference.float().std())
        return torch.randn(shape, generator=generator).mul_(std).to(like.dtype)
    if init == "default":  # PyTorch's Conv/Linear reset_parameters: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        bound = 1.0 / math.sqrt(fan_in)
        return torch.rand(shape, generator=generator).mul_(2 * bound).sub_(bound).to(like.dtype)
    # "kaiming" (fan-out, ReLU gain; what build_model uses for convs), and "match" without a scale to match
    fan_out = max(1, like.shape[0] * math.prod(like.shape[2:]))
    return torch.randn(shape, generator=generator).mul_(math.sqrt(2.0 / fan_out)).to(like.dtype)


def _set_rows(module: nn.Module, name: str, rows: slice, value: torch.Tensor) -> None:
    with torch.no_grad():
        getattr(module, name)[rows] = value.to(getattr(module, name).device)


def add_new_neurons(model: nn.Module, example_input: torch.Tensor, n: Count, seed: Optional[int] = 0,
                    init: str = "match", outgoing: str = "zero", layers: Optional[Sequence[str]] = None
                    ) -> Tuple[nn.Module, Dict[str, int]]:
    """Append ``n`` new, randomly initialised neurons (a copy of ``model``; see the module docstring).

    Parameters
    ----------
    model : nn.Module
    example_input : Tensor
        An input batch for tracing.
    n : int or dict
        How many new neurons: spread at random like :func:`random_split` (a layer gets at most its
        current width in one call), or ``{layer: count}``.
    seed : int, optional
        Seed of the layer choice and of the new weights.
    init : {"match", "kaiming", "default"}
        Incoming weights of a new neuron: ``"match"`` Gaussian with the standard deviation of the
        layer's existing weights; ``"kaiming"`` Gaussian with ``sqrt(2 / fan_out)`` (``build_model``'s
        conv init); ``"default"`` PyTorch's ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``. Biases start at 0.
    outgoing : {"zero", "random"}
        The consumers' weights from new neurons: zero (same function) or ``"match"``-style random.
    layers : list of str, optional
        Restrict the candidates to these producers.

    Returns
    -------
    grown : nn.Module
    added : dict
        ``{layer: number of new neurons}``.
    """
    if init not in NEW_NEURON_INITS:
        raise ValueError(f"init={init!r} is not one of {NEW_NEURON_INITS}")
    if outgoing not in OUTGOING:
        raise ValueError(f"outgoing={outgoing!r} is not one of {OUTGOING}")
    generator = _generator(seed)
    groups = _groups(model, example_input, layers)
    plan = _random_plan(model, groups, n, generator)
    if not plan:
        return copy.deepcopy(model), {}
    # 1. Duplicate the chosen neurons with the surgery (eps = 0): every module on their path is widened.
    stubs = {name: LayerSplitting(name, torch.zeros(model.get_submodule(name).weight.shape[0]),
                                  torch.zeros(model.get_submodule(name).weight.shape[0],
                                              _neuron_size(model.get_submodule(name))), groups[name])
             for name in plan}
    grown = apply_splits(model, stubs, plan, epsilon=0.0)
    old = {name: model.get_submodule(name).weight.shape[0] for name in plan}
    # 2. Consumers: put back the original (un-halved) columns; new channels' columns zero or random.
    for name in plan:
        for consumer in groups[name].consumers:
            original = model.get_submodule(consumer.module).weight.detach()
            module = grown.get_submodule(consumer.module)
            rows, columns = original.shape[0], old[name] * consumer.block
            with torch.no_grad():
                module.weight[:rows, :columns] = original.to(module.weight.device)
                extra = module.weight[:, columns:]
                if outgoing == "zero":
                    extra.zero_()
                else:
                    extra.copy_(_fresh(extra.transpose(0, 1), extra.shape[1], "match", generator,
                                       original).transpose(0, 1))
    # 3. New neurons' incoming weights, BatchNorm channels and depthwise filters: fresh.
    for name, group in groups.items():
        if name not in plan:
            continue
        new = slice(old[name], old[name] + len(plan[name]))
        producer = grown.get_submodule(name)
        reference = model.get_submodule(name).weight.detach()
        _set_rows(producer, "weight", new, _fresh(producer.weight.detach(), len(plan[name]), init, generator, reference))
        if producer.bias is not None:
            _set_rows(producer, "bias", new, torch.zeros(len(plan[name])))
        for follower in group.followers:
            module = grown.get_submodule(follower)
            handler = handler_for(module)
            role = handler.role(module) if handler is not None else None
            if role == CHANNELWISE:  # e.g. a BatchNorm: the new channels pass through unchanged
                for attribute, value in handler.fresh_channel_values(module).items():
                    _set_rows(module, attribute, new, torch.full((len(plan[name]),), value))
            elif role == DEPTHWISE:  # the depthwise conv: fresh filters like the producer's
                reference = model.get_submodule(follower).weight.detach()
                _set_rows(module, "weight", new, _fresh(module.weight.detach(), len(plan[name]), init, generator, reference))
                if module.bias is not None:
                    _set_rows(module, "bias", new, torch.zeros(len(plan[name])))
    added = {name: len(indices) for name, indices in plan.items()}
    logger.info("added new neurons %s (init=%s, outgoing=%s)", added, init, outgoing)
    return grown, added


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
