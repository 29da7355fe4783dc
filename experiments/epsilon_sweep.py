"""Which splitting step size epsilon? A validation-split sweep on digits (the tuner's default comes from it).

Algorithm 1 on small_cnn [2, 4, 8]: 6 epochs, then 3 steps of (split 50% of the neurons with
lambda_min < 0, train 6 epochs), for each epsilon and seeds 0-2; prints the validation accuracy after
every step (the test split is not read).  About 3 minutes on one CPU core::

    python experiments/epsilon_sweep.py > results/epsilon_sweep.txt
"""
import math

import numpy as np
import torch
import torch.nn as nn

from nni_splitting import apply_splits, compute_splitting, select_neurons
from nni_splitting.common.data import load_dataset, make_loaders
from nni_splitting.models import build_model
from nni_splitting.common.training import evaluate, seed_everything, train

EPSILONS = (0.01, 0.03, 0.1, 0.3)
SEEDS = (0, 1, 2)


def grow(epsilon: float, seed: int, data) -> list:
    seed_everything(seed)
    train_loader, val_loader, _ = make_loaders(data, batch_size=64, seed=seed)
    model = build_model("small_cnn", widths=[2, 4, 8], in_channels=1, num_classes=10)
    train(model, train_loader, epochs=6, lr=0.05, progress=False)
    accuracies = [evaluate(model, val_loader)]
    for _ in range(3):
        batches = [batch for _, batch in zip(range(8), train_loader)]
        splits = compute_splitting(model, nn.CrossEntropyLoss(), batches, method="exact")
        neurons = sum(len(layer.eigenvalues) for layer in splits.values())
        plan = select_neurons(splits, max_splits=math.ceil(0.5 * neurons), threshold=0.0)
        model = apply_splits(model, splits, plan, epsilon=epsilon)
        train(model, train_loader, epochs=6, lr=0.05, progress=False)
        accuracies.append(evaluate(model, val_loader))
    return accuracies


def main() -> None:
    torch.set_num_threads(1)
    data = load_dataset("digits")
    print(f"validation accuracy after steps 0-3 (digits, small_cnn [2, 4, 8], {len(data.val)} validation images)")
    for epsilon in EPSILONS:
        runs = np.array([grow(epsilon, seed, data) for seed in SEEDS])
        for seed, run in zip(SEEDS, runs):
            print(f"epsilon={epsilon:<5} seed={seed}  " + "  ".join(f"{a:.3f}" for a in run))
        print(f"epsilon={epsilon:<5} mean    " + "  ".join(f"{a:.3f}" for a in runs.mean(0)), flush=True)


if __name__ == "__main__":
    main()
