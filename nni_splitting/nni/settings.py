"""The trial's settings in one place: defaults, and the one validation every entry point runs.

:data:`TRAIN_DEFAULTS` are the training settings (the tuner's ``trial`` classArg, a lineage's own
settings, a comparison arm's); :data:`ARCH_DEFAULTS` the architecture and lineage keys the tuner sets.
:func:`check_train_settings` validates them (the tuner at start-up, every trial again);
:func:`resolve_params` merges defaults, NNI's parameters and command-line overrides.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

from nni_splitting.common.data import DATASETS
from nni_splitting.common.defaults import EPSILON, GROW_RATIO, METHOD
from nni_splitting.common.importing import is_import_path
from nni_splitting.growth.depth import DEPTH_COSTS
from nni_splitting.growth.offspring import EPSILON_SCALES, SYMMETRY_BREAKING
from nni_splitting.growth.signed import COPIES as SIGNED_COPIES
from nni_splitting.growth.strategies import strategy_class
from nni_splitting.common.training import Recipe

__all__ = ["TRAIN_DEFAULTS", "ARCH_DEFAULTS", "check_train_settings", "resolve_params"]


#: The training recipe's defaults are :class:`~nni_splitting.common.training.Recipe`'s (written once, there).
_RECIPE = Recipe()

#: Training settings (the tuner's ``trial`` classArg overrides them).
TRAIN_DEFAULTS: Dict[str, Any] = {
    "dataset": "digits",       # nni_splitting.common.data.DATASETS, or the user's factory "package.module:function"
    "dataset_args": {},        # keywords of the user's data set factory
    "data_dir": None,          # folder of the data set files (not needed for digits)
    "epochs": _RECIPE.epochs,  # epochs of every trial ...
    "seed_epochs": None,       # ... except the seed network (step 0), when set
    "lr": _RECIPE.lr,          # SGD learning rate (annealed by `schedule` over the trial's epochs)
    "momentum": _RECIPE.momentum,
    "weight_decay": _RECIPE.weight_decay,
    "nesterov": _RECIPE.nesterov,
    "schedule": _RECIPE.schedule,  # "cosine", "step" (x gamma at milestones) or "constant"; fresh optimizer per trial
    "milestones": list(_RECIPE.milestones),  # step schedule: fractions of the epochs
    "gamma": _RECIPE.gamma,
    "warmup_epochs": _RECIPE.warmup_epochs,  # linear warm-up
    "augment": _RECIPE.augment,  # "auto" (random crop pad 4 + flip for CIFAR-size inputs), "crop_flip", "none"
    "batch_size": 64,
    "eval_batch_size": 512,
    "seed": 0,                 # initialisation / shuffling seed (the tuner adds the lineage index)
    "data_seed": 0,            # seed of the validation split: keep it equal across trials
    "val_fraction": 0.1,
    "per_class": None,         # at most this many training examples per class
    "split_batches": 8,        # batches used to compute the splitting matrices ...
    "split_samples": None,     # ... or, when set, this many training images (split_batches is then ignored)
    "split_batch_size": None,  # default: batch_size
    "split_positions": None,   # exact layers: estimate each image's sum over positions from this many drawn ones
    "split_product_dtype": None,  # exact layers: products of the sums in this dtype ("bfloat16"), sums in float32
    "split_image_fraction": None,  # exact layers: each batch's sum over images from a weighted draw of this share
    "split_data": "train",     # "train" (the loss being descended, as in the paper) or "val"
    "num_threads": None,       # torch.set_num_threads
    "device": "auto",          # "auto" (cuda when available), "cpu", "cuda", "cuda:1", ...
    "full_width_multiplier": 1.0,  # the "full" model = this times the model's default widths (the reference of
                                   # params_ratio / flops_ratio, the full arm the pruners start from, uniform's base)
    "growth_strategy": "s2d",     # "s2d" (splitting indexes, the paper), "s3d" (signed splits, nni_splitting.growth.signed),
                                  # "firefly" (splits + new neurons, scored: nni_splitting.growth.firefly), another
                                  # registered name, or a GrowthStrategy class "package.module:Class"
    "s3d_copies": 2,              # s3d: offspring per split neuron, 2 or 3 (three-copy schemes; each split adds two)
    "epsilon_scale": "absolute",  # offspring theta +- eps v ("absolute") or +- eps ||theta|| v ("relative")
    "symmetry_breaking": "none",  # "none", "noise" or "bn_scale" on the appended offspring (nni_splitting.growth.offspring)
    "symmetry_scale": 0.1,        # its size: noise std / ||theta|| per weight * sqrt(d), or the BN scale's 1 + x
    "depth_layers": 0,            # growth steps also insert this many identity-initialised blocks where the loss
                                  # falls most per added parameter (MobileNet models: nni_splitting.growth.depth)
    "depth_cost": "params",       # rank the new blocks' positions per added parameter, or "none": by the score alone
    "retrain_epochs": "matched",  # comparison arms trained from scratch (scratch, uniform, pruned_scratch):
                                  # "matched" = the lineage's total epochs, "round" = one round's `epochs`
}

#: Architecture and lineage keys (set by the tuner).
ARCH_DEFAULTS: Dict[str, Any] = {
    "model": "small_cnn",      # a registered name, or the user's factory / a torchvision name (nni_splitting.growth.networks)
    "model_args": {},          # keywords of the user's model factory
    "weights": "",             # the seed's trained state_dict (a file, read with weights_only=True)
    "widths": None,            # explicit widths of the network to train (a child's grown widths)
    "width_multiplier": 0.25,  # seed network: this times the model's default widths (if widths is None)
    "node_id": "",
    "lineage": 0,
    "step": 0,
    "attempt": 0,
    "parent": "",              # NNI trial id of the parent ("" for a seed)
    "parent_node": "",
    "parent_checkpoint": "",
    "parent_splits": "",
    "split_plan": {},          # {layer name: [neuron indices]}
    "n_split": 0,
    "epsilon": EPSILON,        # nni_splitting.common.defaults (one default per option)
    "grow_ratio": GROW_RATIO,  # the tuner's grow_ratio (Firefly: new-neuron candidates per layer)
    "split_method": METHOD,
    "storage_path": "",        # shared folder (worker view); "" = $NNI_OUTPUT_DIR
}

_INT_KEYS = ("epochs", "batch_size", "eval_batch_size", "seed", "data_seed", "split_batches", "depth_layers")
_OPTIONAL_INT_KEYS = ("seed_epochs", "per_class", "split_batch_size", "num_threads", "split_samples",
                      "split_positions")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_train_settings(settings: Dict[str, Any]) -> Dict[str, Any]:
    """Validate training settings (the ``trial`` classArg); return them merged over the defaults.

    Raises
    ------
    ValueError
        Quoting the bad key or value.
    """
    unknown = sorted(set(settings) - set(TRAIN_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown trial settings {unknown}; known: {sorted(TRAIN_DEFAULTS)}")
    merged = {**TRAIN_DEFAULTS, **settings}
    if merged["dataset"] not in DATASETS and not is_import_path(merged["dataset"]):
        raise ValueError(f"trial.dataset must be one of {list(DATASETS)} or a factory 'package.module:function', "
                         f"got {merged['dataset']!r}")
    if not isinstance(merged["dataset_args"], dict):
        raise ValueError(f"trial.dataset_args must be a mapping, got {merged['dataset_args']!r}")
    if merged["data_dir"] is not None and not isinstance(merged["data_dir"], str):
        raise ValueError(f"trial.data_dir must be a path string, got {merged['data_dir']!r}")
    for key in _INT_KEYS:
        low = 0 if key in ("seed", "data_seed", "depth_layers") else 1
        if not (_is_int(merged[key]) and merged[key] >= low):
            raise ValueError(f"trial.{key} must be an int >= {low}, got {merged[key]!r}")
    for key in _OPTIONAL_INT_KEYS:
        if merged[key] is not None and not (_is_int(merged[key]) and merged[key] >= 1):
            raise ValueError(f"trial.{key} must be an int >= 1 or null, got {merged[key]!r}")
    for key in ("lr", "momentum", "weight_decay"):
        value = merged[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"trial.{key} must be a finite number >= 0, got {value!r}")
    if not (isinstance(merged["val_fraction"], (int, float)) and 0 < merged["val_fraction"] < 1):
        raise ValueError(f"trial.val_fraction must be in (0, 1), got {merged['val_fraction']!r}")
    if not isinstance(merged["device"], str) or not merged["device"]:
        raise ValueError(f"trial.device must be a device string such as 'cpu' or 'cuda', got {merged['device']!r}")
    try:
        Recipe.from_dict({**merged, "epochs": merged["epochs"]})
    except (TypeError, ValueError) as error:
        raise ValueError(f"trial training recipe: {error}") from None
    multiplier = merged["full_width_multiplier"]
    if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) or not 0 < multiplier <= 1:
        raise ValueError(f"trial.full_width_multiplier must be in (0, 1], got {multiplier!r}")
    if merged["retrain_epochs"] not in ("matched", "round"):
        raise ValueError(f"trial.retrain_epochs must be 'matched' or 'round', got {merged['retrain_epochs']!r}")
    try:
        strategy_class(merged["growth_strategy"])
    except ValueError as error:
        raise ValueError(f"trial.growth_strategy: {error}") from None
    if isinstance(merged["s3d_copies"], bool) or merged["s3d_copies"] not in SIGNED_COPIES:
        raise ValueError(f"trial.s3d_copies must be one of {list(SIGNED_COPIES)}, got {merged['s3d_copies']!r}")
    if merged["epsilon_scale"] not in EPSILON_SCALES:
        raise ValueError(f"trial.epsilon_scale must be one of {list(EPSILON_SCALES)}, got {merged['epsilon_scale']!r}")
    if merged["symmetry_breaking"] not in SYMMETRY_BREAKING:
        raise ValueError(f"trial.symmetry_breaking must be one of {list(SYMMETRY_BREAKING)}, "
                         f"got {merged['symmetry_breaking']!r}")
    scale = merged["symmetry_scale"]
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
        raise ValueError(f"trial.symmetry_scale must be a finite number >= 0, got {scale!r}")
    fraction = merged["split_image_fraction"]
    if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
                                 or not 0 < fraction <= 1):
        raise ValueError(f"trial.split_image_fraction must be null or a number in (0, 1], got {fraction!r}")
    if merged["split_product_dtype"] not in (None, "float32", "bfloat16", "float16"):
        raise ValueError(f"trial.split_product_dtype must be null, 'float32', 'bfloat16' or 'float16', "
                         f"got {merged['split_product_dtype']!r}")
    if merged["depth_cost"] not in DEPTH_COSTS:
        raise ValueError(f"trial.depth_cost must be one of {list(DEPTH_COSTS)}, got {merged['depth_cost']!r}")
    if merged["split_data"] not in ("train", "val"):
        raise ValueError(f"trial.split_data must be 'train' or 'val', got {merged['split_data']!r}")
    return merged


def resolve_params(received: Optional[Dict[str, Any]], overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Defaults, then NNI's parameters, then command-line overrides; training settings validated."""
    params = {**ARCH_DEFAULTS, **TRAIN_DEFAULTS, **(received or {}), **(overrides or {})}
    train = check_train_settings({k: params[k] for k in TRAIN_DEFAULTS})
    params.update(train)
    return params
