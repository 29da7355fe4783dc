"""Depth growth: new depthwise-separable blocks initialised to the identity, placed where the loss falls most.

Firefly (Wu, Liu, Stone & Liu 2020, section 3.3) grows depth by inserting layers that start as the
identity and scoring each insertion by the first-order loss change of a small perturbation of its
weights. Here a new block after block ``p`` of a MobileNet (``features.block{p}``, ``p = 0`` the stem)
is a stride-1 depthwise-separable block of that block's width: depthwise kernel ``delta`` at the
centre, pointwise weight the identity matrix, each batch norm ``gamma = sqrt(running_var + eps)``,
``beta = running_mean`` (the identity in eval mode, whatever the statistics), and its ReLUs see the
previous block's non-negative output. The network's function is unchanged (eval mode); in training
mode the batch norms see batch statistics close to the running ones they were given.

The score of position ``p`` is the loss change of the best weight perturbation of norm ``epsilon``
of its new block, to first order::

    Delta L_p ~= -epsilon ||grad_{W_p} L||        (W_p: the new block's depthwise and pointwise weights)

computed for every position at once in one network with a new block at each (each block is the
identity, so one block's gradient does not depend on the others). :func:`grow_depth` inserts the
``count`` positions of most negative score per added parameter (or of most negative score).
"""
from __future__ import annotations

import copy
import logging
from typing import Callable, Dict, Iterable, List, Sequence, Tuple

import torch
from torch import nn

from nni_splitting.models import MobileNetV1, current_widths

__all__ = ["depth_positions", "deepen", "depth_scores", "grow_depth", "block_params", "DEPTH_COSTS"]

#: How :func:`grow_depth` ranks the positions: score per added parameter, or the score alone.
DEPTH_COSTS = ("params", "none")

logger = logging.getLogger(__name__)


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, MobileNetV1):
        raise ValueError(f"depth growth inserts depthwise-separable blocks into a MobileNet (mobilenet_cifar, "
                         f"mobilenet_v1); got {type(model).__name__}")
    if model.config.get("activation", "relu") != "relu":
        raise ValueError(f"depth growth needs ReLU blocks (an identity block relies on ReLU(x) = x for x >= 0); "
                         f"got activation {model.config['activation']!r}")


def depth_positions(model: nn.Module) -> List[int]:
    """Positions a new block can follow: ``0`` (the stem) to the number of blocks."""
    _check_model(model)
    return list(range(len(model.strides) + 1))


def block_params(width: int) -> int:
    """Parameters of a new stride-1 block of ``width`` channels: depthwise 3x3, pointwise, two batch norms."""
    return 9 * width + width * width + 4 * width


def _layout(num_blocks: int, positions: Sequence[int]) -> List[Tuple[str, int]]:
    """The deeper network's blocks in order: ``("old", j)`` for block ``j``, ``("new", p)`` after position ``p``."""
    order = [("new", 0)] if 0 in positions else []
    for j in range(1, num_blocks + 1):
        order.append(("old", j))
        if j in positions:
            order.append(("new", j))
    return order


def deepen(model: MobileNetV1, positions: Sequence[int], batches: Iterable = ()) -> Tuple[MobileNetV1, Dict[int, str]]:
    """A copy of ``model`` with an identity block after each of ``positions``; ``{position: new block name}``.

    ``batches`` (``(inputs, targets)`` pairs, optional) give the new batch norms' running statistics (the
    block input's per-channel mean and variance in training mode); without them they stay 0 and 1. The
    copy is in eval mode and computes ``model``'s function there.
    """
    _check_model(model)
    positions = sorted({int(p) for p in positions})
    allowed = depth_positions(model)
    if any(p not in allowed for p in positions):
        raise ValueError(f"depth positions {positions} must be in {allowed} (0 = after the stem)")
    widths = current_widths(model)
    order = _layout(len(model.strides), positions)
    new_widths, new_strides, names = [widths[0]], [], {}
    for kind, j in order:
        new_widths.append(widths[j])
        new_strides.append(model.strides[j - 1] if kind == "old" else 1)
    config = {k: v for k, v in model.config.items() if k != "strides"}
    deeper = type(model)(widths=new_widths, strides=new_strides, **config)
    state = deeper.state_dict()
    source = model.state_dict()
    for key, value in source.items():  # the stem, the classifier and the old blocks under their new numbers
        if key.startswith("features.block"):
            head, rest = key[len("features.block"):].split(".", 1)
            key = f"features.block{order.index(('old', int(head))) + 1}.{rest}"
        state[key] = value.clone()
    for p in positions:
        names[p] = f"features.block{order.index(('new', p)) + 1}"
    deeper.load_state_dict(state)
    stats = _input_statistics(model, positions, batches)
    with torch.no_grad():
        for p, name in names.items():
            _make_identity(deeper.get_submodule(name), *stats.get(p, (None, None)))
    return deeper.eval(), names


def _block_input(model: MobileNetV1, position: int) -> nn.Module:
    return model.features.stem if position == 0 else model.get_submodule(f"features.block{position}")


def _input_statistics(model: MobileNetV1, positions: Sequence[int], batches: Iterable) -> Dict[int, Tuple]:
    """``{position: (mean, var)}`` per channel of the output a new block would read in training mode (batch
    statistics in the batch norms before it, as the next round's training sees it), over ``batches``."""
    sums: Dict[int, List] = {}

    def hook(position):
        def record(_module, _inputs, output):
            flat = output.detach().transpose(0, 1).reshape(output.shape[1], -1).double()
            s = sums.setdefault(position, [0, 0.0, 0.0])
            s[0] += flat.shape[1]
            s[1] = s[1] + flat.sum(1)
            s[2] = s[2] + (flat * flat).sum(1)
        return record

    probe = copy.deepcopy(model).train()  # what training will feed the block; the model's own statistics stay
    handles = [_block_input(probe, p).register_forward_hook(hook(p)) for p in positions]
    with torch.no_grad():
        for inputs, _ in batches:
            probe(inputs.to(next(probe.parameters()).device))
    for handle in handles:
        handle.remove()
    out = {}
    for p, (n, total, squares) in sums.items():
        mean = total / n
        out[p] = (mean.float().cpu(), (squares / n - mean * mean).clamp_min(0).float().cpu())
    return out


def _make_identity(block: nn.Module, mean=None, var=None) -> None:
    """Depthwise ``delta`` kernel, pointwise identity, each BN the identity in eval mode (``gamma = sqrt(var + eps)``)."""
    dw, pw = block.dw.conv, block.pw.conv
    dw.weight.zero_()
    dw.weight[:, 0, dw.kernel_size[0] // 2, dw.kernel_size[1] // 2] = 1.0
    pw.weight.copy_(torch.eye(pw.out_channels).reshape(pw.weight.shape))
    for bn in (block.dw.bn, block.pw.bn):
        if mean is not None:
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
        bn.weight.copy_(torch.sqrt(bn.running_var + bn.eps))
        bn.bias.copy_(bn.running_mean)


def depth_scores(model: MobileNetV1, loss_fn: Callable, batches: Iterable, epsilon: float) -> Dict[int, float]:
    """``{position: -epsilon ||grad_{W_p} L||}``: the first-order loss change of the best ``epsilon``
    perturbation of a new identity block's weights after position ``p`` (averaged over ``batches``)."""
    batches = list(batches)
    if not batches:
        raise ValueError("depth_scores needs at least one (inputs, targets) batch")
    deeper, names = deepen(model, depth_positions(model), batches)  # built on the CPU, the model stays where it is
    weights = {p: [deeper.get_submodule(f"{name}.dw.conv").weight, deeper.get_submodule(f"{name}.pw.conv").weight]
               for p, name in names.items()}
    for param in deeper.parameters():
        param.requires_grad_(False)
    for pair in weights.values():
        for w in pair:
            w.requires_grad_(True)
    for inputs, targets in batches:
        loss = loss_fn(deeper(inputs), targets) / len(batches)
        loss.backward()
    return {p: -float(epsilon) * float(torch.sqrt(sum((w.grad ** 2).sum() for w in pair)))
            for p, pair in weights.items()}


def grow_depth(model: MobileNetV1, loss_fn: Callable, batches: Iterable, count: int,
               epsilon: float, cost: str = "params") -> Tuple[MobileNetV1, Dict[int, float]]:
    """``model`` with ``count`` identity blocks at the positions of most negative score (:func:`depth_scores`)
    per added parameter (``cost="params"``) or in all (``cost="none"``: the largest loss decrease, wherever
    it costs most), and the scores; ``count = 0`` returns ``model`` itself."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count={count!r} must be a non-negative int")
    if cost not in DEPTH_COSTS:
        raise ValueError(f"cost={cost!r} must be one of {list(DEPTH_COSTS)}")
    if count == 0:
        return model, {}
    batches = list(batches)
    scores = depth_scores(model, loss_fn, batches, epsilon)
    widths = current_widths(model)
    ranked = {p: s / block_params(widths[p]) if cost == "params" else s for p, s in scores.items()}
    chosen = sorted(ranked, key=ranked.get)[:count]
    logger.info("depth growth: scores per position %s, new blocks after %s", scores, sorted(chosen))
    deeper, _ = deepen(model, chosen, batches)
    return deeper, scores
