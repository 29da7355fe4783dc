"""The neuron group: the path of one layer's output channels through the network (JSON-able)."""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import List, Optional

__all__ = ["NeuronGroup", "Consumer", "Excluded"]

logger = logging.getLogger(__name__)


@dataclass
class Consumer:
    """A layer that takes the group's channels as input features.

    ``block`` is the number of input features per channel: 1 for a Conv2d or a Linear fed directly,
    ``H * W`` for a Linear fed through a flatten of an ``[N, C, H, W]`` tensor.
    """

    module: str
    block: int = 1


@dataclass
class NeuronGroup:
    """The path of one layer's output channels through the network (JSON-able: module and node names).

    Attributes
    ----------
    layer : str
        The producer: the ``named_modules()`` name of the Linear/Conv2d whose outputs are the neurons.
    pre_bn : str or None
        BatchNorm between the producer and the activation (folded: ``c = gamma / sqrt(var + eps)``).
    activation_node : str
        fx node of the activation ``sigma`` (the neuron's nonlinearity).
    depthwise : str or None
        A depthwise conv the activated channels go through (its channel is copied on a split).
    depthwise_bn, depthwise_activation_node : str or None
        BatchNorm and activation after the depthwise conv (part of the neuron when present).
    followers : list of str
        Modules whose channel dimension follows the group and is duplicated on a split
        (BatchNorms after the activation, the depthwise conv and its BatchNorm).
    consumers : list of Consumer
        Layers whose input features are the group's channels.
    """

    layer: str
    kind: str
    input_node: str
    pre_bn: Optional[str]
    preactivation_node: str
    activation_node: str
    depthwise: Optional[str] = None
    depthwise_bn: Optional[str] = None
    depthwise_preactivation_node: Optional[str] = None
    depthwise_activation_node: Optional[str] = None
    followers: List[str] = field(default_factory=list)
    consumers: List[Consumer] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "NeuronGroup":
        data = dict(data)
        data["consumers"] = [Consumer(**c) for c in data.get("consumers", [])]
        return cls(**data)



class Excluded(Exception):
    """Raised while walking a group's path: the layer is not a candidate, for the reason given."""
