"""A user's own growth strategy, for ``strategy: experiments.own_strategy:RandomSplitStrategy``.

One file, one class: the tuner validates the import path at start-up and every trial imports it from the
trial code directory (the repository root), so nothing in nni_splitting is edited or registered. In one
process, ``register_strategy("random_split", RandomSplitStrategy)`` also makes the short name work.

The strategy is the paper's "random split" baseline: the same offspring as S2D (``theta +- eps v_min``),
but which neurons split is left to chance: every neuron's index is a draw from [-1, 0), so the tuner's
selection takes a random subset of the size it would have taken.
"""
from __future__ import annotations

import dataclasses

import torch

from nni_splitting.growth.strategies import S2DStrategy


class RandomSplitStrategy(S2DStrategy):
    """S2D's splitting directions, random splitting indexes in [-1, 0) (seeded by the trial's ``seed``)."""

    name = "random_split"

    def score(self, model, loss_fn, batches, layers=None):
        scores = super().score(model, loss_fn, batches, layers=layers)
        generator = torch.Generator().manual_seed(int(self.options.get("seed", 0)))
        return {name: dataclasses.replace(score, eigenvalues=-torch.rand(score.eigenvalues.shape, generator=generator))
                for name, score in scores.items()}
