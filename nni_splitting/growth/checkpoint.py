"""One checkpoint format for every trial and arm: written atomically, read with a clear error.

A checkpoint is a ``torch.save`` dict ``{"model", "widths", "model_config", "state_dict", ...}``
(plain tensors, loadable with ``weights_only=True``) that :func:`load_checkpoint` rebuilds with
:func:`nni_splitting.models.build_model`.  :func:`save_checkpoint` returns the file's SHA-256, which
the trial stores in ``splitting.json`` so that a resumed tuner adopts only work that is complete.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import torch
from torch import nn

from nni_splitting.models import build_model, current_widths
from nni_splitting.common.storage import CheckpointError, atomic_save  # CheckpointError: re-exported

__all__ = ["save_checkpoint", "load_checkpoint", "read_checkpoint", "file_sha256", "CheckpointError"]

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]
REQUIRED_KEYS = ("model", "widths", "model_config", "state_dict")


def file_sha256(path: PathLike) -> str:
    """Hex SHA-256 of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(path: PathLike, model: nn.Module, model_name: str, **meta: Any) -> str:
    """Write ``model`` (a :class:`~nni_splitting.models.WidthModel`) atomically; return the SHA-256."""
    state = {"model": model_name, "widths": current_widths(model), "model_config": dict(model.config),
             "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **meta}
    atomic_save(path, lambda tmp: torch.save(state, tmp))
    return file_sha256(path)


def read_checkpoint(path: PathLike) -> Dict[str, Any]:
    """The checkpoint dict of ``path``; :class:`CheckpointError` naming the file when it is unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, pickle garbage, foreign object: all the same to the user
        raise CheckpointError(f"checkpoint {str(path)!r} is unreadable (truncated or not a checkpoint): "
                              f"{type(error).__name__}: {error}") from error
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"checkpoint {str(path)!r} is not an nni-splitting checkpoint: needs keys "
                              f"{list(REQUIRED_KEYS)}, found {found}")
    return state


def load_checkpoint(path: PathLike) -> Tuple[nn.Module, Dict[str, Any]]:
    """``(model, checkpoint dict)``: the network rebuilt from its name, widths and configuration."""
    state = read_checkpoint(path)
    try:
        model = build_model(state["model"], widths=state["widths"], **state["model_config"])
        model.load_state_dict(state["state_dict"])
    except (ValueError, RuntimeError, KeyError, TypeError) as error:
        raise CheckpointError(f"checkpoint {str(path)!r} does not fit model {state['model']!r} with widths "
                              f"{state['widths']}: {error}") from error
    return model.eval(), state
