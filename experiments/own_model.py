"""A user's own network and data, for the configs that grow a model this package does not know.

``model: experiments.own_model:small_net`` and ``dataset: experiments.own_model:digits_splits`` are
imported by the trials from the trial code directory (the repository root); nothing here is
registered with nni_splitting.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset


class SmallNet(nn.Module):
    """Two 3x3 convs with BatchNorm, a max-pool, global pooling and a linear classifier."""

    def __init__(self, in_channels: int = 1, width: int = 4, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.pool = nn.MaxPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(torch.flatten(self.gap(x), 1))


def small_net(in_channels: int = 1, width: int = 4, num_classes: int = 10) -> nn.Module:
    return SmallNet(in_channels, width, num_classes)


def digits_splits(val_fraction: float = 0.2, seed: int = 0):
    """scikit-learn's 8x8 digits as (train, val, test) TensorDatasets, split here (not by nni_splitting)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target, dtype=torch.int64)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test, n_val = len(y) // 4, int(len(y) * val_fraction)
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    return tuple(TensorDataset(x[i], y[i]) for i in (train, val, test))


def linear_only(num_classes: int = 10) -> nn.Module:
    """Nothing to grow: the only layer is the classifier (the start-up check refuses it)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))
