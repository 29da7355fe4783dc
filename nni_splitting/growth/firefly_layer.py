"""The Firefly candidates of one layer (:class:`FireflyLayer`) and their files (:func:`save_firefly`,
:func:`load_firefly`): what :func:`nni_splitting.growth.firefly.compute_firefly` returns and a trial hands to
its children."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional

import torch

from nni_splitting.common.defaults import EPSILON
from nni_splitting.graph import NeuronGroup

__all__ = ["FireflyLayer", "save_firefly", "load_firefly"]


@dataclass
class FireflyLayer:
    """The Firefly candidates of one layer: ``n`` splits (index ``j``) then ``K`` new neurons (index ``n + k``).

    Attributes
    ----------
    layer : str
        The producer's ``named_modules()`` name.
    group : NeuronGroup
        Its channels' path (what the surgery widens).
    split_scores, new_scores : Tensor ``[n]``, ``[K]``
        Predicted loss change of applying each candidate alone (negative: the loss falls).
    split_directions : Tensor ``[n, d]``
        Unit ``delta_j / epsilon`` (weights flattened, then bias: the layout of ``LayerSplitting``).
    new_inputs : Tensor ``[K, d]``
        Input weights ``a_k`` of the new neurons, same layout, in the layer's current input space.
    new_outputs : dict
        ``{consumer: Tensor [K, out, block]}``: outgoing weights ``h_k`` (a Conv2d consumer's block is its kernel).
    new_filters : dict
        ``{depthwise follower: Tensor [K, ...]}``: the new channels' depthwise filters.
    epsilon, new_epsilon : float
        ``||delta_j||`` and ``||h_k||``.
    example : Tensor
        One input (for tracing when new neurons are applied).
    """

    layer: str
    group: NeuronGroup
    split_scores: torch.Tensor
    new_scores: torch.Tensor
    split_directions: torch.Tensor
    new_inputs: torch.Tensor
    new_outputs: Dict[str, torch.Tensor] = field(default_factory=dict)
    new_filters: Dict[str, torch.Tensor] = field(default_factory=dict)
    epsilon: float = EPSILON
    new_epsilon: float = EPSILON
    example: Optional[torch.Tensor] = None

    @property
    def num_neurons(self) -> int:
        """The layer's current width ``n`` (what a grow ratio is a fraction of)."""
        return int(self.split_directions.shape[0])

    @property
    def eigenvalues(self) -> torch.Tensor:
        """All candidates' scores, splits then new neurons: what the selection rules rank."""
        return torch.cat([self.split_scores, self.new_scores])

    _TENSORS = ("split_scores", "new_scores", "split_directions", "new_inputs")

    def state_dict(self) -> dict:
        """Plain tensors and dicts (CPU), for ``torch.save`` and :meth:`from_state_dict`."""
        state = {name: getattr(self, name).detach().cpu() for name in self._TENSORS}
        state.update(layer=self.layer, group=self.group.to_dict(), epsilon=self.epsilon, new_epsilon=self.new_epsilon,
                     new_outputs={k: v.detach().cpu() for k, v in self.new_outputs.items()},
                     new_filters={k: v.detach().cpu() for k, v in self.new_filters.items()},
                     example=None if self.example is None else self.example.detach().cpu())
        return state

    @classmethod
    def from_state_dict(cls, state: dict) -> "FireflyLayer":
        return cls(state["layer"], NeuronGroup.from_dict(state["group"]), *(state[n] for n in cls._TENSORS),
                   dict(state["new_outputs"]), dict(state["new_filters"]), float(state["epsilon"]),
                   float(state["new_epsilon"]), state["example"])


def save_firefly(candidates: Mapping[str, FireflyLayer], path) -> None:
    """Save :func:`compute_firefly` results with ``torch.save`` (keyed by layer name, like ``save_splits``)."""
    torch.save({name: entry.state_dict() for name, entry in candidates.items()}, str(path))


def load_firefly(path) -> Dict[str, FireflyLayer]:
    """Load what :func:`save_firefly` wrote."""
    states = torch.load(str(path), map_location="cpu", weights_only=True)
    return {name: FireflyLayer.from_state_dict(state) for name, state in states.items()}
