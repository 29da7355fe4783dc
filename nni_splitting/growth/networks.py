"""A trial's network, whatever its class: a registered width model, or the user's own model.

A registered model (:data:`~nni_splitting.models.MODELS`) is built from its widths list. Any other
``model`` (an importable factory or a torchvision name, :func:`~nni_splitting.models.spec.build_seed`)
is built by its factory with ``model_args`` (and ``weights`` for the seed); its widths are those of its
splittable layers by name (:func:`~nni_splitting.growth.reshape.splittable_widths`), and its checkpoint
stores them, so that a grown network is rebuilt from the factory, resized layer by layer
(:func:`~nni_splitting.growth.reshape.resize_to`) and loaded, with nothing about the class known in advance.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

import torch
from torch import nn

from nni_splitting.growth.checkpoint import CheckpointError, file_sha256, load_checkpoint, read_checkpoint, save_checkpoint
from nni_splitting.models import WidthModel, current_widths
from nni_splitting.models.spec import build_seed, is_registered
from nni_splitting.growth.reshape import resize_to, splittable_widths
from nni_splitting.common.storage import atomic_save

__all__ = ["is_registered", "network_widths", "save_network", "load_network"]

PathLike = Union[str, Path]


def network_widths(model: nn.Module, example_input: torch.Tensor) -> Tuple[List[str], List[int]]:
    """``(layer names, widths)``: a width model's ``width_layers()``, else every splittable layer's neurons."""
    if isinstance(model, WidthModel):
        return list(model.width_layers()), current_widths(model)
    widths = splittable_widths(model, example_input)
    return list(widths), list(widths.values())


def save_network(path: PathLike, model: nn.Module, model_name: str, example_input: torch.Tensor,
                 model_args: Dict[str, Any] = None, **meta: Any) -> str:
    """Write a trial's network atomically; return the file's SHA-256 (:func:`~nni_splitting.growth.checkpoint.save_checkpoint`
    for a width model; for the user's own model its factory, ``model_args``, per-layer widths and input shape)."""
    if isinstance(model, WidthModel):
        return save_checkpoint(path, model, model_name, **meta)
    layers, widths = network_widths(model, example_input)
    state = {"model": model_name, "widths": widths, "model_config": {}, "model_args": dict(model_args or {}),
             "layer_widths": dict(zip(layers, widths)), "input_shape": list(example_input.shape[1:]),
             "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **meta}
    atomic_save(path, lambda tmp: torch.save(state, tmp))
    return file_sha256(path)


def load_network(path: PathLike) -> Tuple[nn.Module, Dict[str, Any]]:
    """``(model, checkpoint dict)`` of :func:`save_network`'s file; :class:`CheckpointError` naming the file."""
    state = read_checkpoint(path)
    if "layer_widths" not in state:
        return load_checkpoint(path)
    try:
        seed = build_seed(state["model"], state.get("model_args") or {})
        model = resize_to(seed, torch.zeros(1, *state["input_shape"]), state["layer_widths"])
        model.load_state_dict(state["state_dict"])
    except (ValueError, RuntimeError, KeyError, TypeError) as error:
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit model {state['model']!r} with layer widths "
                              f"{state['layer_widths']}: {error}") from error
    return model.eval(), state
