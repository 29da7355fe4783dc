"""The one training loop of nni-splitting: :class:`Recipe` + :func:`fit`, and :func:`evaluate`.

Trials, every comparison arm, the grower, the pruners' NNI evaluator and the paper scripts train
through :func:`fit`, so that differences between arms come from the architecture and its
initialisation, not from the loop.  The recipe is the standard one for images: SGD with momentum
and weight decay, a cosine or step schedule (fresh optimizer every call: every growth round starts
its own schedule, as in the paper's official code), an optional linear warm-up, and random crop
with 4-pixel padding + horizontal flip for CIFAR-size inputs (``augment="auto"``)::

    from nni_splitting.common.training import Recipe, fit, evaluate
    recipe = Recipe(epochs=30, lr=0.1, schedule="step", weight_decay=1e-4)
    history = fit(model, train_loader, recipe, val_loader=val_loader, seed=0)
    accuracy = evaluate(model, test_loader)

:func:`train` is the keyword form of the same loop; :func:`torch_evaluator` wraps the same step in
NNI 3.0's ``TorchEvaluator`` for the compressors that train through an evaluator (``SlimPruner``,
``TaylorPruner``).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

__all__ = ["Recipe", "fit", "train", "evaluate", "evaluate_loss_accuracy", "torch_evaluator",
           "seed_everything", "augment_batch", "SCHEDULES", "AUGMENTATIONS"]

logger = logging.getLogger(__name__)

SCHEDULES = ("cosine", "step", "constant")
AUGMENTATIONS = ("auto", "crop_flip", "none")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How to train one network (one growth round, one arm).

    Parameters
    ----------
    epochs : int
        Passes over the training loader.
    lr, momentum, weight_decay, nesterov
        SGD settings; ``weight_decay`` applies to every parameter.
    schedule : {"cosine", "step", "constant"}
        ``"cosine"`` anneals ``lr`` to 0 over all steps; ``"step"`` multiplies it by ``gamma`` at each
        of ``milestones`` (fractions of ``epochs``; the official recipe: 160 epochs, x0.1 at 80 and 120).
    milestones : sequence of float
        Fractions of the epochs at which the step schedule decays (default 0.5 and 0.75).
    gamma : float
        Decay factor of the step schedule.
    warmup_epochs : float
        Linear warm-up from ``lr / 10`` over this many epochs (0: none).
    augment : {"auto", "crop_flip", "none"}
        ``"crop_flip"``: random crop with ``crop_padding`` pixels of zero padding + horizontal flip,
        on the batch's device. ``"auto"`` (default) does it for 3-channel inputs of at least 32x32
        (CIFAR size) and nothing otherwise (digits, MNIST, speech features).
    crop_padding : int
        Padding of the random crop.
    """

    epochs: int = 8
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "cosine"
    milestones: Tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    augment: str = "auto"
    crop_padding: int = 4

    def __post_init__(self):
        _check_positive(self.epochs, "epochs", integer=True)
        _check_positive(self.lr, "lr")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r} is not one of {SCHEDULES}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment={self.augment!r} is not one of {AUGMENTATIONS}")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise ValueError(f"momentum={self.momentum!r} must be in [0, 1) and weight_decay={self.weight_decay!r} >= 0")
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma!r}")
        milestones = tuple(float(m) for m in self.milestones)
        if any(not 0 < m < 1 for m in milestones) or list(milestones) != sorted(milestones):
            raise ValueError(f"milestones must be increasing fractions in (0, 1), got {self.milestones!r}")
        object.__setattr__(self, "milestones", milestones)
        if isinstance(self.warmup_epochs, bool) or not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"warmup_epochs must be in [0, epochs={self.epochs}), got {self.warmup_epochs!r}")
        if isinstance(self.crop_padding, bool) or not isinstance(self.crop_padding, int) or self.crop_padding < 0:
            raise ValueError(f"crop_padding must be an int >= 0, got {self.crop_padding!r}")

    def replace(self, **changes) -> "Recipe":
        """A copy with ``changes`` (validated)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, settings: Dict[str, Any]) -> "Recipe":
        """The recipe of the known keys of ``settings`` (other keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in settings.items() if k in names and v is not None}
        if "milestones" in values:
            values["milestones"] = tuple(values["milestones"])
        return cls(**values)


def seed_everything(seed: int) -> None:
    """Seed torch's CPU (and CUDA, when present) generators and Python's ``random``."""
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
    return batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)


def _check_positive(value, what: str, integer: bool = False):
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive {'int' if integer else 'number'}, got {value!r}")
    return value


def augment_batch(inputs: torch.Tensor, padding: int = 4, flip: bool = True,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random crop of ``inputs`` ``[B, C, H, W]`` after ``padding`` zero pixels per side, and a random
    horizontal flip of half the images; one draw per image, computed on the batch's device."""
    if inputs.dim() != 4:
        raise ValueError(f"augment_batch needs [B, C, H, W] images, got shape {tuple(inputs.shape)}")
    batch, _, height, width = inputs.shape
    out = inputs
    if padding > 0:
        padded = F.pad(inputs, (padding, padding, padding, padding))
        shift = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator).to(inputs.device)
        rows = (torch.arange(height, device=inputs.device)[None, :] + shift[0][:, None])   # [B, H]
        cols = (torch.arange(width, device=inputs.device)[None, :] + shift[1][:, None])    # [B, W]
        index = torch.arange(batch, device=inputs.device)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        mask = (torch.rand(batch, generator=generator) < 0.5).to(inputs.device)
        out = torch.where(mask[:, None, None, None], out.flip(-1), out)
    return out.contiguous()


def _wants_augmentation(recipe: Recipe, inputs: torch.Tensor) -> bool:
    if recipe.augment == "none":
        return False
    if recipe.augment == "crop_flip":
        return True
    return inputs.dim() == 4 and inputs.shape[1] == 3 and min(inputs.shape[-2:]) >= 32


def _lr_factor(recipe: Recipe, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Multiplier of ``recipe.lr`` at optimizer step ``step`` (warm-up x schedule)."""
    epoch = step / max(steps_per_epoch, 1)
    warmup = 1.0
    if recipe.warmup_epochs and epoch < recipe.warmup_epochs:
        warmup = 0.1 + 0.9 * epoch / recipe.warmup_epochs
    if recipe.schedule == "cosine":
        return warmup * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    if recipe.schedule == "step":
        passed = sum(1 for m in recipe.milestones if epoch >= m * recipe.epochs)
        return warmup * recipe.gamma ** passed
    return warmup


def _optimizer_step(optimizer: torch.optim.Optimizer, objective: torch.Tensor) -> None:
    """One SGD step on ``objective``: the step shared by :func:`fit` and :func:`torch_evaluator`."""
    optimizer.zero_grad(set_to_none=True)
    objective.backward()
    optimizer.step()


def fit(model: nn.Module, loader: Iterable, recipe: Optional[Recipe] = None, *, val_loader: Optional[Iterable] = None,
        report: Optional[Callable[[dict], None]] = None,
        loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
        regularizer: Optional[Callable[[nn.Module], torch.Tensor]] = None, max_steps: Optional[int] = None,
        seed: Optional[int] = None, device=None, progress: bool = True) -> Dict[str, Any]:
    """Train ``model`` in place by ``recipe`` with a fresh SGD optimizer; return its history.

    Parameters
    ----------
    model : nn.Module
        Trained in place (left in eval mode afterwards).
    loader : iterable of (inputs, targets)
        Usually a ``DataLoader``; read ``recipe.epochs`` times.
    recipe : Recipe, optional
        Default ``Recipe()``.
    val_loader : iterable, optional
        Evaluated after every epoch; its accuracy is in the history and in ``report``'s argument.
    report : callable, optional
        ``report({"default": val_accuracy, "train_loss": ..., "epoch": ...})`` after every epoch
        (``default`` is ``None`` without ``val_loader``): NNI's intermediate result.
    loss_fn : callable, optional
        ``loss_fn(outputs, targets)`` returning the batch's mean loss; default cross-entropy.
    regularizer : callable, optional
        ``regularizer(model)`` added to every step's loss (e.g. L1 on BatchNorm scales for network
        slimming); not part of the reported loss.
    max_steps : int, optional
        Stop after this many optimizer steps (the schedule spans ``min(max_steps, epochs * len)``).
    seed : int, optional
        Seeds torch's generators, the loader's shuffling generator when it has one (``make_loaders``
        gives it one) and the augmentation, so the same call gives the same model.
    device : optional
        Where to train; default the model's device.
    progress : bool
        A tqdm bar over the epochs with the running loss.

    Returns
    -------
    dict
        ``epoch_loss`` (mean training loss per epoch), ``val_accuracy`` (per epoch, with
        ``val_loader``), ``steps``, ``final_lr``, ``seconds``, ``loss_change`` (relative change of
        the training loss over the last quarter of the epochs: near 0 once it has plateaued).
    """
    recipe = recipe or Recipe()
    if max_steps is not None:
        _check_positive(max_steps, "max_steps", integer=True)
    augment_generator = None
    if seed is not None:
        seed_everything(seed)
        generator = getattr(loader, "generator", None)
        if isinstance(generator, torch.Generator):
            generator.manual_seed(seed)
        augment_generator = torch.Generator().manual_seed(seed + 1)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    device = _device_of(model, device)
    model.to(device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    optimizer = torch.optim.SGD(parameters, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                                nesterov=recipe.nesterov and recipe.momentum > 0)
    try:
        per_epoch = len(loader)  # type: ignore[arg-type]
    except TypeError:
        per_epoch = max_steps or 1
    total = recipe.epochs * per_epoch
    if max_steps is not None:
        total = min(total, max_steps)

    history: Dict[str, Any] = {"epoch_loss": [], "val_accuracy": [], "steps": 0}
    start = time.perf_counter()
    bar = tqdm(range(recipe.epochs), desc="train", disable=not progress, leave=False, mininterval=5.0)
    for epoch in bar:
        model.train()
        total_loss, seen = 0.0, 0
        for batch in loader:
            inputs, targets = _to(batch, device)
            if _wants_augmentation(recipe, inputs):
                inputs = augment_batch(inputs, recipe.crop_padding, generator=augment_generator)
            lr = recipe.lr * _lr_factor(recipe, history["steps"], total, per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = loss_fn(model(inputs), targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at step {history['steps']} "
                                         f"(lr={lr:.4g})")
            _optimizer_step(optimizer, loss + regularizer(model) if regularizer is not None else loss)
            history["steps"] += 1
            total_loss += loss.item() * len(targets)
            seen += len(targets)
            if max_steps is not None and history["steps"] >= max_steps:
                break
        history["epoch_loss"].append(total_loss / max(seen, 1))
        val_accuracy = evaluate(model, val_loader, device=device) if val_loader is not None else None
        if val_accuracy is not None:
            history["val_accuracy"].append(val_accuracy)
        bar.set_postfix(loss=f"{history['epoch_loss'][-1]:.4f}", refresh=False)
        logger.info("epoch %d/%d: train loss %.4f%s", epoch + 1, recipe.epochs, history["epoch_loss"][-1],
                    "" if val_accuracy is None else f", val accuracy {val_accuracy:.4f}")
        if report is not None:
            report({"default": val_accuracy, "train_loss": history["epoch_loss"][-1], "epoch": epoch + 1})
        if max_steps is not None and history["steps"] >= max_steps:
            break
    bar.close()
    model.eval()
    losses = history["epoch_loss"]
    quarter = losses[-max(2, len(losses) // 4):]
    history["loss_change"] = (quarter[0] - quarter[-1]) / max(abs(quarter[0]), 1e-12) if len(quarter) > 1 else None
    history["final_lr"] = recipe.lr * _lr_factor(recipe, history["steps"], total, per_epoch)  # after the last step
    history["seconds"] = time.perf_counter() - start
    return history


def train(model: nn.Module, loader: Iterable, epochs: int = 1, lr: float = Recipe.lr, momentum: float = Recipe.momentum,
          weight_decay: float = Recipe.weight_decay, nesterov: bool = Recipe.nesterov, schedule: str = Recipe.schedule,
          loss_fn: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
          regularizer: Optional[Callable[[nn.Module], torch.Tensor]] = None, max_steps: Optional[int] = None,
          seed: Optional[int] = None, device=None, progress: bool = True, augment: str = Recipe.augment) -> Dict[str, Any]:
    """:func:`fit` with the recipe given as keywords (``Recipe(epochs=..., lr=..., ...)``)."""
    recipe = Recipe(epochs=epochs, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                    schedule=schedule, augment=augment)
    return fit(model, loader, recipe, loss_fn=loss_fn, regularizer=regularizer, max_steps=max_steps, seed=seed,
               device=device, progress=progress)


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
    import nni  # deferred: NNI's compression package is heavy and only the pruners need it
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
                _optimizer_step(optimizer, training_step_(batch, model_))
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
