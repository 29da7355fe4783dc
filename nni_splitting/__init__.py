"""nni-splitting: splitting steepest descent (Liu, Wu & Wang, NeurIPS 2019) for PyTorch and NNI.

Grow a network by splitting the neurons whose splitting matrix has the most negative minimum
eigenvalue, along its eigenvector::

    from nni_splitting import compute_splitting, select_neurons, apply_splits
    splits = compute_splitting(model, loss_fn, batches)
    plan = select_neurons(splits, max_splits=8)
    grown = apply_splits(model, splits, plan, epsilon=1e-2)
"""
from .counting import count_model, neuron_costs
from .graph import NeuronGroup, find_neuron_groups, trace_model
from .selection import select_neurons
from .energy import select_energy_aware
from .splitting import LayerSplitting, compute_splitting, load_splits, save_splits
from .surgery import apply_splits

__all__ = [
    "compute_splitting",
    "select_neurons",
    "select_energy_aware",
    "apply_splits",
    "LayerSplitting",
    "NeuronGroup",
    "save_splits",
    "load_splits",
    "count_model",
    "neuron_costs",
    "find_neuron_groups",
    "trace_model",
]

__version__ = "0.1.0"
