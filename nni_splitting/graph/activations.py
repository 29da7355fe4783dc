"""Activation functions and the derivatives the splitting matrix needs.

A neuron computes ``a = sigma(u)`` with ``u = c * theta^T x + shift`` (``c`` is the folded
BatchNorm scale). Its splitting matrix (Liu et al. 2019, eq. 3) needs ``sigma''(u)``; a neuron that
feeds a depthwise convolution also needs ``sigma'(u)``. This module keeps each activation's
``sigma'`` and ``sigma''`` next to each other, in one registry (:func:`register_activation`): each
:class:`Activation` entry names the module classes and the traced function names that compute it.

For the ReLU family ``sigma''`` is zero almost everywhere, which would make every splitting index
zero. Following the official implementation we use a smooth surrogate there: the second derivative
of ``softplus_beta(u) = log(1 + exp(beta * u)) / beta``, which tends to ReLU as ``beta -> inf``:
``softplus_beta''(u) = beta * s * (1 - s)`` with ``s = sigmoid(beta * u)`` (``beta = 3`` by default).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "Activation", "ActivationSpec", "activation_from_module", "activation_from_function", "register_activation",
    "DEFAULT_SURROGATE_BETA",
]

logger = logging.getLogger(__name__)

DEFAULT_SURROGATE_BETA = 3.0
Derivative = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ActivationSpec:
    """An elementwise activation with its first and second derivatives.

    Attributes
    ----------
    name : str
        Human-readable name (``"tanh"``, ``"relu (softplus-3 surrogate)"``, ...).
    first : callable
        ``sigma'(u)`` (exact).
    second : callable
        ``sigma''(u)``: exact for smooth activations, the softplus surrogate for the ReLU family.
    surrogate : bool
        Whether ``second`` is a surrogate.
    """

    name: str
    first: Derivative
    second: Derivative
    surrogate: bool = False


def _softplus_second(u: torch.Tensor, beta: float) -> torch.Tensor:
    s = torch.sigmoid(beta * u)
    return beta * s * (1 - s)  # d^2/du^2 log(1 + e^{beta u}) / beta


def _relu_family(name: str, slope: float, upper: Optional[float], beta: float) -> ActivationSpec:
    """ReLU / LeakyReLU / ReLU6 / Hardtanh-like: piecewise linear, with a softplus surrogate for sigma''."""

    def first(u):
        d = torch.where(u > 0, torch.ones_like(u), torch.full_like(u, slope))
        if upper is not None:
            d = torch.where(u > upper, torch.zeros_like(u), d)
        return d

    def second(u):
        # A kink of height (1 - slope) at 0 (and of -1 at `upper`), each smoothed by softplus_beta''.
        out = (1 - slope) * _softplus_second(u, beta)
        if upper is not None:
            out = out - _softplus_second(u - upper, beta)
        return out

    return ActivationSpec(f"{name} (softplus-{beta:g} surrogate for sigma'')", first, second, surrogate=True)


def _tanh() -> ActivationSpec:
    def first(u):
        t = torch.tanh(u)
        return 1 - t * t

    def second(u):
        t = torch.tanh(u)
        return -2 * t * (1 - t * t)  # tanh'' = -2 tanh (1 - tanh^2)

    return ActivationSpec("tanh", first, second)


def _sigmoid() -> ActivationSpec:
    def first(u):
        s = torch.sigmoid(u)
        return s * (1 - s)

    def second(u):
        s = torch.sigmoid(u)
        return s * (1 - s) * (1 - 2 * s)  # sigmoid'' = s (1 - s) (1 - 2 s)

    return ActivationSpec("sigmoid", first, second)


def _softplus(beta: float, threshold: float) -> ActivationSpec:
    # torch's Softplus is linear above `threshold`; the splitting matrix uses the smooth function everywhere.
    def first(u):
        return torch.sigmoid(beta * u)

    return ActivationSpec(f"softplus(beta={beta:g})", first, lambda u: _softplus_second(u, beta))


def _silu() -> ActivationSpec:
    def first(u):
        s = torch.sigmoid(u)
        return s + u * s * (1 - s)

    def second(u):
        s = torch.sigmoid(u)
        return s * (1 - s) * (2 + u * (1 - 2 * s))  # d^2/du^2 [u sigmoid(u)]

    return ActivationSpec("silu", first, second)


def _gelu(approximate: str) -> ActivationSpec:
    if approximate != "none":
        return _autograd_spec(f"gelu({approximate})", lambda u: F.gelu(u, approximate=approximate))

    def pdf(u):
        return torch.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)

    def first(u):
        return 0.5 * (1 + torch.erf(u / math.sqrt(2))) + u * pdf(u)

    def second(u):
        return pdf(u) * (2 - u * u)  # d^2/du^2 [u Phi(u)] = phi(u) (2 - u^2)

    return ActivationSpec("gelu", first, second)


def _autograd_spec(name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> ActivationSpec:
    """Derivatives of any smooth elementwise function by double autograd."""

    def first(u):
        with torch.enable_grad():
            v = u.detach().requires_grad_(True)
            (d1,) = torch.autograd.grad(fn(v).sum(), v)
        return d1

    def second(u):
        with torch.enable_grad():
            v = u.detach().requires_grad_(True)
            (d1,) = torch.autograd.grad(fn(v).sum(), v, create_graph=True)
            (d2,) = torch.autograd.grad(d1.sum(), v)
        return d2

    return ActivationSpec(name, first, second)


@dataclass(frozen=True)
class Activation:
    """One registry entry: an activation kind, how to recognize it and how to build its :class:`ActivationSpec`.

    Attributes
    ----------
    name : str
        Registry key (``"relu"``, ``"tanh"``, ...).
    build : callable
        ``build(surrogate_beta, **params) -> ActivationSpec``.
    modules : tuple of type
        Module classes computing it (subclasses match too).
    functions : tuple of str
        Names of the functions / tensor methods computing it as traced by torch.fx (``F.relu``,
        ``torch.relu``, ``x.relu()``, in-place ``relu_`` all read ``"relu"``).
    module_params : callable
        ``module -> dict`` of ``build``'s keyword parameters (e.g. LeakyReLU's slope).
    call_params : callable
        ``(args, kwargs) -> dict`` of ``build``'s keyword parameters from a traced call.
    """

    name: str
    build: Callable[..., ActivationSpec]
    modules: Tuple[type, ...] = ()
    functions: Tuple[str, ...] = ()
    module_params: Callable[[nn.Module], dict] = lambda module: {}
    call_params: Callable[[tuple, dict], dict] = lambda args, kwargs: {}


_BY_MODULE: Dict[type, Activation] = {}
_BY_FUNCTION: Dict[str, Activation] = {}


def register_activation(activation: Activation) -> Activation:
    """Add (or replace) an activation kind: its module classes and function names then resolve to it."""
    if not isinstance(activation, Activation):
        raise ValueError(f"register_activation takes an Activation, got {activation!r}")
    for cls in activation.modules:
        _BY_MODULE[cls] = activation
    for name in activation.functions:
        _BY_FUNCTION[name] = activation
    return activation


def _argument(index: int, key: str, default):
    """``call_params`` reading one parameter, positional at ``index`` or keyword ``key``."""
    return lambda args, kwargs: {key: kwargs.get(key, args[index] if len(args) > index else default)}


for _entry in (
    Activation("relu", lambda beta: _relu_family("relu", 0.0, None, beta), (nn.ReLU,), ("relu",)),
    Activation("relu6", lambda beta: _relu_family("relu6", 0.0, 6.0, beta), (nn.ReLU6,), ("relu6",)),
    Activation("leaky_relu",
               lambda beta, negative_slope=0.01: _relu_family("leaky_relu", float(negative_slope), None, beta),
               (nn.LeakyReLU,), ("leaky_relu",), lambda m: {"negative_slope": m.negative_slope},
               _argument(1, "negative_slope", 0.01)),
    Activation("tanh", lambda beta: _tanh(), (nn.Tanh,), ("tanh",)),
    Activation("sigmoid", lambda beta: _sigmoid(), (nn.Sigmoid,), ("sigmoid",)),
    Activation("softplus",
               lambda beta, softplus_beta=1.0, threshold=20.0: _softplus(float(softplus_beta), float(threshold)),
               (nn.Softplus,), ("softplus",), lambda m: {"softplus_beta": m.beta, "threshold": m.threshold},
               lambda args, kwargs: {"softplus_beta": kwargs.get("beta", args[1] if len(args) > 1 else 1.0)}),
    Activation("silu", lambda beta: _silu(), (nn.SiLU,), ("silu",)),
    Activation("gelu", lambda beta, approximate="none": _gelu(approximate), (nn.GELU,), ("gelu",),
               lambda m: {"approximate": m.approximate},
               lambda args, kwargs: {"approximate": kwargs.get("approximate", "none")}),
    # Smooth activations without closed forms here: derivatives by double autograd through the module itself.
    Activation("autograd", lambda beta, fn, name: _autograd_spec(name, fn),
               (nn.ELU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.CELU, nn.SELU),
               module_params=lambda m: {"fn": m, "name": type(m).__name__.lower()}),
):
    register_activation(_entry)


def activation_from_module(module: nn.Module, surrogate_beta: float = DEFAULT_SURROGATE_BETA) -> Optional[ActivationSpec]:
    """The :class:`ActivationSpec` of an activation module, or ``None`` if ``module`` is not one."""
    for cls in type(module).__mro__:  # the most specific registered class wins
        entry = _BY_MODULE.get(cls)
        if entry is not None:
            return entry.build(surrogate_beta, **entry.module_params(module))
    return None


def activation_from_function(target, args: tuple, kwargs: dict,
                             surrogate_beta: float = DEFAULT_SURROGATE_BETA) -> Optional[ActivationSpec]:
    """The :class:`ActivationSpec` of a functional call traced by torch.fx (``F.relu``, ``x.tanh()``...)."""
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    entry = _BY_FUNCTION.get(name.rstrip("_"))
    if entry is None:
        return None
    return entry.build(surrogate_beta, **entry.call_params(tuple(args), dict(kwargs)))
