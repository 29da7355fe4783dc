"""A plain, shared training and evaluation loop (SGD + momentum + cosine by default), and its NNI evaluator.

Every arm of the comparison (splitting, pruning, random/new growth, from scratch, width search) is
trained by the same code so that differences come from the architecture and its initialisation, not
from the loop::

    from nni_splitting.training import train, evaluate
    history = train(model, train_loader, epochs=10, lr=0.05, seed=0)
    accuracy = evaluate(model, test_loader)

:func:`torch_evaluator` wraps the same step in NNI 3.0's ``TorchEvaluator`` for the compressors that
train through an evaluator (``SlimPruner``, ``TaylorPruner``, :class:`nni_splitting.grower.SplittingGrower`).
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import torch
import torch.nn as nn

__all__ = ["train", "evaluate", "evaluate_loss_accuracy", "torch_evaluator", "seed_everything", "SCHEDULES"]

logger = logging.getLogger(__name__)

SCHEDULES = ("cosine", "constant")


def seed_everything(seed: int) -> None:
    """Seed torch's CPU (and CUDA, when present) generators and Python's ``random``."""
    import random

    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    random.seed(seed)
    torch.manual_seed(seed)


def _device_of(model: nn.Module, device) -> torch.device:
    if device is not None:
        return torch.device(device)
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _to(batch, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
        raise ValueError(f"a batch must be an (inputs, targets) pair, got {type(batch).__name__}")
    return batch[0].to(device), batch[1].to(device)


def _check_positive(value, what: str, integer: bool = False):
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive {'int' if integer else 'number'}, got {value!r}")
    return value


def train(model: nn.Module, loader: Iterable, epochs: int = 1, lr: float = 0.05, momentum: float = 0.9,
          weight_decay: float = 5e-4, nesterov: bool = False, schedule: str = "cosine",
          loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
          regularizer: Optional[Callable[[nn.Module], torch.Tensor]] = None, max_steps: Optional[int] = None,
          seed: Optional[int] = None, device=None, progress: bool = True) -> Dict[str, Any]:
    """Train ``model`` in place with SGD + momentum and a per-step cosine learning-rate schedule.

    Parameters
    ----------
    model : nn.Module
        Trained in place (left in eval mode afterwards).
    loader : iterable of (inputs, targets)
        Usually a ``DataLoader``; read ``epochs`` times.
    epochs : int
        Passes over ``loader``.
    lr, momentum, weight_decay, nesterov
        SGD settings. ``weight_decay`` applies to every parameter.
    schedule : {"cosine", "constant"}
        ``"cosine"`` anneals the learning rate from ``lr`` to 0 over all steps (updated every step).
    loss_fn : callable, optional
        ``loss_fn(outputs, targets)`` returning the batch's mean loss; default cross-entropy.
    regularizer : callable, optional
        ``regularizer(model)`` returns a scalar added to every step's loss (e.g. an L1 penalty on
        BatchNorm scales for network slimming). It is not part of the reported loss.
    max_steps : int, optional
        Stop after this many optimizer steps (the cosine schedule spans ``min(max_steps, epochs * len)``).
    seed : int, optional
        Seeds torch's generators and, when ``loader`` has one (``make_loaders`` gives it one), the
        loader's shuffling generator, so that the same call gives the same model.
    device : optional
        Where to train; default the model's device.
    progress : bool
        Show a tqdm bar over the epochs with the running loss.

    Returns
    -------
    dict
        ``{"epoch_loss": [mean training loss of each epoch], "steps": int, "final_lr": float, "seconds": float}``.
    """
    _check_positive(epochs, "epochs", integer=True)
    _check_positive(lr, "lr")
    if max_steps is not None:
        _check_positive(max_steps, "max_steps", integer=True)
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is not one of {SCHEDULES}")
    if not 0 <= momentum < 1 or weight_decay < 0:
        raise ValueError(f"momentum={momentum!r} must be in [0, 1) and weight_decay={weight_decay!r} >= 0")
    if seed is not None:
        seed_everything(seed)
        generator = getattr(loader, "generator", None)
        if isinstance(generator, torch.Generator):
            generator.manual_seed(seed)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    device = _device_of(model, device)
    model.to(device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    optimizer = torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                nesterov=nesterov and momentum > 0)
    try:
        per_epoch = len(loader)  # type: ignore[arg-type]
    except TypeError:
        per_epoch = None
    total = epochs * per_epoch if per_epoch else max_steps
    if max_steps is not None and total is not None:
        total = min(total, max_steps)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total))
                 if schedule == "cosine" and total else None)

    from tqdm.auto import tqdm

    history: Dict[str, Any] = {"epoch_loss": [], "steps": 0}
    start = time.perf_counter()
    bar = tqdm(range(epochs), desc="train", disable=not progress, leave=False)
    model.train()
    for _ in bar:
        total_loss, seen = 0.0, 0
        for batch in loader:
            inputs, targets = _to(batch, device)
            loss = loss_fn(model(inputs), targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at step {history['steps']} (lr={lr})")
            objective = loss + regularizer(model) if regularizer is not None else loss
            optimizer.zero_grad(set_to_none=True)
            objective.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            history["steps"] += 1
            total_loss += loss.item() * len(targets)
            seen += len(targets)
            if max_steps is not None and history["steps"] >= max_steps:
                break
        history["epoch_loss"].append(total_loss / max(seen, 1))
        bar.set_postfix(loss=f"{history['epoch_loss'][-1]:.4f}")
        if max_steps is not None and history["steps"] >= max_steps:
            break
    model.eval()
    history["final_lr"] = optimizer.param_groups[0]["lr"]
    history["seconds"] = time.perf_counter() - start
    logger.info("trained %d steps in %.1fs; epoch losses %s", history["steps"], history["seconds"],
                [round(x, 4) for x in history["epoch_loss"]])
    return history


@torch.no_grad()
def evaluate_loss_accuracy(model: nn.Module, loader: Iterable, loss_fn=None, device=None) -> Tuple[float, float]:
    """``(mean loss, accuracy)`` of ``model`` over ``loader`` in eval mode (the mode is restored).

    ``loss_fn(outputs, targets)`` returns a batch's mean loss (default cross-entropy).
    """
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    device = _device_of(model, device)
    was_training = model.training
    model.eval()
    total_loss, correct, seen = 0.0, 0, 0
    try:
        for batch in loader:
            inputs, targets = _to(batch, device)
            outputs = model(inputs)
            total_loss += loss_fn(outputs, targets).item() * len(targets)
            correct += (outputs.argmax(dim=1) == targets).sum().item()
            seen += len(targets)
    finally:
        model.train(was_training)
    if seen == 0:
        raise ValueError("the loader is empty: nothing to evaluate")
    return total_loss / seen, correct / seen


def evaluate(model: nn.Module, loader: Iterable, device=None) -> float:
    """Top-1 accuracy in ``[0, 1]`` of ``model`` over ``loader`` (eval mode, no gradients)."""
    return evaluate_loss_accuracy(model, loader, device=device)[1]


def torch_evaluator(model: nn.Module, loader: Iterable, lr: float = 0.01, momentum: float = 0.9,
                    weight_decay: float = 5e-4, loss_fn=None, eval_loader: Optional[Iterable] = None,
                    dummy_input: Optional[torch.Tensor] = None, device=None):
    """NNI 3.0 ``TorchEvaluator`` that trains ``model`` with the same SGD step as :func:`train`.

    The pruners decide how long it trains (``max_steps``/``max_epochs``); with neither, one epoch.
    The learning rate is constant (the pruners' short training phases are not annealed).
    ``evaluating_func`` is :func:`evaluate` on ``eval_loader`` when given.
    """
    import nni
    from nni.compression import TorchEvaluator

    loss_fn = loss_fn or nn.CrossEntropyLoss()
    device = _device_of(model, device)

    def training_step(batch, model_, *args, **kwargs):
        inputs, targets = _to(batch, device)
        return loss_fn(model_(inputs), targets)

    def training_func(model_, optimizers, training_step_, lr_schedulers=None, max_steps=None, max_epochs=None,
                      *args, **kwargs):
        optimizer = optimizers[0] if isinstance(optimizers, (list, tuple)) else optimizers
        epochs = max_epochs if max_epochs else (None if max_steps else 1)
        steps = 0
        model_.train()
        epoch = 0
        while epochs is None or epoch < epochs:
            before = steps
            for batch in loader:
                optimizer.zero_grad()
                loss = training_step_(batch, model_)
                loss.backward()
                optimizer.step()
                steps += 1
                if max_steps is not None and steps >= max_steps:
                    model_.eval()
                    return
            if steps == before:
                raise ValueError("the evaluator's training loader is empty")
            epoch += 1
        model_.eval()

    optimizer = nni.trace(torch.optim.SGD)(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    evaluating_func = (lambda model_: evaluate(model_, eval_loader, device=device)) if eval_loader is not None else None
    if dummy_input is None:
        first = next(iter(loader))
        dummy_input = first[0][:1].to(device)
    return TorchEvaluator(training_func, optimizer, training_step, dummy_input=dummy_input,
                          evaluating_func=evaluating_func)
