"""Activation functions and the derivatives the splitting matrix needs.

A neuron computes ``a = sigma(u)`` with ``u = c * theta^T x + shift`` (``c`` is the folded
BatchNorm scale). Its splitting matrix (Liu et al. 2019, eq. 3) needs ``sigma''(u)``; a neuron that
feeds a depthwise convolution also needs ``sigma'(u)``. This module keeps each activation's
``sigma'`` and ``sigma''`` next to each other.

For the ReLU family ``sigma''`` is zero almost everywhere, which would make every splitting index
zero. Following the official implementation we use a smooth surrogate there: the second derivative
of ``softplus_beta(u) = log(1 + exp(beta * u)) / beta``, which tends to ReLU as ``beta -> inf``:
``softplus_beta''(u) = beta * s * (1 - s)`` with ``s = sigmoid(beta * u)`` (``beta = 3`` by default).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ActivationSpec", "activation_from_module", "activation_from_function", "DEFAULT_SURROGATE_BETA"]

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


def activation_from_module(module: nn.Module, surrogate_beta: float = DEFAULT_SURROGATE_BETA) -> Optional[ActivationSpec]:
    """The :class:`ActivationSpec` of an activation module, or ``None`` if ``module`` is not one."""
    if isinstance(module, nn.ReLU):
        return _relu_family("relu", 0.0, None, surrogate_beta)
    if isinstance(module, nn.ReLU6):
        return _relu_family("relu6", 0.0, 6.0, surrogate_beta)
    if isinstance(module, nn.LeakyReLU):
        return _relu_family("leaky_relu", float(module.negative_slope), None, surrogate_beta)
    if isinstance(module, nn.Tanh):
        return _tanh()
    if isinstance(module, nn.Sigmoid):
        return _sigmoid()
    if isinstance(module, nn.Softplus):
        return _softplus(float(module.beta), float(module.threshold))
    if isinstance(module, nn.SiLU):
        return _silu()
    if isinstance(module, nn.GELU):
        return _gelu(module.approximate)
    if isinstance(module, (nn.ELU, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.CELU, nn.SELU)):
        return _autograd_spec(type(module).__name__.lower(), module)
    return None


def activation_from_function(target, args: tuple, kwargs: dict,
                             surrogate_beta: float = DEFAULT_SURROGATE_BETA) -> Optional[ActivationSpec]:
    """The :class:`ActivationSpec` of a functional call traced by torch.fx (``F.relu``, ``x.tanh()``...)."""
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    name = name.rstrip("_")
    if name == "relu":
        return _relu_family("relu", 0.0, None, surrogate_beta)
    if name == "relu6":
        return _relu_family("relu6", 0.0, 6.0, surrogate_beta)
    if name == "leaky_relu":
        slope = kwargs.get("negative_slope", args[1] if len(args) > 1 else 0.01)
        return _relu_family("leaky_relu", float(slope), None, surrogate_beta)
    if name == "tanh":
        return _tanh()
    if name == "sigmoid":
        return _sigmoid()
    if name == "softplus":
        return _softplus(float(kwargs.get("beta", args[1] if len(args) > 1 else 1.0)), 20.0)
    if name == "silu":
        return _silu()
    if name == "gelu":
        return _gelu(kwargs.get("approximate", "none"))
    return None
