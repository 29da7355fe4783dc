"""nni-splitting: splitting steepest descent (Liu, Wu & Wang, NeurIPS 2019) for PyTorch and NNI.

Grow a network by splitting the neurons whose splitting matrix has the most negative minimum
eigenvalue, along its eigenvector::

    from nni_splitting import compute_splitting, select_neurons, apply_splits
    splits = compute_splitting(model, loss_fn, batches)
    plan = select_neurons(splits, max_splits=8)
    grown = apply_splits(model, splits, plan, epsilon=0.1)

Every selection rule is reachable by name (``select(splits, "lowest_fraction", fraction=0.3)``),
and :class:`SplittingGrower` runs the whole loop NNI-style; the shared defaults are in
:mod:`nni_splitting.common.defaults`.
"""
from nni_splitting.growth.counting import count_model, neuron_costs
from nni_splitting.growth.firefly import FireflyLayer, apply_firefly, compute_firefly, load_firefly, save_firefly
from nni_splitting.graph import NeuronGroup, find_neuron_groups, trace_model
from nni_splitting.growth.grower import SplittingGrower
from nni_splitting.growth.selection import SELECTION_RULES, register_selection_rule, select, select_energy_aware, select_neurons
from nni_splitting.core.splitting import LayerSplitting, compute_splitting, load_splits, save_splits
from nni_splitting.growth.strategies import STRATEGIES, FireflyStrategy, GrowthStrategy, S2DStrategy, make_strategy, register_strategy
from nni_splitting.growth.surgery import apply_splits

__all__ = [
    "compute_splitting",
    "select_neurons",
    "select_energy_aware",
    "select",
    "SELECTION_RULES",
    "register_selection_rule",
    "SplittingGrower",
    "apply_splits",
    "LayerSplitting",
    "NeuronGroup",
    "save_splits",
    "load_splits",
    "count_model",
    "neuron_costs",
    "find_neuron_groups",
    "trace_model",
    "FireflyLayer",
    "compute_firefly",
    "apply_firefly",
    "save_firefly",
    "load_firefly",
    "GrowthStrategy",
    "S2DStrategy",
    "FireflyStrategy",
    "STRATEGIES",
    "register_strategy",
    "make_strategy",
]

__version__ = "0.1.0"
