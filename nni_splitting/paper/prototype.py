"""The paper's interpretable-network experiment (Fig. 2): splitting the prototype layer of Li et al. (2018).

Network (Li, Liu, Chen & Rudin, "Deep learning for case-based reasoning through prototypes", AAAI 2018):
a convolutional autoencoder (encoder ``f``: 28x28 -> latent ``z`` of 10x2x2 = 40 values in ``(0, 1)``,
decoder ``g`` back to 28x28), a prototype layer with ``m`` prototypes ``p_j`` in latent space, a linear
layer ``W`` (no bias) and a softmax. The loss is Li et al.'s, averaged over the batch:

    L = lambda_c CE(W h(z), y) + lambda_r ||g(f(x)) - x||^2 + lambda_1 R1 + lambda_2 R2,
    R1 = mean_j min_n ||p_j - z_n||^2,      R2 = mean_n min_j ||z_n - p_j||^2,   lambda = (20, 1, 1, 1).

The prototype neuron. Li et al. feed the squared distances ``d_j = ||z - p_j||^2`` to ``W``
(``feature="distance"``). Then ``Hess_p d_j = 2 I`` and ``S_j = 2 E[dL/dd_j] I`` is isotropic: every
direction is a splitting gradient; even exactly, ``(d(p + eps v) + d(p - eps v)) / 2 = d(p) + eps^2``,
so a split acts on the classifier like a bias shift ``eps^2 W[:, j]``, whatever ``v``. Our text of the
paper does not include Appendix B.2 (its exact choice), so by default we use the Gaussian similarity
``h_j = exp(-||z - p_j||^2)`` (``feature="gaussian"``): the prototype then is an RBF neuron in latent
space, exactly like Fig. 1's, with ``Hess_p h = h (4 r r^T - 2 I)``, ``r = z - p``, and a non-trivial
``v_min``. With ``feature="distance"`` the offspring move along a random unit vector (seeded).

Splitting objective. Only the classification term reaches the loss through the neuron's output
(eq. 5), so ``S_j`` is computed from ``lambda_c CE``: ``S_j = Hess_p sum_n g_{n,j} h(z_n; p)`` at ``p_j``
with ``g = d(lambda_c CE)/dh`` (:mod:`nni_splitting.paper.neurons`). R1 and R2 are minima over data /
prototypes, not weighted sums of neuron outputs as in eq. (2); they shape the prototypes during the
parametric phase (and are in the loss that Fig. 2b measures after fine-tuning).
"""
from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from nni_splitting.common.defaults import check_epsilon
from nni_splitting.graph import replace_tensor
from nni_splitting.growth.selection import select_neurons
from nni_splitting.core.splitting import LayerSplitting
from nni_splitting.growth.surgery import split_group
from nni_splitting.paper.neurons import CustomNeuronHandler, custom_group, custom_layer_splitting, custom_splitting_matrices

__all__ = ["FEATURES", "LossWeights", "PrototypeLayer", "PrototypeHandler", "PrototypeNet", "prototype_loss",
           "prototype_splitting", "split_prototypes", "train_prototype_net", "fit_classifier", "evaluate_prototype_net",
           "SplitTree", "grow_prototypes", "probe_split_step", "mnist_unit_interval"]

logger = logging.getLogger(__name__)

FEATURES = ("gaussian", "distance")


class LossWeights(NamedTuple):
    """Weights of Li et al.'s loss terms: classification, reconstruction, R1, R2 (Li et al.: 20, 1, 1, 1)."""

    classification: float = 20.0
    reconstruction: float = 1.0
    r1: float = 1.0
    r2: float = 1.0


def _encoder(channels: int, latent_channels: int) -> nn.Sequential:
    layers, prev = [], 1
    for i, out in enumerate([channels, channels, channels, latent_channels], start=1):
        layers += [(f"conv{i}", nn.Conv2d(prev, out, 3, stride=2, padding=1)),
                   (f"act{i}", nn.ReLU() if i < 4 else nn.Sigmoid())]
        prev = out
    return nn.Sequential(OrderedDict(layers))  # 28 -> 14 -> 7 -> 4 -> 2


def _decoder(channels: int, latent_channels: int) -> nn.Sequential:
    layers, prev = [], latent_channels
    for i, (out, extra) in enumerate([(channels, 1), (channels, 0), (channels, 1), (1, 1)], start=1):
        layers += [(f"deconv{i}", nn.ConvTranspose2d(prev, out, 3, stride=2, padding=1, output_padding=extra)),
                   (f"act{i}", nn.ReLU() if i < 4 else nn.Sigmoid())]
        prev = out
    return nn.Sequential(OrderedDict(layers))  # 2 -> 4 -> 7 -> 14 -> 28


class PrototypeLayer(nn.Module):
    """The prototypes ``p_j`` (rows of ``weight``, ``[m, D]``) and their squared distances to codes ``z``."""

    splitting_handler = "nni_splitting.paper.prototype:PrototypeHandler"  # comes with the layer

    def __init__(self, num_prototypes: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(num_prototypes, dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``d_{n,j} = ||z_n - p_j||^2``: ``[N, m]``."""
        return ((z[:, None, :] - self.weight[None]) ** 2).sum(-1)


class PrototypeHandler(CustomNeuronHandler):
    """Layer handler of :class:`PrototypeLayer`: neuron ``j`` is ``theta_j = p_j``."""

    kind = "prototype"

    def neuron_parameters(self, module):
        return module.weight.detach()

    def set_neuron_parameters(self, module, theta):
        replace_tensor(module, "weight", theta)


#: The prototypes' neuron group in :class:`PrototypeNet`: their features feed ``classifier``.
PROTOTYPE_GROUP = custom_group("prototype_layer", "prototype", consumers=["classifier"])


class PrototypeNet(nn.Module):
    """Li et al.'s prototype network on 1x28x28 images in ``[0, 1]``.

    Parameters
    ----------
    num_prototypes : int
        ``m``, the prototypes (rows of ``prototypes``, shape ``[m, latent_dim]``).
    num_classes : int
        Outputs of ``classifier = nn.Linear(m, num_classes, bias=False)``; column ``j`` is the outgoing
        weight of prototype ``j``.
    channels, latent_channels : int
        Conv channels of the autoencoder; the latent has ``latent_channels * 2 * 2`` values.
    feature : {"gaussian", "distance"}
        What a prototype neuron outputs: ``exp(-||z - p||^2)`` or ``||z - p||^2`` (see the module docstring).
    """

    def __init__(self, num_prototypes: int = 1, num_classes: int = 10, channels: int = 32, latent_channels: int = 10,
                 feature: str = "gaussian"):
        super().__init__()
        for name, value in (("num_prototypes", num_prototypes), ("num_classes", num_classes), ("channels", channels),
                            ("latent_channels", latent_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if feature not in FEATURES:
            raise ValueError(f"feature={feature!r} is not one of {FEATURES}")
        self.config = dict(num_classes=num_classes, channels=channels, latent_channels=latent_channels, feature=feature)
        self.feature = feature
        self.encoder = _encoder(channels, latent_channels)
        self.decoder = _decoder(channels, latent_channels)
        self.latent_shape = (latent_channels, 2, 2)
        self.prototype_layer = PrototypeLayer(num_prototypes, latent_channels * 4)
        self.classifier = nn.Linear(num_prototypes, num_classes, bias=False)

    @property
    def prototypes(self) -> nn.Parameter:
        """The prototypes ``[m, latent_dim]`` (``prototype_layer.weight``)."""
        return self.prototype_layer.weight

    @property
    def num_prototypes(self) -> int:
        return self.prototypes.shape[0]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent codes ``z``: ``[N, latent_dim]``."""
        return self.encoder(x).flatten(1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images ``[N, 1, 28, 28]`` from latent codes ``[N, latent_dim]``."""
        return self.decoder(z.reshape(-1, *self.latent_shape))

    def distances(self, z: torch.Tensor) -> torch.Tensor:
        """``d_{n,j} = ||z_n - p_j||^2``: ``[N, m]``."""
        return self.prototype_layer(z)

    def features(self, d: torch.Tensor) -> torch.Tensor:
        """The prototype neurons' outputs from the squared distances."""
        return torch.exp(-d) if self.feature == "gaussian" else d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.distances(self.encode(x))))

    @torch.no_grad()
    def decode_prototypes(self) -> np.ndarray:
        """The prototypes decoded to pictures: ``[m, 28, 28]`` in ``[0, 1]``."""
        return self.decode(self.prototypes.detach())[:, 0].cpu().numpy()


def prototype_neuron(feature: str):
    """``phi(z; p)`` of one prototype for :func:`custom_splitting_matrices`: ``[N, D], [D] -> [N]``."""
    if feature == "gaussian":
        return lambda z, p: torch.exp(-((z - p) ** 2).sum(-1))
    if feature == "distance":
        return lambda z, p: ((z - p) ** 2).sum(-1)
    raise ValueError(f"feature={feature!r} is not one of {FEATURES}")


def prototype_loss(net: PrototypeNet, x: torch.Tensor, y: torch.Tensor,
                   weights: LossWeights = LossWeights()) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Li et al.'s total loss of a batch and its terms (``ce``, ``recon``, ``r1``, ``r2``, ``accuracy``)."""
    z = net.encode(x)
    d = net.distances(z)
    logits = net.classifier(net.features(d))
    parts = {
        "ce": F.cross_entropy(logits, y),
        "recon": ((net.decode(z) - x) ** 2).flatten(1).sum(1).mean(),
        "r1": d.min(dim=0).values.mean(),
        "r2": d.min(dim=1).values.mean(),
    }
    total = (weights.classification * parts["ce"] + weights.reconstruction * parts["recon"]
             + weights.r1 * parts["r1"] + weights.r2 * parts["r2"])
    parts["accuracy"] = (logits.argmax(1) == y).float().mean()
    return total, parts


def prototype_splitting(net: PrototypeNet, loader: DataLoader, weights: LossWeights = LossWeights(),
                        seed: int = 0) -> LayerSplitting:
    """Splitting matrices, indexes and gradients of the prototypes (layer name ``"prototypes"``).

    ``S_j = sum over batches (N_b / N) Hess_p sum_n g_{n,j} h(z_n; p)`` at ``p_j``, with
    ``g = d(lambda_c CE_b)/dh`` (Definition 2.1 on the classification term). For ``feature="distance"``
    ``S_j`` is isotropic and the directions are replaced by random unit vectors (seeded).
    """
    neuron = prototype_neuron(net.feature)
    total, matrices = 0, None
    net.eval()
    for x, y in loader:
        with torch.no_grad():
            z = net.encode(x)
        h = net.features(net.distances(z))
        h_leaf = h.detach().requires_grad_(True)
        ce = weights.classification * F.cross_entropy(net.classifier(h_leaf), y)
        (upstream,) = torch.autograd.grad(ce, h_leaf)
        batch = custom_splitting_matrices(neuron, net.prototypes.detach(), z, upstream) * len(y)
        matrices = batch if matrices is None else matrices + batch
        total += len(y)
    if matrices is None:
        raise ValueError("the loader is empty: no data for the splitting matrices")
    splits = custom_layer_splitting("prototypes", matrices / total, kind=f"prototype/{net.feature}")
    splits.group = custom_group(PROTOTYPE_GROUP.layer, f"prototype/{net.feature}", ["classifier"])  # for apply_splits
    if net.feature == "distance":
        generator = torch.Generator().manual_seed(seed)
        directions = torch.randn(splits.directions.shape, generator=generator, dtype=splits.directions.dtype)
        splits.directions = directions / directions.norm(dim=1, keepdim=True)
    return splits


def split_prototypes(net: PrototypeNet, indices: Sequence[int], directions: torch.Tensor,
                     epsilon: float) -> PrototypeNet:
    """A copy with prototypes ``indices`` split into ``p_j +- epsilon v_j`` and their classifier columns halved.

    The ``+`` offspring keeps index ``j``; the ``-`` offspring is appended (Algorithm 1, step 4).
    """
    m = net.num_prototypes
    indices = [int(i) for i in indices]
    if any(not 0 <= i < m for i in indices) or len(set(indices)) != len(indices):
        raise ValueError(f"indices {indices!r} must be distinct prototypes of a layer with {m} prototypes")
    check_epsilon(epsilon)
    directions = torch.as_tensor(directions, dtype=net.prototypes.dtype).reshape(len(indices), -1)
    return split_group(net, PROTOTYPE_GROUP, indices, directions, epsilon)  # PrototypeHandler + Linear widening


def train_prototype_net(net: PrototypeNet, dataset: TensorDataset, epochs: int, lr: float = 2e-3,
                        batch_size: int = 32, weights: LossWeights = LossWeights(), seed: int = 0,
                        classifier_lr: float = 0.05) -> List[float]:
    """Adam on the whole network for ``epochs`` epochs (seeded shuffling); the mean loss of each epoch.

    The classifier ``W`` gets its own, larger step ``classifier_lr``: with Gaussian features
    ``h <= 1`` the logits need ``|W| >> 1``, which Adam's per-step change of ``lr`` would take
    thousands of steps to reach.
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    body = [p for name, p in net.named_parameters() if not name.startswith("classifier.")]
    optimizer = torch.optim.Adam([{"params": body, "lr": lr},
                                  {"params": net.classifier.parameters(), "lr": classifier_lr}])
    net.train()
    history = []
    for _ in range(epochs):
        total, count = 0.0, 0
        for x, y in loader:
            optimizer.zero_grad()
            loss, _ = prototype_loss(net, x, y, weights)
            loss.backward()
            optimizer.step()
            total, count = total + float(loss.detach()) * len(y), count + len(y)
        history.append(total / max(count, 1))
    net.eval()
    return history


def fit_classifier(net: PrototypeNet, dataset: TensorDataset, iterations: int = 100, batch_size: int = 1000) -> float:
    """Train ``W`` alone to convergence (full-batch L-BFGS on ``CE(W h, y)``, a convex problem); returns the CE.

    With ``W`` at its optimum, ``sum_n g_{n,j} h_{n,j} = 0`` for every prototype (``dL/dW = 0``), so the
    parametric phase ends at a stationary point in ``W`` before the splitting matrices are computed.
    """
    net.eval()
    with torch.no_grad():
        h = torch.cat([net.features(net.distances(net.encode(x))) for x, _ in DataLoader(dataset, batch_size=batch_size)])
    y = dataset.tensors[1]
    weight = net.classifier.weight
    optimizer = torch.optim.LBFGS([weight], lr=1.0, max_iter=iterations, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(F.linear(h, weight), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float(F.cross_entropy(F.linear(h, weight), y))


@torch.no_grad()
def evaluate_prototype_net(net: PrototypeNet, dataset: TensorDataset, weights: LossWeights = LossWeights(),
                           batch_size: int = 1000) -> Dict[str, float]:
    """Mean of the loss and of each term (and accuracy) over ``dataset``; R1 is taken per batch."""
    net.eval()
    sums: Dict[str, float] = {}
    count = 0
    for x, y in DataLoader(dataset, batch_size=batch_size):
        loss, parts = prototype_loss(net, x, y, weights)
        for key, value in {"loss": loss, **parts}.items():
            sums[key] = sums.get(key, 0.0) + float(value) * len(y)
        count += len(y)
    return {key: value / count for key, value in sums.items()}


def mnist_unit_interval(dataset: TensorDataset, mean: float = 0.1307, std: float = 0.3081) -> TensorDataset:
    """Undo :func:`nni_splitting.common.data.load_dataset`'s MNIST normalisation: pixels back in ``[0, 1]``."""
    x, y = dataset.tensors
    return TensorDataset((x * std + mean).clamp(0, 1), y)


@dataclass
class SplitTree:
    """The evolutionary tree of the prototypes.

    ``node_of[j]`` is the node now held by prototype ``j``; ``parents``, ``generations`` (the split step
    at which a node was born), ``images`` (decoded prototype: when it was split, or at the end) and
    ``indexes`` (its splitting index when it was split) are keyed by node id.
    """

    node_of: List[int] = field(default_factory=lambda: [0])
    parents: Dict[int, Optional[int]] = field(default_factory=lambda: {0: None})
    generations: Dict[int, int] = field(default_factory=lambda: {0: 0})
    images: Dict[int, np.ndarray] = field(default_factory=dict)
    indexes: Dict[int, float] = field(default_factory=dict)

    def record_split(self, step: int, indices: Sequence[int], eigenvalues: Sequence[float], images: np.ndarray) -> None:
        """Prototypes ``indices`` (with these indexes and decoded ``images`` of all prototypes) were split."""
        appended = []
        for j, value in zip(indices, eigenvalues):
            parent = self.node_of[j]
            self.images[parent], self.indexes[parent] = images[j], float(value)
            plus, minus = len(self.parents), len(self.parents) + 1
            self.parents.update({plus: parent, minus: parent})
            self.generations.update({plus: step, minus: step})
            self.node_of[j] = plus
            appended.append(minus)
        self.node_of += appended

    def finish(self, images: np.ndarray) -> None:
        """Store the final decoded prototypes on the leaves."""
        for j, node in enumerate(self.node_of):
            self.images[node] = images[j]


def probe_split_step(net: PrototypeNet, train: TensorDataset, splits: LayerSplitting, epsilon: float,
                     finetune_epochs: int, weights: LossWeights, probe_epsilon: float = 1e-2,
                     seed: int = 0, lr: float = 2e-3) -> Dict[str, np.ndarray]:
    """Fig. 2b: split each prototype alone and measure the loss decrease.

    ``decrease_immediate``: decrease of the classification term ``lambda_c CE`` right after a split with
    step ``probe_epsilon`` (Theorem 2.3 predicts ``-probe_epsilon^2 lambda_min / 2``).
    ``decrease_finetuned``: after splitting with ``epsilon`` and ``finetune_epochs`` epochs of training,
    the total training loss's decrease relative to the unsplit network trained the same way (same seed).
    """
    def ce_term(model: PrototypeNet) -> float:
        return weights.classification * evaluate_prototype_net(model, train, weights)["ce"]

    reference = copy.deepcopy(net)
    train_prototype_net(reference, train, finetune_epochs, lr=lr, weights=weights, seed=seed)
    reference_loss = evaluate_prototype_net(reference, train, weights)["loss"]
    base_ce = ce_term(net)
    immediate, finetuned = [], []
    for j in range(net.num_prototypes):
        direction = splits.directions[j][None]
        immediate.append(base_ce - ce_term(split_prototypes(net, [j], direction, probe_epsilon)))
        grown = split_prototypes(net, [j], direction, epsilon)
        train_prototype_net(grown, train, finetune_epochs, lr=lr, weights=weights, seed=seed)
        finetuned.append(reference_loss - evaluate_prototype_net(grown, train, weights)["loss"])
    index = splits.eigenvalues.numpy()
    return {"index": index, "decrease_immediate": np.array(immediate), "decrease_finetuned": np.array(finetuned),
            "predicted": -probe_epsilon ** 2 * index / 2}


def grow_prototypes(train: TensorDataset, test: TensorDataset, max_prototypes: int = 10, epochs: int = 2,
                    final_epochs: int = 2, epsilon: float = 0.2, splits_per_step: int = 1, probe_at: int = 5,
                    probe_epochs: int = 1, feature: str = "gaussian", weights: LossWeights = LossWeights(),
                    lr: float = 2e-3, seed: int = 0, split_batch: int = 1000, force: bool = True,
                    polish: bool = True) -> dict:
    """Grow the prototype layer from one prototype by splitting (Fig. 2a), probing one step (Fig. 2b).

    Each step trains the whole network ``epochs`` epochs (then, with ``polish``, the classifier alone to
    convergence: :func:`fit_classifier`), computes the prototypes' splitting indexes on
    ``train`` and splits the ``splits_per_step`` smallest (:func:`nni_splitting.select_neurons`, threshold 0),
    until ``max_prototypes``. When no index is negative (splitting stable), ``force=True`` splits the
    smallest anyway (logged; ``"forced"`` in the history) so the tree reaches ``max_prototypes``, and
    ``force=False`` stops. When the network has ``probe_at`` prototypes, :func:`probe_split_step` runs
    first. Returns the tree, the final network, per-step history and the probe.
    """
    torch.manual_seed(seed)
    net = PrototypeNet(1, feature=feature)
    tree = SplitTree()
    history, probe = [], None
    loader = DataLoader(train, batch_size=split_batch)
    step = 0
    while True:
        train_prototype_net(net, train, epochs, lr=lr, weights=weights, seed=seed + step)
        if polish:
            fit_classifier(net, train)
        metrics = evaluate_prototype_net(net, test, weights)
        if net.num_prototypes >= max_prototypes:
            history.append({"step": step, "prototypes": net.num_prototypes, "test": metrics})
            break
        splits = prototype_splitting(net, loader, weights, seed=seed + step)
        if net.num_prototypes == probe_at:
            probe = probe_split_step(net, train, splits, epsilon, probe_epochs, weights, seed=seed, lr=lr)
        count = min(splits_per_step, max_prototypes - net.num_prototypes)
        plan = select_neurons({"prototypes": splits}, max_splits=count, threshold=0.0).get("prototypes", [])
        forced = not plan
        if forced:
            if not force:
                logger.info("prototypes are splitting stable at m=%d (min index %.3g): stopping",
                            net.num_prototypes, float(splits.eigenvalues.min()))
                history.append({"step": step, "prototypes": net.num_prototypes, "test": metrics,
                                "indexes": splits.eigenvalues.tolist(), "split": []})
                break
            plan = torch.argsort(splits.eigenvalues)[:count].sort().values.tolist()
            logger.info("all indexes >= 0 at m=%d (min %.3g): splitting the smallest anyway", net.num_prototypes,
                        float(splits.eigenvalues.min()))
        step += 1
        history.append({"step": step - 1, "prototypes": net.num_prototypes, "test": metrics,
                        "indexes": splits.eigenvalues.tolist(), "split": plan, "forced": forced})
        logger.info("step %d: m=%d test acc %.4f, split %s (indexes %s)", step, net.num_prototypes,
                    metrics["accuracy"], plan, [round(float(splits.eigenvalues[j]), 4) for j in plan])
        tree.record_split(step, plan, [float(splits.eigenvalues[j]) for j in plan], net.decode_prototypes())
        net = split_prototypes(net, plan, splits.directions[plan], epsilon)
    if final_epochs:
        train_prototype_net(net, train, final_epochs, lr=lr, weights=weights, seed=seed + step + 1)
        if polish:
            fit_classifier(net, train)
        history.append({"step": "final", "prototypes": net.num_prototypes, "test": evaluate_prototype_net(net, test, weights)})
    tree.finish(net.decode_prototypes())
    return {"net": net, "tree": tree, "history": history, "probe": probe}
