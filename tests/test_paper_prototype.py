"""Fig. 2 (prototype network): the prototype splitting matrix against the augmented network's Hessian, the
function-preserving split, and a minimal MNIST growth whose tree and index-vs-decrease probe are checked."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from nni_splitting.paper import prototype as P
from nni_splitting.paper.figures import plot_index_vs_decrease, plot_prototype_tree

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WEIGHTS = P.LossWeights()


def _net_and_data(feature, m=3, n=12, seed=0):
    torch.manual_seed(seed)
    net = P.PrototypeNet(m, feature=feature, channels=4).double()
    with torch.no_grad():
        net.classifier.weight.normal_(0, 2.0)
    x = torch.rand(n, 1, 28, 28, dtype=torch.float64)
    y = torch.randint(0, 10, (n,))
    with torch.no_grad():  # prototypes near the codes so that the Gaussian features are not tiny
        net.prototypes.copy_(net.encode(x[:m]) + 0.1 * torch.randn(m, 40, dtype=torch.float64))
    return net, x, y


def _augmented_ce(net, x, y, j):
    """lambda_c CE with prototype j replaced by p_j +- delta, each with half of column j (written independently)."""
    with torch.no_grad():
        z = net.encode(x)
    p, w = net.prototypes.detach(), net.classifier.weight.detach()

    def feature(q):
        d = ((z - q) ** 2).sum(-1)
        return torch.exp(-d) if net.feature == "gaussian" else d

    def loss(delta):
        h = torch.stack([feature(p[k]) for k in range(len(p))], 1)
        others = h @ w.T - torch.outer(h[:, j], w[:, j])
        logits = others + torch.outer(feature(p[j] + delta) + feature(p[j] - delta), w[:, j] / 2)
        return WEIGHTS.classification * F.cross_entropy(logits, y)

    return loss


@pytest.mark.parametrize("feature", ["gaussian", "distance"])
def test_prototype_splitting_matrix_is_the_augmented_hessian(feature):
    net, x, y = _net_and_data(feature)
    splits = P.prototype_splitting(net, DataLoader(TensorDataset(x, y), batch_size=5), WEIGHTS)
    assert splits.matrices.shape == (3, 40, 40)
    for j in range(3):
        reference = torch.autograd.functional.hessian(_augmented_ce(net, x, y, j), torch.zeros(40, dtype=torch.float64))
        torch.testing.assert_close(splits.matrices[j], reference, rtol=1e-8, atol=1e-10)
    if feature == "distance":  # isotropic: S_j = 2 E[dL/dd_j] I, so any direction is a splitting gradient
        for j in range(3):
            torch.testing.assert_close(splits.matrices[j], splits.matrices[j][0, 0] * torch.eye(40, dtype=torch.float64))
        torch.testing.assert_close(splits.directions.norm(dim=1), torch.ones(3, dtype=torch.float64))


def test_split_preserves_logits_and_follows_theorem_2_3():
    net, x, y = _net_and_data("gaussian")
    splits = P.prototype_splitting(net, [(x, y)], WEIGHTS)
    with torch.no_grad():
        same = P.split_prototypes(net, [0, 2], splits.directions[[0, 2]], epsilon=0.0)
        assert same.num_prototypes == 5 and same.classifier.weight.shape == (10, 5)
        torch.testing.assert_close(same(x), net(x))
        eps = 1e-3
        base = WEIGHTS.classification * F.cross_entropy(net(x), y)
        for j in range(3):
            grown = P.split_prototypes(net, [j], splits.directions[j][None], eps)
            change = WEIGHTS.classification * F.cross_entropy(grown(x), y) - base
            assert float(change) == pytest.approx(eps ** 2 * float(splits.eigenvalues[j]) / 2, rel=1e-3, abs=1e-12)
    with pytest.raises(ValueError, match=r"\[3\]"):
        P.split_prototypes(net, [3], splits.directions[:1], 0.1)
    with pytest.raises(ValueError, match="'cosine'"):
        P.PrototypeNet(1, feature="cosine")


def test_split_tree_bookkeeping(tmp_path):
    tree = P.SplitTree()
    images = np.random.rand(3, 28, 28)
    tree.record_split(1, [0], [-0.5], images[:1])        # 1 -> 2 prototypes: nodes 1, 2
    tree.record_split(2, [1], [-0.2], images[:2])        # prototype 1 (node 2) -> nodes 3, 4
    tree.finish(images)
    assert tree.node_of == [1, 3, 4]
    assert tree.parents == {0: None, 1: 0, 2: 0, 3: 2, 4: 2}
    assert tree.generations == {0: 0, 1: 1, 2: 1, 3: 2, 4: 2}
    assert set(tree.images) == set(tree.parents) and tree.indexes == {0: -0.5, 2: -0.2}
    assert plot_prototype_tree(tree.images, tree.parents, tree.generations, tmp_path / "t.png").stat().st_size > 1000


@pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason="no ../shared/data/mnist")
def test_minimal_mnist_growth_tree_and_probe(tmp_path):
    from nni_splitting.common.data import load_dataset

    data = load_dataset("mnist", DATA / "mnist", per_class=20, test_per_class=10, val_per_class=1)
    train, test = P.mnist_unit_interval(data.train), P.mnist_unit_interval(data.test)
    assert float(train.tensors[0].min()) >= 0 and float(train.tensors[0].max()) <= 1
    result = P.grow_prototypes(train, test, max_prototypes=4, epochs=1, final_epochs=0, probe_at=3, probe_epochs=1)
    tree = result["tree"]
    # Fig. 2a: a binary tree from one root; every split prototype has exactly two offspring; all decoded
    children = {}
    for node, parent in tree.parents.items():
        children.setdefault(parent, []).append(node)
    assert children[None] == [0] and len(tree.parents) == 7
    assert all(len(kids) == 2 for parent, kids in children.items() if parent is not None)
    assert len(tree.node_of) == result["net"].num_prototypes == 4
    assert all(image.shape == (28, 28) and 0 <= image.min() and image.max() <= 1 for image in tree.images.values())
    # Fig. 2b: the immediate loss decrease of splitting each prototype is -eps^2 lambda / 2
    probe = result["probe"]
    assert len(probe["index"]) == 3
    np.testing.assert_allclose(probe["decrease_immediate"], probe["predicted"], rtol=0.1, atol=2e-5)
    assert np.isfinite(probe["decrease_finetuned"]).all()
    path = plot_index_vs_decrease(probe["index"], probe["decrease_finetuned"], tmp_path / "b.png", "probe",
                                  second=probe["decrease_immediate"], second_label="immediate")
    assert path.stat().st_size > 1000
