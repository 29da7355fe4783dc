"""The converged CIFAR-10 protocol on one GPU, in one process (issues 11 and 25): all 50,000 images.

    python experiments/cifar_gpu.py --data-dir data/cifar10 --out results/cifar_gpu

Sized for one H200 in under 10 minutes with the defaults (bf16 autocast + TF32, channels-last, the
whole data set and the crop+flip augmentation on the device, no DataLoader workers).  What it runs,
for one seed (``--seed``):

* ``full``: the strong full model (``--model``, default ``mobilenet_cifar``: MobileNetV1's first six
  depthwise-separable blocks, at ``--full-width`` 0.75) trained one round (``--epochs``, step
  schedule x0.1 at 50 % and 75 %, SGD lr 0.1, momentum 0.9, wd 1e-4, batch ``--batch-size``);
* ``splitting``: the seed (the full model's own shape at ``--seed-multiplier`` of its default widths;
  ``--seed-width N``: N channels in every layer instead) trained one round, then ``--rounds`` times:
  splitting matrices from ``--split-samples`` training images, the lowest ``--fraction`` of all
  neurons by splitting index split (the official rule), epsilon ``--epsilon``, and a fresh round;
* at every growth step, the baselines a user would run instead (``--arms``), each at the grown
  network's parameter count: ``scratch_round`` (the found architecture from scratch, one round),
  ``uniform_round`` (the full model's family at a uniform width multiplier, one round),
  ``plain_equal_width`` (the equal-width 14-layer MobileNetV1 widened) and ``plain_resnet20``
  (ResNet-20 at a uniform width multiplier), one round each, and ``l1`` / ``fpgm`` / ``taylor``
  (NNI's pruners on the full model at the same parameter ratio, then ``--finetune-epochs``).

It writes ``results.csv`` in the columns of :data:`nni_splitting.nni.report.COLUMNS` (so ``nni-splitting
report`` tables and plots read it) and ``phases.csv``: per growth step, the splitting phase's seconds
against one training epoch of the same model (the phase-cost target of issue 11 is a ratio <= 1).
``--device cpu`` with ``--per-class`` and small ``--epochs`` is the CPU smoke test (tests/test_gpu_script.py).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import logging
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn

from nni_splitting import apply_splits, compute_splitting, count_model, select
from nni_splitting.baselines.growth import uniform_width_model
from nni_splitting.baselines.pruning import prune_to_ratio
from nni_splitting.common.data import load_dataset
from nni_splitting.models import build_model, current_widths, scale_widths
from nni_splitting.nni.report import COLUMNS
from nni_splitting.common.training import Recipe, evaluate, fit

logger = logging.getLogger("cifar_gpu")
#: the plain families beside the full model's own: arm -> (model, base widths or None for its defaults)
PLAIN_FAMILIES = {"plain_equal_width": ("mobilenet_v1", [12] * 14), "plain_resnet20": ("resnet20", None)}
PRUNERS = ("l1", "fpgm", "taylor")


class DeviceLoader:
    """Batches of tensors that already live on the device; reshuffled (seeded) on every pass.

    ``fit`` seeds ``generator`` and augments each batch on its device, so nothing leaves the GPU.
    """

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int, shuffle: bool,
                 limit: Optional[int] = None):
        self.inputs, self.targets = inputs[:limit], targets[:limit]
        self.batch_size, self.shuffle = batch_size, shuffle
        self.generator = torch.Generator().manual_seed(0)

    def __len__(self) -> int:
        return (len(self.targets) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.targets)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = order.to(self.inputs.device)
        for start in range(0, n, self.batch_size):
            index = order[start:start + self.batch_size]
            yield self.inputs[index], self.targets[index]


def _autocast(device: torch.device, precision: str):
    if device.type == "cuda" and precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _prepare(model: nn.Module, device: torch.device) -> nn.Module:
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


def train_round(model: nn.Module, loaders, recipe: Recipe, device: torch.device, precision: str,
                seed: int) -> Tuple[float, float, float]:
    """One round of ``recipe`` (fresh SGD) -> (val accuracy, test accuracy, seconds per epoch)."""
    model = _prepare(model, device)
    with _autocast(device, precision):
        history = fit(model, loaders["train"], recipe, seed=seed, device=device, progress=False)
        val, test = evaluate(model, loaders["val"], device=device), evaluate(model, loaders["test"], device=device)
    return val, test, history["seconds"] / max(1, recipe.epochs)


def _row(arm: str, step: int, model: nn.Module, dummy: torch.Tensor, reference: Tuple[int, int], test: float,
         val: float, epochs: int, wall: float, seed: int) -> Dict[str, object]:
    flops, params = count_model(copy.deepcopy(model).float().cpu().eval(), dummy)
    method = {"splitting": "splitting", "full": "full", "scratch_round": "retrain"}.get(
        arm, "pruning" if arm in PRUNERS else "width")  # the families of nni_splitting.nni.claims
    return {"arm": arm, "method": method, "seed": seed, "step": step, "params": params, "flops": flops,
            "params_ratio": params / reference[1], "flops_ratio": flops / reference[0], "accuracy": test,
            "val_accuracy": val, "epochs": epochs, "wall_time": wall, "experiment_id": "cifar_gpu",
            "trial_id": f"{arm}-s{step}", "status": "SUCCEEDED",
            "widths": ",".join(str(w) for w in current_widths(model))}


def _write(rows: List[dict], path: Path, columns: List[str]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True, help="CIFAR-10 (pickle batches or an ImageFolder train/ test/ tree)")
    p.add_argument("--out", default="results/cifar_gpu")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="autocast on CUDA (TF32 matmuls always)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-class", type=int, default=None, help="training images per class (default: all 4,900)")
    p.add_argument("--val-fraction", type=float, default=0.02)
    p.add_argument("--model", default="mobilenet_cifar", help="family of the full model and of the seed")
    p.add_argument("--full-width", type=float, default=0.75, help="width multiplier of the full model")
    p.add_argument("--seed-multiplier", type=float, default=0.125, help="the seed: the full model's shape at this "
                   "multiplier of the family's default widths")
    p.add_argument("--seed-width", type=int, default=None, help="instead: channels of every layer of the seed "
                   "(the official equal-width seed: 32 with --model mobilenet_v1)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--epochs", type=int, default=30, help="epochs of one round")
    p.add_argument("--finetune-epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--fraction", type=float, default=0.3, help="lowest fraction of all neurons split per round")
    p.add_argument("--epsilon", type=float, default=0.01)
    p.add_argument("--split-samples", type=int, default=10000)
    p.add_argument("--method", default="auto", help="compute_splitting method (exact, fast, auto)")
    p.add_argument("--arms", default="scratch,uniform,plain_equal_width,plain_resnet20,l1,fpgm,taylor",
                   help="baselines at every growth step (comma list)")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("--device cuda but no CUDA device is visible", file=sys.stderr)
            return 2
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    try:
        data = load_dataset("cifar10", args.data_dir, val_fraction=args.val_fraction, per_class=args.per_class,
                            seed=args.seed)
    except FileNotFoundError as error:
        print(error, file=sys.stderr)
        return 2
    tensors = {name: getattr(data, name).tensors for name in ("train", "val", "test")}
    tensors = {k: (x.to(device), y.to(device)) for k, (x, y) in tensors.items()}
    loaders = {"train": DeviceLoader(*tensors["train"], args.batch_size, shuffle=True),
               "val": DeviceLoader(*tensors["val"], 1024, shuffle=False),
               "test": DeviceLoader(*tensors["test"], 1024, shuffle=False)}
    split_batches = DeviceLoader(*tensors["train"], 500, shuffle=False, limit=args.split_samples)
    # Taylor's scores train on the CPU copy of the full model that the pruners take
    pruning_batches = DeviceLoader(*getattr(data, "train").tensors, args.batch_size, shuffle=True)
    dummy = torch.zeros(1, *data.input_shape)
    recipe = Recipe(epochs=args.epochs, lr=args.lr, momentum=0.9, weight_decay=1e-4, schedule="step",
                    milestones=(0.5, 0.75))
    finetune = Recipe(epochs=args.finetune_epochs, lr=0.01, momentum=0.9, weight_decay=1e-4, schedule="cosine")
    logger.info("data on %s: %d train / %d val / %d test, %.1f s", device, len(data.train), len(data.val),
                len(data.test), time.time() - started)
    arms = [a for a in args.arms.split(",") if a]
    model_name = args.model
    full_widths = scale_widths(model_name, args.full_width)
    reference = count_model(build_model(model_name, widths=full_widths).eval(), dummy)
    rows: List[dict] = []
    phases: List[dict] = []

    def record(row):
        rows.append(row)
        logger.info("%s step %s: %d params (%.1f %%), test %.4f (%.0f s in)", row["arm"], row["step"],
                    row["params"], 100 * row["params_ratio"], row["accuracy"], time.time() - started)
        _write(rows, out / "results.csv", COLUMNS)

    torch.manual_seed(args.seed)
    full = build_model(model_name, widths=full_widths)
    t0 = time.time()
    val, test, _ = train_round(full, loaders, recipe, device, args.precision, args.seed)
    record(_row("full", 0, full, dummy, reference, test, val, args.epochs, time.time() - t0, args.seed))

    torch.manual_seed(args.seed)
    seed_widths = ([args.seed_width] * len(full_widths) if args.seed_width else
                   scale_widths(model_name, args.seed_multiplier))
    model = build_model(model_name, widths=seed_widths)
    epochs, wall = 0, 0.0
    for step in range(args.rounds + 1):
        if step:
            t0 = time.time()
            model = model.float().eval()
            splits = compute_splitting(model, nn.CrossEntropyLoss(), split_batches, method=args.method)
            phase = time.time() - t0
            plan = select(splits, "lowest_fraction", fraction=args.fraction)
            model = apply_splits(model, splits, plan, epsilon=args.epsilon)
            phases.append({"step": step, "split_seconds": phase, "epoch_seconds": epoch_seconds,
                           "ratio": phase / epoch_seconds, "split_samples": args.split_samples,
                           "n_split": sum(len(v) for v in plan.values())})
            _write(phases, out / "phases.csv", list(phases[0]))
            wall += phase
        t0 = time.time()
        val, test, epoch_seconds = train_round(model, loaders, recipe, device, args.precision, args.seed + step)
        epochs, wall = epochs + args.epochs, wall + time.time() - t0
        record(_row("splitting", step, model, dummy, reference, test, val, epochs, wall, args.seed))
        if step == 0:
            continue
        grown = rows[-1]["params"]
        if "scratch" in arms:
            t0 = time.time()
            torch.manual_seed(args.seed)
            scratch = build_model(model_name, widths=current_widths(model))
            val, test, _ = train_round(scratch, loaders, recipe, device, args.precision, args.seed)
            record(_row("scratch_round", step, scratch, dummy, reference, test, val, args.epochs, time.time() - t0,
                        args.seed))
        plains = {"uniform_round": (model_name, full_widths)} if "uniform" in arms else {}
        plains.update({arm: family for arm, family in PLAIN_FAMILIES.items() if arm in arms})
        for arm, (family, base) in plains.items():
            t0 = time.time()
            torch.manual_seed(args.seed)
            plain, _ = uniform_width_model(family, int(grown), dummy, base_widths=base)
            val, test, _ = train_round(plain, loaders, recipe, device, args.precision, args.seed)
            record(_row(arm, step, plain, dummy, reference, test, val, args.epochs, time.time() - t0, args.seed))
        for pruner in (p for p in PRUNERS if p in arms and grown < reference[1]):
            t0 = time.time()
            pruned, _ = prune_to_ratio(copy.deepcopy(full).float().cpu(), pruner, grown / reference[1], dummy,
                                       evaluator=pruning_batches, training_steps=50, lr=0.01, seed=args.seed)
            val, test, _ = train_round(pruned, loaders, finetune, device, args.precision, args.seed)
            record(_row(pruner, step, pruned, dummy, reference, test, val, args.epochs + args.finetune_epochs,
                        time.time() - t0, args.seed))
    logger.info("done in %.0f s: %s", time.time() - started, out / "results.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
