"""``compute_splitting``: splitting indexes and gradients of every splittable neuron of a model.

One forward/backward pass per batch records, through the traced graph (:func:`recording_module`), each neuron group's
inputs, pre-activations and the loss gradient at its activation (:func:`_record_batch`, shared by
both methods). ``method="exact"`` turns them into splitting matrices with :mod:`nni_splitting.core.matrix`,
accumulated over the data as the mean of the per-batch losses, and decomposes them;
``method="fast"`` keeps them as per-layer data (:mod:`nni_splitting.core.layer_data`) and finds
``lambda_min`` (and ``lambda_max``) matrix-free with :mod:`nni_splitting.core.fast` (never forming a ``d x d`` matrix).
"""
from __future__ import annotations

import copy
import itertools
import logging
import math
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.fx as fx
import torch.nn as nn

from nni_splitting.graph.activations import DEFAULT_SURROGATE_BETA
from nni_splitting.common.defaults import METHOD
from nni_splitting.core.fast import AUTO_EXACT_MAX_D, AUTO_EXACT_MAX_D_SAMPLED, check_fast_options, solve_max_eigenpairs, solve_min_eigenpairs
from nni_splitting.graph import NeuronGroup, activation_of_node, find_neuron_groups, handler_for, trace_model
from nni_splitting.core.layer_data import FastLayerData
from nni_splitting.core.layer_splitting import LayerSplitting, load_splits, save_splits
from nni_splitting.core.matrix import (DEFAULT_CHUNK_ELEMENTS, SUM_CHUNK_ELEMENTS, batchnorm_scale, depthwise_jacobian, depthwise_jacobian_from_taps,
                     depthwise_taps, extreme_eigenpairs, neuron_inputs, neuron_inputs_at, neuron_slopes, neuron_weights,
                     values_at, weighted_gram)
from nni_splitting.core.memory import LayerCost, choose_methods, format_bytes, plan_passes
from nni_splitting.core.sampling import sample_images as _sample_images
from nni_splitting.core.sampling import sample_positions as _sample_positions

__all__ = ["LayerSplitting", "compute_splitting", "save_splits", "load_splits", "METHODS"]

logger = logging.getLogger(__name__)

METHODS = ("exact", "fast", "auto")
DEFAULT_MEMORY_LIMIT = 2 * 1024 ** 3  # bytes of working memory of every method (see nni_splitting.core.memory)


def recording_module(graph_module: fx.GraphModule, keep: set) -> fx.GraphModule:
    """A copy of ``graph_module`` that returns ``(output, {node name: value})`` for the nodes in ``keep``:
    the recorded pass runs as generated Python code (about 15% faster than an ``fx.Interpreter``)."""
    graph = copy.deepcopy(graph_module.graph)
    nodes = {node.name: node for node in graph.nodes}
    output = next(node for node in graph.nodes if node.op == "output")
    result = output.args[0]
    graph.erase_node(output)
    graph.output((result, {name: nodes[name] for name in sorted(keep)}))
    return fx.GraphModule(graph_module, graph)


def materialize_batches(batches: Iterable, max_batches: Optional[int] = None, owner: str = "compute_splitting"
                        ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """The first ``max_batches`` ``(inputs, targets)`` pairs of ``batches`` as a list (read once, kept);
    ``ValueError`` naming ``owner`` for an empty iterable or an item that is not a pair."""
    items = list(itertools.islice(iter(batches), max_batches))
    if not items:
        raise ValueError(f"batches is empty: {owner} needs at least one (inputs, targets) batch")
    for index, item in enumerate(items):
        if not (isinstance(item, (tuple, list)) and len(item) >= 2):
            raise ValueError(f"batch {index} is {type(item).__name__}, expected an (inputs, targets) pair")
    return [(item[0], item[1]) for item in items]


def compute_splitting(model: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                      batches: Iterable, method: str = METHOD, layers: Optional[Sequence[str]] = None,
                      surrogate_beta: float = DEFAULT_SURROGATE_BETA, max_batches: Optional[int] = None,
                      memory_limit: int = DEFAULT_MEMORY_LIMIT, progress: bool = False,
                      keep_matrices: bool = False, fast_options: Optional[dict] = None,
                      position_samples: Optional[int] = None, seed: int = 0,
                      product_dtype=None, image_fraction: Optional[float] = None) -> Dict[str, LayerSplitting]:
    """Splitting indexes (``lambda_min``) and splitting gradients (``v_min``) of every splittable neuron.

    Parameters
    ----------
    model : nn.Module
        A trained model, traceable by torch.fx. It is not modified (a traced copy in eval mode is used:
        BatchNorm is folded with its running statistics).
    loss_fn : callable
        ``loss_fn(outputs, targets)`` returning the mean loss of a batch (e.g. ``nn.CrossEntropyLoss()``).
    batches : iterable of (inputs, targets)
        The data ``D`` of eq. 3; the matrices are the mean over all samples. Read once (kept in memory).
    method : {"auto", "exact", "fast"}
        Default ``"auto"`` (:data:`nni_splitting.common.defaults.METHOD`). ``"exact"`` forms each ``S_j``
        and decomposes it with ``torch.linalg.eigh``: ``O(n d^3)`` time
        and ``O(n d^2)`` memory. ``"fast"`` never forms ``S_j``: it caches each layer's inputs and
        per-position weights (``O(N P (d + n))`` memory) and runs a batched LOBPCG on matrix-free
        products ``S_j v_j`` (:mod:`nni_splitting.core.fast`). ``"auto"`` picks, per layer, ``"exact"``
        when ``d <= fast_options["exact_max_d"]`` (default :data:`~nni_splitting.core.fast.AUTO_EXACT_MAX_D`,
        :data:`~nni_splitting.core.fast.AUTO_EXACT_MAX_D_SAMPLED` with ``position_samples``)
        and ``"fast"`` otherwise, and the other method for a layer whose own does not fit ``memory_limit``.
    layers : list of str, optional
        Restrict to these producer layers (``named_modules()`` names).
    surrogate_beta : float
        ``beta`` of the softplus surrogate of ``sigma''`` for ReLU-family activations.
    max_batches : int, optional
        Use at most this many batches.
    memory_limit : int
        Bytes of working memory of every method (default 2 GiB): half for the data of a pass (the
        exact running sums of ``S_j``, the fast cached layer data), half for the work on them (``eigh``
        on blocks of matrices, LOBPCG on groups of neurons); more data than that takes several passes
        over the batches. Checked before the first forward pass: a layer that cannot fit raises a
        ``ValueError`` naming it and the method that would fit. Not counted: the model, one batch's
        recorded values, bounded temporaries and the results (see :mod:`nni_splitting.core.memory`);
        ``keep_matrices=True`` also keeps every exact layer's ``n d^2`` matrices.
    progress : bool
        Show a tqdm progress bar.
    keep_matrices : bool
        Also return the splitting matrices ``S_j`` (``LayerSplitting.matrices``) of the exact layers.
    fast_options : dict, optional
        Options of the fast eigensolver (``tol``, ``max_iter``, ``block``, ``seed``, ``chunk_elements``),
        ``exact_max_d`` for ``"auto"`` and ``largest`` (also ``lambda_max`` / ``v_max`` by a second
        LOBPCG, default ``True``); see :func:`nni_splitting.core.fast.check_fast_options`.
    position_samples : int, optional
        Exact layers only: estimate each sample's sum over positions ``p`` (and ``q`` of a depthwise
        term) from this many positions per batch, one drawn in each equal band of rows (uniformly when
        the count does not divide the grid), scaled by ``P / position_samples``: an unbiased estimate
        of ``S_j``; ``x~`` is gathered only there (positions of one image are strongly correlated; more
        images with fewer positions each is the cheaper way to a good estimate). 16 cuts the phase of
        the CIFAR protocol's MobileNets 5-9x (docs/benchmarks.md). Default: every position.
    seed : int
        Seed of the position draws.
    product_dtype : torch.dtype or str, optional
        Exact layers: form the products of the second-order sums in this dtype (``"bfloat16"``:
        AMX / AVX512-BF16 on the CPU, tensor cores on a GPU), each chunk's result added to the sums in
        the model's dtype; the eigen-decomposition stays in the model's dtype. Rank correlation of the
        indexes with float32 0.9998+; pays only where the sums are large (CPU protocol: -18% phase time
        at step 4, slower at steps 1-3 where the conversions dominate; docs/benchmarks.md).
        Default: the model's dtype.
    image_fraction : float in (0, 1], optional
        Exact layers: estimate each batch's sum over images from a Poisson draw of about this share of
        them, image ``n`` kept with probability ``pi_n = min(1, fraction (1 + N r_n / sum r) / 2)``
        (``r_n``: the size of its gradients at the layer's neurons) and weighted ``1 / pi_n``: unbiased,
        the images a converged network already fits (small gradients, small ``S_jn``) skipped most.
        Every image still goes through the recorded forward/backward pass. Default: every image.

    Returns
    -------
    dict
        ``{layer name: LayerSplitting}`` for every candidate layer, in graph order; each also carries
        ``lambda_max`` / ``v_max`` (``max_eigenvalues`` / ``max_directions``) from the same method.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {METHODS}")
    if position_samples is not None and (isinstance(position_samples, bool) or not isinstance(position_samples, int)
                                         or position_samples < 1):
        raise ValueError(f"position_samples={position_samples!r} must be an int >= 1 or None")
    if image_fraction is not None and (isinstance(image_fraction, bool) or not isinstance(image_fraction, (int, float))
                                       or not 0 < image_fraction <= 1):
        raise ValueError(f"image_fraction={image_fraction!r} must be a number in (0, 1] or None")
    options = check_fast_options(fast_options)
    product_dtype = _check_product_dtype(product_dtype)
    positions = torch.Generator().manual_seed(int(seed))
    if surrogate_beta <= 0:
        raise ValueError(f"surrogate_beta={surrogate_beta!r} must be > 0")
    parameter = next(model.parameters(), None)
    if parameter is None:
        raise ValueError(f"{type(model).__name__} has no parameters: nothing to split")
    dtype, device = parameter.dtype, parameter.device
    if dtype in (torch.float16, torch.bfloat16):
        # eigh and the fast solver have no half-precision kernels (and half sums lose S): work on a float32 copy.
        logger.info("%s is %s: its splitting is computed in float32", type(model).__name__, dtype)
        model, dtype = copy.deepcopy(model).float(), torch.float32
    data = materialize_batches(batches, max_batches)

    def prepare(inputs: torch.Tensor) -> torch.Tensor:
        inputs = inputs.to(device)
        return inputs.to(dtype) if inputs.is_floating_point() else inputs

    graph_module = trace_model(model, prepare(data[0][0]))
    groups, excluded = find_neuron_groups(graph_module, list(layers) if layers is not None else None, surrogate_beta)
    if not groups:
        reasons = "; ".join(f"{k}: {v}" for k, v in excluded.items()) or "it has no Linear/Conv2d layer"
        raise ValueError(f"{type(model).__name__} has nothing splittable ({reasons})")
    nodes = {node.name: node for node in graph_module.graph.nodes}
    modules = dict(graph_module.named_modules())
    specs = {name: activation_of_node(graph_module, nodes[g.activation_node], surrogate_beta) for name, g in groups.items()}
    specs2 = {name: activation_of_node(graph_module, nodes[g.depthwise_activation_node], surrogate_beta)
              for name, g in groups.items() if g.depthwise_activation_node}
    keep = set()
    for g in groups.values():
        keep.update(filter(None, [g.input_node, g.preactivation_node, g.activation_node,
                                  g.depthwise_preactivation_node, g.depthwise_activation_node]))
    sizes = {name: _layer_size(modules[name]) for name in groups}
    exact_max_d = options.get("exact_max_d", AUTO_EXACT_MAX_D if position_samples is None else AUTO_EXACT_MAX_D_SAMPLED)
    wanted_methods = {name: ("fast" if method == "fast" or (method == "auto" and sizes[name][1] > exact_max_d) else "exact")
                      for name in groups}
    element_bytes = torch.empty((), dtype=dtype).element_size()
    total = sum(_batch_size(targets) for _, targets in data)
    largest_batch = max(_batch_size(targets) for _, targets in data)
    costs = {name: LayerCost(name, sizes[name][0], sizes[name][1], element_bytes,
                             FastLayerData.estimate_bytes(groups[name], nodes, modules, total, element_bytes),
                             max(1, min(options["block"], sizes[name][1])),
                             largest_batch * sizes[name][1] * _positions(nodes[groups[name].preactivation_node])
                             * element_bytes)
             for name in groups}
    methods = choose_methods(costs, wanted_methods, method, memory_limit)  # before the first forward pass
    passes = plan_passes(costs, methods, memory_limit)
    work_bytes = memory_limit - memory_limit // 2  # the half for temporaries, eigh blocks and LOBPCG groups
    if len(passes) > 1:
        logger.info("splitting data exceed memory_limit/2=%s: %d passes over the data",
                    format_bytes(memory_limit // 2), len(passes))
    wanted = sorted({g.activation_node for g in groups.values()}
                    | {g.depthwise_activation_node for g in groups.values() if g.depthwise_activation_node})
    recorder = recording_module(graph_module, keep)

    exact_parts: Dict[str, List[Tuple[torch.Tensor, ...]]] = {name: [] for name in groups}
    kept: Dict[str, List[torch.Tensor]] = {name: [] for name in groups}
    fast_results: Dict[str, Tuple[torch.Tensor, torch.Tensor, dict, Optional[Tuple[torch.Tensor, torch.Tensor, dict]]]] = {}
    for number, work in enumerate(passes):
        exact_work = [(name, chunk) for name, chunk in work if chunk is not None]
        sums = {(name, chunk.start): torch.zeros(chunk.stop - chunk.start, sizes[name][1], sizes[name][1],
                                                 dtype=dtype, device=device) for name, chunk in exact_work}
        caches = {name: FastLayerData(groups[name], modules, specs[name], specs2.get(name), total)
                  for name, chunk in work if chunk is None}
        iterator = data
        if progress:
            from tqdm.auto import tqdm  # optional dependency: only with progress=True
            iterator = tqdm(data, desc=f"splitting matrices (pass {number + 1}/{len(passes)})", leave=False)
        for index, (inputs, targets) in enumerate(iterator):
            values, gradients = _record_batch(recorder, wanted, loss_fn, prepare(inputs), targets.to(device), index)
            batch_size = _batch_size(targets)
            for name, chunk in exact_work:
                _add_splitting_matrices(sums[(name, chunk.start)], batch_size, groups[name], modules, values, gradients,
                                        specs[name], specs2.get(name), chunk, position_samples, positions,
                                        min(SUM_CHUNK_ELEMENTS, costs[name].exact_chunk_elements(work_bytes)),
                                        product_dtype, image_fraction)
            for cache in caches.values():
                cache.add(values, gradients, batch_size)
            del values, gradients
        for name, chunk in exact_work:  # decompose this pass's matrices now: only lambda and v outlive the pass
            matrices = sums.pop((name, chunk.start)).div_(total)
            exact_parts[name].append(_eigenpairs_in_blocks(matrices, costs[name].eigh_block(work_bytes)))
            if keep_matrices:
                kept[name].append(0.5 * (matrices + matrices.transpose(1, 2)))
            del matrices
        for name in list(caches):  # one layer's data at a time from here on
            operator = caches.pop(name).operator()
            solver = {**_solver_options(options), "max_neurons": costs[name].lobpcg_group(work_bytes),
                      "chunk_elements": min(options["chunk_elements"], LayerCost.product_elements(work_bytes, element_bytes))}
            smallest = solve_min_eigenpairs(operator, **solver)
            largest = solve_max_eigenpairs(operator, **solver) if options.get("largest", True) else None
            fast_results[name] = (*smallest, largest)
            del operator

    results: Dict[str, LayerSplitting] = {}
    for name, group in groups.items():
        activation = specs[name].name + (f" -> {groups[name].depthwise} -> {specs2[name].name}" if name in specs2 else "")
        if methods[name] == "fast":
            eigenvalues, directions, report, largest = fast_results[name]
            top, top_directions = (None, None) if largest is None else largest[:2]
            if largest is not None:
                report = {**report, "largest": largest[2]}
            results[name] = LayerSplitting(name, eigenvalues, directions, group, activation, None, "fast", report,
                                           top, top_directions)
            continue
        eigenvalues, directions, top, top_directions = (torch.cat(parts) for parts in zip(*exact_parts[name]))
        results[name] = LayerSplitting(name, eigenvalues, directions, group, activation,
                                       torch.cat(kept[name]) if keep_matrices else None,
                                       max_eigenvalues=top, max_directions=top_directions)
    return results


def _eigenpairs_in_blocks(matrices: torch.Tensor, block: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`extreme_eigenpairs` of ``matrices``, ``block`` of them per ``eigh`` call (its memory), each
    block retried in float64 when LAPACK's float32 ``eigh`` fails to converge.

    That happens on float32 matrices with many repeated eigenvalues (dead input channels give zero
    rows and columns); the float64 result is cast back to the matrices' dtype.
    """
    parts = []
    for start in range(0, matrices.shape[0], block):
        part = matrices[start:start + block]
        try:
            parts.append(extreme_eigenpairs(part, chunk=block))
        except torch.linalg.LinAlgError as error:
            logger.warning("eigh failed in %s (%s); retrying in float64", part.dtype, str(error).split(":")[0])
            parts.append(tuple(t.to(part.dtype) for t in extreme_eigenpairs(part.double(), chunk=block)))
    return tuple(torch.cat(values) for values in zip(*parts))


def _check_product_dtype(product_dtype) -> Optional[torch.dtype]:
    """``product_dtype`` as a floating torch.dtype (names such as ``"bfloat16"`` accepted), or None."""
    if product_dtype is None:
        return None
    dtype = getattr(torch, product_dtype, None) if isinstance(product_dtype, str) else product_dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"product_dtype={product_dtype!r} must be a floating torch dtype such as torch.bfloat16 "
                         "(or its name), or None")
    return dtype


def _solver_options(options: dict) -> dict:
    return {k: v for k, v in options.items() if k not in ("exact_max_d", "largest")}


def _batch_size(targets: torch.Tensor) -> int:
    return int(targets.shape[0]) if targets.dim() > 0 else 1


def _record_batch(recorder: fx.GraphModule, wanted: List[str], loss_fn: Callable,
                  inputs: torch.Tensor, targets: torch.Tensor, index: int
                  ) -> Tuple[Dict[str, torch.Tensor], Dict[str, Optional[torch.Tensor]]]:
    """One forward/backward pass: the kept node values and ``dL/d(activation)`` at the ``wanted`` nodes
    (``recorder`` is :func:`recording_module`)."""
    inputs = inputs.requires_grad_(inputs.is_floating_point())
    outputs, values = recorder(inputs)
    loss = loss_fn(outputs, targets)
    if loss.dim() != 0:
        raise ValueError(f"loss_fn returned shape {list(loss.shape)}; it must return the batch's mean loss (a scalar)")
    if not torch.isfinite(loss):
        raise ValueError(f"the loss of batch {index} is {loss.item()} (NaN or inf): cannot compute splitting matrices")
    gradients = dict(zip(wanted, torch.autograd.grad(loss, [values[w] for w in wanted], allow_unused=True)))
    return {name: value.detach() for name, value in values.items()}, gradients


def _positions(node: fx.Node) -> int:
    """Positions ``P`` per sample of a neuron's output (``H' W'`` of a conv, 1 of a Linear), from the traced shape."""
    shape = tuple(getattr(node.meta.get("tensor_meta"), "shape", ()))
    return math.prod(shape[2:]) if len(shape) > 2 else 1


def _layer_size(layer: nn.Module) -> Tuple[int, int]:
    """(number of neurons, parameters per neuron ``d``), from the layer's handler."""
    handler = handler_for(layer)
    return handler.num_neurons(layer), handler.parameters_per_neuron(layer)


def _add_splitting_matrices(sums: torch.Tensor, alpha: float, group: NeuronGroup, modules: Dict[str, nn.Module],
                            values: Dict[str, torch.Tensor], gradients: Dict[str, Optional[torch.Tensor]], spec, spec2,
                            chunk: slice, position_samples: Optional[int] = None,
                            generator: Optional[torch.Generator] = None,
                            chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
                            product_dtype: Optional[torch.dtype] = None,
                            image_fraction: Optional[float] = None) -> None:
    """``sums += alpha * S_j`` of one batch for the neurons ``chunk`` of ``group`` (see :mod:`nni_splitting.core.matrix`),
    in place; with ``position_samples``, the sums over positions are estimated from that many drawn
    positions, with ``image_fraction`` the sum over images from a draw of about that share of them.
    Temporaries have at most ``chunk_elements`` elements (beside the batch's unfolded inputs)."""
    layer = modules[group.layer]
    inputs = values[group.input_node].detach()
    preactivation = values[group.preactivation_node].detach()
    n, channels = preactivation.shape[:2]
    scale = batchnorm_scale(modules.get(group.pre_bn) if group.pre_bn else None, channels, preactivation)
    gradient = gradients[group.activation_node]
    if gradient is None:  # the loss does not depend on this activation
        return
    dw_values, dw_gradient = None, None
    if group.depthwise_activation_node and gradients.get(group.depthwise_activation_node) is not None:
        dw_values = values[group.depthwise_preactivation_node].detach()
        dw_gradient = gradients[group.depthwise_activation_node]
    if image_fraction is not None:
        # sum_n S_jn ~ sum_{n kept} S_jn / pi_n, pi_n ~ |dL/da_n| + |dL/db_n| of these neurons (unbiased)
        importance = gradient[:, chunk].abs().flatten(1).sum(1)
        if dw_gradient is not None:
            importance = importance + dw_gradient[:, chunk].abs().flatten(1).sum(1)
        kept, inverse = _sample_images(importance, image_fraction, generator)
        if kept.numel() == 0:
            return
        per_image = inverse.to(gradient.dtype).view(-1, *([1] * (gradient.dim() - 1)))
        inputs, preactivation = inputs.index_select(0, kept), preactivation.index_select(0, kept)
        gradient = gradient.index_select(0, kept) * per_image
        if dw_gradient is not None:
            dw_values = dw_values.index_select(0, kept)
            dw_gradient = dw_gradient.index_select(0, kept) * per_image
        n = int(kept.numel())
    patches = None  # every position's x~ [N, d, P]: unfolded only when some sum runs over every position
    # S_j = E[ sum_p dL/da_{j,p} * sigma''(u_{j,p}) * c_j^2 * x~_p x~_p^T ]           (eq. 3)
    # sum_p ~ (P / |p'|) sum_{p in p'} over a stratified draw p' of positions (unbiased)
    index, factor = _sample_positions(preactivation[0, 0].numel(), position_samples, generator, preactivation.device)
    if index is None:
        patches = neuron_inputs(inputs, layer)
        weights = neuron_weights(gradient, preactivation, spec.second, scale).reshape(n, channels, -1)
        weighted_gram(patches, weights[:, chunk], chunk_elements, out=sums, alpha=alpha, product_dtype=product_dtype)
    else:  # x~ and the weights only at the drawn positions (gathered, not unfolded)
        flat = (values_at(gradient, index, chunk), values_at(preactivation, index, chunk))
        weights = neuron_weights(*flat, spec.second, scale[chunk]) * factor
        weighted_gram(neuron_inputs_at(inputs, layer, index), weights, chunk_elements, out=sums, alpha=alpha,
                      product_dtype=product_dtype)
    if dw_gradient is not None:
        depthwise = modules[group.depthwise]
        u2, g2 = dw_values, dw_gradient
        scale2 = batchnorm_scale(modules.get(group.depthwise_bn) if group.depthwise_bn else None, channels, u2)
        # S_j += E[ sum_q dL/db_{j,q} * sigma_2''(u'_{j,q}) * c'_j^2 * J_{j,q} J_{j,q}^T ]
        grid = tuple(preactivation.shape[2:])
        index2, factor2 = _sample_positions(u2[0, 0].numel(), position_samples, generator, preactivation.device)
        if index2 is None and position_samples is not None:  # a small grid: gathered at every position (no conv per neuron)
            index2 = torch.arange(u2[0, 0].numel(), device=preactivation.device)
        if index2 is None:
            weights2 = neuron_weights(g2, u2, spec2.second, scale2).reshape(n, channels, -1)[:, chunk]
            slopes = neuron_slopes(preactivation, spec.first, scale)  # c_j sigma'(u_j), inside J_{j,q}
            patches = neuron_inputs(inputs, layer) if patches is None else patches
        else:  # J only at the drawn positions q, from x~ and the slopes gathered at their taps q + k
            taps, inside = depthwise_taps(depthwise, grid, index2)  # [Q, K]
            weights2 = neuron_weights(values_at(g2, index2, chunk), values_at(u2, index2, chunk), spec2.second,
                                      scale2[chunk]) * factor2
            slopes = neuron_slopes(values_at(preactivation, taps, chunk), spec.first,
                                   scale[chunk]) * inside.to(preactivation.dtype)  # [N, c, Q, K], zero in the padding
            tap_inputs = neuron_inputs_at(inputs, layer, taps)  # [N, d, Q, K]
        d = (patches if index2 is None else tap_inputs).shape[1]
        jacobian_elements = n * d * weights2.shape[2]  # one neuron's J: [N, d, Q]
        step = max(1, chunk_elements // jacobian_elements)
        for start in range(chunk.start, chunk.stop, step):
            part = slice(start, min(chunk.stop, start + step))
            local = slice(part.start - chunk.start, part.stop - chunk.start)
            if index2 is None:
                jacobian = depthwise_jacobian(patches, slopes, None, depthwise, grid, part)
            else:
                kernel = depthwise.weight[part].detach().reshape(part.stop - part.start, -1)
                jacobian = depthwise_jacobian_from_taps(tap_inputs, slopes[:, local], kernel)
            weighted_gram(jacobian, weights2[:, local], chunk_elements, out=sums[local], alpha=alpha,
                          product_dtype=product_dtype)
