"""Fig. 2 of the paper: grow the prototype layer of Li et al. (2018) on MNIST from one prototype by splitting.

    python experiments/paper/prototype_mnist.py --data-dir ../shared/data/mnist     # about 3-4 minutes on one CPU core

Reduced recipe (CPU): 1,000 training images per class (10,000), 200 test images per class (2,000),
Adam, 3 epochs between splits (then the classifier alone to convergence), one split per step from 1 to
10 prototypes, 2 final epochs; the Fig. 2b probe splits each of the 5 prototypes of step 5 alone and
fine-tunes 3 epochs. MNIST is read from DATA_DIR/MNIST/raw/*.gz (torchvision's raw layout); nothing
is downloaded.

Writes docs/figures/fig2a_prototype_tree.png, docs/figures/fig2b_prototype_index.png and
runs/paper/prototype_mnist.json.
"""
import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from nni_splitting.common.data import load_dataset
from nni_splitting.paper.figures import plot_index_vs_decrease, plot_prototype_tree
from nni_splitting.paper.prototype import FEATURES, grow_prototypes, mnist_unit_interval

ROOT = Path(__file__).resolve().parents[2]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    parser.add_argument("--per-class", type=int, default=1000, help="training images per class")
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--max-prototypes", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=3, help="epochs between splits")
    parser.add_argument("--final-epochs", type=int, default=2)
    parser.add_argument("--epsilon", type=float, default=0.2)
    parser.add_argument("--probe-at", type=int, default=5, help="Fig. 2b: probe the step with this many prototypes")
    parser.add_argument("--probe-epochs", type=int, default=3)
    parser.add_argument("--feature", choices=FEATURES, default="gaussian")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine)")
    parser.add_argument("--figures", type=Path, default=ROOT / "docs" / "figures")
    parser.add_argument("--json", type=Path, default=ROOT / "runs" / "paper" / "prototype_mnist.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)

    data = load_dataset("mnist", args.data_dir, per_class=args.per_class, test_per_class=args.test_per_class,
                        val_per_class=1, seed=args.seed)
    result = grow_prototypes(mnist_unit_interval(data.train), mnist_unit_interval(data.test), args.max_prototypes,
                             args.epochs, args.final_epochs, args.epsilon, probe_at=args.probe_at,
                             probe_epochs=args.probe_epochs, feature=args.feature, seed=args.seed)
    tree, probe = result["tree"], result["probe"]
    labels = {node: f"λ={value:+.3f}" for node, value in tree.indexes.items()}
    plot_prototype_tree(tree.images, tree.parents, tree.generations, args.figures / "fig2a_prototype_tree.png", labels)
    summary = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "history": result["history"], "tree": {"parents": tree.parents, "generations": tree.generations,
                                                      "indexes": tree.indexes}}
    if probe is not None:
        plot_index_vs_decrease(probe["index"], probe["decrease_finetuned"], args.figures / "fig2b_prototype_index.png",
                               f"Prototype splitting at m={args.probe_at} (MNIST)",
                               second=probe["decrease_immediate"],
                               second_label="immediate decrease of 20·CE (ε=0.01)",
                               first_label=f"loss decrease (split + {args.probe_epochs} epochs)")
        summary["probe"] = {k: np.asarray(v).tolist() for k, v in probe.items()}
        for key in ("decrease_finetuned", "decrease_immediate"):
            summary["probe"][f"corr_neg_index_{key}"] = float(np.corrcoef(-probe["index"], probe[key])[0, 1])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=1, default=float))
    for entry in result["history"]:
        print(f"step {entry['step']}: {entry['prototypes']} prototypes, test accuracy "
              f"{entry['test']['accuracy']:.4f}, test loss {entry['test']['loss']:.2f}")
    if probe is not None:
        for key in ("decrease_finetuned", "decrease_immediate"):
            print(f"fig2b: corr(-index, {key}) = {summary['probe'][f'corr_neg_index_{key}']:.3f}")
    print(f"figures: {args.figures}\nnumbers: {args.json}")


if __name__ == "__main__":
    main()
