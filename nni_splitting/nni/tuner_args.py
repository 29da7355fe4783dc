"""The classArgs of :class:`~nni_splitting.nni.tuner.SplittingTuner`: :class:`SplittingArguments` and
their validator (NNI's ``classArgsValidator``), kept apart from the tuner so the CLI, the comparison
and the scheduler check and read them without the tuner's NNI machinery."""
from __future__ import annotations

import math
from typing import Any, Dict, List, NamedTuple, Optional, Union

import torch
from nni import ClassArgsValidator

import nni_splitting.nni.lineage as lin
from nni_splitting.common.defaults import EPSILON, METHOD, check_epsilon
from nni_splitting.common.data import input_shape_of
from nni_splitting.graph import find_neuron_groups, trace_model
from nni_splitting.common.importing import is_import_path
from nni_splitting.models import MODELS, build_model, default_widths, scale_widths
from nni_splitting.models.spec import build_seed, check_traceable
from nni_splitting.nni.history import experiment_references
from nni_splitting.nni.scheduler import RESUME_TIMEOUT_S
from nni_splitting.core.splitting import METHODS
from nni_splitting.nni.settings import check_train_settings
from nni_splitting.growth.strategies import strategy_class

__all__ = ["SplittingArguments", "SplittingClassArgsValidator", "check_lineage_settings", "check_seed", "check_own_seed", "COSTS",
           "TUNER_SELECTIONS", "LINEAGE_KEYS"]

#: Values of the ``selection`` classArg.
TUNER_SELECTIONS = ("negative", "lowest_fraction", "energy")
#: Values of the ``cost`` classArg.
COSTS = ("none", "params", "flops")


class SplittingArguments(NamedTuple):
    """Arguments of :class:`SplittingTuner` (the ``classArgs`` of the experiment config).

    Parameters
    ----------
    model
        Registered model name (:data:`nni_splitting.models.MODELS`), e.g. ``"mobilenet_v1"``; or the
        user's own: an importable factory ``"package.module:function"`` or a torchvision model
        ``"torchvision.models.resnet18"`` (:mod:`nni_splitting.growth.networks`; ``seed_widths`` does not apply).
    model_args
        Keywords of that factory (e.g. ``{num_classes: 10}``).
    weights
        A ``state_dict`` file the seed starts from (read with ``weights_only=True``).
    seed_widths
        Widths of the seed network: a list of ints, or a float multiplier of the model's default
        (full-size) widths.  Default 0.25.
    max_steps
        Growth steps per lineage (the seed is step 0, so a lineage has up to ``max_steps + 1`` trials).
    grow_ratio, max_splits
        Neurons split per step: ``max_splits``, or ``grow_ratio`` times the current number of
        neurons (default 0.3 when neither is set).  At most one may be set.
    max_per_layer
        Cap of split neurons per layer and step.
    threshold
        Only neurons with splitting index below this (<= 0) are split; when none is, the lineage
        has reached a splitting-stable point and stops.
    epsilon
        Splitting step size: offspring weights are ``theta +- epsilon * v_min``.
    method
        ``compute_splitting`` method used by the trials (``"exact"``, ``"fast"``, ``"auto"``).
    selection
        ``"negative"`` (default): the most negative indexes below ``threshold`` (Algorithm 1; a lineage
        with none stops, splitting-stable); ``"lowest_fraction"``: the lowest ones whatever their sign
        (the official code's rule; ``threshold`` is not used).  Both split ``grow_ratio`` /
        ``max_splits`` neurons per step.  ``"energy"``: the energy-aware LP (Wang et al. 2019,
        :mod:`nni_splitting.growth.energy`) choosing among the indexes below ``threshold`` within the cost
        (``cost``, default FLOPs) that the ``"negative"`` rule's splits would add.
    strategy
        ``"s2d"`` (default): trials compute splitting indexes (the paper); ``"firefly"``: trials score
        Firefly candidates, splits and new neurons (:mod:`nni_splitting.growth.firefly`), and the same
        selection picks among them.  Sets the trials' ``growth_strategy``.
    cost
        ``"none"``: rank by index; ``"params"`` / ``"flops"``: rank by index per added parameter /
        FLOP (the trial's ``neuron_costs``).
    budget
        None, a parameter count, or a dict with keys ``params``, ``flops``, ``params_ratio``,
        ``flops_ratio``: no child exceeds it (plans are trimmed with per-neuron costs and checked
        with NNI's counter).
    beam
        Number of lineages grown in parallel, lineage ``i`` with training seed ``trial.seed + i``.
    retries
        Retries of a failed trial from the same parent before falling back (see :class:`SplittingTuner`).
    trial
        Training settings passed to every trial (see :data:`nni_splitting.nni.settings.TRAIN_DEFAULTS`).
    storage_path, local_storage_path
        Shared folder where trials write (worker view) and the same folder on the tuner's machine
        (default: same path).  Unset: trials write to ``$NNI_OUTPUT_DIR`` (local training service).
    resume_timeout
        Seconds a trial NNI re-runs after ``nnictl resume`` may take before it is retried.
    lineage_settings
        One dict per lineage (``beam`` of them) overriding, for that lineage only, training settings
        (keys of ``trial``), ``epsilon``, ``selection``, ``cost`` and ``arm_label`` (its name in the results):
        a sweep of growth settings as one experiment.  An explicit ``seed`` is used as is (not
        ``+ lineage``).
    continue_from
        An earlier experiment (its id, or its folder ``<experimentWorkingDirectory>/<id>``) or a list of them
        (a chain of continuations, oldest first), usually the same config with fewer ``max_steps`` or
        fewer arms: their finished trials are taken as this experiment's own (as
        ``nnictl resume`` would), so its lineages grow on from their tips up to ``max_steps`` and what it
        finished (steps, and a comparison's arms) does not run again.  Its trials' files must still be
        where it wrote them.
    """

    model: str = "small_cnn"
    model_args: Optional[dict] = None
    weights: Optional[str] = None
    seed_widths: Union[List[int], float, None] = 0.25
    max_steps: int = 4
    grow_ratio: Optional[float] = None
    max_splits: Optional[int] = None
    max_per_layer: Optional[int] = None
    threshold: float = 0.0
    epsilon: float = EPSILON
    method: str = METHOD
    selection: str = "negative"
    strategy: str = "s2d"
    cost: str = "none"
    budget: Any = None
    beam: int = 1
    retries: int = 1
    trial: Optional[dict] = None
    storage_path: Optional[str] = None
    local_storage_path: Optional[str] = None
    resume_timeout: float = RESUME_TIMEOUT_S
    lineage_settings: Optional[List[dict]] = None
    continue_from: Union[str, List[str], None] = None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


#: Keys of a ``lineage_settings`` entry besides the training settings.
LINEAGE_KEYS = ("epsilon", "selection", "cost", "arm_label")


def check_lineage_settings(entries, beam: int, trial: dict, selection: str = "negative") -> None:
    """``ValueError`` unless ``entries`` is one dict of known keys per lineage (see :class:`SplittingArguments`)."""
    if not isinstance(entries, (list, tuple)) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"lineage_settings must be a list of dicts (one per lineage), got {entries!r}")
    if len(entries) != beam:
        raise ValueError(f"lineage_settings has {len(entries)} entries but beam={beam}: give one per lineage")
    for number, entry in enumerate(entries):
        own = {k: v for k, v in entry.items() if k not in LINEAGE_KEYS}
        try:
            check_train_settings({**trial, **own})
        except ValueError as error:
            raise ValueError(f"lineage_settings[{number}]: {error}") from None
        if "selection" in entry and entry["selection"] not in TUNER_SELECTIONS:
            raise ValueError(f"lineage_settings[{number}].selection must be one of {list(TUNER_SELECTIONS)}, "
                             f"got {entry['selection']!r}")
        if "cost" in entry and entry["cost"] not in COSTS:
            raise ValueError(f"lineage_settings[{number}].cost must be one of {list(COSTS)}, got {entry['cost']!r}")
        if entry.get("cost", "none") != "none" and entry.get("selection", selection) == "lowest_fraction":
            raise ValueError(f"lineage_settings[{number}]: selection='lowest_fraction' ranks by index only; "
                             f"got cost={entry['cost']!r}")
        if "epsilon" in entry:
            check_epsilon(entry["epsilon"], f"lineage_settings[{number}].epsilon")
        if "arm_label" in entry and not (isinstance(entry["arm_label"], str) and entry["arm_label"]):
            raise ValueError(f"lineage_settings[{number}].arm_label must be a non-empty string")


def check_own_seed(model: str, model_args=None, weights=None, trial=None) -> Dict[str, str]:
    """The user's own seed (a factory or torchvision name) at start-up: it builds, its weights fit, torch.fx
    traces it and it has a splittable layer. Returns ``{layer: reason}`` of the layers growth leaves out
    (residual-coupled, grouped, the classifier); ``ValueError`` naming the problem otherwise."""
    settings = dict(trial or {})
    shape = input_shape_of(settings.get("dataset", "digits"), settings.get("dataset_args"))
    network = build_seed(model, model_args, weights)
    check_traceable(network)
    groups, excluded = find_neuron_groups(trace_model(network.eval(), torch.zeros(2, *shape)))
    if not groups:
        reasons = "; ".join(f"{layer}: {reason}" for layer, reason in excluded.items()) or "it has no Linear/Conv2d layer"
        raise ValueError(f"model {model!r} has no splittable layer ({reasons})")
    return dict(excluded)


def check_seed(model: str, seed_widths) -> None:
    """``ValueError`` unless the seed network of ``model`` builds with ``seed_widths`` (a list of ints, or a
    multiplier of the model's default widths; None: the default widths), e.g. a wrong number of widths.

    Part of the start-up check of the CLI (:func:`nni_splitting.nni.cli.validate_config`), after
    :class:`SplittingClassArgsValidator`; the tuners themselves do not build a model (their unit
    tests grow fake two-layer networks under a registered model's name).

    The network is built on PyTorch's ``meta`` device (no memory, no time); a model that cannot be
    built there is built on the CPU.
    """
    explicit = isinstance(seed_widths, (list, tuple))
    try:
        widths = list(seed_widths) if explicit else scale_widths(model, seed_widths or 1.0)
        try:
            with torch.device("meta"):
                build_model(model, widths=widths)
        except (ValueError, TypeError):
            raise
        except Exception:  # something only the meta device refuses: build it for real
            build_model(model, widths=widths)
    except Exception as error:
        expected = len(default_widths(model)) if model_known(model) else "?"
        raise ValueError(f"the seed network of model {model!r} cannot be built with seed_widths={seed_widths!r} "
                         f"(the model has {expected} width layers): {error}") from None


def model_known(model) -> bool:
    """Whether ``model`` names a registered model."""
    return isinstance(model, str) and model.lower().replace("-", "_") in MODELS


class SplittingClassArgsValidator(ClassArgsValidator):
    """Checks the ``classArgs`` of :class:`SplittingTuner`; raises ``ValueError`` quoting the bad value."""

    def validate_class_args(self, **kwargs):
        known = SplittingArguments._fields
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise ValueError(f"unknown classArgs {unknown} for SplittingTuner; known: {list(known)}")
        args = SplittingArguments(**kwargs)
        if not isinstance(args.model, str) or (args.model.lower().replace("-", "_") not in MODELS
                                               and not is_import_path(args.model)):
            raise ValueError(f"model must be one of {sorted(MODELS)}, an importable factory 'package.module:function' "
                             f"or a torchvision model 'torchvision.models.resnet18', got {args.model!r}")
        if args.model_args is not None and not isinstance(args.model_args, dict):
            raise ValueError(f"model_args must be a mapping of the factory's keywords, got {args.model_args!r}")
        if args.weights is not None and not (isinstance(args.weights, str) and args.weights):
            raise ValueError(f"weights must be the path of a state_dict file, got {args.weights!r}")
        widths = args.seed_widths
        if isinstance(widths, (list, tuple)):
            if not widths or not all(_is_int(w) and w > 0 for w in widths):
                raise ValueError(f"seed_widths must be positive ints, got {widths!r}")
        elif widths is not None and not (_is_number(widths) and widths > 0):
            raise ValueError(f"seed_widths must be a list of ints or a positive multiplier, got {widths!r}")
        if not (_is_int(args.max_steps) and args.max_steps >= 0):
            raise ValueError(f"max_steps must be an int >= 0, got {args.max_steps!r}")
        if args.grow_ratio is not None and args.max_splits is not None:
            raise ValueError(f"give grow_ratio or max_splits, not both "
                             f"(got {args.grow_ratio!r} and {args.max_splits!r})")
        if args.grow_ratio is not None and not (_is_number(args.grow_ratio) and 0 < args.grow_ratio <= 1):
            raise ValueError(f"grow_ratio must be a number in (0, 1] (a neuron splits at most once per step), "
                             f"got {args.grow_ratio!r}")
        for key in ("max_splits", "max_per_layer"):
            value = getattr(args, key)
            if value is not None and not (_is_int(value) and value >= 1):
                raise ValueError(f"{key} must be an int >= 1, got {value!r}")
        if not (_is_number(args.threshold) and args.threshold <= 0):
            raise ValueError(f"threshold must be a number <= 0 (only loss-decreasing splits), got {args.threshold!r}")
        check_epsilon(args.epsilon)
        if args.method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {args.method!r}")
        if args.selection not in TUNER_SELECTIONS:
            raise ValueError(f"selection must be one of {list(TUNER_SELECTIONS)}, got {args.selection!r}")
        if args.selection == "lowest_fraction" and args.cost != "none":
            raise ValueError(f"selection='lowest_fraction' ranks by index only; got cost={args.cost!r}")
        try:
            strategy_class(args.strategy)
        except ValueError as error:
            raise ValueError(f"strategy: {error}") from None
        if args.strategy != "s2d" and (args.trial or {}).get("growth_strategy", args.strategy) != args.strategy:
            raise ValueError(f"strategy={args.strategy!r} but trial.growth_strategy="
                             f"{args.trial['growth_strategy']!r}: give one")
        if args.cost not in COSTS:
            raise ValueError(f"cost must be one of {list(COSTS)}, got {args.cost!r}")
        lin.parse_budget(args.budget)
        if not (_is_int(args.beam) and args.beam >= 1):
            raise ValueError(f"beam must be an int >= 1, got {args.beam!r}")
        if not (_is_int(args.retries) and 0 <= args.retries <= 10):
            raise ValueError(f"retries must be an int in [0, 10], got {args.retries!r}")
        if args.trial is not None and not isinstance(args.trial, dict):
            raise ValueError(f"trial must be a dict of training settings, got {args.trial!r}")
        check_train_settings(args.trial or {})
        for key in ("storage_path", "local_storage_path"):
            value = getattr(args, key)
            if value is not None and not (isinstance(value, str) and value):
                raise ValueError(f"{key} must be a non-empty path string, got {value!r}")
        if not (_is_number(args.resume_timeout) and args.resume_timeout > 0):
            raise ValueError(f"resume_timeout must be a number of seconds > 0, got {args.resume_timeout!r}")
        if args.lineage_settings is not None:
            check_lineage_settings(args.lineage_settings, args.beam, args.trial or {}, args.selection)
        if args.continue_from is not None:
            references = args.continue_from
            if not (isinstance(references, (str, list, tuple)) and references
                    and all(isinstance(r, str) and r for r in experiment_references(references))):
                raise ValueError(f"continue_from must be an experiment id or folder, or a list of them, "
                                 f"got {args.continue_from!r}")
        if args.local_storage_path and not args.storage_path:
            raise ValueError("local_storage_path needs storage_path (the same folder as the trials see it)")
