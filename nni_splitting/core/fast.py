"""Matrix-free splitting: ``lambda_min(S_j)`` and ``v_min(S_j)`` without ever forming ``S_j``.

The exact method forms a ``d x d`` splitting matrix per neuron (``O(n d^2)`` memory) and decomposes
it (``O(n d^3)`` time). Here each layer's recorded data are kept instead -- its input ``x``, the
per-position weights ``w = dL/da * sigma''(u) * c^2`` and, when a depthwise conv follows, the slopes
``c * sigma'(u)``, the depthwise kernel and its weights ``w'`` -- which is ``O(N P (d/k^2 + n))``
memory, and both terms of ``S_j`` (see :mod:`nni_splitting.core.matrix`) are applied as quadratic forms:

    S_j v_j = sum_{n,p} w_{n,j,p} x~_{n,p} (x~_{n,p}^T v_j)                          (eq. 3, term 1)
            + sum_{n,q} w'_{n,j,q} J_{n,j,q} (J_{n,j,q}^T v_j)                      (depthwise, term 2)

For all neurons (and ``k`` vectors each) at once, ``t = x~^T v`` is the layer's conv/linear of
``x`` with the stacked ``v`` as weights, ``J^T v = dwconv(c sigma'(u) * t)``, and the outer sum is
the weight-gradient of that conv for the output gradient
``w * t + c sigma'(u) * dwconv^T(w' * dwconv(c sigma'(u) * t))`` -- two convolutions (four with a
depthwise conv) per product, no ``d x d`` matrix.

On top sits :func:`lobpcg_min`, a LOBPCG (Knyazev 2001) batched over neurons: every neuron has its
own block ``[X, W, P]`` of ``3 k`` vectors, Rayleigh-Ritz is a batch of small ``3k x 3k``
eigenproblems (in float64, whitened with the block's Gram matrix so near-dependent directions are
dropped rather than trusted), ``S X`` and ``S P`` are updated implicitly so each iteration costs one
block product ``S W``, and converged neurons leave the batch (the product then runs on fewer
output channels).
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from nni_splitting.graph.registry import handler_for

__all__ = [
    "AUTO_EXACT_MAX_D",
    "AUTO_EXACT_MAX_D_SAMPLED",
    "FAST_DEFAULTS",
    "SplittingOperator",
    "check_fast_options",
    "full_precision",
    "lobpcg_min",
    "solve_min_eigenpairs",
    "solve_max_eigenpairs",
]

logger = logging.getLogger(__name__)

#: ``method="auto"`` uses the exact method for layers with at most this many parameters per neuron.
AUTO_EXACT_MAX_D = 64

#: The same with ``position_samples``: exact sums over Q drawn positions cost ``Q d^2`` per image and
#: neuron against the fast method's ``2 P d`` per iteration over every position, so exact stays cheaper
#: further (step 4 of the CPU protocol, d up to 103: 21.5 s -> 15.5 s per 1,280 images).
AUTO_EXACT_MAX_D_SAMPLED = 256

#: A neuron whose residual has not dropped by 10% in this many iterations stops (the products' rounding floor).
_PATIENCE = 8

#: Defaults of the fast eigensolver (see :func:`lobpcg_min`).
FAST_DEFAULTS = {"tol": 1e-3, "max_iter": 60, "min_iter": 5, "block": 2, "seed": 0, "chunk_elements": 16 * 1024 * 1024}


def check_fast_options(options: Optional[dict]) -> dict:
    """Validate ``compute_splitting(..., fast_options=...)`` and fill in :data:`FAST_DEFAULTS`.

    Keys: ``tol`` (residual tolerance, relative to the neuron's ``||S_j||`` estimate, in ``(0, 1)``),
    ``max_iter`` (LOBPCG iterations, >= 1), ``min_iter`` (iterations before a neuron may stop, >= 0),
    ``block`` (vectors per neuron, >= 1), ``seed`` (of the
    random start), ``chunk_elements`` (largest temporary of a product, in elements),
    ``exact_max_d`` (``method="auto"``'s threshold, default :data:`AUTO_EXACT_MAX_D`) and
    ``largest`` (also solve for ``lambda_max`` / ``v_max``, default ``True``: a second LOBPCG on
    ``-S``, about as long as the first; ``False`` leaves them ``None``).
    """
    options = dict(options or {})
    extra = ["exact_max_d", "largest"]
    unknown = sorted(set(options) - set(FAST_DEFAULTS) - set(extra))
    if unknown:
        raise ValueError(f"unknown fast_options {unknown}; known: {sorted(FAST_DEFAULTS) + extra}")
    if not isinstance(options.get("largest", True), bool):
        raise ValueError(f"fast_options largest={options['largest']!r} must be True or False")
    merged = {**FAST_DEFAULTS, **options}
    tol = merged["tol"]
    if not isinstance(tol, (int, float)) or not 0 < tol < 1:
        raise ValueError(f"fast_options tol={tol!r} must be in (0, 1)")
    for key in ("max_iter", "min_iter", "block", "chunk_elements"):
        value = merged[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "min_iter" else 1):
            kind = "non-negative" if key == "min_iter" else "positive"
            raise ValueError(f"fast_options {key}={value!r} must be a {kind} integer")
    if "exact_max_d" in merged and (isinstance(merged["exact_max_d"], bool) or not isinstance(merged["exact_max_d"], int)):
        raise ValueError(f"fast_options exact_max_d={merged['exact_max_d']!r} must be an integer")
    return merged


# ---------------------------------------------------------------------------------------------- operator


class SplittingOperator:
    """``v -> S_j v_j`` for every neuron ``j`` of one layer, from the layer's cached data.

    Parameters
    ----------
    layer : nn.Module
        The producer (Linear, Conv2d or a registered kind): its layer handler computes the products
        ``x~^T v`` and their adjoint ``sum_p y_p x~_p`` (its parameter values are not used).
    inputs : Tensor ``[N, C, H, W]`` or ``[N, F]``
        The layer's inputs over the whole data.
    weights : Tensor ``[N, O, H', W']`` or ``[N, O]``
        ``w = dL/da * sigma''(u) * c^2``, each sample weighted by its share of the mean loss.
    depthwise : nn.Conv2d, optional
        A depthwise conv (and second activation) that is part of the neuron; then ``slopes``
        (``c * sigma'(u)``, like ``weights``) and ``weights2`` (``dL/db * sigma_2''(.) * c'^2`` at the
        depthwise output) are needed too.
    chunk_elements : int
        Samples are processed in chunks whose largest temporary has at most this many elements.
    """

    def __init__(self, layer: nn.Module, inputs: torch.Tensor, weights: torch.Tensor,
                 depthwise: Optional[nn.Conv2d] = None, slopes: Optional[torch.Tensor] = None,
                 weights2: Optional[torch.Tensor] = None, chunk_elements: int = FAST_DEFAULTS["chunk_elements"]):
        self.handler = handler_for(layer)
        if self.handler is None:
            raise ValueError(f"{type(layer).__name__} has no layer handler: register one with register_layer_handler")
        self.layer = layer
        check = getattr(self.handler, "check", None)
        if check is not None:
            check(layer)  # e.g. a conv's padding: fail before the solver starts
        self._num_neurons = self.handler.num_neurons(layer)
        self._dim = self.handler.parameters_per_neuron(layer)
        self.inputs, self.weights = inputs, weights
        self.depthwise = depthwise is not None and weights2 is not None
        if self.depthwise:
            self.kernel = depthwise.weight.detach().to(inputs.dtype)
            self.dw_geometry = (depthwise.stride, depthwise.padding, depthwise.dilation)
            self.slopes, self.weights2 = slopes, weights2
        self.chunk_elements = chunk_elements

    @property
    def num_neurons(self) -> int:
        return self._num_neurons

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def dtype(self) -> torch.dtype:
        return self.inputs.dtype

    @property
    def device(self) -> torch.device:
        return self.inputs.device

    def _chunk(self, columns: int) -> int:
        per_sample = columns * max(1, self.weights[0, 0].numel())
        if self.depthwise:
            per_sample += columns * self.weights2[0, 0].numel()
        return max(1, self.chunk_elements // max(1, 3 * per_sample))

    def matvec(self, vectors: torch.Tensor, neurons: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``S_j v_j`` for ``vectors`` ``[B, d, k]`` (``k`` vectors for each of the ``B`` neurons ``neurons``)."""
        b, d, k = vectors.shape
        if d != self.dim:
            raise ValueError(f"vectors have d={d}, the layer has d={self.dim}")
        full = neurons is None or b == self.num_neurons
        if neurons is None:
            neurons = torch.arange(b, device=vectors.device)
        stacked = vectors.permute(2, 0, 1).reshape(k * b, d)  # row (i, j): vector i of neuron j
        out = torch.zeros(k * b, d, dtype=vectors.dtype, device=vectors.device)
        n = self.inputs.shape[0]
        step = self._chunk(k * b)
        for start in range(0, n, step):
            part = slice(start, min(n, start + step))
            weights = self.weights[part] if full else self.weights[part][:, neurons]
            x = self.inputs[part]
            grid = weights.shape[2:]
            t = self.handler.neuron_products(self.layer, x, stacked)  # x~^T v_j at every position
            t = t.reshape(-1, k, b, *grid)
            y = t * weights.unsqueeze(1)
            if self.depthwise:
                y = y + self._depthwise_term(t, part, neurons, full)
            out += self.handler.neuron_gradient(self.layer, x, y.reshape(-1, k * b, *grid))  # sum_{n,p} y x~
        return out.view(k, b, d).permute(1, 2, 0)

    def _depthwise_term(self, t: torch.Tensor, part: slice, neurons: torch.Tensor, full: bool) -> torch.Tensor:
        """``c sigma'(u) * dwconv^T(w' * dwconv(c sigma'(u) * t))``: term 2's output gradient."""
        n, k, b = t.shape[:3]
        slopes = (self.slopes[part] if full else self.slopes[part][:, neurons]).unsqueeze(1)
        weights2 = self.weights2[part] if full else self.weights2[part][:, neurons]
        kernel = self.kernel[neurons].repeat(k, 1, 1, 1)  # [k b, 1, kh, kw]
        stride, padding, dilation = self.dw_geometry
        z = (t * slopes).view(n, k * b, *t.shape[3:])
        jv = F.conv2d(z, kernel, None, stride, padding, dilation, groups=k * b)  # J^T v at every position q
        r = (jv.view(n, k, b, *jv.shape[2:]) * weights2.unsqueeze(1)).view_as(jv)
        back = torch.nn.grad.conv2d_input(z.shape, kernel, r, stride, padding, dilation, groups=k * b)
        return back.view_as(t) * slopes


# ---------------------------------------------------------------------------------------------- solver


def _rayleigh_ritz(z: torch.Tensor, sz: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rayleigh-Ritz of ``S`` on the span of ``z`` ``[B, d, m]`` (given ``sz = S z``), in float64.

    The Gram matrix ``z^T z`` is whitened by its eigendecomposition; directions whose Gram eigenvalue
    is below ``1e3 * eps`` of the largest (near-dependent columns) get a huge Ritz value so they are
    never chosen. Returns the coefficients ``[B, m, k]`` of the ``k`` smallest Ritz vectors, their Ritz
    values ``[B, k]`` and the largest genuine Ritz value ``[B]``.
    """
    zd, szd = z.double(), sz.double()
    gram = zd.transpose(1, 2) @ zd
    a = zd.transpose(1, 2) @ szd
    a = 0.5 * (a + a.transpose(1, 2))
    s, u = torch.linalg.eigh(gram)
    keep = s > 1e3 * torch.finfo(z.dtype).eps * s[:, -1:]
    basis = u * torch.where(keep, s.clamp_min(1e-300).rsqrt(), torch.zeros_like(s)).unsqueeze(1)
    reduced = basis.transpose(1, 2) @ a @ basis
    reduced = 0.5 * (reduced + reduced.transpose(1, 2))
    top = reduced.abs().amax(dim=(1, 2)) * reduced.shape[1] + 1.0
    reduced = reduced + torch.diag_embed(torch.where(keep, torch.zeros_like(s), 10 * top.unsqueeze(1)))
    theta, c = torch.linalg.eigh(reduced)
    largest = torch.where(keep.sum(1) > 0, theta.gather(1, (keep.sum(1, keepdim=True) - 1).clamp_min(0)).squeeze(1),
                          torch.zeros_like(theta[:, 0]))
    return (basis @ c[:, :, :k]).to(z.dtype), theta[:, :k], largest


def lobpcg_min(matvec: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], num: int, dim: int, *,
               dtype: torch.dtype, device: torch.device, block: int = FAST_DEFAULTS["block"],
               tol: float = FAST_DEFAULTS["tol"], max_iter: int = FAST_DEFAULTS["max_iter"],
               min_iter: int = FAST_DEFAULTS["min_iter"], seed: int = FAST_DEFAULTS["seed"],
               label: str = "LOBPCG", warn: bool = True) -> Tuple[torch.Tensor, torch.Tensor, dict]:
    """Smallest eigenpair of ``num`` symmetric ``dim x dim`` operators at once, by batched LOBPCG.

    Parameters
    ----------
    matvec : callable
        ``matvec(V [B, dim, k], indices [B]) -> [B, dim, k]``: operator ``indices[b]`` applied to ``V[b]``.
    num, dim : int
        Number of operators and their size.
    block : int
        Vectors per operator (``k``); more vectors converge in fewer iterations but each costs a product.
    tol : float
        Operator ``j`` has converged when ``||S_j x - theta x|| <= tol * ||S_j||_est`` (``||S_j||_est``
        = the largest ``|Ritz value|`` seen). Then ``theta - lambda_min ~ ||r||^2 / gap`` and
        ``sin angle(x, v_min) <= ||r|| / gap``.
    max_iter : int
        Iterations at most; operators not converged by then keep their best Ritz pair (and are counted).
    min_iter : int
        Iterations before an operator may stop. From a random start the component along ``v_min`` is
        ~``1/sqrt(dim)``: when ``|lambda_min|`` is small next to ``||S_j||`` the start's residual can
        already be below ``tol`` while the Ritz value sits in the cluster near 0; a few iterations
        amplify that component first.
    seed : int
        Seed of the random start (drawn on ``device``: the start, hence the last digits, depend on the device).
    label : str
        What the non-convergence warning calls the solve.
    warn : bool
        Log that warning (a caller solving in groups warns once for all of them).

    Returns
    -------
    eigenvalues : Tensor ``[num]`` (``dtype``), eigenvectors : Tensor ``[num, dim]`` (unit norm), report : dict
        ``iterations`` (most used by one operator), ``mean_iterations``, ``matvecs`` (vector products
        per operator, mean), ``converged`` / ``num``, ``stalled`` (stopped above ``tol`` because the
        residual no longer decreased: the rounding floor of float32 products), ``max_relative_residual``,
        ``seconds``.
    """
    k = max(1, min(block, dim))
    small = 10 * math.sqrt(torch.finfo(dtype).eps)  # a P column shorter than this is dropped
    started = time.perf_counter()
    # The random start is drawn on the device (drawing it on the CPU and copying took a quarter of a
    # VGG19 phase on an H200); Rayleigh-Ritz whitens it, so unit columns are enough.
    generator = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(num, dim, k, generator=generator, dtype=dtype, device=device)
    x = x / x.norm(dim=1, keepdim=True)
    active = torch.arange(num, device=device)
    sx = matvec(x, active)
    coeffs, theta, largest = _rayleigh_ritz(x, sx, k)
    x, sx = x @ coeffs, sx @ coeffs
    scale = torch.maximum(theta.abs().amax(1), largest.abs())
    p = sp = None
    values = torch.zeros(num, dtype=torch.float64, device=device)
    vectors = torch.zeros(num, dim, dtype=dtype, device=device)
    iterations = torch.zeros(num, dtype=torch.long, device=device)
    residuals = torch.zeros(num, dtype=torch.float64, device=device)
    stalled = torch.zeros(num, dtype=torch.bool, device=device)
    best = torch.full((num,), math.inf, dtype=torch.float64, device=device)  # of the active neurons
    since = torch.zeros(num, dtype=torch.long, device=device)  # iterations since best improved by 10%
    products = torch.full((num,), k, dtype=torch.long, device=device)
    for iteration in range(max_iter + 1):
        r = sx - x * theta.to(dtype).unsqueeze(1)
        relative = r[:, :, 0].double().norm(dim=1) / scale.clamp_min(torch.finfo(torch.float64).tiny)
        improved = relative < 0.9 * best
        best = torch.where(improved, relative, best)
        since = torch.where(improved, torch.zeros_like(since), since + 1)
        stuck = since >= _PATIENCE  # at the precision floor of the products (float32): stop
        done = ((relative <= tol) | stuck) & (iteration >= min_iter)
        if iteration == max_iter:
            done = torch.ones_like(done)
        if done.any():
            finished = active[done]
            values[finished] = theta[done, 0]
            vectors[finished] = x[done, :, 0]
            iterations[finished] = iteration
            residuals[finished] = relative[done]
            stalled[finished] = stuck[done] & (relative[done] > tol)
            keep = ~done
            best, since = best[keep], since[keep]
            active, x, sx, r, theta, scale = active[keep], x[keep], sx[keep], r[keep], theta[keep], scale[keep]
            if p is not None:
                p, sp = p[keep], sp[keep]
        if active.numel() == 0:
            break
        # W = the residuals, orthogonalized against X (twice), normalized: the new search directions.
        w = r - x @ (x.transpose(1, 2) @ r)
        w = w - x @ (x.transpose(1, 2) @ w)
        w = w / w.norm(dim=1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
        sw = matvec(w, active)
        products[active] += k
        z = torch.cat([x, w] if p is None else [x, w, p], dim=2)
        sz = torch.cat([sx, sw] if p is None else [sx, sw, sp], dim=2)
        coeffs, theta, largest = _rayleigh_ritz(z, sz, k)
        scale = torch.maximum(scale, largest.abs())
        x, sx = z @ coeffs, sz @ coeffs
        # P = the W and P components of the new X: the "conjugate" direction of LOBPCG. Where it is
        # tiny, S P (updated implicitly) is dominated by rounding: drop it (a zero column is whitened out).
        p, sp = z[:, :, k:] @ coeffs[:, k:], sz[:, :, k:] @ coeffs[:, k:]
        norms = p.norm(dim=1, keepdim=True)
        usable = norms > small
        p = torch.where(usable, p / norms.clamp_min(small), torch.zeros_like(p))
        sp = torch.where(usable, sp / norms.clamp_min(small), torch.zeros_like(sp))
    converged = int((residuals <= tol).sum())
    report = {"iterations": int(iterations.max()) if num else 0,
              "mean_iterations": float(iterations.double().mean()) if num else 0.0,
              "matvecs": float(products.double().mean()) if num else 0.0,
              "converged": converged, "stalled": int(stalled.sum()), "num": num, "block": k, "tol": tol,
              "max_relative_residual": float(residuals.max()) if num else 0.0,
              "seconds": time.perf_counter() - started}
    if warn:
        _warn_unconverged(report, label, max_iter)
    return values.to(dtype), vectors / vectors.norm(dim=1, keepdim=True).clamp_min(torch.finfo(dtype).tiny), report


def _warn_unconverged(report: dict, label: str, max_iter: int) -> None:
    if report["converged"] < report["num"]:
        logger.warning("%s: %d of %d neurons not converged to tol=%g in %d iterations (%d stopped improving; "
                       "largest relative residual %.3g); their best estimates are used", label,
                       report["num"] - report["converged"], report["num"], report["tol"], max_iter, report["stalled"],
                       report["max_relative_residual"])


@contextmanager
def full_precision():
    """Turn TF32 off for cuDNN convolutions and cuBLAS products (restored on exit).

    With TF32 (PyTorch's default for cuDNN convolutions) products ``S v`` carry ~1e-3 relative
    errors, about the solver's tolerance: LOBPCG's implicit ``S X`` / ``S P`` updates then drift.
    """
    matmul = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def _solve_in_groups(matvec: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], operator: "SplittingOperator",
                     max_neurons: Optional[int], label: str, **options) -> Tuple[torch.Tensor, torch.Tensor, dict]:
    """:func:`lobpcg_min` over the operator's neurons, at most ``max_neurons`` at a time (each neuron is
    its own eigenproblem, so groups only bound the solver's memory; ``None``: all at once)."""
    num = operator.num_neurons
    group = num if max_neurons is None else max(1, min(num, int(max_neurons)))
    if group >= num:
        return lobpcg_min(matvec, num, operator.dim, dtype=operator.dtype, device=operator.device, label=label, **options)
    values, vectors, reports = [], [], []
    for start in range(0, num, group):
        indices = torch.arange(start, min(num, start + group), device=operator.device)
        part = lobpcg_min(lambda v, local, indices=indices: matvec(v, indices[local]), indices.numel(), operator.dim,
                          dtype=operator.dtype, device=operator.device, warn=False, **options)
        values.append(part[0])
        vectors.append(part[1])
        reports.append(part[2])
    counts = [r["num"] for r in reports]
    report = {"iterations": max(r["iterations"] for r in reports),
              "mean_iterations": sum(r["mean_iterations"] * c for r, c in zip(reports, counts)) / num,
              "matvecs": sum(r["matvecs"] * c for r, c in zip(reports, counts)) / num,
              "converged": sum(r["converged"] for r in reports), "stalled": sum(r["stalled"] for r in reports),
              "num": num, "block": reports[0]["block"], "tol": reports[0]["tol"],
              "max_relative_residual": max(r["max_relative_residual"] for r in reports),
              "seconds": sum(r["seconds"] for r in reports), "groups": len(reports)}
    _warn_unconverged(report, f"{label} ({len(reports)} groups of <= {group} neurons)", options["max_iter"])
    return torch.cat(values), torch.cat(vectors), report


def solve_min_eigenpairs(operator: SplittingOperator, tol: float = FAST_DEFAULTS["tol"],
                         max_iter: int = FAST_DEFAULTS["max_iter"], block: int = FAST_DEFAULTS["block"],
                         seed: int = FAST_DEFAULTS["seed"], chunk_elements: Optional[int] = None,
                         min_iter: int = FAST_DEFAULTS["min_iter"], max_neurons: Optional[int] = None
                         ) -> Tuple[torch.Tensor, torch.Tensor, dict]:
    """Splitting indexes and gradients of every neuron of ``operator``'s layer (``[O]``, ``[O, d]``, report).

    ``max_neurons`` solves the neurons in groups of at most that many (the solver's memory is
    ``LOBPCG_VECTORS * block * d`` elements per neuron of a group, see :mod:`nni_splitting.core.memory`).
    """
    if chunk_elements is not None:
        operator.chunk_elements = chunk_elements
    with full_precision():
        values, vectors, report = _solve_in_groups(operator.matvec, operator, max_neurons, "LOBPCG", block=block,
                                                   tol=tol, max_iter=max_iter, min_iter=min(min_iter, max_iter), seed=seed)
    logger.info("fast splitting: %d neurons, d=%d: %d/%d converged, %d iterations at most (%.1f mean), "
                "%.1f products per neuron, %.2f s", report["num"], operator.dim, report["converged"], report["num"],
                report["iterations"], report["mean_iterations"], report["matvecs"], report["seconds"])
    return values, vectors, report


def solve_max_eigenpairs(operator: SplittingOperator, tol: float = FAST_DEFAULTS["tol"],
                         max_iter: int = FAST_DEFAULTS["max_iter"], block: int = FAST_DEFAULTS["block"],
                         seed: int = FAST_DEFAULTS["seed"], chunk_elements: Optional[int] = None,
                         min_iter: int = FAST_DEFAULTS["min_iter"], max_neurons: Optional[int] = None
                         ) -> Tuple[torch.Tensor, torch.Tensor, dict]:
    """``lambda_max(S_j)`` and ``v_max(S_j)`` of every neuron (``[O]``, ``[O, d]``, report).

    LOBPCG for the smallest eigenpair of ``-S_j``, with the options of :func:`solve_min_eigenpairs`.
    """
    if chunk_elements is not None:
        operator.chunk_elements = chunk_elements

    def negated(vectors: torch.Tensor, neurons: torch.Tensor) -> torch.Tensor:
        return -operator.matvec(vectors, neurons)  # lambda_max(S) = -lambda_min(-S), same eigenvector

    with full_precision():
        values, vectors, report = _solve_in_groups(negated, operator, max_neurons, "LOBPCG (lambda_max)", block=block,
                                                   tol=tol, max_iter=max_iter, min_iter=min(min_iter, max_iter), seed=seed)
    logger.info("fast splitting (largest): %d neurons, d=%d: %d/%d converged, %.2f s", report["num"], operator.dim,
                report["converged"], report["num"], report["seconds"])
    return -values, vectors, report
