"""Baseline arms to compare splitting against: NNI's pruners, network slimming, random/new growth, width search.

* :mod:`.pruning`: prune a trained full-width model to a parameter ratio with NNI 3.0's pruners
  (``L1NormPruner``, ``SlimPruner``, ``FPGMPruner``, ``TaylorPruner``) or network slimming
  (``"bn_slim"``), physically shrunk by NNI's ``ModelSpeedup``.
* :mod:`.growth`: random splitting, new randomly initialised neurons, re-initialisation for training
  from scratch, a uniform width multiplier, and per-layer width search spaces for NNI's tuners and
  ``nni.nas``.

Nothing is imported from NNI until a function needs it.
"""
from nni_splitting.baselines.growth import (NEW_NEURON_INITS, SEARCH_SPACE_MODELS, WIDTH_CHOICES, add_new_neurons, load_search_space,
                     random_split, random_splits, reinitialize, uniform_width_model, validate_width_space,
                     width_model_space, width_search_space, widths_from_params)
from nni_splitting.baselines.pruning import (PRUNERS, PruneInfo, apply_masks, bn_slim_masks, prunable_groups, prune_to_ratio,
                      pruning_config, widths_of)

__all__ = [
    "PRUNERS", "PruneInfo", "prune_to_ratio", "prunable_groups", "pruning_config", "bn_slim_masks", "apply_masks",
    "widths_of",
    "random_splits", "random_split", "add_new_neurons", "NEW_NEURON_INITS", "reinitialize", "uniform_width_model",
    "width_search_space", "widths_from_params", "load_search_space", "validate_width_space", "width_model_space",
    "WIDTH_CHOICES", "SEARCH_SPACE_MODELS",
]
