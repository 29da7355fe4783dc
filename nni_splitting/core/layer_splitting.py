"""What :func:`~nni_splitting.core.splitting.compute_splitting` returns for one layer (:class:`LayerSplitting`:
splitting indexes ``lambda_min``, splitting gradients ``v_min``, the neuron group) and its files
(:func:`save_splits`, :func:`load_splits`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Union

import torch

from nni_splitting.common.storage import CheckpointError
from nni_splitting.graph import NeuronGroup

__all__ = ["LayerSplitting", "save_splits", "load_splits"]


@dataclass
class LayerSplitting:
    """Splitting indexes and gradients of one layer's neurons.

    Attributes
    ----------
    layer : str
        ``named_modules()`` name of the Linear/Conv2d whose outputs are the neurons.
    eigenvalues : Tensor ``[n_neurons]``
        Splitting indexes ``lambda_min(S_j)``, in the loss's units: splitting neuron ``j`` along
        ``directions[j]`` with step ``eps`` changes the loss by ``eps**2 * eigenvalues[j] / 2``.
    directions : Tensor ``[n_neurons, d]``
        Splitting gradients ``v_min(S_j)``, unit norm; ``d`` = the neuron's weights flattened, then its bias.
    group : NeuronGroup
        The path of the layer's channels (used by :func:`apply_splits` to widen what follows).
    activation : str
        The activation (and surrogate) the splitting matrix was computed with.
    matrices : Tensor ``[n_neurons, d, d]`` or None
        The splitting matrices themselves, kept only with ``compute_splitting(..., keep_matrices=True)``
        (and only for layers computed with the exact method).
    method : str
        ``"exact"`` or ``"fast"``: how this layer was computed.
    convergence : dict or None
        For ``"fast"`` layers, the eigensolver's report (iterations, matrix-vector products,
        residuals, converged count; see :func:`nni_splitting.core.fast.solve_min_eigenpairs`); the
        report of the ``lambda_max`` solve is under ``"largest"``.
    max_eigenvalues : Tensor ``[n_neurons]`` or None
        ``lambda_max(S_j)``, the other end of each spectrum (for signed splitting); ``None`` in
        results saved before it existed, or with ``fast_options={"largest": False}``.
    max_directions : Tensor ``[n_neurons, d]`` or None
        ``v_max(S_j)``, unit norm.
    """

    layer: str
    eigenvalues: torch.Tensor
    directions: torch.Tensor
    group: NeuronGroup
    activation: str = ""
    matrices: Optional[torch.Tensor] = None
    method: str = "exact"
    convergence: Optional[dict] = None
    max_eigenvalues: Optional[torch.Tensor] = None
    max_directions: Optional[torch.Tensor] = None

    @property
    def num_neurons(self) -> int:
        return int(self.eigenvalues.numel())

    def state_dict(self) -> dict:
        state = {"layer": self.layer, "eigenvalues": self.eigenvalues.detach().cpu(),
                 "directions": self.directions.detach().cpu(), "group": self.group.to_dict(),
                 "activation": self.activation}
        if self.max_eigenvalues is not None and self.max_directions is not None:
            state["max_eigenvalues"] = self.max_eigenvalues.detach().cpu()
            state["max_directions"] = self.max_directions.detach().cpu()
        return state

    @classmethod
    def from_state_dict(cls, state: dict) -> "LayerSplitting":
        """Read :meth:`state_dict`; files written before ``max_eigenvalues`` existed load with ``None`` there."""
        return cls(state["layer"], state["eigenvalues"], state["directions"],
                   NeuronGroup.from_dict(state["group"]), state.get("activation", ""),
                   max_eigenvalues=state.get("max_eigenvalues"), max_directions=state.get("max_directions"))


def save_splits(splits: Dict[str, LayerSplitting], path: Union[str, Path]) -> None:
    """Save splitting results with ``torch.save`` (plain tensors and dicts, keyed by layer name)."""
    torch.save({name: s.state_dict() for name, s in splits.items()}, str(path))


def load_splits(path: Union[str, Path]) -> Dict[str, LayerSplitting]:
    """Load what :func:`save_splits` wrote; a missing, truncated or foreign file is a
    :class:`~nni_splitting.common.storage.CheckpointError` (a ``ValueError``) naming the file."""
    try:
        states = torch.load(str(path), map_location="cpu", weights_only=True)
        return {name: LayerSplitting.from_state_dict(state) for name, state in states.items()}
    except Exception as error:  # no file, truncated zip, pickle garbage, a foreign dict: all the same to the user
        raise CheckpointError(f"splits file {str(path)!r} is unreadable (missing, truncated or not a splits file): "
                              f"{type(error).__name__}: {error}") from error
