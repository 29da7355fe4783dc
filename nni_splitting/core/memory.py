"""The memory budget of :func:`~nni_splitting.core.splitting.compute_splitting`: estimates, the check made
before the first forward pass, and the plan of passes over the data.

``memory_limit`` bounds the working memory of every method. Half of it holds the data of one pass
(the exact method's running sums of ``S_j``, the fast method's cached layer data), the other half the
work done on them: the exact method's per-batch temporaries (the batch's unfolded inputs ``x~``, a
flattened copy and ``w x~`` for a chunk of neurons) and then ``eigh`` on a block of matrices; the
fast method's LOBPCG blocks for a group of neurons (three quarters) and the temporaries of its
products (a quarter). Outside the limit: the model, one batch's recorded activations and the
results themselves (``lambda`` and ``v`` at both ends: two ``[n, d]`` per layer, the size of the
layer's weights twice). Per neuron with ``d`` parameters, ``b`` bytes per element, batches of
``N_b`` samples and ``P`` positions:

    exact:  running sum  d^2 b,  eigh  EIGH_MATRICES * d^2 b  (+ LAPACK's workspace, EIGH_WORKSPACE * d^2 b once),
            per batch  BATCH_COPIES * N_b * d * P * b
    fast:   cache  N * (input + output elements per sample) * b per layer,  LOBPCG  LOBPCG_VECTORS * k * d * b
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

__all__ = ["EIGH_MATRICES", "EIGH_WORKSPACE", "LOBPCG_VECTORS", "BATCH_COPIES", "LayerCost", "plan_passes",
           "choose_methods", "format_bytes"]

logger = logging.getLogger(__name__)

#: ``d x d`` matrices per neuron while ``eigh`` runs on a block: the symmetrized copy, the
#: temporary of the symmetrization and the eigenvectors.
EIGH_MATRICES = 3
#: ``d x d`` matrices of LAPACK's ``syevd`` workspace (``1 + 6 d + 2 d^2`` elements) and slack, once per block.
EIGH_WORKSPACE = 3
#: Vectors of length ``d`` per block column held by one neuron's LOBPCG at its peak: ``X, SX, P, SP``
#: kept between iterations, ``R, W, SW``, the basis ``[X W P]`` and ``S [X W P]`` (``3k`` each) and
#: their float64 copies in Rayleigh-Ritz (a float32 solve measured ~29; ``benchmarks/peak_memory.py`` checks the total).
LOBPCG_VECTORS = 32
#: Copies of one batch's unfolded inputs ``[N_b, d, P]`` the exact method holds while it adds a batch:
#: ``x~`` itself, its ``[N_b P, d]`` flattening, and ``w x~`` with its operand for one neuron at least.
BATCH_COPIES = 4


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"  # pragma: no cover


@dataclass(frozen=True)
class LayerCost:
    """What one layer needs under each method, in bytes (see the module docstring)."""

    layer: str
    neurons: int
    d: int
    element_bytes: int
    cache_bytes: int  # the fast method's cached data for all samples
    block: int  # LOBPCG vectors per neuron
    batch_inputs_bytes: int = 0  # one batch's unfolded inputs [N_b, d, P] (the largest batch)

    @property
    def sum_per_neuron(self) -> int:
        return self.d * self.d * self.element_bytes

    def exact_minimum(self) -> int:
        """The least ``memory_limit`` the exact method can work with (one neuron at a time)."""
        # data half: one running sum; work half: a batch's temporaries, then eigh of one matrix with LAPACK's workspace
        return 2 * max(self.sum_per_neuron, (EIGH_MATRICES + EIGH_WORKSPACE) * self.sum_per_neuron,
                       BATCH_COPIES * self.batch_inputs_bytes)

    def exact_chunk_elements(self, work_bytes: int) -> int:
        """Elements of the exact method's ``w x~`` temporary (and its operand) within ``work_bytes``,
        beside the batch's unfolded inputs and their flattening."""
        return max(1, (work_bytes - 2 * self.batch_inputs_bytes) // (2 * self.element_bytes))

    def lobpcg_per_neuron(self) -> int:
        return LOBPCG_VECTORS * self.block * self.d * self.element_bytes

    def fast_minimum(self) -> int:
        """The least ``memory_limit`` the fast method can work with (all samples cached, one neuron solved at a time)."""
        return 2 * max(self.cache_bytes, 4 * self.lobpcg_per_neuron() // 3)

    @staticmethod
    def product_elements(work_bytes: int, element_bytes: int) -> int:
        """Elements of the fast method's product temporaries: a quarter of ``work_bytes``."""
        return max(1, work_bytes // 4 // element_bytes)

    def minimum(self, method: str) -> int:
        return self.exact_minimum() if method == "exact" else self.fast_minimum()

    def eigh_block(self, work_bytes: int) -> int:
        """Matrices per ``eigh`` call within ``work_bytes``."""
        return max(1, (work_bytes - EIGH_WORKSPACE * self.sum_per_neuron) // (EIGH_MATRICES * self.sum_per_neuron))

    def lobpcg_group(self, work_bytes: int) -> int:
        """Neurons per LOBPCG solve within three quarters of ``work_bytes`` (the rest: the products' temporaries)."""
        return max(1, min(self.neurons, (work_bytes - work_bytes // 4) // self.lobpcg_per_neuron()))


def choose_methods(costs: Dict[str, LayerCost], wanted: Dict[str, str], method: str, memory_limit: int) -> Dict[str, str]:
    """Each layer's method, checked against ``memory_limit`` before the first forward pass.

    ``wanted`` is the method asked for per layer (``"auto"`` already resolved by the size rule). Under
    ``"auto"`` a layer that does not fit its method takes the other one when that fits; otherwise (or
    with an explicit method) a ``ValueError`` names the layer, what its method needs and what would fit.
    """
    chosen: Dict[str, str] = {}
    for name, cost in costs.items():
        first = wanted[name]
        other = "fast" if first == "exact" else "exact"
        if cost.minimum(first) <= memory_limit:
            chosen[name] = first
            continue
        if method == "auto" and cost.minimum(other) <= memory_limit:
            logger.info("%s: method %r needs memory_limit >= %s, %r fits: using %r", name, first,
                        format_bytes(cost.minimum(first)), other, other)
            chosen[name] = other
            continue
        raise ValueError(_does_not_fit(cost, first, other, memory_limit))
    return chosen


def _does_not_fit(cost: LayerCost, method: str, other: str, memory_limit: int) -> str:
    detail = (f"its {cost.neurons} neurons have d={cost.d} parameters each: one d x d splitting matrix and its eigh "
              f"take {format_bytes((EIGH_MATRICES + EIGH_WORKSPACE) * cost.sum_per_neuron)}, one batch's unfolded "
              f"inputs {format_bytes(BATCH_COPIES * cost.batch_inputs_bytes)} (smaller batches shrink them)"
              if method == "exact" else
              f"it caches {format_bytes(cost.cache_bytes)} of layer data for the samples and LOBPCG takes "
              f"{format_bytes(cost.lobpcg_per_neuron())} per neuron")
    other_fits = cost.minimum(other) <= memory_limit
    hint = f"method={other!r} {'fits' if other_fits else 'does not fit either'} (needs {format_bytes(cost.minimum(other))})"
    cache_bound = cost.cache_bytes >= cost.lobpcg_per_neuron()  # the fast method's need is its cache
    if (method == "fast" or not other_fits) and cache_bound:
        hint += "; fewer samples (max_batches) shrink the fast method's cache"
    return (f"layer {cost.layer!r} does not fit memory_limit={format_bytes(memory_limit)} with method={method!r}: "
            f"{detail}, so it needs memory_limit >= {format_bytes(cost.minimum(method))} (half for data, half for work); "
            f"{hint}; or pass layers=[...] without it")


def plan_passes(costs: Dict[str, LayerCost], methods: Dict[str, str], memory_limit: int
                ) -> List[List[Tuple[str, Optional[slice]]]]:
    """The passes over the data: each holds at most ``memory_limit / 2`` bytes of data.

    An exact layer costs ``d * d`` elements per neuron (its running sum of ``S``) and may be cut into
    neuron chunks ``(name, slice)``; a fast layer costs its cached data and is one item ``(name, None)``.
    """
    budget = memory_limit // 2
    passes: List[List[Tuple[str, Optional[slice]]]] = [[]]
    used = 0

    def place(item: Tuple[str, Optional[slice]], size: int) -> None:
        nonlocal used
        if passes[-1] and used + size > budget:
            passes.append([])
            used = 0
        passes[-1].append(item)
        used += size

    for name, cost in costs.items():
        if methods[name] == "fast":
            place((name, None), cost.cache_bytes)
            continue
        step = max(1, min(cost.neurons, budget // max(cost.sum_per_neuron, 1)))
        for start in range(0, cost.neurons, step):
            chunk = slice(start, min(cost.neurons, start + step))
            place((name, chunk), (chunk.stop - chunk.start) * cost.sum_per_neuron)
    return passes
