"""Splitting phase vs one training epoch, per growth round of the CPU protocol (issue 11, item 4).

For each round's network (the trained checkpoints of a protocol run, ``--checkpoints``, or the
protocol's widths grown uniformly from the 12 x 14 seed, freshly initialised and trained one epoch),
one run measures side by side, in this process (one thread):

* ``epoch_s``: one real training epoch of the 9,000-image CIFAR-10 subset (``fit``: batch 128,
  crop + flip, SGD), and
* ``phase_s``: one splitting phase (``compute_splitting``) with S averaged over ``N`` training
  images, for each ``--samples`` and ``--methods``,

for each ``--positions`` (``position_samples``: 0 = every position), and writes ``ratio = phase_s /
epoch_s`` (the target: <= 1 with N = 10,000 at every round) and ``lambda_corr``, the correlation of
the indexes with the first setting's.

    python benchmarks/phase_cost.py --data-dir data/cifar10 --csv benchmarks/phase_cost_cpu.csv
"""
from __future__ import annotations

import argparse
import csv
import glob
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nni_splitting import compute_splitting, count_model  # noqa: E402
from nni_splitting.checkpoint import load_checkpoint  # noqa: E402
from nni_splitting.data import load_dataset, make_loaders  # noqa: E402
from nni_splitting.models import build_model  # noqa: E402
from nni_splitting.training import Recipe, fit  # noqa: E402


def networks(args):
    """``(label, model)`` per round."""
    if args.checkpoints:
        for path in sorted(glob.glob(args.checkpoints)):
            yield Path(path).parent.name, load_checkpoint(path)[0]
        return
    width = float(args.seed_width)
    for step in range(args.rounds + 1):
        torch.manual_seed(step)
        yield f"round{step}", build_model("mobilenet_v1", widths=[max(1, round(width))] * 14)
        width *= 1 + args.growth


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--checkpoints", default=None, help="glob of checkpoint.pt files (one per round)")
    p.add_argument("--seed-width", type=int, default=12)
    p.add_argument("--growth", type=float, default=0.45)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--samples", default="4096,10000")
    p.add_argument("--methods", default="auto,fast")
    p.add_argument("--positions", default="0,64", help="position_samples values (0: every position)")
    p.add_argument("--split-batch-size", type=int, default=500)
    p.add_argument("--csv", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = load_dataset("cifar10", args.data_dir, val_fraction=0.02, per_class=900)
    train, _, _ = make_loaders(data, batch_size=128)
    x, y = data.train.tensors
    rows = []
    for label, model in networks(args):
        model.eval()
        params = count_model(model.eval(), x[:1])[1]
        history = fit(model, train, Recipe(epochs=1, lr=0.05), seed=0, progress=False)
        epoch_s = history["seconds"]
        for samples in (int(s) for s in args.samples.split(",")):
            size = args.split_batch_size
            batches = [(x[i:i + size], y[i:i + size]) for i in range(0, min(samples, len(y)), size)]
            reference = None
            for method in args.methods.split(","):
                for positions in (int(k) for k in args.positions.split(",")):
                    start = time.perf_counter()
                    splits = compute_splitting(model, nn.CrossEntropyLoss(), batches, method=method,
                                               position_samples=positions or None, fast_options={"largest": False})
                    phase_s = time.perf_counter() - start
                    values = torch.cat([s.eigenvalues for s in splits.values()])
                    reference = values if reference is None else reference
                    row = {"network": label, "params": params, "samples": len(torch.cat([b[1] for b in batches])),
                           "method": method, "position_samples": positions or "all", "epoch_s": round(epoch_s, 2),
                           "phase_s": round(phase_s, 2), "ratio": round(phase_s / epoch_s, 2),
                           "lambda_corr": round(float(torch.corrcoef(torch.stack([values, reference]))[0, 1]), 4)}
                    rows.append(row)
                    print(row, flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
