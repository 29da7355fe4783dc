"""Fig. 1 of the paper: a 1-D RBF network grown from 1 to 8 neurons by splitting, against baselines.

    python experiments/paper/rbf_toy.py                       # about 15 seconds on one CPU core
    python experiments/paper/rbf_toy.py --seeds 0 1 2 3 4     # the numbers of docs/paper.md (about 1 minute)

Reduced recipe: 200 grid points on [-2.5, 2.5], 150 L-BFGS iterations between growths, 1 -> 8 neurons,
splitting step 0.5 in (mu, log s); the probes of Fig. 1b/1c split the 7-neuron network with step 0.02.

Writes docs/figures/fig1_rbf.png and runs/paper/rbf_toy.json (the numbers), and prints a summary.
"""
import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from nni_splitting.paper.figures import plot_rbf_figure
from nni_splitting.paper.rbf_toy import run_rbf_experiment

ROOT = Path(__file__).resolve().parents[2]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-neurons", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=150, help="L-BFGS iterations between growths")
    parser.add_argument("--epsilon", type=float, default=0.5, help="splitting step in (mu, log s)")
    parser.add_argument("--probe-epsilon", type=float, default=0.02, help="step of the Fig. 1b/1c probes")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine)")
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "figures" / "fig1_rbf.png")
    parser.add_argument("--json", type=Path, default=ROOT / "runs" / "paper" / "rbf_toy.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)

    result = run_rbf_experiment(args.max_neurons, args.iterations, args.epsilon, args.probe_epsilon,
                                seeds=args.seeds)
    plot_rbf_figure(result, args.figure)
    probe, sweep = result["index_vs_decrease"], result["angle"]
    summary = {
        "config": result["config"],
        "final_loss": {m: [run.losses[-1] for run in runs] for m, runs in result["runs"].items()},
        "split_indexes": result["runs"]["splitting"][0].indexes,
        "fig1b": {k: np.asarray(v).tolist() for k, v in probe.items()},
        "fig1b_correlation": float(np.corrcoef(probe["index"], probe["decrease"])[0, 1]),
        "fig1c": {k: np.asarray(v).tolist() for k, v in sweep.items()},
        "fig1c_best_angle": float(sweep["angle"][int(np.argmax(sweep["decrease"]))]),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=1))
    for method, losses in summary["final_loss"].items():
        print(f"{method:13s} final training loss: median {np.median(losses):.3e}  "
              f"(seeds: {', '.join(f'{v:.2e}' for v in losses)})")
    print(f"fig1b: corr(index, loss decrease) = {summary['fig1b_correlation']:.4f} "
          "(negative: the more negative the index, the larger the decrease)")
    print(f"fig1c: largest decrease at angle {summary['fig1c_best_angle']:+.0f} degrees")
    print(f"figure: {args.figure}\nnumbers: {args.json}")


if __name__ == "__main__":
    main()
