"""Make NNI 3.0's ``ModelSpeedup`` (and its concrete tracer) work on torch 2.14.

NNI 3.0's concrete tracer, which ``nni.compression.speedup.ModelSpeedup`` and the fx-based
``auto_set_denpendency_group_ids`` use, fails on the torch installed here (upstream issue
microsoft/nni#5768) in two places:

1. ``ConcreteTracer.default_autowrap_leaf_function`` collects every callable of
   ``torch._C._TensorBase``. On torch 2.14 a few of them (``_make_subclass``,
   ``_make_wrapper_subclass``, ``_dtensor__new__``) have ``__module__ = None``, and
   ``ConcreteTracer.trace`` does ``func.__module__.startswith('_')`` on each entry:
   ``AttributeError: 'NoneType' object has no attribute 'startswith'``.
2. After tracing, dead-code elimination patches ``torch.fx.Node.is_impure`` with NNI's
   one-argument ``node_is_impure_wrapper``; torch.fx now calls ``node.is_impure(impure_random)``:
   ``TypeError: Node.is_impure() takes 1 positional argument but 2 were given``.

:func:`apply_nni_compat` removes the ``__module__ is None`` entries from that table (they are
tensor constructors no model forward calls) and replaces the wrapper by one that accepts and
ignores extra arguments. Nothing happens at import: call it explicitly before ``ModelSpeedup``
(:mod:`nni_splitting.baselines.pruning` does). :func:`revert_nni_compat` undoes it.

This module is also the one place that touches NNI's private attributes (each a break on the next NNI
release): binding an evaluator to a model's parameter names, capturing a pruner's metrics to
re-threshold them without re-training, its target spaces and masks, and SlimPruner's learned factors.
"""
from __future__ import annotations

import functools
import logging
from typing import Dict, List, Optional

__all__ = ["apply_nni_compat", "revert_nni_compat", "nni_compat_applied", "compat_problems", "speedup",
           "bind_evaluator", "capture_pruner_metrics", "ratio_spaces", "pruner_masks", "fold_slim_factors"]

logger = logging.getLogger(__name__)

# What apply_nni_compat changed, so that revert_nni_compat can put it back.
_state: Dict[str, object] = {}


def _tracer_module():
    from nni.common.concrete_trace_utils import concrete_tracer

    return concrete_tracer


def _moduleless_leaf_functions(tracer_module) -> Dict[object, tuple]:
    """Entries of the tracer's autowrap table on which ``ConcreteTracer.trace`` calls ``None.startswith``.

    ``trace`` reads ``func.__module__`` for every entry except ``torch.Tensor`` / ``torch``
    builtins (qualified names ``_TensorBase.*`` / ``_VariableFunctionsClass.*``) and method
    descriptors; on torch 2.14 ``TensorBase._make_subclass`` and two others fall through with no module.
    """
    import types

    table = tracer_module.ConcreteTracer.default_autowrap_leaf_function
    return {func: value for func, value in table.items()
            if hasattr(func, "__module__") and func.__module__ is None
            and not str(getattr(func, "__qualname__", "")).startswith(("_TensorBase", "_VariableFunctionsClass"))
            and not isinstance(func, (types.MethodDescriptorType, types.MethodWrapperType))}


def compat_problems() -> List[str]:
    """The known incompatibilities present in the installed NNI / torch (empty: nothing to fix)."""
    module = _tracer_module()
    problems = []
    bad = _moduleless_leaf_functions(module)
    if bad:
        names = sorted(getattr(f, "__qualname__", repr(f)) for f in bad)
        problems.append(f"concrete tracer autowrap table has functions with __module__=None: {names}")
    import inspect

    import torch.fx

    # NNI's wrapper is functools.wraps'ed around Node.is_impure: look at its own signature
    parameters = inspect.signature(module.node_is_impure_wrapper, follow_wrapped=False).parameters.values()
    takes_extra = len(parameters) > 1 or any(p.kind is p.VAR_POSITIONAL for p in parameters)
    torch_wants_extra = len(inspect.signature(torch.fx.Node.is_impure).parameters) > 1
    if torch_wants_extra and not takes_extra:
        problems.append("NNI's node_is_impure_wrapper takes one argument but torch.fx.Node.is_impure takes more")
    return problems


def nni_compat_applied() -> bool:
    """Whether :func:`apply_nni_compat` is in effect."""
    return bool(_state)


def apply_nni_compat() -> List[str]:
    """Patch NNI's concrete tracer for torch 2.14 (idempotent); return what was changed.

    Returns
    -------
    list of str
        One line per change (empty when already applied or nothing needed fixing).
    """
    if _state:
        return []
    module = _tracer_module()
    changes: List[str] = []
    removed = _moduleless_leaf_functions(module)
    table = module.ConcreteTracer.default_autowrap_leaf_function
    for func in removed:
        del table[func]
    if removed:
        changes.append(f"removed {len(removed)} autowrap leaf function(s) with __module__=None: "
                       f"{sorted(getattr(f, '__qualname__', repr(f)) for f in removed)}")
    original = module.node_is_impure_wrapper

    @functools.wraps(original)
    def node_is_impure_wrapper(node, *args, **kwargs):  # torch.fx passes impure_random: ignore it
        return original(node)

    module.node_is_impure_wrapper = node_is_impure_wrapper
    changes.append("node_is_impure_wrapper now accepts and ignores extra arguments")
    _state.update(removed=removed, wrapper=original)
    for change in changes:
        logger.info("nni compat: %s", change)
    return changes


def revert_nni_compat() -> bool:
    """Undo :func:`apply_nni_compat`; return whether anything was reverted."""
    if not _state:
        return False
    module = _tracer_module()
    module.ConcreteTracer.default_autowrap_leaf_function.update(_state["removed"])
    module.node_is_impure_wrapper = _state["wrapper"]
    _state.clear()
    return True


def speedup(model, dummy_input, masks, logger_: Optional[logging.Logger] = None):
    """``ModelSpeedup(model, dummy_input, masks).speedup_model()`` with the shim applied; returns the model.

    The model is changed in place (NNI replaces the masked modules by smaller dense ones) and put in
    eval mode for the trace; its train/eval mode is restored afterwards.
    """
    from nni.compression.speedup import ModelSpeedup

    apply_nni_compat()
    was_training = model.training
    model.eval()
    try:
        ModelSpeedup(model, dummy_input, masks, logger=logger_ or _quiet_logger()).speedup_model()
    finally:
        model.train(was_training)
    return model


def _quiet_logger() -> logging.Logger:
    quiet = logging.getLogger(__name__ + ".speedup")
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())
        quiet.propagate = False
    return quiet


# ---------------------------------------------------------------------------- NNI 3.0's private attributes


def bind_evaluator(evaluator, model, always: bool = False) -> None:
    """Record ``model``'s parameter names in an NNI evaluator (NNI maps optimizer parameters by identity to
    the names of the model it was built on; the pruners and the grower train copies with the same names).
    Unless ``always``, an evaluator already bound is left as it is."""
    if always or not evaluator._initialization_complete:
        evaluator._init_optimizer_helpers(model)


def capture_pruner_metrics(pruner) -> Dict[str, object]:
    """Make ``pruner.compress()`` keep its metrics in the returned dict (key ``"metrics"``), so that masks
    at other sparse ratios can be made from them without running the pruner again."""
    captured: Dict[str, object] = {}
    calculate = pruner._calculate_metrics

    def capture(data):
        captured["metrics"] = calculate(data)
        return captured["metrics"]

    pruner._calculate_metrics = capture
    return captured


def ratio_spaces(pruner) -> list:
    """The pruner's target spaces pruned by a sparse ratio (weights; biases follow through NNI's ``align``)."""
    return [space for per_module in pruner._target_spaces.values() for space in per_module.values()
            if space.sparse_ratio is not None]


def pruner_masks(pruner, metrics):
    """NNI's masks of ``metrics`` at the target spaces' current sparse ratios."""
    return pruner._generate_sparsity(metrics)


def fold_slim_factors(pruner) -> None:
    """Multiply SlimPruner's learned factors into the wrapped weights (NNI's unwrap would drop them)."""
    import torch

    for spaces in pruner._target_spaces.values():
        for target_name, space in spaces.items():
            factor = getattr(space._wrapper, f"{target_name}_slim_factor", None)
            if factor is None or space.target is None:
                continue
            if space._scaler is not None:
                factor = space._scaler.expand(factor.detach(), space.shape, keepdim=True, full_expand=False)
            with torch.no_grad():
                space.target.mul_(factor.detach())
