"""Layer handlers: how each layer kind takes part in splitting, one registry keyed by module class.

A :class:`LayerHandler` tells, for one module class, everything the rest of the package asks of
a layer (Liu, Wu & Wang 2019, Algorithm 1):

* the graph walk: its :meth:`~LayerHandler.role` on a neuron group's path -- :data:`NEURONS` (mixes
  its input channels into neurons: a producer and a consumer), :data:`CHANNELWISE` (a per-channel
  affine map, duplicated with its channel: BatchNorm), :data:`DEPTHWISE` (a per-channel spatial
  filter that is part of the neuron), :data:`PASS` / :data:`POOL` (parameter-free, per channel);
* the splitting matrix: a neuron's parameters ``theta_j`` and the inputs ``x~_p`` it sees
  (``u_{j,p} = theta_j^T x~_p``, eq. 3), and for the fast method the products ``x~^T v`` and
  ``sum_p y_p x~_p`` (:mod:`nni_splitting.core.fast`);
* the surgery: splitting the producer (``theta_j +- eps v_j``), widening a consumer (input columns
  ``w / 2`` twice) and duplicating a channel of a follower.

A new layer kind is one handler, registered once with :func:`register_layer_handler`; subclasses
of a registered class use its handler unless they have their own. Modules with a handler are
leaves of :func:`~nni_splitting.graph.trace_model`'s trace, so the walk sees them as one node.
For example, a unit ``u = g * (W x + b)`` with a fixed gain ``g`` (``tests/test_layer_handlers.py``)::

    class ScaledLinearHandler(LayerHandler):
        kind, default_role = "scaled_linear", NEURONS

        def consumer_block(self, module, shape, block):          # it may consume a group's channels
            return block if block is not None else (1 if len(shape) == 2 else None)

        def neuron_parameters(self, module):                     # theta_j = (W_j, b_j)
            return torch.cat([module.weight.detach(), module.bias.detach()[:, None]], dim=1)

        def set_neuron_parameters(self, module, theta):
            replace_tensor(module, "weight", theta[:, :-1])
            replace_tensor(module, "bias", theta[:, -1])

        def neuron_inputs(self, module, x):                      # x~ = g [x, 1], P = 1
            return module.gain * torch.cat([x, torch.ones_like(x[:, :1])], dim=1).unsqueeze(-1)

        def widen_consumer(self, module, indices, block, old_channels):
            w = module.weight.detach().clone()
            w[:, indices] /= 2
            replace_tensor(module, "weight", torch.cat([w, w[:, indices]], dim=1))

    register_layer_handler(ScaledLinear, ScaledLinearHandler())   # or, on the class: splitting_handler = ...

``compute_splitting`` (exact and fast: the default :meth:`LayerHandler.neuron_products` /
:meth:`LayerHandler.neuron_gradient` work from :meth:`LayerHandler.neuron_inputs`) and
``apply_splits`` then handle it like a Linear.
"""
from __future__ import annotations

import functools
import logging
import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


__all__ = [
    "NEURONS", "CHANNELWISE", "DEPTHWISE", "PASS", "POOL",
    "LayerHandler", "LinearHandler", "Conv2dHandler", "BatchNormHandler", "ParameterFreeHandler",
    "replace_tensor", "conv_taps",
]

logger = logging.getLogger(__name__)

NEURONS = "neurons"
CHANNELWISE = "channelwise"
DEPTHWISE = "depthwise"
PASS = "pass"
POOL = "pool"


def replace_tensor(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Set ``module.<name>`` to a copy of ``value``, a Parameter again if it was one (same ``requires_grad``)."""
    old = getattr(module, name)
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(value.detach().clone(), requires_grad=old.requires_grad))
    else:
        setattr(module, name, value.detach().clone())


class LayerHandler:
    """One layer kind's part in splitting. Override what the kind's :meth:`role` needs.

    * ``NEURONS``: :meth:`neuron_parameters`, :meth:`set_neuron_parameters`, :meth:`neuron_inputs`
      (these three give the splitting matrix, the fast method's products and the producer's split),
      :meth:`consumer_block` and :meth:`widen_consumer` (when its inputs are another group's channels).
    * ``CHANNELWISE`` / ``DEPTHWISE``: :meth:`duplicate_channels`.
    * ``PASS`` / ``POOL``: nothing.

    Attributes
    ----------
    kind : str
        ``NeuronGroup.kind`` of the groups it produces (``"linear"``, ``"conv"``, ...).
    """

    kind = "layer"
    default_role: Optional[str] = None

    # -- the graph walk
    def role(self, module: nn.Module) -> Optional[str]:
        """How ``module`` treats the channels that pass through it (``None``: it couples them, stop)."""
        return self.default_role

    def exclusion(self, module: nn.Module) -> Optional[str]:
        """Why ``module`` (role ``NEURONS``) cannot be a producer, or ``None``."""
        return None

    def input_exclusion(self, module: nn.Module, shape: Sequence[int]) -> Optional[str]:
        """Why a producer with an input of ``shape`` is not supported, or ``None``."""
        return None

    def consumer_block(self, module: nn.Module, shape: Sequence[int], block: Optional[int]) -> Optional[int]:
        """Input features per channel when ``module`` consumes a group's channels, or ``None`` if it cannot.

        ``shape`` is the channel tensor's shape; ``block`` is set when it was flattened (``H * W``).
        """
        return None

    # -- the neurons (role NEURONS)
    def num_neurons(self, module: nn.Module) -> int:
        return int(self.neuron_parameters(module).shape[0])

    def parameters_per_neuron(self, module: nn.Module) -> int:
        """``d``, the length of ``theta_j``."""
        return int(self.neuron_parameters(module).shape[1])

    def neuron_parameters(self, module: nn.Module) -> torch.Tensor:
        """``theta``: ``[O, d]``, one row per neuron (the order of the splitting gradients)."""
        raise NotImplementedError(f"{type(self).__name__} does not give the neurons of {type(module).__name__}")

    def set_neuron_parameters(self, module: nn.Module, theta: torch.Tensor) -> None:
        """Replace the neurons by ``theta`` ``[O', d]`` (more rows after a split) and update the sizes."""
        raise NotImplementedError(f"{type(self).__name__} cannot set the neurons of {type(module).__name__}")

    def neuron_inputs(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``x~_p`` with ``u_{j,p} = theta_j^T x~_p``: ``[N, d, P]`` for the module's input ``x``."""
        raise NotImplementedError(f"{type(self).__name__} does not give the inputs of {type(module).__name__}")

    def neuron_inputs_at(self, module: nn.Module, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """:meth:`neuron_inputs` at the output positions ``positions`` only (flat indices, any shape
        ``S``): ``[N, d, *S]``. This default unfolds every position and indexes; override it to gather."""
        return self.neuron_inputs(module, x)[:, :, positions]

    def neuron_products(self, module: nn.Module, x: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
        """``t_{n,m,p} = vectors_m^T x~_{n,p}``: ``[N, M, P]`` (or the output grid, ``[N, M, *grid]``)."""
        return torch.einsum("ndp,md->nmp", self.neuron_inputs(module, x), vectors)

    def neuron_gradient(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``sum_{n,p} y_{n,m,p} x~_{n,p}``: ``[M, d]`` (the adjoint of :meth:`neuron_products`)."""
        return torch.einsum("nmp,ndp->md", y.reshape(y.shape[0], y.shape[1], -1), self.neuron_inputs(module, x))

    def split_producer(self, module: nn.Module, indices: List[int], directions: torch.Tensor, epsilon: float) -> None:
        """theta_j <- theta_j + eps v_j (kept at j); theta_j - eps v_j appended (Algorithm 1, step 4)."""
        theta = self.neuron_parameters(module).detach()
        if directions.shape[1] != theta.shape[1]:
            raise ValueError(
                f"splitting directions have length {directions.shape[1]} but the neurons of {module} have "
                f"{theta.shape[1]} parameters: the splits were computed on a different architecture"
            )
        step = epsilon * directions.to(theta.dtype).to(theta.device)
        index = torch.tensor(indices, device=theta.device)
        plus, minus = theta[index] + step, theta[index] - step
        theta = theta.clone()
        theta[index] = plus
        self.set_neuron_parameters(module, torch.cat([theta, minus], dim=0))

    def widen_consumer(self, module: nn.Module, indices: List[int], block: int, old_channels: int) -> None:
        """Halve the input columns of channels ``indices`` and append the halved copies."""
        raise NotImplementedError(f"{type(self).__name__} cannot widen the inputs of {type(module).__name__}")

    # -- followers (roles CHANNELWISE, DEPTHWISE)
    def channel_scale(self, module: nn.Module) -> Optional[torch.Tensor]:
        """The learnable per-channel scale of a ``CHANNELWISE`` module (a BatchNorm's ``gamma``), or ``None``:
        what network slimming ranks and ``bn_scale`` symmetry breaking perturbs."""
        return None

    def fresh_channel_values(self, module: nn.Module) -> Dict[str, float]:
        """``{tensor name: value}`` that make new channels of a ``CHANNELWISE`` module the identity (a new
        neuron behind a BatchNorm); empty when nothing needs setting."""
        return {}

    def duplicate_channels(self, module: nn.Module, indices: List[int]) -> None:
        """Copy channels ``indices`` to the end of the module's channel dimension."""
        raise NotImplementedError(f"{type(self).__name__} cannot duplicate channels of {type(module).__name__}")


def _weight_and_bias(module: nn.Module) -> torch.Tensor:
    weight = module.weight.detach()
    flat = weight.reshape(weight.shape[0], -1)
    return torch.cat([flat, module.bias.detach()[:, None]], dim=1) if module.bias is not None else flat


def _set_weight_and_bias(module: nn.Module, theta: torch.Tensor) -> None:
    shape = module.weight.shape
    width = math.prod(shape[1:])
    replace_tensor(module, "weight", theta[:, :width].reshape(theta.shape[0], *shape[1:]))
    if module.bias is not None:
        replace_tensor(module, "bias", theta[:, width])


def _widen_columns(module: nn.Module, indices: List[int], block: int, old_channels: int) -> torch.Tensor:
    """``weight`` with columns of ``indices`` (blocks of ``block``) halved and the halves appended."""
    weight = module.weight.detach()
    expected = old_channels * block
    if weight.shape[1] != expected:
        raise ValueError(f"{module} takes {weight.shape[1]} input features, expected {expected} "
                         f"({old_channels} channels x {block}): the model does not match its splitting results")
    columns = torch.cat([torch.arange(j * block, (j + 1) * block) for j in indices]).to(weight.device)
    weight = weight.clone()
    weight[:, columns] = weight[:, columns] / 2  # w -> w/2 twice keeps sum_j w_j a_j
    weight = torch.cat([weight, weight[:, columns]], dim=1)
    replace_tensor(module, "weight", weight)
    return weight


class _RowNeuronsHandler(LayerHandler):
    """Neuron ``j`` is ``weight[j]`` flattened, then ``bias[j]`` (Linear and Conv2d)."""

    def num_neurons(self, module):
        return int(module.weight.shape[0])

    def parameters_per_neuron(self, module):
        return int(module.weight[0].numel()) + int(module.bias is not None)

    def neuron_parameters(self, module):
        return _weight_and_bias(module)


class LinearHandler(_RowNeuronsHandler):
    """``nn.Linear``: neuron ``j`` is row ``j`` of ``weight`` (then its bias); ``x~ = [x, 1]``, ``P = 1``."""

    kind = "linear"
    default_role = NEURONS

    def input_exclusion(self, module, shape):
        if len(shape) != 2:
            return f"its input has shape {list(shape)}; only [batch, features] inputs are supported"
        return None

    def consumer_block(self, module, shape, block):
        return block if block is not None else (1 if len(shape) == 2 else None)

    def set_neuron_parameters(self, module, theta):
        _set_weight_and_bias(module, theta)
        module.out_features = theta.shape[0]

    def neuron_inputs(self, module, x):
        patches = x.unsqueeze(-1)
        if module.bias is not None:
            patches = torch.cat([patches, torch.ones_like(patches[:, :1])], dim=1)
        return patches

    def neuron_products(self, module, x, vectors):
        dw = module.weight[0].numel()
        return F.linear(x, vectors[:, :dw], vectors[:, dw] if module.bias is not None else None)

    def neuron_gradient(self, module, x, y):
        gradient = y.t() @ x  # sum_n y_{n,m} x_n
        return torch.cat([gradient, y.sum(0)[:, None]], dim=1) if module.bias is not None else gradient

    def widen_consumer(self, module, indices, block, old_channels):
        module.in_features = _widen_columns(module, indices, block, old_channels).shape[1]


class Conv2dHandler(_RowNeuronsHandler):
    """``nn.Conv2d``: ``groups=1`` mixes channels (``NEURONS``); depthwise is ``DEPTHWISE``; other groups couple.

    Neuron ``j`` is ``weight[j]`` flattened (then its bias); ``x~_p`` are the unfolded input patches.
    """

    kind = "conv"

    @staticmethod
    def is_depthwise(module: nn.Conv2d) -> bool:
        return module.groups == module.in_channels == module.out_channels and module.groups > 1

    def role(self, module):
        if module.groups == 1:
            return NEURONS
        return DEPTHWISE if self.is_depthwise(module) else None

    def exclusion(self, module):
        if module.groups != 1:
            return (f"it is a grouped/depthwise conv (groups={module.groups}): its channels are split together "
                    "with the layer that feeds it")
        return None

    def consumer_block(self, module, shape, block):
        return 1 if module.groups == 1 and block is None else None

    @staticmethod
    def check(module: nn.Conv2d) -> None:
        """``ValueError`` unless the conv has explicit zero padding (what unfold and conv2d_weight compute)."""
        if module.padding_mode != "zeros":
            raise ValueError(f"padding_mode={module.padding_mode!r} of {module} is not supported (only 'zeros')")
        if isinstance(module.padding, str):
            raise ValueError(f"padding={module.padding!r} of {module} is not supported: give explicit padding")

    def set_neuron_parameters(self, module, theta):
        _set_weight_and_bias(module, theta)
        module.out_channels = theta.shape[0]

    def neuron_inputs(self, module, x):
        self.check(module)
        patches = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
        if module.bias is not None:
            patches = torch.cat([patches, torch.ones_like(patches[:, :1])], dim=1)
        return patches

    def neuron_inputs_at(self, module, x, positions):
        """The patches at ``positions`` gathered from ``x`` (no unfold of the whole grid, no padded copy):
        input pixel ``(q_h s_h - p_h + k_h r_h, q_w s_w - p_w + k_w r_w)`` for output position ``q`` and tap
        ``k``, zero where that falls in the padding."""
        self.check(module)
        n, channels, height, width = x.shape
        (kh, kw), (sh, sw), (ph, pw) = module.kernel_size, module.stride, module.padding
        flat = positions.reshape(-1)
        if (kh, kw, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0):  # a pointwise conv: x~_p is the input at p
            patches = x.reshape(n * channels, height * width).index_select(1, flat).reshape(n, channels, -1)
        else:
            taps, inside = conv_taps((height, width), module.kernel_size, module.stride, module.padding,
                                     module.dilation, str(x.device))
            taps, inside = taps[flat], inside[flat]  # [Q, kh kw]
            gathered = x.reshape(n * channels, height * width).index_select(1, taps.reshape(-1))  # faster than x[..., taps]
            gathered = gathered.reshape(n, channels, flat.numel(), kh * kw)
            if not bool(inside.all()):
                gathered = gathered * inside.reshape(1, 1, flat.numel(), kh * kw).to(x.dtype)
            patches = gathered.permute(0, 1, 3, 2).reshape(n, channels * kh * kw, flat.numel())  # unfold's row order
        if module.bias is not None:
            patches = torch.cat([patches, torch.ones_like(patches[:, :1])], dim=1)
        return patches.reshape(n, patches.shape[1], *positions.shape)

    def neuron_products(self, module, x, vectors):
        self.check(module)
        dw = module.weight[0].numel()
        v_weight = vectors[:, :dw].reshape(vectors.shape[0], *module.weight.shape[1:])
        v_bias = vectors[:, dw] if module.bias is not None else None
        return F.conv2d(x, v_weight, v_bias, module.stride, module.padding, module.dilation)

    def neuron_gradient(self, module, x, y):
        m = y.shape[1]
        shape = (m, *module.weight.shape[1:])
        gradient = torch.nn.grad.conv2d_weight(x, shape, y, module.stride, module.padding, module.dilation).reshape(m, -1)
        return torch.cat([gradient, y.sum(dim=(0, 2, 3))[:, None]], dim=1) if module.bias is not None else gradient

    def widen_consumer(self, module, indices, block, old_channels):
        module.in_channels = _widen_columns(module, indices, block, old_channels).shape[1]

    def duplicate_channels(self, module, indices):
        if not self.is_depthwise(module):
            raise ValueError(f"cannot duplicate channels of {module}: only a depthwise conv follows its channels")
        _duplicate(module, indices, ["weight", "bias"])
        module.in_channels = module.out_channels = module.groups = module.weight.shape[0]


@functools.lru_cache(maxsize=64)
def conv_taps(input_size, kernel_size, stride, padding, dilation, device: str = "cpu"):
    """For every output position ``q`` of a conv with this geometry on an ``input_size`` grid, the flat
    input position read by each tap ``k``: ``(taps, inside)``, both ``[Q, kh kw]`` (taps in ``weight``'s
    order); ``taps`` are clamped into the grid, ``inside`` is false where the tap falls in the zero
    padding. Computed once per geometry (cached), then indexed by the positions wanted."""
    (h, w), (kh, kw), (sh, sw), (ph, pw), (dh, dw) = input_size, kernel_size, stride, padding, dilation
    out_h = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    positions = torch.arange(out_h * out_w, device=device)
    rows = (positions // out_w * sh - ph)[:, None, None] + (torch.arange(kh, device=device) * dh)[None, :, None]
    cols = (positions % out_w * sw - pw)[:, None, None] + (torch.arange(kw, device=device) * dw)[None, None, :]
    inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    taps = rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)
    return taps.reshape(out_h * out_w, kh * kw), inside.reshape(out_h * out_w, kh * kw)


def _duplicate(module: nn.Module, indices: List[int], names: Sequence[str]) -> None:
    index = torch.tensor(indices)
    for name in names:
        tensor = getattr(module, name, None)
        if isinstance(tensor, torch.Tensor):
            replace_tensor(module, name, torch.cat([tensor.detach(), tensor.detach()[index.to(tensor.device)]], dim=0))


class BatchNormHandler(LayerHandler):
    """BatchNorm: per-channel affine (folded into ``c`` before an activation); split channels are copied."""

    kind = "batchnorm"
    default_role = CHANNELWISE

    def duplicate_channels(self, module, indices):
        _duplicate(module, indices, ["weight", "bias", "running_mean", "running_var"])
        module.num_features += len(indices)

    def channel_scale(self, module):
        return module.weight

    def fresh_channel_values(self, module):
        values = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}
        return {name: value for name, value in values.items() if getattr(module, name, None) is not None}


class ParameterFreeHandler(LayerHandler):
    """Dropout, Identity (``PASS``) and pooling (``POOL``): nothing to split, the walk goes through."""

    def __init__(self, role: str):
        if role not in (PASS, POOL):
            raise ValueError(f"role={role!r} is not {PASS!r} or {POOL!r}")
        self.default_role = role
        self.kind = role
