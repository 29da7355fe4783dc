"""Unbiased draws behind the sampled splitting sums: positions of an image (``position_samples``) and
images of a batch (``image_fraction``); each draw returns the weights that keep the estimate unbiased."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = ["sample_positions", "sample_images"]


def sample_positions(count: int, wanted: Optional[int], generator: Optional[torch.Generator], device
                      ) -> Tuple[Optional[torch.Tensor], float]:
    """``(indices, count / len(indices))`` of a stratified draw, or ``(None, 1)`` for all.

    When ``wanted`` divides ``count``, the flat positions are cut into ``wanted`` equal consecutive
    strata (bands of rows) and one position is drawn uniformly in each; otherwise the draw is uniform
    without replacement. Both are unbiased with every drawn position weighted ``count / wanted``;
    strata spread the draw over the image, so correlated neighbouring positions are rarely drawn together."""
    if wanted is None or wanted >= count:
        return None, 1.0
    if count % wanted:
        return torch.randperm(count, generator=generator)[:wanted].to(device), count / wanted
    stride = count // wanted
    offsets = torch.randint(stride, (wanted,), generator=generator)
    return (torch.arange(wanted) * stride + offsets).to(device), count / wanted


def sample_images(importance: torch.Tensor, fraction: float, generator: Optional[torch.Generator]
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(kept images, 1 / pi of each)``: Poisson sampling with ``pi_n = min(1, fraction (1 + N r_n / sum r) / 2)``.

    ``sum_{kept} X_n / pi_n`` is an unbiased estimate of ``sum_n X_n`` whatever ``X``; drawing half in proportion
    to ``r_n`` (the size of image ``n``'s gradients) skips mostly the images that add little to ``S``, the
    uniform half bounds every weight ``1 / pi_n`` by ``2 / fraction`` (no heavy tail)."""
    total = float(importance.sum())
    if total <= 0:
        return importance.new_zeros(0, dtype=torch.long), importance.new_zeros(0)
    pi = (fraction * (1 + importance.numel() * importance / total) / 2).clamp(max=1.0)
    draw = torch.rand(importance.numel(), generator=generator).to(importance.device)
    kept = torch.nonzero(draw < pi).flatten()
    return kept, 1.0 / pi[kept]
