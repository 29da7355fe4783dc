"""Splitting phase vs one training epoch, per growth round of the CPU protocol (issue 11, item 4).

For each round's network (the trained checkpoints of a protocol run, ``--checkpoints``, or the
protocol's widths grown uniformly from the 12 x 14 seed, freshly initialised and trained one epoch),
or the widths of a protocol lineage (``--widths-csv``: the ``splitting`` rows of one seed of a results
CSV, each round freshly initialised and trained one epoch), one run measures side by side, in this
process (one thread):

* ``epoch_s``: one real training epoch of the 9,000-image CIFAR-10 subset (``fit``: batch 128,
  crop + flip, SGD), and
* ``phase_s``: one splitting phase (``compute_splitting``) with S averaged over ``N`` images of the
  10,000-image subset (the 9,000 training images, then the 1,000 validation ones), for each
  ``--samples`` and ``--methods``,

for each ``--positions`` (``position_samples``: 0 = every position) and ``--image-fractions``
(``image_fraction``: 1 = every image), and writes ``ratio = phase_s /
epoch_s`` (the target: <= 1 with N = 10,000 at every round), ``lambda_corr`` (Pearson) and
``rank_corr`` (Spearman), the correlation of the indexes with the first setting's, and ``top_overlap``,
the share of the protocol's selection (the lowest 45 % of all neurons) that the setting selects too.

    python benchmarks/phase_cost.py --data-dir data/cifar10 --widths-csv results/cifar_protocol_cpu/seed0/results.csv \
        --csv benchmarks/phase_cost_cpu.csv
"""
from __future__ import annotations

import argparse
import csv
import math
import glob
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nni_splitting import compute_splitting, count_model  # noqa: E402
from nni_splitting.growth.checkpoint import load_checkpoint  # noqa: E402
from nni_splitting.common.data import load_dataset, make_loaders  # noqa: E402
from nni_splitting.models import build_model  # noqa: E402
from nni_splitting.common.training import Recipe, fit  # noqa: E402


def networks(args):
    """``(label, model)`` per round."""
    if args.widths_csv:
        with open(args.widths_csv, newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if r["arm"] == "splitting" and int(r["seed"]) == args.widths_seed]
        for row in sorted(rows, key=lambda r: int(r["step"])):
            torch.manual_seed(int(row["step"]))
            yield f"round{row['step']}", build_model("mobilenet_v1", widths=[int(w) for w in row["widths"].split(",")])
        return
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
    p.add_argument("--widths-csv", default=None, help="results.csv whose splitting rows give each round's widths")
    p.add_argument("--widths-seed", type=int, default=0)
    p.add_argument("--select-fraction", type=float, default=0.45, help="the selection whose overlap is reported")
    p.add_argument("--samples", default="10000")
    p.add_argument("--methods", default="auto")
    p.add_argument("--positions", default="0,16", help="position_samples values (0: every position)")
    p.add_argument("--split-batch-size", type=int, default=128)
    p.add_argument("--product-dtypes", default="float32",
                   help="product_dtype values of the exact sums (e.g. float32,bfloat16); the first is the reference")
    p.add_argument("--image-fractions", default="1",
                   help="image_fraction values of the exact sums (1: every image), e.g. 1,0.5,0.25")
    p.add_argument("--csv", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = load_dataset("cifar10", args.data_dir, val_fraction=0.02, per_class=900)
    train, _, _ = make_loaders(data, batch_size=128)
    x, y = (torch.cat(pair) for pair in zip(data.train.tensors, data.val.tensors))  # the 10,000-image subset
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
                for positions, product, fraction in ((int(k), dt, float(f)) for k in args.positions.split(",")
                                                     for dt in args.product_dtypes.split(",")
                                                     for f in args.image_fractions.split(",")):
                    start = time.perf_counter()
                    splits = compute_splitting(model, nn.CrossEntropyLoss(), batches, method=method,
                                               position_samples=positions or None, fast_options={"largest": False},
                                               product_dtype=product, image_fraction=None if fraction >= 1 else fraction)
                    phase_s = time.perf_counter() - start
                    values = torch.cat([s.eigenvalues for s in splits.values()])
                    reference = values if reference is None else reference
                    chosen = math.ceil(args.select_fraction * len(values))
                    overlap = len(set(values.argsort()[:chosen].tolist()) & set(reference.argsort()[:chosen].tolist()))
                    ranks = torch.stack([values.argsort().argsort(), reference.argsort().argsort()]).double()
                    row = {"network": label, "params": params, "samples": len(torch.cat([b[1] for b in batches])),
                           "method": method, "position_samples": positions or "all", "product_dtype": product,
                           "image_fraction": fraction,
                           "epoch_s": round(epoch_s, 2),
                           "phase_s": round(phase_s, 2), "ratio": round(phase_s / epoch_s, 2),
                           "lambda_corr": round(float(torch.corrcoef(torch.stack([values, reference]))[0, 1]), 4),
                           "rank_corr": round(float(torch.corrcoef(ranks)[0, 1]), 4),
                           "top_overlap": round(overlap / chosen, 3),
                           "fast_layers": sum(s.method == "fast" for s in splits.values())}
                    rows.append(row)
                    print(row, flush=True)
                    if args.csv:  # rewritten after every row: a stopped run keeps what it measured
                        write_csv(args.csv, rows)
    return 0


def write_csv(path: str, rows) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    sys.exit(main())
